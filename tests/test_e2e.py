"""End to end with a real Slurm cluster: jobs really run on nodes that hpc-bridge brought up.

slurmctld calls the scripts/hooks wrappers (no PATH, as in production), which run hpc-bridge
against the simulator; when the simulator reports a node Ready its boot hook starts a real
`slurmd -b -N <name>` (scripts/sim-boot-hook), and stops it when the node is shut down.
"""

from __future__ import annotations

import time

import pytest

from bridge_env import BridgeEnv, all_forms, default_scenario
from hpc_bridge import hostlist
from hpc_bridge.reasons import KEPT_RUNNING, STOP_FAILED

# Every scenario runs against at least one form that follows the reference (strict, or quirks:
# strict plus what a real service adds), the cheapest against every form; the slower ones are
# not multiplied (the hook and repair tests cover every form for the same paths). All of them
# pass in every form.
strict_form = pytest.mark.parametrize("api_form", ["strict"])
quirks_form = pytest.mark.parametrize("api_form", ["quirks"])
default_and_quirks = pytest.mark.parametrize("api_form", ["default", "quirks"])

RESUME_TIMEOUT = 25


def make_env(tmp_path, factory, scenario=None, config_extra="", form="default", **kw):
    kw.setdefault("suspend_time", 4)
    kw.setdefault("resume_timeout", RESUME_TIMEOUT)
    return BridgeEnv.create(
        tmp_path, factory, scenario=scenario, bridge_hooks=True, boot_slurmd=True,
        config_extra="[resume]\n" f"resume_timeout = {kw['resume_timeout']}\n" + config_extra, form=form, **kw,
    )


@pytest.fixture
def resume_timeout() -> int:
    return RESUME_TIMEOUT


@pytest.fixture
def env(tmp_path, slurm_cluster_factory, api_form, resume_timeout):
    e = make_env(tmp_path, slurm_cluster_factory, form=api_form, resume_timeout=resume_timeout)
    yield e
    e.close()


def job_output(env, job_id) -> str:
    path = env.root / f"job-{job_id}.out"
    return path.read_text() if path.exists() else ""


def submit(env, *args) -> int:
    return env.cluster.sbatch("--output", str(env.root / "job-%j.out"), *args)


def wait_job(env, job_id, states=("COMPLETED",), timeout=90):
    def done():
        release(env, job_id)
        return env.cluster.job_state(job_id) in states and env.cluster.job_state(job_id)
    try:
        return env.wait_for(done, timeout=timeout, what=f"job {job_id} in {states}")
    except AssertionError as err:
        job = env.cluster.job(job_id)
        nodes = {n: f"{'+'.join(sorted(s.state_flags))} {s.reason or ''}"
                 for n, s in env.cluster.slurm().show_nodes().items() if not s.has("IDLE", "POWERED_DOWN") or s.reason}
        raise AssertionError(f"{err}: job {job.get('JobState')} reason {job.get('Reason')}; nodes {nodes}; "
                             f"cloud {live_vms(env)}") from None


def release(env, job_id):
    """Slurm holds a batch job requeued after a node failure back (BeginTime): start it now."""
    if env.cluster.job(job_id).get("Reason") == "BeginTime":
        env.cluster.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)


def holding(env, command: str) -> str:
    """A job script that runs `command`, then keeps its nodes until end_held_jobs(env): while the
    test looks at them they cannot power down (a terminated VM's record can vanish)."""
    return f"{command}; while [ ! -e {env.root / 'end-held-jobs'} ]; do sleep 0.2; done"


def end_held_jobs(env) -> None:
    (env.root / "end-held-jobs").touch()


def nodes_it_ran_on(env, job_id) -> list[str]:
    """The nodes Slurm gave the running job (its NodeList), once its tasks have printed: not a
    guess at which nodes Slurm picks (a requeued job may get others)."""
    wait_job(env, job_id, states=("RUNNING",))
    env.wait_for(lambda: job_output(env, job_id).strip(), what=f"job {job_id}'s tasks to print")
    return hostlist.expand(env.cluster.job(job_id)["NodeList"])


