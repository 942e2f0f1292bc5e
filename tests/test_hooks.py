"""The resume / suspend / resume-fail hooks as real processes, against the simulator over HTTP
and a real slurmctld that includes the generated partitions (no slurmd: nodes never boot here;
the end-to-end tests boot them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from bridge_env import BridgeEnv, all_forms, default_scenario


# No slurmd boots here: the simulated boot (60 s of Acquiring + Preparing) takes 1.2 s, not the
# default 3 s the end-to-end tests leave a real slurmd to register in.
FAST_BOOT = {"timings": {"time_scale": 0.02}}


@pytest.fixture
def env(tmp_path, slurm_cluster_factory, api_form):
    e = BridgeEnv.create(tmp_path, slurm_cluster_factory, scenario=default_scenario(**FAST_BOOT), form=api_form)
    yield e
    e.close()


def slurm_node(env, name):
    return env.cluster.slurm().show_nodes()[name]


def creates(env) -> int:
    return env.sim.stats()["endpoints"].get("POST nodes/create", 0) if "endpoints" in env.sim.stats() else None


@pytest.mark.parametrize("api_form", ["strict"])
def test_one_placement_group_when_slurm_wakes_a_jobs_nodes_in_two_calls(env):
    """Slurm 22.05 wakes all the nodes of a job in one ResumeProgram call (one power-save pass,
    ResumeRate=0); should two calls come, the node map still puts both in one placement group."""
    jobs = {"jobs": [{"job_id": 7, "nodes": "hpc-hb120rsv3-[1-2]"}], "all_nodes": "hpc-hb120rsv3-1"}
    assert env.hook("resume", "hpc-hb120rsv3-1", resume_file=jobs).rc == 0
    assert env.hook("resume", "hpc-hb120rsv3-2", resume_file={**jobs, "all_nodes": "hpc-hb120rsv3-2"}).rc == 0
    nodes = env.cloud_nodes()
    pgs = {nodes[n]["PlacementGroupId"] for n in ("hpc-hb120rsv3-1", "hpc-hb120rsv3-2")}
    assert len(pgs) == 1 and None not in pgs


@all_forms
def test_resume_creates_exact_names_in_one_call_and_sets_addresses(env):
    env.sim.reset_stats()
    run = env.hook("resume", "hpc-hb120rsv3-[1-2],htc-f2sv2-1")
    assert run.rc == 0, run.stderr
    assert "3 created" in run.stdout
    stats = env.sim.stats()
    print(json.dumps(stats)[:2000])
    nodes = env.cloud_nodes()
    assert {"hpc-hb120rsv3-1", "hpc-hb120rsv3-2", "htc-f2sv2-1"} <= set(nodes)
    assert nodes["hpc-hb120rsv3-1"]["PlacementGroupId"] == nodes["hpc-hb120rsv3-2"]["PlacementGroupId"]
    assert nodes["hpc-hb120rsv3-1"]["MachineType"] == "Standard_HB120rs_v3"
    assert nodes["htc-f2sv2-1"]["MachineType"] == "Standard_F2s_v2"
    # the state file recorded the call before it was made, and its outcome after
    ops = env.state()["operations"]
    assert [op["action"] for op in ops] == ["create"]
    assert ops[0]["outcome"] == "accepted" and ops[0]["operation_id"]
    # the log names what was accepted as one Slurm hostlist, not a line per node
    log_text = (env.log_dir / "resume.log").read_text()
    accepted = [line for line in log_text.splitlines() if "create accepted" in line]
    assert len(accepted) == 1 and f"hpc-hb120rsv3-[1-2],htc-f2sv2-1: create accepted (operation {ops[0]['operation_id']})" in accepted[0]
    # the detached follower sets NodeAddr once the simulator reports the node Ready with an IP
    ip = env.wait_for(lambda: env.cloud_nodes()["hpc-hb120rsv3-1"].get("PrivateIp") if
                      env.cloud_nodes()["hpc-hb120rsv3-1"]["Status"] == "Ready" else None, what="hpc-1 Ready")
    env.wait_for(lambda: slurm_node(env, "hpc-hb120rsv3-1").node_addr == ip, what="NodeAddr of hpc-1")


@pytest.mark.parametrize("api_form", ["strict"])
def test_resume_again_creates_nothing_twice(env):
    """The strict form answers GET status?nodes=true without the optional node list: each hook
    reads GET nodes as well (3 calls with its create), and still sees the first one's nodes."""
    first = env.hook("resume", "htc-f4sv2-[1-2]")
    assert first.rc == 0 and "2 created" in first.stdout and "3 API call(s)" in first.stdout, first.stdout
    run = env.hook("resume", "htc-f4sv2-[1-3]")
    assert run.rc == 0, run.stderr
    assert "1 created" in run.stdout and "3 API call(s)" in run.stdout, run.stdout
    names = [n["Name"] for n in env.all_cloud_records() if n["Name"].startswith("htc-f4sv2")]
    assert sorted(names) == ["htc-f4sv2-1", "htc-f4sv2-2", "htc-f4sv2-3"]


