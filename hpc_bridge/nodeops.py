"""What the hooks, the follower and repair share: reading the cloud's nodes, recording an API
call in the state file before making it, and telling Slurm a node is down and why."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Callable, Mapping

from hpc_bridge.api.client import ClusterClient, new_request_id
from hpc_bridge.api.models import NodeCreationResult, NodeManagementResult
from hpc_bridge.cloud import bucket_key
from hpc_bridge.errors import ApiError, SlurmError, StateError, UsageError
from hpc_bridge.log import log_per_message, node_names
from hpc_bridge.reasons import hold_reason, reason
from hpc_bridge.state import FAILED, PENDING, Cooloff, Operation, StateStore

log = logging.getLogger("hpc_bridge.nodeops")


def remember_down(state, reasons: Mapping[str, str], now: float) -> None:
    """Remember why we mark nodes DOWN (in an open transaction): Slurm overwrites the reason with
    "ResumeTimeout reached" later, and resume-fail puts the real cause back."""
    state.remember_down({n: reason(r) for n, r in reasons.items()}, now)


def mark_down(slurm, reasons: Mapping[str, str], store: StateStore | None = None) -> int:
    """Slurm DOWN with a reason: one scontrol call per distinct reason. Returns calls made.
    With a store, the reasons are remembered first (see remember_down; a state file that cannot
    be written does not stop the marking). The log gets each reason in full: the one Slurm keeps
    is cut to fit. Each reason's call is made whatever happened to the others (one name Slurm
    does not know fails only its own group); SlurmError at the end names what failed."""
    if store is not None and reasons:
        try:
            with store.transaction() as state:
                remember_down(state, reasons, time.time())
        except StateError as err:
            log.error("DOWN reasons not remembered for resume-fail: %s", err)
    log_per_message(log, logging.INFO, reasons, "slurm DOWN %s: %s")
    by_reason: dict[str, list[str]] = defaultdict(list)
    for name, why in reasons.items():
        by_reason[reason(why)].append(name)
    calls = 0
    failures: list[tuple[list[str], SlurmError]] = []
    for why, names in sorted(by_reason.items()):
        try:
            calls += slurm.update_nodes(sorted(names), state="DOWN", reason=why)
        except SlurmError as err:
            calls += 1
            log.error("%s: could not be marked DOWN: %s", node_names(names), err)
            failures.append((names, err))
    if failures:
        count = sum(len(names) for names, _ in failures)
        raise SlurmError(f"{count} node(s) could not be marked DOWN ({len(failures)} of {len(by_reason)} "
                         f"scontrol call(s) failed; first: {failures[0][1]})")
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
                    now: Callable[[], float] = time.time) -> StateError | None:
    """Record every call (one lock), send them in order, record the outcomes (one lock).

    An unreachable API leaves the record PENDING: the call may have reached the server, and
    the next run or repair re-sends it with the same requestId. Any other API error is final.
    """
    calls = [c for c in calls if c.nodes]
    if not calls:
        return None
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
                  now: Callable[[], float] = time.time) -> StateError | None:
    """Send calls already recorded, in order, then record their outcomes (one lock). Each call
    gets its result or error; returns why the outcomes could not be recorded, or None."""
    calls = [c for c in calls if c.nodes]
    for c in calls:
        try:
            c.result = send(client, c)
        except ApiError as err:
            c.error = err
            log.error("%s of %d node(s) failed: %s", c.action, len(c.nodes), err)
    try:
        with store.transaction() as state:
            t = now()
            for c in calls:
                op = state.operations.get(c.request_id)
                if op is None:
                    continue
                settle(op, c, t)
    except StateError as err:
        # The calls were made: what follows them (DOWN marking, addresses) must still happen.
        # Their records stay pending; re-sent with the same requestId by repair, they are
        # recognised (409) and settled then.
        log.error("outcome of %s not recorded (left pending for repair): %s",
                  ", ".join(f"{c.action} {c.request_id}" for c in calls), err)
        return err
    return None


def settle(op: Operation, call: Call, now: float) -> None:
    from hpc_bridge.errors import ApiUnreachable

    if call.result is not None:
        op.accept(call.result.operation_id, "recovered after 409" if getattr(call.result, "recovered", False) else None,
                  now)
    elif isinstance(call.error, ApiUnreachable):
        op.outcome = PENDING
        op.message = str(call.error)
    elif call.error is not None:
        op.close(FAILED, now, str(call.error))


def take_out_of_service(slurm, nodemap, reasons: Mapping[str, str], exclude: set[str]
                        ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The powered-down idle nodes of the VM sizes in `reasons` (bucket key -> reason) go DOWN
    with that reason, so Slurm places jobs on other sizes; repair puts them back when the
    cool-off ends. Returns (name -> reason, bucket key -> the names taken out of service)."""
    nodes = slurm.show_nodes()
    out: dict[str, str] = {}
    per_key: dict[str, list[str]] = defaultdict(list)
    for name, node in nodes.items():
        entry = nodemap.get(name)
        if name in exclude or entry is None:
            continue
        key = bucket_key(entry.nodearray, entry.machine_type)
        if key in reasons and "POWERED_DOWN" in node.state_flags and node.state == "IDLE":
            out[name] = reasons[key]
            per_key[key].append(name)
    return out, dict(per_key)


