"""The apply code in-process: run_resume, run_suspend, run_resume_fail, run_repair and one
follower round against the real simulator (real HTTP) and the recording Slurm port
(tests/recording_slurm.py). What Slurm itself does with the updates is tested with a real
slurmctld in test_hooks.py, test_repair_slurm.py and test_follower.py."""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Protocol

import pytest

from bridge_env import default_scenario
from recording_slurm import RecordingSlurm, node
from hpc_bridge import ports
from hpc_bridge.api.client import ClusterClient
from hpc_bridge.config import load_config
from hpc_bridge.errors import InvalidRequestError
from hpc_bridge.journal import Call, Journal, record
from hpc_bridge.nodemap import load_nodemap
from hpc_bridge.sim.server import SimServer
from hpc_bridge.slurm import Slurm
from hpc_bridge.state import StateStore
from hpc_bridge.state_records import ACCEPTED, DONE, FAILED, PENDING
from test_ops_sim import write_config

F2 = "htc/Standard_F2s_v2"


class Bridge:
    """The simulator, a config for it, the node map `hpc-bridge partitions` writes, and the
    ports the apply code takes: a real client and state store, a recording Slurm."""

    def __init__(self, tmp_path: Path, sim: SimServer, resume_extra: str = ""):
        self.sim = sim
        self.config_path = write_config(tmp_path, sim)  # its last table is [resume]
        with self.config_path.open("a") as fh:
            fh.write(resume_extra)
        from hpc_bridge.cli import main

        assert main(["--config", str(self.config_path), "partitions"]) == 0
        self.cfg = load_config(str(self.config_path))
        self.nodemap = load_nodemap(self.cfg.nodemap_path)
        self.client = ClusterClient.from_config(self.cfg)
        self.store = StateStore.from_config(self.cfg)
        self.slurm = RecordingSlurm(node(n) for n in self.nodemap.names())

    def ports(self) -> dict:
        return {"client": self.client, "slurm": self.slurm, "store": self.store, "nodemap": self.nodemap}

    def resume(self, expr: str, **kw):
        from hpc_bridge.resume import run_resume

        return run_resume(self.cfg, expr, [], **self.ports(), **kw)

    def suspend(self, expr: str, **kw):
        from hpc_bridge.suspend import run_suspend

        return run_suspend(self.cfg, expr, **self.ports(), **kw)

    def resume_fail(self, expr: str, **kw):
        from hpc_bridge.suspend import run_resume_fail

        return run_resume_fail(self.cfg, expr, **self.ports(), **kw)

    def repair(self, **kw):
        from hpc_bridge.repair import run_repair

        return run_repair(self.cfg, **self.ports(), **kw)

    def operations(self, action: str | None = None) -> list:
        ops = sorted(self.store.read().operations.values(), key=lambda o: o.started)
        return [op for op in ops if action is None or op.action == action]

    def cloud(self) -> dict[str, dict]:
        """Live cloud records by name, straight from the simulator's model."""
        with self.sim._lock:
            return {n["Name"]: n for n in self.sim.model.get_nodes(self.sim.now())["nodes"]
                    if n["Status"] not in ("Terminated", "Off")}

    def boot(self) -> None:
        """Move the simulated clock past every boot."""
        self.sim.advance(3600)

    def follow(self, sleep=lambda s: None):
        """The follower, in-process: it sets the addresses of what is Ready and closes the
        create/start records, then exits with nothing left to watch."""
        from hpc_bridge.follower import follow

        return follow(self.cfg, client=self.client, slurm=self.slurm, store=self.store, nodemap=self.nodemap,
                      sleep=sleep)


@pytest.fixture
def bridge(tmp_path, monkeypatch, request):
    """The bridge on the default scenario; a test parametrized indirectly on `bridge` gives
    [cluster] settings of the simulator to change."""
    for name in ("HPC_BRIDGE_PASSWORD", "SLURM_CONF"):
        monkeypatch.delenv(name, raising=False)
    # boots take simulated minutes: a node is Ready when a test moves the clock (Bridge.boot)
    scenario = default_scenario(timings={"time_scale": 1.0}, cluster=getattr(request, "param", {}))
    with SimServer(scenario) as sim:
        sim.start()
        # a follower round waits poll_interval of real time
        b = Bridge(tmp_path, sim, 'poll_interval = 0.1\nboot_failure_limit = 2\n'
                                  '[partitions.nodearrays.htc]\nsuspend_policy = "terminate"\n')
        yield b
        b.client.close()


