"""The records of the state file: operations, capacity cool-offs and holds, the follower's watch
list and lease, and their JSON form. Plain data with pure methods (the clock is passed in):
planners read them; hpc_bridge.state keeps them in the lock-protected file."""

from __future__ import annotations

import functools
import json
import os
import socket
from dataclasses import dataclass, field, fields
from typing import Any

from hpc_bridge.errors import StateError

# 2: a hold is a cool-off with `until` null (1: `until_cleared`, read and converted).
SCHEMA_VERSION = 2

#: This host, as records name it: controllers sharing a state directory tell their own hooks and
#: followers (whose PIDs they can check) from another host's (whose PIDs mean nothing here).
HOST = socket.gethostname()

# Outcomes of an operation record.
PENDING = "pending"  # recorded, API call not (known to be) answered yet
ACCEPTED = "accepted"  # the API accepted it; nodes may still be on their way
FAILED = "failed"  # the API refused it, or it was given up
DONE = "done"  # closed: nothing more to watch

OPEN = (PENDING, ACCEPTED)
RESUME_ACTIONS = ("create", "start")
SUSPEND_ACTIONS = ("shutdown", "deallocate", "terminate", "remove")


@dataclass
class Operation:
    request_id: str
    action: str
    nodes: list[str]
    started: float
    deadline: float
    pid: int = 0
    outcome: str = PENDING
    operation_id: str | None = None
    message: str | None = None
    finished: float | None = None
    request: dict[str, Any] | None = None  # the body sent, so a killed call can be re-sent as is
    answered: float | None = None  # when the API accepted it: its nodes exist from then on
    ready: float | None = None  # create/start: when all its nodes were seen Ready (the boot time's end)
    host: str | None = None  # where the hook that recorded it ran (None: written before hosts were recorded)

    @property
    def open(self) -> bool:
        return self.outcome in OPEN

    def accept(self, operation_id: str | None, message: str | None = None, now: float | None = None) -> None:
        """The API took the call: it is never sent again, so its request body goes (a 1,000-node
        create's body would otherwise be re-read and re-written by every hook while it boots)."""
        self.outcome = ACCEPTED
        self.answered = now
        self.operation_id = operation_id or self.operation_id
        self.message = message
        self.request = None

    def close(self, outcome: str, now: float, message: str | None = None) -> None:
        self.outcome = outcome
        self.finished = now
        if message:
            self.message = message
        self.request = None  # only an open call is ever re-sent


@dataclass
class Cooloff:
    """A VM size out of service: a capacity cool-off until `until`, or a hold (`until` None)
    until an admin clears it (`hpc-bridge clear-hold`)."""
    until: float | None
    reason: str
    nodes: list[str] = field(default_factory=list)  # names we took out of service for it

    @property
    def held(self) -> bool:
        return self.until is None

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now


@dataclass
class Watch:
    """A node the follower watches until it is Ready (address set), failed or past `deadline`."""
    deadline: float
    since: float
    recreate: bool = False  # its old cloud record was still going: create it once that is gone


@dataclass
class Lease:
    """Which process is the follower of this state directory. Host and heartbeat, not a PID
    alone: a controller on another host sharing the directory can tell a live follower from a
    dead one only by the time of its last heartbeat."""
    host: str
    pid: int
    heartbeat: float
    since: float


