"""Logging: one file per command under [paths] log_dir (rotated by logrotate), stderr at -v.

Secrets registered with `register_secret` are masked in every record, wherever it comes from.
Every line is one line: control characters and line breaks in a message (a value from the
state file, the API, the command line) are written escaped, so nothing can forge a log line.
A log file is opened without following links and only when it belongs to the log directory's
owner: a link planted there cannot turn a root command into a write elsewhere.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterable, Mapping

from hpc_bridge.files import open_owned

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


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (\\n, \\x1b, \\u2028): one
    printable line, whatever it held."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _ESCAPES.get(m[0]) or (f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                                                         else f"\\u{ord(m[0]):04x}"), text)


class OneLineFormatter(logging.Formatter):
    """A record, its arguments and any traceback as one line with control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


class _OwnedFileHandler(logging.handlers.WatchedFileHandler):
    """WatchedFileHandler whose file (first open and reopen after rotation) is opened by
    `open_owned`: no link followed, no file of another owner written. A file that cannot be
    reopened (a link planted after rotation) ends this handler with one line on stderr; it
    never makes the logging call, and with it the command, fail."""

    _given_up = False

    def _open(self):
        fd = open_owned(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors="backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        if self._given_up:
            return
        try:
            self.reopenIfNeeded()
            if self.stream is None:
                self.stream = self._open()
        except OSError as err:
            self._given_up = True
            self.stream = None
            sys.stderr.write(escape_controls(f"hpc-bridge: cannot write log file {self.baseFilename}: "
                                             f"{err.strerror or err}") + "\n")
            return
        logging.StreamHandler.emit(self, record)


def ensure_private_dir(path: str) -> None:
    """Create a directory readable by its owner only (state and logs may name hosts and ids);
    an existing one of ours that others can read is tightened."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, st.st_mode & 0o700)


def setup_logging(command: str, log_dir: str | None = None, verbose: int = 0) -> tuple[str | None, str | None]:
    """Configure the hpc_bridge logger. Returns (the log file in use or None, why the log file
    cannot be written or None): when it cannot, warnings and errors go to stderr instead, and
    the caller says so."""
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
        stderr.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
        stderr.addFilter(redact)
        logger.addHandler(stderr)
    path = None
    if log_dir:
        path = os.path.join(log_dir, f"{command}.log")
        try:
            ensure_private_dir(log_dir)
            # Many hook processes write the same file at once: leave rotation to logrotate
            # (install-hooks --logrotate-dir writes the snippet) and reopen the file when it has been rotated.
            handler = _OwnedFileHandler(path)
        except OSError as err:
            problem = escape_controls(f"cannot write log file {path}: {err.strerror or err}")
            if not verbose:  # the warnings and errors the file would have had still show somewhere
                fallback = logging.StreamHandler(sys.stderr)
                fallback.setLevel(logging.WARNING)
                fallback.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
                fallback.addFilter(redact)
                logger.addHandler(fallback)
            return None, problem
        handler.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
        handler.setFormatter(OneLineFormatter(_FORMAT))
        handler.addFilter(redact)
        logger.addHandler(handler)
    return path, None


def node_names(names: Iterable[str]) -> str:
    """Node names for a log line: a Slurm hostlist (as slurmctld logs them), or a plain sorted
    list when a name cannot be part of one (Slurm accepts `a-1]` as a name; a log line must
    never be what makes a hook fail)."""
    from hpc_bridge.hostlist import compress_or_list

    return compress_or_list(names)


def log_per_message(logger: logging.Logger, level: int, messages: Mapping[str, str], template: str = "%s: %s") -> None:
    """One log line per distinct message, naming its nodes with `node_names`. A hook over 5,000
    nodes writes a handful of lines, not 5,000: formatting and writing a record per node was a
    measurable share of the resume hook's time."""
    by_message: dict[str, list[str]] = {}
    for name, message in messages.items():
        by_message.setdefault(message, []).append(name)
    for message, names in by_message.items():
        logger.log(level, template, node_names(names), message)
