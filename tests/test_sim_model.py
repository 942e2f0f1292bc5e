"""The pure simulator model: table tests with an explicit clock (no HTTP, no threads)."""

from __future__ import annotations

import copy
import os
from datetime import datetime, timezone

import pytest

from hpc_bridge.sim.filter import FilterError, compile_filter
from hpc_bridge.sim.model import ClusterModel, SimError
from hpc_bridge.sim.scenario import ScenarioError, load_scenario

T0 = datetime(2024, 3, 10, 0, 0, tzinfo=timezone.utc).timestamp()  # a Sunday, midnight UTC

SCENARIO = {
    "cluster": {"name": "t", "username": "u", "password": "p", "maxCount": 30, "region": "r1"},
    "timings": {"off": 1, "acquiring": 10, "preparing": 20, "terminating": 5, "deallocating": 5, "time_scale": 1.0},
    "prices": {"F2": 0.5, "HB": 2.0},
    "faults": {"seed": 7},
    "nodearrays": [
        {"name": "hpc", "ShutdownPolicy": "Deallocate", "maxCount": 6,
         "buckets": [{"machineType": "HB", "vcpuCount": 4, "memory": 16.0, "infiniband": True, "maxCount": 6,
                      "maxPlacementGroupSize": 2}]},
        {"name": "htc", "maxCount": 10,
         "buckets": [{"machineType": "F2", "vcpuCount": 2, "memory": 4.0, "maxCount": 8, "quotaCoreCount": 10},
                     {"machineType": "F4", "vcpuCount": 4, "memory": 8.0, "maxCount": 8},
                     {"machineType": "OLD", "vcpuCount": 1, "memory": 1.0, "maxCount": 8, "valid": False}]},
    ],
}


def scen(**changes):
    data = copy.deepcopy(SCENARIO)
    for path, value in changes.items():
        target = data
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        target[keys[-1]] = value
    return data


@pytest.fixture
def m():
    return ClusterModel(SCENARIO, now=T0)


def create(m, *sets, t=T0, request_id=None):
    body = {"sets": list(sets)}
    if request_id:
        body["requestId"] = request_id
    return m.create(body, t)


def nodes(m, t=T0):
    return {n["Name"]: n for n in m.get_nodes(t)["nodes"]}


def bucket(m, na, mt, t=T0, with_nodes=False):
    st = m.status(t, nodes=with_nodes)
    arr = next(a for a in st["nodearrays"] if a["name"] == na)
    return next(b for b in arr["buckets"] if b["definition"]["machineType"] == mt)


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize(
    "dt,status,has_ip",
    [(0, "Off", False), (0.9, "Off", False), (1, "Acquiring", False), (10.9, "Acquiring", False),
     (11, "Preparing", True), (30.9, "Preparing", True), (31, "Ready", True), (500, "Ready", True)],
)
def test_lifecycle_is_driven_by_the_clock(m, dt, status, has_ip):
    create(m, {"count": 1, "nodearray": "htc", "nameFormat": "a"})
    node = nodes(m, T0 + dt)["a"]
    assert node["Status"] == status
    assert ("PrivateIp" in node) == has_ip
    assert ("Hostname" in node) == has_ip
    if has_ip:
        assert node["PrivateIp"].startswith("127.1.")


def test_private_ips_come_from_the_scenarios_network():
    data = copy.deepcopy(SCENARIO)
    data["cluster"]["private_network"] = "10.213.8.0/22"
    m = ClusterModel(data, now=T0)
    create(m, {"count": 3, "nodearray": "htc", "nameFormat": "a-%d"})
    ips = sorted(n["PrivateIp"] for n in nodes(m, T0 + 31).values())
    assert ips == ["10.213.8.1", "10.213.8.2", "10.213.8.3"]


def test_ready_and_stop_events_for_hooks(m):
    create(m, {"count": 1, "nodearray": "htc", "nameFormat": "a"})
    m.advance(T0 + 31)
    assert [(k, n["Name"], n["Status"]) for k, n in m.events] == [("ready", "a", "Ready")]
    m.events.clear()
    m.manage("terminate", {"names": ["a"]}, T0 + 40)
    assert [(k, n["Name"]) for k, n in m.events] == [("stop", "a")]


