"""`hpc-bridge demo`: the whole loop on an in-process simulator, no Slurm, no config file.

One function, `run_demo()`, in numbered steps so later steps (partitions, resume, suspend) can
be slotted in: start the simulator, show its buckets, create a few nodes per nodearray through
our own ClusterClient, watch them boot, shut them down, and print a summary.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from hpc_bridge.api.client import ClusterClient
from hpc_bridge.api.models import NodeCreationSet
from hpc_bridge.sim.server import SimServer
from hpc_bridge.table import format_table

SETTLED_UP = {"Ready", "Failed"}
SETTLED_DOWN = {"Deallocated", "Terminated", "Failed"}


def _say(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")
    out.flush()


def _wait(client: ClusterClient, names: list[str], settled: set[str], out: TextIO, label: str,
          timeout: float = 120.0) -> dict[str, str]:
    """Poll GET /nodes until every named node is in a settled status; show progress."""
    tty = out.isatty()
    deadline = time.monotonic() + timeout
    last_line = ""
    while True:
        nodes = {n.name: n for n in client.get_nodes().nodes if n.name in names}
        statuses = {name: (nodes[name].status if name in nodes else "Removed") for name in names}
        counts: dict[str, int] = {}
        for s in statuses.values():
            counts[s] = counts.get(s, 0) + 1
        done = sum(1 for s in statuses.values() if s in settled or s == "Removed")
        line = f"  {label}: {done}/{len(names)} settled  (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
        if tty:
            out.write("\r" + line.ljust(len(last_line)))
            out.flush()
        elif line != last_line:
            _say(out, line)
        last_line = line
        if done == len(names) or time.monotonic() > deadline:
            if tty:
                out.write("\n")
            return statuses
        time.sleep(0.2)


def run_demo(scenario: Any = None, out: TextIO | None = None, per_nodearray: int = 2) -> int:
    out = out or sys.stdout
    started = time.monotonic()
    # Step 1: the simulator, in-process on a free loopback port.
    with SimServer(scenario) as sim, ClusterClient(sim.url, sim.cluster_name, sim.username, sim.password) as client:
        _say(out, f"[1] cluster API simulator for cluster {sim.cluster_name!r} listening on {sim.url}")

        # Step 2: what the cluster offers.
        status = client.get_status()
        _say(out, f"[2] cluster status: max {status.max_count} nodes / {status.max_core_count} cores")
        rows = []
        for na in status.nodearrays:
            for b in na.buckets:
                vm = b.virtual_machine
                rows.append([na.name, b.machine_type, vm.vcpu_count, vm.memory, vm.gpu_count, vm.infiniband,
                             b.active_count, b.available_count, b.max_placement_group_size,
                             na.nodearray.shutdown_policy])
        _say(out, format_table(["nodearray", "machine type", "vcpu", "mem GB", "gpu", "ib", "active", "available",
                                "pg size", "shutdown"], rows))

        # Step 3: create a few nodes per nodearray (deterministic names, one call, one requestId).
        sets: list[NodeCreationSet] = []
        for na in status.nodearrays:
            valid = [b for b in na.buckets if b.valid and b.available_count > 0]
            for b in valid:
                count = min(per_nodearray, b.available_count)
                pg = f"{na.name}-pg1" if b.virtual_machine.infiniband else None
                prefix = f"demo-{na.name}-{b.virtual_machine.vcpu_count}c"
                sets.append(NodeCreationSet.make(count=count, nodearray=na.name,
                                                 definition={"machineType": b.machine_type},
                                                 name_format=f"{prefix}-%d", name_offset=1,
                                                 placement_group_id=pg))
        result = client.create_nodes(sets)
        _say(out, f"[3] create: operation {result.operation_id}")
        names: list[str] = []
        created = client.get_nodes(operation=result.operation_id).nodes
        for s, r in zip(sets, result.sets):
            note = f" ({r.message})" if r.message else ""
            _say(out, f"    {s.nodearray:<6} {s.definition.machine_type:<28} requested {s.count}, added {r.added}{note}")
        names = [n.name for n in created if n.name]

        # Step 4: watch them boot.
        _say(out, f"[4] booting {len(names)} node(s): Off -> Acquiring -> Preparing -> Ready")
        up = _wait(client, names, SETTLED_UP, out, "boot")
        nodes = {n.name: n for n in client.get_nodes().nodes}
        _say(out, format_table(["name", "status", "machine type", "ip", "hostname", "placement group"],
                               ([n, up[n], nodes[n].machine_type, nodes[n].private_ip, nodes[n].hostname,
                                 nodes[n].placement_group_id] for n in names)))

        # Step 5: shut them down (each node's ShutdownPolicy: Deallocate or Terminate).
        shut = client.shutdown_nodes(names=names)
        errors = [m for m in shut.nodes if not m.ok]
        _say(out, f"[5] shutdown: operation {shut.operation_id}, {len(shut.nodes) - len(errors)} OK, {len(errors)} error(s)")
        down = _wait(client, names, SETTLED_DOWN, out, "shutdown")

        # Step 6: summary.
        usage = client.get_usage(granularity="total").usage
        total = usage[0].total if usage else None
        stats = sim.stats()
        outcome: dict[str, int] = {}
        for s in down.values():
            outcome[s] = outcome.get(s, 0) + 1
        _say(out, "[6] summary")
        _say(out, f"    nodes created:   {len(names)} ({', '.join(names)})")
        _say(out, f"    final states:    " + ", ".join(f"{v} {k}" for k, v in sorted(outcome.items())))
        _say(out, f"    API calls:       {client.request_count} by the client; the simulator answered "
                  f"{stats['total']} ({', '.join(f'{k} {v}' for k, v in sorted(stats['requests'].items()))})")
        if total is not None:
            cost = f", ${total.cost:.4f}" if total.cost is not None else ""
            _say(out, f"    usage:           {total.hours:.4f} core-hours{cost} accrued during the demo")
        _say(out, f"    elapsed:         {time.monotonic() - started:.1f} s")
        failed = [n for n, s in up.items() if s != "Ready"]
        if failed:
            _say(out, f"    boot failures:   {', '.join(failed)}")
    return 0
