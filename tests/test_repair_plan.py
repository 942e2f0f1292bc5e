"""The pure repair plan: the decision table over Slurm flag SETS (with extra and missing flags),
plus hypothesis properties (never terminates an allocated node or one an in-flight operation is
creating; applying the plan's effects and planning again gives nothing)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpc_bridge.api.models import Bucket, Node
from hpc_bridge.config import config_from_dict
from hpc_bridge.nodemap import NodeMap, NodeRange
from hpc_bridge.reasons import KEPT_RUNNING, REASON_PREFIX, reason
from hpc_bridge.cli.hooks import repair_table
from hpc_bridge.repair_plan import (
    ALLOCATED_FLAGS,
    CLOSE,
    COOLOFF_ENDED,
    DOWN_WITHOUT_VM,
    END_COOLOFF,
    LEAKED_VM,
    OVERDUE_OPERATION,
    POWER_DOWN_FORCE,
    REPORT,
    RESEND,
    RESOLVE,
    SET_ADDRESS,
    SLURM_DOWN,
    SLURM_RESUME,
    STUCK_POWERING_UP,
    TERMINATE,
    UNKNOWN_TO_SLURM,
    UP_WITHOUT_VM,
    RepairAction,
    plan_repair,
    slurm_summary,
)
from hpc_bridge.slurm import SlurmNode
from hpc_bridge.state_records import ACCEPTED, DONE, FAILED, PENDING, RESUME_ACTIONS, Cooloff, Operation, State

NOW = 1_900_000_000.0
GRACE = 300.0
HPC = "Standard_HB120rs_v3"
F2 = "Standard_F2s_v2"
HPC_KEY, F2_KEY = f"hpc/{HPC}", f"htc/{F2}"
OURS = REASON_PREFIX + "something of ours"
DEAD_PID, LIVE_PID = 999_999, 4242

NODEMAP = NodeMap("demo", [
    NodeRange("hpc-", 1, 8, "hpc", HPC, "b-hpc", "hpc"),
    NodeRange("htc-f2sv2-", 1, 4, "htc", F2, "b-f2", "htc"),
])


def make_cfg(**repair):
    return config_from_dict({
        "cluster": {"url": "http://127.0.0.1:1", "name": "demo", "username": "u"},
        "partitions": {"managed_nodearrays": ["hpc", "htc"]},
        "repair": {"grace": GRACE, **repair},
        "resume": {"resume_timeout": 600, "capacity_cooloff": 600},
    })


CFG = make_cfg()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def snode(name, *flags, reason=None, addr=None):
    """A Slurm node from a flag set; the first flag is the base state."""
    return SlurmNode(name=name, state=flags[0], state_flags=frozenset(flags), reason=reason,
                     node_addr=addr or name, node_hostname=addr or name)


def cnode(name, status, age=10_000.0, template=None, **kw):
    wire = {"Name": name, "NodeId": f"id-{name}", "Status": status,
            "Template": template or ("hpc" if name.startswith("hpc") else "htc"),
            "StatusTime": iso(NOW - age), "CreateTime": iso(NOW - age - 60)}
    if status == "Ready":
        wire.setdefault("PrivateIp", "127.1.0.9")
        wire.setdefault("Hostname", "ip-7F010009")
    wire.update(kw)
    return Node.from_wire(wire)


def op(rid, action, nodes, *, outcome=ACCEPTED, started=NOW - 100, deadline=NOW + 500, pid=DEAD_PID,
       request=None, operation_id=None):
    o = Operation(rid, action, list(nodes), started, deadline, pid=pid, outcome=outcome, operation_id=operation_id,
                  request=request if request is not None else {"ids": [f"id-{n}" for n in nodes]})
    return o


def plan(slurm=(), cloud=(), ops=(), cooloffs=None, buckets=None, live=(), cfg=CFG, now=NOW):
    state = State(operations={o.request_id: o for o in ops}, cooloffs=dict(cooloffs or {}))
    return plan_repair({s.name: s for s in slurm}, {c.name: c for c in cloud}, state, NODEMAP, cfg, now,
                       buckets=buckets, live_hooks=[o.request_id for o in ops if o.pid in live])


def kinds(actions, node=None):
    return sorted(a.kind for a in actions if node is None or a.node == node)


# --------------------------------------------------------------------------- flag-set variants

PD = [("IDLE", "CLOUD", "POWERED_DOWN"), ("IDLE", "POWERED_DOWN"), ("IDLE", "CLOUD", "POWERED_DOWN", "NOT_RESPONDING")]
DOWN_PD = [("DOWN", "CLOUD", "POWERED_DOWN"), ("DOWN", "POWERED_DOWN"),
           ("DOWN", "CLOUD", "POWERED_DOWN", "NOT_RESPONDING")]
PU = [("IDLE", "CLOUD", "NOT_RESPONDING", "POWERING_UP"), ("IDLE", "CLOUD", "POWERING_UP"),
      ("IDLE", "CLOUD", "POWERED_DOWN", "POWER_UP"),
      ("MIXED", "CLOUD", "NOT_RESPONDING", "POWERING_UP"), ("ALLOCATED", "POWERING_UP"),
      ("DOWN", "CLOUD", "NOT_RESPONDING", "POWERING_UP")]
# 22.05 keeps POWER_UP on a node whose slurmd registered after `scontrol update State=POWER_UP`
UP_FREE = [("IDLE", "CLOUD"), ("IDLE",), ("IDLE", "CLOUD", "NOT_RESPONDING"), ("IDLE", "CLOUD", "POWER_UP")]
UP_BUSY = [("MIXED", "CLOUD"), ("ALLOCATED", "CLOUD"), ("ALLOCATED", "CLOUD", "NOT_RESPONDING"),
           ("IDLE", "CLOUD", "COMPLETING"), ("MIXED",)]
UP = UP_FREE + UP_BUSY


# --------------------------------------------------------------------------- leaked VM


@pytest.mark.parametrize("flags", PD + DOWN_PD)
@pytest.mark.parametrize("status", ["Acquiring", "Preparing", "Ready"])
def test_running_vm_while_powered_down_is_terminated_after_grace(flags, status):
    reason = OURS if "DOWN" in flags else None
    acts = plan([snode("hpc-1", *flags, reason=reason)], [cnode("hpc-1", status)])
    assert [(a.kind, a.node_id, a.drift) for a in acts] == [(TERMINATE, "id-hpc-1", LEAKED_VM)]
    assert "leaked" in acts[0].reason


@pytest.mark.parametrize("flags", PD)
@pytest.mark.parametrize("guard", ["recent status", "recent op", "create in flight", "suspend in flight",
                                   "keepalive"])
def test_leaked_vm_guards(flags, guard):
    cloud = cnode("hpc-1", "Ready", age=GRACE / 2 if guard == "recent status" else 10_000,
                  KeepAlive=guard == "keepalive")
    ops = []
    if guard == "recent op":
        ops = [op("r", "shutdown", ["hpc-1"], outcome=DONE, started=NOW - GRACE / 2, deadline=NOW - 1)]
    elif guard == "create in flight":
        ops = [op("r", "create", ["hpc-1"], started=NOW - 2 * GRACE, deadline=NOW + 100)]
    elif guard == "suspend in flight":
        ops = [op("r", "deallocate", ["hpc-1"], started=NOW - 2 * GRACE, deadline=NOW + 100)]
    assert kinds(plan([snode("hpc-1", *flags)], [cloud], ops), "hpc-1") == []


def test_leaked_vm_cloud_timestamps_missing_means_old_unless_a_recent_operation():
    bare = Node.from_wire({"Name": "hpc-1", "NodeId": "id-hpc-1", "Status": "Ready", "Template": "hpc"})
    assert kinds(plan([snode("hpc-1", *PD[0])], [bare])) == [TERMINATE]
    recent = op("r", "create", ["hpc-1"], outcome=FAILED, started=NOW - 10, deadline=NOW - 1)
    assert kinds(plan([snode("hpc-1", *PD[0])], [bare], [recent])) == []


# --------------------------------------------------------------------------- failed VM


@pytest.mark.parametrize("flags", UP_FREE + [("IDLE", "CLOUD", "DRAIN"), ("DOWN", "CLOUD", "NOT_RESPONDING")])
def test_failed_vm_slurm_down_with_cloud_message_and_terminated(flags):
    reason = "Not responding" if "DOWN" in flags else (OURS if "DRAIN" in flags else None)
    acts = plan([snode("hpc-1", *flags, reason=reason)], [cnode("hpc-1", "Failed", StatusMessage="disk image gone")])
    assert kinds(acts) == [SLURM_DOWN, TERMINATE]
    down = next(a for a in acts if a.kind == SLURM_DOWN)
    assert down.slurm_reason.startswith(REASON_PREFIX) and "disk image gone" in down.slurm_reason


def test_failed_vm_already_down_with_our_reason_only_terminated():
    acts = plan([snode("hpc-1", "DOWN", "CLOUD", reason=OURS)], [cnode("hpc-1", "Failed")])
    assert kinds(acts) == [TERMINATE]


@pytest.mark.parametrize("flags", UP_BUSY)
def test_failed_vm_under_a_running_job_is_only_reported(flags):
    acts = plan([snode("hpc-1", *flags)], [cnode("hpc-1", "Failed", StatusMessage="converge failed")])
    assert kinds(acts) == [REPORT] and "converge failed" in acts[0].reason


@pytest.mark.parametrize("flags", PD + DOWN_PD)
def test_failed_vm_while_powered_down_terminated_slurm_untouched(flags):
    acts = plan([snode("hpc-1", *flags, reason=OURS if "DOWN" in flags else None)], [cnode("hpc-1", "Failed")])
    assert kinds(acts) == [TERMINATE]


def test_failed_vm_being_created_is_left_to_the_hook():
    ops = [op("r", "create", ["hpc-1"], deadline=NOW + 100)]
    assert plan([snode("hpc-1", *UP_FREE[0])], [cnode("hpc-1", "Failed")], ops) == []


# --------------------------------------------------------------------------- stuck power-up


@pytest.mark.parametrize("flags", PU)
@pytest.mark.parametrize("cloud", [None, "Terminated", "Failed", "Terminating"])
def test_stuck_powering_up_powering_up_past_deadline_without_healthy_node_is_powered_down(flags, cloud):
    ops = [op("r", "create", ["hpc-1"], started=NOW - 700, deadline=NOW - 100)]
    acts = plan([snode("hpc-1", *flags)], [cnode("hpc-1", cloud)] if cloud else [], ops)
    pdf = [a for a in acts if a.kind == POWER_DOWN_FORCE]
    assert len(pdf) == 1 and pdf[0].drift == STUCK_POWERING_UP
    assert pdf[0].slurm_reason is not None and pdf[0].slurm_reason.startswith(REASON_PREFIX)
    allocated = bool(set(flags) & ALLOCATED_FLAGS)
    # the accepted create past its deadline is also looked up and closed
    want = [POWER_DOWN_FORCE, RESOLVE] + ([TERMINATE] if cloud == "Failed" and not allocated else [])
    assert kinds(acts) == sorted(want)


def test_stuck_powering_up_reason_kept_when_slurm_has_one():
    ops = [op("r", "create", ["hpc-1"], outcome=FAILED, started=NOW - 700, deadline=NOW - 100)]
    acts = plan([snode("hpc-1", "DOWN", "CLOUD", "POWERING_UP", reason=OURS)], [], ops)
    assert [(a.kind, a.slurm_reason) for a in acts] == [(POWER_DOWN_FORCE, None)]


@pytest.mark.parametrize("flags", PU)
@pytest.mark.parametrize("setup", ["op in flight", "no record", "healthy booting", "healthy ready"])
def test_stuck_powering_up_left_alone(flags, setup):
    ops = [op("r", "create", ["hpc-1"], started=NOW - 700,
              deadline=NOW + 100 if setup == "op in flight" else NOW - 100, outcome=FAILED)]
    if setup == "no record":
        ops = []
    cloud = {"healthy booting": [cnode("hpc-1", "Preparing")],
             "healthy ready": [cnode("hpc-1", "Ready", PrivateIp="127.1.0.9")]}.get(setup, [])
    acts = plan([snode("hpc-1", *flags, addr="127.1.0.9")], cloud, ops)
    assert [a for a in acts if a.changes] == []


# --------------------------------------------------------------------------- down~ with no VM


@pytest.mark.parametrize("flags", DOWN_PD)
@pytest.mark.parametrize("reason", [OURS, "ResumeTimeout reached", "Not responding"])
@pytest.mark.parametrize("cloud", [None, "Terminated", "Off", "Deallocated"])
def test_down_without_vm_down_powered_down_without_vm_back_to_idle(flags, reason, cloud):
    acts = plan([snode("hpc-1", *flags, reason=reason)], [cnode("hpc-1", cloud)] if cloud else [])
    assert [(a.kind, a.drift) for a in acts] == [(SLURM_RESUME, DOWN_WITHOUT_VM)]


@pytest.mark.parametrize("flags", DOWN_PD)
@pytest.mark.parametrize("why", ["cool-off in state", "bucket capacity failure", "admin reason", "terminating",
                                 "idle~ not down"])
def test_down_without_vm_left_alone(flags, why):
    reason = "replace DIMM" if why == "admin reason" else OURS
    if why == "idle~ not down":
        flags = ("IDLE",) + flags[1:]
    cooloffs = {HPC_KEY: Cooloff(NOW + 100, "no capacity")} if why == "cool-off in state" else {}
    buckets = {HPC_KEY: Bucket.model_validate({
        "bucketId": "b", "definition": {"machineType": HPC}, "virtualMachine": {"vcpuCount": 1, "memory": 1.0},
        "lastCapacityFailure": 30.0 if why == "bucket capacity failure" else -1.0})}
    cloud = [cnode("hpc-1", "Terminating")] if why == "terminating" else []
    assert plan([snode("hpc-1", *flags, reason=reason)], cloud, cooloffs=cooloffs, buckets=buckets) == []


# --------------------------------------------------------------------------- up with no VM


@pytest.mark.parametrize("flags", UP + [("IDLE", "CLOUD", "DRAIN")])
@pytest.mark.parametrize("cloud", [None, "Terminated", "Deallocated", "Terminating"])
def test_up_without_vm_up_without_cloud_node_goes_down(flags, cloud):
    reason = OURS if "DRAIN" in flags else None
    acts = plan([snode("hpc-1", *flags, reason=reason)], [cnode("hpc-1", cloud)] if cloud else [])
    assert [(a.kind, a.drift) for a in acts] == [(SLURM_DOWN, UP_WITHOUT_VM)]
    assert acts[0].slurm_reason.startswith(REASON_PREFIX)
    assert ("no cloud node" if cloud in (None, "Terminated") else cloud) in acts[0].slurm_reason


@pytest.mark.parametrize("flags", [("DOWN", "CLOUD"), ("DOWN", "CLOUD", "NOT_RESPONDING")])
def test_up_without_vm_already_down_stays(flags):
    assert plan([snode("hpc-1", *flags, reason=OURS)]) == []


def test_up_without_vm_not_while_a_create_is_in_flight():
    assert plan([snode("hpc-1", "IDLE", "CLOUD")], [], [op("r", "create", ["hpc-1"])]) == []


# --------------------------------------------------------------------------- unknown to Slurm


@pytest.mark.parametrize("status", ["Acquiring", "Ready", "Failed", "Deallocated"])
def test_unknown_to_slurm_cloud_node_slurm_does_not_know_terminated_after_grace(status):
    acts = plan([], [cnode("hpc-99", status), cnode("ghost-1", status, template="htc")])
    assert [(a.node, a.kind, a.drift) for a in acts] == [("ghost-1", TERMINATE, UNKNOWN_TO_SLURM),
                                                         ("hpc-99", TERMINATE, UNKNOWN_TO_SLURM)]


@pytest.mark.parametrize("why", ["recent", "in flight", "terminating", "keepalive"])
def test_unknown_to_slurm_left_alone(why):
    cloud = cnode("ghost-1", "Terminating" if why == "terminating" else "Ready",
                  age=GRACE / 3 if why == "recent" else 10_000, template="htc", KeepAlive=why == "keepalive")
    ops = [op("r", "create", ["ghost-1"], started=NOW - 2 * GRACE)] if why == "in flight" else []
    assert plan([], [cloud], ops) == []


def test_unknown_to_slurm_unmanaged_nodearray_reported_only():
    acts = plan([], [cnode("login-1", "Ready", template="login")])
    assert [(a.kind, a.drift) for a in acts] == [(REPORT, UNKNOWN_TO_SLURM)] and "unmanaged" in acts[0].reason


def test_slurm_nodes_not_in_the_node_map_are_not_ours():
    assert plan([snode("static-1", "IDLE")]) == []


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("flags", [f for f in UP if "NOT_RESPONDING" in f] + PU)
def test_address_ready_node_gets_its_address_while_slurm_cannot_reach_it(flags):
    ops = [op("r", "create", ["hpc-1"], deadline=NOW + 100)] if "POWERING_UP" in flags else []
    acts = plan([snode("hpc-1", *flags)], [cnode("hpc-1", "Ready", PrivateIp="127.1.0.7", Hostname="ip-7")], ops)
    assert [(a.kind, a.address) for a in acts] == [(SET_ADDRESS, ("127.1.0.7", "ip-7"))]


@pytest.mark.parametrize("flags", [f for f in UP if "NOT_RESPONDING" not in f])
def test_address_of_a_node_whose_slurmd_answers_is_left_as_slurm_has_it(flags):
    """Slurm reaches it at the NodeAddr it has (on 23.11+ the address its slurmd registered from,
    which may not be the API's PrivateIp: several NICs, NAT); repair does not set it back."""
    acts = plan([snode("hpc-1", *flags, addr="10.9.9.9")], [cnode("hpc-1", "Ready", PrivateIp="127.1.0.7")])
    assert SET_ADDRESS not in kinds(acts)


@pytest.mark.parametrize("mode,addr,want", [("ip", "127.1.0.7", []), ("registration", None, []), ("dns", None, []),
                                            ("hostname", None, [SET_ADDRESS]), ("ip", "127.1.0.1", [SET_ADDRESS])])
def test_address_modes(mode, addr, want):
    cfg = config_from_dict({**CFG.to_dict(), "slurm": {"address_mode": mode}})
    acts = plan([snode("hpc-1", "IDLE", "CLOUD", "NOT_RESPONDING", addr=addr)],
                [cnode("hpc-1", "Ready", PrivateIp="127.1.0.7", Hostname="ip-7")], cfg=cfg)
    assert kinds(acts) == want


# ------------------------------------------------------------------- overdue operations and hooks killed mid-way


@pytest.mark.parametrize("operation_id", [None, "op-1"])
def test_overdue_operation_accepted_past_deadline_is_resolved(operation_id):
    ops = [op("r", "create", ["hpc-1"], deadline=NOW - 1, operation_id=operation_id)]
    acts = plan([snode("hpc-1", *PD[0])], [], ops)
    assert [(a.kind, a.request_id, a.drift) for a in acts] == [(RESOLVE, "r", OVERDUE_OPERATION)]


def test_overdue_operation_accepted_before_deadline_is_in_flight():
    assert plan([snode("hpc-1", *PU[0])], [], [op("r", "create", ["hpc-1"])]) == []


def create_request(*names):
    return {"sets": [{"count": 1, "nodearray": "hpc", "nameFormat": n, "definition": {"machineType": HPC}}
                     for n in names]}


@pytest.mark.parametrize("flags", PU)
def test_killed_create_is_resent_while_slurm_waits(flags):
    ops = [op("r", "create", ["hpc-1", "hpc-2"], outcome=PENDING, request=create_request("hpc-1", "hpc-2"))]
    acts = plan([snode("hpc-1", *flags), snode("hpc-2", *flags)], [], ops)
    assert [(a.kind, a.request_id, a.node) for a in acts] == [(RESEND, "r", "hpc-[1-2]")]


def test_killed_create_waits_for_its_deadline_when_slurm_does_not_wait():
    ops = [op("r", "create", ["hpc-1", "hpc-2"], outcome=PENDING, request=create_request("hpc-1", "hpc-2"))]
    assert plan([snode("hpc-1", *PU[0]), snode("hpc-2", *PD[0])], [], ops) == []


def test_killed_create_past_deadline_is_closed():
    ops = [op("r", "create", ["hpc-1"], outcome=PENDING, deadline=NOW - 1, request=create_request("hpc-1"))]
    acts = plan([snode("hpc-1", *PD[0])], [], ops)
    assert [(a.kind, a.request_id) for a in acts] == [(CLOSE, "r")]


@pytest.mark.parametrize("started,want", [(NOW - 5, []), (NOW - 500, [RESEND])])
def test_pending_with_live_hook_waits_unless_stale(started, want):
    ops = [op("r", "create", ["hpc-1"], outcome=PENDING, started=started, pid=LIVE_PID,
              request=create_request("hpc-1"))]
    assert kinds(plan([snode("hpc-1", *PU[0])], [], ops, live=[LIVE_PID])) == want


@pytest.mark.parametrize("flags", PD + [("IDLE", "CLOUD", "POWERING_DOWN"), ("IDLE", "CLOUD", "POWER_DOWN")])
@pytest.mark.parametrize("deadline", [NOW + 100, NOW - 100])
def test_killed_suspend_is_resent_while_nodes_stay_powered_down(flags, deadline):
    ops = [op("r", "shutdown", ["hpc-1"], outcome=PENDING, deadline=deadline, request={"names": ["hpc-1"]})]
    acts = plan([snode("hpc-1", *flags)], [cnode("hpc-1", "Ready", age=GRACE / 2)], ops)
    assert kinds(acts) == [RESEND]


@pytest.mark.parametrize("flags", UP + PU)
def test_killed_suspend_closed_when_node_in_use_again(flags):
    ops = [op("r", "terminate", ["hpc-1"], outcome=PENDING, request={"names": ["hpc-1"]})]
    acts = plan([snode("hpc-1", *flags, addr="127.1.0.9")], [cnode("hpc-1", "Ready", PrivateIp="127.1.0.9")], ops)
    assert kinds(acts) == [CLOSE]


def test_pending_without_recorded_request_is_closed_not_resent():
    ops = [op("r", "deallocate", ["hpc-1"], outcome=PENDING, request={})]
    assert kinds(plan([snode("hpc-1", *PD[0])], [], ops)) == [CLOSE]


# --------------------------------------------------------------------------- cool-off


@pytest.mark.parametrize("flags", DOWN_PD)
def test_expired_cooloff_puts_its_nodes_back(flags):
    cooloffs = {HPC_KEY: Cooloff(NOW - 1, "no capacity", nodes=["hpc-2", "hpc-3", "hpc-4"])}
    slurm = [snode("hpc-2", *flags, reason=OURS), snode("hpc-3", *flags, reason=OURS),
             snode("hpc-4", *flags, reason="admin: keep out")]
    acts = plan(slurm, cooloffs=cooloffs)
    assert [(a.kind, a.node, a.drift) for a in acts] == [
        (END_COOLOFF, HPC_KEY, COOLOFF_ENDED), (SLURM_RESUME, "hpc-2", COOLOFF_ENDED),
        (SLURM_RESUME, "hpc-3", COOLOFF_ENDED)]


def test_active_cooloff_keeps_them_out():
    cooloffs = {HPC_KEY: Cooloff(NOW + 60, "no capacity", nodes=["hpc-2"])}
    assert plan([snode("hpc-2", *DOWN_PD[0], reason=OURS)], cooloffs=cooloffs) == []


# --------------------------------------------------------------------------- left alone


@pytest.mark.parametrize("flags", [("IDLE", "CLOUD", "DRAIN"), ("MIXED", "CLOUD", "DRAIN"), ("DOWN", "CLOUD"),
                                   ("DOWN", "CLOUD", "POWERED_DOWN"), ("IDLE", "CLOUD", "POWERED_DOWN", "DRAIN")])
@pytest.mark.parametrize("cloud", [None, "Ready", "Failed"])
def test_admin_drained_or_downed_nodes_left_alone(flags, cloud):
    acts = plan([snode("hpc-1", *flags, reason="bad DIMM, ticket 42")], [cnode("hpc-1", cloud)] if cloud else [])
    assert acts == []


@pytest.mark.parametrize("flags", PD + UP)
@pytest.mark.parametrize("status", ["Ready", "Failed", "Acquiring"])
def test_keepalive_nodes_left_alone(flags, status):
    c = cnode("hpc-1", status, KeepAlive=True, PrivateIp="127.1.0.9")
    acts = plan([snode("hpc-1", *flags, addr="127.1.0.9")], [c])
    assert acts == []


@pytest.mark.parametrize("flags", DOWN_PD)
def test_keepalive_node_down_since_its_suspend_back_in_service_once_its_vm_is_deallocated(flags):
    """Suspend marks a Ready KeepAlive node DOWN (its slurmd outlives the power-down); once the
    user deallocates the VM no slurmd runs there: back to idle~, so a power-up starts it again."""
    acts = plan([snode("hpc-1", *flags, reason=reason(KEPT_RUNNING))], [cnode("hpc-1", "Deallocated", KeepAlive=True)])
    assert [(a.kind, a.drift) for a in acts] == [(SLURM_RESUME, DOWN_WITHOUT_VM)]


# --------------------------------------------------------------------------- output


def test_plan_table_and_json():
    acts = plan([snode("hpc-1", "IDLE", "CLOUD", "NOT_RESPONDING")], [])
    text = repair_table(acts)
    assert text.splitlines()[0].split() == ["NODE", "SLURM", "STATE", "CLOUD", "STATE", "ACTION", "REASON"]
    assert "hpc-1  IDLE+CLOUD+NOT_RESPONDING  -" in text and "down" in text
    data = acts[0].to_json()
    assert data["kind"] == SLURM_DOWN and data["node"] == "hpc-1" and data["slurmReason"].startswith(REASON_PREFIX)
    assert slurm_summary(snode("x", "IDLE", "POWERED_DOWN", "CLOUD")) == "IDLE+CLOUD+POWERED_DOWN"


# --------------------------------------------------------------------------- properties

NAMES = ["hpc-1", "hpc-2", "htc-f2sv2-1", "ghost-1", "login-1"]
BASES = ["IDLE", "DOWN", "MIXED", "ALLOCATED"]
EXTRA = ["CLOUD", "POWERED_DOWN", "POWERING_UP", "POWER_UP", "POWERING_DOWN", "NOT_RESPONDING", "COMPLETING",
         "DRAIN"]
STATUSES = ["Acquiring", "Preparing", "Ready", "Failed", "Deallocated", "Terminated", "Terminating", "Off"]
REASONS = [None, OURS, "ResumeTimeout reached", "admin says no"]


@st.composite
def worlds(draw):
    slurm, cloud, ops = {}, {}, {}
    for name in NAMES:
        if name in ("hpc-1", "hpc-2", "htc-f2sv2-1") and draw(st.booleans()):
            flags = [draw(st.sampled_from(BASES))] + draw(st.lists(st.sampled_from(EXTRA), unique=True, max_size=3))
            slurm[name] = snode(name, *flags, reason=draw(st.sampled_from(REASONS)),
                                addr=draw(st.sampled_from([None, "127.1.0.9"])))
        if draw(st.booleans()):
            template = "login" if name == "login-1" else ("htc" if name.startswith(("htc", "ghost")) else "hpc")
            cloud[name] = cnode(name, draw(st.sampled_from(STATUSES)), age=draw(st.sampled_from([10.0, 10_000.0])),
                                template=template, KeepAlive=draw(st.booleans()) and draw(st.booleans()),
                                PrivateIp="127.1.0.9")
    for i in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["create", "start", "shutdown", "terminate", "deallocate"]))
        nodes = draw(st.lists(st.sampled_from(NAMES[:4]), min_size=1, max_size=2, unique=True))
        # a deadline comes after its call's start (every writer sets start + a timeout): past
        # or still ahead of NOW, depending on when the call started
        started = NOW - draw(st.sampled_from([5.0, 400.0, 2000.0]))
        ops[f"r{i}"] = Operation(
            f"r{i}", action, nodes, started=started,
            deadline=started + draw(st.sampled_from([100.0, 600.0])), pid=draw(st.sampled_from([DEAD_PID, LIVE_PID])),
            outcome=draw(st.sampled_from([PENDING, ACCEPTED, FAILED, DONE])),
            request=draw(st.sampled_from([None, {"names": nodes}])))
    cooloffs = {}
    if draw(st.booleans()):
        cooloffs[HPC_KEY] = Cooloff(NOW + draw(st.sampled_from([-10.0, 100.0])), "no capacity",
                                    nodes=draw(st.lists(st.sampled_from(["hpc-1", "hpc-2"]), unique=True)))
    return slurm, cloud, State(operations=ops, cooloffs=cooloffs)


