"""Status view: the cluster's buckets as plain rows (`status_rows`, pure), and `gather`, which
reads them (one GET status, one state-file read for the VM sizes out of service)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from hpc_bridge.api.models import ClusterStatus


def service_of(cooloff: Any, now: float) -> str:
    """Whether a VM size takes new nodes: "yes", a capacity cool-off, or a hold until cleared."""
    if cooloff is None or not cooloff.active(now):
        return "yes"
    if cooloff.held:
        return "held: hpc-bridge clear-hold"
    return f"cool-off until {time.strftime('%H:%M:%S', time.localtime(cooloff.until))}"


def status_rows(status: ClusterStatus, cooloffs: Mapping[str, Any] | None = None, now: float = 0.0
                ) -> list[dict[str, Any]]:
    """One row per bucket; `cooloffs` (bucket key -> the state file's Cooloff) says which sizes
    hpc-bridge keeps out of service."""
    rows = []
    for array in status.nodearrays:
        for bucket in array.buckets:
            vm = bucket.virtual_machine
            rows.append({
                "nodearray": array.name,
                "bucketId": bucket.bucket_id,
                "machineType": bucket.machine_type,
                "vcpuCount": vm.vcpu_count,
                "pcpuCount": vm.pcpu_count,
                "memoryGB": vm.memory,
                "gpuCount": vm.gpu_count,
                "infiniband": vm.infiniband,
                "activeCount": bucket.active_count,
                "availableCount": bucket.available_count,
                "maxCount": bucket.max_count,
                "maxPlacementGroupSize": bucket.max_placement_group_size,
                "lastCapacityFailure": bucket.last_capacity_failure if bucket.had_capacity_failure else None,
                "valid": bucket.valid,
                "invalidReason": bucket.invalid_reason or None,
                "inService": service_of((cooloffs or {}).get(f"{array.name}/{bucket.machine_type}"), now),
            })
    return rows


@dataclass
class StatusView:
    cluster: str
    status: ClusterStatus
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "maxCount": self.status.max_count,
                "maxCoreCount": self.status.max_core_count, "buckets": self.rows}


def gather(cfg, client, now: float | None = None) -> StatusView:
    from hpc_bridge.errors import BridgeError
    from hpc_bridge.state import StateStore

    status = client.get_status()
    warnings = []
    try:
        cooloffs = StateStore.from_config(cfg).read().cooloffs
    except BridgeError as err:  # the API's view is still worth showing
        warnings.append(str(err))
        cooloffs = {}
    rows = status_rows(status, cooloffs, time.time() if now is None else now)
    return StatusView(cluster=cfg.cluster.name, status=status, rows=rows, warnings=warnings)
