"""The simulator's strict reference form and its quirks form, over real HTTP: what each serves,
and that hpc-bridge's client reads every form."""

from __future__ import annotations

import pytest

from hpc_bridge.api.models import NodeList
from hpc_bridge.errors import ConflictError, NotFoundError
from bridge_env import FORMS
from hpc_bridge.sim.server import SimServer
from test_sim_server import client_for, fast_scenario, nodearray, raw, wait_for

CREATE = {"sets": [{"count": 1, "nodearray": "htc", "nameFormat": "htc-1",
                    "definition": {"machineType": "Standard_F2s_v2"}},
                   {"count": 1, "nodearray": "htc", "nameFormat": "htc-fixed",
                    "definition": {"machineType": "Standard_F2s_v2"}, "nodeAttributes": {"Fixed": True}}]}


def form_scenario(**switches) -> dict:
    data = fast_scenario()
    data["cluster"].update(switches)
    return data


@pytest.fixture
def strict():
    with SimServer(form_scenario(**FORMS["strict"])) as server:
        yield server


@pytest.fixture
def quirks():
    with SimServer(form_scenario(**FORMS["quirks"])) as server:
        yield server


def nodes_by_name(sim) -> dict:
    return {n["Name"]: n for n in raw(sim, "GET", "/clusters/demo/nodes").json()["nodes"]}


def test_strict_operation_status_has_only_the_documented_fields(strict):
    r = raw(strict, "POST", "/clusters/demo/nodes/create", json={**CREATE, "requestId": "rq-1"})
    assert r.status_code == 202
    op_id = r.json()["operationId"]
    assert r.headers["Location"] == f"/operations/{op_id}"
    documented = {"action", "startTime"}
    assert set(raw(strict, "GET", "/operations/", params={"request_id": "rq-1"}).json()[0]) == documented
    assert set(raw(strict, "GET", f"/operations/{op_id}").json()) == documented
    assert all(set(op) == documented for op in raw(strict, "GET", "/operations/").json())
    by_op = raw(strict, "GET", "/clusters/demo/nodes", params={"operation": op_id}).json()
    assert set(by_op["operation"]) == documented and len(by_op["nodes"]) == 2


@pytest.mark.parametrize("params,status", [
    ({"operation": "x", "request_id": "y"}, 400), ({"request_id": ""}, 400), ({"operation": ""}, 400),
    ({"request_id": "never-sent"}, 404), ({"operation": "no-such-op"}, 404),
])
def test_strict_get_nodes_specification_errors_have_no_content(strict, params, status):
    r = raw(strict, "GET", "/clusters/demo/nodes", params=params)
    assert r.status_code == status and r.content == b""


def test_strict_409_and_404_have_no_content_and_the_client_still_says_what_happened(strict):
    body = {**CREATE, "requestId": "rq-dup"}
    assert raw(strict, "POST", "/clusters/demo/nodes/create", json=body).status_code == 202
    r = raw(strict, "POST", "/clusters/demo/nodes/create", json=body)
    assert r.status_code == 409 and r.content == b""
    assert raw(strict, "GET", "/operations/nope").content == b""
    with client_for(strict) as c:
        with pytest.raises(ConflictError, match="409.*invalid input"):
            c.manage_nodes("terminate", names=["htc-1"], request_id="rq-dup")
        with pytest.raises(NotFoundError):
            c.get_operation("nope")


def test_strict_status_nulls_and_what_the_vendors_client_expects(strict):
    status = raw(strict, "GET", "/clusters/demo/status").json()
    for na in status["nodearrays"]:
        assert na["nodearray"]["SubnetId"] and isinstance(na["nodearray"]["Configuration"], dict)
        for b in na["buckets"]:
            assert b["valid"] and b["invalidReason"] is None
            assert {"regionalConsumedCoreCount", "regionalQuotaCoreCount", "regionalQuotaCount"} <= set(b)
    with client_for(strict) as c:
        st = c.get_status()
    assert all(b.invalid_reason is None for na in st.nodearrays for b in na.buckets)


@pytest.mark.parametrize("form", list(FORMS))
def test_status_lists_the_nodes_only_when_asked_and_only_where_the_form_sends_the_optional_list(form):
    """`nodes` in ClusterStatus is optional, "only included if nodes=true is in the query": the
    strict form (status_node_list = false) leaves it out even then; the client reads it as absent."""
    with SimServer(form_scenario(**FORMS[form])) as sim:
        raw(sim, "POST", "/clusters/demo/nodes/create", json=CREATE)
        assert "nodes" not in raw(sim, "GET", "/clusters/demo/status").json()
        asked = raw(sim, "GET", "/clusters/demo/status", params={"nodes": "true"}).json()
        with client_for(sim) as c:
            status = c.get_status(nodes=True)
    if FORMS[form].get("status_node_list", True):
        assert sorted(n["Name"] for n in asked["nodes"]) == ["htc-1", "htc-fixed"]
        assert sorted(n.name for n in status.nodes) == ["htc-1", "htc-fixed"]
    else:
        assert "nodes" not in asked and status.nodes is None
    assert asked["nodearrays"] and status.nodearrays  # the rest of the answer as ever


def test_regional_quota_is_served_and_enforced():
    data = fast_scenario()
    data["cluster"]["regionalQuotaCoreCount"] = 6
    with SimServer(data) as sim:
        r = raw(sim, "POST", "/clusters/demo/nodes/create", json={"sets": [
            {"count": 4, "nodearray": "htc", "definition": {"machineType": "Standard_F2s_v2"}}]})
        assert r.json()["sets"][0]["added"] == 3 and "regional quota" in r.json()["sets"][0]["message"]
        f2 = raw(sim, "GET", "/clusters/demo/status").json()["nodearrays"][1]["buckets"][0]
    assert (f2["regionalQuotaCoreCount"], f2["regionalQuotaCount"], f2["regionalConsumedCoreCount"]) == (6, 3, 6)
    assert f2["availableCount"] == 0