def test_concurrent_resumes_of_overlapping_hostlists(env):
    lists = ["htc-f2sv2-[1-4]", "htc-f2sv2-[3-6]", "htc-f2sv2-[1-8]", "htc-f2sv2-[2,4,6,8]", "htc-f2sv2-[5-8]"]
    procs = [env.popen_hook("resume", hl) for hl in lists]
    for p in procs:
        p.wait(timeout=60)
    all_records = [(n["Name"], n["Status"], n.get("NodeId")) for n in env.all_cloud_records()]
    records = [n for n, _, _ in all_records if n.startswith("htc-f2sv2")]
    assert sorted(records) == sorted(f"htc-f2sv2-{i}" for i in range(1, 9)), (all_records, env.state())
    ops = env.state()["operations"]
    created = [n for op in ops if op["action"] == "create" and op["outcome"] == "accepted" for n in op["nodes"]]
    # no name requested twice by two accepted creates, no record lost
    assert sorted(created) == sorted(set(created))


@all_forms
def test_quota_exhausted_goes_down_at_once_with_reason(tmp_path, slurm_cluster_factory, api_form):
    scenario = default_scenario()
    scenario["nodearrays"][1]["buckets"][0]["quotaCount"] = 3  # F2s_v2: 8 names, quota for 3
    env = BridgeEnv.create(tmp_path, slurm_cluster_factory, scenario=scenario, form=api_form)
    try:
        env.sim.reset_stats()
        run = env.hook("resume", "htc-f2sv2-[1-5]")
        assert run.rc == 1
        live = sorted(n["Name"] for n in env.all_cloud_records())
        assert live == ["htc-f2sv2-1", "htc-f2sv2-2", "htc-f2sv2-3"]
        assert env.sim.stats()["creates"] == {"calls": 1, "nodes_requested": 3, "nodes_added": 3}
        for name in ("htc-f2sv2-4", "htc-f2sv2-5"):
            node = slurm_node(env, name)
            assert "DOWN" in node.state_flags and "no capacity left" in node.reason, node.reason
        assert "DOWN" not in slurm_node(env, "htc-f2sv2-1").state_flags
    finally:
        env.close()


def test_job_larger_than_available_gets_nothing(tmp_path, slurm_cluster_factory):
    scenario = default_scenario()
    scenario["nodearrays"][0]["buckets"][0]["quotaCount"] = 3
    env = BridgeEnv.create(tmp_path, slurm_cluster_factory, scenario=scenario)
    try:
        run = env.hook("resume", "hpc-hb120rsv3-[1-4]", resume_file={"jobs": [{"job_id": 11, "nodes": "hpc-hb120rsv3-[1-4]"}],
                                                           "all_nodes": "hpc-hb120rsv3-[1-4]"})
        assert run.rc == 1
        assert not [n for n in env.all_cloud_records() if n["Name"].startswith("hpc-hb120rsv3-")]
        node = slurm_node(env, "hpc-hb120rsv3-1")
        assert "DOWN" in node.state_flags
        assert "job 11 cannot get all its nodes" in node.reason and "1 available" not in node.reason
        assert node.reason.startswith("hpc-bridge:")
    finally:
        env.close()


