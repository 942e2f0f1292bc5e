"""Repair against a REAL slurmctld (+ two real slurmds) and the simulator over real HTTP.

Every drift repair knows is created for real (VMs made behind Slurm's back, nodes set DOWN
with our reason or an admin's, a boot failure injected in the simulator, records left in the
state file as a killed hook leaves them, an expired capacity cool-off), then ONE
`python -m hpc_bridge --config X repair` runs, and the end state is read back from scontrol and
the simulator. A second run right after plans nothing.
"""

from __future__ import annotations

import json
import subprocess
import time

import filelock

from bridge_env import BridgeEnv, all_forms, default_scenario
from hpc_bridge.api.client import ClusterClient
from hpc_bridge.api.models import NodeCreationSet
from hpc_bridge.state import StateStore
from hpc_bridge.state_records import ACCEPTED, PENDING, Cooloff, Operation

F2, F4, HB = "Standard_F2s_v2", "Standard_F4s_v2", "Standard_HB120rs_v3"
OURS = "hpc-bridge: "
RID_409 = "repair-test-409"
CONFIG_EXTRA = (
    "[partitions]\nmanaged_nodearrays = [\"hpc\", \"htc\"]\n"
    "[repair]\ngrace = 1.0\n"
    "[resume]\nresume_timeout = 90\nfollower = false\n"
)
# Repair runs this far ahead of the real clock (tests/cli_with_clock.py): every drift case just
# made is past the 1 s grace, as if the test had waited it out.
PAST_GRACE = 1.5


def make_env(tmp_path, factory, form="default") -> BridgeEnv:
    # /bin/true as Resume/SuspendProgram: Slurm's power saving runs, nothing else touches the
    # cloud; SuspendTime long so nodes whose slurmd registered stay up during the test.
    # The simulator boots a VM in 1.2 s, not 3 (its slurmd, where one is needed, the test starts).
    return BridgeEnv.create(tmp_path, factory, scenario=default_scenario(timings={"time_scale": 0.02}),
                            config_extra=CONFIG_EXTRA, resume_program="/bin/true", suspend_program="/bin/true",
                            suspend_time=600, resume_timeout=90, form=form)


def client(env) -> ClusterClient:
    return ClusterClient(env.sim.url, env.sim.cluster_name, env.sim.username, env.sim.password)


def create(env, name, array, machine_type, request_id=None, **attributes):
    s = NodeCreationSet.make(count=1, nodearray=array, definition={"machineType": machine_type}, name_format=name,
                             node_attributes=attributes or None)
    with client(env) as c:
        result = c.create_nodes([s], request_id=request_id)
    assert result.sets[0].added == 1, result
    return result.operation_id


def slurm_nodes(env):
    return env.cluster.slurm().show_nodes()


def statuses(env):
    return {n: rec["Status"] for n, rec in env.cloud_nodes().items()}


def mutations(env) -> dict[str, int]:
    """Mutating API requests the simulator saw (endpoints nodes/create, nodes/terminate, ...)."""
    return {k: v for k, v in env.sim.stats()["requests"].items() if k.startswith("nodes/")}


def dead_pid() -> int:
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    return proc.pid


def create_request(name, array, machine_type):
    return {"sets": [{"count": 1, "nodearray": array, "definition": {"machineType": machine_type},
                      "nameFormat": name}]}


def scontrol(env, *args):
    env.cluster.scontrol(*args)


