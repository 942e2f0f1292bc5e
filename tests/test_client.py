"""ClusterClient against a real HTTP server on loopback: retries, backoff, 409 recovery, TLS, secrets."""

from __future__ import annotations

import pytest

from hpc_bridge.api.client import ClusterClient
from hpc_bridge.errors import (
    ApiError,
    ApiUnreachable,
    AuthError,
    ConfigError,
    ConflictError,
    NotFoundError,
    ServerError,
    ThrottledError,
    TlsError,
)
from scripted_http import Reply, ScriptedServer, self_signed_cert

PASSWORD = "s3cret-Pa55word"
STATUS = {"maxCoreCount": 8, "maxCount": 2, "nodearrays": []}
OP = "op-1"


def client(url: str, **kw) -> tuple[ClusterClient, list[float]]:
    sleeps: list[float] = []
    kw.setdefault("retries", 4)
    c = ClusterClient(url, "demo", "admin", PASSWORD, sleep=sleeps.append, **kw)
    return c, sleeps


def sequence(*replies: Reply):
    queue = list(replies)

    def script(seen):
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return script


def test_retries_5xx_then_succeeds_and_counts_requests():
    with ScriptedServer(sequence(Reply(500), Reply(503), Reply(200, STATUS))) as srv:
        c, sleeps = client(srv.url)
        status = c.get_status()
    assert status.max_count == 2
    assert c.request_count == 3 and len(sleeps) == 2
    assert all(0 <= s <= 8 for s in sleeps)


def test_429_honours_retry_after():
    with ScriptedServer(sequence(Reply(429, headers={"Retry-After": "1.5"}), Reply(200, STATUS))) as srv:
        c, sleeps = client(srv.url)
        c.get_status()
    assert sleeps == [1.5]


def test_backoff_is_bounded_in_count():
    with ScriptedServer(sequence(Reply(500, "boom"))) as srv:
        c, sleeps = client(srv.url, retries=3, backoff_cap=2.0)
        with pytest.raises(ApiError) as err:
            c.get_status()
    assert len(srv.seen) == 4 and len(sleeps) == 3
    assert all(s <= 2.0 for s in sleeps)
    assert "HTTP 500" in str(err.value) and "after 4 attempt(s)" in str(err.value)
    assert err.value.status == 500


def test_backoff_is_bounded_in_total_time():
    # Retry-After beyond the budget: give up at once instead of sleeping past it.
    with ScriptedServer(sequence(Reply(429, headers={"Retry-After": "100"}))) as srv:
        c, sleeps = client(srv.url, retries=10, retry_budget=5.0)
        with pytest.raises(ApiError):
            c.get_status()
    assert sleeps == [] and len(srv.seen) == 1


def test_mutating_call_reuses_request_id_on_retry():
    with ScriptedServer(sequence(Reply(502), Reply(202, {"operationId": OP, "nodes": []}))) as srv:
        c, _ = client(srv.url)
        result = c.manage_nodes("terminate", names=["hpc-1"])
    ids = [s.body["requestId"] for s in srv.seen]
    assert len(ids) == 2 and ids[0] == ids[1] and result.request_id == ids[0]
    assert srv.seen[0].body["names"] == ["hpc-1"]


def test_409_on_retry_is_recovered_not_reported():
    """First attempt accepted but its answer lost (connection dropped); the retry gets 409."""
    state = {"posts": 0}

    def script(seen):
        if seen.method == "POST":
            state["posts"] += 1
            return Reply(drop=True) if state["posts"] == 1 else Reply(409, "duplicate request id")
        if seen.path.endswith("/nodes"):
            rid = seen.query["request_id"][0]
            assert rid == srv.seen[0].body["requestId"]
            return Reply(200, {"nodes": [{"Name": "hpc-1", "NodeId": "n1", "Template": "hpc", "Status": "Acquiring"},
                                         {"Name": "htc-1", "NodeId": "n2", "Template": "htc", "Status": "Acquiring"}],
                               "operation": {"action": "create", "startTime": "2026-01-01T00:00:00Z",
                                             "operationId": OP}})
        raise AssertionError(seen.path)

    with ScriptedServer(script) as srv:
        c, _ = client(srv.url)
        result = c.create_nodes([
            {"count": 1, "nodearray": "hpc", "nameFormat": "hpc-1"},
            {"count": 1, "nodearray": "htc", "nameFormat": "htc-1"},
            {"count": 1, "nodearray": "gpu", "nameFormat": "gpu-1"},
        ])
    # The operation's id was in the lost answer: never taken from OperationStatus (the reference
    # documents only action and startTime there).
    assert result.recovered and result.operation_id == ""
    assert [s.added for s in result.sets] == [1, 1, 0]
    assert sorted(result.created_names) == ["hpc-1", "htc-1"]


