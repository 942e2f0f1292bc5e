"""The pure resume and suspend plans as tables, plus properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpc_bridge.api.models import Bucket, Node
from hpc_bridge.cloud import bucket_key
from hpc_bridge.config import config_from_dict
from hpc_bridge.errors import BridgeError
from hpc_bridge.nodemap import NodeMap, NodeRange
from hpc_bridge.reasons import KEPT_RUNNING, STOP_FAILED
from hpc_bridge.resume_file import Job, parse_resume_file
from hpc_bridge.resume_plan import classify_refusals, plan_resume
from hpc_bridge.state_records import FAILED, Cooloff, Operation, State
from hpc_bridge.suspend_plan import fail_reason, plan_suspend

NOW = 1_000_000.0
HPC = "Standard_HB120rs_v3"
F2, F4 = "Standard_F2s_v2", "Standard_F4s_v2"

NODEMAP = NodeMap("demo", [
    NodeRange("hpc-", 1, 8, "hpc", HPC, "b-hpc", "hpc", placement_group_size=4, placement_group_prefix="hpc-pg"),
    NodeRange("htc-f2sv2-", 1, 4, "htc", F2, "b-f2", "htc"),
    NodeRange("htc-f4sv2-", 1, 4, "htc", F4, "b-f4", "htc"),
])


def cfg(**arrays):
    return config_from_dict({
        "cluster": {"url": "http://127.0.0.1:1", "name": "demo", "username": "u"},
        "partitions": {"nodearrays": arrays},
    })


def bucket(machine_type, available=10, valid=True, last_failure=-1.0):
    return Bucket.model_validate({
        "bucketId": f"b-{machine_type}", "definition": {"machineType": machine_type},
        "virtualMachine": {"vcpuCount": 2, "memory": 4.0}, "availableCount": available, "valid": valid,
        "invalidReason": "" if valid else "DisabledMachineType", "lastCapacityFailure": last_failure,
    })


def buckets(hpc=10, f2=10, f4=10, **over):
    out = {bucket_key("hpc", HPC): bucket(HPC, hpc), bucket_key("htc", F2): bucket(F2, f2),
           bucket_key("htc", F4): bucket(F4, f4)}
    out.update(over)
    return out


def node(name, status, **kw):
    return Node.from_wire({"Name": name, "NodeId": f"id-{name}", "Status": status, **kw})


def plan(names, cloud=(), bk=None, in_flight=None, cooloffs=None, jobs=(), config=None, stop_unfinished=frozenset()):
    return plan_resume(names, NODEMAP, {n.name: n for n in cloud}, bk or buckets(), in_flight or {},
                       cooloffs or {}, list(jobs), config or cfg(), NOW, stop_unfinished=stop_unfinished)


# --------------------------------------------------------------------------- create refusals


F2_KEY = bucket_key("htc", F2)


@pytest.mark.parametrize("message,after,cloud,want_down,want_cooloff", [
    # the bucket reports a capacity failure just after the create: cool-off, whatever the words
    ("AllocationFailed: SKU not available in zone", bucket(F2, 5, last_failure=0.4), None,
     "create refused: capacity failure for htc/Standard_F2s_v2 (AllocationFailed", True),
    (None, bucket(F2, 5, last_failure=2.0), None, "create refused: capacity failure for htc/Standard_F2s_v2", True),
    # the word "capacity" in a message decides nothing
    ("capacity-pool nodearray reached its maxCount", bucket(F2, 5), None,
     "create refused: capacity-pool nodearray reached its maxCount", False),
    # no room left: quota or max count, not a capacity failure
    ("Capacity failure (their words)", bucket(F2, 0), None,
     "create refused: htc/Standard_F2s_v2: no capacity left (quota or max count reached)", False),
    # an old failure, beyond the cool-off window, is not this create's
    ("x", bucket(F2, 5, last_failure=900.0), None, "create refused: x", False),
    # the status could not be read: the message is shown, nothing is inferred
    ("Capacity failure", None, None, "create refused: Capacity failure", False),
    (None, None, None, "create refused: not created (no reason given)", False),
])
def test_create_refusals_are_decided_on_documented_data(message, after, cloud, want_down, want_cooloff):
    bk = None if after is None else {F2_KEY: after}
    out = classify_refusals({"htc-f2sv2-1": message}, NODEMAP, cloud, bk, 600.0)
    assert out.down["htc-f2sv2-1"].startswith(want_down), out.down
    assert (F2_KEY in out.capacity) == want_cooloff and not out.running


def test_a_refused_name_that_is_live_in_the_cloud_is_not_down():
    cloud = {"htc-f2sv2-1": node("htc-f2sv2-1", "Acquiring"), "htc-f2sv2-2": node("htc-f2sv2-2", "Failed")}
    out = classify_refusals({"htc-f2sv2-1": "name exists", "htc-f2sv2-2": "name exists"}, NODEMAP, cloud,
                            {F2_KEY: bucket(F2, 5)}, 600.0)
    assert out.running == ["htc-f2sv2-1"] and list(out.down) == ["htc-f2sv2-2"] and not out.capacity


# --------------------------------------------------------------------------- classification table

@pytest.mark.parametrize("status,expect", [
    (None, "create"), ("Terminated", "create"), ("Off", "create"),
    ("Acquiring", "running"), ("Preparing", "running"), ("Ready", "running"),
    ("Deallocated", "start"), ("Failed", "down"), ("Terminating", "waiting"), ("Deallocating", "waiting"),
])
def test_each_cloud_status_is_classified(status, expect):
    cloud = [node("hpc-1", status)] if status else []
    p = plan(["hpc-1"], cloud)
    where = {"create": [n for n, _ in p.create], "running": list(p.running), "start": list(p.start),
             "down": list(p.down), "waiting": list(p.waiting)}
    assert [k for k, v in where.items() if "hpc-1" in v] == [expect]


def test_deallocated_node_started_by_its_own_id():
    p = plan(["htc-f2sv2-2"], [node("htc-f2sv2-1", "Deallocated"), node("htc-f2sv2-2", "Deallocated")])
    assert p.start == {"htc-f2sv2-2": "id-htc-f2sv2-2"}


def test_failed_node_is_down_with_cloud_message_and_terminated():
    p = plan(["hpc-1"], [node("hpc-1", "Failed", StatusMessage="disk image not found")])
    assert "disk image not found" in p.down["hpc-1"] and p.terminate == {"hpc-1": "id-hpc-1"}


def test_ready_node_gives_its_address():
    p = plan(["hpc-1"], [node("hpc-1", "Ready", PrivateIp="127.1.0.5", Hostname="ip-1")])
    assert p.addresses == {"hpc-1": ("127.1.0.5", "ip-1")} and not p.create
    assert p.to_watch() == []  # up and addressed: nothing left to follow


def test_booting_node_gives_its_address_and_is_still_followed():
    p = plan(["hpc-1", "hpc-2"], [node("hpc-1", "Preparing", PrivateIp="127.1.0.5", Hostname="ip-1"),
                                  node("hpc-2", "Ready")])
    assert p.addresses == {"hpc-1": ("127.1.0.5", "ip-1")}
    assert p.to_watch() == ["hpc-1", "hpc-2"]  # hpc-1 may still fail; hpc-2 has no address yet


def test_unknown_name_is_left_alone():
    """A name not in the node map is not ours (a site's own node): nothing is done to it."""
    p = plan(["nosuch-1", "hpc-1"])
    assert p.unknown == ["nosuch-1"] and "nosuch-1" not in p.down and [n for n, _ in p.create] == ["hpc-1"]


def test_in_flight_operation_prevents_a_duplicate_create():
    op = Operation("r1", "create", ["hpc-1"], NOW - 5, NOW + 100)
    p = plan(["hpc-1", "hpc-2"], in_flight={"hpc-1": op})
    assert "hpc-1" in p.waiting and [n for n, _ in p.create] == ["hpc-2"]


def test_capacity_limit_downs_the_rest():
    p = plan(["htc-f2sv2-1", "htc-f2sv2-2", "htc-f2sv2-3"], bk=buckets(f2=2))
    assert [n for n, _ in p.create] == ["htc-f2sv2-1", "htc-f2sv2-2"]
    assert "no capacity left" in p.down["htc-f2sv2-3"]


def test_invalid_bucket_and_missing_bucket():
    bk = buckets()
    bk[bucket_key("htc", F4)] = bucket(F4, valid=False)
    del bk[bucket_key("htc", F2)]
    p = plan(["htc-f4sv2-1", "htc-f2sv2-1"], bk=bk)
    assert "invalid (DisabledMachineType)" in p.down["htc-f4sv2-1"]
    assert "no longer offered" in p.down["htc-f2sv2-1"]


def test_a_size_held_until_cleared_takes_no_new_vm():
    held = Cooloff(None, "3 VM(s) of this size were Ready but their slurmd never registered")
    p = plan(["htc-f2sv2-1", "htc-f4sv2-1"], cooloffs={bucket_key("htc", F2): held})
    assert p.down["htc-f2sv2-1"].startswith(
        "htc/Standard_F2s_v2 out of service until an admin clears it (hpc-bridge clear-hold htc/Standard_F2s_v2)")
    assert [n for n, _ in p.create] == ["htc-f4sv2-1"]


def test_capacity_cooloff_from_state_or_from_the_bucket():
    p = plan(["htc-f2sv2-1"], cooloffs={bucket_key("htc", F2): Cooloff(NOW + 60, "no capacity")})
    assert "capacity cool-off" in p.down["htc-f2sv2-1"]
    bk = buckets()
    bk[bucket_key("htc", F4)] = bucket(F4, last_failure=30.0)
    p = plan(["htc-f4sv2-1"], bk=bk)
    assert "capacity failure 30s ago" in p.down["htc-f4sv2-1"]
    bk[bucket_key("htc", F4)] = bucket(F4, last_failure=5000.0)  # older than the cool-off
    assert not plan(["htc-f4sv2-1"], bk=bk).down


def test_job_all_or_nothing():
    job = Job("7", ("hpc-1", "hpc-2", "hpc-3"))
    p = plan(["hpc-1", "hpc-2", "hpc-3", "htc-f2sv2-1"], bk=buckets(hpc=2), jobs=[job])
    assert not [n for n, _ in p.create if n.startswith("hpc")]
    assert all("job 7 cannot get all its nodes" in p.down[n] for n in job.nodes)
    assert [n for n, _ in p.create] == ["htc-f2sv2-1"]


def test_job_partial_allowed_when_configured():
    job = Job("7", ("hpc-1", "hpc-2", "hpc-3"))
    p = plan(list(job.nodes), bk=buckets(hpc=2), jobs=[job], config=cfg(hpc={"all_or_nothing": False}))
    assert len(p.create) == 2 and len(p.down) == 1


def test_job_that_fits_gets_its_nodes_before_loose_nodes():
    job = Job("9", ("hpc-3", "hpc-4"))
    p = plan(["hpc-1", "hpc-3", "hpc-4"], bk=buckets(hpc=2), jobs=[job])
    assert sorted(n for n, _ in p.create) == ["hpc-3", "hpc-4"] and "hpc-1" in p.down


def test_create_sets_one_per_name_with_placement_group_and_size():
    p = plan(["hpc-5", "hpc-1", "htc-f4sv2-1"])
    sets = p.create_sets()
    assert sets[0] == {"count": 1, "nodearray": "hpc", "definition": {"machineType": HPC}, "nameFormat": "hpc-1",
                       "placementGroupId": "hpc-pg1"}
    assert sets[1]["placementGroupId"] == "hpc-pg2" and sets[1]["nameFormat"] == "hpc-5"
    assert "placementGroupId" not in sets[2] and sets[2]["definition"] == {"machineType": F4}


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(st.sampled_from(NODEMAP.names() + ["zz-1"]), max_size=20),
    statuses=st.dictionaries(st.sampled_from(NODEMAP.names()),
                             st.sampled_from(["Acquiring", "Ready", "Deallocated", "Terminated", "Failed",
                                              "Terminating"]), max_size=10),
    avail=st.integers(0, 6),
    stopped=st.sets(st.sampled_from(NODEMAP.names()), max_size=10),
)
def test_every_name_gets_exactly_one_outcome_and_capacity_holds(names, statuses, avail, stopped):
    cloud = [node(n, s) for n, s in statuses.items()]
    p = plan(names, cloud, bk=buckets(hpc=avail, f2=avail, f4=avail), stop_unfinished=stopped)
    created = [n for n, _ in p.create]
    outcomes = [set(created), set(p.start), set(p.running), set(p.waiting), set(p.down), set(p.unknown),
                set(p.power_down) - set(p.down)]
    for name in set(names):
        assert sum(name in o for o in outcomes) == 1, name
    assert len(created) == len(set(created))
    for key in (bucket_key("hpc", HPC), bucket_key("htc", F2), bucket_key("htc", F4)):
        assert sum(1 for _, e in p.create if bucket_key(e.nodearray, e.machine_type) == key) <= avail
    # never create a name whose cloud node is alive
    for n in created:
        assert statuses.get(n) in (None, "Terminated")


