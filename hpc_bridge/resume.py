"""Resume: create or start the cloud nodes Slurm names, and return at once.

`plan_resume` (hpc_bridge.resume_plan) decides; `run_resume` gathers its inputs with one GET
status (with its nodes) and one read of the state file, records the calls, makes at most one create
and one start call, and tells Slurm (one scontrol call per reason) which nodes cannot come up.
It never waits for a VM: a detached follower sets node addresses as the API reports them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from hpc_bridge import hostlist
from hpc_bridge.api.models import Bucket, ClusterStatus, Node
from hpc_bridge.cloud import index_by_name
from hpc_bridge.config import Config
from hpc_bridge.errors import ApiError, ApiUnreachable, BridgeError, SlurmError, StateError
from hpc_bridge.follower_plan import still_deferred
from hpc_bridge.journal import Call, Journal, record
from hpc_bridge.log import log_per_message, node_names
from hpc_bridge.nodemap import NodeMap
from hpc_bridge.nodeops import end_power_ups, mark_down, remember_down, take_out_of_service
from hpc_bridge.resume_file import Job
from hpc_bridge.resume_plan import ResumePlan, buckets_by_key, classify_refusals, plan_resume
from hpc_bridge.state_records import FAILED, SUSPEND_ACTIONS, Cooloff

if TYPE_CHECKING:
    from hpc_bridge.ports import CallJournal, Clock, ClusterApi, SlurmControl, StateStorage
    from hpc_bridge.state_records import Lease, State

log = logging.getLogger("hpc_bridge.resume")


# --------------------------------------------------------------------------- apply


@dataclass
class ResumeReport:
    names: int = 0
    created: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    down: dict[str, str] = field(default_factory=dict)
    power_up_ended: list[str] = field(default_factory=list)  # VMs Ready with a slurmd from before (see end_power_ups)
    problems: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    api_calls: int = 0
    scontrol_calls: int = 0
    errors: list[BridgeError] = field(default_factory=list)  # steps that failed after the calls were sent

    @property
    def ok(self) -> bool:
        return not self.down and not self.problems and not self.unknown and not self.errors

    def summary(self) -> str:
        return (f"resume {self.names} node(s): {len(self.created)} created, {len(self.started)} started, "
                f"{len(self.running)} already up, {len(self.waiting)} waiting, {len(self.down)} down, "
                f"{len(self.power_up_ended)} power-up(s) ended; "
                f"{self.api_calls} API call(s), {self.scontrol_calls} scontrol call(s)")


class ResumeCalls:
    """The calls one resume makes: at most one create, one start, one terminate (of failed
    records). Create and start are given up when unreachable: their nodes go DOWN at once,
    and nothing may bring them up behind Slurm's back; a terminate stays for repair.
    (A plain class, as _Outcome: every dataclass is code generated at each hook's start.)"""

    __slots__ = ("create", "start", "terminate")

    def __init__(self) -> None:
        self.create: Call | None = None
        self.start: Call | None = None
        self.terminate: Call | None = None

    @classmethod
    def of(cls, plan: ResumePlan, deadline: float) -> "ResumeCalls":
        calls = cls()
        if plan.create:
            sets = plan.create_sets()
            calls.create = Call("create", [s["nameFormat"] for s in sets], {"sets": sets}, deadline,
                                if_unreachable=FAILED)
        if plan.start:
            names = sorted(plan.start)
            calls.start = Call("start", names, {"ids": [plan.start[n] for n in names]}, deadline,
                               if_unreachable=FAILED)
        if plan.terminate:
            names = sorted(plan.terminate)
            calls.terminate = Call("terminate", names, {"ids": [plan.terminate[n] for n in names]}, deadline)
        return calls

    @property
    def all(self) -> list[Call]:
        return [c for c in (self.create, self.start, self.terminate) if c is not None]

    @property
    def bringing_up(self) -> list[Call]:
        return [c for c in (self.create, self.start) if c is not None]


class _Outcome:
    """What the answers to a resume's calls leave to do."""

    __slots__ = ("down", "capacity", "superseded", "taken")

    def __init__(self, down: dict[str, str]) -> None:
        self.down = down  # name -> reason
        self.capacity: dict[str, str] = {}  # bucket key -> cause of its cool-off
        self.superseded: list[str] = []  # suspended meanwhile: stopped again
        self.taken: dict[str, list[str]] = {}  # bucket key -> nodes taken out of service


def run_resume(cfg: Config, expr: str, jobs: list[Job], *, client: ClusterApi, slurm: SlurmControl,
               store: StateStorage, nodemap: NodeMap, now: Clock = time.time,
               spawn_follower: Callable[[float], Lease] | None = None) -> ResumeReport:
    """Gather (one GET nodes, one GET status), plan and record (one transaction), send (at most
    one call per action), then act on the answers: DOWN with the cause for what cannot come up,
    a capacity cool-off for a size the cloud refused, addresses for what is up already."""
    return _bring_up(cfg, hostlist.expand(expr), jobs, None, client=client, slurm=slurm, store=store,
                     nodemap=nodemap, now=now, spawn_follower=spawn_follower)


def create_deferred(cfg: Config, names: list[str], cloud: dict[str, Node], read_at: float, *, client: ClusterApi,
                    slurm: SlurmControl, store: StateStorage, nodemap: NodeMap,
                    now: Clock = time.time) -> ResumeReport:
    """The follower's part of resume: names resume deferred because their old cloud node was
    still going, once the follower's own read of all nodes (`cloud`, taken at `read_at`) shows
    it gone. Planned, recorded, sent and answered as resume does, on that read: no second GET
    nodes (one GET status, whose buckets decide what may be created)."""
    return _bring_up(cfg, names, [], (cloud, read_at), client=client, slurm=slurm, store=store, nodemap=nodemap,
                     now=now)


def _bring_up(cfg: Config, names: list[str], jobs: list[Job], seen: tuple[dict[str, Node], float] | None, *,
              client: ClusterApi, slurm: SlurmControl, store: StateStorage, nodemap: NodeMap, now: Clock,
              spawn_follower: Callable[[float], Lease] | None = None) -> ResumeReport:
    """`seen`: the cloud's nodes as already read, and when (None: read them now)."""
    report = ResumeReport(names=len(names))
    if not names:
        return report
    requests_before, calls_before = client.request_count, slurm.calls
    ours = [n for n in names if n in nodemap]  # on a failure below, the others are still left alone
    report.unknown = [n for n in names if n not in nodemap]
    if not ours:  # nothing of ours: no API call either
        log.error("%s: unknown node (not in nodemap.json), left unchanged", node_names(report.unknown))
        return report
    journal = Journal(store, client, now)
    try:
        plan, calls = _plan_and_record(cfg, names, jobs, nodemap, journal, spawn_follower, seen)
    except ApiError as err:
        _all_down(report, ours, _api_reason(err), slurm, store)
    except StateError as err:
        # Nothing was sent: without a record no call may be made, so the nodes cannot come up.
        log.error("%s", err)
        _all_down(report, ours, f"cannot record the request: {err}", slurm, None)
    else:
        # From here on the calls are made: every later step happens whatever failed before it
        # (the state file, an scontrol call), and what failed is reported at the end.
        settled = journal.send(calls.all)
        if settled.error is not None:
            report.errors.append(settled.error)
        outcome = _read_answers(cfg, plan, calls, client, nodemap, report)
        _stop_superseded(journal, settled.state, calls, outcome, report)
        _take_sizes_out_of_service(slurm, nodemap, names, outcome, report)
        _record_failures(store, cfg, outcome, now, report)
        _tell_slurm(cfg, slurm, plan, outcome, report)
    report.api_calls = client.request_count - requests_before
    report.scontrol_calls = slurm.calls - calls_before
    return report


def _plan_and_record(cfg: Config, names: list[str], jobs: list[Job], nodemap: NodeMap, journal: CallJournal,
                     spawn_follower, seen: tuple[dict[str, Node], float] | None = None
                     ) -> tuple[ResumePlan, ResumeCalls]:
    """Read the cloud (its nodes unless `seen`), then plan and record in one transaction: a
    concurrent resume sees these claims before it can plan the same names (no duplicate create,
    even between two hooks). The nodes to watch go on the follower's list in it too, and a
    follower is started when none holds the lease. ApiError: the cloud could not be read;
    StateError: nothing recorded."""
    client, now = journal.client, journal.now
    if seen is None:
        read_at = now()
        status, cloud = read_cloud(client)
    else:
        cloud, read_at = seen
        status = client.get_status()
    buckets = buckets_by_key(status)
    deadline = now() + cfg.resume.resume_timeout
    with journal.transaction() as state:
        t = now()
        if seen is not None:
            wanted, deadline = still_deferred(state, names, t)
            if dropped := sorted(set(names) - set(wanted)):
                log.info("%s: no longer wanted up (past the deadline or suspended since): not created",
                         node_names(dropped))
            if deadline is None:
                return ResumePlan(), ResumeCalls()
            names = wanted
        plan = plan_resume(names, nodemap, cloud, buckets, state.resume_in_flight(t), state.active_cooloffs(t),
                           jobs, cfg, t, state.brought_up_since(names, read_at), state.stop_unfinished(names))
        calls = ResumeCalls.of(plan, deadline)
        record(state, calls.all, t)
        if cfg.resume.follower:
            state.add_watch(plan.to_watch(), deadline, t, recreate=plan.deferred)
            ensure_follower(state, cfg, t, spawn_follower)
    log_per_message(log, logging.INFO, plan.waiting)
    log_per_message(log, logging.INFO, plan.running, "%s: cloud node already %s, nothing to create")
    if plan.unknown:
        log.error("%s: unknown node (not in nodemap.json), left unchanged", node_names(plan.unknown))
    for problem in plan.problems.values():
        log.error("%s", problem)
    return plan, calls


def _read_answers(cfg: Config, plan: ResumePlan, calls: ResumeCalls, client: ClusterApi, nodemap: NodeMap,
                  report: ResumeReport) -> _Outcome:
    """What the create and start answers mean per name: created / started, or DOWN with the
    cause; names a create did not add are classified on a fresh status (classify_refusals)."""
    outcome = _Outcome(down=dict(plan.down))
    if (create := calls.create) is not None:
        if create.result is None:
            outcome.down.update(dict.fromkeys(create.nodes, _api_reason(create.error)))
        else:
            refused: dict[str, str | None] = {}
            for name, result_set in zip(create.nodes, create.result.sets):
                if result_set.added >= 1:
                    report.created.append(name)
                else:
                    refused[name] = result_set.message
            if report.created:
                log.info("%s: create accepted (operation %s)", node_names(report.created),
                         create.result.operation_id or "id unknown")
            if refused:
                classified = classify_refusals(refused, nodemap, *_status_after(client), cfg.resume.capacity_cooloff)
                for name in classified.running:
                    log.info("%s: create refused but the node exists: created by someone else, not DOWN", name)
                report.running.extend(classified.running)
                outcome.down.update(classified.down)
                outcome.capacity.update(classified.capacity)
    if (start := calls.start) is not None:
        if start.result is None:
            outcome.down.update(dict.fromkeys(start.nodes, _api_reason(start.error)))
        else:
            errors = start.result.refused
            for name in start.nodes:
                if name in errors:
                    outcome.down[name] = f"start refused: {errors[name] or 'no message'}"
                else:
                    report.started.append(name)
    return outcome


def _stop_superseded(journal: CallJournal, settled: State | None, calls: ResumeCalls, outcome: _Outcome,
                     report: ResumeReport) -> None:
    """Slurm may have suspended a node while our create was in flight (POWER_DOWN_FORCE): its
    suspend found nothing to stop yet. Honour the later intent now rather than leak the VM.
    `settled`: the state as the journal settled the calls (None: that failed, read it here)."""
    brought_up = report.created + report.started
    if not brought_up:
        return
    state = settled if settled is not None else journal.read()
    superseded = _suspended_meanwhile(state, calls.bringing_up, brought_up)
    if not superseded:
        return
    log.info("%s: suspended while being brought up: stopping", node_names(superseded))
    deadline = calls.bringing_up[0].deadline
    try:
        if (unrecorded := journal.record_and_send([Call("terminate", superseded, {"names": superseded}, deadline)])):
            report.errors.append(unrecorded)
    except StateError as err:
        log.error("%s: not stopped, repair will: %s", node_names(superseded), err)
        report.errors.append(err)
    report.created = [n for n in report.created if n not in superseded]
    report.started = [n for n in report.started if n not in superseded]
    outcome.superseded = superseded


def _take_sizes_out_of_service(slurm: SlurmControl, nodemap: NodeMap, names: list[str], outcome: _Outcome,
                               report: ResumeReport) -> None:
    """A VM size the cloud has no capacity for: its idle powered-down nodes go DOWN too, so
    Slurm places jobs on other sizes while the cool-off lasts."""
    if not outcome.capacity:
        return
    try:
        out_of_service, outcome.taken = take_out_of_service(
            slurm, nodemap, {k: f"capacity cool-off for {k}: {m}" for k, m in outcome.capacity.items()},
            exclude=set(names))
    except SlurmError as err:
        log.error("capacity cool-off: other nodes of the VM size not taken out of service: %s", err)
        report.errors.append(err)
    else:
        outcome.down.update(out_of_service)


def _record_failures(store: StateStorage, cfg: Config, outcome: _Outcome, now: Clock, report: ResumeReport) -> None:
    """One transaction for what the failures leave behind (under an API outage every hook takes
    this path at once): nothing is coming up for the nodes marked down or stopped; a capacity
    failure starts a cool-off holding the nodes taken out of service; DOWN reasons are
    remembered before Slurm is told. (The calls' own records were settled by the journal.)"""
    if not (outcome.capacity or outcome.down or outcome.superseded):
        return
    try:
        with store.transaction() as state:
            state.drop_watch([*outcome.down, *outcome.superseded])
            t = now()
            for key, message in outcome.capacity.items():
                until = t + cfg.resume.capacity_cooloff
                # keep the nodes an earlier cool-off took out of service: repair puts them back
                held = old.nodes if (old := state.cooloffs.get(key)) is not None else []
                state.cooloffs[key] = Cooloff(until=until, reason=" ".join(message.split())[:120],
                                              nodes=sorted(set(held) | set(outcome.taken.get(key, ()))))
                log.warning("capacity failure for %s: cool-off until %s", key, time.ctime(until))
            remember_down(state, outcome.down, t)
    except StateError as err:
        log.error("failures not recorded (repair finds them in Slurm and the API): %s", err)
        report.errors.append(err)


def _tell_slurm(cfg: Config, slurm: SlurmControl, plan: ResumePlan, outcome: _Outcome, report: ResumeReport) -> None:
    """DOWN with the cause for what cannot come up, the power-up ended for VMs Ready with a slurmd
    from before it, addresses for what is up already; then the report's last fields."""
    if outcome.down:
        try:
            mark_down(slurm, outcome.down)
        except SlurmError as err:
            report.errors.append(err)
    if plan.power_down:
        try:
            end_power_ups(slurm, plan.power_down)
        except SlurmError as err:
            report.errors.append(err)
    if plan.addresses and cfg.slurm.address_mode in ("ip", "hostname"):
        try:
            slurm.set_addresses(plan.addresses)
        except SlurmError as err:
            log.error("%s: addresses not set, the follower sets them: %s", node_names(plan.addresses), err)
            report.errors.append(err)
    report.running = sorted(set(plan.running) | set(report.running))
    report.problems = dict(plan.problems)
    report.waiting = sorted(plan.waiting)
    report.down = outcome.down
    report.power_up_ended = sorted(plan.power_down)


def ensure_follower(state, cfg: Config, now: float, spawn_follower) -> None:
    """Start the follower (in an open transaction) when there is something to watch and no
    follower holds the lease; the lease names the new process at once, so a concurrent hook
    sees it and starts none."""
    from hpc_bridge.lease import lease_held

    if lease_held(state.follower, now, cfg.resume.follower_lease):
        return
    expired = sorted(n for n, w in state.watch.items() if w.deadline <= now)
    if expired:  # left by a follower that died: nothing to start one for (repair has them)
        state.drop_watch(expired)
        log.warning("%s: past the deadline with no follower watching (repair takes over)", node_names(expired))
    if spawn_follower is not None and state.watch:
        state.follower = spawn_follower(now)


def _all_down(report: ResumeReport, names: list[str], why: str, slurm: SlurmControl,
              store: StateStorage | None) -> None:
    """Nothing can be brought up: every node DOWN now with the cause, so that Slurm reschedules
    instead of waiting for ResumeTimeout (the reasons are remembered when the store is usable)."""
    report.down = dict.fromkeys(names, why)
    try:
        mark_down(slurm, report.down, store)
    except SlurmError as err:
        report.errors.append(err)


def read_cloud(client: ClusterApi) -> tuple[ClusterStatus, dict[str, Node]]:
    """The cluster's status and its nodes by name in one request (the reference's `nodes=true`);
    a service that leaves the optional node list out is asked `GET nodes` for it."""
    status = client.get_status(nodes=True)
    return status, index_by_name(status.nodes if status.nodes is not None else client.get_nodes().nodes)


def _status_after(client: ClusterApi) -> tuple[dict[str, Node] | None, dict[str, Bucket] | None]:
    """Cloud nodes and buckets as the API reports them right after a create, or (None, None)
    when they cannot be read."""
    try:
        status, cloud = read_cloud(client)
    except ApiError as err:
        log.warning("cannot read the cluster status after the create: %s", err)
        return None, None
    return cloud, buckets_by_key(status)


def _suspended_meanwhile(state: State, calls: list[Call], names: list[str]) -> list[str]:
    """Names whose latest recorded operation is a suspend that started after our calls."""
    mine = [state.operations[c.request_id] for c in calls if c.request_id in state.operations]
    if not mine:
        return []
    started = min(op.started for op in mine)
    latest = state.latest_by_node()
    # a resume that came after the suspend (it is on the watch list since then) wants it up
    return sorted(n for n in names if (op := latest.get(n)) is not None and op.action in SUSPEND_ACTIONS
                  and op.started > started and not ((w := state.watch.get(n)) and w.since > op.started))


def _api_reason(err: ApiError | None) -> str:
    if isinstance(err, ApiUnreachable):
        return "cluster API unreachable"
    return f"cluster API error: {err}"