def build_drift(env) -> dict:
    """Create every drift case; returns facts the assertions need."""
    now = time.time()
    facts = {}
    # Healthy VMs first (they must be Ready before boot failures are switched on).
    facts["leak_op"] = create(env, "htc-f2sv2-1", "htc", F2)  # leaked VM, Slurm idle~
    create(env, "htc-ghost-1", "htc", F2)  # unknown to Slurm: managed nodearray, unknown to Slurm
    create(env, "gpu-ghost-1", "gpu", "Standard_NC24ads_A100_v4")  # unknown to Slurm: unmanaged nodearray
    create(env, "htc-f2sv2-6", "htc", F2, KeepAlive=True)  # left alone: KeepAlive, Slurm idle~
    rid_409 = RID_409
    create(env, "htc-f4sv2-4", "htc", F4, request_id=rid_409)  # killed hook whose call had gone through
    # overdue operation: a terminate accepted without an operation id (recovered after a 409), past its deadline;
    # under the reference its node record is gone once terminated: found by request id all the same
    create(env, "htc-f2sv2-8", "htc", F2)
    with client(env) as c:
        c.manage_nodes("terminate", names=["htc-f2sv2-8"], request_id="gone-terminate")
    # address missing: resume hook (follower off) creates htc-f2sv2-2 while Slurm powers it up; address never set.
    # htc-f2sv2-3 gets no VM, but slurmctld contacts it once repair has powered it down: a loopback address, not
    # its name, which slurmctld would resolve for ~10 s, holding other requests (a repair's scontrol) that long.
    scontrol(env, "update", "NodeName=htc-f2sv2-3", "NodeAddr=127.0.0.1", "NodeHostName=localhost")
    scontrol(env, "update", "NodeName=htc-f2sv2-2,htc-f2sv2-3,htc-f4sv2-3,htc-f4sv2-4", "State=POWER_UP")
    run = env.hook("resume", "htc-f2sv2-2")
    assert run.rc == 0, run.stderr
    env.wait_for(lambda: all(statuses(env).get(n) == "Ready" for n in
                             ("htc-f2sv2-1", "htc-ghost-1", "gpu-ghost-1", "htc-f2sv2-6", "htc-f4sv2-4", "htc-f2sv2-2")),
                 timeout=30, what="healthy VMs Ready")
    gone_after_terminate = (None,) if env.form != "default" else ("Terminated",)
    env.wait_for(lambda: statuses(env).get("htc-f2sv2-8") in gone_after_terminate, timeout=30,
                 what="htc-f2sv2-8 terminated (its record removed, under the reference)")
    # failed VMs: boot failures, for a node Slurm has up (a real slurmd) and one Slurm has powered down
    env.sim.set_faults(boot_failure_rate=1.0)
    create(env, "htc-f4sv2-1", "htc", F4)
    create(env, "htc-f2sv2-5", "htc", F2)
    env.wait_for(lambda: statuses(env).get("htc-f4sv2-1") == "Failed" and statuses(env).get("htc-f2sv2-5") == "Failed",
                 timeout=30, what="boot failures")
    env.sim.set_faults(boot_failure_rate=0.0)
    facts["fail_message"] = env.cloud_nodes()["htc-f4sv2-1"].get("StatusMessage") or ""

    # failed VMs and up without a VM need Slurm nodes that are up: real slurmds registering on 127.0.0.1.
    up = ["htc-f4sv2-1", "htc-f4sv2-2"]
    scontrol(env, "update", f"NodeName={','.join(up)}", "NodeAddr=127.0.0.1,127.0.0.1",
             "NodeHostName=localhost,localhost")
    scontrol(env, "update", f"NodeName={','.join(up)}", "State=POWER_UP")
    for n in up:
        env.cluster.start_slurmd(n)
    env.cluster.wait_registered(up, timeout=30)

    # down~ with our reason, no VM; an expired cool-off's nodes; an admin's DOWN.
    scontrol(env, "update", "NodeName=htc-f2sv2-4", "State=DOWN", f"Reason={OURS}drift test")
    scontrol(env, "update", "NodeName=hpc-hb120rsv3-[5-6]", "State=DOWN",
             f"Reason={OURS}capacity cool-off for hpc/{HB}")
    scontrol(env, "update", "NodeName=hpc-hb120rsv3-7", "State=DOWN", "Reason=bad DIMM ticket 42")

    # The state file as killed hooks and expired calls leave it.
    pid = dead_pid()
    store = StateStore(env.state_dir / "state.json")
    with store.transaction() as state:
        for o in (
            # overdue operation, leaked VM: the leak's create, accepted long ago, past its deadline (the API knows it)
            Operation("leak-create", "create", ["htc-f2sv2-1"], now - 1000, now - 500, pid=pid, outcome=ACCEPTED,
                      operation_id=facts["leak_op"], request=create_request("htc-f2sv2-1", "htc", F2)),
            # stuck powering up, overdue operation: a create whose nodes never appeared, past its
            # deadline, the API does not know it
            Operation("lost-create", "create", ["htc-f2sv2-3"], now - 1000, now - 10, pid=pid, outcome=ACCEPTED,
                      operation_id="no-such-operation", request=create_request("htc-f2sv2-3", "htc", F2)),
            # killed resume hooks: one call never reached the API, one did (409 on re-send)
            Operation("killed-create", "create", ["htc-f4sv2-3"], now - 5, now + 80, pid=pid, outcome=PENDING,
                      request=create_request("htc-f4sv2-3", "htc", F4)),
            Operation(rid_409, "create", ["htc-f4sv2-4"], now - 5, now + 80, pid=pid, outcome=PENDING,
                      request=create_request("htc-f4sv2-4", "htc", F4)),
            Operation("gone-terminate", "terminate", ["htc-f2sv2-8"], now - 1000, now - 10, pid=pid,
                      outcome=ACCEPTED, request={"names": ["htc-f2sv2-8"]}),
        ):
            state.operations[o.request_id] = o
        state.cooloffs[f"hpc/{HB}"] = Cooloff(until=now - 1, reason="no capacity",
                                              nodes=["hpc-hb120rsv3-5", "hpc-hb120rsv3-6"])
    return facts


