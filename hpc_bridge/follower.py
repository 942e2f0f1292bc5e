"""The follower: a detached process that resume starts so the hook itself never waits.

It polls GET nodes (one call per round) until every watched node is Ready or failed, or the
resume deadline passes, and meanwhile:
- sets Slurm's NodeAddr/NodeHostName for nodes that became Ready (one scontrol call per round),
  so slurmctld never has to resolve a cloud node's name;
- marks nodes whose VM failed DOWN at once with the cloud's StatusMessage, and terminates them;
- creates nodes whose old cloud record was still terminating when resume ran.
Repair is the safety net for anything it misses (it may be killed; it holds no state of its own).
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field

from hpc_bridge import hostlist
from hpc_bridge.errors import ApiError
from hpc_bridge.nodeops import (
    FAILED_STATUS,
    GONE,
    READY,
    Call,
    address_of,
    address_problem,
    index_by_name,
    mark_down,
    record_and_send,
)

log = logging.getLogger("hpc_bridge.follower")


def detach_signals() -> None:
    """Hooks inherit slurmctld's blocked signal mask; clear it so SIGTERM stops us."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@dataclass
class FollowReport:
    addressed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    recreated: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    rounds: int = 0


def follow(cfg, names: list[str], deadline: float, *, client, slurm, store, nodemap, recreate: list[str] = (),
           poll: float = 1.0, now=time.time, sleep=time.sleep, resume_fn=None) -> FollowReport:
    report = FollowReport()
    ready: set[str] = set()
    pending = set(names)
    deferred = set(recreate)
    mode = cfg.slurm.address_mode
    while pending and now() < deadline:
        report.rounds += 1
        try:
            cloud = index_by_name(client.get_nodes().nodes)
        except ApiError as err:
            log.warning("follower: %s; trying again", err)
            sleep(poll)
            continue
        addresses: dict[str, tuple[str, str]] = {}
        failed: dict[str, str] = {}
        gone: list[str] = []
        for name in sorted(pending):
            node = cloud.get(name)
            if name in deferred:
                if node is None or node.status in GONE:
                    gone.append(name)
                continue
            if node is None or node.status in GONE:
                continue  # not visible yet, or something else is handling it (repair)
            if node.status == FAILED_STATUS:
                failed[name] = f"cloud node failed: {node.status_message or 'no message'}"
            elif node.status == READY:
                addr = address_of(node, mode)
                if addr is None and (problem := address_problem(node, mode)):
                    log.error("follower: %s; left to repair", problem)
                    pending.discard(name)  # it will not get better by asking again
                    continue
                if addr or mode not in ("ip", "hostname"):
                    if addr:
                        addresses[name] = addr
                    pending.discard(name)
                    ready.add(name)
        if addresses:
            slurm.set_addresses(addresses)
            report.addressed.extend(sorted(addresses))
            log.info("follower: addresses set for %s", hostlist.compress(sorted(addresses)))
        if failed:
            mark_down(slurm, failed, store)
            ids = {n: cloud[n].node_id for n in failed if cloud[n].node_id}
            record_and_send(store, client, [Call("terminate", sorted(ids), {"ids": [ids[n] for n in sorted(ids)]},
                                                 deadline)], now)
            report.failed.update(failed)
            pending.difference_update(failed)
        if gone and resume_fn is not None:
            deferred.difference_update(gone)
            result = resume_fn(gone)
            report.recreated.extend(result.created)
            pending.difference_update(result.down)
            log.info("follower: old records gone, created %s", ",".join(result.created) or "nothing")
        if pending:
            sleep(poll)
    if ready:
        close_finished(store, ready, now())
    report.unresolved = sorted(pending)
    if pending:
        log.warning("follower: deadline reached with %d node(s) not Ready: %s (repair takes over)",
                    len(pending), hostlist.compress(sorted(pending)))
    return report


def close_finished(store, ready: set[str], now: float) -> int:
    """Close create/start records all of whose nodes reached Ready (doctor measures boot times
    from them; repair then has nothing left to resolve)."""
    from hpc_bridge.state import DONE, RESUME_ACTIONS

    closed = 0
    with store.transaction() as state:
        for op in state.open_operations():
            if op.action in RESUME_ACTIONS and op.nodes and set(op.nodes) <= ready:
                op.close(DONE, now, "all nodes Ready")
                closed += 1
    return closed