# --------------------------------------------------------------------------- ports


@pytest.mark.parametrize("edge, port", [
    (ClusterClient, ports.ClusterApi),
    (Slurm, ports.SlurmControl),
    (RecordingSlurm, ports.SlurmControl),
    (StateStore, ports.StateStorage),
    (Journal, ports.CallJournal),
])
def test_each_edge_takes_every_call_its_port_declares(edge, port):
    """Every method of the port is there, accepting the port's parameters by the same names
    and kinds (any extra parameter has a default); attributes are set by the constructor."""
    for name, member in vars(port).items():
        if name.startswith("_") or not callable(member):
            continue
        assert callable(getattr(edge, name, None)), f"{edge.__name__} has no {name}"
        want = list(inspect.signature(member).parameters.values())[1:]
        have = dict(list(inspect.signature(getattr(edge, name)).parameters.items())[1:])
        for p in want:
            assert p.name in have, f"{edge.__name__}.{name} takes no {p.name}"
            assert have[p.name].kind in (p.kind, inspect.Parameter.POSITIONAL_OR_KEYWORD), (name, p.name)
            assert (have[p.name].default is inspect.Parameter.empty) <= (p.default is inspect.Parameter.empty)
        extra = [q for n, q in have.items() if n not in {p.name for p in want} and q.kind not in (q.VAR_KEYWORD, q.VAR_POSITIONAL)]
        assert all(q.default is not inspect.Parameter.empty for q in extra), (name, extra)
    attributes = [a for a in getattr(port, "__annotations__", {}) if not a.startswith("_")]
    source = inspect.getsource(edge.__init__)
    assert all(f"self.{a} =" in source for a in attributes), (edge.__name__, attributes)
    assert issubclass(port, Protocol)


# --------------------------------------------------------------------------- resume


def test_resume_creates_with_one_call_recorded_before_it_was_sent(bridge):
    report = bridge.resume("htc-f2sv2-[1-2]")
    assert report.ok and report.created == ["htc-f2sv2-1", "htc-f2sv2-2"], report
    assert report.api_calls == 2 and report.scontrol_calls == 0  # GET status with the nodes, create
    [create] = bridge.operations()
    assert create.action == "create" and create.outcome == ACCEPTED and create.nodes == report.created
    assert create.operation_id and create.request is None  # accepted: never sent again
    assert sorted(bridge.cloud()) == report.created and bridge.sim.stats()["creates"]["calls"] == 1
    assert sorted(bridge.store.read().watch) == report.created  # for the follower
    assert bridge.slurm.updates == []

    again = bridge.resume("htc-f2sv2-[1-2]")  # still in flight: waited for, not created twice
    assert again.created == [] and sorted(again.waiting) == report.created and again.api_calls == 1
    assert len(bridge.operations()) == 1


@pytest.mark.parametrize("bridge", [{"status_node_list": False}], indirect=True)
def test_resume_reads_the_nodes_on_their_own_when_status_leaves_them_out(bridge):
    """The simulator answers GET status?nodes=true without the node list, as the reference
    allows: resume asks GET nodes for them, and sees what is there."""
    first = bridge.resume("htc-f2sv2-1")
    assert first.created == ["htc-f2sv2-1"] and first.api_calls == 3  # GET status, GET nodes, create
    bridge.boot()
    bridge.follow()  # Ready and addressed: its create is closed, only the cloud says it is up
    assert bridge.store.read().resume_in_flight(time.time()) == {}
    bridge.sim.reset_stats()
    report = bridge.resume("htc-f2sv2-[1-2]")
    # the Ready node is seen (not created twice), the other one is created
    assert report.created == ["htc-f2sv2-2"] and report.running == ["htc-f2sv2-1"] and report.ok, report
    assert bridge.sim.stats()["requests"] == {"status": 1, "nodes": 1, "nodes/create": 1}
    assert sorted(bridge.cloud()) == ["htc-f2sv2-1", "htc-f2sv2-2"]


