"""The repair planner: a pure function over (Slurm nodes with their state *flag sets* and
reasons, cloud node records, the state file, the node map, bucket status, config, clock, which
recorded hooks are still at work) that returns `RepairAction`s, each with the drift it found and the reason
it is taken. `hpc_bridge.repair` gathers the inputs and applies the actions.

Decisions look at Slurm's flag *sets* ("POWERED_DOWN" in flags, base state DOWN, ...), never at
one exact State= string: Slurm adds and drops flags (NOT_RESPONDING, CLOUD, COMPLETING, ...)
between versions. Never terminated: a node Slurm has allocated, a node an in-flight create or
start is bringing up, a KeepAlive node; nodes an admin took out of service (DOWN/DRAIN with a
reason that is not ours) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hpc_bridge.api.models import Node
from hpc_bridge.cloud import (
    DEALLOCATED,
    FAILED_STATUS,
    GONE,
    READY,
    RUNNING,
    TRANSITIONAL_DOWN,
    address_of,
    bucket_key,
    index_by_name,
    seconds_since_change,
)
from hpc_bridge.log import node_names
from hpc_bridge.nodemap import NodeMap
from hpc_bridge.reasons import is_our_reason, reason as our_reason
from hpc_bridge.state_records import ACCEPTED, PENDING, RESUME_ACTIONS, Operation, State

# --------------------------------------------------------------------------- action kinds

TERMINATE = "terminate"  # API: terminate the cloud node (by node id)
SLURM_DOWN = "down"  # scontrol State=DOWN Reason=...
SLURM_RESUME = "resume"  # scontrol State=RESUME (down~ -> idle~)
POWER_DOWN_FORCE = "power_down_force"  # scontrol State=POWER_DOWN_FORCE (-> idle~, reason kept)
SET_ADDRESS = "set_address"  # scontrol NodeAddr=/NodeHostName=
RESEND = "resend_operation"  # re-send a recorded call with its own requestId (409 = it went through)
CLOSE = "close_operation"  # give up a recorded call whose hook is gone
RESOLVE = "resolve_operation"  # accepted call past its deadline: look it up and close it
END_COOLOFF = "end_cooloff"  # expired capacity cool-off: forget the nodes it took out of service
REPORT = "report"  # nothing to change; tell the admin

# --------------------------------------------------------------------------- drifts: what was found

LEAKED_VM = "leaked_vm"  # a VM runs while Slurm has the node powered down
FAILED_VM = "failed_vm"  # the cloud node failed
STUCK_POWERING_UP = "stuck_powering_up"  # Slurm powers it up past our call's deadline, no healthy VM
DOWN_WITHOUT_VM = "down_without_vm"  # down~ (our reason or Slurm's) and no VM
UP_WITHOUT_VM = "up_without_vm"  # Slurm has it up but there is no live VM
UNKNOWN_TO_SLURM = "unknown_to_slurm"  # a cloud node whose name Slurm does not know
ADDRESS_MISSING = "address_missing"  # a Ready VM whose address Slurm does not have
COOLOFF_ENDED = "cooloff_ended"  # a capacity cool-off is over: its nodes go back in service
OVERDUE_OPERATION = "overdue_operation"  # an accepted call past its deadline
UNFINISHED_OPERATION = "unfinished_operation"  # a recorded call whose hook is gone


# Slurm flags, as sets (base state included in SlurmNode.state_flags).
ALLOCATED_FLAGS = frozenset({"ALLOCATED", "MIXED", "COMPLETING"})
DRAIN_FLAGS = frozenset({"DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING"})
POWERING_DOWN_FLAGS = frozenset({"POWERING_DOWN", "POWER_DOWN"})
# Reasons Slurm itself sets on cloud nodes in power saving: not an admin's, repair may clear them.
SLURM_OWN_REASONS = ("ResumeTimeout reached", "Not responding")


@dataclass(frozen=True)
class RepairAction:
    """One decision. `node` is a Slurm/cloud node name; for an operation it is the hostlist of
    the operation's nodes, for a cool-off the bucket key."""

    node: str
    slurm_state: str  # e.g. "IDLE+CLOUD+POWERED_DOWN"; "-" when Slurm does not know the name
    cloud_state: str  # cloud Status, "-" when there is no cloud node
    kind: str
    reason: str
    drift: str = ""  # what was found (LEAKED_VM, ... above)
    node_id: str | None = None  # TERMINATE
    slurm_reason: str | None = None  # SLURM_DOWN / POWER_DOWN_FORCE (None: keep the current one)
    address: tuple[str, str] | None = None  # SET_ADDRESS
    request_id: str | None = None  # RESEND / CLOSE / RESOLVE
    cooloff: str | None = None  # END_COOLOFF / SLURM_RESUME after a cool-off

    @property
    def changes(self) -> bool:
        return self.kind != REPORT

    def row(self) -> list[str]:
        return [self.node, self.slurm_state, self.cloud_state, self.kind, self.reason]

    def to_json(self) -> dict[str, Any]:
        data = {"node": self.node, "slurmState": self.slurm_state, "cloudState": self.cloud_state, "kind": self.kind,
                "reason": self.reason, "drift": self.drift, "nodeId": self.node_id, "slurmReason": self.slurm_reason,
                "address": None if self.address is None else list(self.address), "requestId": self.request_id,
                "cooloff": self.cooloff}
        return {k: v for k, v in data.items() if v is not None and v != ""}


