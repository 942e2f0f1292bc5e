"""A fair, blocking, bounded-wait exclusive lock on a file (the state file's lock).

filelock polls (try, sleep 50 ms, try again): under contention a process that just released
the lock takes it again before the sleepers wake, and some waiters starve (p99 of 8-11 s with
32 processes). Here every waiter blocks in the kernel (`flock(LOCK_EX)`), and waiters go in the
order they came: each takes a ticket (a counter in `PATH.tail`, under its own short lock), holds
its own queue file `PATH.q<ticket>` locked, and waits for the queue file of the ticket before
it (its predecessor lets go of it when done, or dies, which lets go too); then it takes the lock
itself. The lock on PATH is what excludes; the queue only orders. Whoever got past a queue file
removes it, so one is left at rest.

Waits are bounded with a real-time timer (SIGALRM interrupts the blocked call) in the main
thread; another thread, where signals cannot reach, polls instead. A process that dies holding
any of these locks releases them with its file descriptors: nothing to clean up.

`try_exclusive` is the same kernel lock without the queue, for what must run once at a time
and otherwise not at all (repair). `excludes_another_process` is doctor's proof that the lock
works where the files are.

Across hosts (controllers sharing the state directory) this is only as good as the
filesystem's locks. Linux's NFS client (since 2.6.12) emulates flock(2) with a POSIX byte-range
lock on the whole file, which the server arbitrates: on NFSv4 locking is part of the protocol
and holds across clients; on NFSv3 it goes through the NLM side protocol (lockd, rpc.statd on
both ends), and without it flock fails with ENOLCK. Mounted `nolock` (v3) or
`local_lock=flock|all`, locks exclude only processes on the same client: each controller would
hold "the" lock at once. A process that dies releases its locks on the server too (NFSv4: when
its client's lease ends, a lease period after a crashed host stops renewing it).
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


_DONE = b"done"  # written into a queue file by a waiter that had the lock, as it lets go
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
    """Hold an exclusive lock on `path` for the block, taken in turn; yields the seconds waited.
    LockTimeout after `timeout` seconds; OSError when the files cannot be used."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    lock = _open(path, mode)
    mine = -1
    held = False
    try:
        try:
            mine, ahead = _join_queue(path, mode, deadline)
            _wait_behind(path, ahead, deadline)
            _acquire(lock, deadline)
        except OSError as err:
            raise _named(err, path) from None
        held = True
        yield time.monotonic() - t0
    finally:
        os.close(lock)  # releases the lock, if held
        if mine >= 0:
            if held:  # the next in line need not look further back
                with contextlib.suppress(OSError):
                    os.pwrite(mine, _DONE, 0)
            os.close(mine)  # the next in line may go


def _named(err: OSError, path: str) -> OSError:
    """flock(2) errors carry no file name (ENOLCK on NFSv3 without lockd): name the lock file,
    so that the caller's one-line error says which."""
    return err if err.filename else OSError(err.errno, err.strerror, path)


def _join_queue(path: str, mode: int, deadline: float) -> tuple[int, int]:
    """Take a ticket: (our queue file, locked; the ticket ahead of us, 0 if none)."""
    tail = _open(path + ".tail", mode)
    try:
        _acquire(tail, deadline)
        try:
            last = int(os.pread(tail, 32, 0).decode("ascii").strip() or 0)
        except (ValueError, UnicodeDecodeError):
            last = 0  # a damaged counter: start again (the lock itself still excludes)
        ticket = last + 1
        while True:
            mine = _open(f"{path}.q{ticket}", mode)
            try:
                fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # held after a damaged counter: the next number
                os.close(mine)
                ticket += 1
        data = str(ticket).encode()
        os.pwrite(tail, data, 0)
        os.ftruncate(tail, len(data))
        return mine, last
    finally:
        os.close(tail)


def _wait_behind(path: str, ticket: int, deadline: float) -> None:
    """Wait until the one ahead of us let go of its queue file. One that let go without having
    had the lock (it died or gave up while in line) does not say those ahead of it are done:
    then wait behind the one before it too."""
    while ticket > 0:
        ahead = f"{path}.q{ticket}"
        try:
            fd = os.open(ahead, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # whoever was behind it saw it done and removed it
        try:
            _acquire(fd, deadline)
            done = os.pread(fd, len(_DONE), 0) == _DONE
            with contextlib.suppress(OSError):
                os.unlink(ahead)
        finally:
            os.close(fd)
        if done:
            return
        ticket -= 1


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


@contextlib.contextmanager
def try_exclusive(path: str, timeout: float = 0.0, mode: int = 0o600) -> Iterator[bool]:
    """Hold an exclusive lock on `path` for the block if it is free within `timeout` seconds (0:
    now or never): yields True, or False when another process holds it. No queue: whoever
    loses just does not run. OSError when the file cannot be opened or locked at all."""
    fd = _open(path, mode)
    try:
        try:
            _acquire(fd, time.monotonic() + timeout)
        except LockTimeout:
            yield False
            return
        except OSError as err:
            raise _named(err, path) from None
        yield True
    finally:
        os.close(fd)  # releases the lock, if held


def excludes_another_process(path: str, timeout: float = 10.0, mode: int = 0o600) -> str | None:
    """Take the lock on `path`, then have a child process try it without waiting: None when the
    child is refused (the lock works here), else why not, in one line."""
    fd = _open(path, mode)
    try:
        try:
            _acquire(fd, time.monotonic() + timeout)
        except LockTimeout:
            return f"{path} stayed locked by another process for {timeout:g} s; could not test it"
        except OSError as err:
            return f"cannot lock {path}: {err.strerror or err}"
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its own open file description, so its own lock attempt
            code = 0
            try:
                os.close(read_end)
                mine = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)
                code = 1  # it got a lock another process holds
            except BlockingIOError:
                code = 0
            except OSError as err:
                code = 2
                with contextlib.suppress(OSError):
                    os.write(write_end, (err.strerror or str(err)).encode()[:200])
            finally:
                os._exit(code)
        os.close(write_end)
        try:
            message = os.read(read_end, 256).decode(errors="replace")
        finally:
            os.close(read_end)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            return None
        if code == 1:
            return f"a second process took the lock on {path} while this one held it: locks there do not exclude"
        return f"a second process could not use locks on {path}: {message or f'exit {code}'}"
    finally:
        os.close(fd)