def powered_down(env, names, timeout=60):
    env.wait_for(lambda: all({"IDLE", "POWERED_DOWN"} <= env.cluster.node_flags(n) for n in names),
                 timeout=timeout, what=f"{names} back to idle~")


@default_and_quirks
def test_hpc_job_runs_on_two_new_nodes_in_one_placement_group(env):
    env.sim.reset_stats()
    job = submit(env, "-p", "hpc", "-N2", "--wrap", holding(env, "srun printenv SLURMD_NODENAME"))
    names = nodes_it_ran_on(env, job)
    nodes = env.cloud_nodes()
    assert len(names) == 2 and all(nodes[n]["Status"] == "Ready" for n in names)
    # both brought up by one create call (one request id), into one placement group
    assert nodes[names[0]]["RequestId"] and nodes[names[0]]["RequestId"] == nodes[names[1]]["RequestId"]
    assert nodes[names[0]]["PlacementGroupId"] and nodes[names[0]]["PlacementGroupId"] == nodes[names[1]]["PlacementGroupId"]
    end_held_jobs(env)
    wait_job(env, job)
    assert sorted(job_output(env, job).split()) == names  # each task ran on its own new node
    # no create refused (none for a name that exists already) and no duplicate VM
    stats = env.sim.stats()["creates"]
    assert stats["calls"] >= 1 and stats["nodes_requested"] == stats["nodes_added"]
    live = [r["Name"] for r in env.all_cloud_records() if r["Status"] not in ("Terminated", "Deallocated")]
    assert len(live) == len(set(live))
    # after SuspendTime: idle~ in Slurm, the VMs deallocated (the hpc nodearray's ShutdownPolicy)
    powered_down(env, names)
    env.wait_for(lambda: all(env.cloud_nodes()[n]["Status"] == "Deallocated" for n in names),
                 what="hpc VMs deallocated")


@all_forms
def test_each_vm_size_and_gpu(env):
    f2 = submit(env, "-p", "htc", "-C", "Standard_F2s_v2", "--wrap", holding(env, "srun printenv SLURMD_NODENAME"))
    f4 = submit(env, "-p", "htc", "-C", "Standard_F4s_v2", "-n", "4",
                "--wrap", holding(env, "srun -n1 printenv SLURMD_NODENAME"))
    gpu = submit(env, "-p", "gpu", "--gres=gpu:1",
                 "--wrap", holding(env, "srun bash -c 'echo $SLURMD_NODENAME GPU=$CUDA_VISIBLE_DEVICES'"))
    ran_on = {j: nodes_it_ran_on(env, j) for j in (f2, f4, gpu)}
    machine = {n: r["MachineType"] for n, r in env.cloud_nodes().items()}
    assert [machine[n] for n in ran_on[f2]] == ["Standard_F2s_v2"]
    assert [machine[n] for n in ran_on[f4]] == ["Standard_F4s_v2"]
    assert [machine[n] for n in ran_on[gpu]] == ["Standard_NC24ads_A100_v4"]
    end_held_jobs(env)
    for j in (f2, f4, gpu):
        wait_job(env, j)
    assert job_output(env, f2).split() == ran_on[f2] and ran_on[f2][0].startswith("htc-f2sv2-")
    assert job_output(env, f4).split() == ran_on[f4] and ran_on[f4][0].startswith("htc-f4sv2-")
    assert job_output(env, gpu).split() == [*ran_on[gpu], "GPU=0"]


@all_forms
def test_quota_exhausted_fails_fast_and_leaves_nothing_running(tmp_path, slurm_cluster_factory, api_form):
    scenario = default_scenario()
    scenario["nodearrays"][1]["buckets"][1]["quotaCount"] = 2  # F4s_v2: only 2 may exist
    env = make_env(tmp_path, slurm_cluster_factory, scenario=scenario, form=api_form)
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