def _after_500_then_409(nodes_reply: Reply, operations: list):
    """POST answered 500 (processed or not), its retry 409 (empty body, as the reference says);
    GET nodes?request_id answers nodes_reply, GET operations?request_id the list given."""
    def script(seen):
        if seen.method == "POST":
            return Reply(500) if sum(s.method == "POST" for s in srv_seen) == 1 else Reply(409)
        if seen.path.endswith("/nodes"):
            assert seen.query["request_id"] == [srv_seen[0].body["requestId"]]
            return nodes_reply
        if seen.path == "/operations/":
            assert seen.query["request_id"] == [srv_seen[0].body["requestId"]]
            return Reply(200, operations)
        raise AssertionError(seen.path)

    srv = ScriptedServer(script)
    srv_seen = srv.seen
    return srv


def test_409_on_retry_with_an_unknown_request_id_is_the_apis_rejection():
    """500, then 409 on the retry, and the request id is found nowhere: nothing was created, and
    the 409 is the API's "Invalid input", reported as such (not a recovery, not capacity)."""
    with _after_500_then_409(Reply(404), []) as srv:
        c, _ = client(srv.url)
        with pytest.raises(ConflictError) as err:
            c.create_nodes([{"count": 1, "nodearray": "hpc", "nameFormat": "hpc-1"}])
    text = str(err.value)
    assert "HTTP 409" in text and "invalid input" in text and "unknown to it" in text
    assert "capacity" not in text
    assert [s.method for s in srv.seen] == ["POST", "POST", "GET", "GET"]


def test_409_on_retry_found_only_in_the_operations_list_is_a_success():
    """A terminate whose node records are gone (the reference removes terminated nodes): GET
    nodes?request_id has no nodes, but the operations list has it: found, so accepted."""
    op = {"action": "terminate", "startTime": "2026-01-01T00:00:00Z"}
    with _after_500_then_409(Reply(200, {"nodes": [], "operation": op}), [op]) as srv:
        c, _ = client(srv.url)
        result = c.manage_nodes("terminate", names=["htc-1"])
    assert result.recovered and result.nodes == [] and result.operation_id == ""


def test_409_on_resend_of_an_unknown_request_id_is_a_rejection():
    def script(seen):
        if seen.method == "POST":
            return Reply(409)
        if seen.path.endswith("/nodes"):
            return Reply(200, {"nodes": []})
        return Reply(200, [])

    with ScriptedServer(script) as srv:
        c, _ = client(srv.url)
        with pytest.raises(ConflictError, match="invalid input"):
            c.manage_nodes("start", ids=["n1"], request_id="r-1", resend=True)


def test_operation_id_comes_from_the_202_body_else_its_location_header():
    replies = [Reply(202, {"sets": [{"added": 1}]}, headers={"Location": "/operations/op%2F9"}),
               Reply(202, {"nodes": []}, headers={"Location": "https://cc.example/operations/op-8"}),
               Reply(202, {"operationId": "op-body", "sets": []}, headers={"Location": "/operations/op-loc"})]
    with ScriptedServer(sequence(*replies)) as srv:
        c, _ = client(srv.url)
        assert c.create_nodes([{"count": 1, "nodearray": "hpc"}]).operation_id == "op/9"
        assert c.manage_nodes("terminate", names=["a"]).operation_id == "op-8"
        assert c.scale("hpc", total_node_count=1).operation_id == "op-body"


@pytest.mark.parametrize("status,cls", [(404, NotFoundError), (429, ThrottledError), (500, ServerError),
                                        (503, ServerError), (409, ConflictError), (403, AuthError)])
def test_errors_are_classes_callers_decide_on(status, cls):
    with ScriptedServer(sequence(Reply(status))) as srv:
        c, _ = client(srv.url, retries=1)
        with pytest.raises(cls) as err:
            c.get_status()
    assert err.value.status == status and str(status) in str(err.value)


def test_409_on_first_attempt_is_a_conflict():
    with ScriptedServer(sequence(Reply(409, "request id already used"))) as srv:
        c, _ = client(srv.url)
        with pytest.raises(ConflictError) as err:
            c.manage_nodes("start", ids=["n1"], request_id="r-1")
    assert "409" in str(err.value) and "already used" in str(err.value)


