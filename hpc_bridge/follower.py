"""The follower: one detached process per state directory, so that no hook ever waits for a VM.

Resume puts the nodes it brings up in the state file's watch list (under the state lock, with
their deadline) and starts a follower only when none holds the lease (`lease.py`). The follower
polls the API for the whole watch list, one GET nodes per round, and meanwhile:
- sets Slurm's NodeAddr/NodeHostName as soon as the API reports a node's address (while it
  boots, so before its slurmd can register; one scontrol call per round, once per address), so
  slurmctld never has to resolve a cloud node's name;
- marks nodes whose VM failed DOWN at once with the cloud's StatusMessage, and terminates them;
- creates nodes whose old cloud record was still terminating when resume ran;
- drops a node from the list once it is done, failed, suspended, or past its deadline, and
  exits when the list is empty.

The API load is bounded by the follower, not by the number of hooks: rounds are at least
`[resume] poll_interval` apart, and grow (x1.5, up to `poll_max`) while nothing changes and on
errors such as 429. When the watched nodes all belong to one open operation it asks for that
operation's nodes only (`GET nodes?operation=ID`), else for the full list. Between rounds it
looks at the state file (a stat, no lock) and polls sooner when a hook added nodes.

Everything it knows is in the state file: a killed follower is replaced by the next resume (or
by repair), which finds the list where it was. Repair remains the safety net. Its decisions
are follower_plan's, pure; this module gathers, applies and waits.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from hpc_bridge import hostlist
from hpc_bridge.api.models import Node
from hpc_bridge.errors import ApiError, SlurmError, StateError
from hpc_bridge.lease import HOST, is_mine, lease_held
from hpc_bridge.cloud import READY, index_by_name
from hpc_bridge.follower_plan import RoundPlan, next_interval, nodes_query, plan_round, suspended_since_watched
from hpc_bridge.journal import Call, Journal, close
from hpc_bridge.nodemap import NodeMap
from hpc_bridge.nodeops import mark_down
from hpc_bridge.resume import create_deferred
from hpc_bridge.state_records import DONE, RESUME_ACTIONS, Lease, State, Watch

if TYPE_CHECKING:
    from hpc_bridge.ports import CallJournal, Clock, ClusterApi, SlurmControl, StateStorage

log = logging.getLogger("hpc_bridge.follower")

WAKE_CHECK = 0.5  # seconds between looks at the state file while waiting


def detach_signals() -> None:
    """Hooks inherit slurmctld's blocked signal mask; clear it so SIGTERM stops us."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def close_finished(state: State, ready: set[str], cloud: dict[str, Node], now: float) -> int:
    """Close create/start records all of whose nodes are Ready (doctor measures boot times from
    them; repair then has nothing left to resolve): those touching a node done this round, with
    none of their nodes still watched."""
    closed = 0
    for op in state.open_operations():
        if (op.action in RESUME_ACTIONS and op.nodes and not ready.isdisjoint(op.nodes)
                and state.watch.keys().isdisjoint(op.nodes)
                and all((c := cloud.get(n)) is not None and c.status == READY for n in op.nodes)):
            op.ready = now
            closed += close(state, op.request_id, DONE, now, "all nodes Ready")
    return closed


# --------------------------------------------------------------------------- the loop


@dataclass
class FollowReport:
    addressed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    recreated: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    rounds: int = 0
    lost_lease: bool = False


def follow(cfg, *, client: ClusterApi, slurm: SlurmControl, store: StateStorage, nodemap: NodeMap,
           now: Clock = time.time, sleep: Callable[[float], None] = time.sleep, host: str = HOST,
           pid: int | None = None) -> FollowReport:
    pid = os.getpid() if pid is None else pid
    journal = Journal(store, client, now)
    report = FollowReport()
    mode = cfg.slurm.address_mode
    poll_interval, poll_max, stale_after = cfg.resume.poll_interval, cfg.resume.poll_max, cfg.resume.follower_lease
    interval = poll_interval
    previous: dict[str, str | None] | None = None
    told: dict[str, tuple[float, tuple[str, str]]] = {}  # name -> (its watch's since, address set)
    held = time.monotonic()  # when the lease was last renewed

    def back_off(err: Exception) -> float:
        nonlocal interval
        interval = next_interval(interval, False, True, poll_interval, poll_max)
        log.warning("follower: %s; trying again in %.0f s", err, interval)
        return interval

    while True:
        try:
            with store.transaction() as state:
                t = now()
                if not _hold_lease(state, t, stale_after, host, pid):
                    report.lost_lease = True
                    break
                expired = sorted(n for n, w in state.watch.items() if w.deadline <= t)
                stopped = suspended_since_watched(state, state.watch)
                state.drop_watch(expired + stopped)
                if not state.watch:
                    state.follower = None  # nothing left: let go, the next resume starts a new one
                    break
                watch = dict(state.watch)
                query = nodes_query(state, watch, t)
        except StateError as err:
            # the lock held past lock_timeout under load is not the end; once the lease may have
            # gone to another follower, a state file that stays unusable is
            if time.monotonic() - held > stale_after:
                raise
            sleep(back_off(err))
            continue
        held = time.monotonic()
        if expired:
            report.unresolved.extend(expired)
            log.warning("follower: deadline reached with %d node(s) not Ready: %s (repair takes over)",
                        len(expired), hostlist.compress(expired))
        if stopped:
            log.info("follower: %s suspended since; no longer watched", hostlist.compress(stopped))
        report.rounds += 1
        polled, read_at = time.monotonic(), now()
        try:
            cloud = index_by_name(client.get_nodes(**query).nodes)
        except ApiError as err:
            _wait(store, watch, polled + back_off(err), polled + poll_interval, sleep)
            continue
        # a resume that watches a node again (since changes) may follow a suspend that reset its address
        known = {n: addr for n, (since, addr) in told.items() if n in watch and watch[n].since == since}
        plan = plan_round(watch, cloud, mode, known)
        try:
            _apply(cfg, plan, watch, cloud, read_at, report, told, journal=journal, slurm=slurm, nodemap=nodemap)
        except (SlurmError, StateError) as err:
            # e.g. scontrol timed out while slurmctld was busy: what was not done is planned again
            _wait(store, watch, polled + back_off(err), polled + poll_interval, sleep)
            continue
        statuses = {n: (c.status if (c := cloud.get(n)) else None) for n in watch}
        interval = next_interval(interval, statuses != previous or bool(plan.done or plan.gone), False,
                                 poll_interval, poll_max)
        previous = statuses
        _wait(store, watch, polled + interval, polled + poll_interval, sleep)
    return report


