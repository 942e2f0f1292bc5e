"""`hpc-bridge operations [ID]`: the API's operations, with what hpc-bridge recorded of them.

The reference gives an operation only its action and start time; our records (state file and
its history) add the outcome as we know it and the node names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hpc_bridge.api.models import Node, OperationStatus as ApiOperation
from hpc_bridge.errors import BridgeError
from hpc_bridge.state_records import Operation

log = logging.getLogger("hpc_bridge.operations")


def recorded_operations(cfg) -> dict[str, Operation]:
    """Our records of API operations (state file and its history), by operation id. An
    unreadable state file: none, not an error."""
    from hpc_bridge.state import StateStore

    store = StateStore.from_config(cfg)
    try:
        records = [*store.history(), *store.read().operations.values()]  # the live record wins
    except BridgeError as err:
        log.warning("%s", err)
        return {}
    return {op.operation_id: op for op in records if op.operation_id}


def recorded_json(rec: Operation | None) -> dict[str, Any]:
    return {"hpcBridge": None if rec is None else
            {"status": rec.outcome, "requestId": rec.request_id, "nodes": list(rec.nodes), "message": rec.message}}


@dataclass
class OperationView:
    """One operation: the API's record, its nodes, and ours (None: not hpc-bridge's, or forgotten)."""

    operation: ApiOperation
    nodes: list[Node]
    record: Operation | None

    def to_json(self) -> dict[str, Any]:
        return {"operation": self.operation.to_wire(), "nodes": [n.to_wire() for n in self.nodes]} \
            | recorded_json(self.record)


@dataclass
class ListedOperation:
    operation: ApiOperation
    operation_id: str | None  # the reference's operations carry none; a service may add one
    record: Operation | None

    def to_json(self) -> dict[str, Any]:
        return self.operation.to_wire() | recorded_json(self.record)


def gather_one(cfg, client, operation_id: str) -> OperationView:
    op = client.get_operation(operation_id)
    nodes = client.get_nodes(operation=operation_id).nodes
    return OperationView(op, nodes, recorded_operations(cfg).get(operation_id))


def gather_all(cfg, client) -> list[ListedOperation]:
    ops = client.list_operations()
    ours = recorded_operations(cfg)
    listed = []
    for op in ops:
        op_id = op.to_wire().get("operationId")
        listed.append(ListedOperation(op, op_id, ours.get(op_id) if op_id else None))
    return listed