def test_read_timeout_is_retried_then_unreachable():
    with ScriptedServer(sequence(Reply(200, STATUS, delay=0.6))) as srv:
        c, sleeps = client(srv.url, timeout=0.2, retries=1)
        with pytest.raises(ApiUnreachable) as err:
            c.get_status()
    assert "unreachable" in str(err.value) and "ReadTimeout" in str(err.value)
    assert len(srv.seen) == 2


def test_connection_refused_is_unreachable():
    c, _ = client("http://127.0.0.1:9", retries=1)
    with pytest.raises(ApiUnreachable) as err:
        c.get_nodes()
    assert "cluster API unreachable at http://127.0.0.1:9" in str(err.value)


def test_query_parameters_reach_the_server():
    def script(seen):
        if seen.path.endswith("/usage"):
            return Reply(200, {"usage": []})
        if seen.path.endswith("/nodes"):
            return Reply(200, {"nodes": []})
        if "/scale/" in seen.path:
            return Reply(202, {"operationId": OP, "sets": [{"added": 2}]})
        if seen.path == "/operations/":
            return Reply(200, [{"action": "create", "startTime": "2026-01-01T00:00:00Z"}])
        if seen.path.startswith("/operations/"):
            return Reply(200, {"action": "create", "startTime": "2026-01-01T00:00:00Z"})
        return Reply(200, STATUS)

    with ScriptedServer(script) as srv:
        c, _ = client(srv.url)
        c.get_nodes(operation="o1")
        c.get_nodes(request_id="r1")
        c.get_status(nodes=True)
        c.get_usage(timeframe="custom", from_="2026-01-01T00:00:00Z", to="2026-01-02T00:00:00Z", granularity="hourly")
        c.scale("hpc", total_node_count=4)
        c.scale("hpc", total_core_count=240)
        assert len(c.list_operations(request_id="r1")) == 1
        c.get_operation("o/1")
    q = [(s.path, {k: v[0] for k, v in s.query.items()}) for s in srv.seen]
    assert q[0] == ("/clusters/demo/nodes", {"operation": "o1"})
    assert q[1] == ("/clusters/demo/nodes", {"request_id": "r1"})
    assert q[2] == ("/clusters/demo/status", {"nodes": "true"})
    assert q[3] == ("/clusters/demo/usage", {"timeframe": "custom", "from": "2026-01-01T00:00:00Z",
                                             "to": "2026-01-02T00:00:00Z", "granularity": "hourly"})
    assert q[4] == ("/clusters/demo/scale/hpc", {"totalNodeCount": "4"})
    assert q[5] == ("/clusters/demo/scale/hpc", {"totalCoreCount": "240"})
    assert q[6] == ("/operations/", {"request_id": "r1"})
    assert q[7][0] == "/operations/o%2F1"
    assert srv.seen[0].headers["Authorization"].startswith("Basic ")


def test_errors_never_carry_secrets():
    echo = lambda seen: Reply(500, f"bad things; you sent {seen.headers.get('Authorization')} pw={PASSWORD}")
    with ScriptedServer(echo) as srv:
        c, _ = client(srv.url, retries=0)
        with pytest.raises(ApiError) as err:
            c.get_status()
    text = str(err.value)
    assert PASSWORD not in text and "Basic YWRtaW46" not in text and "***" in text
    assert "\n" not in text


def test_401_is_an_auth_error():
    with ScriptedServer(sequence(Reply(401))) as srv:
        c, _ = client(srv.url)
        with pytest.raises(AuthError) as err:
            c.get_status()
    assert "credentials refused" in str(err.value) and len(srv.seen) == 1


def test_non_json_and_incomplete_bodies_are_api_errors():
    with ScriptedServer(sequence(Reply(200, "<html>proxy error</html>"))) as srv:
        c, _ = client(srv.url)
        with pytest.raises(ApiError, match="not JSON"):
            c.get_status()
    with ScriptedServer(sequence(Reply(202, {"sets": []}))) as srv:
        c, _ = client(srv.url)
        with pytest.raises(ApiError, match="operationId"):
            c.create_nodes([{"count": 1, "nodearray": "hpc"}])


def test_plain_http_refused_off_loopback():
    with pytest.raises(ConfigError, match="plain http"):
        ClusterClient("http://cyclecloud.example.com", "c", "u", "p")
    ClusterClient("http://cyclecloud.example.com", "c", "u", "p", allow_plain_http=True).close()
    ClusterClient("http://127.0.0.5:80", "c", "u", "p").close()