@strict_form
def test_deallocate_policy_restarts_the_same_vms(env):
    job = submit(env, "-p", "gpu", "--gres=gpu:1", "--wrap", holding(env, "hostname"))
    (name,) = nodes_it_ran_on(env, job)
    first = env.cloud_nodes()[name]["NodeId"]
    end_held_jobs(env)
    wait_job(env, job)
    powered_down(env, [name])
    env.wait_for(lambda: env.cloud_nodes()[name]["Status"] == "Deallocated", what="deallocated")
    job2 = submit(env, "-p", "gpu", "--gres=gpu:1", "-w", name, "--wrap", "hostname")
    wait_job(env, job2)
    again = env.cloud_nodes()[name]
    assert again["NodeId"] == first
    assert sum(1 for r in env.all_cloud_records() if r["Name"] == name) == 1


def repair(env):
    run = env.cli("repair")
    assert run.rc in (0, 1), run.stderr
    return run


def live_vms(env) -> dict[str, str]:
    return {n: r["Status"] for n, r in env.cloud_nodes().items() if r["Status"] not in ("Terminated", "Deallocated")}


@strict_form
@pytest.mark.parametrize("resume_timeout", [18], ids=["ResumeTimeout=18"])  # waited out once: not the usual 25
def test_boot_failure_goes_down_with_cloud_reason_then_recovers(env, resume_timeout):
    env.sim.set_faults(boot_failure_rate=1.0)
    job = submit(env, "-p", "htc", "-C", "Standard_F4s_v2", "--wrap", "srun printenv SLURMD_NODENAME")
    # the node Slurm gave the job (Slurm allocates before it powers up)
    name = env.wait_for(lambda: hostlist.expand(env.cluster.job(job).get("NodeList", "").replace("(null)", "")),
                        what=f"job {job} allocated")[0]

    def failed_down():
        node = env.cluster.slurm().show_nodes()[name]
        return "DOWN" in node.state_flags and "Simulated boot failure" in (node.reason or "")
    env.wait_for(failed_down, timeout=resume_timeout - 5, what="DOWN with the simulator's failure message")
    assert env.cluster.job_state(job) in ("PENDING", "REQUEUED", "CONFIGURING")
    env.sim.set_faults(boot_failure_rate=0.0)
    env.wait_for(lambda: name not in live_vms(env), what="failed VM terminated")
    # Slurm keeps a DOWN node that was powering up as DOWN+POWERING_UP until ResumeTimeout, then
    # down~ and ResumeFailProgram (which keeps our reason); repair then returns it to idle~.
    def down_with_cloud_reason():
        node = env.cluster.slurm().show_nodes()[name]
        return {"DOWN", "POWERED_DOWN"} <= node.state_flags and "Simulated boot failure" in (node.reason or "")
    env.wait_for(down_with_cloud_reason, timeout=resume_timeout + 15,
                 what="down~ after ResumeTimeout, resume-fail keeping the cloud's reason")
    env.wait_for(lambda: "DOWN" not in env.cluster.node_flags(name) if repair(env) else False,
                 what="repair returns the node to service")
    # Slurm holds a requeued batch job back (BeginTime): release it
    release(env, job)
    wait_job(env, job, timeout=120)
    assert job_output(env, job).strip().startswith("htc-f4sv2-")
    powered_down(env, [n for n in env.cluster.slurm().show_nodes() if n.startswith("htc-f4sv2")], timeout=60)
    env.wait_for(lambda: not live_vms(env), what="no VM left running")


