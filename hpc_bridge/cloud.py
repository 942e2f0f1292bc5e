"""What a cloud node record means to hpc-bridge: its Status in groups, its address for Slurm,
its age, and the key of its VM size. Pure: planners, the follower and the views share it.

The reference leaves `Node` as "object"; the Status values are those real node records carry
(Off, Acquiring, Preparing, Ready, Deallocated, Terminated, Failed, and the transitional ones
on the way to those). One grouping serves every reader, so that a status no reader expected
is treated the same way everywhere.
"""

from __future__ import annotations

import re
from typing import Iterable

from hpc_bridge.api.models import Node

# On its way up: a VM is being acquired or is booting.
BOOTING = frozenset({"Acquiring", "Preparing", "Allocation", "Validation", "Starting"})
READY = "Ready"
# On its way down: gone, or Deallocated, once the call finishes.
TRANSITIONAL_DOWN = frozenset({"Terminating", "Deallocating", "Stopping", "Removing"})
# No VM: a create makes one again.
GONE = frozenset({"Terminated", "Off"})
# A VM kept deallocated: a start by its node id brings the same node back.
DEALLOCATED = "Deallocated"
FAILED_STATUS = "Failed"

# A VM that exists and bills, or soon will.
RUNNING = BOOTING | {READY}
# Will not become Ready unless someone creates or starts it again.
NOT_COMING_UP = GONE | TRANSITIONAL_DOWN | {DEALLOCATED}


def bucket_key(nodearray: str, machine_type: str) -> str:
    """How a VM size of a nodearray is named in the state file's cool-offs and in reasons."""
    return f"{nodearray}/{machine_type}"


def index_by_name(nodes: Iterable[Node]) -> dict[str, Node]:
    """Cloud nodes by name; where a name has several records, the live one wins over a gone one."""
    found: dict[str, Node] = {}
    for node in nodes:
        if not node.name:
            continue
        prev = found.get(node.name)
        if prev is None or (prev.status in GONE and node.status not in GONE):
            found[node.name] = node
    return found


def seconds_since_change(node: Node, now: float) -> float | None:
    """Seconds since the node's last status change (StatusTime), else since it was created
    (CreateTime); None when the API gives neither."""
    times = [t for t in (node.epoch("StatusTime"), node.epoch("CreateTime")) if t is not None]
    if not times:
        return None
    return now - max(times)


def seconds_since_created(node: Node, now: float) -> float | None:
    """Seconds since the cloud node was created (CreateTime, never negative), when the record says."""
    created = node.epoch("CreateTime")
    return None if created is None else max(0.0, now - created)


_ADDRESS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_-]{0,252}$")


def _address_pair(node: Node, mode: str) -> tuple[str, str] | None:
    # A booting VM's address counts as soon as the API reports one: Slurm must have it before the
    # VM's slurmd registers, or slurmctld launches the job to the node's name, which does not
    # resolve (~10 s of retries, then the launch fails and the job is requeued elsewhere).
    if node.status not in RUNNING:
        return None
    if mode == "ip" and node.private_ip:
        return node.private_ip, node.hostname or node.private_ip
    if mode == "hostname" and node.hostname:
        return node.hostname, node.hostname
    return None


def address_problem(node: Node, mode: str) -> str | None:
    """Why the cloud's address for a Ready or booting node cannot be given to scontrol, or None."""
    pair = _address_pair(node, mode)
    bad = [v for v in pair or () if not _ADDRESS_RE.match(v)]
    if not bad:
        return None
    return f"invalid address from the cluster API for {node.name}: {bad[0]!r} (not set in Slurm)"


def address_of(node: Node, mode: str) -> tuple[str, str] | None:
    """(NodeAddr, NodeHostName) that Slurm should use for a cloud node, or None if not known yet
    or not safe to pass to scontrol (see address_problem). A bad value is dropped for this node
    only, so one hostile record cannot block the addresses of all the others."""
    pair = _address_pair(node, mode)
    if pair is None or address_problem(node, mode):
        return None
    return pair
