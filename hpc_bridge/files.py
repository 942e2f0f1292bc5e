"""Files others can reach: ownership, links, FIFOs, sizes, and replacing a file atomically.

Files under state_dir and log_dir belong to their directory's owner, whoever writes them.

The hooks run as SlurmUser; an admin runs `repair`, `status` and the rest as root. A file root
created or rewrote there, left root's with mode 0600, would lock every later hook out (and
the repair timer, which runs as SlurmUser): so each file made or rewritten by root is handed
to the owner of the directory it is in, before it is used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile


def _we_are_root() -> bool:
    return os.geteuid() == 0


def hand_over(fd: int, directory: str | os.PathLike[str]) -> None:
    """Give the open file `fd` to the owner of `directory`, when we are root and it is not
    theirs already (as anyone else we cannot, and need not: our files are the owner's)."""
    if not _we_are_root():
        return
    want = os.stat(directory)
    have = os.fstat(fd)
    if (have.st_uid, have.st_gid) != (want.st_uid, want.st_gid):
        os.fchown(fd, want.st_uid, want.st_gid)


def open_owned(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> int:
    """Open a file of ours in a directory that SlurmUser can write: never through a symlink
    (O_NOFOLLOW), never blocking on a FIFO, only a regular file, and only one the directory's
    owner owns (root's own, with a single link, is a file an earlier root run left: it is handed
    over). Anything else raises OSError naming why: a planted link or file is not written."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        owner = os.stat(directory).st_uid
        ours = st.st_uid == owner or (_we_are_root() and st.st_uid == 0 and st.st_nlink == 1)
        if not ours:
            raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by the directory's owner (uid {owner})", path)
        hand_over(fd, directory)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class NotARegularFile(ValueError):
    """The path holds a FIFO, a device or a directory, or a file too large to be ours."""


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes: a FIFO or a device there can
    neither block the reader nor feed it without end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile("not a regular file")
        if st.st_size > limit:
            raise NotARegularFile(f"{st.st_size} bytes, over the {limit} this file can be")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(limit + 1)
    finally:
        os.close(fd)


def write_temp(path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None,
               hand_over_to_owner: bool = False) -> str:
    """The new content of `path` in a temporary file beside it (`.<name>.*.tmp`), on disk
    (fsynced), ready to be renamed over `path`; returns its path. `mode`: its permissions
    (default 0600); `hand_over_to_owner`: given to the directory's owner when we are root (see
    hand_over)."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        if hand_over_to_owner:
            hand_over(fd, directory)
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def sync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the renames done in `directory` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None,
                     hand_over_to_owner: bool = False, durable: bool = True) -> None:
    """Replace `path` with `data` so that a reader, or a crash, sees the old file or the new
    one, never a part: temp file, fsync, rename, fsync of the directory. `durable=False` skips
    the last: a crash may then leave the old file (still whole), for a writer that can lose
    its change but not have it half-written."""
    tmp = write_temp(path, data, mode=mode, hand_over_to_owner=hand_over_to_owner)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        sync_dir(os.path.dirname(os.fspath(path)) or ".")


class UnreadableToml(ValueError):
    """A TOML file that cannot be read, with why in a few words (`missing`: there is no such file)."""

    def __init__(self, why: str, missing: bool = False):
        super().__init__(why)
        self.missing = missing


def read_toml(path: str | os.PathLike[str], limit: int) -> dict:
    """The data of a TOML file of at most `limit` bytes (a regular file: see read_regular_file);
    UnreadableToml naming why it cannot be read."""
    import tomllib

    try:
        return tomllib.loads(read_regular_file(path, limit).decode("utf-8"))
    except NotARegularFile as err:
        raise UnreadableToml(str(err)) from None
    except FileNotFoundError:
        raise UnreadableToml("file not found", missing=True) from None
    except OSError as err:
        raise UnreadableToml(f"cannot read it: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UnreadableToml(f"not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise UnreadableToml("not valid UTF-8") from None
    except RecursionError:
        raise UnreadableToml("nested too deeply") from None
