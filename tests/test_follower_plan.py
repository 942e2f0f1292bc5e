"""The follower's pure parts: a round's plan, which GET nodes to make, the backoff, the lease."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpc_bridge.api.models import Node
from hpc_bridge.config import config_from_dict
from hpc_bridge.errors import ConfigError
from hpc_bridge.follower import close_finished
from hpc_bridge.follower_plan import next_interval, nodes_query, plan_round, still_deferred, suspended_since_watched
from hpc_bridge.lease import lease_held
from hpc_bridge.state_records import DONE, Lease, State, Watch

NOW = 1_000_000.0


def node(name, status, **kw):
    return Node.from_wire({"Name": name, "NodeId": f"id-{name}", "Status": status, **kw})


def watching(*names, recreate=()):
    return {n: Watch(deadline=NOW + 600, since=NOW - 10, recreate=n in recreate) for n in names}


def test_round_plan_sorts_every_status():
    cloud = {n.name: n for n in [
        node("a", "Ready", PrivateIp="10.0.0.1", Hostname="a-host"),
        node("b", "Acquiring"),
        node("c", "Failed", StatusMessage="disk quota"),
        node("d", "Ready", PrivateIp="10.0.0.4; rm -rf /"),
        node("e", "Terminated"),
        node("f", "Terminating"),
    ]}
    plan = plan_round(watching("a", "b", "c", "d", "e", "f", "g", "h", recreate=("f", "g")), cloud, "ip")
    assert plan.addresses == {"a": ("10.0.0.1", "a-host")}
    assert plan.ready == {"a"}
    assert plan.failed == {"c": "cloud node failed: disk quota"} and plan.terminate == {"c": "id-c"}
    assert set(plan.problems) == {"d"}
    assert plan.gone == ["g"]  # f's old record is still going; g's is gone; h is not visible yet
    assert plan.done == {"a", "c", "d"}


def test_an_address_is_set_while_the_node_boots_and_once():
    """In Slurm before the VM's slurmd can register (a job launched to the node's name fails);
    once set it is not set again, and the node is done when Ready."""
    booting = {"a": node("a", "Preparing", PrivateIp="10.0.0.1", Hostname="a-host"), "b": node("b", "Acquiring")}
    plan = plan_round(watching("a", "b"), booting, "ip")
    assert plan.addresses == {"a": ("10.0.0.1", "a-host")} and plan.done == set()
    told = {"a": ("10.0.0.1", "a-host")}
    assert plan_round(watching("a", "b"), booting, "ip", told).addresses == {}
    ready = {"a": node("a", "Ready", PrivateIp="10.0.0.1", Hostname="a-host")}
    plan = plan_round(watching("a"), ready, "ip", told)
    assert plan.addresses == {} and plan.ready == {"a"}
    moved = {"a": node("a", "Ready", PrivateIp="10.0.0.9", Hostname="a-host")}
    assert plan_round(watching("a"), moved, "ip", told).addresses == {"a": ("10.0.0.9", "a-host")}
    hostile = {"a": node("a", "Preparing", PrivateIp="10.0.0.1 State=DOWN")}
    assert set(plan_round(watching("a"), hostile, "ip").problems) == {"a"}


def test_ready_without_an_address_is_done_only_when_no_address_is_needed():
    cloud = {"a": node("a", "Ready")}
    assert plan_round(watching("a"), cloud, "ip").ready == set()
    assert plan_round(watching("a"), cloud, "none").ready == {"a"}


def _state_with(*ops, watch=None):
    state = State()
    for rid, names, op_id in ops:
        op = state.begin("create", names, rid, NOW - 5, NOW + 600)
        op.accept(op_id)
    state.watch = watch or {}
    return state


def test_one_open_operation_asks_for_its_nodes_only():
    state = _state_with(("r1", ["a", "b"], "op-1"), watch=watching("a", "b"))
    assert nodes_query(state, state.watch, NOW) == {"operation": "op-1"}
    no_id = _state_with(("r1", ["a", "b"], None), watch=watching("a", "b"))
    assert nodes_query(no_id, no_id.watch, NOW) == {"request_id": "r1"}


@pytest.mark.parametrize("ops, watch", [
    ([("r1", ["a"], "op-1"), ("r2", ["b"], "op-2")], watching("a", "b")),  # two operations
    ([("r1", ["a"], "op-1")], watching("a", "b")),  # b has no open operation (already up, say)
    ([("r1", ["a", "b"], "op-1")], watching("a", "b", recreate=("b",))),  # b waits for an old record
])
def test_anything_else_asks_for_the_full_list(ops, watch):
    state = _state_with(*ops, watch=watch)
    assert nodes_query(state, state.watch, NOW) == {}


def test_suspend_after_the_watch_began_drops_the_node_one_before_does_not():
    state = State()
    state.watch = watching("a", "b")
    state.begin("terminate", ["a"], "t1", NOW - 20, NOW + 600)  # before it was watched
    state.begin("terminate", ["b"], "t2", NOW - 1, NOW + 600)  # after
    assert suspended_since_watched(state, state.watch) == ["b"]


def test_deferred_names_are_created_by_deadline_and_only_while_slurm_waits_for_them():
    """Each create keeps its resume's deadline: names deferred by different resumes go in
    different rounds (earliest first), never one raised to another's."""
    state = State()
    state.watch = {"a": Watch(NOW + 100, NOW - 500, True), "b": Watch(NOW + 400, NOW - 200, True),
                   "c": Watch(NOW + 100, NOW - 500, True), "d": Watch(NOW + 400, NOW - 200, False),
                   "e": Watch(NOW - 1, NOW - 601, True)}
    assert still_deferred(state, ["a", "b", "c", "d", "e", "f"], NOW) == (["a", "c"], NOW + 100)
    assert still_deferred(state, ["b", "d", "e"], NOW) == (["b"], NOW + 400)
    assert still_deferred(state, ["a", "b"], NOW + 100) == (["b"], NOW + 400)  # a's deadline passed
    assert still_deferred(state, ["d", "e", "f"], NOW) == ([], None)


