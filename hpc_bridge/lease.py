"""Is a process alive, and is the follower's lease still held?

The lease (`state.Lease`, in the state file) names the follower of a state directory by host,
PID and heartbeat time. On its own host a dead PID ends it at once (a killed follower is
replaced by the next resume); from another host sharing the directory only the heartbeat can
be seen, so a lease is held until `stale_after` seconds without one. The same rule holds for a
hook's record (`hook_alive`): its PID says something only on the host that wrote it.

Heartbeats are wall-clock times written by one host and read by another: the controllers'
clocks must agree (NTP) to well within `[resume] follower_lease`.
"""

from __future__ import annotations

import os

from hpc_bridge.state import HOST, Lease, Operation


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