# --------------------------------------------------------------------------- resume file

def test_resume_file_both_formats():
    old = '{"jobs":[{"job_id":5,"nodes":"hpc-[1-2]"}],"all_nodes":"hpc-[1-2]"}'
    new = ('{"all_nodes_resume":"hpc-[1-2]","jobs":[{"job_id":5,"nodes_resume":"hpc-[1-2]",'
           '"nodes_alloc":"hpc-[1-3]","partition":"hpc"}]}')
    assert parse_resume_file(old) == [Job("5", ("hpc-1", "hpc-2"), None)]
    assert parse_resume_file(new) == [Job("5", ("hpc-1", "hpc-2"), "hpc")]
    assert parse_resume_file('{"jobs":[],"all_nodes":"hpc-1"}') == []


@pytest.mark.parametrize("text", ["", "garbage", "[1]", '{"jobs": 3}', '{"jobs":[{"nodes":"a"}]}',
                                  '{"jobs":[{"job_id":1,"nodes":"a[1-"}]}'])
def test_resume_file_garbage_is_a_clear_error(text):
    with pytest.raises(BridgeError) as err:
        parse_resume_file(text)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- suspend

def test_suspend_policies_per_nodearray():
    cloud = {n.name: n for n in [node("hpc-1", "Ready"), node("htc-f2sv2-1", "Ready"), node("htc-f4sv2-1", "Failed")]}
    p = plan_suspend(["hpc-1", "htc-f2sv2-1", "htc-f4sv2-1"], NODEMAP, cloud,
                     cfg(htc={"suspend_policy": "deallocate"}))
    assert p.actions == {"shutdown": {"hpc-1": "id-hpc-1"}, "deallocate": {"htc-f2sv2-1": "id-htc-f2sv2-1"},
                         "terminate": {"htc-f4sv2-1": "id-htc-f4sv2-1"}}


