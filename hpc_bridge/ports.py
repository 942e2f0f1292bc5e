"""The ports: what the apply code (resume, suspend, resume-fail, repair, the follower) needs from
the world, as small typed Protocols. The real edges satisfy them: `api.client.ClusterClient`
(ClusterApi), `slurm.Slurm` (SlurmControl), `state.StateStore` (StateStorage), `journal.Journal`
(CallJournal), `time.time` (Clock). Tests put a recording Slurm in SlurmControl's place.

Only for type checking and tests: the hooks never import this module at run time (the modules
that use these names import them under TYPE_CHECKING).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from hpc_bridge.api.models import ClusterStatus, NodeCreationResult, NodeList, NodeManagementResult, OperationStatus
from hpc_bridge.errors import StateError
from hpc_bridge.journal import Call, Settled
from hpc_bridge.slurm import SlurmNode
from hpc_bridge.state_records import Operation, State

Clock = Callable[[], float]  # seconds since the epoch, like time.time


class ClusterApi(Protocol):
    """The cluster REST API (the reference's endpoints the apply code uses). Errors are
    hpc_bridge.errors.ApiError subclasses; `request_count` counts HTTP requests made."""

    request_count: int

    def get_nodes(self, operation: str | None = None, request_id: str | None = None) -> NodeList: ...

    def get_status(self, nodes: bool = False) -> ClusterStatus: ...

    def get_operation(self, op_id: str) -> OperationStatus: ...

    def find_request(self, request_id: str) -> NodeList | None: ...

    def create_nodes(self, sets: list[Any], request_id: str | None = None, *,
                     resend: bool = False) -> NodeCreationResult: ...

    def manage_nodes(self, action: str, *, names: list[str] | None = None, ids: list[str] | None = None,
                     hostnames: list[str] | None = None, ip_addresses: list[str] | None = None,
                     filter: str | None = None, request_id: str | None = None,
                     resend: bool = False) -> NodeManagementResult: ...


class SlurmControl(Protocol):
    """Slurm's view of the nodes and the updates we ask of it (scontrol). Errors are
    SlurmError; every method returns the scontrol calls it made, `calls` counts them all."""

    calls: int

    def show_nodes(self) -> dict[str, SlurmNode]: ...

    def update_nodes(self, names: Iterable[str], state: str | None = None, reason: str | None = None,
                     node_addr: Sequence[str] | None = None, node_hostname: Sequence[str] | None = None) -> int: ...

    def set_addresses(self, mapping: Mapping[str, tuple[str, str | None]]) -> int: ...

    def reset_addresses(self, names: Iterable[str]) -> int: ...


class StateStorage(Protocol):
    """The state file: a locked read-change-write transaction, and a lock-free snapshot.
    Errors are StateError."""

    path: Path

    def transaction(self, now: float | None = None, durable: bool = True) -> AbstractContextManager[State]: ...

    def read(self) -> State: ...

    def ensure_dir(self) -> None: ...


class CallJournal(Protocol):
    """Records, sends and settles the mutating API calls (see hpc_bridge.journal), on the state
    file `store`, through `client`, stamped by `now`."""

    store: StateStorage
    client: ClusterApi
    now: Clock

    def transaction(self) -> AbstractContextManager[State]: ...

    def read(self) -> State: ...

    def record_and_send(self, calls: list[Call]) -> StateError | None: ...

    def send(self, calls: list[Call]) -> Settled: ...

    def resend(self, op: Operation) -> Call: ...
