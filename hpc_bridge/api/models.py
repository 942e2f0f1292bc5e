"""Pydantic models of every resource in the cluster API reference.

Wire names are kept exactly (camelCase for API resources, PascalCase for node records).
Unknown fields are kept, never rejected: the real API returns far more than the reference
documents, and a field we do not know today must survive a read-modify-write.

Tolerant where the reference is: a documented required field is required, but a null for a
field that has a default reads as that default (the reference's "required" often means
"present when it applies": a valid bucket may send `invalidReason: null`). A node record is
"type object" in the reference, so its attributes are data, read through typed accessors that
give None for a value of another type; a record without a usable Name is skipped with one
warning line instead of failing the whole response.

`to_wire()` gives back the JSON that was parsed (fields that were not present stay absent),
so a parsed body serialises to the same JSON.
"""

# No `from __future__ import annotations`: pydantic would then evaluate every field's annotation
# from its text when each class is made, a measurable share of a hook's start-up.
import json
import logging
from datetime import datetime, timezone
from functools import cache
from typing import Annotated, Any, Literal, get_args

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator
from pydantic.alias_generators import to_camel

log = logging.getLogger("hpc_bridge.api")


class WireModel(BaseModel):
    """Base for API resources: camelCase on the wire, unknown fields kept."""

    # defer_build: a hook validates only a few of these models; building the others' schemas
    # at import would cost every hook process tens of milliseconds.
    model_config = ConfigDict(
        extra="allow", populate_by_name=True, alias_generator=to_camel, protected_namespaces=(), defer_build=True
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class DefaultedWireModel(WireModel):
    """Base for resources with fields that have a default other than null. Only these take the
    validator below: it is a Python call per object validated, and a create's 1,000 sets and
    their 1,000 results have no such field (tests/test_models.py holds every model to this)."""

    @model_validator(mode="before")
    @classmethod
    def _null_reads_as_default(cls, data: Any) -> Any:
        """A null for a field with a non-null default reads as that default (left unset)."""
        if isinstance(data, dict) and None in data.values():
            defaulted = _defaulted_aliases(cls)
            data = {k: v for k, v in data.items() if v is not None or k not in defaulted}
        return data


@cache
def _defaulted_aliases(model: type[BaseModel]) -> frozenset[str]:
    """Wire names of the fields a null reads as the default of: those with a default that are
    not themselves nullable (a nullable one takes null as None)."""
    out: set[str] = set()
    for name, f in model.model_fields.items():
        nullable = type(None) in get_args(f.annotation)
        if not f.is_required() and not nullable and (f.default is not None or f.default_factory is not None):
            out.update({name, f.alias or name})
    return frozenset(out)


def parse_epoch(text: Any) -> float | None:
    """An ISO-8601 time from the API ("2026-01-01T12:34:56Z") as epoch seconds, or None."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


# --------------------------------------------------------------------------- nodes


class Node:
    """A node record: a flat dict of PascalCase attributes (Name, NodeId, Status, ...).

    The reference types a node only as "object", so every attribute is kept as data exactly as
    sent; the accessors below read the ones hpc-bridge uses and give None for an absent or null
    value, or one of another type (a real service may add or reshape attributes at any time).
    A plain class, not a pydantic model: it has no fields to validate, and a model per record
    made every full node list (ten thousand records on a big cluster) cost a validator call each.
    """

    __slots__ = ("_attributes",)

    def __init__(self, attributes: dict[str, Any] | None = None):
        self._attributes = dict(attributes) if attributes else {}

    @classmethod
    def from_wire(cls, value: Any) -> "Node":
        """A record as sent (a JSON object); anything else is refused with ValueError."""
        if isinstance(value, Node):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"a node record must be an object, not {type(value).__name__}")
        return cls(value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            cls.from_wire, serialization=core_schema.plain_serializer_function_ser_schema(cls.to_wire))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other._attributes == self._attributes

    __hash__ = None  # type: ignore[assignment]  # mutable data, like the dict it wraps

    def __repr__(self) -> str:
        return f"Node({self._attributes!r})"

    def to_wire(self) -> dict[str, Any]:
        return dict(self._attributes)

    def get(self, key: str, default: Any = None) -> Any:
        """Any attribute by its wire name (e.g. node.get("Configuration"))."""
        return self._attributes.get(key, default)

    def _text(self, key: str) -> str | None:
        value = self.get(key)
        return value if isinstance(value, str) else None

    def _flag(self, key: str) -> bool | None:
        value = self.get(key)
        return value if isinstance(value, bool) else None

    def _number(self, key: str) -> float | None:
        value = self.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def name(self) -> str | None:
        return self._text("Name")

    @property
    def node_id(self) -> str | None:
        return self._text("NodeId")

    @property
    def template(self) -> str | None:
        return self._text("Template")

    @property
    def machine_type(self) -> str | list[str] | None:
        value = self.get("MachineType")  # a nodearray record may list several sizes
        if isinstance(value, list):
            return [v for v in value if isinstance(v, str)]
        return value if isinstance(value, str) else None

    @property
    def status(self) -> str | None:
        return self._text("Status")

    @property
    def state(self) -> str | None:
        return self._text("State")

    @property
    def target_state(self) -> str | None:
        return self._text("TargetState")

    @property
    def private_ip(self) -> str | None:
        return self._text("PrivateIp")

    @property
    def hostname(self) -> str | None:
        return self._text("Hostname")

    @property
    def placement_group_id(self) -> str | None:
        return self._text("PlacementGroupId")

    @property
    def keep_alive(self) -> bool | None:
        return self._flag("KeepAlive")

    @property
    def shutdown_policy(self) -> str | None:
        return self._text("ShutdownPolicy")

    @property
    def fixed(self) -> bool | None:
        return self._flag("Fixed")

    @property
    def instance_id(self) -> str | None:
        return self._text("InstanceId")

    @property
    def request_id(self) -> str | None:
        return self._text("RequestId")

    @property
    def status_message(self) -> str | None:
        return self._text("StatusMessage")

    @property
    def region(self) -> str | None:
        return self._text("Region")

    @property
    def subnet_id(self) -> str | None:
        return self._text("SubnetId")

    @property
    def core_count(self) -> int | None:
        value = self._number("CoreCount")
        return int(value) if value is not None and value.is_integer() else None

    @property
    def memory(self) -> float | None:
        return self._number("Memory")

    @property
    def infiniband(self) -> bool | None:
        return self._flag("Infiniband")

    @property
    def interruptible(self) -> bool | None:
        return self._flag("Interruptible")

    def epoch(self, key: str) -> float | None:
        """A timestamp attribute the reference leaves untyped (CreateTime, StatusTime) as epoch
        seconds; None when absent or unreadable. A time without zone is UTC."""
        return parse_epoch(self.get(key))


def _usable_records(records: Any) -> Any:
    """Node records without a usable Name are skipped, each with one warning line naming it:
    one odd record must not fail the response every hook depends on."""
    if not isinstance(records, list):
        return records
    usable = []
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("Name"), str) and record["Name"]:
            usable.append(record)
            continue
        log.warning("cluster API sent a node record without a usable Name; skipped: %s", _describe(record))
    return usable


def _describe(record: Any) -> str:
    if isinstance(record, dict) and isinstance(record.get("NodeId"), str):
        return f"NodeId {record['NodeId']!r}"
    try:
        text = json.dumps(record, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(record)
    text = " ".join(text.split())
    return text if len(text) <= 120 else text[:117] + "..."


NodeRecords = Annotated[list[Node], BeforeValidator(_usable_records)]


class OperationStatus(WireModel):
    """Documented with `action` and `startTime` only: an operation's id is never read from here
    (it comes from the 202 answer); anything else a service adds is kept as data."""

    action: str
    start_time: str


class NodeList(WireModel):
    nodes: NodeRecords
    operation: OperationStatus | None = None


# --------------------------------------------------------------------------- status


class VirtualMachine(DefaultedWireModel):
    vcpu_count: int
    pcpu_count: int | None = None
    memory: float  # GB, may be fractional (7.5)
    gpu_count: int = 0
    infiniband: bool = False
    vcpu_quota_count: int | None = None

    @property
    def cores(self) -> int:
        return self.vcpu_count


class BucketDefinition(WireModel):
    machine_type: str | None = None


class PlacementGroup(DefaultedWireModel):
    name: str
    active_count: int = 0
    active_core_count: int = 0


class Bucket(DefaultedWireModel):
    bucket_id: str
    definition: BucketDefinition | None = None
    virtual_machine: VirtualMachine
    valid: bool | None = True  # absent: valid; null: unknown, so not used for new nodes
    invalid_reason: str | None = None  # documented: present when valid is false
    active_count: int = 0
    active_core_count: int = 0
    active_nodes: list[str] | None = None
    available_count: int = 0
    available_core_count: int = 0
    max_count: int = 0
    max_core_count: int = 0
    max_placement_group_size: int = 0
    max_placement_group_core_size: int = 0
    # A plain [] (pydantic copies it per instance): a default_factory of `list` made pydantic take
    # the builtin's signature apart with the tokenizer, a few ms of every hook's first validation.
    placement_groups: list[PlacementGroup] = []
    quota_count: int = 0
    quota_core_count: int = 0
    consumed_core_count: int = 0
    family_consumed_core_count: int | None = None
    family_quota_core_count: int | None = None
    family_quota_count: int | None = None
    regional_consumed_core_count: int | None = None
    regional_quota_core_count: int | None = None
    regional_quota_count: int | None = None
    last_capacity_failure: float = -1.0  # seconds since; negative (or null) means never

    @property
    def machine_type(self) -> str:
        """The VM size; the definition carries it (the reference puts it nowhere else)."""
        if self.definition and self.definition.machine_type:
            return self.definition.machine_type
        extra = (self.model_extra or {}).get("machineType")
        return str(extra) if extra else ""

    @property
    def had_capacity_failure(self) -> bool:
        return self.last_capacity_failure >= 0

    def capacity_failure_within(self, seconds: float) -> bool:
        """The API reports a capacity failure in this bucket less than `seconds` ago."""
        return 0 <= self.last_capacity_failure < seconds


class NodearrayStatus(DefaultedWireModel):
    name: str
    buckets: list[Bucket]
    max_count: int = 0
    max_core_count: int = 0
    nodearray: Node = Field(default_factory=Node)


class ClusterStatus(WireModel):
    max_core_count: int
    max_count: int
    nodearrays: list[NodearrayStatus]
    nodes: NodeRecords | None = None
    state: str | None = None
    target_state: str | None = None


# --------------------------------------------------------------------------- usage


class UsageDetail(WireModel):
    core_count: float | None = Field(default=None, alias="core_count")
    cost: float | None = None
    hours: float | None = None
    os: Literal["Windows", "Linux"] | str | None = None
    priority: Literal["Regular", "Spot"] | str | None = None
    region: str | None = None
    vm_size: str | None = Field(default=None, alias="vm_size")


class ClusterUsageItem(WireModel):
    category: Literal["cluster", "node", "nodearray"]
    hours: float
    cost: float | None = None
    node: str | None = None
    details: list[UsageDetail] | None = None


class UsageInterval(DefaultedWireModel):
    start: str
    end: str
    total: ClusterUsageItem
    breakdown: list[ClusterUsageItem] = []


class ClusterUsage(WireModel):
    usage: list[UsageInterval]


# --------------------------------------------------------------------------- create


class NodeCreationSet(WireModel):
    count: int
    nodearray: str
    definition: BucketDefinition | None = None
    name_format: str | None = None
    name_offset: int | None = None
    node_attributes: Node | None = None
    placement_group_id: str | None = None

    @classmethod
    def make(cls, **fields: Any) -> "NodeCreationSet":
        """Build a set leaving unset (and so absent on the wire) every field given as None."""
        return cls(**_drop_none(**fields))


class NodeCreationRequest(WireModel):
    sets: list[NodeCreationSet]
    request_id: str | None = None


class NodeCreationResultSet(WireModel):
    added: int
    message: str | None = None


class _ClientSide(WireModel):
    """What the client knows about a mutating call beyond its response body."""

    _request_id: str | None = PrivateAttr(default=None)
    _recovered: bool = PrivateAttr(default=False)
    _created_names: list[str] | None = PrivateAttr(default=None)

    @property
    def request_id(self) -> str | None:
        return self._request_id

    @property
    def recovered(self) -> bool:
        """True when a retry got 409 and the result was rebuilt from what the first attempt did."""
        return self._recovered

    @property
    def created_names(self) -> list[str] | None:
        """Names of the nodes created, when known from a recovery (None otherwise)."""
        return self._created_names


class NodeCreationResult(_ClientSide):
    operation_id: str
    sets: list[NodeCreationResultSet]


# --------------------------------------------------------------------------- management


class NodeManagementRequest(WireModel):
    # ip_addresses is snake_case on the wire, unlike everything else.
    names: list[str] | None = None
    ids: list[str] | None = None
    hostnames: list[str] | None = None
    ip_addresses: list[str] | None = Field(
        default=None, alias="ip_addresses", validation_alias=AliasChoices("ip_addresses", "ipAddresses")
    )
    filter: str | None = None
    request_id: str | None = None

    @classmethod
    def make(cls, **fields: Any) -> "NodeManagementRequest":
        return cls(**_drop_none(**fields))

    @property
    def selects_anything(self) -> bool:
        return bool(self.names or self.ids or self.hostnames or self.ip_addresses or self.filter)


class ManagedNode(WireModel):
    id: str
    name: str
    status: Literal["OK", "Error"] | str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "Error"


class NodeManagementResult(_ClientSide):
    operation_id: str
    nodes: list[ManagedNode]

    @property
    def refused(self) -> dict[str, str | None]:
        """Name -> the API's error (None: no message) for each node the call did not affect."""
        return {m.name: m.error for m in self.nodes if not m.ok}