def test_suspend_twice_and_keepalive_and_unknown():
    cloud = {n.name: n for n in [node("hpc-1", "Terminating"), node("hpc-2", "Ready", KeepAlive=True),
                                 node("hpc-3", "Deallocated")]}
    p = plan_suspend(["hpc-1", "hpc-2", "hpc-3", "hpc-4", "zz-9"], NODEMAP, cloud, cfg())
    assert p.actions == {} and p.keep_alive == ["hpc-2"] and p.unknown == ["zz-9"]
    assert set(p.nothing) == {"hpc-1", "hpc-3", "hpc-4"}
    # the kept VM's slurmd will never register to a power-up: DOWN in Slurm with the cause
    assert p.down == {"hpc-2": KEPT_RUNNING}
    # a KeepAlive VM still booting or failed is the next power-up's (ended at once if Ready by
    # then, replaced if failed): not marked DOWN
    for status in ("Acquiring", "Preparing", "Failed"):
        other = {"hpc-2": node("hpc-2", status, KeepAlive=True)}
        kept = plan_suspend(["hpc-2"], NODEMAP, other, cfg())
        assert kept.keep_alive == ["hpc-2"] and kept.actions == {} and kept.down == {}, status
    # resume-fail terminates KeepAlive VMs too: nothing is kept, nothing marked for it
    failing = plan_suspend(["hpc-2"], NODEMAP, cloud, cfg(), policy_override="terminate", keep_alive=False)
    assert failing.actions == {"terminate": {"hpc-2": "id-hpc-2"}} and failing.down == {}


