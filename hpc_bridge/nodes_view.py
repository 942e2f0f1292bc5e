"""`hpc-bridge nodes`: Slurm and the cloud side by side, one row per node.

`node_rows()` is the pure join of three snapshots taken once each: the Slurm node table (one
``scontrol -o show node``; None when slurmctld is not reachable), the cloud node records (one
GET nodes) and the state file (in-flight operations). `gather()` takes the snapshots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from hpc_bridge.api.models import Node
from hpc_bridge.errors import BridgeError
from hpc_bridge.cloud import FAILED_STATUS, RUNNING, index_by_name, seconds_since_created

log = logging.getLogger("hpc_bridge.nodes")

# sinfo's one-character suffixes, in the order sinfo prefers them.
_SUFFIXES = (
    ("POWERED_DOWN", "~"),
    ("POWERING_DOWN", "%"),
    ("POWER_DOWN", "!"),
    ("POWERING_UP", "#"),
    ("NOT_RESPONDING", "*"),
    ("COMPLETING", "@"),
)
_BASE_SHORT = {"ALLOCATED": "alloc", "MIXED": "mix", "COMPLETING": "comp", "UNKNOWN": "unk", "FUTURE": "futr"}

HEADERS = ["node", "slurm", "reason", "cloud", "target", "machine type", "ip", "pg", "age", "in flight"]


def slurm_state_short(state: str, flags: Iterable[str]) -> str:
    """The sinfo-style state of a node: ``idle~``, ``mix#``, ``down~``, ``drain*``, ..."""
    flags = {f.upper() for f in flags}
    base = state.upper()
    if "DRAIN" in flags:
        text = "drng" if base in ("ALLOCATED", "MIXED") else "drain"
    else:
        text = _BASE_SHORT.get(base, base.lower())
    for flag, suffix in _SUFFIXES:
        if flag in flags:
            return text + suffix
    return text


def format_age(seconds: float | None) -> str | None:
    """``45s``, ``12m``, ``3h05m``, ``2d04h``; None stays None."""
    if seconds is None:
        return None
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


@dataclass
class NodeRow:
    name: str
    slurm_state: str | None = None  # sinfo style (idle~); None: not in Slurm / Slurm unknown
    slurm_flags: list[str] = field(default_factory=list)
    reason: str | None = None
    nodearray: str | None = None
    status: str | None = None  # cloud Status
    target_state: str | None = None
    machine_type: str | None = None
    ip: str | None = None
    placement_group: str | None = None
    age: float | None = None  # seconds since the cloud VM was created (while it runs or failed)
    operation: str | None = None  # "create accepted (op 3f0c...)" of an open state-file record
    status_message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "slurmState": self.slurm_state,
            "slurmFlags": self.slurm_flags,
            "reason": self.reason,
            "nodearray": self.nodearray,
            "status": self.status,
            "targetState": self.target_state,
            "machineType": self.machine_type,
            "privateIp": self.ip,
            "placementGroup": self.placement_group,
            "ageSeconds": None if self.age is None else round(self.age),
            "inFlight": self.operation,
            "statusMessage": self.status_message,
        }

    def cells(self) -> list[Any]:
        return [self.name, self.slurm_state, self.reason, self.status, self.target_state, self.machine_type,
                self.ip, self.placement_group, format_age(self.age), self.operation]

    def matches_state(self, wanted: Sequence[str]) -> bool:
        """True when any wanted state names this node's Slurm state (short form, base or any
        flag, e.g. idle~ / idle / powered_down) or its cloud Status/TargetState (Ready, Failed)."""
        if not wanted:
            return True
        mine = {f.lower() for f in self.slurm_flags}
        for value in (self.slurm_state, self.status, self.target_state):
            if value:
                mine.add(value.lower())
        if self.slurm_state:
            mine.add(self.slurm_state.rstrip("~%!#*@").lower())
        return any(w.lower() in mine for w in wanted)


