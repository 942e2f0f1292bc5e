"""Suspend and resume-fail: shut down the cloud nodes behind Slurm names.

`plan_suspend` (hpc_bridge.suspend_plan) decides per name. `run_suspend` makes one GET nodes, one API
call per action and, in ip mode, one scontrol call to reset the nodes' addresses.

Resume-fail terminates what is left of nodes that never came up and puts the cloud's reason in
Slurm's (so `sinfo -R` says why).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpc_bridge import hostlist
from hpc_bridge.api.models import Node
from hpc_bridge.cloud import READY, bucket_key, index_by_name
from hpc_bridge.config import Config
from hpc_bridge.errors import ApiError, SlurmError
from hpc_bridge.journal import Call, Journal, record_done, record_unsent
from hpc_bridge.log import log_per_message, node_names
from hpc_bridge.nodemap import NodeMap
from hpc_bridge.nodeops import count_boot_failures, idle_nodes_of, mark_down
from hpc_bridge.reasons import hold_reason
from hpc_bridge.suspend_plan import SuspendPlan, fail_reason, plan_suspend

if TYPE_CHECKING:
    from hpc_bridge.ports import CallJournal, Clock, ClusterApi, SlurmControl, StateStorage

log = logging.getLogger("hpc_bridge.suspend")


@dataclass
class SuspendReport:
    names: int = 0
    by_action: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why the call did not go through
    keep_alive: list[str] = field(default_factory=list)
    nothing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    api_calls: int = 0
    scontrol_calls: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unknown

    def summary(self, verb: str = "suspend") -> str:
        acted = ", ".join(f"{len(v)} {k}" for k, v in sorted(self.by_action.items())) or "no action"
        return (f"{verb} {self.names} node(s): {acted}; {len(self.nothing)} with nothing to do, "
                f"{len(self.keep_alive)} KeepAlive, {len(self.unknown)} unknown, {len(self.failed)} failed; "
                f"{self.api_calls} API call(s), {self.scontrol_calls} scontrol call(s)")


def _apply_actions(plan: SuspendPlan, journal: CallJournal, deadline: float, report: SuspendReport) -> None:
    calls = [
        Call(action, sorted(targets), {"ids": [targets[n] for n in sorted(targets)]}, deadline)
        for action, targets in sorted(plan.actions.items())
    ]
    journal.record_and_send(calls)
    for call in calls:
        if call.result is None:
            for name in call.nodes:
                report.failed[name] = f"{call.action}: {call.error}"
            continue
        errors = call.result.refused
        accepted = []
        for name in call.nodes:
            if name in errors:
                report.failed[name] = f"{call.action} refused: {errors[name] or 'no message'}"
            else:
                accepted.append(name)
        if accepted:
            report.by_action.setdefault(call.action, []).extend(accepted)
            log.info("%s: %s accepted (operation %s)", node_names(accepted), call.action,
                     call.result.operation_id)


def run_suspend(cfg: Config, expr: str, *, client: ClusterApi, slurm: SlurmControl, store: StateStorage,
                nodemap: NodeMap, now: Clock = time.time) -> SuspendReport:
    return _shut_down(cfg, expr, client=client, slurm=slurm, store=store, nodemap=nodemap, now=now, failing=False)


def _shut_down(cfg: Config, expr: str, *, client: ClusterApi, slurm: SlurmControl, store: StateStorage,
               nodemap: NodeMap, now: Clock, failing: bool) -> SuspendReport:
    """Suspend (failing=False) or resume-fail (failing=True: terminate whatever is there, KeepAlive
    or not, and put the cause in the Slurm reason)."""
    names = hostlist.expand(expr)
    report = SuspendReport(names=len(names))
    if not names:
        return report
    requests_before, calls_before = client.request_count, slurm.calls
    journal = Journal(store, client, now)
    deadline = now() + cfg.resume.resume_timeout
    try:
        cloud = index_by_name(client.get_nodes().nodes)
    except ApiError as err:
        # Record the intent, not sent, whatever the error was, so that repair sends it.
        call = Call("terminate" if failing else "shutdown", names, {"names": names}, deadline)
        with store.transaction() as state:
            record_unsent(state, call, now(), str(err))
        if failing:
            mark_down(slurm, {n: "resume failed; cluster API unreachable, VM cleanup left to repair" for n in names})
        report.failed = {n: str(err) for n in names}
    else:
        plan = plan_suspend(names, nodemap, cloud, cfg, policy_override="terminate" if failing else None,
                            keep_alive=not failing)
        if plan.keep_alive:
            log.info("%s: KeepAlive is set, VM left running", node_names(plan.keep_alive))
            try:
                mark_down(slurm, plan.down)
            except SlurmError as err:
                report.failed.update(dict.fromkeys(plan.keep_alive, f"not marked DOWN: {err}"))
        log_per_message(log, logging.INFO, plan.nothing, "%s: %s, nothing to do")
        if plan.unknown:
            log.error("%s: unknown node (not in nodemap.json and no cloud node)", node_names(plan.unknown))
        _apply_actions(plan, journal, deadline, report)
        _mark_intent(store, [n for n in plan.nothing if n in nodemap], now())
        report.keep_alive, report.nothing, report.unknown = plan.keep_alive, sorted(plan.nothing), plan.unknown
        if failing:
            recorded = store.read().failure_reasons(now(), 2 * cfg.resume.resume_timeout + 600)
            reasons = {n: fail_reason(cloud.get(n), recorded.get(n)) for n in names if n in nodemap}
            reasons.update(_hold_failing_sizes(cfg, store, slurm, nodemap, cloud, names, now()))
            mark_down(slurm, reasons)
        if cfg.slurm.address_mode in ("ip", "hostname"):
            known = [n for n in names if n in nodemap]
            if known:
                slurm.reset_addresses(known)
    report.api_calls = client.request_count - requests_before
    report.scontrol_calls = slurm.calls - calls_before
    return report


def _mark_intent(store: StateStorage, nothing: list[str], now: float) -> None:
    """Nodes with nothing to stop yet but a create/start in flight: record the suspend, so the
    resume that is still creating them terminates what it makes (Slurm's later intent wins)."""
    # A lock-free look first: usually nothing is in flight and the state file is left alone.
    if not nothing or not any(n in store.read().resume_in_flight(now) for n in nothing):
        return
    with store.transaction() as state:  # and again under the lock, where it counts
        in_flight = state.resume_in_flight(now)
        racing = [n for n in nothing if n in in_flight]
        if racing:
            record_done(state, "shutdown", racing, now, "nothing to stop yet: a create/start was in flight")
    if not racing:
        return
    log.info("%s: suspended while a create/start is in flight; the resume hook will stop them",
             node_names(racing))


# --------------------------------------------------------------------------- resume-fail


def _hold_failing_sizes(cfg: Config, store: StateStorage, slurm: SlurmControl, nodemap: NodeMap,
                        cloud: dict[str, Node], names: list[str], now: float) -> dict[str, str]:
    """Count the VMs that were Ready but never registered, per VM size; a size that reaches
    [resume] boot_failure_limit is held, its idle powered-down nodes out of service too (read
    before the one transaction that counts and holds). Returns name -> reason for those nodes."""
    never: dict[str, list[str]] = {}
    for name in names:
        node, entry = cloud.get(name), nodemap.get(name)
        if entry is not None and node is not None and node.status == READY:
            never.setdefault(bucket_key(entry.nodearray, entry.machine_type), []).append(name)
    if not never:
        return {}
    limit = cfg.resume.boot_failure_limit
    idle: dict[str, list[str]] = {}
    if limit:
        try:
            idle = idle_nodes_of(slurm, nodemap, never, exclude=set(names))
        except SlurmError as err:
            log.error("boot failures: the idle nodes of %s not taken out of service: %s", ", ".join(sorted(never)), err)
    held = count_boot_failures(store, never, limit, now, idle)
    return {n: hold_reason(k, why) for k, why in held.items() for n in idle.get(k, ())}


def run_resume_fail(cfg: Config, expr: str, *, client: ClusterApi, slurm: SlurmControl, store: StateStorage,
                    nodemap: NodeMap, now: Clock = time.time) -> SuspendReport:
    return _shut_down(cfg, expr, client=client, slurm=slurm, store=store, nodemap=nodemap, now=now, failing=True)