def test_fail_reason_keeps_the_cloud_message():
    assert "cloud node failed: boom" in fail_reason(node("a", "Failed", StatusMessage="boom"))
    assert "never became Ready (cloud status Preparing)" in fail_reason(node("a", "Preparing"))
    # a VM that booted: what did not happen within ResumeTimeout is slurmd registering
    assert fail_reason(node("a", "Ready")) == "resume failed: VM Ready, slurmd did not register within ResumeTimeout"
    assert "no cloud node" in fail_reason(None)


def test_hostile_address_from_the_api_is_dropped_for_that_node_only():
    from hpc_bridge.cloud import address_of

    good = node("a", "Ready", PrivateIp="127.1.0.9", Hostname="ip-7F010009")
    assert address_of(good, "ip") == ("127.1.0.9", "ip-7F010009")
    assert address_of(node("b", "Ready", PrivateIp="10.0.0.1 State=DOWN", Hostname="h"), "ip") is None
    assert address_of(node("c", "Ready", PrivateIp="10.0.0.2", Hostname="bad\nname"), "ip") is None
    assert address_of(node("d", "Ready", PrivateIp="10.0.0.3,10.0.0.4"), "ip") is None
    assert address_of(node("e", "Preparing", PrivateIp="10.0.0.5 x"), "ip") is None