@dataclass
class State:
    operations: dict[str, Operation] = field(default_factory=dict)
    cooloffs: dict[str, Cooloff] = field(default_factory=dict)  # bucket key "array/machine type"
    down_reasons: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (when, why we downed it)
    # bucket key -> when a VM of it was Ready but its slurmd never registered (resume-fail)
    boot_failures: dict[str, list[float]] = field(default_factory=dict)
    watch: dict[str, Watch] = field(default_factory=dict)  # what the follower watches, by node name
    follower: Lease | None = None

    # ------------------------------------------------------------------ queries (pure)

    def latest_by_node(self) -> dict[str, Operation]:
        """The most recent operation touching each node name (of two started at the same time,
        the one with the later deadline: every reader then sees the same one)."""
        latest: dict[str, Operation] = {}
        for op in sorted(self.operations.values(), key=lambda o: (o.started, o.deadline)):
            for name in op.nodes:
                latest[name] = op
        return latest

    def resume_in_flight(self, now: float) -> dict[str, Operation]:
        """Names whose latest operation is a create/start still open and before its deadline."""
        return {
            name: op
            for name, op in self.latest_by_node().items()
            if op.action in RESUME_ACTIONS and op.open and now < op.deadline
        }

    def brought_up_since(self, names, since: float) -> set[str]:
        """Names a create/start may have brought up after `since` (a read of the cloud then
        cannot show it): one not answered yet, or answered since. Also when a later suspend
        superseded it: that call's node still appears."""
        names = set(names)
        return {n for op in self.operations.values()
                if op.action in RESUME_ACTIONS and op.open and since < op.deadline
                and (op.outcome == PENDING or (op.answered or 0) >= since)
                for n in op.nodes if n in names}

    def stop_unfinished(self, names) -> set[str]:
        """Names whose latest operation is a stop (a suspend action) that failed or is still open:
        their VM was to be stopped, and nothing of ours has brought it up since, so a slurmd
        running on it has run since before any later power-up."""
        names = set(names)
        return {name for name, op in self.latest_by_node().items()
                if name in names and op.action in SUSPEND_ACTIONS and (op.open or op.outcome == FAILED)}

    def failure_reasons(self, now: float, max_age: float) -> dict[str, str]:
        """Why we marked each node DOWN, if that was within `max_age` seconds: Slurm replaces our
        reason with "ResumeTimeout reached", and resume-fail puts the real cause back."""
        return {name: why for name, (at, why) in self.down_reasons.items() if now - at <= max_age}

    def remember_down(self, reasons: dict[str, str], now: float) -> None:
        for name, why in reasons.items():
            self.down_reasons[name] = (now, why)

    def add_watch(self, names, deadline: float, now: float, recreate=()) -> None:
        """Put nodes on the follower's list (again): `since` is this resume's time, so that a
        suspend recorded before it no longer counts."""
        recreate = set(recreate)
        for name in names:
            old = self.watch.get(name)
            self.watch[name] = Watch(deadline=max(deadline, old.deadline) if old else deadline, since=now,
                                     recreate=name in recreate)

    def drop_watch(self, names) -> None:
        for name in names:
            self.watch.pop(name, None)

    def open_operations(self) -> list[Operation]:
        return [op for op in self.operations.values() if op.open]

    def active_cooloffs(self, now: float) -> dict[str, Cooloff]:
        return {key: c for key, c in self.cooloffs.items() if c.active(now)}

    # ------------------------------------------------------------------ changes

    def begin(
        self,
        action: str,
        nodes: list[str],
        request_id: str,
        now: float,
        deadline: float,
        request: dict[str, Any] | None = None,
    ) -> Operation:
        op = Operation(request_id=request_id, action=action, nodes=list(nodes), started=now, deadline=deadline,
                       pid=os.getpid(), request=request, host=HOST)
        self.operations[request_id] = op
        return op

    def prune(self, now: float, retention: float, keep_closed: float | None = None) -> list[Operation]:
        """Take out closed operations finished more than `keep_closed` seconds ago (default:
        `retention`) and return them (the store moves them to the history file), so that the file
        every hook reads and writes holds what is in flight, not the cluster's history. A closed
        record stays while an open one shares a node with it: it is what tells `latest_by_node`
        that the open one is superseded. Expired cool-offs that no longer hold nodes out of
        service and remembered reasons older than `retention` are dropped."""
        keep_closed = retention if keep_closed is None else keep_closed
        busy = {n for op in self.operations.values() if op.open for n in op.nodes}
        # Counted from the deadline too: repair still looks at a record once its deadline passed.
        old = [op for op in self.operations.values()
               if not op.open and max(op.finished or op.started, op.deadline) < now - keep_closed
               and busy.isdisjoint(op.nodes)]
        for op in old:
            del self.operations[op.request_id]
        for key in [k for k, c in self.cooloffs.items()
                    if c.until is not None and c.until < now - retention and not c.nodes]:
            del self.cooloffs[key]
        for name in [n for n, (at, _) in self.down_reasons.items() if at < now - retention]:
            del self.down_reasons[name]
        for key, times in list(self.boot_failures.items()):
            recent = [t for t in times if t >= now - retention]
            if recent:
                self.boot_failures[key] = recent
            else:
                del self.boot_failures[key]
        return old

    # ------------------------------------------------------------------ (de)serialise

    def to_json(self) -> dict[str, Any]:
        # Shallow copies of the (flat) records: dataclasses.asdict deep-copies every recorded
        # request body, which made a 1,000-node create spend seconds here.
        return {
            "version": SCHEMA_VERSION,
            "operations": [op_record(op) for op in sorted(self.operations.values(), key=lambda o: o.started)],
            "cooloffs": {k: {**vars(c), "nodes": list(c.nodes)} for k, c in sorted(self.cooloffs.items())},
            "down_reasons": {n: list(v) for n, v in sorted(self.down_reasons.items())},
            "boot_failures": {k: list(v) for k, v in sorted(self.boot_failures.items())},
            "watch": {n: vars(w) for n, w in sorted(self.watch.items())},
            "follower": None if self.follower is None else vars(self.follower),
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> "State":
        if not isinstance(data, dict) or "version" not in data:
            raise ValueError("not a state file (no version)")
        version = data["version"]
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StateError(
                f"state file {source} has schema version {version!r}, newer than this hpc-bridge "
                f"understands ({SCHEMA_VERSION}); upgrade hpc-bridge or move the file aside"
            )
        items, cooloff_items, down_items = (data.get("operations", []), data.get("cooloffs", {}),
                                            data.get("down_reasons", {}))
        if not isinstance(items, list) or not isinstance(cooloff_items, dict) or not isinstance(down_items, dict):
            raise ValueError("operations, cooloffs or down_reasons of the wrong type")
        ops = {}
        for item in items:
            op = op_from_record(item)
            if not _well_typed(op):
                raise ValueError(f"operation record of the wrong shape: {str(item)[:80]}")
            ops[op.request_id] = op
        if version < 2:
            cooloff_items = {k: _hold_of_version_1(v) for k, v in cooloff_items.items()}
        cooloffs = {k: Cooloff(**_known(Cooloff, v)) for k, v in cooloff_items.items()}
        if not all((c.until is None or isinstance(c.until, (int, float))) and isinstance(c.nodes, list)
                   for c in cooloffs.values()):
            raise ValueError("cool-off record of the wrong shape")
        down = {n: (float(at), str(why)) for n, (at, why) in down_items.items()}
        failures = data.get("boot_failures", {})
        if not isinstance(failures, dict) or not all(isinstance(v, list) for v in failures.values()):
            raise ValueError("boot_failures of the wrong type")
        boot_failures = {str(k): [float(t) for t in v] for k, v in failures.items()}
        watch_items, lease_item = data.get("watch", {}), data.get("follower")
        if not isinstance(watch_items, dict) or not (lease_item is None or isinstance(lease_item, dict)):
            raise ValueError("watch or follower of the wrong type")
        watch = {n: Watch(**_known(Watch, w)) for n, w in watch_items.items()}
        if not all(isinstance(w.deadline, (int, float)) and isinstance(w.since, (int, float)) for w in watch.values()):
            raise ValueError("watch record of the wrong shape")
        lease = None if lease_item is None else Lease(**_known(Lease, lease_item))
        if lease is not None and not (isinstance(lease.host, str) and isinstance(lease.pid, int)
                                      and isinstance(lease.heartbeat, (int, float))):
            raise ValueError("follower lease of the wrong shape")
        return cls(operations=ops, cooloffs=cooloffs, down_reasons=down, boot_failures=boot_failures, watch=watch,
                   follower=lease)


# One encoder for every record: json.dumps(..., sort_keys=True) builds a new JSONEncoder per
# call, which is most of the cost of writing one line per operation.
_RECORD_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def dump_state(data: dict[str, Any]) -> str:
    """The file's text: one operation per line (readable, diffable), compact JSON. Every piece
    goes through json's C encoder; `indent=` would switch to the pure-Python one, ~10x slower.
    JSON strings cannot hold a raw newline, so each record stays on its line."""
    ops = ",\n".join(map(_RECORD_ENCODER.encode, data["operations"]))
    rest = {k: v for k, v in data.items() if k != "operations"}
    head = _RECORD_ENCODER.encode(rest)[1:-1]
    return "{" + head + ("," if head else "") + '"operations":[' + (f"\n{ops}\n" if ops else "") + "]}\n"


_EMPTY_FILE = dump_state(State().to_json()).encode()


def _hold_of_version_1(item: Any) -> Any:
    """Version 1 wrote a hold as `until_cleared: true` with `until` a century away; version 2
    as `until: null`."""
    if not isinstance(item, dict) or "until_cleared" not in item:
        return item
    item = dict(item)
    if item.pop("until_cleared") is True:
        item["until"] = None
    return item


def op_record(op: Operation) -> dict[str, Any]:
    return {**vars(op), "nodes": list(op.nodes)}


def op_from_record(item: dict[str, Any]) -> Operation:
    return Operation(**_known(Operation, item))


def _well_typed(op: Operation) -> bool:
    number = (int, float)
    return (isinstance(op.request_id, str) and isinstance(op.action, str) and isinstance(op.nodes, list)
            and isinstance(op.started, number) and isinstance(op.deadline, number)
            and (op.finished is None or isinstance(op.finished, number))
            and (op.ready is None or isinstance(op.ready, number))
            and (op.host is None or isinstance(op.host, str)))


def _known(cls, item: dict[str, Any]) -> dict[str, Any]:
    """The fields of `cls` in a record: a field added by a newer release (same schema version)
    is ignored rather than making an older reader take the whole file for corrupt."""
    names = _field_names(cls)
    if names.issuperset(item):  # the usual case: the record as it is
        return item
    return {k: v for k, v in item.items() if k in names}


@functools.cache
def _field_names(cls) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))