def _natural_key(name: str) -> tuple:
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def node_rows(
    slurm_nodes: Mapping[str, Any] | None,
    cloud_nodes: Sequence[Node],
    in_flight: Mapping[str, Any],
    now: float,
    *,
    names: Iterable[str] | None = None,
    states: Sequence[str] = (),
    nodemap: Mapping[str, Any] | None = None,
) -> list[NodeRow]:
    """Join Slurm nodes (name -> hpc_bridge.slurm.SlurmNode, or None when Slurm was not
    reachable), cloud node records and the state file's latest operation per node
    (name -> hpc_bridge.state_records.Operation; only open ones are shown) into rows sorted by name.

    `names` restricts the rows (a HOSTLIST); `states` keeps rows matching any of them.
    Without a Slurm table only nodes with a cloud record (or named explicitly) are listed.
    The node map (optional) fills nodearray / machine type / placement group of nodes
    that have no cloud record.
    """
    by_name = index_by_name(cloud_nodes)  # a live record wins over a terminated one of the same name
    wanted = list(dict.fromkeys(names)) if names is not None else None
    if wanted is not None:
        all_names = wanted
    else:
        all_names = set(by_name)
        if slurm_nodes:
            all_names |= set(slurm_nodes)
    rows = []
    for name in sorted(all_names, key=_natural_key):
        row = NodeRow(name=name)
        sn = slurm_nodes.get(name) if slurm_nodes else None
        if sn is not None:
            row.slurm_state = slurm_state_short(sn.state, sn.state_flags)
            row.slurm_flags = sorted(sn.state_flags)
            row.reason = sn.reason
        cn = by_name.get(name)
        entry = nodemap.get(name) if nodemap is not None else None
        if cn is not None:
            row.nodearray = cn.template
            row.status = cn.status
            row.target_state = cn.target_state
            row.machine_type = cn.machine_type
            row.ip = cn.private_ip
            row.placement_group = cn.placement_group_id
            row.status_message = cn.status_message
            if cn.status in RUNNING or cn.status == FAILED_STATUS:
                row.age = seconds_since_created(cn, now)
        elif entry is not None:
            row.nodearray = entry.nodearray
            row.machine_type = entry.machine_type
            row.placement_group = entry.placement_group
        if row.ip is None and sn is not None and sn.node_addr and sn.node_addr != name:
            row.ip = sn.node_addr
        op = in_flight.get(name)
        if op is not None and getattr(op, "open", False):
            ident = op.operation_id or op.request_id
            row.operation = f"{op.action} {op.outcome}" + (f" ({ident[:8]})" if ident else "")
        if row.matches_state(states):
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- gathering (I/O)


def _slurm_for(cfg):
    """Slurm.from_config, but refuse (SlurmError) when no slurm.conf is known: scontrol without
    one asks DNS for SRV records of the controller, off loopback."""
    import os

    from hpc_bridge.errors import SlurmError
    from hpc_bridge.slurm import Slurm

    slurm = Slurm.from_config(cfg, timeout=15.0)
    if slurm.slurm_conf is None and not os.path.isfile("/etc/slurm/slurm.conf"):
        raise SlurmError(f"no slurm.conf in [slurm] conf_dir {cfg.slurm.conf_dir} and SLURM_CONF is not set")
    return slurm


@dataclass
class NodesView:
    rows: list[NodeRow]
    warnings: list[str]
    slurm_ok: bool


def gather(cfg, client, *, hostlist: str | None = None, states: Sequence[str] = (), now: float | None = None,
           slurm=None) -> NodesView:
    """One scontrol show node, one GET nodes, one state-file read; then node_rows()."""
    import time

    from hpc_bridge.hostlist import expand
    from hpc_bridge.nodemap import load_nodemap
    from hpc_bridge.state import StateStore

    names = expand(hostlist) if hostlist else None
    warnings: list[str] = []
    slurm_nodes = None
    try:
        slurm = slurm or _slurm_for(cfg)
        slurm_nodes = slurm.show_nodes()
    except BridgeError as err:
        warnings.append(f"Slurm not reachable, showing cloud columns only: {err}")
    cloud = client.get_nodes().nodes
    in_flight: dict[str, Any] = {}
    try:
        in_flight = StateStore.from_config(cfg).read().latest_by_node()
    except BridgeError as err:
        warnings.append(f"state file not read, no in-flight column: {err}")
    try:
        nodemap = load_nodemap(cfg.nodemap_path)
    except BridgeError:
        nodemap = None
    rows = node_rows(slurm_nodes, cloud, in_flight, time.time() if now is None else now, names=names,
                     states=states, nodemap=nodemap)
    for w in warnings:
        log.warning("%s", w)
    return NodesView(rows=rows, warnings=warnings, slurm_ok=slurm_nodes is not None)