def test_a_booting_node_has_its_address_as_soon_as_the_api_reports_one():
    """Slurm must have it before the VM's slurmd registers: a job launched to a node whose
    NodeAddr is still its name fails after ~10 s of DNS retries and is requeued."""
    from hpc_bridge.cloud import address_of

    assert address_of(node("a", "Preparing", PrivateIp="10.0.0.5", Hostname="h5"), "ip") == ("10.0.0.5", "h5")
    assert address_of(node("a", "Preparing", Hostname="h5"), "hostname") == ("h5", "h5")
    assert address_of(node("a", "Acquiring"), "ip") is None  # none reported yet
    assert address_of(node("a", "Deallocated", PrivateIp="10.0.0.5"), "ip") is None
    assert address_of(node("a", "Terminating", PrivateIp="10.0.0.5"), "ip") is None


def test_resume_file_nested_too_deeply_is_a_usage_error():
    from hpc_bridge.errors import UsageError

    with pytest.raises(UsageError, match="nested too deeply"):
        parse_resume_file("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("status,keep_alive,kept", [
    ("Ready", True, True),  # kept through a power-down: its slurmd predates this power-up
    ("Ready", False, False),  # brought up by someone else meanwhile: left to come up
    ("Preparing", True, False),  # still booting: its slurmd starts after the power-up
    ("Deallocated", True, False),  # started again: a fresh boot
])
def test_keepalive_vm_up_since_before_the_power_up_goes_down_with_the_cause(status, keep_alive, kept):
    p = plan(["hpc-1"], [node("hpc-1", status, KeepAlive=keep_alive, PrivateIp="127.1.0.9")])
    assert p.power_down == ({"hpc-1": KEPT_RUNNING} if kept else {})
    assert (p.down == {"hpc-1": KEPT_RUNNING}) is kept
    assert not p.create and not (kept and ("hpc-1" in p.to_watch() or "hpc-1" in p.running))