def test_add_watch_again_counts_from_the_new_resume():
    state = State()
    state.add_watch(["a"], NOW + 100, NOW - 50)
    state.begin("terminate", ["a"], "t1", NOW - 20, NOW + 600)
    state.add_watch(["a"], NOW + 50, NOW)  # resumed again after the suspend
    assert suspended_since_watched(state, state.watch) == []
    assert state.watch["a"].deadline == NOW + 100  # the later deadline stays


def test_close_finished_only_when_every_node_is_ready_and_none_is_watched():
    state = _state_with(("r1", ["a", "b"], "op-1"), ("r2", ["c", "d"], "op-2"), watch=watching("d"))
    cloud = {n: node(n, "Ready") for n in "abcd"}
    assert close_finished(state, {"a"}, cloud, NOW) == 1  # b Ready in an earlier round
    assert state.operations["r1"].outcome == DONE
    assert close_finished(state, {"c"}, cloud, NOW) == 0  # d still watched
    cloud["d"] = node("d", "Failed")
    state.watch = {}
    assert close_finished(state, {"c"}, cloud, NOW) == 0  # d failed: repair decides


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40),
       st.floats(0.1, 10), st.floats(1, 100))
def test_interval_stays_within_bounds_and_resets_on_change(rounds, poll, extra):
    poll_max = poll + extra
    interval = poll
    for changed, failed in rounds:
        new = next_interval(interval, changed, failed, poll, poll_max)
        assert poll <= new <= poll_max
        if changed and not failed:
            assert new == poll
        else:
            assert new >= min(interval, poll_max)
        interval = new


def test_interval_backs_off_to_the_maximum_while_nothing_changes():
    interval = 2.0
    for _ in range(10):
        interval = next_interval(interval, False, False, 2.0, 15.0)
    assert interval == 15.0


@pytest.mark.parametrize("lease, host, alive, held", [
    (None, "h1", True, False),
    (Lease("h1", 10, NOW - 5, NOW - 100), "h1", True, True),
    (Lease("h1", 10, NOW - 5, NOW - 100), "h1", False, False),  # its process is gone: at once
    (Lease("h1", 10, NOW - 61, NOW - 100), "h1", True, False),  # no heartbeat for too long (hung)
    (Lease("h2", 10, NOW - 5, NOW - 100), "h1", False, True),  # another host: only the heartbeat counts
    (Lease("h2", 10, NOW - 61, NOW - 100), "h1", True, False),
])
def test_lease_table(lease, host, alive, held):
    assert lease_held(lease, NOW, 60.0, host=host, alive=lambda pid: alive) is held


