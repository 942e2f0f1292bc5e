"""Repair: a one-shot reconcile of Slurm, the cloud and the state file.

`plan_repair` (hpc_bridge.repair_plan) decides what to do and why. `run_repair` reads
everything once (one ``scontrol -o show node``, one GET nodes, one GET status, the state file,
read last so that any operation a hook started before our cloud read is seen), plans, and
applies with batched calls: one ``scontrol update`` per state/reason group, one API call per
action kind (re-sent operations keep their own requestId, so one call each). It is a singleton per
state directory (a non-blocking flock of `repair.lock` next to the state file: on storage both
controllers mount, one repair runs across them) and idempotent: a run right after another plans
nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from hpc_bridge import flock
from hpc_bridge.cloud import index_by_name
from hpc_bridge.errors import ApiError, BridgeError, NotFoundError, StateError
from hpc_bridge.journal import Call, Journal, close, settle
from hpc_bridge.lease import hook_alive
from hpc_bridge.nodemap import NodeMap
from hpc_bridge.nodeops import mark_down
from hpc_bridge.repair_plan import (
    CLOSE,
    END_COOLOFF,
    POWER_DOWN_FORCE,
    RESEND,
    RESOLVE,
    SET_ADDRESS,
    SLURM_DOWN,
    SLURM_RESUME,
    TERMINATE,
    GraceWait,
    RepairAction,
    plan_repair,
)
from hpc_bridge.resume_plan import buckets_by_key
from hpc_bridge.state import StateStore
from hpc_bridge.state_records import ACCEPTED, DONE, FAILED, PENDING, RESUME_ACTIONS, Operation, State

if TYPE_CHECKING:
    from hpc_bridge.ports import CallJournal, Clock, ClusterApi, SlurmControl, StateStorage

log = logging.getLogger("hpc_bridge.repair")


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
    """Yields True when this process holds the repair lock, False when another one does (on
    this host or, through storage both controllers mount, on the other controller)."""
    store.ensure_dir()
    try:
        with flock.try_exclusive(str(lock_path(store)), timeout) as held:
            yield held
    except OSError as err:
        raise StateError(f"cannot lock {lock_path(store)}: {err.strerror or err}") from None


def gather(cfg, *, client: ClusterApi, slurm: SlurmControl, store: StateStorage):
    """Read everything once: scontrol, GET nodes, GET status, then the state file (last)."""
    slurm_nodes = slurm.show_nodes()
    cloud = index_by_name(client.get_nodes().nodes)
    buckets = buckets_by_key(client.get_status())
    state = store.read()
    return slurm_nodes, cloud, buckets, state


def run_repair(cfg, *, client: ClusterApi, slurm: SlurmControl, store: StateStore, nodemap: NodeMap,
               dry_run: bool = False, now: Clock = time.time, is_alive: Callable[[Operation], bool] = hook_alive,
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
        live = {op.request_id for op in state.open_operations() if op.outcome == PENDING and is_alive(op)}
        report.actions = plan_repair(slurm_nodes, cloud, state, nodemap, cfg, t, buckets=buckets, live_hooks=live,
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


def _apply(cfg, report: RepairReport, planned: State, *, journal: CallJournal, slurm: SlurmControl) -> None:
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


def _terminate(cfg, report: RepairReport, actions: list[RepairAction], journal: CallJournal) -> None:
    """One terminate call for every node to terminate, recorded before it is sent."""
    targets = {a.node: a.node_id for a in actions if a.node_id}
    if not targets:
        return
    names = sorted(targets)
    call = Call("terminate", names, {"ids": [targets[n] for n in names]}, journal.now() + cfg.resume.resume_timeout)
    if (unrecorded := journal.record_and_send([call])) is not None:
        report.errors[f"record {TERMINATE}"] = str(unrecorded)
    if call.error is not None:
        report.errors[TERMINATE] = str(call.error)
    elif call.result is not None:
        bad = call.result.refused
        if bad:
            report.errors[TERMINATE] = "; ".join(f"{n}: {e or 'refused'}" for n, e in sorted(bad.items()))


def _resend(report: RepairReport, actions: list[RepairAction], planned: State, journal: CallJournal) -> list[Call]:
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


def _update_records(report: RepairReport, journal: CallJournal, resent: list[Call],
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