def slurm_summary(node) -> str:
    """Base state first, then the other flags sorted: IDLE+CLOUD+POWERED_DOWN."""
    if node is None:
        return "-"
    flags = set(node.state_flags) - {node.state}
    return "+".join([node.state, *sorted(flags)])


def cloud_summary(node: Node | None) -> str:
    return node.status or "?" if node is not None else "-"


def hook_stale_after(cfg) -> float:
    """A PENDING record older than this is not waiting for a live hook any more (a hook gives up
    after its retry budget)."""
    return max(60.0, float(cfg.cluster.retry_budget) + 2 * float(cfg.cluster.timeout))


# --------------------------------------------------------------------------- plan (pure)


@dataclass
class _Ctx:
    cfg: Any
    now: float
    grace: float
    latest: dict[str, Operation]
    in_flight: dict[str, Operation]  # resume op open and before its deadline
    suspending: dict[str, Operation]  # suspend-type op open and before its deadline
    cooling_keys: set[str]  # bucket keys in an active cool-off (state file or GET status)
    held: set[str]  # names an active cool-off took out of service
    expired_nodes: dict[str, str]  # name -> key of an expired cool-off that took it out of service
    waiting: list["GraceWait"] = field(default_factory=list)  # what the grace holds back this run


@dataclass(frozen=True)
class GraceWait:
    """An action the grace holds back: repair takes it from `at` on if nothing changes."""

    node: str
    action: str
    reason: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "action": self.action, "reason": self.reason, "at": self.at}


