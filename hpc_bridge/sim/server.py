"""The simulator's HTTP server: every endpoint of the cluster API over real HTTP.

`SimServer` wraps the pure `ClusterModel` behind one lock in a stdlib ThreadingHTTPServer.
A background ticker advances the model clock (and runs boot hooks) even when nobody asks;
every request also advances it first. The clock is wall time plus an offset that
`advance(seconds)` / POST /_sim/advance moves forward (for usage tests).

Control API (not part of the reference; same Basic auth):
  GET  /_sim/stats        request counts and response bytes per endpoint, statuses, injected faults,
                          creates, nodes
  POST /_sim/faults       partial update of the [faults] table; answers the full current faults
  POST /_sim/reset-stats  zero the counters
  POST /_sim/advance      {"seconds": N}: move the simulated clock forward
In-process only: `hold()` keeps the API requests of one client address waiting until released.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import random
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from hpc_bridge.config import is_loopback_host
from hpc_bridge.sim.model import ClusterModel, SimError
from hpc_bridge.sim.scenario import REQUEST_FAULT_KEYS, Scenario, faults_error, load_scenario

TICK_SECONDS = 0.05
MAX_BODY = 4 * 1024 * 1024
# Error answers the reference documents as "No Content" (400 invalid, 404 not found, 409 invalid input).
NO_CONTENT_ERRORS = frozenset({400, 404, 409})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        err = sys.exc_info()[1]
        if isinstance(err, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return  # the client went away (timeout, test over): nothing to report
        super().handle_error(request, client_address)


class Hold:
    """API requests kept waiting at the simulator: every one from the address of the first
    request to arrive (one host: a process, its retries, whatever else runs there), until
    `release()`. A test holds one caller mid-run, for certain, while another one runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Event()
        self._released = threading.Event()
        self.client: str | None = None

    def wait(self, timeout: float) -> str | None:
        """The client address being held, once its first request arrived (None after timeout)."""
        return self.client if self._arrived.wait(timeout) else None

    def release(self) -> None:
        self._released.set()

    def stop(self, client: str) -> None:
        """Called for each API request: returns at once, or once released for the held client."""
        with self._lock:
            if self.client is None and not self._released.is_set():
                self.client = client
                self._arrived.set()
        if client == self.client:
            self._released.wait()


