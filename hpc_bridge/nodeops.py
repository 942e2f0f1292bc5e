"""What the hooks, the follower and repair share beyond the pure facts (hpc_bridge.cloud,
hpc_bridge.reasons): telling Slurm a node is down and why, taking a VM size's idle nodes out of
service, counting boot failures and holding a size. (Recording, sending and settling API calls
is the journal's: hpc_bridge.journal.)"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Iterable, Mapping

from hpc_bridge.cloud import bucket_key
from hpc_bridge.errors import SlurmError, StateError, UsageError
from hpc_bridge.log import log_per_message, node_names
from hpc_bridge.reasons import hold_reason, reason
from hpc_bridge.state_records import Cooloff

if TYPE_CHECKING:
    from hpc_bridge.ports import SlurmControl, StateStorage

log = logging.getLogger("hpc_bridge.nodeops")


def remember_down(state, reasons: Mapping[str, str], now: float) -> None:
    """Remember why we mark nodes DOWN (in an open transaction): Slurm overwrites the reason with
    "ResumeTimeout reached" later, and resume-fail puts the real cause back."""
    state.remember_down({n: reason(r) for n, r in reasons.items()}, now)


def mark_down(slurm: SlurmControl, reasons: Mapping[str, str], store: StateStorage | None = None) -> int:
    """Slurm DOWN with a reason: one scontrol call per distinct reason. Returns calls made.
    With a store, the reasons are remembered first (see remember_down; a state file that cannot
    be written does not stop the marking). The log gets each reason in full: the one Slurm keeps
    is cut to fit. Each reason's call is made whatever happened to the others (one name Slurm
    does not know fails only its own group); SlurmError at the end names what failed."""
    if store is not None and reasons:
        try:
            with store.transaction() as state:
                remember_down(state, reasons, time.time())
        except StateError as err:
            log.error("DOWN reasons not remembered for resume-fail: %s", err)
    log_per_message(log, logging.INFO, reasons, "slurm DOWN %s: %s")
    return _set_state(slurm, reasons, "DOWN", "marked DOWN")


def end_power_ups(slurm: SlurmControl, reasons: Mapping[str, str]) -> int:
    """End these nodes' power-up at once, with a reason (POWER_DOWN_FORCE: Slurm requeues their
    jobs and runs suspend for them). For a VM whose slurmd predates the power-up: Slurm takes
    none back from such a slurmd and would wait ResumeTimeout, then resume-fail terminate the
    VM; DOWN alone does not end that wait. Calls, log and SlurmError as mark_down."""
    log_per_message(log, logging.WARNING, reasons, "slurm POWER_DOWN_FORCE %s: %s")
    return _set_state(slurm, reasons, "POWER_DOWN_FORCE", "powered down (power-up not ended, Slurm waits ResumeTimeout)")


def _set_state(slurm: SlurmControl, reasons: Mapping[str, str], state: str, done: str) -> int:
    """One `scontrol update State=state Reason=...` per distinct reason (see mark_down)."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for name, why in reasons.items():
        by_reason[reason(why)].append(name)
    calls = 0
    failures: list[tuple[list[str], SlurmError]] = []
    for why, names in sorted(by_reason.items()):
        try:
            calls += slurm.update_nodes(sorted(names), state=state, reason=why)
        except SlurmError as err:
            calls += 1
            log.error("%s: could not be %s: %s", node_names(names), done, err)
            failures.append((names, err))
    if failures:
        count = sum(len(names) for names, _ in failures)
        raise SlurmError(f"{count} node(s) could not be {done} ({len(failures)} of {len(by_reason)} "
                         f"scontrol call(s) failed; first: {failures[0][1]})")
    return calls


def idle_nodes_of(slurm: SlurmControl, nodemap, keys: Iterable[str], exclude: set[str]) -> dict[str, list[str]]:
    """The powered-down idle nodes of the VM sizes `keys` (bucket key -> names): one scontrol
    show, keyed by bucket_key."""
    keys = set(keys)
    per_key: dict[str, list[str]] = defaultdict(list)
    for name, node in slurm.show_nodes().items():
        entry = nodemap.get(name)
        if name in exclude or entry is None:
            continue
        key = bucket_key(entry.nodearray, entry.machine_type)
        if key in keys and "POWERED_DOWN" in node.state_flags and node.state == "IDLE":
            per_key[key].append(name)
    return dict(per_key)


def take_out_of_service(slurm: SlurmControl, nodemap, reasons: Mapping[str, str], exclude: set[str]
                        ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The powered-down idle nodes of the VM sizes in `reasons` (bucket key -> reason) go DOWN
    with that reason, so Slurm places jobs on other sizes; repair puts them back when the
    cool-off ends. Returns (name -> reason, bucket key -> the names taken out of service)."""
    per_key = idle_nodes_of(slurm, nodemap, reasons, exclude)
    return {n: reasons[k] for k, names in per_key.items() for n in names}, per_key




def count_boot_failures(store: StateStorage, failed: Mapping[str, list[str]], limit: int, now: float,
                        idle: Mapping[str, list[str]] | None = None) -> dict[str, str]:
    """Record VMs that were Ready but whose slurmd never registered (bucket key -> names), in one
    transaction. A VM size reaching `limit` such failures (0: never) is held out of service until
    an admin clears it (a bad image must not bill in a loop), holding its failed nodes and its
    `idle` ones (bucket key -> names: taken out of service with it). Returns bucket key ->
    reason for the sizes held from now on."""
    held: dict[str, str] = {}
    with store.transaction() as state:
        for key, names in sorted(failed.items()):
            times = state.boot_failures.setdefault(key, [])
            times.extend([now] * len(names))
            old = state.cooloffs.get(key)
            if old is not None and old.held:
                old.nodes = sorted(set(old.nodes) | set(names))
            elif limit and len(times) >= limit:
                why = f"{len(times)} VM(s) of this size were Ready but their slurmd never registered"
                state.cooloffs[key] = Cooloff(until=None, reason=why,
                                              nodes=sorted(set(names) | set((idle or {}).get(key, ()))))
                held[key] = why
    for key, why in held.items():
        log.error("%s", hold_reason(key, why))
    return held


def clear_hold(store: StateStorage, key: str, now: float) -> list[str]:
    """End the hold of one VM size (`hpc-bridge clear-hold`) and forget its boot failures.
    Returns the nodes it held out of service (repair puts them back to idle~)."""
    with store.transaction() as state:
        c = state.cooloffs.get(key)
        if c is None or not c.held:
            held = sorted(k for k, v in state.cooloffs.items() if v.held)
            raise UsageError(f"{key!r} is not held out of service (held: {', '.join(held) or 'none'})")
        c.until = now
        state.boot_failures.pop(key, None)
        nodes = list(c.nodes)
    log.info("%s: hold cleared by an admin; %s go back in service", key, node_names(nodes) or "no nodes")
    return nodes