def test_lease_and_watch_round_trip_through_the_state_file(tmp_path):
    from hpc_bridge.state import StateStore

    store = StateStore(tmp_path / "state.json")
    with store.transaction() as state:
        state.add_watch(["a", "b"], NOW + 60, NOW, recreate=["b"])
        state.follower = Lease("h1", 42, NOW, NOW - 3)
    back = store.read()
    assert back.watch == {"a": Watch(NOW + 60, NOW, False), "b": Watch(NOW + 60, NOW, True)}
    assert back.follower == Lease("h1", 42, NOW, NOW - 3)


@pytest.mark.parametrize("resume, message", [
    ({"poll_interval": 5, "poll_max": 2}, "poll_max (2) must be at least"),
    ({"poll_max": 40, "follower_lease": 60}, "must be at least twice"),
])
def test_poll_settings_are_checked(resume, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"cluster": {"url": "http://127.0.0.1:1", "name": "demo", "username": "u"},
                          "resume": resume})


# --------------------------------------------------------------------------- a create in flight, superseded

def test_a_create_not_answered_or_answered_after_the_read_is_unseen():
    state = State()
    pending = state.begin("create", ["a"], "r1", NOW - 5, NOW + 600)
    answered = state.begin("create", ["b"], "r2", NOW - 5, NOW + 600)
    answered.accept("op-2", now=NOW - 1)
    old = state.begin("create", ["c"], "r3", NOW - 500, NOW + 600)
    old.accept("op-3", now=NOW - 400)
    assert pending.outcome == "pending"
    assert state.brought_up_since(["a", "b", "c", "d"], NOW - 2) == {"a", "b"}
    assert state.brought_up_since(["a", "b", "c"], NOW) == {"a"}


def test_resume_leaves_an_unseen_name_to_the_follower_instead_of_creating_it():
    # the soak's race: a follower's create in flight, then resume-fail recorded a suspend for the
    # name (so the create no longer counts as in flight), then a resume read the cloud before
    # the create landed: it must not create the name a second time
    from test_resume_plan import NODEMAP, buckets, cfg

    from hpc_bridge.resume_plan import plan_resume

    plan = plan_resume(["htc-f2sv2-1", "htc-f2sv2-2"], NODEMAP, {}, buckets(), {}, {}, [], cfg(), NOW,
                       unseen={"htc-f2sv2-1"})
    assert [n for n, _ in plan.create] == ["htc-f2sv2-2"]
    assert plan.deferred == ["htc-f2sv2-1"] and "htc-f2sv2-1" in plan.waiting
    assert plan.to_watch() == ["htc-f2sv2-1", "htc-f2sv2-2"]


def test_a_deferred_name_whose_node_came_up_after_all_is_followed_not_created():
    cloud = {n.name: n for n in [node("a", "Acquiring"), node("b", "Ready", PrivateIp="10.0.0.2"),
                                 node("c", "Terminating"), node("d", "Deallocated")]}
    plan = plan_round(watching("a", "b", "c", "d", "e", recreate=("a", "b", "c", "d", "e")), cloud, "ip")
    assert plan.gone == ["d", "e"]  # d: its deallocation ended, resume's code starts it
    assert plan.ready == {"b"} and plan.addresses == {"b": ("10.0.0.2", "10.0.0.2")}
    assert "a" not in plan.done and "c" not in plan.done and "d" not in plan.done


def test_a_resume_after_the_suspend_keeps_the_node_the_earlier_create_made():
    from hpc_bridge.journal import Call
    from hpc_bridge.resume import _suspended_meanwhile

    call = Call("create", ["a", "b"], {"sets": []}, NOW + 600)
    state = State()
    state.begin("create", ["a", "b"], call.request_id, NOW - 10, NOW + 600)
    state.begin("shutdown", ["a", "b"], "s1", NOW - 5, NOW - 5)  # resume-fail, nothing to stop yet
    state.add_watch(["b"], NOW + 600, NOW - 1, recreate=["b"])  # then Slurm resumed b again
    assert _suspended_meanwhile(state, [call], ["a", "b"]) == ["a"]
