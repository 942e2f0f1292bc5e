"""The node map: Slurm node name -> (nodearray, machine type, bucket, placement group, partition).

Written by `hpc-bridge partitions` next to partitions.conf (`<conf_dir>/nodemap.json`), read by
the hooks and repair on every call, so loading must be cheap even for 100,000 names.

File format (version 2, compact: one record per name range, never one per name):

    {
      "version": 2,
      "cluster": "demo",
      "groups": [
        {"prefix": "hpc-hb120rsv3-", "first": 1, "last": 300,
         "nodearray": "hpc", "machine_type": "Standard_HB120rs_v3",
         "bucket_id": "...", "partition": "hpc",
         "placement_group_size": 100, "placement_group_prefix": "hpc-hb120rsv3-pg"},
        ...
      ]
    }

A group covers the names `<prefix><n>` for first <= n <= last (no zero padding). When
`placement_group_size` > 0, name n belongs to placement group
`<placement_group_prefix><(n - 1) // placement_group_size + 1>` (blocks of that many consecutive
names, counted from 1); when it is 0 the names have no placement group (null).

For hand-written maps (tests, other tools) the loader also accepts version 1: a flat
`"nodes": {"<name>": {"nodearray":..,"machine_type":..,"bucket_id":..,"placement_group":..,
"partition":..}}`; both keys may appear in one file.

Lookup cost: `get(name)` splits the trailing number off the name and finds its group in a dict,
so a 100,000-name map loads in well under a millisecond and answers in microseconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from hpc_bridge.errors import ConfigError
from hpc_bridge.hostlist import MAX_TOTAL

NODEMAP_FILE = "nodemap.json"
FORMAT_VERSION = 2


@dataclass(frozen=True)
class NodeMapEntry:
    nodearray: str
    machine_type: str
    bucket_id: str
    placement_group: str | None
    partition: str


@dataclass(frozen=True)
class NodeRange:
    """A block of names `<prefix><first>` .. `<prefix><last>` sharing one bucket."""

    prefix: str
    first: int
    last: int
    nodearray: str
    machine_type: str
    bucket_id: str
    partition: str
    placement_group_size: int = 0
    placement_group_prefix: str = ""

    def __post_init__(self) -> None:
        if self.first < 1 or self.last < self.first:
            raise ValueError(f"bad range {self.prefix}[{self.first}-{self.last}]")
        if self.placement_group_size < 0:
            raise ValueError("placement_group_size must be >= 0")
        object.__setattr__(self, "_entries", {})  # placement group -> NodeMapEntry (a cache)

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    @property
    def expression(self) -> str:
        """The Slurm hostlist expression of the range (`hpc-f4sv2-[1-10]`, or one name)."""
        return range_expression(self.prefix, self.first, self.last)

    def names(self) -> list[str]:
        p = self.prefix
        return [f"{p}{i}" for i in range(self.first, self.last + 1)]

    def placement_group_of(self, index: int) -> str | None:
        if self.placement_group_size <= 0:
            return None
        return f"{self.placement_group_prefix}{(index - 1) // self.placement_group_size + 1}"

    def entry(self, index: int) -> NodeMapEntry:
        # One (immutable) entry per placement group, shared: a look-up of every name of a big
        # cluster made as many objects as names.
        group = self.placement_group_of(index)
        entry = self._entries.get(group)
        if entry is None:
            entry = self._entries[group] = NodeMapEntry(
                nodearray=self.nodearray,
                machine_type=self.machine_type,
                bucket_id=self.bucket_id,
                placement_group=group,
                partition=self.partition,
            )
        return entry

    def to_json(self) -> dict[str, Any]:
        # the fields are flat (str, int): asdict's deep copy of each value would only cost time
        return {f.name: getattr(self, f.name) for f in fields(self)}


def range_expression(prefix: str, first: int, last: int) -> str:
    if first == last:
        return f"{prefix}{first}"
    return f"{prefix}[{first}-{last}]"


_ASCII_DIGITS = "0123456789"


def split_name(name: str) -> tuple[str, int] | None:
    """`hpc-f4sv2-12` -> ("hpc-f4sv2-", 12); None when the name has no unpadded trailing number."""
    prefix = name.rstrip(_ASCII_DIGITS)  # in C: repair looks up every Slurm node name
    start = len(prefix)
    if start == len(name) or start == 0:
        return None
    digits = name[start:]
    if len(digits) > 1 and digits[0] == "0":
        return None  # generated names are never zero-padded
    return prefix, int(digits)


class NodeMap(Mapping[str, NodeMapEntry]):
    """Read-only map of Slurm node name -> NodeMapEntry.

    Dict-like: `nm.get(name)`, `name in nm`, `nm[name]` (KeyError), `len(nm)`, iteration over
    names (in file order). Extras: `.cluster`, `.names()`, `.ranges` (the NodeRange groups),
    `.range_of(name)`.
    """

    def __init__(self, cluster: str, ranges: Iterable[NodeRange] = (), nodes: Mapping[str, NodeMapEntry] | None = None):
        self.cluster = cluster
        self.ranges: tuple[NodeRange, ...] = tuple(ranges)
        self._by_prefix: dict[str, list[NodeRange]] = {}
        for r in self.ranges:
            self._by_prefix.setdefault(r.prefix, []).append(r)
        self._nodes: dict[str, NodeMapEntry] = dict(nodes or {})
        self._len = sum(r.count for r in self.ranges) + len(self._nodes)

    # --------------------------------------------------------------- lookup
    def range_of(self, name: str) -> NodeRange | None:
        split = split_name(name)
        if split is None:
            return None
        prefix, index = split
        for r in self._by_prefix.get(prefix, ()):
            if r.first <= index <= r.last:
                return r
        return None

    def get(self, name: str, default: Any = None) -> NodeMapEntry | Any:  # type: ignore[override]
        entry = self._nodes.get(name)
        if entry is not None:
            return entry
        split = split_name(name)
        if split is not None:
            prefix, index = split
            for r in self._by_prefix.get(prefix, ()):
                if r.first <= index <= r.last:
                    return r.entry(index)
        return default

    def __getitem__(self, name: str) -> NodeMapEntry:
        entry = self.get(name)
        if entry is None:
            raise KeyError(name)
        return entry

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for r in self.ranges:
            p = r.prefix
            for i in range(r.first, r.last + 1):
                yield f"{p}{i}"
        yield from self._nodes

    def names(self) -> list[str]:
        out: list[str] = []
        for r in self.ranges:
            out.extend(r.names())
        out.extend(self._nodes)
        return out

    def __repr__(self) -> str:
        return f"NodeMap(cluster={self.cluster!r}, names={self._len}, ranges={len(self.ranges)})"


# ------------------------------------------------------------------- file format


def dump_nodemap(nodemap: NodeMap) -> str:
    """The JSON text of a node map (version 2, one line per range, stable order)."""
    out = ["{", f'  "version": {FORMAT_VERSION},', f'  "cluster": {json.dumps(nodemap.cluster)},']
    groups = ",\n".join("    " + json.dumps(r.to_json()) for r in nodemap.ranges)
    out.append('  "groups": [' + ("\n" + groups + "\n  ]" if groups else "]") + ("," if nodemap._nodes else ""))
    if nodemap._nodes:
        nodes = ",\n".join(f"    {json.dumps(n)}: {json.dumps(asdict(e))}" for n, e in nodemap._nodes.items())
        out.append('  "nodes": {\n' + nodes + "\n  }")
    out.append("}")
    return "\n".join(out) + "\n"


_ENTRY_KEYS = ("nodearray", "machine_type", "bucket_id", "placement_group", "partition")
_RANGE_KEYS = ("prefix", "first", "last", "nodearray", "machine_type", "bucket_id", "partition")


def parse_nodemap(text: str, source: str = "nodemap") -> NodeMap:
    """Parse the JSON text of a node map; any problem -> ConfigError naming `source`."""
    hint = "run `hpc-bridge partitions` to regenerate it"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"node map {source} is not valid JSON ({err.msg} at line {err.lineno}); {hint}") from None
    except RecursionError:
        raise ConfigError(f"node map {source} is nested too deeply; {hint}") from None
    if not isinstance(data, dict) or data.get("version") not in (1, 2):
        raise ConfigError(f"node map {source} has no known format version; {hint}")
    cluster = data.get("cluster")
    if not isinstance(cluster, str):
        raise ConfigError(f"node map {source} has no cluster name; {hint}")
    ranges: list[NodeRange] = []
    nodes: dict[str, NodeMapEntry] = {}
    try:
        for g in data.get("groups") or []:
            missing = [k for k in _RANGE_KEYS if k not in g]
            if missing:
                raise ValueError(f"a group lacks {', '.join(missing)}")
            ranges.append(
                NodeRange(
                    prefix=str(g["prefix"]),
                    first=int(g["first"]),
                    last=int(g["last"]),
                    nodearray=str(g["nodearray"]),
                    machine_type=str(g["machine_type"]),
                    bucket_id=str(g["bucket_id"]),
                    partition=str(g["partition"]),
                    placement_group_size=int(g.get("placement_group_size") or 0),
                    placement_group_prefix=str(g.get("placement_group_prefix") or ""),
                )
            )
        raw_nodes = data.get("nodes") or {}
        if not isinstance(raw_nodes, dict):
            raise ValueError('"nodes" is not an object')
        for name, e in raw_nodes.items():
            missing = [k for k in _ENTRY_KEYS if k not in e and k != "placement_group"]
            if missing:
                raise ValueError(f"node {name!r} lacks {', '.join(missing)}")
            pg = e.get("placement_group")
            nodes[str(name)] = NodeMapEntry(
                nodearray=str(e["nodearray"]),
                machine_type=str(e["machine_type"]),
                bucket_id=str(e["bucket_id"]),
                placement_group=None if pg is None else str(pg),
                partition=str(e["partition"]),
            )
        if sum(r.count for r in ranges) + len(nodes) > MAX_TOTAL:  # as many as a hostlist may hold
            raise ValueError(f"more than {MAX_TOTAL:,} names")
    except (TypeError, ValueError, AttributeError, OverflowError) as err:
        raise ConfigError(f"node map {source} is malformed ({err}); {hint}") from None
    return NodeMap(cluster, ranges, nodes)


def nodemap_file(path: str | os.PathLike[str]) -> Path:
    """`path` itself when it names a file, else `<path>/nodemap.json` (a conf_dir)."""
    p = Path(path)
    return p / NODEMAP_FILE if p.is_dir() else p


def load_nodemap(path: str | os.PathLike[str]) -> NodeMap:
    """Load the node map from a conf_dir (or the file itself).

    Missing or corrupt -> ConfigError, one line naming the file and telling to run
    `hpc-bridge partitions`.
    """
    file = nodemap_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"node map {file} not found; run `hpc-bridge partitions` to generate it") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise ConfigError(f"node map {file}: cannot read it ({reason}); run `hpc-bridge partitions`") from None
    return parse_nodemap(text, str(file))