def test_ips_unique_and_loopback(m):
    create(m, {"count": 8, "nodearray": "htc", "definition": {"machineType": "F4"}},
           {"count": 5, "nodearray": "hpc"})
    ips = [n["PrivateIp"] for n in nodes(m, T0 + 40).values()]
    hosts = [n["Hostname"] for n in nodes(m, T0 + 40).values()]
    assert len(set(ips)) == len(ips) == 13 and all(ip.startswith("127.") for ip in ips)
    assert len(set(hosts)) == 13


def test_deallocate_then_start_brings_back_the_same_node(m):
    create(m, {"count": 1, "nodearray": "htc", "nameFormat": "a"})
    before = nodes(m, T0 + 40)["a"]
    m.manage("deallocate", {"names": ["a"]}, T0 + 40)
    assert nodes(m, T0 + 41)["a"]["Status"] == "Deallocating"
    assert nodes(m, T0 + 45)["a"]["Status"] == "Deallocated"
    r = m.manage("start", {"ids": [before["NodeId"]]}, T0 + 50)
    assert r["nodes"] == [{"id": before["NodeId"], "name": "a", "status": "OK"}]
    after = nodes(m, T0 + 100)["a"]
    assert (after["NodeId"], after["PrivateIp"], after["Status"]) == (before["NodeId"], before["PrivateIp"], "Ready")


@pytest.mark.parametrize(
    "nodearray,attrs,expected",
    [("hpc", {}, "Deallocated"), ("htc", {}, "Terminated"),
     ("htc", {"ShutdownPolicy": "Deallocate"}, "Deallocated"), ("hpc", {"ShutdownPolicy": "Terminate"}, "Terminated")],
)
def test_shutdown_applies_shutdown_policy(m, nodearray, attrs, expected):
    create(m, {"count": 1, "nodearray": nodearray, "nameFormat": "a", "nodeAttributes": attrs})
    m.manage("shutdown", {"names": ["a"]}, T0 + 40)
    assert nodes(m, T0 + 50)["a"]["Status"] == expected


def test_terminate_keeps_record_remove_deletes_it(m):
    create(m, {"count": 3, "nodearray": "htc", "nameFormat": "n%d", "nameOffset": 1},
           {"count": 1, "nodearray": "htc", "nameFormat": "fixed", "nodeAttributes": {"Fixed": True}})
    m.manage("terminate", {"names": ["n1"]}, T0 + 40)
    assert nodes(m, T0 + 50)["n1"]["Status"] == "Terminated"
    assert "InstanceId" not in nodes(m, T0 + 50)["n1"]
    r = m.manage("remove", {"names": ["n1", "n2", "fixed"]}, T0 + 50)
    by_name = {e["name"]: e for e in r["nodes"]}
    assert by_name["n1"]["status"] == by_name["n2"]["status"] == "OK"
    assert by_name["fixed"]["status"] == "Error" and "Fixed" in by_name["fixed"]["error"]
    after = nodes(m, T0 + 51)
    assert "n1" not in after and after["n2"]["Status"] == "Terminating"
    assert "n2" not in nodes(m, T0 + 60) and "fixed" in nodes(m, T0 + 60)


def test_boot_failure_is_injected_and_reproducible():
    def run(seed):
        m = ClusterModel(scen(faults={"seed": seed, "boot_failure_rate": 0.5}), now=T0)
        create(m, {"count": 8, "nodearray": "htc", "definition": {"machineType": "F4"}})
        return {n: v["Status"] for n, v in nodes(m, T0 + 40).items()}

    first = run(3)
    assert first == run(3)
    assert set(first.values()) == {"Ready", "Failed"}
    m = ClusterModel(scen(faults={"boot_failure_rate": 1.0}), now=T0)
    create(m, {"count": 1, "nodearray": "htc", "nameFormat": "a"})
    failed = nodes(m, T0 + 40)["a"]
    assert failed["Status"] == "Failed" and "boot failure" in failed["StatusMessage"]
    r = m.manage("start", {"names": ["a"]}, T0 + 41)
    assert r["nodes"][0]["status"] == "Error"
    m.manage("terminate", {"names": ["a"]}, T0 + 41)
    m.set_faults({"boot_failure_rate": 0.0})
    assert m.manage("start", {"names": ["a"]}, T0 + 50)["nodes"][0]["status"] == "OK"
    assert nodes(m, T0 + 90)["a"]["Status"] == "Ready"


