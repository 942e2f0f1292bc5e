"""Logging: one file per command under [paths] log_dir (rotated by logrotate), stderr at -v.

Secrets registered with `register_secret` are masked in every record, wherever it comes from.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Iterable, Mapping

_SECRETS: set[str] = set()
_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def register_secret(secret: str) -> None:
    if secret and len(secret) >= 3:
        _SECRETS.add(secret)


class _RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = record.getMessage()
            masked = message
            for secret in _SECRETS:
                masked = masked.replace(secret, "***")
            if masked != message:
                record.msg, record.args = masked, None
        return True


def ensure_private_dir(path: str) -> None:
    """Create a directory readable by its owner only (state and logs may name hosts and ids);
    an existing one of ours that others can read is tightened."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, st.st_mode & 0o700)


def setup_logging(command: str, log_dir: str | None = None, verbose: int = 0) -> str | None:
    """Configure the hpc_bridge logger; returns the log file path in use, if any."""
    logger = logging.getLogger("hpc_bridge")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(logging.NullHandler())  # never fall back to logging's last-resort stderr output
    redact = _RedactSecrets()
    if verbose:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
        stderr.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        stderr.addFilter(redact)
        logger.addHandler(stderr)
    path = None
    if log_dir:
        path = os.path.join(log_dir, f"{command}.log")
        try:
            ensure_private_dir(log_dir)
            # Many hook processes write the same file at once: leave rotation to logrotate
            # (scripts/logrotate/hpc-bridge) and reopen the file when it has been rotated.
            handler = logging.handlers.WatchedFileHandler(path)
        except OSError as err:
            logger.warning("cannot write log file %s: %s", path, err.strerror)
            return None
        handler.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.addFilter(redact)
        logger.addHandler(handler)
    return path


def node_names(names: Iterable[str]) -> str:
    """Node names for a log line: a Slurm hostlist (as slurmctld logs them), or a plain sorted
    list when a name cannot be part of one (Slurm accepts `a-1]` as a name; a log line must
    never be what makes a hook fail)."""
    from hpc_bridge import hostlist
    from hpc_bridge.errors import HostlistError

    names = list(names)
    try:
        return hostlist.compress_sorted(names)
    except HostlistError:
        return ",".join(sorted(set(names)))


def log_per_message(logger: logging.Logger, level: int, messages: Mapping[str, str], template: str = "%s: %s") -> None:
    """One log line per distinct message, naming its nodes with `node_names`. A hook over 5,000
    nodes writes a handful of lines, not 5,000: formatting and writing a record per node was a
    measurable share of the resume hook's time."""
    by_message: dict[str, list[str]] = {}
    for name, message in messages.items():
        by_message.setdefault(message, []).append(name)
    for message, names in by_message.items():
        logger.log(level, template, node_names(names), message)