class SimServer:
    def __init__(self, scenario: None | str | Path | dict | Scenario = None, host: str = "127.0.0.1", port: int = 0,
                 *, seed: int | None = None, quiet: bool = True):
        self.scenario = load_scenario(scenario)
        self.host = host
        self.port = port
        self.quiet = quiet
        self._offset = 0.0
        self._lock = threading.RLock()
        self.model = ClusterModel(self.scenario, now=self.now(), seed=seed)
        self._fault_rng = random.Random(f"faults-{self.model.faults['seed'] if seed is None else seed}")
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._hook_procs: list[subprocess.Popen] = []
        self.hook_errors: list[str] = []
        self._injected: dict[str, int] = {}  # faults injected per scope ("*" or an endpoint), for `times`
        self._hold: Hold | None = None
        self.reset_stats()

    # ------------------------------------------------------------------ properties

    @property
    def cluster_name(self) -> str:
        return self.scenario.cluster_name

    @property
    def username(self) -> str:
        return self.scenario.username

    @property
    def password(self) -> str:
        return self.scenario.password

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("SimServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def now(self) -> float:
        return time.time() + self._offset

    # ------------------------------------------------------------------ life cycle

    def start(self) -> "SimServer":
        handler = type("Handler", (_Handler,), {"sim": self})
        self._httpd = _HTTPServer((self.host, self.port), handler)
        self._stopping.clear()
        serve = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                 name="sim-http", daemon=True)
        tick = threading.Thread(target=self._ticker, name="sim-ticker", daemon=True)
        self._threads = [serve, tick]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._hold is not None:
            self._hold.release()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        self._reap(wait=False)

    def serve_until(self, stop_event: threading.Event) -> None:
        """Block until stop_event is set (used by the CLI), then stop."""
        try:
            while not stop_event.wait(0.2):
                pass
        finally:
            self.stop()

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ticker(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            self.tick()
            self._reap(wait=False)

    def tick(self) -> None:
        with self._lock:
            self.model.advance(self.now())
            events = self._drain()
        self._run_hooks(events)

    def _drain(self) -> list[tuple[str, dict]]:
        events, self.model.events = self.model.events, []
        return events

    # ------------------------------------------------------------------ in-process control

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward by `seconds` (never back)."""
        with self._lock:
            self._offset += max(0.0, float(seconds))
        self.tick()

    def set_faults(self, **update: Any) -> dict[str, Any]:
        """Change fault knobs (same keys as the [faults] table). Raises ValueError if invalid."""
        normalised, error = faults_error(update, self.scenario.nodearrays)
        if error:
            raise ValueError(error)
        with self._lock:
            self.model.set_faults(normalised)
            if set(normalised) & set(REQUEST_FAULT_KEYS):
                self._injected.pop("*", None)
            for name in normalised.get("endpoints", {}):
                self._injected.pop(name, None)
            if "seed" in normalised:
                self._fault_rng = random.Random(f"faults-{normalised['seed']}")
            return json.loads(json.dumps(self.model.faults))

    def set_node_attributes(self, name: str, **attributes: Any) -> None:
        """A user's change to a live node's attributes (e.g. KeepAlive=True). Raises SimError."""
        with self._lock:
            self.model.set_node_attributes(name, attributes)

    def hold(self) -> Hold:
        """From now on, keep every API request of the first client address to send one waiting
        until the returned Hold is released (control requests are never held). A new hold
        releases the one before."""
        with self._lock:
            if self._hold is not None:
                self._hold.release()
            self._hold = Hold()
            return self._hold

    def reset_stats(self) -> None:
        with self._lock:
            self._stats: dict[str, Any] = {
                "requests": {},
                "statuses": {},
                "faults": {"500": 0, "429": 0, "drop": 0, "lost_response": 0},
                "creates": {"calls": 0, "nodes_requested": 0, "nodes_added": 0},
                "bytes": {},  # response body bytes per endpoint
                "total": 0,
                "unauthorized": 0,
            }

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = json.loads(json.dumps(self._stats))
            nodes: dict[str, int] = {}
            for rec in self.model.nodes.values():
                nodes[rec.status] = nodes.get(rec.status, 0) + 1
            out["nodes"] = nodes
            out["now"] = self.now()
            out["hooks"] = {"running": sum(1 for p in self._hook_procs if p.poll() is None), "errors": list(self.hook_errors)}
            return out

    def _count(self, section: str, key: str, n: int = 1) -> None:
        bucket = self._stats[section]
        bucket[key] = bucket.get(key, 0) + n

    # ------------------------------------------------------------------ hooks

    def _run_hooks(self, events: list[tuple[str, dict]]) -> None:
        for kind, node in events:
            argv = self.scenario.on_ready if kind == "ready" else self.scenario.on_stop
            if not argv:
                continue
            env = dict(os.environ)
            env.update(self.scenario.hook_env)
            env.update({
                "HPC_BRIDGE_NODE_NAME": node.get("Name") or "",
                "HPC_BRIDGE_NODE_ID": node.get("NodeId") or "",
                "HPC_BRIDGE_NODE_IP": node.get("PrivateIp") or "",
                "HPC_BRIDGE_NODE_HOSTNAME": node.get("Hostname") or "",
                "HPC_BRIDGE_NODEARRAY": node.get("Template") or "",
                "HPC_BRIDGE_NODE_STATUS": node.get("Status") or "",
                "HPC_BRIDGE_HOOK": "on_ready" if kind == "ready" else "on_stop",
            })
            try:
                proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
            except OSError as err:
                self.hook_errors.append(f"{argv[0]}: {err.strerror or err}")
                continue
            self._hook_procs.append(proc)

    def _reap(self, wait: bool) -> None:
        alive = []
        for proc in self._hook_procs:
            if proc.poll() is None:
                alive.append(proc)
            elif proc.returncode != 0:
                self.hook_errors.append(f"hook {proc.args[0]} exited {proc.returncode}")
        self._hook_procs = alive

    def wait_hooks(self, timeout: float = 10.0) -> bool:
        """Wait until every hook process started so far has exited (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            if all(p.poll() is not None for p in list(self._hook_procs)):
                self._reap(wait=False)
                return True
            time.sleep(0.02)
        return False

    # ------------------------------------------------------------------ faults

    def _fault_for(self, endpoint: str) -> tuple[str, dict[str, float]]:
        """(scope, knobs) in effect for an endpoint; no faults once `times` injections happened."""
        faults = self.model.faults
        knobs = {k: faults.get(k, 0.0) for k in REQUEST_FAULT_KEYS}
        own = faults.get("endpoints", {}).get(endpoint)
        scope = endpoint if own else "*"
        knobs.update(own or {})
        if knobs["times"] and self._injected.get(scope, 0) >= knobs["times"]:
            knobs.update(error_rate=0.0, throttle_rate=0.0, drop_rate=0.0, lost_response_rate=0.0, latency=0.0)
        return scope, knobs

    # ------------------------------------------------------------------ dispatch

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        """Route one authenticated API request: (status, json body, extra headers). Raises SimError."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        now = self.now()
        m = self.model
        if parts and parts[0] == "operations":
            if method != "GET":
                raise SimError(405, f"{method} not allowed on /operations")
            if len(parts) == 1 or (len(parts) == 2 and parts[1] == ""):
                return 200, m.list_operations(now, query.get("request_id")), {}
            if len(parts) == 2:
                return 200, m.get_operation(parts[1], now), {}
            raise SimError(404, f"no such path {path}")
        if len(parts) < 3 or parts[0] != "clusters":
            raise SimError(404, f"no such path {path}")
        if parts[1] != self.cluster_name:
            raise SimError(404, f"no cluster named {parts[1]!r}")
        rest = parts[2:]
        if rest == ["nodes"]:
            _allow(method, "GET", path)
            return 200, m.get_nodes(now, query.get("operation"), query.get("request_id")), {}
        if rest == ["status"]:
            _allow(method, "GET", path)
            return 200, m.status(now, nodes=query.get("nodes", "").lower() == "true"), {}
        if rest == ["usage"]:
            _allow(method, "GET", path)
            return 200, m.usage(now, query.get("timeframe"), query.get("from"), query.get("to"), query.get("granularity")), {}
        if len(rest) == 2 and rest[0] == "nodes":
            _allow(method, "POST", path)
            if rest[1] == "create":
                self._count("creates", "calls")  # every call, also those refused (409)
                result = m.create(body, now)
                self._count("creates", "nodes_requested", sum(s.get("count", 0) for s in body["sets"]))
                self._count("creates", "nodes_added", sum(s["added"] for s in result["sets"]))
            else:
                result = m.manage(rest[1], body, now)
            return 202, result, {"Location": f"/operations/{result['operationId']}"}
        if len(rest) == 2 and rest[0] == "scale":
            _allow(method, "POST", path)
            result = m.scale(rest[1], _int_param(query, "totalNodeCount"), _int_param(query, "totalCoreCount"), now)
            return 202, result, {"Location": f"/operations/{result['operationId']}"}
        raise SimError(404, f"no such path {path}")

    def handle_control(self, method: str, action: str, body: Any) -> tuple[int, Any]:
        if action == "stats" and method == "GET":
            return 200, self.stats()
        if method != "POST":
            raise SimError(405, f"{method} not allowed on /_sim/{action}")
        if action == "faults":
            try:
                return 200, self.set_faults(**(body or {}))
            except (ValueError, TypeError) as err:
                raise SimError(400, str(err)) from None
        if action == "reset-stats":
            self.reset_stats()
            return 200, {"ok": True}
        if action == "advance":
            seconds = (body or {}).get("seconds") if isinstance(body, dict) else None
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                raise SimError(400, "advance needs {\"seconds\": N} with N >= 0")
            self.advance(seconds)
            return 200, {"now": self.now()}
        raise SimError(404, f"no control action {action!r}")


def _allow(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise SimError(405, f"{method} not allowed on {path}")


def _int_param(query: dict[str, str], key: str) -> int | None:
    value = query.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise SimError(409, f"{key} must be an integer (got {value!r})") from None


def endpoint_name(method: str, path: str) -> str:
    """The logical endpoint of a request path (used for stats and per-endpoint faults)."""
    parts = [p for p in path.strip("/").split("/") if p]
    if parts[:1] == ["operations"]:
        return "operations" if len(parts) == 1 else "operation"
    if len(parts) >= 3 and parts[0] == "clusters":
        rest = parts[2:]
        if rest[0] == "nodes":
            return "nodes" if len(rest) == 1 else f"nodes/{rest[1]}"
        return rest[0]
    return "other"


class _Handler(BaseHTTPRequestHandler):
    sim: SimServer
    protocol_version = "HTTP/1.1"
    server_version = "hpc-bridge-sim"
    # A kept-alive connection otherwise waited ~40 ms per response: headers and body went out
    # as two writes, and Nagle held the second back until the client's delayed ACK of the first.
    # Buffered, a response is one write (handle_one_request flushes after each request).
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024

    def log_message(self, fmt: str, *args: Any) -> None:  # noqa: D401 - stdlib signature
        if not self.sim.quiet:
            super().log_message(fmt, *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # ------------------------------------------------------------------ helpers

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> int:
        data = json.dumps(payload).encode("utf-8") if payload is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        return len(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"code": status, "message": message}, headers)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self.sim.username.encode()) and hmac.compare_digest(
            password.encode(), self.sim.password.encode()
        )

    def _read_body(self) -> Any:
        length = self.headers.get("Content-Length")
        if not length:
            return None
        try:
            n = int(length)
        except ValueError:
            raise SimError(400, "invalid Content-Length") from None
        if n < 0 or n > MAX_BODY:
            raise SimError(413, "request body too large")
        raw = self.rfile.read(n)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SimError(400, f"request body is not valid JSON: {err}") from None

    # ------------------------------------------------------------------ main

    def _serve(self, method: str) -> None:
        sim = self.sim
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            body = self._read_body()
        except SimError as err:
            self.close_connection = True
            self._error(err.status, err.message)
            return
        if not self._authorized():
            with sim._lock:
                sim._stats["unauthorized"] += 1
            self._error(401, "authentication required", {"WWW-Authenticate": 'Basic realm="cluster"'})
            return
        if path.startswith("/_sim/") or path == "/_sim":
            try:
                status, payload = sim.handle_control(method, path[len("/_sim/"):].strip("/"), body)
            except SimError as err:
                self._error(err.status, err.message)
                return
            self._send_json(status, payload)
            return

        if (hold := sim._hold) is not None:
            hold.stop(self.client_address[0])
        endpoint = endpoint_name(method, path)
        with sim._lock:
            scope, knobs = sim._fault_for(endpoint)
            roll = sim._fault_rng.random
            drop = roll() < knobs["drop_rate"]
            fail = roll() < knobs["error_rate"]
            throttle = roll() < knobs["throttle_rate"]
            lose = roll() < knobs["lost_response_rate"]
            if drop or fail or throttle or lose:
                sim._injected[scope] = sim._injected.get(scope, 0) + 1
            sim._stats["total"] += 1
            sim._count("requests", endpoint)
        if knobs["latency"] > 0:
            time.sleep(knobs["latency"])
        if drop:
            with sim._lock:
                sim._count("faults", "drop")
            self._drop()
            return
        if fail:
            with sim._lock:
                sim._count("faults", "500")
                sim._count("statuses", "500")
            self._error(500, "simulated internal server error")
            return
        if throttle:
            with sim._lock:
                sim._count("faults", "429")
                sim._count("statuses", "429")
            retry = knobs["retry_after"]
            self._error(429, "simulated throttling", {"Retry-After": str(int(retry)) if retry == int(retry) else str(retry)})
            return
        with sim._lock:
            try:
                status, payload, headers = sim.handle(method, path, query, body)
            except SimError as err:
                status, payload, headers = err.status, {"code": err.status, "message": err.message}, {}
                if sim.scenario.strict_reference and status in NO_CONTENT_ERRORS:
                    payload = None  # the reference: these answers are "No Content"
            sim._count("statuses", str(status))
            events = sim._drain()
        sim._run_hooks(events)
        if lose:
            with sim._lock:
                sim._count("faults", "lost_response")
            self._drop()
            return
        sent = self._send_json(status, payload, headers)
        with sim._lock:
            sim._count("bytes", endpoint, sent)



def serve(scenario: str | None, host: str, port: int, *, allow_remote: bool = False, quiet: bool = True,
          on_ready: Callable[[str], None] = lambda url: None) -> int:
    """`hpc-bridge sim`: serve until SIGTERM/SIGINT; on_ready(url) once it listens."""
    import signal

    from hpc_bridge.errors import ConfigError

    if not is_loopback_host(host) and not allow_remote:
        raise ConfigError(f"refusing to listen on non-loopback host {host!r} (the simulator has no TLS); "
                          "pass --allow-remote to do it anyway")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0..65535 (got {port})")
    sim = SimServer(scenario, host=host, port=port, quiet=quiet)
    try:
        sim.start()
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        on_ready(sim.url)
        sim.serve_until(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
