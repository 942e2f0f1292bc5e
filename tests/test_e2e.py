"""End to end with a real Slurm cluster: jobs really run on nodes that hpc-bridge brought up.

slurmctld calls the scripts/hooks wrappers (no PATH, as in production), which run hpc-bridge
against the simulator; when the simulator reports a node Ready its boot hook starts a real
`slurmd -b -N <name>` (scripts/sim-boot-hook), and stops it when the node is shut down.
"""

from __future__ import annotations

import pytest

from bridge_env import BridgeEnv, default_scenario

pytestmark = pytest.mark.slurm

RESUME_TIMEOUT = 25


def make_env(tmp_path, factory, scenario=None, config_extra="", **kw):
    kw.setdefault("suspend_time", 4)
    kw.setdefault("resume_timeout", RESUME_TIMEOUT)
    return BridgeEnv.create(
        tmp_path, factory, scenario=scenario, bridge_hooks=True, boot_slurmd=True,
        config_extra="[resume]\n" f"resume_timeout = {kw['resume_timeout']}\n" + config_extra, **kw,
    )


@pytest.fixture
def env(tmp_path, slurm_cluster_factory):
    e = make_env(tmp_path, slurm_cluster_factory)
    yield e
    e.close()


def job_output(env, job_id) -> str:
    path = env.root / f"job-{job_id}.out"
    return path.read_text() if path.exists() else ""


def submit(env, *args) -> int:
    return env.cluster.sbatch("--output", str(env.root / "job-%j.out"), *args)


def wait_job(env, job_id, states=("COMPLETED",), timeout=90):
    return env.wait_for(lambda: env.cluster.job_state(job_id) in states and env.cluster.job_state(job_id),
                        timeout=timeout, what=f"job {job_id} in {states} (now {env.cluster.job_state(job_id)})")


def powered_down(env, names, timeout=60):
    env.wait_for(lambda: all({"IDLE", "POWERED_DOWN"} <= env.cluster.node_flags(n) for n in names),
                 timeout=timeout, what=f"{names} back to idle~")


def test_hpc_job_runs_on_two_new_nodes_in_one_placement_group(env):
    env.sim.reset_stats()
    job = submit(env, "-p", "hpc", "-N2", "--wrap", "srun printenv SLURMD_NODENAME")
    wait_job(env, job)
    stats = env.sim.stats()
    assert stats["creates"]["calls"] == 1 and stats["creates"]["nodes_added"] == 2
    nodes = env.cloud_nodes()
    names = sorted(n for n in nodes if n.startswith("hpc-"))
    assert names == ["hpc-hb120rsv3-1", "hpc-hb120rsv3-2"]
    assert nodes[names[0]]["PlacementGroupId"] == nodes[names[1]]["PlacementGroupId"] == "hpc-hb120rsv3-pg1"
    out = job_output(env, job)
    assert sorted(out.split()) == names  # each task ran on its own new node
    # after SuspendTime: idle~ in Slurm, the VMs deallocated (the hpc nodearray's ShutdownPolicy)
    powered_down(env, names)
    env.wait_for(lambda: all(env.cloud_nodes()[n]["Status"] == "Deallocated" for n in names),
                 what="hpc VMs deallocated")


def test_each_vm_size_and_gpu(env):
    f2 = submit(env, "-p", "htc", "-C", "Standard_F2s_v2", "--wrap", "srun printenv SLURMD_NODENAME")
    f4 = submit(env, "-p", "htc", "-C", "Standard_F4s_v2", "-n", "4", "--wrap", "srun -n1 printenv SLURMD_NODENAME")
    gpu = submit(env, "-p", "gpu", "--gres=gpu:1", "--wrap", "srun bash -c 'echo $SLURMD_NODENAME GPU=$CUDA_VISIBLE_DEVICES'")
    for j in (f2, f4, gpu):
        wait_job(env, j)
    assert job_output(env, f2).strip().startswith("htc-f2sv2-")
    assert job_output(env, f4).strip().startswith("htc-f4sv2-")
    out = job_output(env, gpu)
    assert "gpu-nc24adsa100v4-1" in out and "GPU=0" in out
    machine = {n: r["MachineType"] for n, r in env.cloud_nodes().items()}
    assert machine["htc-f2sv2-1"] == "Standard_F2s_v2" and machine["htc-f4sv2-1"] == "Standard_F4s_v2"


def test_quota_exhausted_fails_fast_and_leaves_nothing_running(tmp_path, slurm_cluster_factory):
    scenario = default_scenario()
    scenario["nodearrays"][1]["buckets"][1]["quotaCount"] = 2  # F4s_v2: only 2 may exist
    env = make_env(tmp_path, slurm_cluster_factory, scenario=scenario)
    try:
        job = submit(env, "-p", "htc", "-C", "Standard_F4s_v2", "-N3", "--wrap", "hostname")
        # DOWN with the quota reason well before ResumeTimeout
        def down_with_reason():
            nodes = env.cluster.slurm().show_nodes()
            downs = [n for n in nodes.values() if n.name.startswith("htc-f4sv2") and "DOWN" in n.state_flags]
            return downs if downs and all("available" in (n.reason or "") for n in downs) else None
        downs = env.wait_for(down_with_reason, timeout=RESUME_TIMEOUT - 10, what="nodes DOWN with quota reason")
        assert "job" in downs[0].reason
        assert not [r for r in env.all_cloud_records() if r["Status"] not in ("Terminated",)]
        assert env.cluster.job_state(job) in ("PENDING", "CONFIGURING", "REQUEUED")
    finally:
        env.close()


def test_deallocate_policy_restarts_the_same_vms(env):
    job = submit(env, "-p", "gpu", "--gres=gpu:1", "--wrap", "hostname")
    wait_job(env, job)
    first = env.cloud_nodes()["gpu-nc24adsa100v4-1"]["NodeId"]
    powered_down(env, ["gpu-nc24adsa100v4-1"])
    env.wait_for(lambda: env.cloud_nodes()["gpu-nc24adsa100v4-1"]["Status"] == "Deallocated", what="deallocated")
    job2 = submit(env, "-p", "gpu", "--gres=gpu:1", "--wrap", "hostname")
    wait_job(env, job2)
    again = env.cloud_nodes()["gpu-nc24adsa100v4-1"]
    assert again["NodeId"] == first
    assert sum(1 for r in env.all_cloud_records() if r["Name"] == "gpu-nc24adsa100v4-1") == 1
