"""The follower's decisions, pure over plain data: what one round does with the watched nodes
as the API reports them (plan_round), which GET nodes asks for them (nodes_query), which names
Slurm suspended meanwhile, and how long to wait before the next round."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from hpc_bridge.api.models import Node
from hpc_bridge.cloud import BOOTING, DEALLOCATED, FAILED_STATUS, GONE, READY, address_of, address_problem
from hpc_bridge.state_records import SUSPEND_ACTIONS, State, Watch

BACKOFF = 1.5  # interval growth per round without change (and per failed round)


@dataclass
class RoundPlan:
    addresses: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (NodeAddr, NodeHostName)
    ready: set[str] = field(default_factory=set)  # done: Ready, address set or none needed
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason
    terminate: dict[str, str] = field(default_factory=dict)  # failed name -> node id
    problems: dict[str, str] = field(default_factory=dict)  # Ready with an address we refuse: to repair
    gone: list[str] = field(default_factory=list)  # deferred names whose old record is gone or deallocated: bring up now

    @property
    def done(self) -> set[str]:
        """Names that leave the watch list after this round (`gone` ones are re-watched by the
        resume that creates them)."""
        return self.ready | set(self.failed) | set(self.problems)


def plan_round(watch: dict[str, Watch], cloud: dict[str, Node], mode: str,
               told: Mapping[str, tuple[str, str]] = {}) -> RoundPlan:
    """`told`: the address each watched node has from us in Slurm already (not set again)."""
    plan = RoundPlan()
    for name in sorted(watch):
        node = cloud.get(name)
        if watch[name].recreate:
            if node is None or node.status in GONE or node.status == DEALLOCATED:
                plan.gone.append(name)  # resume's code creates it, or starts the deallocated VM
                continue
            if node.status not in BOOTING and node.status not in (READY, FAILED_STATUS):
                continue  # its old record is still going
            # else a create in flight when resume read the cloud made it: followed as it is
        if node is None or node.status in GONE:
            continue  # not visible yet, or something else is handling it (repair)
        if node.status == FAILED_STATUS:
            plan.failed[name] = f"cloud node failed: {node.status_message or 'no message'}"
            if node.node_id:
                plan.terminate[name] = node.node_id
        elif node.status == READY or node.status in BOOTING:
            addr = address_of(node, mode)
            if addr is None and (problem := address_problem(node, mode)):
                plan.problems[name] = problem  # it will not get better by asking again
                continue
            if addr is not None and told.get(name) != addr:
                plan.addresses[name] = addr
            if node.status == READY and (addr or mode not in ("ip", "hostname")):
                plan.ready.add(name)
    return plan


def nodes_query(state: State, names, now: float) -> dict[str, str]:
    """GET nodes parameters for watching `names`: the one open operation all of them belong to
    (its operation id, else its request id: both are documented filters), or the full list."""
    if any(state.watch[n].recreate for n in names if n in state.watch):
        return {}
    in_flight = state.resume_in_flight(now)
    ops = {id(op): op for n in names if (op := in_flight.get(n)) is not None}
    if len(ops) != 1 or any(n not in in_flight for n in names):
        return {}
    op = next(iter(ops.values()))
    return {"operation": op.operation_id} if op.operation_id else {"request_id": op.request_id}


def suspended_since_watched(state: State, names) -> list[str]:
    """Watched names whose latest recorded operation is a suspend that started after they were
    put on the list: Slurm no longer wants them up."""
    latest = state.latest_by_node()
    return sorted(n for n in names if (op := latest.get(n)) is not None and op.action in SUSPEND_ACTIONS
                  and op.started >= state.watch[n].since)


def still_deferred(state: State, names, now: float) -> tuple[list[str], float | None]:
    """Of the deferred `names`, those Slurm still waits for (on the list to be re-created, before
    their deadline, not suspended since) that share the earliest deadline, with it (None: none
    left); the others are created in a later round. The deadline stays the one of the resume
    that deferred them: Slurm's ResumeTimeout runs from that power-up, and a create recorded
    with a later one (or a watch raised to it) would keep repair off a VM Slurm has given up on."""
    listed = [n for n in names if (w := state.watch.get(n)) is not None and w.recreate and now < w.deadline]
    stopped = set(suspended_since_watched(state, listed))
    wanted = [n for n in listed if n not in stopped]
    if not wanted:
        return [], None
    deadline = min(state.watch[n].deadline for n in wanted)
    return [n for n in wanted if state.watch[n].deadline == deadline], deadline


def next_interval(current: float, changed: bool, failed: bool, poll_interval: float, poll_max: float) -> float:
    if failed or not changed:
        return min(max(current, poll_interval) * BACKOFF, poll_max)
    return poll_interval
