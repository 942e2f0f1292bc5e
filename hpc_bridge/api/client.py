"""The only module that talks HTTP: one method per endpoint of the cluster API.

Retries: connection errors, 5xx and 429 are retried with exponential backoff and full jitter
(honouring Retry-After), bounded both in count and in total time. Every mutating call carries a
requestId, reused by its retries, so a retry can never do the work twice. The reference answers
409 both for a repeated requestId and for invalid input, so a 409 on a retry is a success only
when the request id is found again (`GET /nodes?request_id=` has nodes, or
`GET /operations/?request_id=` is not empty); otherwise it is the API's rejection.

Time and size are bounded whatever the server does: every attempt has a wall-clock deadline
(`timeout`) that covers connecting, sending, the headers and the whole body, so a server that
trickles one byte at a time cannot hold a caller (httpx's own timeouts are per socket read); the
retry budget is a hard limit on the whole call, retries and backoff included; an answer larger
than `max_response_bytes` is refused as it streams in.

Only documented fields are relied on: an operation's id comes from the 202 answer (its
`operationId`, else its `Location` header), never from an OperationStatus.

Errors are typed (hpc_bridge.errors: callers decide on the class) and one line; they never
contain the password or the Authorization header.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
import uuid
from typing import Any, Callable, TypeVar
from urllib.parse import unquote, urlsplit

import httpcore
import httpx
from pydantic import BaseModel, ValidationError

from hpc_bridge import __version__
from hpc_bridge.api.models import (
    ClusterStatus,
    ClusterUsage,
    ManagedNode,
    NodeCreationRequest,
    NodeCreationResult,
    NodeCreationResultSet,
    NodeCreationSet,
    NodeList,
    NodeManagementRequest,
    NodeManagementResult,
    OperationStatus,
)
from hpc_bridge.config import PLAIN_HTTP_REFUSED, USERINFO_REFUSED, has_userinfo, plain_http_refused
from hpc_bridge.errors import (
    ApiError,
    ApiUnreachable,
    AuthError,
    ConfigError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServerError,
    ThrottledError,
    TlsError,
)

log = logging.getLogger("hpc_bridge.api")

M = TypeVar("M", bound=BaseModel)

MANAGEMENT_ACTIONS = ("start", "shutdown", "deallocate", "terminate", "remove")

# The largest answer read: GET nodes of a 10,000-node cluster is ~20 MB; a hostile or broken
# server sending more must not take the hook's memory (400 MB of body cost 1.6 GB of RSS).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def new_request_id() -> str:
    return str(uuid.uuid4())


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


class _AttemptDeadline:
    """The wall-clock end of the attempt under way in this thread (None: no bound)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def set(self, deadline: float | None) -> None:
        self._local.deadline = deadline

    def remaining(self, timeout: float | None, timeout_error: type[Exception]) -> float | None:
        """A socket operation's timeout, cut to what is left of the attempt."""
        deadline = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise timeout_error("the attempt's deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every socket operation ends by the attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _AttemptDeadline):
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.remaining(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.remaining(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        bounded = self._deadline.remaining(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, bounded), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    def __init__(self, deadline: _AttemptDeadline):
        self._deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        bounded = self._deadline.remaining(timeout, httpcore.ConnectTimeout)
        stream = super().connect_tcp(host, port, bounded, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool whose sockets honour the attempt deadline."""

    def __init__(self, verify: bool | ssl.SSLContext, deadline: _AttemptDeadline):
        context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        self._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=_DeadlineBackend(deadline))


class ClusterClient:
    """A client of one cluster: `ClusterClient.from_config(cfg)` or explicit arguments."""

    def __init__(
        self,
        url: str,
        cluster: str,
        username: str,
        password: str,
        *,
        verify: bool = True,
        ca_bundle: str | None = None,
        timeout: float = 10.0,
        retries: int = 4,
        retry_budget: float = 30.0,
        allow_plain_http: bool = False,
        backoff_base: float = 0.25,
        backoff_cap: float = 8.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        sleep: Callable[[float], None] = time.sleep,
    ):
        url = url.rstrip("/")
        if has_userinfo(url):
            raise ConfigError(USERINFO_REFUSED)
        if plain_http_refused(url, allow_plain_http):
            raise ConfigError(PLAIN_HTTP_REFUSED)
        self.url = url
        self.cluster = cluster
        self.retries = retries
        self.retry_budget = retry_budget
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._attempt_deadline = _AttemptDeadline()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._secrets = [x for x in (password, _basic_token(username, password)) if x]
        self.request_count = 0
        tls_verify: bool | ssl.SSLContext = False
        # A plain-http URL (loopback or allow_plain_http) never uses TLS: loading the CA bundle
        # for it cost every hook process ~35 ms (cold: ~150 ms).
        if verify and not url.startswith("http://"):
            try:
                tls_verify = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
            except (OSError, ssl.SSLError) as err:  # ssl.SSLError is an OSError; said for clarity
                why = getattr(err, "strerror", None) or getattr(err, "reason", None) or "not a PEM bundle"
                raise ConfigError(f"cluster.ca_bundle {ca_bundle}: cannot load it: {why}") from None
        self._http = httpx.Client(
            base_url=url,
            auth=httpx.BasicAuth(username, password),
            transport=_DeadlineTransport(tls_verify, self._attempt_deadline),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            # identity: a small compressed answer cannot expand past the size cap's reading
            headers={"User-Agent": f"hpc-bridge/{__version__}", "Accept": "application/json",
                     "Accept-Encoding": "identity"},
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not see our credentials
        )

    @classmethod
    def from_config(cls, cfg, **overrides: Any) -> "ClusterClient":
        c = cfg.cluster
        kwargs = dict(
            verify=c.verify_tls,
            ca_bundle=c.ca_bundle,
            timeout=c.timeout,
            retries=c.retries,
            retry_budget=c.retry_budget,
            allow_plain_http=c.allow_plain_http,
        )
        kwargs.update(overrides)
        return cls(c.url, c.name, c.username, c.password(), **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ClusterClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _path(self, suffix: str) -> str:
        return f"/clusters/{_quote(self.cluster)}{suffix}"

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _send(self, method: str, path: str, *, params: dict | None = None, body: Any = None) -> "_Attempted":
        """One logical call with bounded retries, ending by `retry_budget` seconds from now
        whatever the server does. Returns the final non-retryable response."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        endpoint = f"{method} {path}"
        deadline = time.monotonic() + self.retry_budget
        attempt = 0
        while True:
            delay: float | None = None
            response: httpx.Response | None = None
            try:
                self.request_count += 1
                response = self._attempt(method, path, params, body, deadline)
            except httpx.TransportError as err:
                cause = _transport_cause(err)
                if _is_tls_failure(err):
                    # Not transient: retrying an untrusted certificate only delays the error.
                    raise TlsError(f"{endpoint}: {cause}", endpoint=endpoint) from None
                if isinstance(err, httpx.TimeoutException):
                    cause = f"no complete answer within {min(self.timeout, self.retry_budget):g} s ({type(err).__name__})"
                log.debug("%s: attempt %d failed: %s", endpoint, attempt + 1, cause)
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return _Attempted(response, attempt)
                cause = f"HTTP {response.status_code}"
                delay = _retry_after(response)
                log.debug("%s: attempt %d answered %s", endpoint, attempt + 1, cause)
            attempt += 1
            if delay is None:
                delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))
            remaining = deadline - time.monotonic()
            if attempt > self.retries or delay >= remaining:
                if response is None:
                    raise ApiUnreachable(
                        f"{endpoint}: cluster API unreachable at {self.url} after {attempt} attempt(s): {cause}",
                        endpoint=endpoint,
                    )
                exhausted = ThrottledError if response.status_code == 429 else ServerError
                raise exhausted(
                    f"{endpoint}: {_status_text(response)} after {attempt} attempt(s){self._body_hint(response)}",
                    endpoint=endpoint,
                    status=response.status_code,
                )
            self._sleep(delay)

    def _attempt(self, method: str, path: str, params: dict, body: Any, call_deadline: float) -> httpx.Response:
        """One request, read whole, by min(now + timeout, the call's deadline), at most
        max_response_bytes long."""
        self._attempt_deadline.set(min(time.monotonic() + self.timeout, call_deadline))
        try:
            request = self._http.build_request(method, path, params=params or None, json=body)
            response = self._http.send(request, stream=True)
            try:
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.max_response_bytes:
                    raise self._too_large(method, path)
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise self._too_large(method, path)
                    chunks.append(chunk)
            finally:
                response.close()
        finally:
            self._attempt_deadline.set(None)
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"]
        return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks),
                              request=request, extensions=response.extensions)

    def _too_large(self, method: str, path: str) -> ApiError:
        limit = self.max_response_bytes
        size = f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"
        return ApiError(f"{method} {path}: answer larger than {size}, not read", endpoint=f"{method} {path}")

    def _body_hint(self, response: httpx.Response) -> str:
        text = " ".join(response.text.split())[:200] if response.content else ""
        return f": {self._redact(text)}" if text else ""

    def _check(self, endpoint: str, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        hint = self._body_hint(response)
        if status in (401, 403):
            raise AuthError(
                f"{endpoint}: {_status_text(response)}: credentials refused (check [cluster] username and the password)",
                endpoint=endpoint,
                status=status,
            )
        if status == 409:
            raise ConflictError(f"{endpoint}: {_status_text(response)}: the API rejected the request "
                                f"(invalid input){hint}", endpoint=endpoint, status=status)
        if status == 404:
            raise NotFoundError(
                f"{endpoint}: {_status_text(response)} (is the cluster name {self.cluster!r} right?){hint}",
                endpoint=endpoint,
                status=status,
            )
        raise ApiError(f"{endpoint}: {_status_text(response)}{hint}", endpoint=endpoint, status=status)

    def _parse(self, endpoint: str, response: httpx.Response, model: type[M]) -> M:
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(f"{endpoint}: response is not JSON{self._body_hint(response)}", endpoint=endpoint) from None
        if response.status_code == 202 and isinstance(data, dict) and not data.get("operationId"):
            # The reference: a 202 carries the operation's URL in Location (and its id in the body).
            op_id = _operation_id_from_location(response.headers.get("Location"))
            if op_id:
                data = {**data, "operationId": op_id}
        try:
            return model.model_validate(data)
        except ValidationError as err:
            raise ApiError(f"{endpoint}: unexpected response body ({_first_problem(err)})", endpoint=endpoint) from None

    def _get(self, path: str, model: type[M], params: dict | None = None) -> M:
        attempted = self._send("GET", path, params=params)
        endpoint = f"GET {path}"
        self._check(endpoint, attempted.response)
        return self._parse(endpoint, attempted.response, model)

    # ------------------------------------------------------------------ reads

    def get_nodes(self, operation: str | None = None, request_id: str | None = None) -> NodeList:
        return self._get(self._path("/nodes"), NodeList, {"operation": operation, "request_id": request_id})

    def get_status(self, nodes: bool = False) -> ClusterStatus:
        return self._get(self._path("/status"), ClusterStatus, {"nodes": "true" if nodes else None})

    def get_usage(
        self,
        timeframe: str | None = None,
        from_: str | None = None,
        to: str | None = None,
        granularity: str | None = None,
    ) -> ClusterUsage:
        params = {"timeframe": timeframe, "from": from_, "to": to, "granularity": granularity}
        return self._get(self._path("/usage"), ClusterUsage, params)

    def list_operations(self, request_id: str | None = None) -> list[OperationStatus]:
        return self._get("/operations/", _OperationList, {"request_id": request_id}).root

    def get_operation(self, op_id: str) -> OperationStatus:
        return self._get(f"/operations/{_quote(op_id)}", OperationStatus)

    # ------------------------------------------------------------------ writes

    def create_nodes(
        self, sets: list[NodeCreationSet | dict], request_id: str | None = None, *, resend: bool = False
    ) -> NodeCreationResult:
        """Create nodes. `resend=True`: this requestId may already have reached the server (a
        recorded call being finished), so a 409 is looked up by request id like a retry's."""
        # One validation for the whole request: per-set models cost a big resume a pydantic
        # round trip per name.
        path = self._path("/nodes/create")
        try:
            request = NodeCreationRequest.model_validate({
                "sets": [s.to_wire() if isinstance(s, NodeCreationSet) else s for s in sets],
                "requestId": request_id or new_request_id(),
            })
        except ValidationError as err:
            raise InvalidRequestError(f"POST {path}: not sent, the request is invalid ({_first_problem(err)})",
                                      endpoint=f"POST {path}") from None
        return self._send_idempotent(path, request, NodeCreationResult, self._recover_create, resend)

    def scale(
        self, nodearray: str, total_core_count: int | None = None, total_node_count: int | None = None
    ) -> NodeCreationResult:
        # No requestId in this endpoint: a retry after a lost answer is still safe, the target is a total.
        path = self._path(f"/scale/{_quote(nodearray)}")
        params = {"totalCoreCount": total_core_count, "totalNodeCount": total_node_count}
        attempted = self._send("POST", path, params=params)
        self._check(f"POST {path}", attempted.response)
        return self._parse(f"POST {path}", attempted.response, NodeCreationResult)

    def manage_nodes(
        self,
        action: str,
        *,
        names: list[str] | None = None,
        ids: list[str] | None = None,
        hostnames: list[str] | None = None,
        ip_addresses: list[str] | None = None,
        filter: str | None = None,
        request_id: str | None = None,
        resend: bool = False,
    ) -> NodeManagementResult:
        if action not in MANAGEMENT_ACTIONS:
            raise ValueError(f"unknown node action {action!r}")
        path = self._path(f"/nodes/{action}")
        try:
            request = NodeManagementRequest.make(
                names=names,
                ids=ids,
                hostnames=hostnames,
                ip_addresses=ip_addresses,
                filter=filter,
                request_id=request_id or new_request_id(),
            )
        except ValidationError as err:
            raise InvalidRequestError(f"POST {path}: not sent, the request is invalid ({_first_problem(err)})",
                                      endpoint=f"POST {path}") from None
        if not request.selects_anything:
            raise InvalidRequestError(f"POST {path}: not sent, the request selects no nodes", endpoint=f"POST {path}")
        return self._send_idempotent(path, request, NodeManagementResult, self._recover_management, resend)

    def _send_idempotent(self, path: str, request: Any, result_type: type[Any], recover: Callable[..., Any],
                         resend: bool) -> Any:
        """POST a request that carries a requestId. A 409 to a retry or a re-send of a recorded
        call is looked up by that id (`recover`): the first attempt may have gone through."""
        endpoint = f"POST {path}"
        attempted = self._send("POST", path, body=request.to_wire())
        if attempted.response.status_code == 409 and (attempted.retried or resend):
            return recover(endpoint, attempted.response, request)
        self._check(endpoint, attempted.response)
        result = self._parse(endpoint, attempted.response, result_type)
        result._request_id = request.request_id
        return result

    # ------------------------------------------------------------------ 409 recovery

    def find_request(self, request_id: str) -> NodeList | None:
        """What the call with this requestId did: its nodes (possibly none: an operation whose
        nodes are gone, or that added none), or None when the API has no trace of the id."""
        try:
            found = self.get_nodes(request_id=request_id)
        except NotFoundError:
            found = NodeList(nodes=[])
        if found.nodes:
            return found
        try:
            return found if self.list_operations(request_id=request_id) else None
        except NotFoundError:
            return None

    def _found_or_rejected(self, endpoint: str, response: httpx.Response, request_id: str) -> NodeList:
        found = self.find_request(request_id)
        if found is None:
            raise ConflictError(
                f"{endpoint}: {_status_text(response)}: the API rejected the request (invalid input); "
                f"request id {request_id} is unknown to it, so nothing was done{self._body_hint(response)}",
                endpoint=endpoint, status=response.status_code,
            )
        log.info("%s: 409 for request id %s, which the API knows: the first attempt was accepted",
                 endpoint, request_id)
        return found

    def _recover_create(self, endpoint: str, response: httpx.Response,
                        request: NodeCreationRequest) -> NodeCreationResult:
        found = self._found_or_rejected(endpoint, response, request.request_id or "")
        names = [n.name for n in found.nodes if n.name]
        # The operation's id was in the answer that was lost; the reference offers no other source.
        result = NodeCreationResult(
            operation_id="", sets=[NodeCreationResultSet(added=n) for n in _attribute_created(request.sets, found)]
        )
        result._request_id = request.request_id
        result._recovered = True
        result._created_names = names
        return result

    def _recover_management(self, endpoint: str, response: httpx.Response,
                            request: NodeManagementRequest) -> NodeManagementResult:
        found = self._found_or_rejected(endpoint, response, request.request_id or "")
        result = NodeManagementResult(
            operation_id="",
            nodes=[ManagedNode(id=n.node_id or "", name=n.name or "", status="OK") for n in found.nodes],
        )
        result._request_id = request.request_id
        result._recovered = True
        return result


def _first_problem(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{err.error_count()} problem(s); first: {where}: {first['msg']}"


def _attribute_created(sets: list[NodeCreationSet], found: NodeList) -> list[int]:
    """How many of the found nodes belong to each set: literal names first, then by nodearray."""
    remaining = list(found.nodes)
    added = [0] * len(sets)
    for i, s in enumerate(sets):
        if s.name_format and "%" not in s.name_format:
            match = next((n for n in remaining if n.name == s.name_format), None)
            if match is not None:
                remaining.remove(match)
                added[i] = 1
    for i, s in enumerate(sets):
        if s.name_format and "%" not in s.name_format:
            continue
        mine = [n for n in remaining if n.template == s.nodearray][: s.count]
        for n in mine:
            remaining.remove(n)
        added[i] = len(mine)
    return added


class _Attempted:
    __slots__ = ("response", "retried")

    def __init__(self, response: httpx.Response, attempts_before: int):
        self.response = response
        self.retried = attempts_before > 0


from pydantic import RootModel  # noqa: E402


class _OperationList(RootModel[list[OperationStatus]]):
    pass


def _basic_token(username: str, password: str) -> str:
    import base64

    return base64.b64encode(f"{username}:{password}".encode()).decode()


def _quote(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


def _status_text(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()


def _is_tls_failure(err: BaseException) -> bool:
    """A certificate or TLS handshake failure anywhere in the exception's chain of causes."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _operation_id_from_location(location: str | None) -> str | None:
    """The operation id at the end of a Location header ("/operations/ID" or a full URL)."""
    if not location:
        return None
    segments = [unquote(p) for p in urlsplit(location).path.split("/") if p]
    return segments[-1] if len(segments) >= 2 and segments[-2] == "operations" else None


def _transport_cause(err: httpx.TransportError) -> str:
    kind = type(err).__name__
    text = " ".join(str(err).split())[:160]
    if _is_tls_failure(err):
        return f"TLS verification failed ({text}); if the server uses a private CA set [cluster] ca_bundle"
    return f"{kind}: {text}" if text else kind