@quirks_form  # the API words its capacity failure its own way there
def test_capacity_failure_moves_jobs_to_the_other_size_until_cooloff_ends(tmp_path, slurm_cluster_factory, api_form):
    env = make_env(tmp_path, slurm_cluster_factory, config_extra="capacity_cooloff = 10\n", form=api_form)
    try:
        env.sim.set_faults(capacity_failure=["htc/Standard_F2s_v2"])
        job = submit(env, "-p", "htc", "--wrap", "srun printenv SLURMD_NODENAME")  # F2 is preferred (cheaper)
        env.wait_for(lambda: "DOWN" in env.cluster.node_flags("htc-f2sv2-3"), what="F2 out of service")
        wait_job(env, job, timeout=90)
        assert job_output(env, job).strip().startswith("htc-f4sv2-")
        f2 = env.cluster.slurm().show_nodes()["htc-f2sv2-3"]
        assert "DOWN" in f2.state_flags and "capacity cool-off" in f2.reason
        env.sim.set_faults(capacity_failure=[])
        until = env.state()["cooloffs"]["htc/Standard_F2s_v2"]["until"]
        env.wait_for(lambda: time.time() > until, timeout=15, what="the cool-off's end")
        repair(env)
        env.wait_for(lambda: "DOWN" not in env.cluster.slurm().show_nodes()["htc-f2sv2-3"].state_flags,
                     what="F2 nodes back in service")
        # (an unconstrained job could take the F4 node that is still up: Slurm prefers a running node)
        job2 = submit(env, "-p", "htc", "-C", "Standard_F2s_v2", "--wrap", "srun printenv SLURMD_NODENAME")
        wait_job(env, job2, timeout=90)
        assert job_output(env, job2).strip().startswith("htc-f2sv2-")
    finally:
        env.close()


@default_and_quirks
def test_killed_hook_and_flaky_api_end_consistent_after_repair(env):
    import os
    import signal

    env.sim.set_faults(endpoints={"nodes/create": {"latency": 6.0}})
    jobs = [submit(env, "-p", "htc", "-C", "Standard_F4s_v2", "-N2", "--wrap", "srun printenv SLURMD_NODENAME")
            for _ in range(2)]

    def resume_pid():
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
                except OSError:
                    continue
                # this test's hooks only: one left over from an earlier test may be ending now
                if b"hpc_bridge" in argv and b"resume" in argv and str(env.config_path.resolve()).encode() in argv:
                    pids.append(int(entry))
        return pids
    pids = env.wait_for(resume_pid, timeout=20, what="resume hook running")
    env.wait_for(lambda: env.state().get("operations"), timeout=10, what="create recorded")
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass  # that one had finished
    assert killed, "no resume hook was still in its create call"
    env.sim.set_faults(endpoints={"nodes/create": {"latency": 0.0}}, error_rate=0.3, retry_after=0)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and any(env.cluster.job_state(j) != "COMPLETED" for j in jobs):
        repair(env)
        time.sleep(3)
    env.sim.set_faults(error_rate=0.0)
    assert [env.cluster.job_state(j) for j in jobs] == ["COMPLETED", "COMPLETED"]
    repair(env)
    slurm_nodes = env.cluster.slurm().show_nodes()
    for name, status in live_vms(env).items():
        assert name in slurm_nodes, f"VM {name} unknown to Slurm"
    names = [r["Name"] for r in env.all_cloud_records() if r["Status"] != "Terminated"]
    assert len(names) == len(set(names)), "duplicate VM"


