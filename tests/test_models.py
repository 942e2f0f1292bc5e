"""Every example body in the API reference parses, and serialises back to the same JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hpc_bridge.api import models as m

# The reference's example bodies, copied from it as they are (the tests never read outside the repo).
REFERENCE_EXAMPLES = Path(__file__).resolve().parent / "data" / "api_reference_examples.json"

# The reference writes nested objects as the placeholder string "object". These are full
# examples built from the per-field "Example" values of each resource in the reference.
VM = {"gpuCount": 2, "infiniband": True, "memory": 7.5, "pcpuCount": 16, "vcpuCount": 32, "vcpuQuotaCount": 2}
PLACEMENT_GROUP = {"activeCoreCount": 16, "activeCount": 4, "name": "my-placement-group"}
BUCKET = {
    "activeCoreCount": 40, "activeCount": 10, "activeNodes": ["string"], "availableCoreCount": 8,
    "availableCount": 2, "bucketId": "00000000-0000-0000-0000-000000000000", "consumedCoreCount": 2,
    "definition": {"machineType": "A2"}, "familyConsumedCoreCount": 2, "familyQuotaCoreCount": 16,
    "familyQuotaCount": 4, "invalidReason": "DisabledMachineType", "lastCapacityFailure": 180.0,
    "maxCoreCount": 16, "maxCount": 4, "maxPlacementGroupCoreSize": 64, "maxPlacementGroupSize": 16,
    "placementGroups": [PLACEMENT_GROUP], "quotaCoreCount": 16, "quotaCount": 4, "regionalConsumedCoreCount": 2,
    "regionalQuotaCoreCount": 16, "regionalQuotaCount": 4, "valid": True, "virtualMachine": VM,
}
NODEARRAY = {"buckets": [BUCKET], "maxCoreCount": 16, "maxCount": 4, "name": "execute", "nodearray": {}}
USAGE_DETAIL = {"core_count": 0.0, "cost": 0.0, "hours": 0.0, "os": "Linux", "priority": "Regular",
                "region": "string", "vm_size": "string"}
USAGE_ITEM = {"category": "nodearray", "cost": 0.0, "details": [USAGE_DETAIL], "hours": 0.0, "node": "string"}
USAGE_INTERVAL = {"breakdown": [USAGE_ITEM], "end": "string", "start": "string",
                  "total": {"category": "cluster", "hours": 0.0}}
CREATION_SET = {"count": 1, "definition": {"machineType": "A2"}, "nameFormat": "custom-name-%d", "nameOffset": 1,
                "nodeAttributes": {}, "nodearray": "execute", "placementGroupId": "string"}
CREATION_RESULT_SET = {"added": 1, "message": "string"}
MANAGED_NODE = {"error": "This node must be terminated before it can be removed", "id": "id1", "name": "name1",
                "status": "Error"}
OPERATION = {"action": "string", "startTime": "2020-01-01T12:34:56Z"}
# The reference's node placeholder is `{}`; a record without a Name is skipped, so a named one.
NODE = {"Name": "execute-1", "NodeId": "00000000-0000-0000-0000-000000000001"}

# Which model each example body of the reference is, and what its "object" placeholders stand for.
PLACEHOLDERS = {
    "nodearrays": NODEARRAY, "usage": USAGE_INTERVAL, "nodes": MANAGED_NODE,
}


def _reference_examples() -> list[tuple[str, str, object]]:
    """(endpoint title, 'request'|'response', body) for every JSON example in the reference."""
    data = json.loads(REFERENCE_EXAMPLES.read_text())
    return [(e["endpoint"], e["body_of"], e["body"]) for e in data["examples"]]


def _model_for(title: str, kind: str):
    if title.startswith("GET /clusters/{cluster}/nodes"):
        return m.NodeList
    if title.endswith("/nodes/create"):
        return m.NodeCreationRequest if kind == "request" else m.NodeCreationResult
    if title.startswith("POST /clusters/{cluster}/nodes/"):
        return m.NodeManagementRequest if kind == "request" else m.NodeManagementResult
    if title.startswith("POST /clusters/{cluster}/scale"):
        return m.NodeCreationResult
    if title.endswith("/status"):
        return m.ClusterStatus
    if title.endswith("/usage"):
        return m.ClusterUsage
    if title == "GET /operations/":
        return None
    if title.startswith("GET /operations/"):
        return m.OperationStatus
    raise AssertionError(f"no model for {title}")


def _fill(body, model):
    """Replace the reference's "object" placeholders with full examples of the right resource."""
    if isinstance(body, dict):
        out = {}
        for key, value in body.items():
            if key == "nodes" and value == [{}]:
                value = [NODE]
            elif value == ["object"]:
                if key == "sets":
                    value = [CREATION_SET if model is m.NodeCreationRequest else CREATION_RESULT_SET]
                else:
                    value = [PLACEHOLDERS[key]]
            out[key] = value
        return out
    return body


