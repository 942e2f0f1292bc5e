"""A fair, blocking, bounded-wait exclusive lock on a file (the state file's lock).

filelock polls (try, sleep 50 ms, try again): under contention a process that just released
the lock takes it again before the sleepers wake, and some waiters starve (p99 of 8-11 s with
32 processes). Here every waiter blocks in the kernel (`flock(LOCK_EX)`), woken when the lock
is free, and two locks make the order fair: a waiter first takes the *gate*, then the lock,
and lets go of the gate once it holds the lock. The holder of the gate is the next in line, so
a process that just released the lock cannot take it again ahead of it: it queues at the gate
behind the others.

The wait is bounded with a real-time timer (SIGALRM interrupts the blocked call) in the main
thread; another thread, where signals cannot reach, polls instead. A process that dies holding
either lock releases it with its file descriptors: nothing to clean up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import threading
import time
from typing import Iterator

from hpc_bridge.files import hand_over


class LockTimeout(Exception):
    """The lock was not free within the timeout."""


_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def _open(path: str, mode: int) -> int:
    # O_NOFOLLOW: a symlink planted there cannot make us create or lock another file.
    fd = os.open(path, _OPEN_FLAGS, mode)
    try:
        # made by root (an admin's command), it must stay lockable by SlurmUser's hooks
        hand_over(fd, os.path.dirname(path) or ".")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def exclusive(path: str, timeout: float, mode: int = 0o600) -> Iterator[float]:
    """Hold an exclusive lock on `path` (and its gate `path + ".gate"`) for the block; yields the
    seconds waited. LockTimeout after `timeout` seconds; OSError when the files cannot be used."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    gate = _open(path + ".gate", mode)
    try:
        lock = _open(path, mode)
    except BaseException:
        os.close(gate)
        raise
    try:
        _acquire(gate, deadline)
        try:
            _acquire(lock, deadline)
        finally:
            os.close(gate)  # releases the gate: the next in line may now wait for the lock
            gate = -1
        yield time.monotonic() - t0
    finally:
        if gate >= 0:
            os.close(gate)
        os.close(lock)  # releases the lock, if held


def _acquire(fd: int, deadline: float) -> None:
    with contextlib.suppress(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise LockTimeout()
    if threading.current_thread() is threading.main_thread():
        _wait_blocking(fd, remaining)
    else:
        _wait_polling(fd, deadline)


class _Expired(BaseException):
    pass


def _wait_blocking(fd: int, seconds: float) -> None:
    waiting = True

    def expire(signum, frame) -> None:
        if waiting:  # a timer firing just after the lock was taken changes nothing
            raise _Expired()

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            waiting = False
        except _Expired:
            raise LockTimeout() from None
        finally:
            waiting = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)


def _wait_polling(fd: int, deadline: float) -> None:
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise LockTimeout()
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