def plan_repair(
    slurm_nodes: Mapping[str, Any],
    cloud_nodes: Mapping[str, Node] | Iterable[Node],
    state: State,
    nodemap: NodeMap,
    cfg,
    now: float,
    *,
    buckets: Mapping[str, Any] | None = None,
    live_hooks: Iterable[str] = (),
    waiting: list[GraceWait] | None = None,
) -> list[RepairAction]:
    """Decide what to repair. Pure: no I/O, same inputs give the same actions. `waiting`, when
    given, gets what the grace holds back this time (and from when it would be done).

    slurm_nodes: name -> SlurmNode (hpc_bridge.slurm); cloud_nodes: name -> Node (or the list
    from GET nodes); buckets: "nodearray/machineType" -> Bucket from GET status (for capacity
    failures the API reports); live_hooks: request ids of PENDING records whose hook may still
    be at work (`lease.hook_alive`).
    """
    cloud = dict(cloud_nodes) if isinstance(cloud_nodes, Mapping) else index_by_name(cloud_nodes)
    live = frozenset(live_hooks)
    grace = float(cfg.repair.grace)
    latest = state.latest_by_node()
    in_flight = state.resume_in_flight(now)

    cooling = {k for k, c in state.cooloffs.items() if c.active(now)}
    for key, b in (buckets or {}).items():
        if b.capacity_failure_within(cfg.resume.capacity_cooloff):
            cooling.add(key)
    held = {n for k, c in state.cooloffs.items() if c.active(now) for n in c.nodes}
    expired = {k: c for k, c in sorted(state.cooloffs.items()) if not c.active(now) and c.nodes and k not in cooling}
    expired_nodes = {n: k for k, c in expired.items() for n in c.nodes if n not in held}
    ctx = _Ctx(cfg, now, grace, latest, in_flight, {}, cooling, held, expired_nodes)

    actions: list[RepairAction] = []
    actions.extend(_plan_operations(state, slurm_nodes, cloud, ctx, live))
    # Suspend-type calls still in flight (not the ones closed just now) protect their nodes.
    closing = {a.request_id for a in actions if a.kind == CLOSE}
    ctx.suspending = {n: op for n, op in latest.items() if op.action not in RESUME_ACTIONS and op.open
                      and now < op.deadline and op.request_id not in closing}
    for key in expired:
        names = node_names(expired[key].nodes)
        actions.append(RepairAction(key, "-", "-", END_COOLOFF,
                                    f"capacity cool-off ended; {names} no longer held out of service",
                                    drift=COOLOFF_ENDED, cooloff=key))

    # One node-map look-up per name (each is a name split and a range search).
    entries = {n: e for n in slurm_nodes if (e := nodemap.get(n)) is not None}
    for name in sorted(entries.keys() | cloud.keys()):
        entry = entries[name] if name in entries else nodemap.get(name)
        actions.extend(_plan_node(name, slurm_nodes.get(name), cloud.get(name), entry, ctx))
    if waiting is not None:
        waiting.extend(ctx.waiting)
    return actions


def op_ref(op: Operation) -> str:
    """How an operation is named to people, the same everywhere (nodes, operations, repair):
    by the API's operation id once it has one, by our request id before."""
    return f"{op.action} operation {op.operation_id}" if op.operation_id else f"{op.action} request {op.request_id}"


def _op_label(op: Operation) -> str:
    # names recorded as given (a suspend while the API was down) may not fit a hostlist
    return node_names(op.nodes) if op.nodes else "-"


def _plan_operations(state: State, slurm_nodes, cloud: dict[str, Node], ctx: _Ctx, live: frozenset[str]
                     ) -> list[RepairAction]:
    out: list[RepairAction] = []
    stale = hook_stale_after(ctx.cfg)
    for op in sorted(state.operations.values(), key=lambda o: (o.started, o.request_id)):
        if not op.open:
            continue

        def act(kind: str, why: str) -> RepairAction:
            drift = OVERDUE_OPERATION if kind == RESOLVE else UNFINISHED_OPERATION
            return RepairAction(_op_label(op), "-", "-", kind, f"{op_ref(op)}: {why}", drift=drift,
                                request_id=op.request_id)

        if op.outcome == ACCEPTED:
            if ctx.now >= op.deadline:
                out.append(act(RESOLVE, "accepted, past its deadline: look it up and close it"))
            continue
        if op.outcome != PENDING:
            continue
        if op.request_id in live and ctx.now - op.started < stale:
            continue  # its hook is still at work
        why = "hook gone" if op.request_id not in live else f"hook silent for {ctx.now - op.started:.0f}s"
        if op.action in RESUME_ACTIONS:
            if ctx.now >= op.deadline:
                out.append(act(CLOSE, f"{why}, past its deadline: closed (its nodes are handled on their own)"))
            elif op.request and all(
                (s := slurm_nodes.get(n)) is not None and _coming_up(s)
                and ctx.latest.get(n) is op for n in op.nodes
            ):
                out.append(act(RESEND, f"{why}; Slurm still waits for its nodes: re-sent with the same requestId"))
            elif all((s := slurm_nodes.get(n)) is not None and _stoppable(s) for n in op.nodes):
                # Slurm gave the nodes up (ResumeTimeout, or suspended them): nothing waits for
                # this call any more, and an open record would keep its VMs running to its deadline.
                out.append(act(CLOSE, f"{why}; Slurm powered its nodes down: closed (their VMs are handled on their own)"))
            # else: leave it open until its deadline (its nodes count as in flight until then)
            continue
        # shutdown / deallocate / terminate / remove: finish it only while Slurm does not use the nodes
        safe = op.request and all(_stoppable(slurm_nodes.get(n)) and n not in ctx.in_flight for n in op.nodes)
        if safe:
            out.append(act(RESEND, f"{why}; nodes still powered down in Slurm: re-sent with the same requestId"))
        else:
            out.append(act(CLOSE, f"{why}; nodes in use again (or no request recorded): closed without re-sending"))
    return out