def test_api_unreachable_marks_nodes_down(env):
    env.sim.stop()
    run = env.hook("resume", "htc-f2sv2-[1-2]")
    assert run.rc == 1 and "Traceback" not in run.stderr
    node = slurm_node(env, "htc-f2sv2-1")
    assert "DOWN" in node.state_flags and "cluster API unreachable" in node.reason


def test_malformed_hostlist_changes_nothing(env):
    run = env.hook("resume", "htc-f2sv2-[1-2")
    assert run.rc == 2 and "hostlist" in run.stderr and "Traceback" not in run.stderr
    assert env.state() == {} and not env.all_cloud_records()


@all_forms
def test_faults_500_429_and_dropped_connections_still_create_once(env):
    # one of each fault, deterministically, in two resumes (each reads the cluster with one GET
    # status): a 500 on the read and a dropped connection on the create, then a 429 on the read
    # and a lost answer on the create (processed, answer never sent)
    env.sim.set_faults(retry_after=0, endpoints={
        "status": {"error_rate": 1.0, "times": 1},
        "nodes/create": {"drop_rate": 1.0, "times": 1},
    })
    env.sim.reset_stats()
    run = env.hook("resume", "htc-f4sv2-[1-2]")
    assert run.rc == 0, run.stderr
    stats = env.sim.stats()
    assert stats["faults"]["500"] == 1 and stats["faults"]["drop"] == 1
    assert sorted(n["Name"] for n in env.all_cloud_records()) == ["htc-f4sv2-1", "htc-f4sv2-2"]

    env.sim.set_faults(retry_after=0, endpoints={"status": {"throttle_rate": 1.0, "times": 1},
                                                 "nodes/create": {"lost_response_rate": 1.0, "times": 1}})
    env.sim.reset_stats()
    run = env.hook("resume", "htc-f4sv2-[3-4]")
    assert run.rc == 0, run.stderr
    stats = env.sim.stats()
    assert stats["faults"]["429"] == 1 and stats["faults"]["lost_response"] == 1
    assert stats["creates"]["calls"] == 2  # the retry was answered 409
    assert sorted(n["Name"] for n in env.all_cloud_records()) == [f"htc-f4sv2-{i}" for i in range(1, 5)]
    create = [op for op in env.state()["operations"] if op["action"] == "create"][-1]
    assert create["outcome"] == "accepted" and create["message"] == "recovered after 409"


@all_forms
def test_capacity_failure_starts_cooloff_and_takes_bucket_out_of_service(env):
    env.sim.set_faults(capacity_failure=["htc/Standard_F2s_v2"])
    run = env.hook("resume", "htc-f2sv2-1")
    assert run.rc == 1
    node = slurm_node(env, "htc-f2sv2-1")
    assert "DOWN" in node.state_flags and "apacity" in node.reason
    other = slurm_node(env, "htc-f2sv2-5")
    assert "DOWN" in other.state_flags and "capacity cool-off" in other.reason
    cooloff = env.state()["cooloffs"]["htc/Standard_F2s_v2"]
    # it holds what it took out of service (repair puts those back), not the node that failed
    assert "htc-f2sv2-5" in cooloff["nodes"] and "htc-f2sv2-1" not in cooloff["nodes"]
    assert {"htc-f2sv2-1", "htc-f2sv2-5"} <= set(env.state()["down_reasons"])  # for resume-fail
    # the other size is unaffected
    assert "DOWN" not in slurm_node(env, "htc-f4sv2-1").state_flags
    env.sim.set_faults(capacity_failure=[])
    run = env.hook("resume", "htc-f2sv2-2")  # still cooling off: refused without an API create
    assert run.rc == 1 and "cool-off" in run.stderr