def test_resume_of_a_size_out_of_capacity_goes_down_with_the_clouds_reason(bridge):
    bridge.sim.set_faults(capacity_failure=[F2])
    report = bridge.resume("htc-f2sv2-1")
    assert not report.ok and report.created == []
    why = report.down["htc-f2sv2-1"]
    assert why.startswith(f"create refused: capacity failure for {F2} (Capacity failure: no capacity"), why
    down = bridge.slurm.down()
    assert down["htc-f2sv2-1"] == "hpc-bridge: " + why
    # the size's other idle~ nodes leave service for the cool-off; other sizes do not
    others = sorted(n for n in down if n != "htc-f2sv2-1")
    assert others and all(n.startswith("htc-f2sv2-") for n in others)
    assert all(down[n].startswith(f"hpc-bridge: capacity cool-off for {F2}: Capacity failure") for n in others)
    state = bridge.store.read()
    assert state.cooloffs[F2].nodes == others and state.cooloffs[F2].until > 0
    assert state.down_reasons["htc-f2sv2-1"][1] == "hpc-bridge: " + why  # for resume-fail
    assert "htc-f2sv2-1" not in state.watch
    [create] = bridge.operations()
    assert create.outcome == ACCEPTED  # the API answered (it added none): nothing to re-send
    # one scontrol call per reason
    assert report.scontrol_calls == 1 + 1 + 1  # show nodes, DOWN (refused), DOWN (cool-off)

    later = bridge.resume("htc-f2sv2-2")  # the cool-off holds: no create is even tried
    assert later.down["htc-f2sv2-2"].startswith(f"capacity cool-off for {F2}") and later.api_calls == 1


def test_resume_whose_create_answer_is_lost_recovers_it_on_the_409(bridge):
    bridge.sim.set_faults(endpoints={"nodes/create": {"lost_response_rate": 1.0, "times": 1}})
    report = bridge.resume("htc-f4sv2-[1-2]")
    assert report.ok and report.created == ["htc-f4sv2-1", "htc-f4sv2-2"], report
    assert bridge.sim.stats()["creates"]["calls"] == 2  # the retry, same requestId: 409, found
    [create] = bridge.operations()
    assert create.outcome == ACCEPTED and create.message == "recovered after 409"
    assert sorted(bridge.cloud()) == report.created


def test_resume_whose_create_gets_no_answer_gives_the_call_up_once(bridge):
    """Unreachable on the create: the record is decided FAILED when it is settled (the nodes go
    DOWN, so nothing may re-send it behind Slurm's back), not left PENDING and closed later."""
    bridge.sim.set_faults(endpoints={"nodes/create": {"drop_rate": 1.0}})
    report = bridge.resume("htc-f2sv2-[1-2]")
    assert report.down == dict.fromkeys(["htc-f2sv2-1", "htc-f2sv2-2"], "cluster API unreachable")
    assert bridge.slurm.down() == dict.fromkeys(report.down, "hpc-bridge: cluster API unreachable")
    [create] = bridge.operations()
    assert create.outcome == FAILED and create.finished is not None and "create" in create.message
    state = bridge.store.read()
    assert state.watch == {} and state.cooloffs == {}
    assert set(state.down_reasons) == set(report.down)
    assert report.errors == []


def test_resume_with_the_api_unreachable_records_nothing_and_takes_the_nodes_down(bridge):
    bridge.sim.stop()
    report = bridge.resume("htc-f2sv2-[1-2],gone-1")
    assert report.unknown == ["gone-1"]
    assert report.down == dict.fromkeys(["htc-f2sv2-1", "htc-f2sv2-2"], "cluster API unreachable")
    assert bridge.slurm.down() == dict.fromkeys(report.down, "hpc-bridge: cluster API unreachable")
    assert bridge.operations() == [] and set(bridge.store.read().down_reasons) == set(report.down)