def _coming_up(s) -> bool:
    """Slurm is powering the node up, or has a power-up queued for a powered-down node."""
    flags = s.state_flags
    return "POWERING_UP" in flags or ("POWERED_DOWN" in flags and "POWER_UP" in flags)


def _stoppable(s) -> bool:
    if s is None:
        return True
    flags = s.state_flags
    if flags & ALLOCATED_FLAGS or _coming_up(s):
        return False
    return "POWERED_DOWN" in flags or bool(flags & POWERING_DOWN_FLAGS)


def _recent(name: str, node: Node | None, ctx: _Ctx, action: str, reason: str) -> bool:
    """Something happened to this node within the grace period (an operation of ours started,
    or the cloud node changed status): then the `action` it would get waits, noted in ctx."""
    ends = []
    op = ctx.latest.get(name)
    if op is not None and ctx.now - op.started < ctx.grace:
        ends.append(op.started + ctx.grace)
    if node is not None:
        age = seconds_since_change(node, ctx.now)
        if age is not None and age < ctx.grace:
            ends.append(ctx.now - age + ctx.grace)
    if ends:
        ctx.waiting.append(GraceWait(name, action, reason, max(ends)))
    return bool(ends)


@dataclass(frozen=True)
class _Seen:
    """One name as repair sees it: Slurm's node (None: Slurm does not know the name) with its
    flags read once, and the cloud node if it is live (not Terminated/Off)."""

    name: str
    slurm: Any
    live: Node | None
    op: Operation | None  # a resume call in flight for it
    row: tuple[str, str]  # (Slurm state, cloud state) as shown
    allocated: bool = False
    powered_down: bool = False
    powering_up: bool = False
    powering_down: bool = False
    down: bool = False
    drained: bool = False
    not_responding: bool = False
    ours: bool = False  # its reason is ours
    slurm_own: bool = False  # its reason is one Slurm sets itself in power saving

    @classmethod
    def of(cls, name: str, s, c: Node | None, ctx: _Ctx) -> "_Seen":
        live = c if c is not None and c.status not in GONE else None
        seen = cls(name, s, live, ctx.in_flight.get(name), (slurm_summary(s), cloud_summary(c)))
        if s is None:
            return seen
        flags = s.state_flags
        # POWER_UP is a queued power-up: on a powered-down node it means "about to power up" (22.05
        # also keeps it on a node whose slurmd registered: IDLE+CLOUD+POWER_UP is simply up).
        return cls(
            name, s, live, seen.op, seen.row,
            allocated=bool(flags & ALLOCATED_FLAGS) or s.state in ALLOCATED_FLAGS,
            powered_down="POWERED_DOWN" in flags,
            powering_up=_coming_up(s),
            powering_down=bool(flags & POWERING_DOWN_FLAGS),
            down=s.state == "DOWN" or "DOWN" in flags,
            drained=bool(flags & DRAIN_FLAGS),
            not_responding="NOT_RESPONDING" in flags,
            ours=is_our_reason(s.reason),
            slurm_own=bool(s.reason) and s.reason.startswith(SLURM_OWN_REASONS),
        )

    @property
    def status(self) -> str | None:
        return self.live.status if self.live is not None else None

    def act(self, kind: str, why: str, drift: str, **kw: Any) -> RepairAction:
        return RepairAction(self.name, *self.row, kind, why, drift=drift, **kw)


