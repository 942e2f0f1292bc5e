"""A recording Slurm port for the apply code's in-process tests (hpc_bridge.ports.SlurmControl).

It serves the node states a test gives it and records every update the apply code asks for,
after the checks the real edge (hpc_bridge.slurm.Slurm) makes before it runs scontrol, so a
name or reason the real one would refuse fails here too. It stands in for the port, not for
scontrol: the real-Slurm tests (test_hooks.py, test_repair_slurm.py, ...) run the real thing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

from hpc_bridge.errors import SlurmError
from hpc_bridge.slurm import _STATES_NEEDING_REASON, SlurmNode, _check_name, _check_reason, _check_token

POWERED_DOWN_IDLE = frozenset({"IDLE", "CLOUD", "POWERED_DOWN"})


def node(name: str, *flags: str, reason: str | None = None, node_addr: str | None = None) -> SlurmNode:
    """A Slurm node; the first flag is the base state (default: idle~, IDLE+CLOUD+POWERED_DOWN)."""
    flags = flags or tuple(sorted(POWERED_DOWN_IDLE, key=lambda f: f != "IDLE"))
    return SlurmNode(name=name, state=flags[0], state_flags=frozenset(flags), reason=reason,
                     node_addr=node_addr or name, node_hostname=name)


@dataclass(frozen=True)
class Update:
    """One `scontrol update` the apply code asked for."""

    names: tuple[str, ...]
    state: str | None = None
    reason: str | None = None
    addresses: tuple[tuple[str, str | None], ...] | None = None  # (NodeAddr, NodeHostName) per name


class RecordingSlurm:
    def __init__(self, nodes: Iterable[SlurmNode] = ()):
        self.nodes: dict[str, SlurmNode] = {n.name: n for n in nodes}
        self.updates: list[Update] = []
        self.calls = 0

    # ------------------------------------------------------------------ the port

    def show_nodes(self) -> dict[str, SlurmNode]:
        self.calls += 1
        return dict(self.nodes)

    def update_nodes(self, names: Iterable[str], state: str | None = None, reason: str | None = None,
                     node_addr: Sequence[str] | None = None, node_hostname: Sequence[str] | None = None) -> int:
        names = [_check_name(n) for n in names]
        if state is not None and state.upper() in _STATES_NEEDING_REASON and reason is None:
            raise SlurmError(f"State={state} needs a reason")
        if reason is not None:
            reason = _check_reason(reason)
        if not names:
            return 0
        unknown = [n for n in names if n not in self.nodes]
        if unknown:  # as slurmctld: one unknown name fails the whole call
            self.calls += 1
            raise SlurmError(f"scontrol update: invalid node name {unknown[0]}")
        addresses = None
        if node_addr is not None:
            hosts = node_hostname or [None] * len(names)
            addresses = tuple((_check_token("NodeAddr", a), h and _check_token("NodeHostName", h))
                              for a, h in zip(node_addr, hosts))
        self.updates.append(Update(tuple(names), state and state.upper(), reason, addresses))
        self._apply(names, state and state.upper(), reason, addresses)
        self.calls += 1
        return 1

    def set_addresses(self, mapping: Mapping[str, tuple[str, str | None]]) -> int:
        names = sorted(mapping)
        if not names:
            return 0
        return self.update_nodes(names, node_addr=[mapping[n][0] for n in names],
                                 node_hostname=[mapping[n][1] or mapping[n][0] for n in names])

    def reset_addresses(self, names: Iterable[str]) -> int:
        names = sorted(set(names))
        return self.update_nodes(names, node_addr=names, node_hostname=names) if names else 0

    # ------------------------------------------------------------------ what a test reads

    def _apply(self, names, state, reason, addresses) -> None:
        """Keep the served states coherent with what was asked (base state and reason only)."""
        for i, name in enumerate(names):
            n = self.nodes[name]
            if state == "DOWN":
                n = replace(n, state="DOWN", state_flags=(n.state_flags - {n.state}) | {"DOWN"}, reason=reason)
            elif state == "RESUME":
                n = replace(n, state="IDLE", state_flags=(n.state_flags - {n.state}) | {"IDLE"}, reason=None)
            elif state == "POWER_DOWN_FORCE":
                n = replace(n, state="IDLE", state_flags=POWERED_DOWN_IDLE, reason=reason or n.reason)
            if addresses is not None:
                n = replace(n, node_addr=addresses[i][0], node_hostname=addresses[i][1])
            self.nodes[name] = n

    def down(self) -> dict[str, str]:
        """Every name asked DOWN, with the reason it was asked with last."""
        return {n: u.reason for u in self.updates if u.state == "DOWN" for n in u.names}

    def with_state(self, state: str) -> list[str]:
        return sorted({n for u in self.updates if u.state == state for n in u.names})
