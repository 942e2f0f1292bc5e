"""Reading slurm.conf as Slurm does: its global settings and NodeName lines, following
`include` lines (globs, relative to slurm.conf's directory), the latest value of a key winning.

`parse_slurm_conf_text()` is pure (includes come through a `read` callable); `read_slurm_conf()`
reads the files; `slurm_conf_path()` is the slurm.conf the hooks' Slurm commands use.
"""

from __future__ import annotations

import glob
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from hpc_bridge.errors import ConfigError

# Multi-key record lines (NodeName=... CPUs=...): not global settings.
_RECORD_KEYS = frozenset({"nodename", "partitionname", "nodeset", "downnodes", "frontendname", "switchname"})


@dataclass
class SlurmConf:
    """Global settings of a slurm.conf and its includes (keys lower-cased, latest value wins)."""

    path: str
    values: dict[str, str] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # key -> "file:line" of the effective value
    keys: dict[str, str] = field(default_factory=dict)  # lower -> as written
    occurrences: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # key -> [(value, "file:line")]
    node_names: list[str] = field(default_factory=list)  # NodeName= hostlists (not DEFAULT), in order
    includes: list[str] = field(default_factory=list)  # as resolved paths
    missing_includes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        return self.values.get(key.lower())


def _strip_comment(line: str) -> str:
    out = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line) and line[i + 1] == "#":
            out.append("#")
            i += 2
            continue
        if ch == "#":
            break
        out.append(ch)
        i += 1
    return "".join(out).strip()


def parse_slurm_conf_text(text: str, source: str, conf: SlurmConf, base_dir: str,
                          read: Callable[[str], str | None], depth: int = 0) -> None:
    """Add the settings of one file to `conf`, following includes through `read(path)` (None:
    missing). Include paths are taken relative to `base_dir` (slurm.conf's directory)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i]
        while line.endswith("\\") and i + 1 < len(lines):  # continuation lines
            i += 1
            line = line[:-1] + lines[i]
        i += 1
        line = _strip_comment(line)
        if not line:
            continue
        head, _, rest = line.partition(" ")
        if head.lower() == "include":
            pattern = rest.strip()
            if not os.path.isabs(pattern):
                pattern = os.path.join(base_dir, pattern)
            matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
            for path in matches or [pattern]:
                conf.includes.append(path)
                if depth > 10:
                    conf.errors.append(f"{source}:{lineno}: includes nested too deep")
                    continue
                sub = read(path)
                if sub is None:
                    conf.missing_includes.append(path)
                    continue
                parse_slurm_conf_text(sub, path, conf, base_dir, read, depth + 1)
            continue
        try:
            tokens = shlex.split(line, posix=True)
        except ValueError:
            conf.errors.append(f"{source}:{lineno}: unbalanced quotes")
            continue
        if not tokens or "=" not in tokens[0]:
            conf.errors.append(f"{source}:{lineno}: not Key=Value: {line[:60]}")
            continue
        record = tokens[0].split("=", 1)
        if record[0].lower() in _RECORD_KEYS:
            if record[0].lower() == "nodename" and record[1] and record[1].upper() != "DEFAULT":
                conf.node_names.append(record[1])
            continue
        for tok in tokens:
            key, eq, value = tok.partition("=")
            if not eq or not key:
                continue
            conf.values[key.lower()] = value
            conf.keys[key.lower()] = key
            conf.where[key.lower()] = f"{source}:{lineno}"
            conf.occurrences.setdefault(key.lower(), []).append((value, f"{source}:{lineno}"))


def _read_or_none(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it: {err.strerror or err}") from None
    except ValueError:  # a NUL in an Include line
        raise ConfigError(f"{path!r}: not a usable path") from None


def read_slurm_conf(path: str, skip: Iterable[str] = ()) -> SlurmConf:
    """slurm.conf and its includes; included files in `skip` are listed but not read."""
    text = _read_or_none(path)
    if text is None:
        raise ConfigError(f"slurm.conf {path} not found (give --slurm-conf-dir, or [slurm] conf_dir)")
    skipped = {os.path.normpath(p) for p in skip}

    def read(included: str) -> str | None:
        return "" if os.path.normpath(included) in skipped else _read_or_none(included)

    conf = SlurmConf(path=path)
    parse_slurm_conf_text(text, path, conf, os.path.dirname(path), read)
    return conf




def slurm_conf_path(cfg) -> str:
    """The slurm.conf the hooks' Slurm commands use (same rule as Slurm.from_config)."""
    from hpc_bridge.slurm import Slurm

    return Slurm.from_config(cfg).slurm_conf or os.path.join(cfg.slurm.conf_dir, "slurm.conf")
