"""The journal: the one place that records, sends, settles and closes mutating API calls.

Every create / start / shutdown / deallocate / terminate is recorded in the state file (PENDING,
with its requestId and request body) before it is sent, so that a hook killed mid-way can be
finished by repair: the same requestId again is safe (the API answers 409, and the client finds
what the first attempt did). Its outcome is decided once, when the answer comes (`settle`):

- accepted (also: a 409 whose request id the API knows)   -> ACCEPTED, never sent again;
- refused (any other API error)                           -> FAILED;
- no answer (ApiUnreachable: it may have reached the server) -> the call's own `if_unreachable`:
  PENDING, so that repair re-sends it with the same requestId (a shutdown must not be lost), or
  FAILED when the caller acts on the failure itself (resume marks the nodes DOWN, and nothing
  may bring them up behind Slurm's back).

Records are closed here too: given up (repair, a hook gone), resolved (repair, past the
deadline), done (the follower, all nodes Ready). The state file itself (lock, atomic write,
schema) is `state.StateStore`, the edge under the journal.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from hpc_bridge.errors import ApiError, ApiUnreachable, StateError
from hpc_bridge.state_records import DONE, FAILED, PENDING, Operation, State

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from hpc_bridge.api.models import NodeCreationResult, NodeManagementResult
    from hpc_bridge.ports import ClusterApi, StateStorage

log = logging.getLogger("hpc_bridge.journal")


def new_request_id() -> str:
    # the client's, imported late: a hook that sends nothing never loads the HTTP stack
    from hpc_bridge.api.client import new_request_id as make

    return make()


class Call:
    """One mutating API call. `if_unreachable`: the record's outcome when the API cannot be
    reached (PENDING: repair re-sends it; FAILED: the caller gives it up)."""

    def __init__(self, action: str, nodes: list[str], request: dict[str, Any], deadline: float,
                 request_id: str | None = None, *, if_unreachable: str = PENDING):
        if if_unreachable not in (PENDING, FAILED):
            raise ValueError(f"if_unreachable must be {PENDING} or {FAILED}, not {if_unreachable!r}")
        self.action = action
        self.nodes = nodes
        self.request = request  # create: {"sets": [...]}; management: {"ids": [...]} etc.
        self.deadline = deadline
        self.request_id = request_id or new_request_id()
        self.if_unreachable = if_unreachable
        self.result: NodeCreationResult | NodeManagementResult | None = None
        self.error: ApiError | None = None

    @classmethod
    def of(cls, op: Operation) -> "Call":
        """The call a record describes, to send again with its own requestId."""
        return cls(op.action, list(op.nodes), dict(op.request or {}), op.deadline, request_id=op.request_id)

    @property
    def recovered(self) -> bool:
        """Accepted on a 409: an earlier attempt with this requestId had gone through."""
        return self.result is not None and self.result.recovered


def send(client: ClusterApi, call: Call, resend: bool = False) -> None:
    """Send one call; it gets its result, or its error (the API's answer is never raised)."""
    try:
        if call.action == "create":
            call.result = client.create_nodes(call.request.get("sets") or [], request_id=call.request_id,
                                              resend=resend)
        else:
            call.result = client.manage_nodes(call.action, request_id=call.request_id, resend=resend,
                                              **call.request)
    except ApiError as err:
        call.error = err


def record(state: State, calls: list[Call], now: float) -> None:
    """Record calls in an open transaction (resume does it in the same transaction as its plan,
    so that a concurrent hook sees the claim before it can plan the same names)."""
    for c in calls:
        if c.nodes:
            state.begin(c.action, c.nodes, c.request_id, now, c.deadline, request=c.request)


def record_unsent(state: State, call: Call, now: float, why: str) -> None:
    """Record a call that is not sent now (the API could not be read): PENDING, so that repair
    sends it (a record closed here would never be sent, and the VMs would run on)."""
    record(state, [call], now)
    state.operations[call.request_id].message = f"not sent: {why}"


def record_done(state: State, action: str, nodes: list[str], now: float, why: str) -> Operation:
    """Record an intent that needs no API call (closed DONE at once): it still counts as the
    nodes' latest operation (a suspend while a create was in flight)."""
    op = state.begin(action, nodes, new_request_id(), now, now)
    op.close(DONE, now, why)
    return op


def settle(op: Operation, call: Call, now: float) -> None:
    """Decide a sent call's record once, from its answer (see the module's docstring)."""
    if call.result is not None:
        op.accept(call.result.operation_id, "recovered after 409" if call.recovered else None, now)
    elif isinstance(call.error, ApiUnreachable) and call.if_unreachable == PENDING:
        op.message = str(call.error)
    elif call.error is not None:
        op.close(FAILED, now, str(call.error))


def close(state: State, request_id: str, outcome: str, now: float, why: str, *, pending_only: bool = False) -> bool:
    """Close an open record (DONE or FAILED) with why; `pending_only`: only one never answered.
    False when there is no such open record (closed meanwhile by someone else)."""
    op = state.operations.get(request_id)
    if op is None or not op.open or (pending_only and op.outcome != PENDING):
        return False
    op.close(outcome, now, why)
    return True


class Settled:
    """What `Journal.send` leaves: `state`, the state file as its settle transaction wrote it
    (the caller's later questions need no second read of the file), or None when that
    transaction failed, and then `error`, why.
    (A plain class: every dataclass is code generated at each hook's start.)"""

    __slots__ = ("state", "error")

    def __init__(self, state: State | None, error: StateError | None) -> None:
        self.state = state
        self.error = error


class Journal:
    """The calls of one command: `store` is the state file, `client` the cluster API, `now` the
    clock the records are stamped with."""

    def __init__(self, store: StateStorage, client: ClusterApi, now: Callable[[], float] = time.time):
        self.store = store
        self.client = client
        self.now = now

    def transaction(self) -> AbstractContextManager[State]:
        return self.store.transaction()

    def read(self) -> State:
        return self.store.read()

    def record_and_send(self, calls: list[Call]) -> StateError | None:
        """Record every call (one lock), send them in order, settle them (one lock). A record
        that cannot be written raises StateError, and nothing is sent."""
        calls = [c for c in calls if c.nodes]
        if not calls:
            return None
        with self.store.transaction() as state:
            record(state, calls, self.now())
        return self.send(calls).error

    def send(self, calls: list[Call]) -> Settled:
        """Send calls already recorded, in order, then settle them (one lock). Each call gets its
        result or error; the answer holds the state as settled, or why it could not be written."""
        calls = [c for c in calls if c.nodes]
        for c in calls:
            send(self.client, c)
            if c.error is not None:
                log.error("%s of %d node(s) failed: %s", c.action, len(c.nodes), c.error)
        try:
            # Not made durable (no directory sync): a crash that loses the outcomes leaves the
            # records as written before the send, pending, which repair settles by requestId;
            # exactly what a failure of this write leaves (below).
            with self.store.transaction(durable=False) as state:
                t = self.now()
                for c in calls:
                    if (op := state.operations.get(c.request_id)) is not None:
                        settle(op, c, t)
        except StateError as err:
            # The calls were made: what follows them (DOWN marking, addresses) must still happen.
            # Their records stay pending; re-sent with the same requestId by repair, they are
            # recognised (409) and settled then.
            log.error("outcome of %s not recorded (left pending for repair): %s",
                      ", ".join(f"{c.action} {c.request_id}" for c in calls), err)
            return Settled(None, err)
        return Settled(state, None)

    def resend(self, op: Operation) -> Call:
        """Send a recorded call again with its own requestId (its hook was killed); the caller
        settles it (repair does, with its other changes, in one transaction)."""
        call = Call.of(op)
        send(self.client, call, resend=True)
        if call.error is None:
            log.info("re-sent %s %s: accepted%s", op.action, op.request_id,
                     " (409: it had gone through)" if call.recovered else "")
        else:
            log.error("re-sending %s %s failed: %s", op.action, op.request_id, call.error)
        return call
