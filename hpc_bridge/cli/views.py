"""Commands that show the cluster and act on it by hand: status, operations, nodes, usage,
scale, logs, clear-hold. Each gets its data from a view module and renders it here."""

from __future__ import annotations

import argparse
import sys

from hpc_bridge.cli.output import emit_json, open_config, wants_json, warn
from hpc_bridge.table import format_table


def _client(cfg):
    from hpc_bridge.context import client_for

    return client_for(cfg)


def cmd_status(args: argparse.Namespace) -> int:
    from hpc_bridge.status import gather

    cfg = open_config(args)
    with _client(cfg) as client:
        view = gather(cfg, client)
    for w in view.warnings:
        warn(w)
    if wants_json(args):
        emit_json(view.to_json())
        return 0
    print(f"cluster {view.cluster}: max {view.status.max_count} nodes / {view.status.max_core_count} cores")
    headers = ["nodearray", "machine type", "vcpu", "mem GB", "gpu", "ib", "active", "available", "max",
               "pg size", "capacity fail", "valid", "in service"]
    keys = ["nodearray", "machineType", "vcpuCount", "memoryGB", "gpuCount", "infiniband", "activeCount",
            "availableCount", "maxCount", "maxPlacementGroupSize", "lastCapacityFailure", "valid", "inService"]
    print(format_table(headers, ([r[k] for k in keys] for r in view.rows)))
    return 0


def cmd_operations(args: argparse.Namespace) -> int:
    from hpc_bridge.operations_view import gather_all, gather_one

    cfg = open_config(args)
    if args.id:
        with _client(cfg) as client:
            one = gather_one(cfg, client, args.id)
        if wants_json(args):
            emit_json(one.to_json())
            return 0
        rec = one.record
        print(f"operation {args.id}: {one.operation.action} started {one.operation.start_time}, {len(one.nodes)} node(s)"
              + (f"; hpc-bridge: {rec.outcome}{f' ({rec.message})' if rec.message else ''}" if rec else ""))
        print(format_table(
            ["name", "status", "target", "machine type", "ip", "message"],
            ([n.name, n.status, n.target_state, n.machine_type, n.private_ip, n.status_message] for n in one.nodes),
        ))
        return 0
    with _client(cfg) as client:
        listed = gather_all(cfg, client)
    if wants_json(args):
        emit_json([op.to_json() for op in listed])
        return 0
    from hpc_bridge.log import node_names

    rows = []
    for op in listed:
        rec = op.record
        rows.append([op.operation_id or "-", op.operation.action, op.operation.start_time, rec.outcome if rec else "-",
                     node_names(rec.nodes) if rec else "?" if not op.operation_id else "- (not hpc-bridge's)"])
    print(format_table(["operation", "action", "started", "status", "nodes"], rows))
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from hpc_bridge.nodes_view import HEADERS, gather

    cfg = open_config(args)
    with _client(cfg) as client:
        view = gather(cfg, client, hostlist=args.hostlist, states=args.state or ())
    for w in view.warnings:
        warn(w)
    if wants_json(args):
        emit_json([r.to_json() for r in view.rows])
        return 0
    if not view.rows:
        print("no nodes" + (" match" if args.hostlist or args.state else ""))
        return 0
    headers = HEADERS if view.slurm_ok else [h for h in HEADERS if h not in ("slurm", "reason")]
    cells = [r.cells() for r in view.rows]
    if not view.slurm_ok:
        cells = [[c for i, c in enumerate(row) if i not in (1, 2)] for row in cells]
    print(format_table(headers, cells))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from hpc_bridge.errors import UsageError
    from hpc_bridge.usage import check_options, gather, table_rows, to_csv, write_chart

    timeframe = check_options(args.timeframe, args.from_, args.to, args.granularity)
    if args.svg is not None and not args.svg.strip():
        raise UsageError("--svg needs a file name")
    cfg = open_config(args)
    with _client(cfg) as client:
        view = gather(cfg, client, timeframe=timeframe, from_=args.from_, to=args.to, granularity=args.granularity)
    if args.svg:
        write_chart(args.svg, view, args.metric)
        print(f"wrote {args.svg}", file=sys.stderr)
    if args.csv:
        sys.stdout.write(to_csv(view.records))
        return 0
    if wants_json(args):
        emit_json(view.to_json())
        return 0
    if view.intervals:
        print(f"usage of {view.cluster} from {view.intervals[0][0]} to {view.intervals[-1][1]} (UTC)")
    print(format_table(["nodearray", "vm size", "core-hours", "cost"], table_rows(view.summary, view.total)))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from hpc_bridge.scale import added, check_target, request_scale, wait_for_operation

    check_target(args.nodes, args.cores)
    cfg = open_config(args)
    as_json = wants_json(args)
    with _client(cfg) as client:
        req = request_scale(cfg, client, args.nodearray, nodes=args.nodes, cores=args.cores)
        if req.warning:
            warn(req.warning)
        if not as_json:
            print(f"scale {args.nodearray} to {req.target}: added {added(req.result)} node(s), "
                  f"operation {req.result.operation_id}")
            for m in req.messages:
                print(f"  {m}")
        if not args.wait:
            if as_json:
                emit_json(req.to_json())
            return 0

        def show(p) -> None:
            if not as_json:
                print(f"  {p.line()}", flush=True)

        p, nodes = wait_for_operation(client, req.result.operation_id, timeout=args.timeout, poll=args.poll,
                                      on_progress=show)
    if as_json:
        emit_json(req.to_json() | {"progress": p.to_json(), "nodes": [n.to_wire() for n in nodes]})
    else:
        if nodes:
            print(format_table(["name", "status", "machine type", "ip", "message"],
                               ([n.name, n.status, n.machine_type, n.private_ip, n.status_message] for n in
                                sorted(nodes, key=lambda n: n.name or ""))))
        if not p.done:
            print(f"gave up after {args.timeout:g}s: {len(p.waiting)} node(s) not Ready yet "
                  f"(follow with: hpc-bridge operations {req.result.operation_id})", file=sys.stderr)
        elif p.failed:
            print(f"{len(p.failed)} node(s) failed", file=sys.stderr)
    return 0 if p.ok else 1


def cmd_clear_hold(args: argparse.Namespace) -> int:
    import time

    from hpc_bridge.nodeops import clear_hold
    from hpc_bridge.state import StateStore

    cfg = open_config(args)
    nodes = clear_hold(StateStore.from_config(cfg), args.vm_size, time.time())
    if wants_json(args):
        emit_json({"cleared": args.vm_size, "nodes": nodes})
        return 0
    from hpc_bridge.hostlist import compress_sorted

    print(f"{args.vm_size}: back in service; repair (its timer, or `hpc-bridge repair` now) puts "
          f"{compress_sorted(nodes) if nodes else 'no nodes'} back to idle~")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from hpc_bridge.hostlist import expand
    from hpc_bridge.logs import log_files, matching_lines

    wanted = set(expand(args.hostlist))
    cfg = open_config(args)
    rows = list(matching_lines(log_files(cfg.paths.log_dir), wanted))
    if wants_json(args):
        emit_json([{"command": c, "line": line} for c, line in rows])
        return 0
    for command, line in rows:
        print(f"{command}: {line}")
    return 0