def test_resume_starts_a_deallocated_node_and_sets_a_ready_ones_address(bridge):
    bridge.resume("hpc-hb120rsv3-[1-2]")
    bridge.boot()
    bridge.follow()
    # hpc's policy is the node's own ShutdownPolicy (the scenario's: Deallocate)
    assert bridge.suspend("hpc-hb120rsv3-1").by_action == {"shutdown": ["hpc-hb120rsv3-1"]}
    bridge.boot()
    assert bridge.cloud()["hpc-hb120rsv3-1"]["Status"] == "Deallocated"
    bridge.slurm.updates.clear()
    report = bridge.resume("hpc-hb120rsv3-[1-2]")
    assert report.started == ["hpc-hb120rsv3-1"] and report.running == ["hpc-hb120rsv3-2"], report
    ip = bridge.cloud()["hpc-hb120rsv3-2"]["PrivateIp"]
    assert bridge.slurm.nodes["hpc-hb120rsv3-2"].node_addr == ip
    start = bridge.operations("start")[-1]
    assert start.outcome == ACCEPTED and start.nodes == ["hpc-hb120rsv3-1"]


# --------------------------------------------------------------------------- suspend


def test_suspend_records_each_action_and_resets_addresses(bridge):
    bridge.resume("htc-f2sv2-1,hpc-hb120rsv3-1")
    bridge.boot()
    report = bridge.suspend("htc-f2sv2-1,hpc-hb120rsv3-1,htc-f2sv2-2")
    assert report.ok, report
    assert report.by_action == {"shutdown": ["hpc-hb120rsv3-1"], "terminate": ["htc-f2sv2-1"]}
    assert report.nothing == ["htc-f2sv2-2"] and report.api_calls == 3  # GET nodes + one call per action
    ops = {op.action: op for op in bridge.operations() if op.action != "create"}
    assert {a: (op.outcome, op.nodes) for a, op in ops.items()} == {
        "shutdown": (ACCEPTED, ["hpc-hb120rsv3-1"]), "terminate": (ACCEPTED, ["htc-f2sv2-1"])}
    [reset] = bridge.slurm.updates
    assert reset.names == ("hpc-hb120rsv3-1", "htc-f2sv2-1", "htc-f2sv2-2") and reset.state is None
    assert reset.addresses == tuple((n, n) for n in reset.names)


def test_suspend_with_the_api_unreachable_leaves_its_call_for_repair(bridge):
    bridge.sim.stop()
    report = bridge.suspend("htc-f2sv2-[1-2]")
    assert report.failed.keys() == {"htc-f2sv2-1", "htc-f2sv2-2"}
    [op] = bridge.operations()
    assert op.action == "shutdown" and op.outcome == PENDING and op.message.startswith("not sent: ")
    assert op.request == {"names": ["htc-f2sv2-1", "htc-f2sv2-2"]}  # what repair sends


def test_a_suspend_call_that_gets_no_answer_stays_pending_for_repair(bridge):
    bridge.resume("htc-f2sv2-1")
    bridge.boot()
    bridge.sim.set_faults(endpoints={"nodes/terminate": {"drop_rate": 1.0}})
    report = bridge.suspend("htc-f2sv2-1")
    assert report.failed["htc-f2sv2-1"].startswith("terminate: ")
    [op] = bridge.operations("terminate")
    assert op.outcome == PENDING and op.request == {"ids": [bridge.cloud()["htc-f2sv2-1"]["NodeId"]]}


# --------------------------------------------------------------------------- resume-fail


def test_resume_fail_terminates_and_holds_a_size_whose_vms_never_register(bridge):
    bridge.resume("htc-f4sv2-[1-2]")
    bridge.boot()  # Ready, but (here) no slurmd ever registers
    report = bridge.resume_fail("htc-f4sv2-[1-2]")
    assert report.by_action == {"terminate": ["htc-f4sv2-1", "htc-f4sv2-2"]}
    down = bridge.slurm.down()
    never = "hpc-bridge: resume failed: VM Ready, slurmd did not register within ResumeTimeout"
    assert down["htc-f4sv2-1"] == down["htc-f4sv2-2"] == never
    # boot_failure_limit = 2 reached: the size is held, its idle~ nodes out of service
    held = sorted(n for n in down if n not in ("htc-f4sv2-1", "htc-f4sv2-2"))
    assert held and all(n.startswith("htc-f4sv2-") for n in held)
    assert all("out of service until an admin clears it" in down[n] for n in held)
    cooloff = bridge.store.read().cooloffs["htc/Standard_F4s_v2"]
    assert cooloff.held and cooloff.nodes == sorted(["htc-f4sv2-1", "htc-f4sv2-2", *held])  # one transaction

    later = bridge.resume("htc-f4sv2-3")
    assert "out of service until an admin clears it" in later.down["htc-f4sv2-3"] and later.created == []


