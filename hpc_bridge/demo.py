"""`hpc-bridge demo`: the whole loop on an in-process simulator, no Slurm, no config file.

It runs the product's own code paths, in order: the simulator on a free loopback port, the
partition generator (files written to a directory it names), the resume hook for a few nodes of
every VM size (one create call), the nodes booting, the suspend hook, and a summary. With no
Slurm on the machine, the Slurm commands the hooks would run are shown instead of run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from hpc_bridge.api.client import ClusterClient
from hpc_bridge.cloud import DEALLOCATED, FAILED_STATUS, GONE, READY
from hpc_bridge.config import config_from_dict
from hpc_bridge.hostlist import compress
from hpc_bridge.sim.server import SimServer
from hpc_bridge.state import StateStore
from hpc_bridge.table import format_table

# Where the demo stops waiting: booted (or failed to), and shut down (or failed).
SETTLED_UP = frozenset({READY, FAILED_STATUS})
SETTLED_DOWN = GONE | {DEALLOCATED, FAILED_STATUS}


def _say(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")
    out.flush()


class ShownSlurm:
    """Stands in for hpc_bridge.slurm.Slurm in the demo only: prints the scontrol commands the
    hooks would run on a real controller instead of running them."""

    def __init__(self, out: TextIO):
        self.out = out
        self.calls = 0

    def update_nodes(self, names, state=None, reason=None, node_addr=None, node_hostname=None) -> int:
        parts = [f"NodeName={compress(list(names))}"]
        if node_addr is not None:
            parts.append("NodeAddr=" + ",".join(node_addr))
        if node_hostname is not None:
            parts.append("NodeHostName=" + ",".join(node_hostname))
        if state:
            parts.append(f"State={state}")
        if reason:
            parts.append(f"Reason='{reason}'")
        self.calls += 1
        _say(self.out, "    (no Slurm in the demo) would run: scontrol update " + " ".join(parts))
        return 1

    def set_addresses(self, mapping) -> int:
        names = sorted(mapping)
        return self.update_nodes(names, node_addr=[mapping[n][0] for n in names],
                                 node_hostname=[mapping[n][1] for n in names])

    def reset_addresses(self, names) -> int:
        names = sorted(set(names))
        return self.update_nodes(names, node_addr=names, node_hostname=names)

    def show_nodes(self) -> dict:
        return {}


def _wait(client: ClusterClient, names: list[str], settled: frozenset[str], out: TextIO, label: str,
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
        line = f"    {label}: {done}/{len(names)} settled  (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
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


def run_demo(out: TextIO, scenario: Any = None, per_bucket: int = 2, workdir: str | None = None) -> int:
    """The walk-through, narrated on `out` (the CLI passes stdout)."""
    from hpc_bridge.nodemap import load_nodemap
    from hpc_bridge.partitions import run_partitions
    from hpc_bridge.resume import run_resume
    from hpc_bridge.resume_file import Job
    from hpc_bridge.suspend import run_suspend

    started = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="hpc-bridge-demo-"))
    with SimServer(scenario) as sim:
        _say(out, f"[1] cluster API simulator for cluster {sim.cluster_name!r} listening on {sim.url}")
        password = work / "password"
        password.write_text(sim.password)
        password.chmod(0o600)
        cfg = config_from_dict({
            "cluster": {"url": sim.url, "name": sim.cluster_name, "username": sim.username,
                        "password_file": str(password)},
            "paths": {"state_dir": str(work / "state"), "log_dir": str(work / "log")},
            # registration: no address to set by hand, so the demo needs no follower process
            "slurm": {"conf_dir": str(work / "slurm"), "address_mode": "registration"},
        }, source="(demo)")
        client = ClusterClient.from_config(cfg)
        slurm = ShownSlurm(out)
        store = StateStore.from_config(cfg)

        # Step 2: what the cluster offers.
        status = client.get_status()
        _say(out, f"[2] cluster status: max {status.max_count} nodes / {status.max_core_count} cores")
        rows = []
        for na in status.nodearrays:
            for b in na.buckets:
                vm = b.virtual_machine
                rows.append([na.name, b.machine_type, vm.vcpu_count, vm.memory, vm.gpu_count, vm.infiniband,
                             b.available_count, b.max_placement_group_size, na.nodearray.shutdown_policy])
        _say(out, format_table(["nodearray", "machine type", "vcpu", "mem GB", "gpu", "ib", "available",
                                "pg size", "shutdown"], rows))

        # Step 3: the Slurm configuration generated from those buckets.
        result = run_partitions(cfg, status)
        plan = result.plan
        _say(out, f"[3] partitions: wrote {', '.join(sorted(result.files))} to {result.out_dir}")
        for line in result.files["partitions.conf"].splitlines():
            if line.startswith(("NodeName=", "PartitionName=")):
                _say(out, "    " + (line if len(line) <= 150 else line[:147] + "..."))
        nodemap = load_nodemap(cfg.nodemap_path)

        # Step 4: Slurm asks for a few nodes of every VM size: the resume hook, one create call.
        by_bucket: dict[tuple[str, str], list[str]] = {}
        for name in nodemap.names():
            e = nodemap[name]
            by_bucket.setdefault((e.nodearray, e.machine_type), []).append(name)
        wanted = [n for names in by_bucket.values() for n in names[:per_bucket]]
        jobs = [Job(str(i + 1), tuple(names[:per_bucket])) for i, names in enumerate(by_bucket.values())]
        expr = compress(wanted)
        _say(out, f"[4] resume {expr}  (as slurmctld would call ResumeProgram, {len(jobs)} jobs)")
        report = run_resume(cfg, expr, jobs, client=client, slurm=slurm, store=store, nodemap=nodemap)
        _say(out, "    " + report.summary())
        for name, why in sorted(report.down.items()):
            _say(out, f"    DOWN {name}: {why}")

        # Step 5: watch them boot.
        names = report.created + report.started
        _say(out, f"[5] booting {len(names)} node(s): Acquiring -> Preparing -> Ready")
        up = _wait(client, names, SETTLED_UP, out, "boot")
        nodes = {n.name: n for n in client.get_nodes().nodes}
        _say(out, format_table(["name", "status", "machine type", "ip", "placement group"],
                               ([n, up[n], nodes[n].machine_type, nodes[n].private_ip, nodes[n].placement_group_id]
                                for n in names)))

        # Step 6: Slurm suspends them when idle: the suspend hook applies each nodearray's policy.
        _say(out, f"[6] suspend {compress(names)}  (as slurmctld would call SuspendProgram)")
        sreport = run_suspend(cfg, compress(names), client=client, slurm=slurm, store=store, nodemap=nodemap)
        _say(out, "    " + sreport.summary())
        down = _wait(client, names, SETTLED_DOWN, out, "shutdown")

        # Step 7: summary.
        usage = client.get_usage(granularity="total").usage
        total = usage[0].total if usage else None
        stats = sim.stats()
        outcome: dict[str, int] = {}
        for s in down.values():
            outcome[s] = outcome.get(s, 0) + 1
        _say(out, "[7] summary")
        _say(out, f"    nodes created:   {len(report.created)} in one create call ({compress(report.created)})")
        _say(out, "    final states:    " + ", ".join(f"{v} {k}" for k, v in sorted(outcome.items())))
        _say(out, f"    hook API calls:  resume {report.api_calls}, suspend {sreport.api_calls}; the simulator "
                  f"answered {stats['total']} in all ({', '.join(f'{k} {v}' for k, v in sorted(stats['requests'].items()))})")
        if total is not None:
            cost = f", ${total.cost:.4f}" if total.cost is not None else ""
            _say(out, f"    usage:           {total.hours:.4f} core-hours{cost} accrued during the demo")
        _say(out, f"    generated files: {result.out_dir} ({plan.name_count() if plan else 0} node names)")
        _say(out, f"    state file:      {cfg.state_file};  logs: {work / 'log'}")
        _say(out, f"    elapsed:         {time.monotonic() - started:.1f} s")
        failed = [n for n, s in up.items() if s != READY]
        if failed:
            _say(out, f"    boot failures:   {', '.join(failed)}")
        client.close()
    return 0
