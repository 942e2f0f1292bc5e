"""`hpc-bridge scale NODEARRAY (--nodes N | --cores N) [--wait]`: the API's scale endpoint.

The endpoint adds nodes (its own naming, the nodearray's default bucket) until the nodearray
holds the given total; it never removes any. `--wait` then follows the operation's nodes
(GET nodes?operation=ID) until every one is Ready or has failed. `progress()` is pure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from hpc_bridge.api.models import Node, NodeCreationResult
from hpc_bridge.cloud import FAILED_STATUS, NOT_COMING_UP, READY
from hpc_bridge.errors import UsageError

log = logging.getLogger("hpc_bridge.scale")


@dataclass
class Progress:
    total: int
    counts: dict[str, int] = field(default_factory=dict)  # Status -> nodes
    ready: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> StatusMessage
    waiting: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not self.waiting

    @property
    def ok(self) -> bool:
        return self.done and not self.failed

    def line(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{len(self.ready)}/{self.total} Ready" + (f" ({parts})" if parts else "")

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "counts": self.counts, "ready": self.ready, "failed": self.failed,
                "waiting": self.waiting, "done": self.done}


def progress(nodes: Sequence[Node]) -> Progress:
    """Where an operation's nodes are: Ready, failed (Failed, or gone before Ready), or still on
    their way (Acquiring, Preparing, ...)."""
    p = Progress(total=len(nodes))
    for n in sorted(nodes, key=lambda n: n.name or ""):
        status = n.status or "Unknown"
        p.counts[status] = p.counts.get(status, 0) + 1
        name = n.name or n.node_id or "?"
        if status == READY:
            p.ready.append(name)
        elif status == FAILED_STATUS or status in NOT_COMING_UP:
            p.failed[name] = n.status_message or status
        else:
            p.waiting.append(name)
    return p


def check_target(nodes: int | None, cores: int | None) -> None:
    if (nodes is None) == (cores is None):
        raise UsageError("give exactly one of --nodes N and --cores N")
    value = nodes if nodes is not None else cores
    if value < 0:
        raise UsageError("--nodes/--cores must be >= 0 (a total for the nodearray, not an increment)")


def run_scale(client, nodearray: str, *, nodes: int | None = None, cores: int | None = None) -> NodeCreationResult:
    check_target(nodes, cores)
    return client.scale(nodearray, total_core_count=cores, total_node_count=nodes)


def added(result: NodeCreationResult) -> int:
    return sum(s.added for s in result.sets)


def wait_for_operation(
    client,
    operation_id: str,
    *,
    timeout: float = 1800.0,
    poll: float = 5.0,
    on_progress: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Progress, list[Node]]:
    """Poll GET nodes?operation=ID until every node is Ready or failed, or `timeout` passes.
    Calls on_progress whenever the summary line changes. Returns the last progress and nodes."""
    deadline = clock() + timeout
    last_line = None
    while True:
        nodes = client.get_nodes(operation=operation_id).nodes
        p = progress(nodes)
        if on_progress and p.line() != last_line:
            on_progress(p)
            last_line = p.line()
        if p.done or clock() >= deadline:
            return p, nodes
        sleep(max(0.0, min(poll, deadline - clock())))


@dataclass
class ScaleRequest:
    """What one scale call asked for and got."""

    nodearray: str
    target: str  # "4 nodes" / "8 cores"
    result: NodeCreationResult
    warning: str | None = None  # the nodearray is managed by hpc-bridge

    @property
    def messages(self) -> list[str]:
        return [s.message for s in self.result.sets if s.message]

    def to_json(self) -> dict[str, Any]:
        return {"operationId": self.result.operation_id, "added": added(self.result), "messages": self.messages}


def request_scale(cfg, client, nodearray: str, *, nodes: int | None = None, cores: int | None = None) -> ScaleRequest:
    """One scale call, logged; warns (in the log and the result) when hpc-bridge manages the
    nodearray, whose Slurm nodes the endpoint's own names are not."""
    target = f"{nodes} nodes" if nodes is not None else f"{cores} cores"
    log.info("scale %s to %s requested", nodearray, target)
    req = ScaleRequest(nodearray, target, run_scale(client, nodearray, nodes=nodes, cores=cores))
    log.info("scale %s to %s: added %d node(s), operation %s%s", nodearray, target, added(req.result),
             req.result.operation_id, "".join(f"; {m}" for m in req.messages))
    if cfg.partitions.is_managed(nodearray):
        req.warning = (f"nodearray {nodearray} is managed by hpc-bridge: the scale endpoint names its nodes "
                       f"its own way, which Slurm does not know, and repair terminates them after [repair] grace "
                       f"({cfg.repair.grace:g}s); to bring Slurm nodes up use scontrol update NodeName=... "
                       "State=POWER_UP")
        log.warning("%s", req.warning)
    return req