def test_resume_fail_puts_the_cause_recorded_at_resume_back(bridge):
    bridge.sim.set_faults(capacity_failure=[F2])
    bridge.resume("htc-f2sv2-1")
    bridge.slurm.update_nodes(["htc-f2sv2-1"], state="DOWN", reason="ResumeTimeout reached")  # as slurmctld does
    report = bridge.resume_fail("htc-f2sv2-1")
    assert report.ok and report.nothing == ["htc-f2sv2-1"]
    assert bridge.slurm.nodes["htc-f2sv2-1"].reason.startswith(
        f"hpc-bridge: resume failed: create refused: capacity failure for {F2}")


# --------------------------------------------------------------------------- repair


def test_repair_terminates_a_leaked_vm_and_resends_a_killed_hooks_call(bridge):
    bridge.resume("htc-f2sv2-[1-2]")
    bridge.boot()
    bridge.follow()
    now = bridge.sim.now() + 2 * bridge.cfg.repair.grace  # past the grace
    # htc-f2sv2-1: leaked (Slurm has it idle~); htc-f2sv2-2: a suspend recorded by a hook that died
    node_id = bridge.cloud()["htc-f2sv2-2"]["NodeId"]
    call = Call("terminate", ["htc-f2sv2-2"], {"ids": [node_id]}, now + 600)
    with bridge.store.transaction() as state:
        record(state, [call], now - 120)
    report = bridge.repair(now=lambda: now, is_alive=lambda pid: False)
    kinds = sorted((a.kind, a.node) for a in report.changes)
    assert ("terminate", "htc-f2sv2-1") in kinds and ("resend_operation", "htc-f2sv2-2") in kinds, kinds
    assert report.ok, report.errors
    ops = {op.request_id: op for op in bridge.operations("terminate")}
    assert ops[call.request_id].outcome == ACCEPTED  # re-sent with its own requestId
    leaked = next(op for rid, op in ops.items() if rid != call.request_id)
    assert leaked.nodes == ["htc-f2sv2-1"] and leaked.outcome == ACCEPTED
    assert bridge.cloud().get("htc-f2sv2-1", {}).get("Status") in (None, "Terminating")
    # a second run right after: nothing left to do
    assert bridge.repair(now=lambda: now + 1, is_alive=lambda pid: False).changes == []


def test_repair_resending_a_call_that_had_gone_through_settles_it_on_the_409(bridge):
    bridge.resume("htc-f2sv2-1")
    bridge.boot()
    bridge.follow()
    node_id = bridge.cloud()["htc-f2sv2-1"]["NodeId"]
    call = Call("terminate", ["htc-f2sv2-1"], {"ids": [node_id]}, bridge.sim.now() + 3600)
    journal = Journal(bridge.store, bridge.client)
    journal.record_and_send([call])
    with bridge.store.transaction() as state:  # as if the hook died before it settled the call
        op = state.operations[call.request_id]
        op.outcome, op.request, op.operation_id, op.answered = PENDING, call.request, None, None
    now = bridge.sim.now() + 2 * bridge.cfg.repair.grace
    report = bridge.repair(now=lambda: now, is_alive=lambda pid: False)
    assert [a.kind for a in report.changes] == ["resend_operation"] and report.ok, report.changes
    op = bridge.store.read().operations[call.request_id]
    assert op.outcome == ACCEPTED and op.message == "recovered after 409"


def test_the_journal_answers_a_send_with_the_state_it_settled_the_calls_in(bridge):
    """The state as the settle transaction wrote it (resume asks it which nodes were suspended
    meanwhile, without reading the file again); when the outcomes cannot be written, no state
    and why (the call was sent all the same)."""
    bridge.resume("htc-f2sv2-[1-2]")
    ids = {n: node["NodeId"] for n, node in bridge.cloud().items()}
    calls = [Call("terminate", [n], {"ids": [ids[n]]}, bridge.sim.now() + 600) for n in sorted(ids)]
    with bridge.store.transaction() as state:
        record(state, calls, bridge.sim.now())

    settled = Journal(bridge.store, bridge.client).send(calls[:1])
    assert settled.error is None and settled.state.operations[calls[0].request_id].outcome == ACCEPTED
    assert settled.state.to_json() == bridge.store.read().to_json()

    locked_out = StateStore(bridge.store.path, lock_timeout=0.2)
    with bridge.store.locked():
        settled = Journal(locked_out, bridge.client).send(calls[1:])
    assert settled.state is None and "locked by another" in str(settled.error)
    assert calls[1].result is not None
    assert bridge.store.read().operations[calls[1].request_id].outcome == PENDING  # left for repair