def test_reference_has_all_examples():
    titles = {t for t, _, _ in _reference_examples()}
    assert len(titles) == 12, titles  # 11 endpoints + GET /operations/{id}


EXAMPLES = _reference_examples()


@pytest.mark.parametrize(
    "title,kind,body", EXAMPLES, ids=[f"{t} {k}" for t, k, _ in EXAMPLES]
)
def test_reference_example_round_trips(title, kind, body):
    if title == "GET /operations/":
        assert isinstance(body, list)
        for item in body:
            assert m.OperationStatus.model_validate(item).to_wire() == item
        return
    model = _model_for(title, kind)
    filled = _fill(body, model)
    parsed = model.model_validate(filled)
    assert parsed.to_wire() == filled


@pytest.mark.parametrize(
    "model,example",
    [
        (m.VirtualMachine, VM), (m.PlacementGroup, PLACEMENT_GROUP), (m.Bucket, BUCKET), (m.NodearrayStatus, NODEARRAY),
        (m.UsageDetail, USAGE_DETAIL), (m.ClusterUsageItem, USAGE_ITEM), (m.UsageInterval, USAGE_INTERVAL),
        (m.NodeCreationSet, CREATION_SET), (m.NodeCreationResultSet, CREATION_RESULT_SET),
        (m.ManagedNode, MANAGED_NODE), (m.OperationStatus, OPERATION),
    ],
)
def test_resource_examples_round_trip(model, example):
    assert model.model_validate(example).to_wire() == example


def test_unknown_fields_are_kept():
    body = {"Name": "hpc-1", "NodeId": "n1", "Status": "Ready", "Configuration": {"slurm": {"autoscale": True}},
            "SomethingNew": [1, 2]}
    node = m.Node.from_wire(body)
    assert node.name == "hpc-1" and node.status == "Ready"
    assert node.get("SomethingNew") == [1, 2]
    assert node.to_wire() == body
    bucket = dict(BUCKET, futureField={"x": 1})
    assert m.Bucket.model_validate(bucket).to_wire()["futureField"] == {"x": 1}


def test_node_typed_accessors():
    node = m.Node.from_wire({
        "Name": "hpc-1", "NodeId": "id-1", "Template": "hpc", "MachineType": "Standard_HB120rs_v3",
        "Status": "Preparing", "TargetState": "Started", "PrivateIp": "10.0.0.4", "Hostname": "ip-0A000004",
        "PlacementGroupId": "hpc-pg0", "KeepAlive": False, "ShutdownPolicy": "Deallocate", "Fixed": False,
        "InstanceId": "i-1", "StatusMessage": "booting", "CoreCount": 120, "Memory": 448.0, "Infiniband": True,
    })
    assert (node.template, node.machine_type, node.private_ip, node.placement_group_id) == (
        "hpc", "Standard_HB120rs_v3", "10.0.0.4", "hpc-pg0")
    assert node.shutdown_policy == "Deallocate" and node.keep_alive is False and node.core_count == 120
    assert node.to_wire()["Status"] == "Preparing"


def test_requests_leave_unset_fields_off_the_wire():
    s = m.NodeCreationSet.make(count=1, nodearray="hpc", name_format="hpc-1", placement_group_id=None)
    assert s.to_wire() == {"count": 1, "nodearray": "hpc", "nameFormat": "hpc-1"}
    r = m.NodeManagementRequest.make(names=["a"], ip_addresses=["10.0.0.1"], request_id="r1")
    assert r.to_wire() == {"names": ["a"], "ip_addresses": ["10.0.0.1"], "requestId": "r1"}


def test_missing_required_fields_are_rejected():
    with pytest.raises(Exception):
        m.NodeCreationResult.model_validate({"sets": []})
    with pytest.raises(Exception):
        m.Bucket.model_validate({"bucketId": "b"})  # no virtualMachine


# --------------------------------------------------------------------------- tolerant reading


def test_conditional_and_optional_bucket_fields_accept_null_and_absence():
    """The reference's "required" is conditional for some fields: a valid bucket may well send
    invalidReason null. Null reads as the documented default; absence of optional ones too."""
    nulls = dict(BUCKET, invalidReason=None, lastCapacityFailure=None, placementGroups=None, definition=None,
                 familyQuotaCount=None, regionalQuotaCount=None, activeNodes=None,
                 virtualMachine=dict(VM, gpuCount=None, infiniband=None, pcpuCount=None, vcpuQuotaCount=None))
    b = m.Bucket.model_validate(nulls)
    assert b.invalid_reason is None and b.last_capacity_failure == -1.0 and not b.had_capacity_failure
    assert b.placement_groups == [] and b.virtual_machine.gpu_count == 0 and b.virtual_machine.infiniband is False
    optional = {"regionalConsumedCoreCount", "regionalQuotaCoreCount", "regionalQuotaCount", "familyQuotaCount",
                "familyQuotaCoreCount", "familyConsumedCoreCount", "definition", "activeNodes"}
    m.Bucket.model_validate({k: v for k, v in BUCKET.items() if k not in optional})
    status = {"maxCoreCount": 16, "maxCount": 4, "nodes": None, "state": None,
              "nodearrays": [dict(NODEARRAY, buckets=[nulls])]}
    assert m.ClusterStatus.model_validate(status).nodearrays[0].buckets[0].valid
    # a null for a nullable field stays null: a bucket of unknown validity is not taken as valid
    assert m.Bucket.model_validate(dict(BUCKET, valid=None)).valid is None