@all_forms
def test_suspend_applies_policy_and_is_idempotent(env):
    assert env.hook("resume", "hpc-hb120rsv3-1,htc-f2sv2-1").rc == 0
    env.wait_for(lambda: env.cloud_nodes()["hpc-hb120rsv3-1"]["Status"] == "Ready", what="hpc-1 Ready")
    run = env.hook("suspend", "hpc-hb120rsv3-1,htc-f2sv2-1")
    assert run.rc == 0, run.stderr
    env.wait_for(lambda: env.cloud_nodes()["hpc-hb120rsv3-1"]["Status"] == "Deallocated", what="hpc-1 deallocated")
    env.wait_for(lambda: env.cloud_nodes().get("htc-f2sv2-1", {}).get("Status") in (None, "Terminated"),
                 what="htc-f2sv2-1 terminated")
    assert slurm_node(env, "hpc-hb120rsv3-1").node_addr == "hpc-hb120rsv3-1"  # ip mode: address reset to the name
    again = env.hook("suspend", "hpc-hb120rsv3-1,htc-f2sv2-1")
    assert again.rc == 0 and "2 with nothing to do" in again.stdout
    suspend_log = (env.log_dir / "suspend.log").read_text()
    accepted = [line for line in suspend_log.splitlines() if "shutdown accepted" in line]
    assert len(accepted) == 1 and "hpc-hb120rsv3-1,htc-f2sv2-1: shutdown accepted" in accepted[0]  # one line for both
    assert "hpc-hb120rsv3-1: cloud node already Deallocated, nothing to do" in suspend_log
    # deallocated node is started again by its own id
    before = env.cloud_nodes()["hpc-hb120rsv3-1"]["NodeId"]
    assert env.hook("resume", "hpc-hb120rsv3-1").rc == 0
    after = env.cloud_nodes()["hpc-hb120rsv3-1"]
    assert after["NodeId"] == before and after["Status"] != "Deallocated"
    assert [op["action"] for op in env.state()["operations"]][-1] == "start"


@all_forms
def test_resume_fail_terminates_and_keeps_the_cloud_reason(env):
    env.sim.set_faults(boot_failure_rate=1.0)
    assert env.hook("resume", "htc-f4sv2-1").rc == 0
    # the follower sees the boot failure and marks the node DOWN with the cloud's message at once,
    # long before ResumeTimeout
    env.wait_for(lambda: "cloud node failed" in (slurm_node(env, "htc-f4sv2-1").reason or ""),
                 what="follower marks the failed node DOWN")
    run = env.hook("resume-fail", "htc-f4sv2-1")
    assert run.rc == 0, run.stderr
    node = slurm_node(env, "htc-f4sv2-1")
    assert "DOWN" in node.state_flags and "cloud node failed" in node.reason
    env.wait_for(lambda: env.cloud_nodes().get("htc-f4sv2-1", {}).get("Status") in (None, "Terminated"),
                 what="failed VM terminated")


@all_forms
def test_killed_resume_never_duplicates(env):
    env.sim.set_faults(latency=1.5)
    proc = env.popen_hook("resume", "htc-f2sv2-[1-3]")
    env.wait_for(lambda: env.state().get("operations"), timeout=20, what="operation recorded")
    # killed while its create is in flight: the simulator has it and holds its answer (latency)
    env.wait_for(lambda: env.sim.stats()["requests"].get("nodes/create"), timeout=20, what="create sent")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    env.sim.set_faults(latency=0)
    run = env.hook("resume", "htc-f2sv2-[1-3]")
    assert run.rc == 0, run.stderr
    names = sorted(n["Name"] for n in env.all_cloud_records())
    assert len(names) == len(set(names))
    ops = env.state()["operations"]
    assert ops[0]["outcome"] == "pending" and ops[0]["request"]["sets"]


