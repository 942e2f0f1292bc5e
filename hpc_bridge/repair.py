"""Repair: a one-shot reconcile of Slurm, the cloud and the state file.

`plan_repair` is a pure function over (Slurm nodes with their state *flag sets* and reasons,
cloud node records, the state file, the node map, bucket status, config, clock, which hook pids
are alive) that returns `RepairAction`s, each with the reason it is taken. `run_repair` reads
everything once (one ``scontrol -o show node``, one GET nodes, one GET status, the state file,
read last so that any operation a hook started before our cloud read is seen), plans, and
applies with batched calls: one ``scontrol update`` per state/reason group, one API call per
action kind (re-sent operations keep their own requestId, so one call each). It is a singleton
(a non-blocking lock file next to the state file) and idempotent: a run right after another
plans nothing.

Decisions look at Slurm's flag *sets* ("POWERED_DOWN" in flags, base state DOWN, ...), never at
one exact State= string: Slurm adds and drops flags (NOT_RESPONDING, CLOUD, COMPLETING, ...)
between versions. Never terminated: a node Slurm has allocated, a node an in-flight create or
start is bringing up, a KeepAlive node; nodes an admin took out of service (DOWN/DRAIN with a
reason that is not ours) are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import filelock

from hpc_bridge.api.models import Node
from hpc_bridge.errors import ApiError, BridgeError, NotFoundError, StateError
from hpc_bridge.files import touch_owned
from hpc_bridge.journal import Call, Journal, close, settle
from hpc_bridge.lease import pid_alive
from hpc_bridge.log import node_names
from hpc_bridge.nodemap import NodeMap
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
from hpc_bridge.nodeops import mark_down
from hpc_bridge.reasons import is_our_reason, reason as our_reason
from hpc_bridge.state import ACCEPTED, DONE, FAILED, PENDING, RESUME_ACTIONS, Operation, State, StateStore

if TYPE_CHECKING:
    from hpc_bridge.ports import Clock, ClusterApi, SlurmControl, StateStorage

log = logging.getLogger("hpc_bridge.repair")

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
    live_pids: Iterable[int] = (),
    waiting: list[GraceWait] | None = None,
) -> list[RepairAction]:
    """Decide what to repair. Pure: no I/O, same inputs give the same actions. `waiting`, when
    given, gets what the grace holds back this time (and from when it would be done).

    slurm_nodes: name -> SlurmNode (hpc_bridge.slurm); cloud_nodes: name -> Node (or the list
    from GET nodes); buckets: "nodearray/machineType" -> Bucket from GET status (for capacity
    failures the API reports); live_pids: the pids of PENDING records' hooks that still run.
    """
    cloud = dict(cloud_nodes) if isinstance(cloud_nodes, Mapping) else index_by_name(cloud_nodes)
    live = frozenset(live_pids)
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


def _plan_operations(state: State, slurm_nodes, cloud: dict[str, Node], ctx: _Ctx, live: frozenset[int]
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
        if op.pid in live and ctx.now - op.started < stale:
            continue  # its hook is still at work
        why = "hook gone" if op.pid not in live else f"hook silent for {ctx.now - op.started:.0f}s"
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


def _plan_node(name: str, s, c: Node | None, entry, ctx: _Ctx) -> list[RepairAction]:
    cfg, now = ctx.cfg, ctx.now
    sstate, cstate = slurm_summary(s), cloud_summary(c)
    live = c if c is not None and c.status not in GONE else None
    status = live.status if live is not None else None
    op = ctx.in_flight.get(name)

    def act(kind: str, why: str, drift: str, **kw: Any) -> RepairAction:
        return RepairAction(name, sstate, cstate, kind, why, drift=drift, **kw)

    # ---- Slurm does not know the name
    if s is None:
        if live is None or status in TRANSITIONAL_DOWN or live.keep_alive or op is not None:
            return []
        array = live.template or (entry.nodearray if entry is not None else "")
        if not array or not cfg.partitions.is_managed(array):
            return [act(REPORT, f"cloud node in unmanaged nodearray {array or '?'} that Slurm does not know; "
                                "left alone", UNKNOWN_TO_SLURM)]
        if _recent(name, live, ctx, TERMINATE, f"cloud node in managed nodearray {array} that Slurm does not know"):
            return []
        if not live.node_id:
            return [act(REPORT, "cloud node unknown to Slurm has no NodeId; cannot terminate it", UNKNOWN_TO_SLURM)]
        return [act(TERMINATE, f"cloud node in managed nodearray {array} that Slurm does not know, "
                               f"older than the {ctx.grace:g}s grace", UNKNOWN_TO_SLURM, node_id=live.node_id)]
    if entry is None:
        return []  # a Slurm node that is not ours (not in nodemap.json)

    flags = s.state_flags
    base = s.state
    allocated = bool(flags & ALLOCATED_FLAGS) or base in ALLOCATED_FLAGS
    # POWER_UP is a queued power-up: on a powered-down node it means "about to power up" (22.05
    # also keeps it on a node whose slurmd registered: IDLE+CLOUD+POWER_UP is simply up).
    powered_down = "POWERED_DOWN" in flags
    powering_up = _coming_up(s)
    powering_down = bool(flags & POWERING_DOWN_FLAGS)
    down = base == "DOWN" or "DOWN" in flags
    drained = bool(flags & DRAIN_FLAGS)
    ours = is_our_reason(s.reason)
    slurm_own = bool(s.reason) and s.reason.startswith(SLURM_OWN_REASONS)

    # ---- an admin's DOWN/DRAIN (reason not ours, not Slurm's own power-save reason)
    if (down or drained) and s.reason and not ours and not slurm_own:
        return []

    # ---- a Ready cloud node whose address Slurm does not have
    address: list[RepairAction] = []
    mode = cfg.slurm.address_mode
    if status == READY and mode in ("ip", "hostname") and (powering_up or not (powered_down or powering_down)):
        addr = address_of(live, mode)
        if addr and s.node_addr != addr[0]:
            address.append(act(SET_ADDRESS, f"cloud node Ready at {addr[0]}, Slurm has NodeAddr={s.node_addr or '-'}",
                               ADDRESS_MISSING, address=addr))

    # ---- KeepAlive nodes: nothing but their address
    if live is not None and live.keep_alive:
        return address

    key = bucket_key(entry.nodearray, entry.machine_type)

    # ---- Slurm has it powered down (idle~ / down~)
    if powered_down and not powering_up:
        if status in RUNNING:
            if allocated or op is not None or name in ctx.suspending:
                return []
            if _recent(name, live, ctx, TERMINATE, f"cloud node {status} while Slurm has it powered down (leaked VM)"):
                return []
            if not live.node_id:
                return [act(REPORT, "leaked cloud node has no NodeId; cannot terminate it", LEAKED_VM)]
            return [act(TERMINATE, f"cloud node {status} while Slurm has it powered down and no operation in "
                                   f"flight, for more than the {ctx.grace:g}s grace (leaked VM)", LEAKED_VM,
                        node_id=live.node_id)]
        if status == FAILED_STATUS:
            if allocated or op is not None or not live.node_id:
                return []
            return [act(TERMINATE, f"cloud node failed ({live.status_message or 'no message'}) while Slurm has it "
                                   "powered down", FAILED_VM, node_id=live.node_id)]
        if status in TRANSITIONAL_DOWN:
            return []  # on its way out; looked at again next run
        # no cloud node (none, Terminated/Off, or Deallocated)
        if down and (ours or slurm_own or not s.reason) and op is None:
            if name in ctx.expired_nodes:
                k = ctx.expired_nodes[name]
                return [act(SLURM_RESUME, f"capacity cool-off for {k} ended: back in service", COOLOFF_ENDED,
                            cooloff=k)]
            if key in ctx.cooling_keys or name in ctx.held:
                return []  # held out of service by a capacity cool-off
            return [act(SLURM_RESUME, "down~ with no cloud node and no capacity cool-off: back to idle~",
                        DOWN_WITHOUT_VM)]
        return []

    # ---- Slurm is powering it up (…#)
    if powering_up:
        if op is not None or status in RUNNING:
            return address
        last = ctx.latest.get(name)
        if last is None or last.action not in RESUME_ACTIONS or now < last.deadline:
            return address  # Slurm's own ResumeTimeout is the authority without a record of ours
        why = (f"powering up past the deadline of {op_ref(last)} with no healthy cloud node "
               f"({status or 'none'})")
        out = [act(POWER_DOWN_FORCE, why + ": powered down, reason kept", STUCK_POWERING_UP,
                   slurm_reason=None if s.reason else our_reason(why))]
        if status == FAILED_STATUS and not allocated and live.node_id:
            out.append(act(TERMINATE, f"cloud node failed: {live.status_message or 'no message'}", STUCK_POWERING_UP,
                           node_id=live.node_id))
        return out

    if powering_down:
        return []  # Slurm is suspending it: SuspendProgram is at work

    # ---- Slurm has it up (idle/mixed/allocated/completing) or DOWN, not powered down
    if live is None or status == DEALLOCATED or status in TRANSITIONAL_DOWN:
        if down or op is not None:
            return []
        what = "no cloud node" if live is None else f"cloud node is {status}"
        return [act(SLURM_DOWN, f"Slurm has it up but {what}: DOWN so its jobs go elsewhere", UP_WITHOUT_VM,
                    slurm_reason=our_reason(what))]
    if status == FAILED_STATUS:
        if op is not None:
            return []
        msg = f"cloud node failed: {live.status_message or 'no message'}"
        if allocated:
            return [act(REPORT, f"{msg}; Slurm still runs jobs on it, left until they end", FAILED_VM)]
        out = []
        if not (down and ours):
            out.append(act(SLURM_DOWN, msg, FAILED_VM, slurm_reason=our_reason(msg)))
        if live.node_id:
            out.append(act(TERMINATE, msg + ": VM terminated", FAILED_VM, node_id=live.node_id))
        return out
    return address


# --------------------------------------------------------------------------- apply


@dataclass
class RepairReport:
    actions: list[RepairAction] = field(default_factory=list)
    dry_run: bool = False
    busy: bool = False  # another repair holds the lock: nothing done
    errors: dict[str, str] = field(default_factory=dict)  # kind -> error
    resolved: dict[str, str] = field(default_factory=dict)  # request id -> outcome
    waiting: list[GraceWait] = field(default_factory=list)  # held back by the grace, for now
    api_calls: int = 0
    scontrol_calls: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def changes(self) -> list[RepairAction]:
        return [a for a in self.actions if a.changes]

    def summary(self) -> str:
        if self.busy:
            return "repair: another hpc-bridge repair is running; nothing done"
        counts: dict[str, int] = defaultdict(int)
        for a in self.changes:
            counts[a.kind] += 1
        what = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to repair"
        verb = "would do" if self.dry_run else "done"
        return (f"repair {verb}: {what}; {len(self.actions) - len(self.changes)} reported; "
                f"{self.api_calls} API call(s), {self.scontrol_calls} scontrol call(s)"
                + (f"; {len(self.errors)} error(s)" if self.errors else ""))

    def to_json(self) -> dict[str, Any]:
        return {"dryRun": self.dry_run, "busy": self.busy, "ok": self.ok,
                "actions": [a.to_json() for a in self.actions], "errors": self.errors, "resolved": self.resolved,
                "waiting": [w.to_json() for w in self.waiting],
                "apiCalls": self.api_calls, "scontrolCalls": self.scontrol_calls}


def lock_path(store: StateStore):
    return store.path.with_name("repair.lock")


@contextlib.contextmanager
def singleton(store: StateStore, timeout: float = 0.0):
    """Yields True when this process holds the repair lock, False when another one does."""
    store.ensure_dir()
    lock = filelock.FileLock(str(lock_path(store)), timeout=timeout, mode=0o600)
    try:
        touch_owned(lock_path(store))
        lock.acquire()
    except filelock.Timeout:
        yield False
        return
    except OSError as err:
        raise StateError(f"cannot lock {lock_path(store)}: {err.strerror or err}") from None
    try:
        yield True
    finally:
        lock.release()


def gather(cfg, *, client: ClusterApi, slurm: SlurmControl, store: StateStorage):
    """Read everything once: scontrol, GET nodes, GET status, then the state file (last)."""
    from hpc_bridge.resume import buckets_by_key

    slurm_nodes = slurm.show_nodes()
    cloud = index_by_name(client.get_nodes().nodes)
    buckets = buckets_by_key(client.get_status())
    state = store.read()
    return slurm_nodes, cloud, buckets, state


def run_repair(cfg, *, client: ClusterApi, slurm: SlurmControl, store: StateStore, nodemap: NodeMap,
               dry_run: bool = False, now: Clock = time.time, is_alive: Callable[[int], bool] = pid_alive,
               spawn_follower=None) -> RepairReport:
    report = RepairReport(dry_run=dry_run)
    requests_before, calls_before = client.request_count, slurm.calls
    lock = contextlib.nullcontext(True) if dry_run else singleton(store, cfg.repair.lock_timeout)
    with lock as held:
        if not held:
            report.busy = True
            log.info("another hpc-bridge repair holds %s; exiting", lock_path(store))
            return report
        slurm_nodes, cloud, buckets, state = gather(cfg, client=client, slurm=slurm, store=store)
        t = now()
        pids = {op.pid for op in state.open_operations() if op.outcome == PENDING and is_alive(op.pid)}
        report.actions = plan_repair(slurm_nodes, cloud, state, nodemap, cfg, t, buckets=buckets, live_pids=pids,
                                     waiting=report.waiting)
        for a in report.actions:
            log.info("%s%s %s [%s | %s]: %s", "would " if dry_run else "", a.kind, a.node, a.slurm_state,
                     a.cloud_state, a.reason)
        if not dry_run:
            _apply(cfg, report, state, journal=Journal(store, client, now), slurm=slurm)
            if cfg.resume.follower:
                _step(report, "follower", lambda: _replace_follower(cfg, store, now, spawn_follower))
    report.api_calls = client.request_count - requests_before
    report.scontrol_calls = slurm.calls - calls_before
    log.info("%s", report.summary())
    return report


def _replace_follower(cfg, store: StateStorage, now: Clock, spawn_follower) -> None:
    """Nodes left on the watch list with no follower holding the lease (it was killed, or its
    host is gone): start one, as the next resume would."""
    from hpc_bridge.resume import ensure_follower

    with store.transaction() as state:
        ensure_follower(state, cfg, now(), spawn_follower)


def _step(report: RepairReport, kind: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BridgeError as err:
        report.errors[kind] = str(err)
        log.error("repair %s failed: %s", kind, err)
        return None


def _apply(cfg, report: RepairReport, planned: State, *, journal: Journal, slurm: SlurmControl) -> None:
    """Slurm first (a node leaves service before its VM goes), then the API calls, then one
    state-file transaction for every record change, then back into service and addresses."""
    by_kind: dict[str, list[RepairAction]] = defaultdict(list)
    for a in report.changes:
        by_kind[a.kind].append(a)
    _take_out_of_slurm(report, by_kind[SLURM_DOWN], by_kind[POWER_DOWN_FORCE], slurm)
    _terminate(cfg, report, by_kind[TERMINATE], journal)
    resent = _resend(report, by_kind[RESEND], planned, journal)
    resolved = _resolve(report, by_kind[RESOLVE], planned, journal.client)
    closes = {a.request_id: a.reason for a in by_kind[CLOSE]}
    ends = [a.cooloff for a in by_kind[END_COOLOFF]]
    if resent or resolved or closes or ends:
        _step(report, "state", lambda: _update_records(report, journal, resent, resolved, closes, ends))
    _back_into_slurm(report, by_kind[SLURM_RESUME], by_kind[SET_ADDRESS], slurm)


def _take_out_of_slurm(report: RepairReport, downs: list[RepairAction], power_downs: list[RepairAction],
                       slurm: SlurmControl) -> None:
    """DOWN with our reason, and POWER_DOWN_FORCE per reason (None: the node's own is kept)."""
    if downs:
        _step(report, SLURM_DOWN, lambda: mark_down(slurm, {a.node: a.slurm_reason for a in downs}))
    groups: dict[str | None, list[str]] = defaultdict(list)
    for a in power_downs:
        groups[a.slurm_reason].append(a.node)
    for why, names in groups.items():
        _step(report, POWER_DOWN_FORCE,
              lambda names=names, why=why: slurm.update_nodes(sorted(names), state="POWER_DOWN_FORCE", reason=why))


def _terminate(cfg, report: RepairReport, actions: list[RepairAction], journal: Journal) -> None:
    """One terminate call for every node to terminate, recorded before it is sent."""
    targets = {a.node: a.node_id for a in actions if a.node_id}
    if not targets:
        return
    names = sorted(targets)
    call = Call("terminate", names, {"ids": [targets[n] for n in names]}, journal.now() + cfg.resume.resume_timeout)
    journal.record_and_send([call])
    if call.error is not None:
        report.errors[TERMINATE] = str(call.error)
    elif call.result is not None:
        bad = {m.name: m.error for m in call.result.nodes if not m.ok}
        if bad:
            report.errors[TERMINATE] = "; ".join(f"{n}: {e or 'refused'}" for n, e in sorted(bad.items()))


def _resend(report: RepairReport, actions: list[RepairAction], planned: State, journal: Journal) -> list[Call]:
    """Recorded calls whose hook was killed: sent again with their own requestId."""
    calls = []
    for a in actions:
        call = journal.resend(planned.operations[a.request_id])
        if call.error is not None:
            report.errors[f"{RESEND} {call.request_id}"] = str(call.error)
        calls.append(call)
    return calls


def _resolve(report: RepairReport, actions: list[RepairAction], planned: State,
             client: ClusterApi) -> dict[str, tuple[str, str]]:
    """Accepted calls past their deadline: what became of them? request id -> (outcome, why);
    one the API cannot tell about now stays open for the next run."""
    resolved: dict[str, tuple[str, str]] = {}
    for a in actions:
        op = planned.operations[a.request_id]
        try:
            if op.operation_id:
                client.get_operation(op.operation_id)
                resolved[op.request_id] = (DONE, f"resolved by repair: operation {op.operation_id} known to the API")
            elif client.find_request(op.request_id) is not None:
                resolved[op.request_id] = (DONE, "resolved by repair: its request id is known to the API")
            else:
                resolved[op.request_id] = (FAILED, "resolved by repair: the API has no trace of it")
        except NotFoundError:
            resolved[op.request_id] = (FAILED, "resolved by repair: operation unknown to the API (404)")
        except ApiError as err:  # unreachable included: stays open for the next run
            report.errors[f"{RESOLVE} {op.request_id}"] = str(err)
    return resolved


def _update_records(report: RepairReport, journal: Journal, resent: list[Call],
                    resolved: dict[str, tuple[str, str]], closes: dict[str, str], ends: list[str]) -> None:
    """One state-file transaction: the re-sent calls settled, the given-up ones closed, the
    resolved ones closed with what the API said, expired cool-offs let go of their nodes. A
    record changed meanwhile by someone else (a hook that was slow, not gone) is left as it is."""
    with journal.transaction() as state:
        t = journal.now()
        for call in resent:
            op = state.operations.get(call.request_id)
            if op is None or op.outcome != PENDING:
                continue
            settle(op, call, t)
            if op.outcome == ACCEPTED and op.action not in RESUME_ACTIONS and t >= op.deadline:
                close(state, op.request_id, DONE, t, "re-sent by repair past its deadline")
        for rid, why in closes.items():
            close(state, rid, FAILED, t, why, pending_only=True)
        for rid, (outcome, why) in resolved.items():
            if close(state, rid, outcome, t, why):
                report.resolved[rid] = outcome
        for key in ends:
            c = state.cooloffs.get(key)
            if c is not None and not c.active(t):
                c.nodes = []


def _back_into_slurm(report: RepairReport, resumes: list[RepairAction], addresses: list[RepairAction],
                     slurm: SlurmControl) -> None:
    if resumes:
        _step(report, SLURM_RESUME, lambda: slurm.update_nodes(sorted(a.node for a in resumes), state="RESUME"))
    if addresses:
        _step(report, SET_ADDRESS, lambda: slurm.set_addresses({a.node: a.address for a in addresses}))


def format_plan(actions: list[RepairAction]) -> str:
    from hpc_bridge.table import format_table

    return format_table(["node", "slurm state", "cloud state", "action", "reason"], (a.row() for a in actions))