def _plan_node(name: str, s, c: Node | None, entry, ctx: _Ctx) -> list[RepairAction]:
    n = _Seen.of(name, s, c, ctx)
    if s is None:
        return _unknown_to_slurm(n, entry, ctx)
    if entry is None:
        return []  # a Slurm node that is not ours (not in nodemap.json)
    # an admin's DOWN/DRAIN (reason not ours, not Slurm's own power-save reason)
    if (n.down or n.drained) and s.reason and not n.ours and not n.slurm_own:
        return []
    address = _address(n, ctx.cfg.slurm.address_mode)
    if n.live is not None and n.live.keep_alive and n.status != DEALLOCATED:
        # KeepAlive nodes: nothing but their address. A deallocated one runs no slurmd: it is
        # handled as any stopped node (e.g. down~ after suspend kept it, back in service)
        return address
    if n.powered_down and not n.powering_up:
        return _powered_down(n, bucket_key(entry.nodearray, entry.machine_type), ctx)
    if n.powering_up:
        return _powering_up(n, ctx) or address
    if n.powering_down:
        return []  # Slurm is suspending it: SuspendProgram is at work
    return _up_in_slurm(n) or address


def _unknown_to_slurm(n: _Seen, entry, ctx: _Ctx) -> list[RepairAction]:
    """A cloud node whose name Slurm does not know: terminated after the grace where its
    nodearray is ours to manage, reported otherwise."""
    live = n.live
    if live is None or n.status in TRANSITIONAL_DOWN or live.keep_alive or n.op is not None:
        return []
    array = live.template or (entry.nodearray if entry is not None else "")
    if not array or not ctx.cfg.partitions.is_managed(array):
        return [n.act(REPORT, f"cloud node in unmanaged nodearray {array or '?'} that Slurm does not know; "
                              "left alone", UNKNOWN_TO_SLURM)]
    if _recent(n.name, live, ctx, TERMINATE, f"cloud node in managed nodearray {array} that Slurm does not know"):
        return []
    if not live.node_id:
        return [n.act(REPORT, "cloud node unknown to Slurm has no NodeId; cannot terminate it", UNKNOWN_TO_SLURM)]
    return [n.act(TERMINATE, f"cloud node in managed nodearray {array} that Slurm does not know, "
                             f"older than the {ctx.grace:g}s grace", UNKNOWN_TO_SLURM, node_id=live.node_id)]


def _address(n: _Seen, mode: str) -> list[RepairAction]:
    """A Ready cloud node whose address Slurm does not have, while Slurm powers it up or has it
    up but cannot reach it. A node whose slurmd answers keeps the NodeAddr Slurm has: it is
    reached there, and Slurm 23.11+ sets it from the registration (setting another one back
    made the two flip it in turn, and a job step lose the node in between)."""
    if n.status != READY or mode not in ("ip", "hostname"):
        return []
    up = not (n.powered_down or n.powering_down)
    if not (n.powering_up or (up and n.not_responding)):
        return []
    addr = address_of(n.live, mode)
    if addr and n.slurm.node_addr != addr[0]:
        return [n.act(SET_ADDRESS, f"cloud node Ready at {addr[0]}, Slurm has NodeAddr={n.slurm.node_addr or '-'}",
                      ADDRESS_MISSING, address=addr)]
    return []