@pytest.mark.parametrize("api_form", ["strict", "quirks"])
def test_a_terminated_node_record_is_gone_and_every_path_copes(env):
    """Under the reference a terminated node's record is removed (unless Fixed): suspend and
    resume take "no record" as "gone", and the name comes back as a new node."""
    assert env.hook("resume", "htc-f2sv2-[1-2]").rc == 0
    env.wait_for(lambda: all(env.cloud_nodes().get(n, {}).get("Status") == "Ready" for n in
                             ("htc-f2sv2-1", "htc-f2sv2-2")), what="both Ready")
    first_id = env.cloud_nodes()["htc-f2sv2-1"]["NodeId"]
    run = env.hook("suspend", "htc-f2sv2-1")  # htc: ShutdownPolicy Terminate
    assert run.rc == 0, run.stderr
    env.wait_for(lambda: "htc-f2sv2-1" not in {r["Name"] for r in env.all_cloud_records()},
                 what="the terminated node's record removed")
    again = env.hook("suspend", "htc-f2sv2-1")
    assert again.rc == 0 and "1 with nothing to do" in again.stdout, again.stdout
    assert "htc-f2sv2-1: no cloud node" in (env.log_dir / "suspend.log").read_text()
    run = env.hook("resume", "htc-f2sv2-1")
    assert run.rc == 0 and "1 created" in run.stdout, run.stdout + run.stderr
    node = env.wait_for(lambda: (n := env.cloud_nodes().get("htc-f2sv2-1")) and n["Status"] == "Ready" and n,
                        what="htc-f2sv2-1 Ready again")
    assert node["NodeId"] != first_id
    env.wait_for(lambda: slurm_node(env, "htc-f2sv2-1").node_addr == node["PrivateIp"], what="its new address")
    view = env.cli("--json", "nodes", "htc-f2sv2-[1-2]")
    assert view.rc == 0, view.stderr
    rows = {r["name"]: r for r in json.loads(view.stdout)}
    assert rows["htc-f2sv2-1"]["status"] == "Ready" and rows["htc-f2sv2-2"]["status"] == "Ready"


@all_forms
def test_resume_fail_restores_our_reason_after_slurm_replaced_it(env):
    env.sim.set_faults(capacity_failure=["htc/Standard_F2s_v2"])
    assert env.hook("resume", "htc-f2sv2-1").rc == 1
    assert "apacity" in env.state()["down_reasons"]["htc-f2sv2-1"][1]
    # what slurmctld does at ResumeTimeout
    env.cluster.slurm().update_nodes(["htc-f2sv2-1"], state="DOWN", reason="ResumeTimeout reached")
    run = env.hook("resume-fail", "htc-f2sv2-1")
    assert run.rc == 0, run.stderr
    node = slurm_node(env, "htc-f2sv2-1")
    assert node.reason.startswith("hpc-bridge: resume failed: create refused: capacity failure for htc/Standard_F2s_v2"), \
        node.reason


@all_forms
def test_suspend_during_a_create_in_flight_leaves_no_vm(env):
    """Slurm powers a node down (POWER_DOWN_FORCE) while resume's create is still in flight:
    the suspend finds no VM yet; resume, once its create returns, terminates what it made."""
    env.sim.set_faults(endpoints={"nodes/create": {"latency": 2.0}})
    resume = env.popen_hook("resume", "htc-f2sv2-[1-2]")
    env.wait_for(lambda: env.state().get("operations"), timeout=20, what="create recorded")
    assert env.hook("suspend", "htc-f2sv2-1").rc == 0
    resume.wait(timeout=60)
    env.sim.set_faults(endpoints={"nodes/create": {"latency": 0.0}})
    env.wait_for(lambda: env.cloud_nodes().get("htc-f2sv2-1", {}).get("Status") in (None, "Terminating", "Terminated"),
                 what="the suspended node's VM terminated")
    assert env.cloud_nodes()["htc-f2sv2-2"]["Status"] not in ("Terminating", "Terminated")
    actions = [op["action"] for op in env.state()["operations"]]
    assert actions.count("terminate") == 1


def test_suspend_during_a_start_in_flight_leaves_no_vm(env):
    """As above, for a deallocated node being started: the later suspend wins."""
    assert env.hook("resume", "hpc-hb120rsv3-1").rc == 0
    env.wait_for(lambda: env.cloud_nodes()["hpc-hb120rsv3-1"]["Status"] == "Ready", what="Ready")
    assert env.hook("suspend", "hpc-hb120rsv3-1").rc == 0  # hpc: ShutdownPolicy Deallocate
    env.wait_for(lambda: env.cloud_nodes()["hpc-hb120rsv3-1"]["Status"] == "Deallocated", what="deallocated")
    env.sim.set_faults(endpoints={"nodes/start": {"latency": 2.0}})
    resume = env.popen_hook("resume", "hpc-hb120rsv3-1")
    env.wait_for(lambda: env.state()["operations"][-1]["action"] == "start", timeout=20, what="start recorded")
    assert env.hook("suspend", "hpc-hb120rsv3-1").rc == 0
    resume.wait(timeout=60)
    env.sim.set_faults(endpoints={"nodes/start": {"latency": 0.0}})
    env.wait_for(lambda: env.cloud_nodes().get("hpc-hb120rsv3-1", {}).get("Status") in (None, "Terminating", "Terminated"),
                 what="the suspended node's VM stopped")


