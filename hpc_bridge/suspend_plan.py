"""The suspend planner: per name, the nodearray's policy (shutdown = the node's own
ShutdownPolicy, deallocate, or terminate), nothing for names with no live cloud node (suspend
may be called twice), KeepAlive nodes left running but DOWN in Slurm (see KEPT_RUNNING); and why a node never came up, for
resume-fail's Slurm reason. Pure; `hpc_bridge.suspend` gathers and applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpc_bridge.api.models import Node
from hpc_bridge.cloud import DEALLOCATED, FAILED_STATUS, GONE, READY, TRANSITIONAL_DOWN
from hpc_bridge.config import Config
from hpc_bridge.nodemap import NodeMap
from hpc_bridge.reasons import KEPT_RUNNING, NEVER_REGISTERED, REASON_PREFIX


@dataclass
class SuspendPlan:
    actions: dict[str, dict[str, str]] = field(default_factory=dict)  # action -> {name: node id}
    keep_alive: list[str] = field(default_factory=list)
    kept_running: list[str] = field(default_factory=list)  # of keep_alive, those Ready: a slurmd outlives the power-down
    nothing: dict[str, str] = field(default_factory=dict)  # name -> why nothing to do
    unknown: list[str] = field(default_factory=list)  # neither in the node map nor in the cloud

    @property
    def down(self) -> dict[str, str]:
        """Slurm DOWN reasons: a Ready KeepAlive VM stays up with its slurmd, which Slurm would not
        take back at a power-up. One still booting or failed is left to the next power-up (resume
        ends it at once if the VM is Ready by then, and replaces a failed one)."""
        return dict.fromkeys(self.kept_running, KEPT_RUNNING)


def plan_suspend(names: list[str], nodemap: NodeMap, cloud: dict[str, Node], cfg: Config,
                 policy_override: str | None = None, keep_alive: bool = True) -> SuspendPlan:
    plan = SuspendPlan()
    for name in dict.fromkeys(names):
        entry = nodemap.get(name)
        node = cloud.get(name)
        if node is None or node.status in GONE:
            if entry is None:
                plan.unknown.append(name)
            else:
                plan.nothing[name] = "no cloud node"
            continue
        if node.status in TRANSITIONAL_DOWN or node.status == DEALLOCATED:
            plan.nothing[name] = f"cloud node already {node.status}"
            continue
        if node.keep_alive and keep_alive:
            plan.keep_alive.append(name)
            if node.status == READY:
                plan.kept_running.append(name)
            continue
        array = entry.nodearray if entry else (node.template or "")
        policy = policy_override or cfg.partitions.for_array(array).suspend_policy
        if node.status == FAILED_STATUS:
            policy = "terminate"  # a failed VM is never worth keeping deallocated
        plan.actions.setdefault(policy, {})[name] = node.node_id or ""
    return plan


def fail_reason(node: Node | None, recorded: str | None = None) -> str:
    """Why a node never came up: the cloud's message where there is one (also on a record that
    is already gone), else what we recorded when we acted on the failure, else the status."""
    if node is not None and node.status_message and node.status in GONE | {FAILED_STATUS} | TRANSITIONAL_DOWN:
        return f"resume failed: cloud node failed: {node.status_message}"
    if node is None or node.status in GONE:
        if recorded:
            return f"resume failed: {recorded.removeprefix(REASON_PREFIX)}"
        return "resume failed: no cloud node (never created, or already gone)"
    if node.status == FAILED_STATUS:
        return f"resume failed: cloud node failed: {node.status_message or 'no message'}"
    if node.status == READY:  # the VM booted; Slurm's ResumeTimeout is about slurmd registering
        return f"resume failed: {NEVER_REGISTERED}"
    return f"resume failed: never became Ready (cloud status {node.status})"