def test_a_call_that_does_not_fit_the_schema_is_closed_failed_and_never_sent(bridge):
    """A request the client will not send (a count that is no number; a recorded management call
    that selects nothing, as a damaged state file could hold): closed FAILED naming the problem,
    never sent, and repair carries on instead of failing on it at every run."""
    bridge.sim.reset_stats()
    bad_create = Call("create", ["htc-f2sv2-1"], {"sets": [{"count": "two", "nodearray": "htc"}]},
                      bridge.sim.now() + 600)
    Journal(bridge.store, bridge.client).record_and_send([bad_create])
    assert isinstance(bad_create.error, InvalidRequestError) and bad_create.result is None
    op = bridge.store.read().operations[bad_create.request_id]
    assert op.outcome == FAILED and "not sent, the request is invalid" in op.message and "sets.0.count" in op.message

    now = bridge.sim.now() + 2 * bridge.cfg.repair.grace
    bad_stop = Call("terminate", ["htc-f2sv2-2"], {"ids": []}, now + 600)
    with bridge.store.transaction() as state:
        record(state, [bad_stop], now - 120)
    report = bridge.repair(now=lambda: now, is_alive=lambda pid: False)
    assert [a.kind for a in report.changes] == ["resend_operation"], report.changes
    op = bridge.store.read().operations[bad_stop.request_id]
    assert op.outcome == FAILED and "selects no nodes" in op.message, op.message
    assert not [k for k in bridge.sim.stats()["requests"] if k.startswith("nodes/")], "nothing was sent"
    assert bridge.repair(now=lambda: now + 1, is_alive=lambda pid: False).changes == []


def test_repair_puts_back_the_nodes_of_an_expired_cooloff(bridge):
    bridge.sim.set_faults(capacity_failure=[F2])
    bridge.resume("htc-f2sv2-1")
    bridge.sim.set_faults(capacity_failure=[])
    held = bridge.store.read().cooloffs[F2].nodes
    later = bridge.store.read().cooloffs[F2].until + 2 * bridge.cfg.resume.capacity_cooloff
    bridge.sim.advance(later - bridge.sim.now())
    report = bridge.repair(now=lambda: later)
    assert report.ok, report.errors
    assert bridge.slurm.with_state("RESUME") == sorted(held + ["htc-f2sv2-1"])
    assert bridge.store.read().cooloffs.get(F2) is None or bridge.store.read().cooloffs[F2].nodes == []


# --------------------------------------------------------------------------- follower


def test_a_follower_round_sets_addresses_and_closes_the_create(bridge):
    bridge.resume("htc-f2sv2-[1-2]")
    bridge.boot()
    report = bridge.follow()
    assert sorted(report.addressed) == ["htc-f2sv2-1", "htc-f2sv2-2"] and report.rounds == 1
    cloud = bridge.cloud()
    assert {n: bridge.slurm.nodes[n].node_addr for n in report.addressed} == {
        n: cloud[n]["PrivateIp"] for n in report.addressed}
    [create] = bridge.operations("create")
    assert create.outcome == DONE and create.ready is not None
    assert bridge.store.read().watch == {} and bridge.store.read().follower is None