# --------------------------------------------------------------------------- create: names and limits


@pytest.mark.parametrize(
    "s,names",
    [
        ({"count": 1, "nodearray": "htc", "nameFormat": "exact-name"}, ["exact-name"]),
        ({"count": 3, "nodearray": "htc", "nameFormat": "c-%d", "nameOffset": 5}, ["c-5", "c-6", "c-7"]),
        ({"count": 2, "nodearray": "htc", "nameFormat": "c-%d"}, ["c-1", "c-2"]),
        ({"count": 2, "nodearray": "htc"}, ["htc-1", "htc-2"]),
        ({"count": 1, "nodearray": "hpc", "nameFormat": "p%%-%d", "nameOffset": 0}, ["p%-0"]),
    ],
)
def test_names(m, s, names):
    assert create(m, s)["sets"] == [{"added": len(names)}]
    assert list(nodes(m)) == names


def test_default_names_take_lowest_free_index(m):
    create(m, {"count": 1, "nodearray": "htc", "nameFormat": "htc-2"})
    create(m, {"count": 2, "nodearray": "htc"})
    assert sorted(nodes(m)) == ["htc-1", "htc-2", "htc-3"]


def test_existing_name_is_refused_terminated_name_is_replaced(m):
    create(m, {"count": 1, "nodearray": "htc", "nameFormat": "a"})
    old_id = nodes(m)["a"]["NodeId"]
    r = create(m, {"count": 1, "nodearray": "htc", "nameFormat": "a"},
               {"count": 2, "nodearray": "htc", "nameFormat": "b%d", "nameOffset": 1})
    assert r["sets"][0]["added"] == 0 and "already exist: a" in r["sets"][0]["message"]
    assert r["sets"][1] == {"added": 2}
    r = create(m, {"count": 3, "nodearray": "htc", "nameFormat": "b%d", "nameOffset": 2})
    assert r["sets"][0]["added"] == 0 and "b2" in r["sets"][0]["message"]
    m.manage("terminate", {"names": ["a"]}, T0 + 40)
    r = create(m, {"count": 1, "nodearray": "htc", "nameFormat": "a"}, t=T0 + 50)
    assert r["sets"] == [{"added": 1}]
    new = [n for n in m.get_nodes(T0 + 50)["nodes"] if n["Name"] == "a"]
    assert len(new) == 1 and new[0]["NodeId"] != old_id and new[0]["Status"] in ("Off", "Acquiring")


def test_node_attributes_and_placement_group_are_stored(m):
    create(m, {"count": 2, "nodearray": "hpc", "placementGroupId": "pg-a",
               "nodeAttributes": {"Configuration": {"slurm": {"partition": "hpc"}}, "KeepAlive": True, "Status": "x"}})
    for n in nodes(m).values():
        assert n["PlacementGroupId"] == "pg-a"
        assert n["Configuration"] == {"slurm": {"partition": "hpc"}}
        assert n["KeepAlive"] is True
        assert n["Status"] != "x"  # simulator-owned attributes cannot be set


def test_a_users_attribute_change_on_a_live_node(m):
    create(m, {"count": 1, "nodearray": "htc", "nameFormat": "k"})
    assert nodes(m)["k"]["KeepAlive"] is False
    m.set_node_attributes("k", {"KeepAlive": True})
    assert nodes(m)["k"]["KeepAlive"] is True
    with pytest.raises(SimError) as err:
        m.set_node_attributes("k", {"Status": "Ready"})  # simulator-owned
    assert err.value.status == 409 and nodes(m)["k"]["Status"] != "Ready"
    with pytest.raises(SimError) as err:
        m.set_node_attributes("nope", {"KeepAlive": True})
    assert err.value.status == 404