def run_plan(world):
    slurm, cloud, state = world
    return plan_repair(slurm, cloud, state, NODEMAP, CFG, NOW,
                       live_hooks=[o.request_id for o in state.operations.values() if o.pid == LIVE_PID])


def allocated(s) -> bool:
    return s is not None and bool(s.state_flags & ALLOCATED_FLAGS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_property_never_terminates_allocated_or_being_created(world):
    slurm, cloud, state = world
    creating = state.resume_in_flight(NOW)
    for a in run_plan(world):
        if a.kind == TERMINATE:
            assert not allocated(slurm.get(a.node)), a
            assert a.node not in creating, a
        if a.kind == RESEND:
            o = state.operations[a.request_id]
            if o.action not in RESUME_ACTIONS:
                for n in o.nodes:
                    assert not allocated(slurm.get(n)) and n not in creating, a


def apply_effects(world, actions: list[RepairAction]):
    """What each action does to the inputs, as observed on Slurm 22.05 and the simulator."""
    slurm, cloud, state = world
    slurm, cloud = dict(slurm), dict(cloud)
    state = State(operations={k: dataclasses.replace(v) for k, v in state.operations.items()},
                  cooloffs={k: dataclasses.replace(v, nodes=list(v.nodes)) for k, v in state.cooloffs.items()})

    def restate(name, flags, reason=...):
        s = slurm[name]
        flags = list(flags)
        slurm[name] = dataclasses.replace(s, state=flags[0], state_flags=frozenset(flags),
                                          reason=s.reason if reason is ... else reason)

    for a in actions:
        if a.kind == TERMINATE:
            cloud[a.node] = cnode(a.node, "Terminating", age=0, template=cloud[a.node].template)
            state.operations[f"t-{a.node}"] = Operation(f"t-{a.node}", "terminate", [a.node], NOW, NOW + 600,
                                                        outcome=ACCEPTED)
        elif a.kind == SLURM_DOWN:
            rest = slurm[a.node].state_flags - {"IDLE", "MIXED", "ALLOCATED", "COMPLETING", "DOWN"}
            restate(a.node, ["DOWN", *rest], a.slurm_reason)
        elif a.kind == POWER_DOWN_FORCE:
            keep = slurm[a.node].state_flags & {"CLOUD"}
            restate(a.node, ["IDLE", *keep, "POWERING_DOWN"], a.slurm_reason or slurm[a.node].reason)
        elif a.kind == SLURM_RESUME:
            rest = slurm[a.node].state_flags - {"DOWN", "IDLE"}
            restate(a.node, ["IDLE", *rest], None)
        elif a.kind == SET_ADDRESS:
            slurm[a.node] = dataclasses.replace(slurm[a.node], node_addr=a.address[0])
        elif a.kind == RESEND:
            o = state.operations[a.request_id]
            o.outcome = ACCEPTED
            if o.action not in RESUME_ACTIONS and NOW >= o.deadline:
                o.close(DONE, NOW)
        elif a.kind == CLOSE:
            state.operations[a.request_id].close(FAILED, NOW)
        elif a.kind == RESOLVE:
            state.operations[a.request_id].close(DONE, NOW)
        elif a.kind == END_COOLOFF:
            state.cooloffs[a.cooloff].nodes = []
    return slurm, cloud, state


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_property_idempotent(world):
    first = run_plan(world)
    again = run_plan(apply_effects(world, [a for a in first if a.changes]))
    assert [a for a in again if a.changes] == [], (first, again)


def test_idempotent_with_two_open_creates_started_together():
    """Found by the idempotence property: two pending creates of one node with the same start,
    one past its deadline. The node counts as in flight by the other (the later deadline): the
    overdue record is closed, the other re-sent, the node not forced down; a second run has
    nothing to do."""
    world = ({"hpc-1": snode("hpc-1", "IDLE", "POWERING_UP", addr="hpc-1")}, {},
             State(operations={"r0": op("r0", "create", ["hpc-1"], outcome=PENDING, started=NOW - 5, deadline=NOW + 100),
                               "r1": op("r1", "create", ["hpc-1"], outcome=PENDING, started=NOW - 5, deadline=NOW - 100)}))
    first = run_plan(world)
    assert sorted((a.kind, a.request_id) for a in first) == [(CLOSE, "r1"), (RESEND, "r0")], first
    assert [a for a in run_plan(apply_effects(world, first)) if a.changes] == []


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_property_pure_and_deterministic(world):
    assert run_plan(world) == run_plan(world)


def test_what_the_grace_holds_back_is_listed_with_when_it_would_act():
    """repair --dry-run says what waits out the grace and from when it would act; the plan
    itself is unchanged (nothing to do yet)."""
    from hpc_bridge.repair_plan import plan_repair

    leaked = cnode("hpc-1", "Ready", age=GRACE / 4)
    ghost = cnode("ghost-1", "Ready", age=10_000, template="htc")
    recent = op("r", "shutdown", ["ghost-1"], outcome=DONE, started=NOW - GRACE / 2, deadline=NOW - 1)
    state = State(operations={recent.request_id: recent})
    waiting = []
    acts = plan_repair({"hpc-1": snode("hpc-1", *PD[0])}, {c.name: c for c in (leaked, ghost)}, state, NODEMAP, CFG,
                       NOW, waiting=waiting)
    assert acts == []
    got = {w.node: w for w in waiting}
    assert got["hpc-1"].action == TERMINATE and "leaked VM" in got["hpc-1"].reason
    assert got["hpc-1"].at == pytest.approx(NOW + GRACE * 3 / 4, abs=1)
    assert got["ghost-1"].at == pytest.approx(NOW + GRACE / 2) and "does not know" in got["ghost-1"].reason
    # past it, the same inputs give the actions and nothing waits
    waiting = []
    later = plan_repair({"hpc-1": snode("hpc-1", *PD[0])}, {c.name: c for c in (leaked, ghost)}, state, NODEMAP,
                        CFG, NOW + GRACE, waiting=waiting)
    assert kinds(later) == [TERMINATE, TERMINATE] and waiting == []


@pytest.mark.parametrize("flags", PD)
def test_killed_create_is_closed_once_slurm_powered_all_its_nodes_down(flags):
    """Nothing waits for it any more: left open, it would keep its VMs running to its deadline."""
    ops = [op("r", "create", ["hpc-1", "hpc-2"], outcome=PENDING, request=create_request("hpc-1", "hpc-2"))]
    acts = plan([snode("hpc-1", *flags), snode("hpc-2", *flags)], [], ops)
    assert [(a.kind, a.request_id) for a in acts] == [(CLOSE, "r")]