@pytest.mark.parametrize("status,keep_alive,stop_unfinished,want", [
    ("Ready", False, True, "power_down"),  # our stop failed: its slurmd predates this power-up
    ("Ready", False, False, "running"),  # created by an in-flight resume, or its slurmd not started yet
    ("Ready", True, True, "kept"),  # KeepAlive: DOWN, as without the record
    ("Starting", False, True, "running"),  # booting again: a fresh slurmd starts after the power-up
    ("Deallocated", False, True, "start"),  # stopped after all (by someone else): started again
    ("Terminated", False, True, "create"),
])
def test_vm_still_ready_after_a_failed_stop_ends_the_power_up_without_down(status, keep_alive, stop_unfinished, want):
    p = plan(["hpc-1"], [node("hpc-1", status, KeepAlive=keep_alive, PrivateIp="127.1.0.9")],
             stop_unfinished={"hpc-1"} if stop_unfinished else set())
    got = {"power_down": p.power_down == {"hpc-1": STOP_FAILED} and not p.down,
           "running": "hpc-1" in p.running and not p.power_down,
           "kept": p.power_down == p.down == {"hpc-1": KEPT_RUNNING},
           "start": p.start == {"hpc-1": "id-hpc-1"} and not p.power_down,
           "create": [n for n, _ in p.create] == ["hpc-1"] and not p.power_down}
    assert got == {k: k == want for k in got}
    if want == "power_down":
        assert "hpc-1" not in p.to_watch() and not p.create and not p.start


def _state_of(*ops):
    """A state with these (action, names, outcome) operations, one second apart."""
    state = State()
    for i, (action, names, outcome) in enumerate(ops):
        op = state.begin(action, names, f"r{i}", NOW + i, NOW + i + 60)
        if outcome == "accepted":
            op.accept("op", now=NOW + i)
        elif outcome != "pending":
            op.close(outcome, NOW + i)
    return state


@pytest.mark.parametrize("ops,want", [
    ([("shutdown", ["a", "b"], FAILED)], {"a", "b"}),  # refused: the VMs run on
    ([("deallocate", ["a"], "pending")], {"a"}),  # never answered (a killed suspend, API unreachable)
    ([("terminate", ["a"], "accepted")], {"a"}),  # accepted, not done: may still be up
    ([("shutdown", ["a"], "done")], set()),  # nothing was left to stop
    ([("shutdown", ["a"], FAILED), ("start", ["a"], "accepted")], set()),  # brought up since: a fresh boot
    ([("create", ["a"], "accepted"), ("shutdown", ["b"], FAILED)], {"b"}),
    ([("shutdown", ["a", "z"], FAILED)], {"a"}),  # only the names asked about
])
def test_stop_unfinished_is_the_latest_operation_a_stop_not_done(ops, want):
    assert _state_of(*ops).stop_unfinished(["a", "b"]) == want


@settings(max_examples=60, deadline=None)
@given(statuses=st.dictionaries(st.sampled_from(NODEMAP.names()),
                                st.sampled_from(["Preparing", "Ready", "Deallocated", "Terminated", "Stopping"]),
                                max_size=10),
       stopped=st.sets(st.sampled_from(NODEMAP.names()), max_size=10))
def test_only_a_ready_vm_after_a_failed_stop_is_powered_down_and_nothing_else_changes(statuses, stopped):
    names = sorted(statuses)
    cloud = [node(n, s) for n, s in statuses.items()]
    p, today = plan(names, cloud, stop_unfinished=stopped), plan(names, cloud)
    assert p.power_down == {n: STOP_FAILED for n, s in statuses.items() if s == "Ready" and n in stopped}
    assert not set(p.power_down) & (set(p.running) | set(p.start) | set(p.down) | set(p.to_watch()))
    # everything else is planned as without the records
    assert p.start == today.start and p.create == today.create and p.down == today.down
    assert p.running == {n: s for n, s in today.running.items() if n not in p.power_down}