def test_state_file_locked_too_long_marks_nodes_down_and_sends_nothing(tmp_path, slurm_cluster_factory):
    """Without a record no call may be made; the nodes go DOWN with the cause at once instead of
    waiting in POWERING_UP for ResumeTimeout."""
    import filelock

    env = BridgeEnv.create(tmp_path, slurm_cluster_factory, config_extra="[state]\nlock_timeout = 1\n")
    try:
        env.state_dir.mkdir(parents=True, exist_ok=True)
        env.sim.reset_stats()
        with filelock.FileLock(str(env.state_dir / "state.json.lock")):
            run = env.hook("resume", "htc-f2sv2-[1-2]")
        assert run.rc == 1 and "locked by another hpc-bridge process" in run.stderr, run.stderr
        for name in ("htc-f2sv2-1", "htc-f2sv2-2"):
            node = slurm_node(env, name)
            assert "DOWN" in node.state_flags and "cannot record the request" in node.reason, node
        requests = env.sim.stats()["requests"]
        assert requests.get("status") == 1  # it looked (GET status with the nodes) ...
        assert not [k for k in requests if k.startswith(("nodes/", "scale"))], requests  # ... and changed nothing
        assert env.cloud_nodes() == {}
    finally:
        env.close()


def test_unusable_state_directory_is_one_line_and_nodes_go_down(env, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = tmp_path / "bad-state.toml"
    cfg.write_text(env.config_path.read_text().replace(f'state_dir = "{env.state_dir}"',
                                                       f'state_dir = "{blocker / "state"}"'))
    run = env.cli("--config", str(cfg), "resume", "htc-f4sv2-3")
    lines = run.stderr.strip().splitlines()
    assert run.rc == 1 and len(lines) >= 1 and "internal error" not in run.stderr, run.stderr
    assert f"cannot use state directory {blocker / 'state'}: Not a directory" in lines[0]
    node = slurm_node(env, "htc-f4sv2-3")
    assert "DOWN" in node.state_flags and "cannot record the request" in node.reason
    assert "htc-f4sv2-3" not in env.cloud_nodes()
    for args, says in ((["repair"], "cannot use state directory"), (["suspend", "htc-f4sv2-3"], "cannot read state file")):
        other = env.cli("--config", str(cfg), *args)
        assert other.rc == 1 and other.stderr.count("\n") == 1, other.stderr
        assert says in other.stderr and "Not a directory" in other.stderr, other.stderr


def test_mark_down_logs_the_whole_reason_while_slurm_keeps_a_cut(env):
    import logging

    from hpc_bridge.nodeops import mark_down

    why = "cloud node failed: " + "disk image not found " * 20  # over Slurm's 200 characters
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("hpc_bridge.nodeops")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        assert mark_down(env.cluster.slurm(), {"htc-f4sv2-5": why, "htc-f4sv2-6": why}) == 1
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert lines == [f"slurm DOWN htc-f4sv2-[5-6]: {why}"]
    node = slurm_node(env, "htc-f4sv2-5")
    assert "DOWN" in node.state_flags and node.reason.startswith("hpc-bridge: cloud node failed")
    assert len(node.reason) < len(why)


def test_resume_with_a_relative_config_path_still_has_a_working_follower(env):
    # the follower runs in `/`: the config path it is given must not be relative
    env.sim.reset_stats()
    proc = subprocess.run([*env.argv("--config", env.config_path.name, "resume"),
                           "htc-f2sv2-1"], capture_output=True, text=True, timeout=60, cwd=env.root,
                          env=env.cli_env())
    assert proc.returncode == 0, proc.stderr
    env.wait_for(lambda: slurm_node(env, "htc-f2sv2-1").node_addr != "htc-f2sv2-1", what="NodeAddr set by the follower")
    assert "error" not in (env.log_dir / "resume.log").read_text()