def _hold_lease(state: State, now: float, stale_after: float, host: str, pid: int) -> bool:
    """Renew our lease, or take over one that is no longer held; False when another follower
    holds it (we then exit: two resumes racing to start one end with one)."""
    lease = state.follower
    if is_mine(lease, host, pid):
        lease.heartbeat = now
        return True
    if lease_held(lease, now, stale_after, host):
        log.info("follower: pid %d on %s holds the lease; exiting", lease.pid, lease.host)
        return False
    if lease is not None:
        log.info("follower: taking over from pid %d on %s (last heartbeat %.0f s ago)", lease.pid, lease.host,
                 now - lease.heartbeat)
    state.follower = Lease(host=host, pid=pid, heartbeat=now, since=now)
    return True


def _apply(cfg, plan: RoundPlan, watch: dict[str, Watch], cloud: dict[str, Node], read_at: float,
           report: FollowReport, told: dict[str, tuple[float, tuple[str, str]]], *, journal: CallJournal,
           slurm: SlurmControl, nodemap: NodeMap) -> None:
    """One round's changes: addresses, failed nodes DOWN and terminated, finished nodes off the
    list (and their records closed), deferred names created (on this round's read of the
    nodes, `cloud`, taken at `read_at`)."""
    if plan.addresses:
        slurm.set_addresses(plan.addresses)
        told.update({n: (watch[n].since, addr) for n, addr in plan.addresses.items()})
        report.addressed.extend(sorted(set(plan.addresses) - set(report.addressed)))
        log.info("follower: addresses set for %s", hostlist.compress(sorted(plan.addresses)))
    for problem in plan.problems.values():
        log.error("follower: %s; left to repair", problem)
    if plan.failed:
        mark_down(slurm, plan.failed, journal.store)
        ids = plan.terminate
        deadline = max(watch[n].deadline for n in plan.failed)
        journal.record_and_send([Call("terminate", sorted(ids), {"ids": [ids[n] for n in sorted(ids)]}, deadline)])
        report.failed.update(plan.failed)
    if plan.done:
        with journal.transaction() as state:
            state.drop_watch(plan.done)
            close_finished(state, plan.ready, cloud, journal.now())
    if plan.gone:
        # resume's code records the create and puts the names back on the list (or drops those
        # it marks DOWN), in its own transactions
        result = create_deferred(cfg, plan.gone, cloud, read_at, client=journal.client, slurm=slurm,
                                 store=journal.store, nodemap=nodemap, now=journal.now)
        report.recreated.extend(result.created)
        log.info("follower: old records gone, created %s", ",".join(result.created) or "nothing")


def _wait(store: StateStorage, watch: dict[str, Watch], until: float, earliest: float, sleep) -> None:
    """Sleep until `until` (monotonic), or from `earliest` on as soon as a hook has added a node
    to the watch list (seen by a stat of the state file, and a lock-free read when it changed)."""
    seen = _file_signature(store)
    while (left := until - time.monotonic()) > 0:
        sleep(min(WAKE_CHECK, left))
        signature = _file_signature(store)
        if signature == seen:
            continue
        seen = signature
        if not store.read().watch.keys() <= watch.keys():
            # new work: poll at the first moment the interval allows
            if (wait := earliest - time.monotonic()) > 0:
                sleep(wait)
            return


def _file_signature(store: StateStorage) -> tuple[int, int, int] | None:
    try:
        st = os.stat(store.path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