@pytest.mark.parametrize(
    "scenario_changes,s,added,why",
    [
        ({}, {"count": 9, "nodearray": "htc", "definition": {"machineType": "F4"}}, 8, "bucket F4 in nodearray htc reached its maxCount 8"),
        ({"nodearrays__1__maxCount": 3}, {"count": 5, "nodearray": "htc", "definition": {"machineType": "F4"}}, 3, "nodearray htc reached its maxCount 3"),
        ({"cluster__maxCount": 2}, {"count": 5, "nodearray": "hpc"}, 2, "cluster reached its maxCount 2"),
        ({"cluster__maxCoreCount": 10}, {"count": 5, "nodearray": "hpc"}, 2, "cluster reached its maxCoreCount 10"),
        ({}, {"count": 8, "nodearray": "htc", "definition": {"machineType": "F2"}}, 5, "quota exceeded for F2: quotaCoreCount 10"),
        ({"nodearrays__1__buckets__0__quotaCount": 3, "nodearrays__1__buckets__0__quotaCoreCount": 100},
         {"count": 8, "nodearray": "htc", "definition": {"machineType": "F2"}}, 3, "quota exceeded for F2: quotaCount 3"),
        ({}, {"count": 3, "nodearray": "hpc", "placementGroupId": "g"}, 2, "placement group g reached maxPlacementGroupSize 2"),
        ({}, {"count": 2, "nodearray": "htc", "definition": {"machineType": "OLD"}}, 0, "not valid (DisabledMachineType)"),
    ],
)
def test_creation_limits(scenario_changes, s, added, why):
    m = ClusterModel(scen(**scenario_changes), now=T0)
    r = create(m, s)["sets"][0]
    assert r["added"] == added
    assert why in r["message"]
    assert len(nodes(m)) == added


def test_limits_count_existing_nodes_and_placement_groups_separately(m):
    create(m, {"count": 2, "nodearray": "hpc", "placementGroupId": "g1"})
    r = create(m, {"count": 1, "nodearray": "hpc", "placementGroupId": "g1"},
               {"count": 2, "nodearray": "hpc", "placementGroupId": "g2"})
    assert r["sets"][0]["added"] == 0 and "g1" in r["sets"][0]["message"]
    assert r["sets"][1] == {"added": 2}
    b = bucket(m, "hpc", "HB")
    assert b["placementGroups"] == [{"name": "g1", "activeCount": 2, "activeCoreCount": 8},
                                    {"name": "g2", "activeCount": 2, "activeCoreCount": 8}]
    # Deallocated nodes still hold their slot (max 6) but free their quota and are not active.
    m.manage("deallocate", {"filter": 'PlacementGroupId === "g1"'}, T0 + 40)
    b = bucket(m, "hpc", "HB", T0 + 50)
    assert (b["activeCount"], b["availableCount"], b["consumedCoreCount"]) == (2, 2, 8)


def test_capacity_failure_fault():
    m = ClusterModel(scen(faults={"capacity_failure": ["htc/F4"]}), now=T0)
    assert bucket(m, "htc", "F4")["lastCapacityFailure"] < 0
    r = create(m, {"count": 2, "nodearray": "htc", "definition": {"machineType": "F4"}},
               {"count": 1, "nodearray": "htc", "definition": {"machineType": "F2"}})
    assert r["sets"][0]["added"] == 0 and "Capacity failure" in r["sets"][0]["message"]
    assert r["sets"][1] == {"added": 1}
    assert bucket(m, "htc", "F4", T0 + 30)["lastCapacityFailure"] == 30
    assert bucket(m, "htc", "F2", T0 + 30)["lastCapacityFailure"] < 0


@pytest.mark.parametrize(
    "body,message",
    [
        ({"sets": []}, "sets must be a non-empty list"),
        ({}, "sets must be a non-empty list"),
        ({"sets": [{"count": 1, "nodearray": "nope"}]}, "unknown nodearray"),
        ({"sets": [{"count": 0, "nodearray": "htc"}]}, "count must be an integer >= 1"),
        ({"sets": [{"count": 1, "nodearray": "htc", "definition": {"machineType": "X"}}]}, "no bucket with machineType"),
        ({"sets": [{"count": 2, "nodearray": "htc", "nameFormat": "literal"}]}, "count must be 1"),
        ({"sets": [{"count": 1, "nodearray": "htc", "nameFormat": "a-%s"}]}, "one %d"),
        ({"sets": [{"count": 1, "nodearray": "htc", "nameOffset": -1}]}, "nameOffset"),
    ],
)
def test_invalid_create_is_409_and_changes_nothing(m, body, message):
    with pytest.raises(SimError) as err:
        m.create(body, T0)
    assert err.value.status == 409 and message in err.value.message
    assert nodes(m) == {} and m.operations == {}