@all_forms
def test_one_repair_run_fixes_every_drift_case(tmp_path, slurm_cluster_factory, api_form):
    env = make_env(tmp_path, slurm_cluster_factory, api_form)
    try:
        facts = build_drift(env)
        before_slurm = {n: (s.state_flags, s.reason, s.node_addr) for n, s in slurm_nodes(env).items()}
        before_state = env.state()
        before_cloud = statuses(env)

        # --dry-run prints the table and changes nothing; --json gives the same as data
        env.sim.reset_stats()
        dry = env.cli("repair", "--dry-run", clock_ahead=PAST_GRACE)
        assert dry.rc == 0, dry.stderr
        header = dry.stdout.splitlines()[0].split()
        assert header == ["NODE", "SLURM", "STATE", "CLOUD", "STATE", "ACTION", "REASON"]
        data = json.loads(env.cli("repair", "--dry-run", "--json", clock_ahead=PAST_GRACE).stdout)
        planned = {(a["node"], a["kind"]) for a in data["actions"]}
        assert data["dryRun"] is True
        assert mutations(env) == {}
        assert env.state() == before_state and statuses(env) == before_cloud
        assert {n: (s.state_flags, s.reason, s.node_addr) for n, s in slurm_nodes(env).items()} == before_slurm
        for row in [("htc-f2sv2-1", "terminate"), ("htc-ghost-1", "terminate"), ("gpu-ghost-1", "report"),
                    ("htc-f4sv2-1", "down"), ("htc-f4sv2-1", "terminate"), ("htc-f2sv2-5", "terminate"),
                    ("htc-f2sv2-3", "power_down_force"), ("htc-f2sv2-4", "resume"), ("htc-f4sv2-2", "down"),
                    ("htc-f2sv2-2", "set_address"), ("hpc-hb120rsv3-5", "resume"), ("hpc-hb120rsv3-6", "resume"),
                    (f"hpc/{HB}", "end_cooloff"), ("htc-f4sv2-3", "resend_operation"),
                    ("htc-f4sv2-4", "resend_operation"), ("htc-f2sv2-1", "resolve_operation"),
                    ("htc-f2sv2-3", "resolve_operation"), ("htc-f2sv2-8", "resolve_operation")]:
            assert row in planned, (row, sorted(planned))
        assert not {n for n, _ in planned} & {"hpc-hb120rsv3-7", "htc-f2sv2-6"}  # an admin's DOWN, a KeepAlive node

        # one real run
        env.sim.reset_stats()
        run = env.cli("repair", clock_ahead=PAST_GRACE)
        assert run.rc == 0, run.stdout + run.stderr
        mutating = mutations(env)
        # one terminate call for all; one re-send per killed call (each keeps its requestId)
        assert mutating == {"nodes/terminate": 1, "nodes/create": 2}, mutating
        s = slurm_nodes(env)
        cloud = statuses(env)
        gone = ("Terminating", "Terminated", None)

        assert cloud.get("htc-f2sv2-1") in gone and s["htc-f2sv2-1"].powered_down  # 1
        assert cloud.get("htc-f4sv2-1") in gone and cloud.get("htc-f2sv2-5") in gone  # 2
        assert "DOWN" in s["htc-f4sv2-1"].state_flags and "cloud node failed" in s["htc-f4sv2-1"].reason
        assert facts["fail_message"] in s["htc-f4sv2-1"].reason
        assert "POWERING_UP" not in s["htc-f2sv2-3"].state_flags  # stuck powering up: powered down, reason ours
        assert s["htc-f2sv2-3"].reason.startswith(OURS)
        assert s["htc-f2sv2-4"].state_flags >= {"IDLE", "POWERED_DOWN"} and "DOWN" not in s["htc-f2sv2-4"].state_flags
        assert "DOWN" in s["htc-f4sv2-2"].state_flags and "no cloud node" in s["htc-f4sv2-2"].reason  # 5
        assert cloud.get("htc-ghost-1") in gone and cloud["gpu-ghost-1"] == "Ready"  # 6
        ip = env.cloud_nodes()["htc-f2sv2-2"]["PrivateIp"]
        assert s["htc-f2sv2-2"].node_addr == ip  # 7
        ops = {o["request_id"]: o for o in env.state()["operations"]}
        assert ops["leak-create"]["outcome"] == "done" and ops["lost-create"]["outcome"] == "failed"  # 8
        assert ops["gone-terminate"]["outcome"] == "done", ops["gone-terminate"]
        assert ops["killed-create"]["outcome"] == "accepted" and "htc-f4sv2-3" in cloud
        assert ops[RID_409]["outcome"] == "accepted" and ops[RID_409]["message"] == "recovered after 409"
        assert [r["Name"] for r in env.all_cloud_records()].count("htc-f4sv2-4") == 1
        for n in ("hpc-hb120rsv3-5", "hpc-hb120rsv3-6"):  # 9
            assert s[n].state_flags >= {"IDLE", "POWERED_DOWN"} and "DOWN" not in s[n].state_flags
        assert env.state()["cooloffs"][f"hpc/{HB}"]["nodes"] == []
        assert "DOWN" in s["hpc-hb120rsv3-7"].state_flags and s["hpc-hb120rsv3-7"].reason == "bad DIMM ticket 42"
        assert cloud["htc-f2sv2-6"] == "Ready"  # KeepAlive left running
        terminate = [o for o in ops.values() if o["action"] == "terminate" and o["request_id"] != "gone-terminate"]
        assert len(terminate) == 1 and terminate[0]["outcome"] == "accepted"  # recorded before it was sent
        log = (env.log_dir / "repair.log").read_text()
        assert "terminate htc-ghost-1" in log and "Slurm does not know" in log

        # The create re-sent above boots its VM ~1.2 s later: then a run gives it its address (the one
        # drift the first run left, by design) ...
        env.wait_for(lambda: statuses(env).get("htc-f4sv2-3") == "Ready", timeout=30, what="re-sent VM Ready")
        follow = env.cli("repair", "--json", clock_ahead=PAST_GRACE)
        assert follow.rc == 0, follow.stderr
        assert [(a["node"], a["kind"]) for a in json.loads(follow.stdout)["actions"] if a["kind"] != "report"] == [
            ("htc-f4sv2-3", "set_address")]
        assert slurm_nodes(env)["htc-f4sv2-3"].node_addr == env.cloud_nodes()["htc-f4sv2-3"]["PrivateIp"]

        # ... and, idempotent, a run right after changes nothing
        env.sim.reset_stats()
        again = env.cli("repair", "--json", clock_ahead=PAST_GRACE)
        assert again.rc == 0, again.stderr
        changes = [a for a in json.loads(again.stdout)["actions"] if a["kind"] != "report"]
        assert changes == []
        assert mutations(env) == {}
    finally:
        env.close()


def test_singleton_and_unreachable_api(tmp_path, slurm_cluster_factory):
    env = make_env(tmp_path, slurm_cluster_factory)
    try:
        scontrol(env, "update", "NodeName=htc-f2sv2-4", "State=DOWN", f"Reason={OURS}drift test")
        lock = filelock.FileLock(str(env.state_dir / "repair.lock"))
        env.state_dir.mkdir(parents=True, exist_ok=True)
        with lock:
            busy = env.cli("repair")
        assert busy.rc == 0 and "another hpc-bridge repair is running" in busy.stdout
        assert "DOWN" in slurm_nodes(env)["htc-f2sv2-4"].state_flags  # nothing done

        env.sim.set_faults(error_rate=1.0)
        bad = env.cli("repair")
        assert bad.rc == 1 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
        assert "DOWN" in slurm_nodes(env)["htc-f2sv2-4"].state_flags  # nothing done without the cloud's view
        env.sim.set_faults(error_rate=0.0)

        ok = env.cli("repair")
        assert ok.rc == 0, ok.stderr
        assert "DOWN" not in slurm_nodes(env)["htc-f2sv2-4"].state_flags
    finally:
        env.close()