def test_every_model_with_a_non_null_default_reads_null_as_that_default():
    """Only DefaultedWireModel subclasses run the null-reads-as-default validator: a model that
    has such a field must be one, or a null there would fail the whole response."""
    import inspect

    models = [c for _, c in inspect.getmembers(m, inspect.isclass) if issubclass(c, m.WireModel)]
    defaulted = {c.__name__ for c in models if m._defaulted_aliases(c)}
    assert {"Bucket", "VirtualMachine"} <= defaulted
    assert all(issubclass(getattr(m, name), m.DefaultedWireModel) for name in defaulted)
    assert m.PlacementGroup.model_validate({"name": "pg", "activeCount": None}).active_count == 0


def test_documented_required_fields_stay_required():
    for key in ("bucketId", "virtualMachine"):
        with pytest.raises(Exception):
            m.Bucket.model_validate({k: v for k, v in BUCKET.items() if k != key})
    with pytest.raises(Exception):
        m.OperationStatus.model_validate({"action": "create"})


def test_node_attributes_are_data_and_odd_values_never_fail():
    odd = {"Name": "htc-1", "NodeId": "n1", "Status": "Ready", "CoreCount": 2.5, "PlacementGroupId": 7,
           "PrivateIp": None, "Hostname": ["x"], "KeepAlive": "yes", "Memory": "8 GB", "MachineType": 3,
           "Configuration": {"slurm": {"a": [1, {"b": None}]}}, "Fixed": None}
    listing = m.NodeList.model_validate({"nodes": [odd, {"Name": "htc-2", "CoreCount": 4.0, "Memory": 8}]})
    one, two = listing.nodes
    assert (one.name, one.node_id, one.status) == ("htc-1", "n1", "Ready")
    assert one.core_count is None and one.placement_group_id is None and one.private_ip is None
    assert one.hostname is None and one.keep_alive is None and one.memory is None and one.machine_type is None
    assert one.fixed is None and one.get("Configuration") == {"slurm": {"a": [1, {"b": None}]}}
    assert one.to_wire() == odd  # kept exactly as sent
    assert two.core_count == 4 and two.memory == 8.0


def test_a_node_record_without_a_usable_name_is_skipped_with_one_warning():
    records = [{"Name": "htc-1"}, {"NodeId": "id-no-name", "Status": "Ready"}, {"Name": None, "NodeId": 5},
               {"Name": ""}, "not an object", {"Name": "htc-2"}]
    seen: list[logging.LogRecord] = []
    collect = logging.Handler(logging.WARNING)
    collect.emit = seen.append  # a handler of its own: a CLI run in this process may stop propagation
    api_log = logging.getLogger("hpc_bridge.api")
    level = api_log.level
    api_log.addHandler(collect)
    api_log.setLevel(logging.WARNING)
    try:
        listing = m.NodeList.model_validate({"nodes": records})
        status = m.ClusterStatus.model_validate({"maxCoreCount": 1, "maxCount": 1, "nodearrays": [],
                                                 "nodes": records[:2]})
    finally:
        api_log.removeHandler(collect)
        api_log.setLevel(level)
    assert [n.name for n in listing.nodes] == ["htc-1", "htc-2"]
    assert [n.name for n in status.nodes] == ["htc-1"]
    lines = [r.getMessage() for r in seen]
    assert len(lines) == 5 and all("without a usable Name" in ln and "\n" not in ln for ln in lines)
    assert "id-no-name" in lines[0] and "not an object" in lines[3]


def test_operation_status_is_read_as_documented():
    op = m.OperationStatus.model_validate({"action": "create", "startTime": "2020-01-01T12:34:56Z",
                                           "operationId": "extra", "requestId": "r"})
    assert set(m.OperationStatus.model_fields) == {"action", "start_time"}  # nothing beyond the reference
    assert op.to_wire()["operationId"] == "extra"  # but what a service adds is kept


def test_management_result_names_the_nodes_it_did_not_affect():
    result = m.NodeManagementResult.model_validate({"operationId": "op-1", "nodes": [
        {"id": "1", "name": "a", "status": "OK"},
        {"id": "2", "name": "b", "status": "Error", "error": "This node must be terminated before it can be removed"},
        {"id": "3", "name": "c"},  # status is optional: no Error means it was affected
        {"id": "4", "name": "d", "status": "Error"},
    ]})
    assert result.refused == {"b": "This node must be terminated before it can be removed", "d": None}