@strict_form
@pytest.mark.parametrize("resume_timeout", [18], ids=["ResumeTimeout=18"])  # waited out when it fails
def test_keepalive_node_goes_down_at_suspend_and_its_restarted_slurmd_runs_the_next_job(env, resume_timeout):
    """A KeepAlive VM outlives Slurm's power-down, its slurmd too. Slurm takes a powered-down node
    back only from a slurmd that booted after the power-up, and never asks a powering-up node to
    register: a job that powered this node up would wait ResumeTimeout, then resume-fail would
    terminate the kept VM. So suspend marks the node DOWN at once, naming the cause; a restart
    of its slurmd (as on the VM: the machine's boot time, not a fresh one) brings it back."""
    job = submit(env, "-p", "htc", "-C", "Standard_F2s_v2", "--wrap", holding(env, "srun printenv SLURMD_NODENAME"))
    (name,) = nodes_it_ran_on(env, job)
    env.sim.set_node_attributes(name, KeepAlive=True)  # a user keeps the VM (the UI's KeepAlive)
    end_held_jobs(env)
    wait_job(env, job)
    env.wait_for(lambda: {"DOWN", "POWERED_DOWN"} <= env.cluster.node_flags(name), timeout=60,
                 what=f"{name} down~ after its suspend")
    assert KEPT_RUNNING in env.cluster.node(name).reason
    assert f"{name}: KeepAlive is set, VM left running" in (env.log_dir / "suspend.log").read_text()
    vm = env.cloud_nodes()[name]
    assert vm["Status"] == "Ready"
    job2 = submit(env, "-p", "htc", "-w", name, "--wrap", "srun printenv SLURMD_NODENAME")
    # Slurm reset the node's address at the power-down; give it the VM's before slurmd registers
    env.cluster.scontrol("update", f"NodeName={name}", f"NodeAddr={vm['PrivateIp']}", f"NodeHostName={name}")
    env.cluster.stop_slurmd(name)
    env.cluster.start_slurmd(name, fresh_boot=False)  # an admin's `systemctl restart slurmd` on the VM
    wait_job(env, job2, timeout=resume_timeout + 20)
    assert job_output(env, job2).split() == [name]
    assert env.cloud_nodes()[name]["NodeId"] == vm["NodeId"]  # the kept VM ran it
    ctld_log = (env.cluster.log_dir / "slurmctld.log").read_text()
    assert "ResumeTimeout" not in ctld_log  # never powered up: nothing waited for a registration


@strict_form
@pytest.mark.parametrize("resume_timeout", [18], ids=["ResumeTimeout=18"])  # waited out: nothing may come of it
def test_power_up_of_a_kept_node_whose_slurmd_predates_it_ends_at_once_keeping_the_vm(env, resume_timeout):
    """An admin returns the down~ KeepAlive node to idle~ without restarting its slurmd: the next
    job powers it up. Slurm would ignore that slurmd until ResumeTimeout, and resume-fail then
    terminate the kept VM: resume marks it DOWN with the cause and ends the power-up at once (the
    job is requeued), and the VM stays."""
    job = submit(env, "-p", "htc", "-C", "Standard_F2s_v2", "--wrap", holding(env, "srun printenv SLURMD_NODENAME"))
    (name,) = nodes_it_ran_on(env, job)
    env.sim.set_node_attributes(name, KeepAlive=True)
    end_held_jobs(env)
    wait_job(env, job)
    env.wait_for(lambda: {"DOWN", "POWERED_DOWN"} <= env.cluster.node_flags(name), timeout=60,
                 what=f"{name} down~ after its suspend")
    env.cluster.scontrol("update", f"NodeName={name}", "State=RESUME")  # slurmd left as it was
    powered_down(env, [name])
    vm = env.cloud_nodes()[name]
    # the name would go to DNS (Slurm reset the address at the power-down): the VM's, as a site's DNS gives
    env.cluster.scontrol("update", f"NodeName={name}", f"NodeAddr={vm['PrivateIp']}", f"NodeHostName={name}")
    job2 = submit(env, "-p", "htc", "-w", name, "--wrap", "srun printenv SLURMD_NODENAME")

    def down_with_the_cause():
        node = env.cluster.node(name)
        return "DOWN" in node.state_flags and "POWERING_UP" not in node.state_flags and KEPT_RUNNING in (node.reason or "")
    env.wait_for(down_with_the_cause, timeout=resume_timeout - 5, what=f"{name} DOWN with the cause, power-up ended")
    assert f"slurm DOWN {name}: {KEPT_RUNNING}" in (env.log_dir / "resume.log").read_text()
    time.sleep(resume_timeout + 3)  # past ResumeTimeout of that power-up: Slurm must not have waited on it
    ctld_log = (env.cluster.log_dir / "slurmctld.log").read_text()
    assert "ResumeTimeout" not in ctld_log
    assert env.cloud_nodes()[name]["NodeId"] == vm["NodeId"] and env.cloud_nodes()[name]["Status"] == "Ready"
    assert KEPT_RUNNING in env.cluster.node(name).reason and env.cluster.job_state(job2) == "PENDING"


