"""Scenario files for the simulator: TOML -> validated plain data.

A scenario describes one cluster: credentials, nodearrays with their buckets (using the API's
own field names), timings, prices, fault knobs and boot hooks.

Two [cluster] switches choose what the simulator serves beyond the model itself:
- `strict_reference = true`: exactly the reference's contract, nothing of ours: OperationStatus
  with `action` and `startTime` only; null for unset optional values; terminate removes node
  records unless Fixed; 400 for an invalid GET nodes specification; empty bodies for the
  errors the reference answers with "No Content".
- `quirks = true`: what a real service may add: big nested undocumented node attributes, null
  for values not known yet (PrivateIp while Acquiring), numbers as floats, error messages
  worded its own way.
A third goes with either: `status_node_list = false` answers `GET status?nodes=true` without the
`nodes` list, which the reference makes optional (a client must then read `GET nodes`).

`load_scenario()` accepts None (the default scenario shipped in the package), a path, or an
already-parsed dict, and raises `ScenarioError` (a ConfigError) with a one-line message naming
the offending key.
"""

from __future__ import annotations

import math
import tomllib
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hpc_bridge.errors import ConfigError
from hpc_bridge.files import UnreadableToml, read_toml

DEFAULT_SCENARIO = "default.toml"
MAX_SCENARIO_BYTES = 16 * 1024 * 1024  # a scenario file larger than this is not one

SHUTDOWN_POLICIES = ("Terminate", "Deallocate")
TIMING_KEYS = ("off", "acquiring", "preparing", "terminating", "deallocating")
DEFAULT_TIMINGS = {"off": 0.0, "acquiring": 20.0, "preparing": 40.0, "terminating": 10.0, "deallocating": 10.0}
# Endpoint names used for per-endpoint faults and in /_sim/stats.
ENDPOINTS = (
    "nodes",
    "nodes/create",
    "nodes/start",
    "nodes/shutdown",
    "nodes/deallocate",
    "nodes/terminate",
    "nodes/remove",
    "scale",
    "status",
    "usage",
    "operations",
    "operation",
)
REQUEST_FAULT_KEYS = ("error_rate", "throttle_rate", "retry_after", "latency", "drop_rate", "lost_response_rate", "times")
_UNBOUNDED = ("retry_after", "latency", "times")  # not fractions


class ScenarioError(ConfigError):
    """The scenario file is invalid; the message names the key."""


@dataclass
class BucketSpec:
    machine_type: str
    vcpu_count: int
    pcpu_count: int
    memory: float
    gpu_count: int
    infiniband: bool
    max_count: int
    max_core_count: int
    max_placement_group_size: int
    quota_count: int
    quota_core_count: int
    consumed_core_count: int  # baseline consumed by "other clusters" in the region
    valid: bool
    invalid_reason: str
    bucket_id: str
    vcpu_quota_count: int


@dataclass
class NodearraySpec:
    name: str
    shutdown_policy: str
    max_count: int
    max_core_count: int
    buckets: list[BucketSpec]
    attributes: dict[str, Any] = field(default_factory=dict)

    def bucket(self, machine_type: str | None) -> BucketSpec | None:
        if machine_type is None:
            return next((b for b in self.buckets if b.valid), self.buckets[0])
        return next((b for b in self.buckets if b.machine_type == machine_type), None)


@dataclass
class Scenario:
    cluster_name: str
    username: str
    password: str
    region: str
    max_count: int
    max_core_count: int
    nodearrays: list[NodearraySpec]
    timings: dict[str, float]
    time_scale: float
    prices: dict[str, float]
    faults: dict[str, Any]
    on_ready: list[str]
    on_stop: list[str]
    hook_env: dict[str, str]
    strict_reference: bool = False
    quirks: bool = False
    status_node_list: bool = True  # GET status?nodes=true includes the (optional) node list
    regional_quota_core_count: int = 0
    private_network: str = "127.1.0.0/16"  # where PrivateIp addresses come from
    source: str = "<dict>"

    def nodearray(self, name: str) -> NodearraySpec | None:
        return next((na for na in self.nodearrays if na.name == name), None)


def default_scenario_text() -> str:
    return resources.files("hpc_bridge.sim").joinpath(DEFAULT_SCENARIO).read_text(encoding="utf-8")