# A hold lasts until an admin clears it; `until` only has to be later than any clock we run under.
HOLD_SECONDS = 100 * 365 * 86400.0


def count_boot_failures(store: StateStore, failed: Mapping[str, list[str]], limit: int, now: float
                        ) -> dict[str, str]:
    """Record VMs that were Ready but whose slurmd never registered (bucket key -> names).
    A VM size reaching `limit` such failures (0: never) is held out of service until an admin
    clears it: a bad image must not bill in a loop. Returns bucket key -> reason for the sizes
    held from now on."""
    held: dict[str, str] = {}
    with store.transaction() as state:
        for key, names in sorted(failed.items()):
            times = state.boot_failures.setdefault(key, [])
            times.extend([now] * len(names))
            old = state.cooloffs.get(key)
            if old is not None and old.until_cleared:
                old.nodes = sorted(set(old.nodes) | set(names))
            elif limit and len(times) >= limit:
                why = f"{len(times)} VM(s) of this size were Ready but their slurmd never registered"
                state.cooloffs[key] = Cooloff(until=now + HOLD_SECONDS, reason=why, nodes=sorted(names),
                                              until_cleared=True)
                held[key] = why
    for key, why in held.items():
        log.error("%s", hold_reason(key, why))
    return held


def hold_nodes(store: StateStore, taken: Mapping[str, list[str]]) -> None:
    """Remember the nodes a hold took out of service, so that clearing it puts them back."""
    if not taken:
        return
    with store.transaction() as state:
        for key, names in taken.items():
            if (c := state.cooloffs.get(key)) is not None:
                c.nodes = sorted(set(c.nodes) | set(names))


def clear_hold(store: StateStore, key: str, now: float) -> list[str]:
    """End the hold of one VM size (`hpc-bridge clear-hold`) and forget its boot failures.
    Returns the nodes it held out of service (repair puts them back to idle~)."""
    with store.transaction() as state:
        c = state.cooloffs.get(key)
        if c is None or not c.until_cleared:
            held = sorted(k for k, v in state.cooloffs.items() if v.until_cleared)
            raise UsageError(f"{key!r} is not held out of service (held: {', '.join(held) or 'none'})")
        c.until = now
        c.until_cleared = False
        state.boot_failures.pop(key, None)
        nodes = list(c.nodes)
    log.info("%s: hold cleared by an admin; %s go back in service", key, node_names(nodes) or "no nodes")
    return nodes
