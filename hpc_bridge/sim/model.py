"""The pure cluster model behind the simulator: no I/O, no threads, an explicit clock.

Every public method takes `now` (seconds since the epoch, float), first advances the node
lifecycle to that instant, then acts, and returns plain dicts in the API's wire format. Errors
are raised as `SimError(status, message)`; the server turns them into HTTP answers. Things the
server must do outside the model (boot hooks) are queued in `self.events` as
("ready" | "stop", node wire dict) and drained by the caller.

Rules (see also the scenario documentation):
- Lifecycle: Off -> Acquiring -> Preparing -> Ready (durations from [timings] x time_scale).
  PrivateIp (127.1.x.y, or from [cluster] private_network; unique per record, kept for the record's life) and Hostname
  ("ip-7F01XXYY") and InstanceId are assigned on entering Preparing; billing starts there.
  An injected boot failure turns Preparing into Failed with a StatusMessage (still billed: the
  VM exists until it is terminated).
- terminate: -> Terminating -> Terminated (record kept, InstanceId cleared, billing stops);
  under `strict_reference` the record is then removed unless Fixed (the reference's default).
  deallocate: -> Deallocating -> Deallocated (record, IP and InstanceId kept, billing stops).
  shutdown: per node ShutdownPolicy (nodearray default, or nodeAttributes.ShutdownPolicy).
  remove: terminates, and deletes the record once Terminated; Fixed nodes -> Error.
  start: Deallocated / Terminated / Off nodes boot again as the SAME record (same NodeId);
  booting or Ready nodes -> OK (nothing to do); Failed, Terminating, Deallocating -> Error.
- Limits: every record that is not Terminated holds a slot against maxCount/maxCoreCount
  (bucket, nodearray, cluster) and placement group size. Nodes with a VM (every status but
  Deallocated and Terminated) consume quota and are "active" in status.
- Names: a set whose names include one held by a record that is not Terminated is refused
  (added 0, message); a Terminated record with that name is replaced by the new node.
  Without nameFormat the name is "<nodearray>-%d"; `%d` without nameOffset takes the lowest
  free indices from 1; with nameOffset the indices are offset, offset+1, ...
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from collections import Counter
from typing import Any, Iterable

from hpc_bridge.sim.filter import FilterError, compile_filter
from hpc_bridge.sim.scenario import BucketSpec, NodearraySpec, Scenario, load_scenario

MANAGEMENT_ACTIONS = ("start", "shutdown", "deallocate", "terminate", "remove")
# Attributes the simulator owns; nodeAttributes cannot set them.
PROTECTED_ATTRIBUTES = frozenset(
    {"Name", "NodeId", "Template", "MachineType", "Status", "State", "TargetState", "PrivateIp", "Hostname",
     "InstanceId", "CoreCount", "Memory", "Infiniband", "GpuCount", "BucketId", "PlacementGroupId", "StatusMessage",
     "Region", "RequestId", "OperationId"}
)
BOOTING = ("Off", "Acquiring", "Preparing")
MAX_USAGE_INTERVALS = 20000


class SimError(Exception):
    """An API error: HTTP status + one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def iso(ts: float) -> str:
    return _iso_second(math.floor(ts))


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    # Nodes made by one call share their times: GET nodes of 8,000 nodes formatted 16,000 dates.
    return datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SimError(400, f"invalid ISO-8601 time {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@dataclass
class NodeRec:
    node_id: str
    name: str
    nodearray: NodearraySpec
    bucket: BucketSpec
    status: str
    since: float
    created: float
    target_state: str = "Started"
    placement_group: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    ip: str | None = None
    hostname: str | None = None
    instance_id: str | None = None
    status_message: str | None = None
    will_fail: bool = False
    remove_when_terminated: bool = False
    request_id: str | None = None
    billing: "BillingSpan | None" = None

    @property
    def cores(self) -> int:
        return self.bucket.vcpu_count

    @property
    def fixed(self) -> bool:
        return bool(self.attributes.get("Fixed", False))

    @property
    def shutdown_policy(self) -> str:
        policy = self.attributes.get("ShutdownPolicy")
        return policy if policy in ("Terminate", "Deallocate") else self.nodearray.shutdown_policy

    @property
    def holds_slot(self) -> bool:
        return self.status != "Terminated"

    @property
    def has_vm(self) -> bool:
        return self.status not in ("Terminated", "Deallocated")

    @property
    def state(self) -> str:
        if self.status in ("Acquiring", "Preparing", "Ready"):
            return "Started"
        if self.status in ("Deallocating", "Deallocated"):
            return "Deallocated"
        if self.status in ("Terminating", "Terminated"):
            return "Terminated"
        return self.status  # Off, Failed


@dataclass
class BillingSpan:
    nodearray: str
    machine_type: str
    cores: int
    start: float
    end: float | None = None


class _Usage:
    """Slot and quota counters over node records (what _limits bounds), keyed by spec identity."""

    def __init__(self, records: Iterable["NodeRec"] = ()):
        self.bucket: Counter = Counter()
        self.array: Counter = Counter()
        self.array_cores: Counter = Counter()
        self.pg: Counter = Counter()
        self.family_cores: Counter = Counter()
        self.family_count: Counter = Counter()
        self.slots = 0
        self.cores = 0
        self.vm_cores = 0  # every family: the region's consumption
        for r in records:
            if r.holds_slot:
                self._slot(r.nodearray, r.bucket, r.placement_group)
            if r.has_vm:
                self._vm(r.bucket)

    def _slot(self, na, b, pg) -> None:
        self.bucket[id(na), id(b)] += 1
        self.array[id(na)] += 1
        self.array_cores[id(na)] += b.vcpu_count
        self.pg[id(na), id(b), pg] += 1
        self.slots += 1
        self.cores += b.vcpu_count

    def _vm(self, b) -> None:
        self.family_cores[b.machine_type] += b.vcpu_count
        self.family_count[b.machine_type] += 1
        self.vm_cores += b.vcpu_count

    def add(self, na, b, pg) -> None:
        """One more node (or pending slot) holding a slot and a VM."""
        self._slot(na, b, pg)
        self._vm(b)


# The statuses a node leaves on its own after a time, and the scenario's timing for each.
_TIMED_STATUSES = {"Off": "off", "Acquiring": "acquiring", "Preparing": "preparing", "Terminating": "terminating",
                   "Deallocating": "deallocating"}


class ClusterModel:
    def __init__(self, scenario: Scenario | dict | str | None = None, now: float = 0.0, seed: int | None = None):
        self.scenario = load_scenario(scenario)
        self.now = float(now)
        self.nodes: dict[str, NodeRec] = {}  # NodeId -> record, in creation order
        self.operations: dict[str, dict[str, Any]] = {}
        self.op_nodes: dict[str, list[str]] = {}
        self.by_request_id: dict[str, str] = {}
        self.billing: list[BillingSpan] = []
        self.last_capacity_failure: dict[str, float] = {}  # bucket_id -> time
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.faults: dict[str, Any] = dict(self.scenario.faults)
        self.reseed(self.faults["seed"] if seed is None else seed)
        self._ids = random.Random(os.urandom(32))
        self._ip_counter = 0
        self._network = ipaddress.IPv4Network(self.scenario.private_network)

    # ------------------------------------------------------------------ clock and lifecycle

    def reseed(self, seed: int) -> None:
        self.rng = random.Random(f"boot-{seed}")

    def set_faults(self, update: dict[str, Any]) -> None:
        """Apply an already-validated partial faults update (boot_failure_rate, capacity_failure, seed)."""
        for key, value in update.items():
            if key == "endpoints":
                merged = dict(self.faults.get("endpoints", {}))
                merged.update(value)
                self.faults["endpoints"] = merged
            else:
                self.faults[key] = value
        if "seed" in update:
            self.reseed(update["seed"])

    def _new_id(self) -> str:
        # Random, not seeded: ids must never repeat across simulator runs (state files outlive
        # them). Drawn from a generator seeded once from os.urandom: a create of 1,000 nodes made
        # 2,000 urandom calls through uuid4.
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def _duration(self, status: str) -> float | None:
        key = _TIMED_STATUSES.get(status)
        if key is None:
            return None
        return self.scenario.timings[key] * self.scenario.time_scale

    def advance(self, now: float) -> None:
        """Move every node along its lifecycle up to `now` (the clock never goes back)."""
        now = max(float(now), self.now)
        self.now = now
        for rec in list(self.nodes.values()):
            while True:
                dur = self._duration(rec.status)
                if dur is None or rec.since + dur > now:
                    break
                self._transition(rec, rec.since + dur)

    def _set(self, rec: NodeRec, status: str, at: float) -> None:
        was_ready = rec.status == "Ready"
        rec.status = status
        rec.since = at
        if was_ready and status != "Ready":
            self.events.append(("stop", self.node_wire(rec)))
        if status == "Ready":
            self.events.append(("ready", self.node_wire(rec)))

    def _start_billing(self, rec: NodeRec, at: float) -> None:
        if rec.billing is None:
            rec.billing = BillingSpan(rec.nodearray.name, rec.bucket.machine_type, rec.cores, at)
            self.billing.append(rec.billing)

    def _stop_billing(self, rec: NodeRec, at: float) -> None:
        if rec.billing is not None:
            rec.billing.end = at
            rec.billing = None

    def _transition(self, rec: NodeRec, at: float) -> None:
        if rec.status == "Off":
            self._set(rec, "Acquiring", at)
        elif rec.status == "Acquiring":
            if rec.ip is None:
                n = self._ip_counter
                self._ip_counter += 1
                rec.ip = str(self._network[(n // 250) * 256 + n % 250 + 1])
                a, b, c, d = (int(x) for x in rec.ip.split("."))
                rec.hostname = f"ip-{a:02X}{b:02X}{c:02X}{d:02X}"
            if rec.instance_id is None:
                rec.instance_id = f"/subscriptions/sim/virtualMachines/{rec.name}-{self._new_id()[:8]}"
            self._start_billing(rec, at)
            self._set(rec, "Preparing", at)
        elif rec.status == "Preparing":
            if rec.will_fail:
                rec.status_message = "Simulated boot failure: the VM did not finish its software installation"
                rec.will_fail = False
                self._set(rec, "Failed", at)
            else:
                self._set(rec, "Ready", at)
        elif rec.status == "Terminating":
            self._stop_billing(rec, at)
            rec.instance_id = None
            rec.target_state = "Terminated"
            self._set(rec, "Terminated", at)
            if rec.remove_when_terminated or (self.scenario.strict_reference and not rec.fixed):
                del self.nodes[rec.node_id]
        elif rec.status == "Deallocating":
            self._stop_billing(rec, at)
            self._set(rec, "Deallocated", at)

    def _boot(self, rec: NodeRec, at: float) -> None:
        rec.will_fail = self.rng.random() < self.faults.get("boot_failure_rate", 0.0)
        rec.status_message = None
        rec.target_state = "Started"
        rec.remove_when_terminated = False
        self._set(rec, "Off", at)

    # ------------------------------------------------------------------ wire format

    def node_wire(self, rec: NodeRec) -> dict[str, Any]:
        b = rec.bucket
        out: dict[str, Any] = dict(rec.nodearray.attributes)
        out.update(rec.attributes)
        out.update(
            {
                "Name": rec.name,
                "NodeId": rec.node_id,
                "Template": rec.nodearray.name,
                "MachineType": b.machine_type,
                "BucketId": b.bucket_id,
                "Status": rec.status,
                "State": rec.state,
                "TargetState": rec.target_state,
                "ShutdownPolicy": rec.shutdown_policy,
                "KeepAlive": bool(rec.attributes.get("KeepAlive", False)),
                "Fixed": rec.fixed,
                "CoreCount": b.vcpu_count,
                "Memory": b.memory,
                "GpuCount": b.gpu_count,
                "Infiniband": b.infiniband,
                "Interruptible": bool(out.get("Interruptible", False)),
                "Region": self.scenario.region,
                "SubnetId": self._subnet_id(),
                "CreateTime": iso(rec.created),
                "StatusTime": iso(rec.since),
            }
        )
        unset_as_null = self.scenario.strict_reference or self.scenario.quirks
        for key, value in (("PrivateIp", rec.ip), ("Hostname", rec.hostname), ("InstanceId", rec.instance_id),
                           ("PlacementGroupId", rec.placement_group), ("StatusMessage", rec.status_message),
                           ("RequestId", rec.request_id)):
            if value is not None:
                out[key] = value
            elif unset_as_null:
                out[key] = None
        if self.scenario.quirks:
            for key in ("CoreCount", "Memory", "GpuCount"):
                out[key] = float(out[key])
            out.update(_quirk_attributes(rec.name, rec.nodearray.name, self.scenario.region))
        return out

    def _operation_wire(self, op_id: str) -> dict[str, Any]:
        op = self.operations[op_id]
        if self.scenario.strict_reference:  # the reference's OperationStatus: nothing else
            return {"action": op["action"], "startTime": op["startTime"]}
        return dict(op)

    def _subnet_id(self) -> str:
        return f"/subscriptions/sim/subnets/{self.scenario.cluster_name}"

    # ------------------------------------------------------------------ bookkeeping

    def _bucket_records(self, na: NodearraySpec, b: BucketSpec) -> list[NodeRec]:
        return [r for r in self.nodes.values() if r.nodearray is na and r.bucket is b]

    def _limits(self, na: NodearraySpec, b: BucketSpec, pg: str | None, pending: list[tuple[NodearraySpec, BucketSpec, str | None]] = (),
                usage: "_Usage | None" = None) -> tuple[int, str]:
        """How many more nodes may be created in this bucket now, and the reason for the bound.
        `usage`: counters kept up to date by the caller (create), else counted here."""
        if usage is None:
            usage = _Usage(self.nodes.values())
        for p_na, p_b, p_pg in pending:
            usage.add(p_na, p_b, p_pg)
        vcpu = b.vcpu_count
        in_bucket = usage.bucket[id(na), id(b)]
        in_array = usage.array[id(na)]
        family_cores = usage.family_cores[b.machine_type] + b.consumed_core_count
        family_count = usage.family_count[b.machine_type]
        bounds = [
            (b.max_count - in_bucket, f"bucket {b.machine_type} in nodearray {na.name} reached its maxCount {b.max_count}"),
            ((b.max_core_count - in_bucket * vcpu) // vcpu, f"bucket {b.machine_type} in nodearray {na.name} reached its maxCoreCount {b.max_core_count}"),
            (na.max_count - in_array, f"nodearray {na.name} reached its maxCount {na.max_count}"),
            ((na.max_core_count - usage.array_cores[id(na)]) // vcpu, f"nodearray {na.name} reached its maxCoreCount {na.max_core_count}"),
            (self.scenario.max_count - usage.slots, f"cluster reached its maxCount {self.scenario.max_count}"),
            ((self.scenario.max_core_count - usage.cores) // vcpu, f"cluster reached its maxCoreCount {self.scenario.max_core_count}"),
            ((b.quota_core_count - family_cores) // vcpu, f"quota exceeded for {b.machine_type}: quotaCoreCount {b.quota_core_count}"),
            (b.quota_count - family_count, f"quota exceeded for {b.machine_type}: quotaCount {b.quota_count}"),
            ((self.scenario.regional_quota_core_count - self._regional_consumed(usage)) // vcpu,
             f"regional quota exceeded: regionalQuotaCoreCount {self.scenario.regional_quota_core_count}"),
        ]
        if pg is not None:
            in_pg = usage.pg[id(na), id(b), pg]
            bounds.append((b.max_placement_group_size - in_pg,
                           f"placement group {pg} reached maxPlacementGroupSize {b.max_placement_group_size}"))
        n, why = min(bounds, key=lambda x: x[0])
        return max(0, n), why

    def _regional_consumed(self, usage: "_Usage") -> int:
        """Cores in use in the region: our VMs plus what the buckets say other clusters use."""
        baseline = {b.machine_type: b.consumed_core_count for na in self.scenario.nodearrays for b in na.buckets}
        return usage.vm_cores + sum(baseline.values())

    def _capacity_failed(self, na: NodearraySpec, b: BucketSpec) -> bool:
        targets = self.faults.get("capacity_failure", [])
        return f"{na.name}/{b.machine_type}" in targets or b.machine_type in targets

    def _capacity_message(self, b: BucketSpec) -> str:
        if self.scenario.quirks:  # a real service's own words: nothing to match on
            return (f"SkuNotAvailable: the requested size {b.machine_type} is currently not available in "
                    f"location {self.scenario.region} (simulated)")
        return f"Capacity failure: no capacity for {b.machine_type} in region {self.scenario.region} (simulated)"

    def _record_operation(self, action: str, request_id: str | None, node_ids: list[str], extra: dict | None = None) -> dict:
        op_id = self._new_id()
        op = {"operationId": op_id, "action": action, "startTime": iso(self.now)}
        if request_id:
            op["requestId"] = request_id
            self.by_request_id[request_id] = op_id
        if extra:
            op.update(extra)
        self.operations[op_id] = op
        self.op_nodes[op_id] = list(node_ids)
        return op

    def _check_request_id(self, request_id: Any) -> str | None:
        if request_id is None:
            return None
        if not isinstance(request_id, str) or not request_id:
            raise SimError(409, "requestId must be a non-empty string")
        if request_id in self.by_request_id:
            raise SimError(409, f"duplicate requestId {request_id}: already used by operation {self.by_request_id[request_id]}")
        return request_id

    def _nodearray(self, name: Any) -> NodearraySpec:
        na = self.scenario.nodearray(name) if isinstance(name, str) else None
        if na is None:
            raise SimError(409, f"unknown nodearray {name!r}")
        return na

    # ------------------------------------------------------------------ create / scale

    def create(self, body: Any, now: float) -> dict[str, Any]:
        """POST nodes/create: a NodeCreationResult dict (with operationId)."""
        self.advance(now)
        if not isinstance(body, dict):
            raise SimError(409, "request body must be a NodeCreationRequest object")
        sets = body.get("sets")
        if not isinstance(sets, list) or not sets:
            raise SimError(409, "sets must be a non-empty list")
        request_id = self._check_request_id(body.get("requestId"))
        plans = [self._validate_set(s, i) for i, s in enumerate(sets)]
        results: list[dict[str, Any]] = []
        created: list[str] = []
        # Counted once per call and kept up to date, so N sets cost O(N + nodes), not O(N x nodes).
        taken: set[str] = self._live_names()
        usage = _Usage(self.nodes.values())
        by_name: dict[str, list[str]] = {}
        for r in self.nodes.values():
            by_name.setdefault(r.name, []).append(r.node_id)
        for plan in plans:
            result, ids = self._create_set(plan, taken, request_id, usage, by_name)
            results.append(result)
            created.extend(ids)
        op = self._record_operation("create", request_id, created)
        self.advance(now)
        return {"operationId": op["operationId"], "sets": results}

    def _validate_set(self, s: Any, i: int) -> dict[str, Any]:
        where = f"sets[{i}]"
        if not isinstance(s, dict):
            raise SimError(409, f"{where} must be an object")
        count = s.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SimError(409, f"{where}.count must be an integer >= 1")
        na = self._nodearray(s.get("nodearray"))
        definition = s.get("definition") or {}
        if not isinstance(definition, dict):
            raise SimError(409, f"{where}.definition must be an object")
        mt = definition.get("machineType")
        bucket = na.bucket(mt)
        if bucket is None:
            raise SimError(409, f"{where}: nodearray {na.name} has no bucket with machineType {mt!r}")
        fmt = s.get("nameFormat")
        offset = s.get("nameOffset")
        if fmt is not None:
            if not isinstance(fmt, str) or not fmt:
                raise SimError(409, f"{where}.nameFormat must be a non-empty string")
            directives = fmt.replace("%%", "").count("%")
            if directives > 1 or (directives == 1 and "%d" not in fmt.replace("%%", "")):
                raise SimError(409, f"{where}.nameFormat may contain one %d and nothing else with %")
            if directives == 0 and count != 1:
                raise SimError(409, f"{where}: a nameFormat without %d names exactly one node, count must be 1")
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0):
            raise SimError(409, f"{where}.nameOffset must be an integer >= 0")
        attrs = s.get("nodeAttributes") or {}
        if not isinstance(attrs, dict):
            raise SimError(409, f"{where}.nodeAttributes must be an object")
        pg = s.get("placementGroupId")
        if pg is not None and (not isinstance(pg, str) or not pg):
            raise SimError(409, f"{where}.placementGroupId must be a non-empty string")
        return {"count": count, "na": na, "bucket": bucket, "fmt": fmt, "offset": offset, "attrs": attrs, "pg": pg}

    def set_node_attributes(self, name: str, attributes: dict[str, Any]) -> None:
        """Change a live node's own attributes (KeepAlive, ...), as a user does in the UI."""
        if bad := sorted(set(attributes) & PROTECTED_ATTRIBUTES):
            raise SimError(409, f"attributes owned by the simulator: {', '.join(bad)}")
        live = [r for r in self.nodes.values() if r.name == name and r.status != "Terminated"]
        if not live:
            raise SimError(404, f"no live node named {name}")
        live[-1].attributes.update(attributes)

    def _live_names(self) -> set[str]:
        return {r.name for r in self.nodes.values() if r.status != "Terminated"}

    def _names(self, plan: dict[str, Any], count: int, taken: set[str]) -> tuple[list[str], list[str]]:
        """(names to create, clashing names) for the first `count` nodes of a set; `taken`: the
        live names plus those created earlier in this call."""
        fmt = plan["fmt"] or f"{plan['na'].name}-%d"
        live = taken
        if "%d" not in fmt.replace("%%", ""):
            name = fmt.replace("%%", "%")
            return [name], [name] if name in live else []
        if plan["offset"] is not None:
            names = [fmt % (plan["offset"] + k) for k in range(count)]
            return names, [n for n in names if n in live]
        names, k = [], 1
        while len(names) < count:
            name = fmt % k
            if name not in live:
                names.append(name)
            k += 1
        return names, []

    def _create_set(self, plan: dict[str, Any], taken: set[str], request_id: str | None, usage: "_Usage | None" = None,
                    by_name: dict[str, list[str]] | None = None) -> tuple[dict[str, Any], list[str]]:
        """`taken`: live names plus those created earlier in this call when `usage` is given
        (create keeps all three up to date); else only the latter, and the rest is counted here."""
        if usage is None or by_name is None:
            taken = self._live_names() | taken
            usage = _Usage(self.nodes.values())
            by_name = {}
            for r in self.nodes.values():
                by_name.setdefault(r.name, []).append(r.node_id)
        na, b, count, pg = plan["na"], plan["bucket"], plan["count"], plan["pg"]
        if not b.valid:
            return {"added": 0, "message": f"bucket {b.machine_type} in nodearray {na.name} is not valid ({b.invalid_reason})"}, []
        names, clashes = self._names(plan, count, taken)
        if clashes:
            shown = ", ".join(clashes[:5]) + (" ..." if len(clashes) > 5 else "")
            return {"added": 0, "message": f"node name(s) already exist: {shown}"}, []
        if self._capacity_failed(na, b):
            self.last_capacity_failure[b.bucket_id] = self.now
            return {"added": 0, "message": self._capacity_message(b)}, []
        available, why = self._limits(na, b, pg, usage=usage)
        added = min(count, available)
        ids: list[str] = []
        attrs = {k: v for k, v in plan["attrs"].items() if k not in PROTECTED_ATTRIBUTES}
        for name in names[:added]:
            for old_id in by_name.pop(name, ()):  # a Terminated record: replaced
                self.nodes.pop(old_id, None)
            rec = NodeRec(node_id=self._new_id(), name=name, nodearray=na, bucket=b, status="Off", since=self.now,
                          created=self.now, placement_group=pg, attributes=dict(attrs), request_id=request_id)
            self.nodes[rec.node_id] = rec
            self._boot(rec, self.now)
            taken.add(name)
            by_name[name] = [rec.node_id]
            usage.add(na, b, pg)
            ids.append(rec.node_id)
        result: dict[str, Any] = {"added": added}
        if added < count:
            result["message"] = f"added {added} of {count}: {why}"
        return result, ids

    def scale(self, nodearray: str, total_node_count: Any, total_core_count: Any, now: float) -> dict[str, Any]:
        """POST scale/{nodearray}: add nodes (default naming, first valid bucket) up to a total."""
        self.advance(now)
        na = self._nodearray(nodearray)
        if (total_node_count is None) == (total_core_count is None):
            raise SimError(409, "give exactly one of totalNodeCount and totalCoreCount")
        target = total_node_count if total_node_count is not None else total_core_count
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise SimError(409, "totalNodeCount/totalCoreCount must be an integer >= 0")
        bucket = na.bucket(None)
        current = [r for r in self.nodes.values() if r.nodearray is na and r.holds_slot]
        if total_node_count is not None:
            missing = target - len(current)
        else:
            missing = math.ceil(max(0, target - sum(r.cores for r in current)) / bucket.vcpu_count)
        created: list[str] = []
        if missing <= 0:
            result: dict[str, Any] = {"added": 0}
        else:
            plan = {"count": missing, "na": na, "bucket": bucket, "fmt": None, "offset": None, "attrs": {}, "pg": None}
            result, created = self._create_set(plan, set(), None)
        op = self._record_operation("scale", None, created)
        self.advance(now)
        return {"operationId": op["operationId"], "sets": [result]}

    # ------------------------------------------------------------------ management

    def select(self, body: dict[str, Any]) -> list[NodeRec]:
        """The union of names / ids / hostnames / ip_addresses / filter, in record order."""
        def strings(key: str) -> set[str]:
            value = body.get(key)
            if value is None:
                return set()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SimError(409, f"{key} must be a list of strings")
            return set(value)

        names, ids, hosts = strings("names"), strings("ids"), strings("hostnames")
        ips = strings("ip_addresses") | strings("ipAddresses")
        flt = body.get("filter")
        predicate = None
        if flt is not None:
            try:
                predicate = compile_filter(flt)
            except FilterError as err:
                raise SimError(409, f"filter {flt!r}: {err}") from None
        if not (names or ids or hosts or ips or predicate):
            raise SimError(409, "no nodes selected: give names, ids, hostnames, ip_addresses or filter")
        chosen = []
        for rec in self.nodes.values():
            if (rec.name in names or rec.node_id in ids or (rec.hostname and rec.hostname in hosts)
                    or (rec.ip and rec.ip in ips) or (predicate and predicate(self.node_wire(rec)))):
                chosen.append(rec)
        return chosen

    def manage(self, action: str, body: Any, now: float) -> dict[str, Any]:
        """POST nodes/{start,shutdown,deallocate,terminate,remove}: a NodeManagementResult dict."""
        self.advance(now)
        if action not in MANAGEMENT_ACTIONS:
            raise SimError(404, f"unknown action {action!r}")
        if not isinstance(body, dict):
            raise SimError(409, "request body must be a NodeManagementRequest object")
        request_id = self._check_request_id(body.get("requestId"))
        chosen = self.select(body)
        entries, ok_ids = [], []
        for rec in chosen:
            error = getattr(self, f"_do_{action}")(rec)
            entry = {"id": rec.node_id, "name": rec.name, "status": "Error" if error else "OK"}
            if error:
                entry["error"] = error
            else:
                ok_ids.append(rec.node_id)
                if request_id:
                    rec.request_id = request_id
            entries.append(entry)
        op = self._record_operation(action, request_id, ok_ids)
        self.advance(now)
        return {"operationId": op["operationId"], "nodes": entries}

    def _do_start(self, rec: NodeRec) -> str | None:
        if rec.status in ("Acquiring", "Preparing", "Ready"):
            return None
        if rec.status in ("Terminating", "Deallocating"):
            return f"node is {rec.status}; start it once it is {'Terminated' if rec.status == 'Terminating' else 'Deallocated'}"
        if rec.status == "Failed":
            return "node has Failed; terminate it before starting it again"
        # Off, Deallocated, Terminated: boot this same record again.
        na, b = rec.nodearray, rec.bucket
        if self._capacity_failed(na, b):
            self.last_capacity_failure[b.bucket_id] = self.now
            return self._capacity_message(b)
        if rec.status == "Terminated":
            available, why = self._limits(na, b, rec.placement_group)
            if available < 1:
                return f"cannot start: {why}"
        elif rec.status == "Deallocated":
            # Already holds its slot; needs quota for its VM again.
            vms = [r for r in self.nodes.values() if r.has_vm and r.bucket.machine_type == b.machine_type]
            if sum(r.cores for r in vms) + b.consumed_core_count + rec.cores > b.quota_core_count:
                return f"cannot start: quota exceeded for {b.machine_type}: quotaCoreCount {b.quota_core_count}"
        self._boot(rec, self.now)
        return None

    def _begin_terminate(self, rec: NodeRec) -> None:
        if rec.status in ("Terminating", "Terminated"):
            return
        rec.target_state = "Terminated"
        self._set(rec, "Terminating", self.now)

    def _do_terminate(self, rec: NodeRec) -> str | None:
        self._begin_terminate(rec)
        return None

    def _do_deallocate(self, rec: NodeRec) -> str | None:
        if rec.status in ("Deallocating", "Deallocated"):
            return None
        if rec.status in ("Terminating", "Terminated"):
            return f"node is {rec.status}; it cannot be deallocated"
        rec.target_state = "Deallocated"
        self._set(rec, "Deallocating", self.now)
        return None

    def _do_shutdown(self, rec: NodeRec) -> str | None:
        if rec.shutdown_policy == "Deallocate":
            return self._do_deallocate(rec)
        return self._do_terminate(rec)

    def _do_remove(self, rec: NodeRec) -> str | None:
        if rec.fixed:
            return "node is Fixed and cannot be removed"
        if rec.status == "Terminated":
            del self.nodes[rec.node_id]
            return None
        rec.remove_when_terminated = True
        self._begin_terminate(rec)
        return None

    # ------------------------------------------------------------------ reads

    def get_nodes(self, now: float, operation: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """GET nodes: {"nodes": [...]} or, with operation / request_id, that operation's nodes + "operation"."""
        self.advance(now)
        if self.scenario.strict_reference and ((operation is not None and request_id is not None)
                                               or operation == "" or request_id == ""):
            raise SimError(400, "invalid specification: give one non-empty operation or request_id")
        if operation is None and request_id is None:
            return {"nodes": [self.node_wire(r) for r in self.nodes.values()]}
        if operation is not None and request_id is not None:
            if self.by_request_id.get(request_id) != operation:
                raise SimError(404, f"no operation {operation} with requestId {request_id}")
        op_id = operation if operation is not None else self.by_request_id.get(request_id or "")
        if op_id is None:
            raise SimError(404, f"no operation with requestId {request_id}")
        if op_id not in self.operations:
            raise SimError(404, f"no operation {op_id}")
        ids = self.op_nodes[op_id]
        nodes = [self.node_wire(self.nodes[i]) for i in ids if i in self.nodes]
        return {"nodes": nodes, "operation": self._operation_wire(op_id)}

    def list_operations(self, now: float, request_id: str | None = None) -> list[dict[str, Any]]:
        self.advance(now)
        if request_id is not None:
            op_id = self.by_request_id.get(request_id)
            return [self._operation_wire(op_id)] if op_id else []
        return [self._operation_wire(op_id) for op_id in self.operations]

    def get_operation(self, op_id: str, now: float) -> dict[str, Any]:
        self.advance(now)
        if op_id not in self.operations:
            raise SimError(404, f"no operation {op_id}")
        return self._operation_wire(op_id)

    def status(self, now: float, nodes: bool = False) -> dict[str, Any]:
        self.advance(now)
        arrays = []
        for na in self.scenario.nodearrays:
            arrays.append({
                "name": na.name,
                "maxCount": min(na.max_count, self.scenario.max_count),
                "maxCoreCount": min(na.max_core_count, self.scenario.max_core_count),
                "nodearray": {"Configuration": {"slurm": {"autoscale": True}}, **na.attributes, "Name": na.name,
                              "Template": na.name, "ShutdownPolicy": na.shutdown_policy,
                              "Region": self.scenario.region, "SubnetId": self._subnet_id(),
                              "MachineType": ", ".join(b.machine_type for b in na.buckets)},
                "buckets": [self._bucket_status(na, b, nodes) for b in na.buckets],
            })
        out: dict[str, Any] = {
            "maxCount": self.scenario.max_count,
            "maxCoreCount": self.scenario.max_core_count,
            "nodearrays": arrays,
            "state": "Started",
            "targetState": "Started",
        }
        if nodes and self.scenario.status_node_list:  # optional even when asked for
            out["nodes"] = [self.node_wire(r) for r in self.nodes.values()]
        return out

    def _bucket_status(self, na: NodearraySpec, b: BucketSpec, with_nodes: bool) -> dict[str, Any]:
        recs = self._bucket_records(na, b)
        active = [r for r in recs if r.has_vm]
        vcpu = b.vcpu_count
        available = 0 if not b.valid else self._limits(na, b, None)[0]
        max_count = min(b.max_count, b.max_core_count // vcpu, na.max_count, na.max_core_count // vcpu,
                        self.scenario.max_count, self.scenario.max_core_count // vcpu)
        family = [r for r in self.nodes.values() if r.has_vm and r.bucket.machine_type == b.machine_type]
        consumed = sum(r.cores for r in family) + b.consumed_core_count
        groups: dict[str, list[NodeRec]] = {}
        for r in recs:
            if r.placement_group and r.holds_slot:
                groups.setdefault(r.placement_group, []).append(r)
        last = self.last_capacity_failure.get(b.bucket_id)
        usage = _Usage(self.nodes.values())
        regional_quota = self.scenario.regional_quota_core_count
        out: dict[str, Any] = {
            "bucketId": b.bucket_id,
            "definition": {"machineType": b.machine_type},
            "virtualMachine": {"vcpuCount": vcpu, "pcpuCount": b.pcpu_count, "memory": b.memory,
                               "gpuCount": b.gpu_count, "infiniband": b.infiniband, "vcpuQuotaCount": b.vcpu_quota_count},
            "valid": b.valid,
            # "If valid is false, this will contain the reason": null otherwise, in the strict form
            "invalidReason": None if b.valid and self.scenario.strict_reference else b.invalid_reason,
            "activeCount": len(active),
            "activeCoreCount": len(active) * vcpu,
            "availableCount": available,
            "availableCoreCount": available * vcpu,
            "maxCount": max_count,
            "maxCoreCount": max_count * vcpu,
            "maxPlacementGroupSize": b.max_placement_group_size,
            "maxPlacementGroupCoreSize": b.max_placement_group_size * vcpu,
            "placementGroups": [
                {"name": pg, "activeCount": sum(1 for r in rs if r.has_vm),
                 "activeCoreCount": sum(r.cores for r in rs if r.has_vm)}
                for pg, rs in sorted(groups.items())
            ],
            "quotaCount": b.quota_count,
            "quotaCoreCount": b.quota_core_count,
            "consumedCoreCount": consumed,
            "familyConsumedCoreCount": consumed,
            "familyQuotaCount": b.quota_count,
            "familyQuotaCoreCount": b.quota_core_count,
            "regionalConsumedCoreCount": self._regional_consumed(usage),
            "regionalQuotaCoreCount": regional_quota,
            "regionalQuotaCount": regional_quota // vcpu,
            "lastCapacityFailure": round(self.now - last, 3) if last is not None else -1.0,
        }
        if with_nodes:
            out["activeNodes"] = [r.name for r in active]
        if self.scenario.quirks:
            if last is None:
                out["lastCapacityFailure"] = None  # "never", said with a null
            for key, value in out.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    out[key] = float(value)
            out["virtualMachine"] = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                                     for k, v in out["virtualMachine"].items()}
        return out

    # ------------------------------------------------------------------ usage

    def usage(self, now: float, timeframe: str | None = None, from_: str | None = None, to: str | None = None,
              granularity: str | None = None) -> dict[str, Any]:
        """GET usage: core-hours and cost per interval, per nodearray, with details per VM size."""
        self.advance(now)
        granularity = granularity or "daily"
        if granularity not in ("total", "daily", "hourly"):
            raise SimError(400, f"granularity must be total, daily or hourly (got {granularity!r})")
        timeframe = timeframe or "monthToDate"
        step = 3600 if granularity == "hourly" else 86400
        nowdt = datetime.fromtimestamp(self.now, tz=timezone.utc)
        if timeframe == "monthToDate":
            start = nowdt.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
            end = _ceil(self.now, step)
        elif timeframe == "lastMonth":
            first = nowdt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            prev = (first - timedelta(days=1)).replace(day=1)
            start, end = prev.timestamp(), first.timestamp()
        elif timeframe == "weekToDate":
            midnight = nowdt.replace(hour=0, minute=0, second=0, microsecond=0)
            sunday = midnight - timedelta(days=(nowdt.weekday() + 1) % 7)
            start, end = sunday.timestamp(), _ceil(self.now, step)
        elif timeframe == "custom":
            if not from_ or not to:
                raise SimError(400, "timeframe custom needs both from and to")
            start, end = _floor(parse_iso(from_), step), _ceil(parse_iso(to), step)
            if end <= start:
                raise SimError(400, "to must be after from")
        else:
            raise SimError(400, f"timeframe must be monthToDate, lastMonth, weekToDate or custom (got {timeframe!r})")
        if granularity == "total":
            bounds = [(start, end)]
        else:
            if (end - start) / step > MAX_USAGE_INTERVALS:
                raise SimError(400, f"too many intervals ({int((end - start) / step)}); use a coarser granularity")
            bounds, t = [], start
            while t < end:
                bounds.append((t, min(t + step, end)))
                t += step
        priced = bool(self.scenario.prices)
        return {"usage": [self._usage_interval(a, b, priced) for a, b in bounds]}

    def _usage_interval(self, start: float, end: float, priced: bool) -> dict[str, Any]:
        per: dict[str, dict[str, dict[str, float]]] = {na.name: {} for na in self.scenario.nodearrays}
        for span in self.billing:
            s_end = span.end if span.end is not None else self.now
            overlap = min(end, s_end) - max(start, span.start)
            if overlap <= 0:
                continue
            d = per.setdefault(span.nodearray, {}).setdefault(span.machine_type, {"hours": 0.0, "cost": 0.0, "cores": span.cores})
            d["hours"] += overlap * span.cores / 3600.0
            d["cost"] += overlap / 3600.0 * self.scenario.prices.get(span.machine_type, 0.0)
        breakdown = []
        total_hours = total_cost = 0.0
        for na_name, sizes in per.items():
            details = []
            for mt, d in sorted(sizes.items()):
                detail = {"vm_size": mt, "hours": round(d["hours"], 6), "core_count": float(d["cores"]),
                          "region": self.scenario.region, "priority": "Regular", "os": "Linux"}
                if mt in self.scenario.prices:
                    detail["cost"] = round(d["cost"], 6)
                details.append(detail)
            hours = sum(d["hours"] for d in sizes.values())
            cost = sum(d["cost"] for d in sizes.values())
            item: dict[str, Any] = {"category": "nodearray", "node": na_name, "hours": round(hours, 6), "details": details}
            if priced:
                item["cost"] = round(cost, 6)
            breakdown.append(item)
            total_hours += hours
            total_cost += cost
        total: dict[str, Any] = {"category": "cluster", "hours": round(total_hours, 6)}
        if priced:
            total["cost"] = round(total_cost, 6)
        return {"start": iso(start), "end": iso(end), "total": total, "breakdown": breakdown}


def _quirk_attributes(name: str, nodearray: str, region: str) -> dict[str, Any]:
    """Undocumented attributes of the kind a real service sends: big, nested, of every type."""
    return {
        "Configuration": {
            "cyclecloud": {"cluster": {"autoscale": {"idle_time_after_jobs": 300.0, "stop_enabled": True}},
                           "mounts": {"sched": {"type": "nfs", "export_path": "/sched", "options": None},
                                      "shared": {"type": "nfs", "export_path": "/shared", "options": ["noatime"]}},
                           "node": {"prevent_metadata_access": True, "name": name}},
            "slurm": {"autoscale": True, "hpc": nodearray == "hpc", "use_nodename_as_hostname": True},
        },
        "Instance": {"Region": region, "Zones": None, "Disks": [{"Lun": 0.0, "SizeGB": 128.0, "Caching": "ReadOnly"}],
                     "Tags": {"ClusterName": "sim", "Nodearray": nodearray}},
        "Software": [{"Name": "cyclecloud-jetpack", "Version": "8.6.0"}, {"Name": "slurm", "Version": "22.05"}],
        "Credentials": None,
        "EphemeralOSDisk": False,
        "LastAccessTime": 1.7e9,
    }


def _floor(ts: float, step: int) -> float:
    return math.floor(ts / step) * step


def _ceil(ts: float, step: int) -> float:
    return math.ceil(ts / step) * step


__all__ = ["ClusterModel", "SimError", "NodeRec", "iso", "parse_iso"]
