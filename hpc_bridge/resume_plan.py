"""The resume planner: which named nodes are created, started, left to come up, or go DOWN and
why. Pure: a function of (names, node map, cloud nodes, buckets, in-flight operations,
cool-offs, jobs, config, clock); `hpc_bridge.resume` gathers those and applies the plan.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from hpc_bridge.api.models import Bucket, ClusterStatus, Node
from hpc_bridge.cloud import (
    BOOTING,
    DEALLOCATED,
    FAILED_STATUS,
    GONE,
    READY,
    TRANSITIONAL_DOWN,
    address_of,
    address_problem,
    bucket_key,
)
from hpc_bridge.config import Config
from hpc_bridge.nodemap import NodeMap, NodeMapEntry
from hpc_bridge.reasons import KEPT_RUNNING, STOP_FAILED, hold_reason
from hpc_bridge.resume_file import Job
from hpc_bridge.state_records import Cooloff, Operation


def buckets_by_key(status: ClusterStatus) -> dict[str, Bucket]:
    return {bucket_key(na.name, b.machine_type): b for na in status.nodearrays for b in na.buckets}


@dataclass
class ResumePlan:
    create: list[tuple[str, NodeMapEntry]] = field(default_factory=list)
    start: dict[str, str] = field(default_factory=dict)  # name -> node id
    terminate: dict[str, str] = field(default_factory=dict)  # failed records to clear: name -> node id
    running: dict[str, str] = field(default_factory=dict)  # name -> cloud status (nothing to do)
    waiting: dict[str, str] = field(default_factory=dict)  # name -> why it is left to follower/repair
    deferred: list[str] = field(default_factory=list)  # to create once their old cloud node is gone
    down: dict[str, str] = field(default_factory=dict)  # name -> reason
    # VMs Ready with a slurmd from before this power-up, which Slurm would wait ResumeTimeout for:
    # the power-up is ended at once (POWER_DOWN_FORCE). name -> reason
    power_down: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # not in nodemap.json: not ours, left as they are
    addresses: dict[str, tuple[str, str]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # name -> what the API sent that we refused
    cooloff_started: dict[str, str] = field(default_factory=dict)  # bucket key -> why

    def to_watch(self) -> list[str]:
        """What the follower watches: what is brought up or waited for, and what is up already
        unless it is Ready with its address set now (a booting one may still fail)."""
        return sorted({n for n, _ in self.create} | set(self.start) | set(self.waiting)
                      | {n for n, status in self.running.items() if status != READY or n not in self.addresses})

    def create_sets(self) -> list[dict]:
        """NodeCreationSets as sent: one per name (a literal nameFormat with count 1 gives exactly
        that name), ordered so that sets of one nodearray, VM size and placement group are together.
        Plain wire dicts: the client validates the whole request in one pass, where a model per
        set cost a 1,000-node resume three pydantic round trips per name."""
        ordered = sorted(self.create, key=lambda ne: (ne[1].nodearray, ne[1].machine_type,
                                                      ne[1].placement_group or "", ne[0]))
        return [_creation_set(name, e) for name, e in ordered]


def _creation_set(name: str, entry: NodeMapEntry) -> dict:
    wire = {"count": 1, "nodearray": entry.nodearray, "definition": {"machineType": entry.machine_type},
            "nameFormat": name}
    if entry.placement_group is not None:
        wire["placementGroupId"] = entry.placement_group
    return wire


def cooloff_reason(key: str, buckets: dict[str, Bucket], cooloffs: dict[str, Cooloff], cooloff_seconds: float,
                   now: float) -> str | None:
    """Why a bucket is out of service for a capacity cool-off, or None."""
    active = cooloffs.get(key)
    if active and active.held:
        return hold_reason(key, active.reason)
    if active and active.active(now):
        return f"capacity cool-off for {key} until {time.strftime('%H:%M:%S', time.localtime(active.until))} ({active.reason})"
    bucket = buckets.get(key)
    if bucket is not None and bucket.capacity_failure_within(cooloff_seconds):
        return f"capacity cool-off for {key}: capacity failure {bucket.last_capacity_failure:.0f}s ago"
    return None


@dataclass
class Refusals:
    """What became of the names a create call did not add (see classify_refusals)."""

    down: dict[str, str] = field(default_factory=dict)  # name -> reason
    capacity: dict[str, str] = field(default_factory=dict)  # bucket key -> cause of its cool-off
    running: list[str] = field(default_factory=list)  # created meanwhile by someone else: not DOWN


def classify_refusals(refused: dict[str, str | None], nodemap: NodeMap, cloud: dict[str, Node] | None,
                      buckets: dict[str, Bucket] | None, cooloff_seconds: float) -> Refusals:
    """Why each name a create did not add (name -> the API's message, if any) cannot come up,
    decided on documented data from the status read just after the create, never on the
    message's wording: the bucket now reports a capacity failure (`lastCapacityFailure`) -> a
    capacity failure and a cool-off; no room left (`availableCount`) -> quota or max count;
    the name is live in the cloud -> someone else created it. The message is only shown.
    `cloud` / `buckets`: None when that status could not be read."""
    out = Refusals()
    for name, message in refused.items():
        entry = nodemap[name]
        key = bucket_key(entry.nodearray, entry.machine_type)
        node = (cloud or {}).get(name)
        bucket = (buckets or {}).get(key)
        said = f" ({message})" if message else ""
        if node is not None and (node.status in BOOTING or node.status == READY):
            out.running.append(name)
        elif bucket is not None and bucket.capacity_failure_within(cooloff_seconds):
            out.capacity[key] = message or f"the API reports a capacity failure for {key}"
            out.down[name] = f"create refused: capacity failure for {key}{said}"
        elif bucket is not None and bucket.available_count < 1:
            out.down[name] = f"create refused: {key}: no capacity left (quota or max count reached){said}"
        else:
            out.down[name] = f"create refused: {message or 'not created (no reason given)'}"
    return out


def plan_resume(
    names: list[str],
    nodemap: NodeMap,
    cloud: dict[str, Node],
    buckets: dict[str, Bucket],
    in_flight: dict[str, Operation],
    cooloffs: dict[str, Cooloff],
    jobs: list[Job],
    cfg: Config,
    now: float,
    unseen: set[str] = frozenset(),
    stop_unfinished: set[str] = frozenset(),
) -> ResumePlan:
    """`unseen`: names a create/start may have brought up since `cloud` was read (see
    State.brought_up_since); one that looks gone is not created now but left to the follower,
    which creates it once a fresh read shows it gone. `stop_unfinished`: names whose latest
    operation is a stop that failed or is open (State.stop_unfinished); one whose VM is Ready
    runs a slurmd from before this power-up."""
    plan = ResumePlan()
    wanted, starts = _sort_by_cloud_status(plan, names, nodemap, cloud, in_flight, unseen, stop_unfinished,
                                           cfg.slurm.address_mode)
    refused = _blocked(wanted, buckets, cooloffs, cfg.resume.capacity_cooloff, now)
    granted = _grant_capacity(wanted, starts, buckets, jobs, cfg, refused)
    plan.create = [(n, e) for n, e in wanted.items() if n in granted]
    plan.start = {n: nid for n, nid in starts.items() if n not in refused}
    plan.down.update(refused)
    return plan


def _sort_by_cloud_status(plan: ResumePlan, names: list[str], nodemap: NodeMap, cloud: dict[str, Node],
                          in_flight: dict[str, Operation], unseen: set[str], stop_unfinished: set[str], mode: str
                          ) -> tuple[dict[str, NodeMapEntry], dict[str, str]]:
    """Each name by what the cloud has for it: what is up, waited for, failed or not ours goes
    into `plan`; returns the names to create (subject to capacity) and those to start (name ->
    node id)."""
    wanted: dict[str, NodeMapEntry] = {}
    starts: dict[str, str] = {}
    for name in dict.fromkeys(names):
        entry = nodemap.get(name)
        if entry is None:  # a site's own node (or a stale name): not ours to change
            plan.unknown.append(name)
            continue
        op = in_flight.get(name)
        if op is not None:
            plan.waiting[name] = f"already being brought up by {op.action} {op.request_id}"
            continue
        node = cloud.get(name)
        status = node.status if node else None
        if (node is None or status in GONE) and name in unseen:
            plan.waiting[name] = "a create/start was in flight when the cloud was read; created once it is gone"
            plan.deferred.append(name)
        elif node is None or status in GONE:
            wanted[name] = entry
        elif status == READY and node.keep_alive:
            # its slurmd has run since before this power-up: Slurm would wait ResumeTimeout for it
            plan.down[name] = plan.power_down[name] = KEPT_RUNNING
        elif status == READY and name in stop_unfinished:
            # our stop of it failed: its slurmd too has run since before this power-up. Ended, not
            # DOWN: Slurm's suspend then stops the VM and the node is idle~ again.
            plan.power_down[name] = STOP_FAILED
        elif status in BOOTING or status == READY:
            plan.running[name] = status
            addr = address_of(node, mode)
            if addr:
                plan.addresses[name] = addr
            elif problem := address_problem(node, mode):
                plan.problems[name] = problem
        elif status == DEALLOCATED:
            starts[name] = node.node_id or ""
        elif status == FAILED_STATUS:
            plan.down[name] = f"cloud node failed: {node.status_message or 'no message'}"
            if node.node_id:
                plan.terminate[name] = node.node_id
        elif status in TRANSITIONAL_DOWN:
            plan.waiting[name] = f"cloud node is {status}; created again once it is gone"
            plan.deferred.append(name)
        else:
            plan.waiting[name] = f"cloud node in unexpected status {status}"
    return wanted, starts


def _blocked(wanted: dict[str, NodeMapEntry], buckets: dict[str, Bucket], cooloffs: dict[str, Cooloff],
             cooloff_seconds: float, now: float) -> dict[str, str]:
    """The names whose VM size may not be created at all now (gone, invalid, cooling off): name
    -> reason. They go DOWN now, so that Slurm reschedules at once."""
    blocked: dict[str, str] = {}
    for name, entry in wanted.items():
        key = bucket_key(entry.nodearray, entry.machine_type)
        bucket = buckets.get(key)
        if bucket is None:
            blocked[name] = f"VM size {entry.machine_type} is no longer offered by nodearray {entry.nodearray}"
        elif not bucket.valid:
            blocked[name] = f"VM size {entry.machine_type} in {entry.nodearray} is invalid ({bucket.invalid_reason or 'no reason given'})"
        else:
            why = cooloff_reason(key, buckets, cooloffs, cooloff_seconds, now)
            if why:
                blocked[name] = why
    return blocked


class _Room:
    """What each bucket may still create (`availableCount`), spent as names are granted."""

    def __init__(self, buckets: dict[str, Bucket], wanted: dict[str, NodeMapEntry]):
        self.available = {key: b.available_count for key, b in buckets.items()}
        self.wanted = wanted

    def need_of(self, group: list[str]) -> dict[str, int]:
        need: dict[str, int] = defaultdict(int)
        for n in group:
            e = self.wanted[n]
            need[bucket_key(e.nodearray, e.machine_type)] += 1
        return need

    def shortfall(self, need: dict[str, int]) -> str | None:
        for key, count in sorted(need.items()):
            have = self.available.get(key, 0)
            if count > have:
                return f"{key}: {count} node(s) needed, {max(have, 0)} available (quota or max count)"
        return None

    def spend(self, need: dict[str, int]) -> None:
        for key, count in need.items():
            self.available[key] -= count


def _grant_capacity(wanted: dict[str, NodeMapEntry], starts: dict[str, str], buckets: dict[str, Bucket],
                    jobs: list[Job], cfg: Config, refused: dict[str, str]) -> set[str]:
    """The names that get a create: multi-node jobs first, all-or-nothing where their nodearray
    asks for it, then every other name on its own while its bucket has room. What is refused is
    added to `refused` (name -> reason)."""
    room = _Room(buckets, wanted)
    granted: set[str] = set()
    for job in jobs:
        members = [n for n in dict.fromkeys(job.nodes) if n in wanted or n in starts]
        todo = [n for n in members if n in wanted and n not in granted and n not in refused]
        entry = next((wanted[n] for n in todo), None)
        atomic = len(job.nodes) > 1 and entry is not None and cfg.partitions.for_array(entry.nodearray).all_or_nothing
        if not atomic:
            continue
        bad = next((refused[n] for n in members if n in refused), None) or room.shortfall(room.need_of(todo))
        if bad:
            for n in members:
                refused.setdefault(n, f"job {job.job_id} cannot get all its nodes: {bad}")
            continue
        room.spend(room.need_of(todo))
        granted.update(todo)

    for name, entry in wanted.items():
        if name in granted or name in refused:
            continue
        key = bucket_key(entry.nodearray, entry.machine_type)
        if room.available.get(key, 0) > 0:
            room.available[key] -= 1
            granted.add(name)
        else:
            refused[name] = f"{key}: no capacity left (quota or max count reached)"
    return granted