def test_the_follower_creates_a_name_whose_old_node_was_still_going_on_its_own_read(bridge):
    """Resume defers a name whose old cloud node is still terminating; once the follower's read
    shows it gone, the follower creates it with resume's code on that read: one GET nodes per
    round (none more for the create), one GET status (the sizes' capacity), one create."""
    name = "htc-f2sv2-1"
    bridge.resume(name)
    bridge.boot()
    bridge.follow()
    bridge.suspend(name)  # htc: terminate; the old node is Terminating for simulated seconds
    report = bridge.resume(name)
    assert report.created == [] and report.waiting == [name]
    deferred = bridge.store.read().watch[name]
    assert deferred.recreate
    bridge.sim.advance(60)  # the old record is gone
    old_id = bridge.operations("create")[0].operation_id
    before = dict(bridge.sim.stats()["requests"])

    def sleep(seconds: float) -> None:  # each wait of the follower: the new node boots meanwhile
        bridge.boot()
        time.sleep(seconds)

    followed = bridge.follow(sleep)
    asked = {k: v - before.get(k, 0) for k, v in bridge.sim.stats()["requests"].items() if v != before.get(k, 0)}
    assert followed.recreated == [name] and followed.rounds == 2 and followed.addressed == [name]
    assert asked == {"nodes": 2, "status": 1, "nodes/create": 1}, asked
    assert bridge.cloud()[name]["Status"] == "Ready"
    assert [op.operation_id != old_id for op in bridge.operations("create")] == [False, True]
    # Slurm's ResumeTimeout runs from the resume that deferred it: the create is in flight no longer
    assert bridge.operations("create")[1].deadline == deferred.deadline
    assert bridge.store.read().watch == {}


def test_the_follower_starts_a_name_whose_old_node_was_still_deallocating(bridge):
    """A power-up while the deallocation is under way: resume defers the name; once the
    follower's read shows the VM Deallocated, it starts that VM (not left until the deadline)."""
    name = "hpc-hb120rsv3-1"
    bridge.resume(name)
    bridge.boot()
    bridge.follow()
    vm_id = bridge.cloud()[name]["NodeId"]
    bridge.suspend(name)
    assert bridge.cloud()[name]["Status"] in ("Deallocating", "Stopping"), bridge.cloud()[name]["Status"]
    report = bridge.resume(name)
    assert report.created == [] and report.started == [] and report.waiting == [name]
    assert bridge.store.read().watch[name].recreate
    bridge.sim.advance(60)
    assert bridge.cloud()[name]["Status"] == "Deallocated"
    waits = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        assert len(waits) < 50, "the follower kept waiting for the deallocated VM"
        bridge.boot()
        time.sleep(min(seconds, 0.05))

    followed = bridge.follow(sleep)
    assert followed.addressed == [name] and followed.unresolved == []
    assert bridge.cloud()[name]["Status"] == "Ready" and bridge.cloud()[name]["NodeId"] == vm_id
    assert [op.action for op in bridge.operations()][-1] == "start"
    assert bridge.store.read().watch == {}


@pytest.mark.parametrize("why", ["past its deadline", "suspended since", "off the list"])
def test_the_follower_does_not_create_a_deferred_name_slurm_no_longer_waits_for(bridge, why):
    """Between the follower's round and its create, Slurm may give up on the name (its
    ResumeTimeout passed), suspend it, or the name may leave the list: no VM for it then."""
    from hpc_bridge.cloud import index_by_name
    from hpc_bridge.resume import create_deferred

    name = "htc-f2sv2-1"
    bridge.resume(name)
    bridge.boot()
    bridge.follow()
    bridge.suspend(name)
    assert bridge.resume(name).waiting == [name]
    watch = bridge.store.read().watch[name]
    bridge.sim.advance(60)  # the old record is gone
    cloud = index_by_name(bridge.client.get_nodes().nodes)
    assert name not in cloud or cloud[name].status in ("Terminated", "Off")
    now = time.time
    if why == "past its deadline":
        now = lambda: watch.deadline + 1  # noqa: E731
    elif why == "suspended since":
        with bridge.store.transaction() as state:
            record(state, [Call("terminate", [name], {"names": [name]}, time.time() + 60)], time.time() + 1)
    else:
        with bridge.store.transaction() as state:
            state.drop_watch([name])
    creates = len(bridge.operations("create"))
    report = create_deferred(bridge.cfg, [name], cloud, time.time(), **bridge.ports(), now=now)
    assert report.created == [] and len(bridge.operations("create")) == creates
    assert name not in index_by_name(bridge.client.get_nodes().nodes) or \
        bridge.cloud().get(name, {}).get("Status") in (None, "Terminated", "Off")


def test_state_file_is_json_the_journal_wrote(bridge):
    bridge.resume("htc-f2sv2-1")
    data = json.loads(bridge.store.path.read_text())
    assert [op["outcome"] for op in data["operations"]] == [ACCEPTED]
