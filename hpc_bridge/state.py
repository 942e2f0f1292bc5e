"""The lock-protected state file of in-flight operations.

One JSON file under [paths] state_dir, guarded by a fair blocking lock (hpc_bridge.flock: bounded
wait, then a clear error), written atomically (temp file, fsync, rename, fsync of the directory), with a schema
version. Every mutating API call is recorded *before* it is made (action, requestId, node
names, start, deadline, the request itself) so that a hook killed mid-way can be finished by
the next run or by repair: re-sending the same requestId is safe, the API answers 409 and the
first attempt's result is found by request id.

A missing file is an empty state. A corrupt file is moved aside (nothing is destroyed) with a
loud log line, and the hooks go on with an empty state; repair rebuilds from the API. A file
written by a newer schema is refused and left untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from hpc_bridge import flock
from hpc_bridge.errors import StateError
from hpc_bridge.files import NotARegularFile, open_owned, read_regular_file, write_atomically
from hpc_bridge.log import ensure_private_dir
from hpc_bridge.state_records import (
    _EMPTY_FILE,
    _RECORD_ENCODER,
    Operation,
    State,
    _well_typed,
    dump_state,
    op_from_record,
    op_record,
)

log = logging.getLogger("hpc_bridge.state")

# A state file holds what is in flight (closed records move to the history): a few MB at most.
# Anything far larger is garbage (or /dev/zero linked there), not something to read into memory.
MAX_STATE_BYTES = 256 * 1024 * 1024


class StateStore:
    """The state file and its lock. Use `with store.transaction() as state:` to change it."""

    def __init__(self, path: str | os.PathLike[str], lock_timeout: float = 10.0, retention: float = 86400.0,
                 keep_closed: float = 3600.0):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        # Closed operations end up here, one JSON line each (rotated by logrotate).
        self.history_path = self.path.with_name(self.path.name.removesuffix(".json") + ".history.jsonl")
        self.lock_timeout = lock_timeout
        self.retention = retention
        self.keep_closed = keep_closed
        self.lock_waits: list[float] = []  # seconds waited for the lock, per acquisition

    @classmethod
    def from_config(cls, cfg) -> "StateStore":
        return cls(cfg.state_file, lock_timeout=cfg.state.lock_timeout, retention=cfg.state.retention,
                   keep_closed=cfg.state.keep_closed)

    def ensure_dir(self) -> None:
        """Make the state directory (owner only); StateError naming it when that fails."""
        try:
            ensure_private_dir(str(self.path.parent))
        except OSError as err:
            raise StateError(f"cannot use state directory {self.path.parent}: {err.strerror or err}") from None

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[None]:
        self.ensure_dir()
        try:
            with flock.exclusive(str(self.lock_path), self.lock_timeout if timeout is None else timeout) as waited:
                self.lock_waits.append(waited)
                yield
        except flock.LockTimeout:
            raise StateError(
                f"state file {self.path} is locked by another hpc-bridge process for more than "
                f"{self.lock_timeout if timeout is None else timeout:g}s; if none is running, check for a hung process"
            ) from None
        except OSError as err:
            if err.filename is None or not str(err.filename).startswith(str(self.lock_path)):
                raise
            raise StateError(f"cannot lock {err.filename}: {err.strerror or err}") from None

    def _load_raw(self, move_corrupt_aside: bool = True) -> tuple[State, bytes | None]:
        """The state and the file's bytes (None: no usable file, i.e. an empty state). A corrupt
        file is moved aside only by a writer holding the lock; a lock-free reader sees it empty."""
        try:
            raw = read_regular_file(self.path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return State(), None
        except NotARegularFile as err:
            raw, bad = b"", err  # moved aside below, like any garbage
        except OSError as err:
            raise StateError(f"cannot read state file {self.path}: {err.strerror}") from None
        else:
            bad = None
        try:
            if bad is not None:
                raise bad
            return State.from_json(json.loads(raw), str(self.path)), raw
        except StateError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, NotARegularFile) as err:
            if not move_corrupt_aside:
                return State(), None
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            os.replace(self.path, aside)
            log.error(
                "STATE FILE CORRUPT: %s could not be read (%s: %s); moved aside to %s and starting empty. "
                "Run `hpc-bridge repair` to rebuild from the cluster API.",
                self.path, type(err).__name__, " ".join(str(err).split())[:120], aside,
            )
            return State(), None

    def _write(self, data: bytes, durable: bool = True) -> None:
        """Write the file atomically. Called with the lock held (`locked` made the directory): a
        temp file already there is what a writer killed mid-write left behind, and goes."""
        prefix = f".{self.path.name}."
        with os.scandir(self.path.parent) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
        write_atomically(self.path, data, hand_over_to_owner=True, durable=durable)  # root rewrites it, still SlurmUser's

    @contextlib.contextmanager
    def transaction(self, now: float | None = None, durable: bool = True) -> Iterator[State]:
        """Lock, load, yield the state for changes, prune and save atomically, unlock.
        `durable=False`: a crash right after may leave the file as it was before (see
        write_atomically), for changes that can be lost that way."""
        with self.locked():
            state, raw = self._load_raw()
            yield state
            t = time.time() if now is None else now
            moved = state.prune(t, self.retention, self.keep_closed)
            if moved and not self._append_history(moved):
                # Kept here rather than lost, up to the retention (the file must not grow forever
                # because the history cannot be written).
                for op in moved:
                    if (op.finished or op.started) >= t - self.retention:
                        state.operations[op.request_id] = op
            # Serialise once and compare with the bytes read: unchanged -> no write (no file
            # when there was none). Dumping before and after, then again to save, was 3 of the
            # ~4 passes over a file that grows with every operation in flight.
            data = dump_state(state.to_json()).encode()
            if data != (_EMPTY_FILE if raw is None else raw):
                try:
                    self._write(data, durable)
                except OSError as err:
                    raise StateError(f"cannot write state file {self.path}: {err.strerror or err}") from None

    def _append_history(self, ops: list[Operation]) -> bool:
        """Append closed operations to the history file, synced, before the state file drops
        them: a crash in between repeats lines (`history()` keeps one of each), never loses one.
        False when it cannot be written."""
        data = "".join(_RECORD_ENCODER.encode(op_record(op)) + "\n"
                       for op in sorted(ops, key=lambda o: o.started)).encode()
        try:
            # No link followed, no FIFO blocking us under the lock, no file of another owner.
            fd = open_owned(self.history_path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            try:
                st = os.fstat(fd)
                if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                    data = b"\n" + data  # a line torn by a crash must not swallow the next record
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            log.error("cannot append to the history file %s: %s; closed operations stay in the state file",
                      self.history_path, err.strerror or err)
            return False
        return True

    def history(self) -> list[Operation]:
        """The closed operations moved out of the state file, oldest first (lines that do not
        parse are skipped: the file is informational, and rotated)."""
        try:
            lines = read_regular_file(self.history_path, MAX_STATE_BYTES).decode(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        except NotARegularFile as err:
            raise StateError(f"history file {self.history_path}: {err}") from None
        except OSError as err:
            raise StateError(f"cannot read history file {self.history_path}: {err.strerror}") from None
        ops: dict[str, Operation] = {}  # one per request id: a crash may have repeated lines
        for line in lines:
            try:
                op = op_from_record(json.loads(line))
            except (ValueError, TypeError, AttributeError, RecursionError):
                continue
            if _well_typed(op):
                ops[op.request_id] = op
        return sorted(ops.values(), key=lambda o: o.started)

    def read(self) -> State:
        """A consistent snapshot without taking the lock (writes are atomic renames)."""
        return self._load_raw(move_corrupt_aside=False)[0]
