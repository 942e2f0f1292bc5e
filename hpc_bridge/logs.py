"""`hpc-bridge logs HOSTLIST`: the log lines of hpc-bridge's commands that name any of the nodes.

Log lines name nodes as Slurm hostlists (`htc-f2sv2-[1-40]: create accepted`), so a plain text
search for one name misses most of them: `mentions()` expands every hostlist-looking word of a
line and looks the wanted names up in it.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Iterable, Iterator

from hpc_bridge import hostlist
from hpc_bridge.errors import ConfigError

# A word that may be a node name or a hostlist with bracketed ranges (`a-[1-3,7]x[1-2]`).
_WORD = re.compile(r"[A-Za-z0-9_.-]*(?:\[[0-9,-]+\][A-Za-z0-9_.-]*)+|[A-Za-z0-9_.-]+")


def mentions(line: str, wanted: set[str]) -> bool:
    """True when the line names one of `wanted`, alone or inside a hostlist."""
    for m in _WORD.finditer(line):
        word = m.group()
        if "[" not in word:
            if word in wanted:
                return True
            continue
        try:
            if not wanted.isdisjoint(hostlist.expand(word)):
                return True
        except ValueError:
            continue
    return False


def log_files(log_dir: str) -> list[str]:
    """The commands' logs and their rotated copies (not compressed ones), oldest copy first."""
    files = glob.glob(os.path.join(glob.escape(log_dir), "*.log")) + \
        glob.glob(os.path.join(glob.escape(log_dir), "*.log.[0-9]*"))
    return sorted((f for f in files if not f.endswith((".gz", ".xz", ".bz2", ".zst"))),
                  key=lambda f: (os.path.basename(f).split(".log")[0], -_rotation(f)))


def _rotation(path: str) -> int:
    tail = path.rsplit(".log", 1)[1].lstrip(".")
    return int(tail) if tail.isdigit() else 0


def matching_lines(files: Iterable[str], wanted: set[str]) -> Iterator[tuple[str, str]]:
    """(command, line) for every line of `files` naming a wanted node, in time order (the lines
    start with their timestamp; lines of one file keep their order)."""
    found: list[tuple[str, int, str, str]] = []
    for index, path in enumerate(files):
        command = os.path.basename(path).split(".log")[0]
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if mentions(line, wanted):
                        found.append((line[:23], index, command, line.rstrip("\n")))
        except OSError as err:
            raise ConfigError(f"{path}: cannot read it ({err.strerror or err})") from None
    for _, _, command, line in sorted(found, key=lambda t: (t[0], t[1])):
        yield command, line