def test_duplicate_request_id_is_409(m):
    create(m, {"count": 1, "nodearray": "htc"}, request_id="r1")
    with pytest.raises(SimError) as err:
        create(m, {"count": 1, "nodearray": "htc"}, request_id="r1")
    assert err.value.status == 409 and "duplicate requestId" in err.value.message
    with pytest.raises(SimError):
        m.manage("terminate", {"names": ["htc-1"], "requestId": "r1"}, T0)
    m.manage("terminate", {"names": ["htc-1"], "requestId": "r2"}, T0)
    with pytest.raises(SimError):
        m.manage("start", {"names": ["htc-1"], "requestId": "r2"}, T0)
    assert len(nodes(m)) == 1


# --------------------------------------------------------------------------- selection and filters


@pytest.mark.parametrize(
    "expr,expected",
    [
        ('State === "Started"', {"a1", "a2", "b1"}),
        ('Name === "a1"', {"a1"}),
        ('Status !== "Ready"', {"d1"}),
        ('Template === "htc" && Status === "Ready"', {"a1", "a2"}),
        ('Name === "a1" || Name === "b1"', {"a1", "b1"}),
        ('!(Template === "htc")', {"b1"}),
        ("CoreCount >= 4", {"b1", "d1"}),
        ("Fixed", set()),
        ('Status == "Deallocated" || PlacementGroupId === null && Template === "hpc"', {"d1", "b1"}),
        ("true", {"a1", "a2", "b1", "d1"}),
    ],
)
def test_filter_selection(m, expr, expected):
    create(m, {"count": 2, "nodearray": "htc", "nameFormat": "a%d", "nameOffset": 1},
           {"count": 1, "nodearray": "hpc", "nameFormat": "b1"},
           {"count": 1, "nodearray": "htc", "nameFormat": "d1", "definition": {"machineType": "F4"}})
    m.manage("deallocate", {"names": ["d1"]}, T0 + 40)
    m.advance(T0 + 50)
    assert {r.name for r in m.select({"filter": expr})} == expected


@pytest.mark.parametrize("expr", ['State = "x"', "contains(Name, 'a')", "Name in ['a']", "Name ===", "(Name", "", "1 + 1"])
def test_unsupported_filter_is_409(m, expr):
    with pytest.raises(SimError) as err:
        m.manage("terminate", {"filter": expr}, T0)
    assert err.value.status == 409 and "filter" in err.value.message
    with pytest.raises(FilterError):
        compile_filter(expr)


def test_selection_is_a_union_without_duplicates(m):
    create(m, {"count": 4, "nodearray": "htc", "nameFormat": "n%d", "nameOffset": 1})
    ns = nodes(m, T0 + 40)
    r = m.manage("terminate", {"names": ["n1", "zzz"], "ids": [ns["n1"]["NodeId"], ns["n2"]["NodeId"]],
                               "hostnames": [ns["n3"]["Hostname"]], "ip_addresses": [ns["n4"]["PrivateIp"]]}, T0 + 40)
    assert [e["name"] for e in r["nodes"]] == ["n1", "n2", "n3", "n4"]
    with pytest.raises(SimError) as err:
        m.manage("terminate", {}, T0 + 40)
    assert err.value.status == 409


# --------------------------------------------------------------------------- status, scale, operations


def test_status_live_counts(m):
    create(m, {"count": 3, "nodearray": "htc", "definition": {"machineType": "F4"}})
    b = bucket(m, "htc", "F4", with_nodes=True)
    assert (b["activeCount"], b["activeCoreCount"], b["availableCount"], b["availableCoreCount"]) == (3, 12, 5, 20)
    assert b["activeNodes"] == ["htc-1", "htc-2", "htc-3"]
    assert b["maxCount"] == 8 and b["maxCoreCount"] == 32
    st = m.status(T0, nodes=True)
    assert len(st["nodes"]) == 3 and st["maxCount"] == 30
    assert "nodes" not in m.status(T0)
    assert bucket(m, "htc", "F2")["availableCount"] == 5  # quotaCoreCount 10 / 2 cores
    assert bucket(m, "htc", "OLD")["availableCount"] == 0


