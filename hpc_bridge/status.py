"""Status view: the cluster's buckets as plain rows (pure)."""

from __future__ import annotations

from typing import Any

from hpc_bridge.api.models import ClusterStatus


def status_rows(status: ClusterStatus) -> list[dict[str, Any]]:
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
            })
    return rows
