"""Is a process alive, is the follower's lease still held, and starting the follower.

The lease (`state_records.Lease`, in the state file) names the follower of a state directory by host,
PID and heartbeat time. On its own host a dead PID ends it at once (a killed follower is
replaced by the next resume); from another host sharing the directory only the heartbeat can
be seen, so a lease is held until `stale_after` seconds without one. The same rule holds for a
hook's record (`hook_alive`): its PID says something only on the host that wrote it.

Heartbeats are wall-clock times written by one host and read by another: the controllers'
clocks must agree (NTP) to well within `[resume] follower_lease`.
"""

from __future__ import annotations

import logging
import os

from hpc_bridge.state_records import HOST, Lease, Operation

log = logging.getLogger("hpc_bridge.follower")


def pid_alive(pid: int) -> bool:
    """A process with this PID exists on this host and is not a zombie (a follower its spawner
    has not reaped yet is dead for our purposes)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        stat = b""
    if stat:
        # "pid (comm) S ...": the state follows the last ')' (comm may hold spaces and parens)
        return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def lease_held(lease: Lease | None, now: float, stale_after: float, host: str = HOST, alive=pid_alive) -> bool:
    """Whether a follower holds the lease: a heartbeat within `stale_after` seconds and, when
    it runs on this host, a live PID."""
    if lease is None or now - lease.heartbeat > stale_after:
        return False
    return lease.host != host or alive(lease.pid)


def is_mine(lease: Lease | None, host: str = HOST, pid: int | None = None) -> bool:
    return lease is not None and lease.host == host and lease.pid == (os.getpid() if pid is None else pid)


def hook_alive(op: Operation, host: str = HOST, alive=pid_alive) -> bool:
    """Whether the hook that recorded `op` may still be at work: on this host (or a record that
    names no host: written by a single-controller install) its PID says; a hook on another host
    sharing the directory cannot be seen from here and counts as alive, so that only the
    record's age (repair's `hook_stale_after`) ends it."""
    return alive(op.pid) if op.host in (None, host) else True


FOLLOWER_NICENESS = 10  # above the hook that starts it


def spawn_follower(config_path: str, log_dir: str | None, command: str, now: float) -> Lease:
    """Start the detached follower and return its lease (the caller records it in the state
    file, under the lock): own session, no stdin or stdout tied to slurmctld, mask cleared
    in the child (hooks inherit slurmctld's blocked signals). It runs in `/`, so the config
    path is made absolute first; its stderr goes to the starting command's log file, so a
    follower that cannot start says why where that command's own lines are."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "hpc_bridge", "--config", os.path.abspath(config_path), "follow"]
    stderr = _open_log(log_dir, command)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL if stderr is None else stderr,
                                start_new_session=True, close_fds=True, env=dict(os.environ), cwd="/")
    finally:
        if stderr is not None:
            os.close(stderr)
    try:
        # Background work: its start-up (imports) and polls yield the CPU to slurmctld and to
        # the hook that started it, which is still creating the nodes it will watch.
        os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + FOLLOWER_NICENESS))
    except OSError:
        pass  # already gone: its exit is seen like any follower's
    log.info("follower started (pid %d)", proc.pid)
    return Lease(host=HOST, pid=proc.pid, heartbeat=now, since=now)


def _open_log(log_dir: str | None, command: str) -> int | None:
    """The command's log file for appending (None when there is none or it cannot be opened)."""
    from hpc_bridge.files import open_owned

    if not log_dir:
        return None
    try:
        return open_owned(os.path.join(log_dir, f"{command}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError:
        return None