@pytest.mark.parametrize(
    "kwargs,added,total",
    [({"total_node_count": 3, "total_core_count": None}, 2, 3),
     ({"total_node_count": None, "total_core_count": 10}, 4, 5),
     ({"total_node_count": 1, "total_core_count": None}, 0, 1)],
)
def test_scale(m, kwargs, added, total):
    create(m, {"count": 1, "nodearray": "htc"})
    r = m.scale("htc", kwargs["total_node_count"], kwargs["total_core_count"], T0)
    assert r["sets"][0]["added"] == added
    assert len(nodes(m)) == total


@pytest.mark.parametrize("node_count,core_count", [(1, 2), (None, None)])
def test_scale_needs_exactly_one_total(m, node_count, core_count):
    with pytest.raises(SimError) as err:
        m.scale("htc", node_count, core_count, T0)
    assert err.value.status == 409


def test_operations_and_nodes_by_operation(m):
    c = create(m, {"count": 2, "nodearray": "htc"}, request_id="req-a")
    create(m, {"count": 1, "nodearray": "hpc"})
    t = m.manage("terminate", {"names": ["htc-1"], "requestId": "req-b"}, T0 + 1)
    ops = m.list_operations(T0 + 1)
    assert [o["action"] for o in ops] == ["create", "create", "terminate"]
    assert m.list_operations(T0, request_id="req-a") == [m.get_operation(c["operationId"], T0)]
    assert m.list_operations(T0, request_id="nope") == []
    got = m.get_nodes(T0 + 1, operation=c["operationId"])
    assert [n["Name"] for n in got["nodes"]] == ["htc-1", "htc-2"]
    assert got["operation"]["operationId"] == c["operationId"] and got["operation"]["action"] == "create"
    assert [n["Name"] for n in m.get_nodes(T0 + 1, request_id="req-b")["nodes"]] == ["htc-1"]
    assert m.get_nodes(T0 + 1, request_id="req-b")["operation"]["operationId"] == t["operationId"]
    for kwargs in ({"operation": "nope"}, {"request_id": "nope"}):
        with pytest.raises(SimError) as err:
            m.get_nodes(T0, **kwargs)
        assert err.value.status == 404
    with pytest.raises(SimError) as err:
        m.get_operation("nope", T0)
    assert err.value.status == 404


# --------------------------------------------------------------------------- usage


def test_usage_core_hours_and_cost_per_interval(m):
    # One F2 (2 cores, $0.5/h): billed from Preparing (T0+11) until Terminated (T0+11+2h): 4 core-hours, $1.
    create(m, {"count": 1, "nodearray": "htc", "nameFormat": "a", "definition": {"machineType": "F2"}})
    m.manage("terminate", {"names": ["a"]}, T0 + 11 + 7200 - 5)  # Terminated at T0 + 11 + 7200
    now = T0 + 86400 * 2 + 100
    total = m.usage(now, granularity="total")["usage"]
    assert len(total) == 1
    assert total[0]["start"] == "2024-03-01T00:00:00Z"
    assert total[0]["total"] == {"category": "cluster", "hours": 4.0, "cost": 1.0}
    htc = next(b for b in total[0]["breakdown"] if b["node"] == "htc")
    assert htc["hours"] == 4.0 and htc["cost"] == 1.0
    assert htc["details"] == [{"vm_size": "F2", "hours": 4.0, "core_count": 2.0, "region": "r1",
                               "priority": "Regular", "os": "Linux", "cost": 1.0}]
    hpc = next(b for b in total[0]["breakdown"] if b["node"] == "hpc")
    assert hpc["hours"] == 0 and hpc["details"] == []

    hourly = m.usage(now, timeframe="custom", from_="2024-03-10T00:30:00Z", to="2024-03-10T02:10:00Z",
                     granularity="hourly")["usage"]
    assert [(i["start"], i["end"]) for i in hourly] == [
        ("2024-03-10T00:00:00Z", "2024-03-10T01:00:00Z"), ("2024-03-10T01:00:00Z", "2024-03-10T02:00:00Z"),
        ("2024-03-10T02:00:00Z", "2024-03-10T03:00:00Z")]
    hours = [i["total"]["hours"] for i in hourly]
    assert hours == pytest.approx([(3600 - 11) * 2 / 3600, 2.0, 11 * 2 / 3600], abs=1e-5)

    daily = m.usage(now, timeframe="weekToDate")["usage"]
    assert [i["start"][:10] for i in daily] == ["2024-03-10", "2024-03-11", "2024-03-12"]
    assert [i["total"]["hours"] for i in daily] == [4.0, 0, 0]
    assert m.usage(now, timeframe="lastMonth", granularity="total")["usage"][0]["start"] == "2024-02-01T00:00:00Z"
    assert m.usage(now, timeframe="lastMonth", granularity="total")["usage"][0]["total"]["hours"] == 0