def load_scenario(scenario: None | str | Path | dict | Scenario = None) -> Scenario:
    """The default scenario (None), a TOML file (path), a parsed dict, or a Scenario (returned as is)."""
    if isinstance(scenario, Scenario):
        return scenario
    if scenario is None:
        data = tomllib.loads(default_scenario_text())
        source = "default scenario"
    elif isinstance(scenario, dict):
        data, source = scenario, "<dict>"
    else:
        path = Path(scenario)
        source = str(path)
        try:
            data = read_toml(path, MAX_SCENARIO_BYTES)
        except UnreadableToml as err:
            raise ScenarioError(f"scenario {source}: {err}") from None
    try:
        parsed = _parse(data)
    except _Bad as err:
        raise ScenarioError(f"scenario {source}: {err}") from None
    parsed.source = source
    return parsed


# --------------------------------------------------------------------------- validation


class _Bad(Exception):
    pass


def _table(data: Any, where: str) -> dict:
    if not isinstance(data, dict):
        raise _Bad(f"{where} must be a table")
    return data


def _no_unknown(data: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise _Bad(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _str(data: dict, key: str, where: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise _Bad(f"{where}.{key} must be a non-empty string")
    return value


def _int(data: dict, key: str, where: str, default: int | None = None, minimum: int = 0) -> int:
    value = data.get(key, default)
    if value is None:
        raise _Bad(f"{where}.{key} is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Bad(f"{where}.{key} must be an integer >= {minimum} (got {value!r})")
    return value


def _num(data: dict, key: str, where: str, default: float, minimum: float = 0.0, maximum: float | None = None) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise _Bad(f"{where}.{key} must be a number >= {minimum} (got {value!r})")
    if maximum is not None and value > maximum:
        raise _Bad(f"{where}.{key} must be a number <= {maximum} (got {value!r})")
    return float(value)


def _bool(data: dict, key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _Bad(f"{where}.{key} must be true or false (got {value!r})")
    return value


def _argv(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Bad(f"{where} must be an argv list of non-empty strings, e.g. [\"/usr/bin/touch\", \"/tmp/x\"]")
    return list(value)


_BUCKET_KEYS = {
    "machineType", "vcpuCount", "pcpuCount", "memory", "gpuCount", "infiniband", "maxCount", "maxCoreCount",
    "maxPlacementGroupSize", "quotaCount", "quotaCoreCount", "consumedCoreCount", "valid", "invalidReason",
    "bucketId", "vcpuQuotaCount",
}


def _bucket(data: Any, where: str, cluster: str, nodearray: str) -> BucketSpec:
    data = _table(data, where)
    _no_unknown(data, _BUCKET_KEYS, where)
    mt = _str(data, "machineType", where)
    vcpu = _int(data, "vcpuCount", where, minimum=1)
    max_count = _int(data, "maxCount", where)
    max_core = _int(data, "maxCoreCount", where, default=max_count * vcpu)
    if max_core % vcpu:
        raise _Bad(f"{where}.maxCoreCount ({max_core}) must be a multiple of vcpuCount ({vcpu})")
    big = 1_000_000
    quota_core = data.get("quotaCoreCount")
    quota_count = data.get("quotaCount")
    if quota_core is None and quota_count is None:
        quota_core, quota_count = big * vcpu, big
    elif quota_core is None:
        quota_count = _int(data, "quotaCount", where)
        quota_core = quota_count * vcpu
    else:
        quota_core = _int(data, "quotaCoreCount", where)
        quota_count = _int(data, "quotaCount", where, default=quota_core // vcpu)
    valid = _bool(data, "valid", where, True)
    reason = data.get("invalidReason", "" if valid else "DisabledMachineType")
    if not isinstance(reason, str):
        raise _Bad(f"{where}.invalidReason must be a string")
    bucket_id = data.get("bucketId") or str(uuid.uuid5(uuid.NAMESPACE_URL, f"hpc-bridge-sim/{cluster}/{nodearray}/{mt}"))
    return BucketSpec(
        machine_type=mt,
        vcpu_count=vcpu,
        pcpu_count=_int(data, "pcpuCount", where, default=vcpu),
        memory=_num(data, "memory", where, default=0.0),
        gpu_count=_int(data, "gpuCount", where, default=0),
        infiniband=_bool(data, "infiniband", where, False),
        max_count=max_count,
        max_core_count=max_core,
        max_placement_group_size=_int(data, "maxPlacementGroupSize", where, default=max_count),
        quota_count=quota_count,
        quota_core_count=quota_core,
        consumed_core_count=_int(data, "consumedCoreCount", where, default=0),
        valid=valid,
        invalid_reason=reason,
        bucket_id=str(bucket_id),
        vcpu_quota_count=_int(data, "vcpuQuotaCount", where, default=vcpu),
    )


_NA_KEYS = {"name", "ShutdownPolicy", "maxCount", "maxCoreCount", "buckets", "attributes"}


def _nodearray(data: Any, where: str, cluster: str) -> NodearraySpec:
    data = _table(data, where)
    _no_unknown(data, _NA_KEYS, where)
    name = _str(data, "name", where)
    where = f"nodearray {name!r}"
    policy = data.get("ShutdownPolicy", "Terminate")
    if policy not in SHUTDOWN_POLICIES:
        raise _Bad(f"{where}.ShutdownPolicy must be one of {', '.join(SHUTDOWN_POLICIES)} (got {policy!r})")
    raw_buckets = data.get("buckets")
    if not isinstance(raw_buckets, list) or not raw_buckets:
        raise _Bad(f"{where} needs at least one [[nodearrays.buckets]] entry")
    buckets = [_bucket(b, f"{where}.buckets[{i}]", cluster, name) for i, b in enumerate(raw_buckets)]
    seen: set[str] = set()
    for b in buckets:
        if b.machine_type in seen:
            raise _Bad(f"{where}: machineType {b.machine_type!r} appears in two buckets")
        seen.add(b.machine_type)
    attributes = _table(data.get("attributes", {}), f"{where}.attributes")
    return NodearraySpec(
        name=name,
        shutdown_policy=policy,
        max_count=_int(data, "maxCount", where, default=sum(b.max_count for b in buckets)),
        max_core_count=_int(data, "maxCoreCount", where, default=sum(b.max_core_count for b in buckets)),
        buckets=buckets,
        attributes=dict(attributes),
    )


def validate_faults(data: Any, where: str = "faults", *, partial: bool = False) -> dict[str, Any]:
    """Validate a [faults] table (or a partial update of one) and return it normalised."""
    data = _table(data, where)
    known = set(REQUEST_FAULT_KEYS) | {"seed", "boot_failure_rate", "capacity_failure", "endpoints"}
    _no_unknown(data, known, where)
    out: dict[str, Any] = {}
    defaults = {"error_rate": 0.0, "throttle_rate": 0.0, "retry_after": 1.0, "latency": 0.0, "drop_rate": 0.0,
                "lost_response_rate": 0.0, "times": 0.0, "boot_failure_rate": 0.0}
    for key, default in defaults.items():
        if key in data or not partial:
            upper = None if key in _UNBOUNDED else 1.0
            out[key] = _num(data, key, where, default, maximum=upper)
    if "seed" in data or not partial:
        out["seed"] = _int(data, "seed", where, default=0)
    if "capacity_failure" in data or not partial:
        cap = data.get("capacity_failure", [])
        if not isinstance(cap, list) or not all(isinstance(c, str) and c for c in cap):
            raise _Bad(f"{where}.capacity_failure must be a list of \"nodearray/machineType\" or \"machineType\" strings")
        out["capacity_failure"] = list(cap)
    if "endpoints" in data or not partial:
        endpoints = _table(data.get("endpoints", {}), f"{where}.endpoints")
        parsed: dict[str, dict[str, float]] = {}
        for name, knobs in endpoints.items():
            if name not in ENDPOINTS:
                raise _Bad(f"{where}.endpoints: unknown endpoint {name!r} (known: {', '.join(ENDPOINTS)})")
            knobs = _table(knobs, f"{where}.endpoints.{name}")
            _no_unknown(knobs, set(REQUEST_FAULT_KEYS), f"{where}.endpoints.{name}")
            parsed[name] = {
                k: _num(knobs, k, f"{where}.endpoints.{name}", 0.0, maximum=None if k in _UNBOUNDED else 1.0)
                for k in knobs
            }
        out["endpoints"] = parsed
    return out


def _parse(data: Any) -> Scenario:
    data = _table(data, "scenario")
    _no_unknown(data, {"cluster", "nodearrays", "timings", "prices", "faults", "hooks"}, "scenario")
    cluster = _table(data.get("cluster"), "[cluster]") if "cluster" in data else None
    if cluster is None:
        raise _Bad("[cluster] table with name, username, password is required")
    _no_unknown(cluster, {"name", "username", "password", "region", "maxCount", "maxCoreCount", "strict_reference",
                          "quirks", "status_node_list", "regionalQuotaCoreCount", "private_network"}, "cluster")
    name = _str(cluster, "name", "cluster")
    raw_arrays = data.get("nodearrays")
    if not isinstance(raw_arrays, list) or not raw_arrays:
        raise _Bad("at least one [[nodearrays]] entry is required")
    nodearrays = [_nodearray(na, f"nodearrays[{i}]", name) for i, na in enumerate(raw_arrays)]
    names = [na.name for na in nodearrays]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise _Bad(f"nodearray {dup!r} is defined twice")

    timings_in = _table(data.get("timings", {}), "[timings]")
    _no_unknown(timings_in, set(TIMING_KEYS) | {"time_scale"}, "timings")
    timings = {k: _num(timings_in, k, "timings", DEFAULT_TIMINGS[k]) for k in TIMING_KEYS}
    time_scale = _num(timings_in, "time_scale", "timings", 1.0)

    prices_in = _table(data.get("prices", {}), "[prices]")
    prices = {str(k): _num(prices_in, k, "prices", 0.0) for k in prices_in}

    hooks = _table(data.get("hooks", {}), "[hooks]")
    _no_unknown(hooks, {"on_ready", "on_stop", "env"}, "hooks")
    env = _table(hooks.get("env", {}), "[hooks.env]")
    for k, v in env.items():
        if not isinstance(v, str):
            raise _Bad(f"hooks.env.{k} must be a string")

    faults = validate_faults(data.get("faults", {}))
    for target in faults["capacity_failure"]:
        check_capacity_target(target, nodearrays)

    return Scenario(
        cluster_name=name,
        username=_str(cluster, "username", "cluster"),
        password=_str(cluster, "password", "cluster"),
        region=_str(cluster, "region", "cluster", default="simregion"),
        max_count=_int(cluster, "maxCount", "cluster", default=sum(na.max_count for na in nodearrays)),
        max_core_count=_int(cluster, "maxCoreCount", "cluster", default=sum(na.max_core_count for na in nodearrays)),
        nodearrays=nodearrays,
        timings=timings,
        time_scale=time_scale,
        prices=prices,
        faults=faults,
        on_ready=_argv(hooks.get("on_ready"), "hooks.on_ready"),
        on_stop=_argv(hooks.get("on_stop"), "hooks.on_stop"),
        hook_env=dict(env),
        strict_reference=_bool(cluster, "strict_reference", "cluster", False),
        quirks=_bool(cluster, "quirks", "cluster", False),
        status_node_list=_bool(cluster, "status_node_list", "cluster", True),
        # The region's vCPU quota over every family; by default the sum of the families' quotas.
        private_network=_network(cluster.get("private_network", "127.1.0.0/16")),
        regional_quota_core_count=_int(cluster, "regionalQuotaCoreCount", "cluster", default=sum(
            {b.machine_type: b.quota_core_count for na in nodearrays for b in na.buckets}.values())),
    )


def _network(value: Any) -> str:
    """An IPv4 network of at least 256 addresses (PrivateIp: host .1 to .250 of each /24 in it)."""
    import ipaddress

    try:
        net = ipaddress.IPv4Network(value) if isinstance(value, str) else None
    except ValueError:
        net = None
    if net is None or net.prefixlen > 24:
        raise _Bad(f"cluster.private_network must be an IPv4 network of /24 or larger (got {value!r})")
    return str(net)


def check_capacity_target(target: str, nodearrays: list[NodearraySpec]) -> None:
    """A capacity_failure entry must name an existing bucket ("nodearray/machineType" or "machineType")."""
    if "/" in target:
        na_name, mt = target.split("/", 1)
        na = next((n for n in nodearrays if n.name == na_name), None)
        if na is None or na.bucket(mt) is None:
            raise _Bad(f"faults.capacity_failure: no bucket {target!r}")
    elif not any(na.bucket(target) for na in nodearrays):
        raise _Bad(f"faults.capacity_failure: no machineType {target!r} in any nodearray")


def faults_error(data: Any, nodearrays: list[NodearraySpec]) -> tuple[dict[str, Any] | None, str | None]:
    """Validate a partial faults update: (normalised, None) or (None, one-line error)."""
    try:
        out = validate_faults(data, partial=True)
        for target in out.get("capacity_failure", []):
            check_capacity_target(target, nodearrays)
    except _Bad as err:
        return None, str(err)
    return out, None