STOPS = ("shutdown", "deallocate", "terminate")
STOP_ENDPOINTS = tuple(f"nodes/{action}" for action in STOPS)


def operations_of(env, name) -> list[tuple[str, str]]:
    """(action, outcome) of the state file's operations on `name`, oldest first."""
    ops = sorted(env.state().get("operations", []), key=lambda o: (o["started"], o["deadline"]))
    return [(o["action"], o["outcome"]) for o in ops if name in o["nodes"]]


def stop_failed(env, name) -> bool:
    latest = operations_of(env, name)[-1:]
    return bool(latest) and latest[0][0] in STOPS and latest[0][1] == "failed"


@strict_form
@pytest.mark.parametrize("resume_timeout", [18], ids=["ResumeTimeout=18"])  # waited out when it fails
def test_power_up_after_a_failed_stop_ends_at_once_stops_the_vm_and_the_job_runs(env, resume_timeout):
    """Suspend's stop fails (500s past the retries): the VM and its slurmd run on while Slurm has
    the node idle~. Slurm would ignore that slurmd when a job powers the node up (it predates the
    power-up) and wait ResumeTimeout: resume ends the power-up at once (no DOWN), Slurm runs
    suspend again, which stops the VM, and the requeued job powers the node up afresh and runs."""
    job = submit(env, "-p", "htc", "-C", "Standard_F2s_v2", "--wrap", holding(env, "srun printenv SLURMD_NODENAME"))
    (name,) = nodes_it_ran_on(env, job)
    env.sim.set_faults(retry_after=0, endpoints={e: {"error_rate": 1.0} for e in STOP_ENDPOINTS})
    end_held_jobs(env)
    wait_job(env, job)
    powered_down(env, [name])
    env.wait_for(lambda: stop_failed(env, name), what="suspend's stop to fail")
    assert env.cloud_nodes()[name]["Status"] == "Ready"  # the VM and its slurmd run on
    env.sim.set_faults(endpoints={e: {"error_rate": 0.0} for e in STOP_ENDPOINTS})

    job2 = submit(env, "-p", "htc", "-w", name, "--wrap", "srun printenv SLURMD_NODENAME")
    wait_job(env, job2, timeout=resume_timeout + 100)  # the requeued job waits for a full scheduling pass
    assert job_output(env, job2).split() == [name]
    ctld_log = (env.cluster.log_dir / "slurmctld.log").read_text()
    assert "ResumeTimeout" not in ctld_log  # the power-up after the failed stop was not waited out
    resume_log = (env.log_dir / "resume.log").read_text()
    assert f"{name}: {STOP_FAILED}" in resume_log
    # suspend ran again for the node and stopped the old VM: one live VM, a fresh one or the same restarted
    records = [r for r in env.all_cloud_records() if r["Name"] == name and r["Status"] != "Terminated"]
    assert len(records) == 1 and records[0]["Status"] == "Ready", records
    ops = operations_of(env, name)
    failed = ops.index(next(op for op in ops if op[0] in STOPS and op[1] == "failed"))
    assert any(a in STOPS and o != "failed" for a, o in ops[failed + 1:]), ops  # the later suspend's stop went through
    live = [r["Name"] for r in env.all_cloud_records() if r["Status"] not in ("Terminated", "Deallocated")]
    assert len(live) == len(set(live)) and set(live) <= set(env.cluster.slurm().show_nodes()), live