def test_tls_self_signed_refused_by_default(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    with ScriptedServer(sequence(Reply(200, STATUS)), certfile=cert, keyfile=key) as srv:
        assert srv.url.startswith("https://")
        c, sleeps = client(srv.url)
        with pytest.raises(TlsError, match="TLS verification failed"):
            c.get_status()
        assert sleeps == []  # not retried
        ok, _ = client(srv.url, ca_bundle=cert)
        assert ok.get_status().max_count == 2
        insecure, _ = client(srv.url, verify=False)
        assert insecure.get_status().max_count == 2


@pytest.mark.parametrize("bundle", ["missing", "directory", "garbage"])
def test_unusable_ca_bundle_is_a_config_error_naming_it(tmp_path, bundle):
    path = tmp_path / "ca.pem"
    if bundle == "directory":
        path.mkdir()
    elif bundle == "garbage":
        path.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"cluster.ca_bundle {path}: cannot load it"):
        ClusterClient("https://127.0.0.1:9", "demo", "admin", PASSWORD, ca_bundle=str(path))


def _ends_within(seconds: float, call):
    """Run `call` in a thread; its outcome, or a failure if it is still running after
    `seconds` (a generous bound: the point is that it ends, not how fast)."""
    import threading

    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call()
        except Exception as err:  # noqa: BLE001 - the test inspects it
            outcome["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the call was still running after {seconds} s"
    return outcome


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickling_server_cannot_hold_a_call_past_its_deadline(phase):
    from scripted_http import TricklingServer

    with TricklingServer(phase=phase, interval=0.1) as srv:
        c = ClusterClient(srv.url, "demo", "admin", PASSWORD, timeout=1.0, retries=2, retry_budget=30)
        outcome = _ends_within(60, c.get_status)
        c.close()
    err = outcome.get("error")
    assert isinstance(err, ApiUnreachable), outcome
    assert "no complete answer within 1 s" in str(err)
    assert srv.requests == 3 and c.request_count == 3  # every attempt was cut, then retried


def test_the_retry_budget_is_a_hard_limit_on_the_whole_call():
    from scripted_http import TricklingServer

    # Each attempt may take 20 s; the budget of 1.5 s ends the call during the first one.
    with TricklingServer(phase="body", interval=0.1) as srv:
        c = ClusterClient(srv.url, "demo", "admin", PASSWORD, timeout=20.0, retries=5, retry_budget=1.5)
        outcome = _ends_within(60, lambda: c.create_nodes([{"nodearray": "htc", "count": 1}]))
        c.close()
    assert isinstance(outcome.get("error"), ApiUnreachable), outcome
    assert srv.requests == 1 and c.request_count == 1


def test_an_answer_over_the_size_cap_is_refused_as_it_streams():
    big = {"maxCoreCount": 8, "maxCount": 2, "nodearrays": [], "pad": "x" * 5000}
    with ScriptedServer(sequence(Reply(200, big))) as srv:
        c, _ = client(srv.url, max_response_bytes=4096)
        with pytest.raises(ApiError, match="answer larger than 4096 bytes"):
            c.get_status()
        c2, _ = client(srv.url, max_response_bytes=8192)
        assert c2.get_status().max_count == 2  # under the cap the answer is read as before


@pytest.mark.parametrize("url", ["http://admin:PW-x@127.0.0.1:1", "https://admin@host.example", "https://:PW-x@h"])
def test_a_url_with_a_user_or_password_is_refused_without_echoing_it(url):
    from hpc_bridge.config import config_from_dict

    with pytest.raises(ConfigError) as caught:
        ClusterClient(url, "demo", "admin", PASSWORD)
    assert "PW-x" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"cluster": {"url": url, "name": "c", "username": "u"}})
    assert "PW-x" not in str(caught.value) and "user name or password" in str(caught.value)


def test_an_answer_without_length_is_cut_at_the_cap_as_it_streams():
    """No Content-Length (read to the end of the connection): the cap is applied to what
    arrives, not to what the server announced."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    sent = []

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
            try:
                for _ in range(8192):  # up to 64 MB, 8 KB at a time, far past the 4 KB cap
                    conn.sendall(b"[" + b" " * 8191)
                    sent.append(1)
            except OSError:
                pass  # the client hung up: it stopped reading at the cap

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    c = ClusterClient(f"http://127.0.0.1:{server.getsockname()[1]}", "demo", "admin", PASSWORD,
                      max_response_bytes=4096, retries=0)
    with pytest.raises(ApiError, match="answer larger than 4096 bytes"):
        c.get_status()
    c.close()
    t.join(30)
    server.close()
    assert len(sent) < 8192  # stopped by the client hanging up, long before the end
