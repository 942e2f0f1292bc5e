"""The simulator over real HTTP, through our own ClusterClient (httpx directly only for what the
client cannot do: wrong credentials, raw malformed requests, dropped connections)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from hpc_bridge.api.client import ClusterClient
from hpc_bridge.api.models import NodeCreationSet
from hpc_bridge.errors import ApiError, ApiUnreachable, AuthError, ConflictError
from hpc_bridge.sim.scenario import load_scenario
from hpc_bridge.sim.server import SimServer

REPO = Path(__file__).resolve().parents[1]


def fast_scenario(**overrides) -> dict:
    """The shipped default scenario, with nodes Ready in ~0.1 s."""
    import tomllib

    from hpc_bridge.sim.scenario import default_scenario_text

    data = tomllib.loads(default_scenario_text())
    data["timings"]["time_scale"] = 0.002
    for key, value in overrides.items():
        data[key] = value
    return data


def nodearray(status, name: str):
    """One nodearray of a GET status answer, by name."""
    return next(na for na in status.nodearrays if na.name == name)


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@pytest.fixture
def sim():
    with SimServer(fast_scenario()) as server:
        yield server


def client_for(sim, **kwargs) -> ClusterClient:
    kwargs.setdefault("retries", 0)
    return ClusterClient(sim.url, sim.cluster_name, sim.username, sim.password, **kwargs)


@pytest.fixture
def client(sim):
    with client_for(sim, retries=3, backoff_base=0.01, backoff_cap=0.05) as c:
        yield c


def statuses(client, names=None):
    return {n.name: n.status for n in client.get_nodes().nodes if names is None or n.name in names}


def all_in(client, names, wanted):
    st = statuses(client, names)
    return len(st) == len(names) and all(s in wanted for s in st.values())


_RAW = httpx.Client(timeout=5, trust_env=False)  # one client: building an SSL context per call is slow


def raw(sim, method, path, auth=True, **kwargs):
    auth_arg = (sim.username, sim.password) if auth else None
    return _RAW.request(method, sim.url + path, auth=auth_arg, **kwargs)


# --------------------------------------------------------------------------- every endpoint


def test_status_lists_default_nodearrays(client, sim):
    st = client.get_status()
    assert sim.cluster_name == "demo"
    assert [na.name for na in st.nodearrays] == ["hpc", "htc", "gpu"]
    hpc = nodearray(st, "hpc").buckets[0]
    assert hpc.virtual_machine.infiniband and hpc.max_placement_group_size == 4
    assert [b.machine_type for b in nodearray(st, "htc").buckets] == ["Standard_F2s_v2", "Standard_F4s_v2"]
    assert nodearray(st, "gpu").buckets[0].virtual_machine.gpu_count == 1
    assert all(b.last_capacity_failure < 0 for na in st.nodearrays for b in na.buckets)
    assert st.nodes is None


def test_create_boot_and_nodes_by_operation(client):
    result = client.create_nodes([
        NodeCreationSet.make(count=1, nodearray="htc", name_format="exact-one"),
        NodeCreationSet.make(count=2, nodearray="htc", name_format="h-%d", name_offset=10,
                             definition={"machineType": "Standard_F4s_v2"}, node_attributes={"Configuration": {"x": 1}}),
    ], request_id="req-create-1")
    assert [(s.added, s.message) for s in result.sets] == [(1, None), (2, None)]
    names = ["exact-one", "h-10", "h-11"]
    wait_for(lambda: all_in(client, names, {"Ready"}))
    nodes = {n.name: n for n in client.get_nodes().nodes}
    assert nodes["h-10"].machine_type == "Standard_F4s_v2" and nodes["h-10"].get("Configuration") == {"x": 1}
    assert len({n.private_ip for n in nodes.values()}) == 3
    assert all(n.private_ip.startswith("127.") and n.hostname for n in nodes.values())
    by_op = client.get_nodes(operation=result.operation_id)
    assert sorted(n.name for n in by_op.nodes) == sorted(names)
    assert by_op.operation.action == "create" and by_op.operation.to_wire()["operationId"] == result.operation_id
    by_req = client.get_nodes(request_id="req-create-1")
    assert sorted(n.name for n in by_req.nodes) == sorted(names)
    st = client.get_status(nodes=True)
    f4 = nodearray(st, "htc").buckets[1]
    assert (f4.active_count, f4.available_count, f4.active_core_count) == (2, 6, 8)
    assert sorted(f4.active_nodes) == ["h-10", "h-11"]
    assert len(st.nodes) == 3


def test_operations_list_and_by_id(client, sim):
    r = client.create_nodes([{"count": 1, "nodearray": "gpu"}], request_id="op-req")
    ops = client.list_operations()
    assert [o.to_wire()["operationId"] for o in ops] == [r.operation_id]  # the default form adds ids
    assert client.list_operations(request_id="op-req")[0].to_wire()["operationId"] == r.operation_id
    assert client.list_operations(request_id="other") == []
    op = client.get_operation(r.operation_id)
    assert op.action == "create" and datetime.fromisoformat(op.start_time).tzinfo is not None  # ISO 8601, with its zone
    with pytest.raises(ApiError) as err:
        client.get_operation("does-not-exist")
    assert err.value.status == 404
    with pytest.raises(ApiError) as err:
        client.get_nodes(operation="does-not-exist")
    assert err.value.status == 404


def test_deallocate_start_same_node_shutdown_terminate_remove(client):
    client.create_nodes([{"count": 2, "nodearray": "hpc", "placementGroupId": "pg1"},
                         {"count": 2, "nodearray": "htc"}])
    wait_for(lambda: all_in(client, ["hpc-1", "hpc-2", "htc-1", "htc-2"], {"Ready"}))
    before = {n.name: n for n in client.get_nodes().nodes}

    r = client.manage_nodes("deallocate", names=["hpc-1"])
    assert [(m.name, m.status) for m in r.nodes] == [("hpc-1", "OK")]
    wait_for(lambda: statuses(client)["hpc-1"] == "Deallocated")
    r = client.manage_nodes("start", ids=[before["hpc-1"].node_id])
    assert r.nodes[0].ok
    wait_for(lambda: statuses(client)["hpc-1"] == "Ready")
    again = next(n for n in client.get_nodes().nodes if n.name == "hpc-1")
    assert (again.node_id, again.private_ip) == (before["hpc-1"].node_id, before["hpc-1"].private_ip)

    # shutdown: hpc is Deallocate, htc is Terminate (scenario ShutdownPolicy per nodearray)
    client.manage_nodes("shutdown", names=["hpc-2", "htc-1"])
    wait_for(lambda: (statuses(client)["hpc-2"], statuses(client)["htc-1"]) == ("Deallocated", "Terminated"))

    client.manage_nodes("terminate", hostnames=[before["htc-2"].hostname])
    wait_for(lambda: statuses(client)["htc-2"] == "Terminated")
    r = client.manage_nodes("remove", ip_addresses=[before["htc-1"].private_ip, before["htc-2"].private_ip])
    assert sorted((m.name, m.status) for m in r.nodes) == [("htc-1", "OK"), ("htc-2", "OK")]
    assert sorted(statuses(client)) == ["hpc-1", "hpc-2"]


def test_fixed_node_is_not_removed(client):
    client.create_nodes([{"count": 1, "nodearray": "htc", "nameFormat": "keep", "nodeAttributes": {"Fixed": True}}])
    r = client.manage_nodes("remove", names=["keep"])
    assert r.nodes[0].status == "Error" and "Fixed" in r.nodes[0].error
    assert "keep" in statuses(client)


def test_management_by_filter_and_unsupported_filter(client):
    client.create_nodes([{"count": 2, "nodearray": "htc"}, {"count": 1, "nodearray": "gpu"}])
    wait_for(lambda: all_in(client, ["htc-1", "htc-2", "gpu-1"], {"Ready"}))
    r = client.manage_nodes("terminate", filter='Template === "htc" && State === "Started"')
    assert sorted(m.name for m in r.nodes) == ["htc-1", "htc-2"]
    with pytest.raises(ConflictError) as err:
        client.manage_nodes("terminate", filter="Name.startsWith('gpu')")
    assert "filter" in str(err.value)


def test_partial_create_with_message_and_name_clash(client):
    r = client.create_nodes([
        {"count": 10, "nodearray": "htc", "definition": {"machineType": "Standard_F2s_v2"}},
        {"count": 6, "nodearray": "hpc", "placementGroupId": "ib-1"},
    ])
    assert r.sets[0].added == 8 and "maxCount 8" in r.sets[0].message
    assert r.sets[1].added == 4 and "maxPlacementGroupSize 4" in r.sets[1].message
    clash = client.create_nodes([{"count": 1, "nodearray": "htc", "nameFormat": "htc-3",
                                  "definition": {"machineType": "Standard_F4s_v2"}}])
    assert clash.sets[0].added == 0 and "already exist: htc-3" in clash.sets[0].message
    pg = nodearray(client.get_status(), "hpc").buckets[0].placement_groups
    assert [(g.name, g.active_count) for g in pg] == [("ib-1", 4)]


def test_quota_limits_creation():
    scenario = fast_scenario()
    scenario["nodearrays"][2]["buckets"][0]["quotaCoreCount"] = 48  # 2 x 24-core GPU nodes
    with SimServer(scenario) as sim, client_for(sim) as client:
        r = client.create_nodes([{"count": 4, "nodearray": "gpu"}])
        assert r.sets[0].added == 2 and "quota" in r.sets[0].message
        b = nodearray(client.get_status(), "gpu").buckets[0]
        assert (b.quota_core_count, b.consumed_core_count, b.available_count) == (48, 48, 0)


def test_scale(client):
    r = client.scale("htc", total_node_count=3)
    assert r.sets[0].added == 3
    r = client.scale("gpu", total_core_count=48)
    assert r.sets[0].added == 2
    assert sorted(statuses(client)) == ["gpu-1", "gpu-2", "htc-1", "htc-2", "htc-3"]
    with pytest.raises(ConflictError):
        client.scale("htc", total_node_count=4, total_core_count=8)
    with pytest.raises(ConflictError):
        client.scale("nope", total_node_count=1)


def test_duplicate_request_id_is_409(client):
    client.create_nodes([{"count": 1, "nodearray": "htc"}], request_id="same")
    with pytest.raises(ConflictError) as err:
        client.create_nodes([{"count": 1, "nodearray": "htc"}], request_id="same")
    assert "duplicate requestId" in str(err.value)
    client.manage_nodes("terminate", names=["htc-1"], request_id="t-1")
    with pytest.raises(ConflictError):
        client.manage_nodes("start", names=["htc-1"], request_id="t-1")
    assert list(statuses(client)) == ["htc-1"]


def test_usage_accrues_with_simulated_time(client, sim):
    client.create_nodes([{"count": 1, "nodearray": "htc", "definition": {"machineType": "Standard_F4s_v2"}}])
    wait_for(lambda: statuses(client).get("htc-1") == "Ready")
    sim.advance(3600)
    u = client.get_usage(timeframe="custom", from_="2000-01-01T00:00:00Z", to="2100-01-01T00:00:00Z",
                         granularity="total")
    total = u.usage[0].total
    assert total.category == "cluster"
    assert 4.0 <= total.hours < 4.1  # 4 cores x 1 simulated hour (+ the real seconds of the test)
    assert total.cost == pytest.approx(total.hours / 4 * 0.169, rel=1e-3)
    htc = next(i for i in u.usage[0].breakdown if i.node == "htc")
    assert htc.details[0].vm_size == "Standard_F4s_v2" and htc.details[0].hours == pytest.approx(htc.hours)
    daily = client.get_usage()
    assert len(daily.usage) >= 1 and daily.usage[-1].total.hours > 0


def test_capacity_failure_fault_at_run_time(client, sim):
    sim.set_faults(capacity_failure=["htc/Standard_F2s_v2"])
    r = client.create_nodes([{"count": 2, "nodearray": "htc", "definition": {"machineType": "Standard_F2s_v2"}}])
    assert r.sets[0].added == 0 and "Capacity failure" in r.sets[0].message
    b = nodearray(client.get_status(), "htc").buckets[0]
    assert 0 <= b.last_capacity_failure < 60
    sim.set_faults(capacity_failure=[])
    assert client.create_nodes([{"count": 2, "nodearray": "htc"}]).sets[0].added == 2


def test_boot_failure_fault():
    with SimServer(fast_scenario(faults={"boot_failure_rate": 1.0})) as sim, client_for(sim) as client:
        client.create_nodes([{"count": 1, "nodearray": "gpu"}])
        wait_for(lambda: statuses(client).get("gpu-1") == "Failed")
        node = client.get_nodes().nodes[0]
        assert "boot failure" in node.status_message


# --------------------------------------------------------------------------- HTTP-level behaviour


def test_wrong_credentials_are_401(sim):
    r = raw(sim, "GET", f"/clusters/{sim.cluster_name}/status", auth=False)
    assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    r = _RAW.get(sim.url + "/operations/", auth=(sim.username, "wrong"))
    assert r.status_code == 401
    with ClusterClient(sim.url, sim.cluster_name, sim.username, "wrong", retries=0) as c:
        with pytest.raises(AuthError):
            c.get_status()
    assert raw(sim, "GET", "/_sim/stats", auth=False).status_code == 401


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("POST", "/clusters/demo/nodes/create", b"{not json", 400),
        ("POST", "/clusters/demo/nodes/create", b'{"sets": "x"}', 409),
        ("POST", "/clusters/demo/nodes/terminate", b"{}", 409),
        ("POST", "/clusters/demo/nodes/explode", b"{}", 404),
        ("GET", "/clusters/other/status", None, 404),
        ("GET", "/nowhere", None, 404),
        ("POST", "/clusters/demo/status", b"{}", 405),
        ("GET", "/clusters/demo/usage?granularity=weekly", None, 400),
        ("POST", "/clusters/demo/scale/htc?totalNodeCount=abc", None, 409),
    ],
)
def test_malformed_requests_get_json_errors(sim, method, path, body, status):
    r = raw(sim, method, path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    assert r.json()["message"]


def test_create_answers_202_with_location(sim):
    r = raw(sim, "POST", "/clusters/demo/nodes/create", json={"sets": [{"count": 1, "nodearray": "htc"}]})
    assert r.status_code == 202
    assert r.headers["Location"] == f"/operations/{r.json()['operationId']}"


def test_server_errors_and_throttling_are_retried_by_the_client(sim):
    sim.set_faults(endpoints={"status": {"error_rate": 1.0}})
    with client_for(sim, retries=2, backoff_base=0.01, backoff_cap=0.02) as c:
        with pytest.raises(ApiError) as err:
            c.get_status()
        assert err.value.status == 500 and c.request_count == 3
    sim.set_faults(endpoints={"status": {"error_rate": 0.0, "throttle_rate": 1.0, "retry_after": 0}})
    r = raw(sim, "GET", "/clusters/demo/status")
    assert r.status_code == 429 and r.headers["Retry-After"] == "0"
    stats = sim.stats()
    assert stats["faults"]["500"] == 3 and stats["faults"]["429"] == 1 and stats["requests"]["status"] == 4


def test_dropped_connection(sim):
    sim.set_faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        raw(sim, "GET", "/clusters/demo/status")
    with client_for(sim, retries=1, backoff_base=0.01, backoff_cap=0.02) as c:
        with pytest.raises(ApiUnreachable):
            c.get_nodes()
    assert sim.stats()["faults"]["drop"] == 3
    assert sim.model.nodes == {}


def test_lost_response_then_retry_recovers_through_request_id(sim):
    # The create is processed but its answer is lost; the client retries with the same
    # requestId, gets 409, and finds what the first call did. `times: 1` loses only the first answer.
    sim.set_faults(endpoints={"nodes/create": {"lost_response_rate": 1.0, "times": 1}})
    with client_for(sim, retries=1, backoff_base=0.01, backoff_cap=0.02) as c:
        result = c.create_nodes([{"count": 2, "nodearray": "htc"}])
        assert [s.added for s in result.sets] == [2]
        assert sorted(statuses(c)) == ["htc-1", "htc-2"]
    stats = sim.stats()
    assert stats["creates"]["calls"] == 2 and stats["creates"]["nodes_added"] == 2
    assert stats["faults"]["lost_response"] == 1 and stats["statuses"]["409"] == 1


def test_faults_are_seeded_and_reproducible():
    def codes(seed):
        with SimServer(fast_scenario(faults={"seed": seed, "error_rate": 0.3, "throttle_rate": 0.2})) as sim:
            return [raw(sim, "GET", "/clusters/demo/status").status_code for _ in range(30)]

    first = codes(11)
    assert first == codes(11)
    assert {200, 500, 429} <= set(first)


def test_latency_fault(sim):
    sim.set_faults(latency=0.3)
    started = time.monotonic()
    raw(sim, "GET", "/clusters/demo/status")
    assert time.monotonic() - started >= 0.3


# --------------------------------------------------------------------------- control API


def test_control_api(sim):
    r = raw(sim, "POST", "/_sim/faults", json={"error_rate": 0.0, "endpoints": {"usage": {"throttle_rate": 0.5}}})
    assert r.status_code == 200 and r.json()["endpoints"]["usage"] == {"throttle_rate": 0.5}
    bad = raw(sim, "POST", "/_sim/faults", json={"error_rate": 3})
    assert bad.status_code == 400 and "error_rate" in bad.json()["message"]
    bad = raw(sim, "POST", "/_sim/faults", json={"capacity_failure": ["nope/x"]})
    assert bad.status_code == 400
    raw(sim, "POST", "/clusters/demo/nodes/create", json={"sets": [{"count": 3, "nodearray": "htc"}]})
    raw(sim, "GET", "/clusters/demo/nodes")
    stats = raw(sim, "GET", "/_sim/stats").json()
    assert stats["requests"] == {"nodes/create": 1, "nodes": 1}
    assert stats["creates"] == {"calls": 1, "nodes_requested": 3, "nodes_added": 3}
    assert sum(stats["nodes"].values()) == 3 and stats["total"] == 2
    before = raw(sim, "GET", "/_sim/stats").json()["now"]
    assert raw(sim, "POST", "/_sim/advance", json={"seconds": 7200}).json()["now"] >= before + 7200
    assert raw(sim, "POST", "/_sim/advance", json={"seconds": -1}).status_code == 400
    assert raw(sim, "POST", "/_sim/reset-stats").json() == {"ok": True}
    assert raw(sim, "GET", "/_sim/stats").json()["requests"] == {}


# --------------------------------------------------------------------------- boot hooks


def test_boot_hooks_run_with_node_environment(tmp_path):
    script = ("import os, sys, pathlib; d = pathlib.Path(sys.argv[1]); "
              "(d / (os.environ['HPC_BRIDGE_HOOK'] + '-' + os.environ['HPC_BRIDGE_NODE_NAME'])).write_text("
              "os.environ['HPC_BRIDGE_NODE_ID'] + ' ' + os.environ['HPC_BRIDGE_NODE_IP'] + ' ' + os.environ['EXTRA'])")
    hooks = {"on_ready": [sys.executable, "-c", script, str(tmp_path)],
             "on_stop": [sys.executable, "-c", script, str(tmp_path)],
             "env": {"EXTRA": "from-scenario"}}
    with SimServer(fast_scenario(hooks=hooks)) as sim, client_for(sim) as client:
        client.create_nodes([{"count": 1, "nodearray": "htc", "nameFormat": "hooked"}])
        ready = tmp_path / "on_ready-hooked"
        wait_for(ready.exists)
        node = client.get_nodes().nodes[0]
        assert wait_for(lambda: ready.read_text()) == f"{node.node_id} {node.private_ip} from-scenario"
        client.manage_nodes("terminate", names=["hooked"])
        stop = tmp_path / "on_stop-hooked"
        wait_for(lambda: stop.exists() and stop.read_text())
        assert sim.wait_hooks() and sim.stats()["hooks"]["errors"] == []


def test_missing_hook_command_does_not_break_the_server(tmp_path):
    hooks = {"on_ready": [str(tmp_path / "no-such-command")]}
    with SimServer(fast_scenario(hooks=hooks)) as sim, client_for(sim) as client:
        client.create_nodes([{"count": 1, "nodearray": "htc"}])
        wait_for(lambda: statuses(client).get("htc-1") == "Ready")
        wait_for(lambda: sim.stats()["hooks"]["errors"])
        assert "no-such-command" in sim.stats()["hooks"]["errors"][0]


# --------------------------------------------------------------------------- CLI and demo


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sim_command_serves_until_sigterm(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text((REPO / "hpc_bridge/sim/default.toml").read_text().replace('name = "demo"', 'name = "rehearsal"'))
    proc = subprocess.Popen([sys.executable, "-m", "hpc_bridge", "sim", "--scenario", str(scenario), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        s = load_scenario(scenario)
        with ClusterClient(url, "rehearsal", s.username, s.password, retries=0) as c:
            assert [na.name for na in c.get_status().nodearrays] == ["hpc", "htc", "gpu"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "args,message",
    [(["--host", "0.0.0.0"], "--allow-remote"), (["--scenario", "/nonexistent.toml"], "file not found")],
)
def test_sim_command_refusals_are_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "hpc_bridge", "sim", *args], capture_output=True, text=True,
                       env=_env(), timeout=30)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_demo_runs_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hpc_bridge", "demo"], capture_output=True, text=True,
                       env=_env(), timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "summary" in r.stdout and "API calls" in r.stdout and "created" in r.stdout
    assert "Ready" in r.stdout


def test_stats_count_response_bytes_per_endpoint(sim):
    sim.reset_stats()
    with httpx.Client(base_url=sim.url, auth=(sim.username, sim.password)) as http:
        sizes = [len(http.get(f"/clusters/{sim.cluster_name}/nodes").content) for _ in range(2)]
        status = len(http.get(f"/clusters/{sim.cluster_name}/status").content)
    assert sim.stats()["bytes"] == {"nodes": sum(sizes), "status": status}


def test_a_hold_keeps_the_first_callers_requests_waiting_until_released(sim):
    """Every API request from the address of the first one to arrive waits until the hold is
    released; other addresses and the control API are served meanwhile."""
    import threading

    sim.reset_stats()
    hold = sim.hold()
    answers = []
    held = threading.Thread(target=lambda: answers.append(raw(sim, "GET", f"/clusters/{sim.cluster_name}/status")))
    held.start()
    assert hold.wait(timeout=10) == "127.0.0.1"
    other = httpx.HTTPTransport(local_address="127.0.0.2")  # another host, as far as the server sees
    with httpx.Client(transport=other, auth=(sim.username, sim.password), trust_env=False, timeout=5) as http:
        assert http.get(f"{sim.url}/clusters/{sim.cluster_name}/nodes").status_code == 200
    assert sim.stats()["requests"] == {"nodes": 1}  # the held one has not got past the hold
    assert answers == []
    hold.release()
    held.join(timeout=10)
    assert [r.status_code for r in answers] == [200] and sim.stats()["requests"] == {"nodes": 1, "status": 1}


def test_kept_alive_connection_answers_each_request_in_one_write(sim):
    # headers and body in separate writes made every request on a kept-alive connection wait
    # for the client's delayed ACK (~40 ms): the whole answer must arrive in one segment
    token = base64.b64encode(f"{sim.username}:{sim.password}".encode()).decode()
    host, port = sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        for _ in range(3):
            conn.sendall(f"GET /clusters/{sim.cluster_name}/status HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Basic {token}\r\n\r\n".encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += conn.recv(65536)
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            assert len(body) == length, "the body came in a write of its own"