def test_usage_running_node_accrues_until_now(m):
    create(m, {"count": 1, "nodearray": "hpc", "nameFormat": "a"})
    u = m.usage(T0 + 11 + 3600, granularity="total")["usage"][0]
    assert u["total"]["hours"] == 4.0 and u["total"]["cost"] == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [{"granularity": "weekly"}, {"timeframe": "yesterday"}, {"timeframe": "custom", "from_": "2024-03-01"},
     {"timeframe": "custom", "from_": "garbage", "to": "2024-03-02"},
     {"timeframe": "custom", "from_": "2024-03-05", "to": "2024-03-01"}],
)
def test_usage_bad_queries_are_400(m, kwargs):
    with pytest.raises(SimError) as err:
        m.usage(T0, **kwargs)
    assert err.value.status == 400


# --------------------------------------------------------------------------- scenario


def test_default_scenario_has_hpc_htc_gpu():
    s = load_scenario()
    arrays = {na.name: na for na in s.nodearrays}
    assert arrays["hpc"].buckets[0].infiniband and arrays["hpc"].buckets[0].max_placement_group_size > 1
    assert len(arrays["htc"].buckets) == 2
    assert arrays["gpu"].buckets[0].gpu_count >= 1
    assert sum(na.max_count for na in s.nodearrays) <= 40


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"cluster__name": ""}, "cluster.name must be a non-empty string"),
        ({"nodearrays__0__ShutdownPolicy": "Delete"}, "ShutdownPolicy must be one of"),
        ({"nodearrays__0__buckets__0__vcpuCount": 0}, "vcpuCount must be an integer >= 1"),
        ({"nodearrays__0__buckets__0__colour": "red"}, "unknown key 'colour'"),
        ({"nodearrays__1__name": "hpc"}, "defined twice"),
        ({"faults": {"error_rate": 2}}, "faults.error_rate must be a number <= 1.0"),
        ({"faults": {"capacity_failure": ["htc/ZZ"]}}, "no bucket 'htc/ZZ'"),
        ({"faults": {"endpoints": {"bogus": {}}}}, "unknown endpoint 'bogus'"),
        ({"hooks": {"on_ready": "touch /tmp/x"}}, "argv list"),
        ({"timings": {"acquiring": -1}}, "timings.acquiring must be a number >= 0"),
    ],
)
def test_scenario_validation_one_line_errors(changes, message):
    with pytest.raises(ScenarioError) as err:
        load_scenario(scen(**changes))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_scenario_file_errors(tmp_path):
    with pytest.raises(ScenarioError, match="file not found"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ScenarioError, match="not a regular file"):  # read like the config: never blocks on it
        load_scenario(fifo)


def test_scenario_files_that_cannot_be_read_as_toml_text(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"[cluster]\nname = \"\xff\"\n")
    with pytest.raises(ScenarioError, match="not valid UTF-8"):
        load_scenario(binary)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_scenario_numbers_must_be_finite(value):
    with pytest.raises(ScenarioError, match="time_scale must be a number"):
        load_scenario({"cluster": {"name": "c"}, "timings": {"time_scale": value},
                       "nodearrays": [{"name": "a", "buckets": [{"machineType": "m", "vcpuCount": 2, "memory": 4.0, "maxCount": 2}]}]})
