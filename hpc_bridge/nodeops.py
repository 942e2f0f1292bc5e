"""What the hooks, the follower and repair share: reading the cloud's nodes, recording an API
call in the state file before making it, and telling Slurm a node is down and why."""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

from hpc_bridge.api.client import ClusterClient, new_request_id
from hpc_bridge.api.models import Node, NodeCreationResult, NodeManagementResult
from hpc_bridge.errors import ApiError
from hpc_bridge.log import log_per_message
from hpc_bridge.state import FAILED, PENDING, Operation, StateStore

log = logging.getLogger("hpc_bridge.nodeops")

# Every Slurm Reason we set starts with this, so that repair can tell our reasons from an admin's.
REASON_PREFIX = "hpc-bridge: "

# Cloud Status values, as the hooks and repair group them.
BOOTING = frozenset({"Acquiring", "Preparing", "Allocation", "Validation", "Starting"})
READY = "Ready"
TRANSITIONAL_DOWN = frozenset({"Terminating", "Deallocating", "Stopping", "Removing"})
GONE = frozenset({"Terminated", "Off"})
DEALLOCATED = "Deallocated"
FAILED_STATUS = "Failed"


def bucket_key(nodearray: str, machine_type: str) -> str:
    """How a VM size of a nodearray is named in the state file's cool-offs and in reasons."""
    return f"{nodearray}/{machine_type}"


def reason(text: str) -> str:
    """A Slurm Reason of ours: prefixed, one line, no characters scontrol would choke on."""
    clean = " ".join(str(text).replace("=", ":").split())[:200]
    return clean if clean.startswith(REASON_PREFIX) else REASON_PREFIX + clean


def is_our_reason(text: str | None) -> bool:
    return bool(text) and text.startswith(REASON_PREFIX.strip())


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


_ADDRESS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_-]{0,252}$")


def _address_pair(node: Node, mode: str) -> tuple[str, str] | None:
    if node.status != READY:
        return None
    if mode == "ip" and node.private_ip:
        return node.private_ip, node.hostname or node.private_ip
    if mode == "hostname" and node.hostname:
        return node.hostname, node.hostname
    return None


def address_problem(node: Node, mode: str) -> str | None:
    """Why the cloud's address for a Ready node cannot be given to scontrol, or None."""
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


def remember_down(state, reasons: Mapping[str, str], now: float) -> None:
    """Remember why we mark nodes DOWN (in an open transaction): Slurm overwrites the reason with
    "ResumeTimeout reached" later, and resume-fail puts the real cause back."""
    state.remember_down({n: reason(r) for n, r in reasons.items()}, now)


def mark_down(slurm, reasons: Mapping[str, str], store: StateStore | None = None) -> int:
    """Slurm DOWN with a reason: one scontrol call per distinct reason. Returns calls made.
    With a store, the reasons are remembered first (see remember_down). The log gets each
    reason in full: the one Slurm keeps is cut to fit."""
    if store is not None and reasons:
        with store.transaction() as state:
            remember_down(state, reasons, time.time())
    log_per_message(log, logging.INFO, reasons, "slurm DOWN %s: %s")
    by_reason: dict[str, list[str]] = defaultdict(list)
    for name, why in reasons.items():
        by_reason[reason(why)].append(name)
    calls = 0
    for why, names in sorted(by_reason.items()):
        calls += slurm.update_nodes(sorted(names), state="DOWN", reason=why)
    return calls


# --------------------------------------------------------------------------- recorded calls


class Call:
    """One mutating API call, recorded in the state file before it is sent."""

    def __init__(self, action: str, nodes: list[str], request: dict[str, Any], deadline: float,
                 request_id: str | None = None):
        self.action = action
        self.nodes = nodes
        self.request = request  # create: {"sets": [...]}; management: {"ids": [...]} etc.
        self.deadline = deadline
        self.request_id = request_id or new_request_id()
        self.result: NodeCreationResult | NodeManagementResult | None = None
        self.error: ApiError | None = None


def send(client: ClusterClient, call: Call, resend: bool = False):
    if call.action == "create":
        return client.create_nodes(call.request["sets"], request_id=call.request_id, resend=resend)
    return client.manage_nodes(call.action, request_id=call.request_id, resend=resend, **call.request)


def record_and_send(store: StateStore, client: ClusterClient, calls: list[Call],
                    now: Callable[[], float] = time.time) -> list[Call]:
    """Record every call (one lock), send them in order, record the outcomes (one lock).

    An unreachable API leaves the record PENDING: the call may have reached the server, and
    the next run or repair re-sends it with the same requestId. Any other API error is final.
    """
    calls = [c for c in calls if c.nodes]
    if not calls:
        return calls
    with store.transaction() as state:
        record(state, calls, now())
    return send_recorded(store, client, calls, now)


def record(state, calls: list[Call], now: float) -> None:
    """Record calls in an open transaction (resume does it in the same transaction as its plan,
    so that a concurrent hook sees the claim before it can plan the same names)."""
    for c in calls:
        if c.nodes:
            state.begin(c.action, c.nodes, c.request_id, now, c.deadline, request=c.request)


def send_recorded(store: StateStore, client: ClusterClient, calls: list[Call],
                  now: Callable[[], float] = time.time) -> list[Call]:
    """Send calls already recorded, in order, then record their outcomes (one lock)."""
    calls = [c for c in calls if c.nodes]
    for c in calls:
        try:
            c.result = send(client, c)
        except ApiError as err:
            c.error = err
            log.error("%s of %d node(s) failed: %s", c.action, len(c.nodes), err)
    with store.transaction() as state:
        t = now()
        for c in calls:
            op = state.operations.get(c.request_id)
            if op is None:
                continue
            settle(op, c, t)
    return calls


def settle(op: Operation, call: Call, now: float) -> None:
    from hpc_bridge.errors import ApiUnreachable

    if call.result is not None:
        op.accept(call.result.operation_id, "recovered after 409" if getattr(call.result, "recovered", False) else None)
    elif isinstance(call.error, ApiUnreachable):
        op.outcome = PENDING
        op.message = str(call.error)
    elif call.error is not None:
        op.close(FAILED, now, str(call.error))