def _powered_down(n: _Seen, key: str, ctx: _Ctx) -> list[RepairAction]:
    """Slurm has it powered down (idle~ / down~): a VM running or failed there is a leak; a
    down~ node with no VM goes back to idle~ unless a cool-off holds it."""
    live, status = n.live, n.status
    if status in RUNNING:
        if n.allocated or n.op is not None or n.name in ctx.suspending:
            return []
        if _recent(n.name, live, ctx, TERMINATE, f"cloud node {status} while Slurm has it powered down (leaked VM)"):
            return []
        if not live.node_id:
            return [n.act(REPORT, "leaked cloud node has no NodeId; cannot terminate it", LEAKED_VM)]
        return [n.act(TERMINATE, f"cloud node {status} while Slurm has it powered down and no operation in "
                                 f"flight, for more than the {ctx.grace:g}s grace (leaked VM)", LEAKED_VM,
                      node_id=live.node_id)]
    if status == FAILED_STATUS:
        if n.allocated or n.op is not None or not live.node_id:
            return []
        return [n.act(TERMINATE, f"cloud node failed ({live.status_message or 'no message'}) while Slurm has it "
                                 "powered down", FAILED_VM, node_id=live.node_id)]
    if status in TRANSITIONAL_DOWN:
        return []  # on its way out; looked at again next run
    # no cloud node (none, Terminated/Off, or Deallocated)
    if n.down and (n.ours or n.slurm_own or not n.slurm.reason) and n.op is None:
        if n.name in ctx.expired_nodes:
            k = ctx.expired_nodes[n.name]
            return [n.act(SLURM_RESUME, f"capacity cool-off for {k} ended: back in service", COOLOFF_ENDED,
                          cooloff=k)]
        if key in ctx.cooling_keys or n.name in ctx.held:
            return []  # held out of service by a capacity cool-off
        return [n.act(SLURM_RESUME, "down~ with no cloud node and no capacity cool-off: back to idle~",
                      DOWN_WITHOUT_VM)]
    return []


def _powering_up(n: _Seen, ctx: _Ctx) -> list[RepairAction]:
    """Slurm is powering it up (…#): past the deadline of our own call with no healthy VM, it is
    powered down (its reason kept) and a failed VM terminated. Empty: nothing but its address."""
    live, status = n.live, n.status
    if n.op is not None or status in RUNNING:
        return []
    last = ctx.latest.get(n.name)
    if last is None or last.action not in RESUME_ACTIONS or ctx.now < last.deadline:
        return []  # Slurm's own ResumeTimeout is the authority without a record of ours
    why = (f"powering up past the deadline of {op_ref(last)} with no healthy cloud node "
           f"({status or 'none'})")
    out = [n.act(POWER_DOWN_FORCE, why + ": powered down, reason kept", STUCK_POWERING_UP,
                 slurm_reason=None if n.slurm.reason else our_reason(why))]
    if status == FAILED_STATUS and not n.allocated and live.node_id:
        out.append(n.act(TERMINATE, f"cloud node failed: {live.status_message or 'no message'}", STUCK_POWERING_UP,
                         node_id=live.node_id))
    return out


def _up_in_slurm(n: _Seen) -> list[RepairAction]:
    """Slurm has it up (idle/mixed/allocated/completing) or DOWN, not powered down: with no live
    VM it goes DOWN so its jobs go elsewhere; a failed VM goes DOWN and is terminated unless a
    job still runs there. Empty: nothing but its address."""
    live, status = n.live, n.status
    if live is None or status == DEALLOCATED or status in TRANSITIONAL_DOWN:
        if n.down or n.op is not None:
            return []
        what = "no cloud node" if live is None else f"cloud node is {status}"
        return [n.act(SLURM_DOWN, f"Slurm has it up but {what}: DOWN so its jobs go elsewhere", UP_WITHOUT_VM,
                      slurm_reason=our_reason(what))]
    if status != FAILED_STATUS or n.op is not None:
        return []
    msg = f"cloud node failed: {live.status_message or 'no message'}"
    if n.allocated:
        return [n.act(REPORT, f"{msg}; Slurm still runs jobs on it, left until they end", FAILED_VM)]
    out = []
    if not (n.down and n.ours):
        out.append(n.act(SLURM_DOWN, msg, FAILED_VM, slurm_reason=our_reason(msg)))
    if live.node_id:
        out.append(n.act(TERMINATE, msg + ": VM terminated", FAILED_VM, node_id=live.node_id))
    return out