def test_strict_terminate_removes_the_record_unless_fixed(strict):
    raw(strict, "POST", "/clusters/demo/nodes/create", json=CREATE)
    wait_for(lambda: {n["Status"] for n in nodes_by_name(strict).values()} == {"Ready"})
    r = raw(strict, "POST", "/clusters/demo/nodes/terminate", json={"names": ["htc-1", "htc-fixed"]})
    assert [n["status"] for n in r.json()["nodes"]] == ["OK", "OK"]
    wait_for(lambda: "htc-1" not in nodes_by_name(strict))
    assert nodes_by_name(strict)["htc-fixed"]["Status"] == "Terminated"  # Fixed: kept
    r = raw(strict, "POST", "/clusters/demo/nodes/remove", json={"names": ["htc-fixed"]})
    assert r.json()["nodes"][0]["status"] == "Error"  # Fixed nodes are not removed either


def test_default_form_keeps_terminated_records():
    with SimServer(fast_scenario()) as sim:
        raw(sim, "POST", "/clusters/demo/nodes/create", json=CREATE)
        wait_for(lambda: nodes_by_name(sim).get("htc-1", {}).get("Status") == "Ready")
        raw(sim, "POST", "/clusters/demo/nodes/terminate", json={"names": ["htc-1"]})
        wait_for(lambda: nodes_by_name(sim)["htc-1"]["Status"] == "Terminated")


@pytest.fixture
def quirks_real_boot_times():
    """Quirks with real boot times: a node is still booting when it is read, however slow the
    machine (with the fast timings it could be Preparing by then); the test moves the clock on."""
    scenario = form_scenario(strict_reference=True, quirks=True)
    scenario["timings"]["time_scale"] = 1
    with SimServer(scenario) as server:
        yield server


def test_quirks_nested_attributes_nulls_and_floats_are_read(quirks_real_boot_times):
    quirks = quirks_real_boot_times
    raw(quirks, "POST", "/clusters/demo/nodes/create", json=CREATE)
    first = nodes_by_name(quirks)["htc-1"]
    assert first["Status"] in ("Off", "Acquiring") and first["PrivateIp"] is None and first["InstanceId"] is None
    assert isinstance(first["CoreCount"], float) and isinstance(first["Configuration"]["cyclecloud"], dict)
    status = raw(quirks, "GET", "/clusters/demo/status").json()
    bucket = status["nodearrays"][0]["buckets"][0]
    assert bucket["lastCapacityFailure"] is None and isinstance(bucket["availableCount"], float)
    node = NodeList.model_validate({"nodes": [first]}).nodes[0]
    assert node.private_ip is None and node.core_count == 2 and node.get("Software")
    with client_for(quirks) as c:
        st = c.get_status()
        hpc = nodearray(st, "hpc").buckets[0]
        assert hpc.available_count == 16 and not hpc.had_capacity_failure
        quirks.advance(3600)
        wait_for(lambda: {n.name: n for n in c.get_nodes().nodes}["htc-1"].private_ip)


def test_quirks_capacity_message_is_worded_its_own_way(quirks):
    quirks.set_faults(capacity_failure=["htc/Standard_F2s_v2"])
    r = raw(quirks, "POST", "/clusters/demo/nodes/create", json=CREATE)
    message = r.json()["sets"][0]["message"]
    assert r.json()["sets"][0]["added"] == 0 and "capacity" not in message.lower()
    with client_for(quirks) as c:
        bucket = nodearray(c.get_status(), "htc").buckets[0]
    assert bucket.capacity_failure_within(60)  # the documented signal


def test_partitions_are_the_same_whatever_the_form():
    """The generated Slurm config depends on documented bucket data only: nulls, floats and
    undocumented attributes of the other forms change nothing."""
    from hpc_bridge.api.models import ClusterStatus
    from hpc_bridge.partitions import render
    from hpc_bridge.partitions_plan import plan_partitions
    from hpc_bridge.sim.model import ClusterModel
    from test_partitions_plan import make_cfg

    rendered = {}
    for form, switches in FORMS.items():
        model = ClusterModel(form_scenario(**switches), now=0.0)
        status = ClusterStatus.model_validate(model.status(0.0, nodes=True))
        rendered[form] = render(plan_partitions(status, make_cfg()))
    assert rendered["strict"] == rendered["default"] and rendered["quirks"] == rendered["default"]


def test_operations_command_on_the_strict_form_shows_no_id_it_was_not_given(tmp_path, strict, monkeypatch, capsys):
    """OperationStatus has no id in the reference: the list says "-", never None; one
    operation is still shown by the id its 202 answer gave."""
    from test_ops_sim import run, write_config

    monkeypatch.delenv("HPC_BRIDGE_PASSWORD", raising=False)
    config = write_config(tmp_path, strict)
    op_id = raw(strict, "POST", "/clusters/demo/nodes/create", json=CREATE).json()["operationId"]
    rc, out, _ = run(capsys, "--config", str(config), "operations")
    assert rc == 0 and "None" not in out
    assert out.splitlines()[1].split()[:2] == ["-", "create"]
    rc, out, _ = run(capsys, "--config", str(config), "operations", op_id)
    assert rc == 0 and f"operation {op_id}: create" in out and "2 node(s)" in out
