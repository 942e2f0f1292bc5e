"""hpc-bridge command line: argument parsing and output only.

Every command calls one function elsewhere in the package. Exit codes: 0 ok, 1 failed,
2 usage or configuration error. Errors are one line on stderr; details go to the log file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable

from hpc_bridge import __version__
from hpc_bridge.errors import BridgeError
from hpc_bridge.log import escape_controls

log = logging.getLogger("hpc_bridge.cli")

EXIT_CODES = """exit codes:
  0  success
  1  the command failed (API error, Slurm error, a check failed)
  2  usage or configuration error

configuration: --config PATH, else $HPC_BRIDGE_CONFIG, else /etc/hpc-bridge/config.toml
logs: one file per command under [paths] log_dir (default /var/log/hpc-bridge); -v also prints them
"""


# --------------------------------------------------------------------------- helpers


def _common_options() -> argparse.ArgumentParser:
    """Options accepted both before and after the command name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="configuration file")
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log to stderr too (-vv: debug)"
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    return common


def _add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    summary: str,
    description: str = "",
    example: str = "",
) -> argparse.ArgumentParser:
    epilog = f"example:\n  {example}\n\n{EXIT_CODES}" if example else EXIT_CODES
    parser = sub.add_parser(
        name,
        help=summary,
        description=description or summary,
        epilog=epilog,
        parents=[_common_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func, command=name)
    return parser


def load_config_for(args: argparse.Namespace):
    """Load the config named on the command line and start logging to its log_dir."""
    from hpc_bridge.config import load_config
    from hpc_bridge.log import register_secret, setup_logging

    cfg = load_config(getattr(args, "config", None))
    _, problem = setup_logging(args.command, cfg.paths.log_dir, getattr(args, "verbose", 0))
    if problem:
        print(f"hpc-bridge {args.command}: warning: {problem}; warnings and errors go to stderr", file=sys.stderr)
    try:
        register_secret(cfg.cluster.password())
    except BridgeError:
        pass  # reported when a command actually needs the password
    return cfg


_OWN_PROCESS = False  # main() runs as a process of its own (not called in-process by a test)


def _freeze_imported_objects() -> None:
    """Move what the imports made (modules, classes, pydantic schemas: most of a hook's heap)
    out of the collector's reach. A short hook process otherwise spends a measurable share of
    its time re-scanning them in full collections, and once more at exit. Only in a process of
    our own: a caller's heap is not ours to freeze."""
    import gc

    if _OWN_PROCESS:
        gc.freeze()


def client_for(cfg):
    from hpc_bridge.api.client import ClusterClient

    return ClusterClient.from_config(cfg)


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


# --------------------------------------------------------------------------- status / operations


def _cmd_status(args: argparse.Namespace) -> int:
    from hpc_bridge.status import status_rows
    from hpc_bridge.table import format_table

    import time

    from hpc_bridge.state import StateStore

    cfg = load_config_for(args)
    with client_for(cfg) as client:
        status = client.get_status()
    try:
        cooloffs = StateStore.from_config(cfg).read().cooloffs
    except BridgeError as err:  # the API's view is still worth showing
        print(f"warning: {err}", file=sys.stderr)
        cooloffs = {}
    rows = status_rows(status, cooloffs, time.time())
    if wants_json(args):
        emit_json({"cluster": cfg.cluster.name, "maxCount": status.max_count, "maxCoreCount": status.max_core_count,
                   "buckets": rows})
        return 0
    print(f"cluster {cfg.cluster.name}: max {status.max_count} nodes / {status.max_core_count} cores")
    headers = ["nodearray", "machine type", "vcpu", "mem GB", "gpu", "ib", "active", "available", "max",
               "pg size", "capacity fail", "valid", "in service"]
    keys = ["nodearray", "machineType", "vcpuCount", "memoryGB", "gpuCount", "infiniband", "activeCount",
            "availableCount", "maxCount", "maxPlacementGroupSize", "lastCapacityFailure", "valid", "inService"]
    print(format_table(headers, ([r[k] for k in keys] for r in rows)))
    return 0


def _cmd_operations(args: argparse.Namespace) -> int:
    from hpc_bridge.table import format_table

    cfg = load_config_for(args)
    with client_for(cfg) as client:
        if args.id:
            op = client.get_operation(args.id)
            nodes = client.get_nodes(operation=args.id).nodes
            rec = recorded_operations(cfg).get(args.id)
            if wants_json(args):
                emit_json({"operation": op.to_wire(), "nodes": [n.to_wire() for n in nodes]} | _recorded_json(rec))
                return 0
            print(f"operation {args.id}: {op.action} started {op.start_time}, {len(nodes)} node(s)"
                  + (f"; hpc-bridge: {rec.outcome}{f' ({rec.message})' if rec.message else ''}" if rec else ""))
            print(format_table(
                ["name", "status", "target", "machine type", "ip", "message"],
                ([n.name, n.status, n.target_state, n.machine_type, n.private_ip, n.status_message] for n in nodes),
            ))
            return 0
        ops = client.list_operations()
    ours = recorded_operations(cfg)
    if wants_json(args):
        emit_json([op.to_wire() | _recorded_json(ours.get(op.to_wire().get("operationId"))) for op in ops])
        return 0
    from hpc_bridge.log import node_names

    rows = []
    for op in ops:
        # The reference gives an operation only action and startTime; an id shows where a service adds one.
        op_id = op.to_wire().get("operationId")
        rec = ours.get(op_id) if op_id else None
        rows.append([op_id or "-", op.action, op.start_time, rec.outcome if rec else "-",
                     node_names(rec.nodes) if rec else "?" if not op_id else "- (not hpc-bridge's)"])
    print(format_table(["operation", "action", "started", "status", "nodes"], rows))
    return 0


def recorded_operations(cfg) -> dict:
    """Our records of API operations (state file and its history), by operation id: what the
    API's list lacks (status as we know it, node names). Unreadable state: none, not an error."""
    from hpc_bridge.state import StateStore

    store = StateStore.from_config(cfg)
    try:
        records = [*store.history(), *store.read().operations.values()]  # the live record wins
    except BridgeError as err:
        log.warning("%s", err)
        return {}
    return {op.operation_id: op for op in records if op.operation_id}


def _recorded_json(rec) -> dict:
    return {"hpcBridge": None if rec is None else
            {"status": rec.outcome, "requestId": rec.request_id, "nodes": list(rec.nodes), "message": rec.message}}


# --------------------------------------------------------------------------- sim / demo


def _cmd_sim(args: argparse.Namespace) -> int:
    from hpc_bridge.sim.server import run_cli

    return run_cli(args.scenario, args.host, args.port, allow_remote=args.allow_remote,
                   quiet=not getattr(args, "verbose", 0))


def _cmd_demo(args: argparse.Namespace) -> int:
    from hpc_bridge.demo import run_demo

    return run_demo(scenario=args.scenario)


# --------------------------------------------------------------------------- partitions


def _cmd_partitions(args: argparse.Namespace) -> int:
    from hpc_bridge.partitions import run_partitions

    cfg = load_config_for(args)
    with client_for(cfg) as client:
        status = client.get_status()
    result = run_partitions(cfg, status, out_dir=args.output_dir, diff=args.diff, check=args.check,
                            reconfigure=args.reconfigure, restart=args.restart)
    plan = result.plan
    change = result.node_set_change
    if wants_json(args):
        emit_json({"outputDir": result.out_dir, "changed": [] if result.refused else result.changed,
                   "reconfigured": result.reconfigured, "restarted": result.restarted,
                   "restartNeeded": bool(change) and not result.restarted,
                   "nodesAdded": change.added, "nodesRemoved": change.removed,
                   "nodes": plan.name_count() if plan else 0, "skipped": plan.comments if plan else []})
        return 1 if (args.check and result.changed) or result.refused else 0
    if args.diff:
        sys.stdout.write(result.diff)
        return 0
    if args.check:
        if result.changed:
            print(f"out of date in {result.out_dir}: {', '.join(result.changed)} (run hpc-bridge partitions)")
            return 1
        print(f"up to date: {result.out_dir}")
        return 0
    if result.refused:
        print(f"node names change: {change.describe()}. slurmctld must be restarted for that (scontrol "
              "reconfigure would make it exit); nothing written. Run `hpc-bridge partitions --restart` "
              f"(runs {' '.join(cfg.slurm.restart_command)}), or `hpc-bridge partitions` and restart "
              "slurmctld yourself.", file=sys.stderr)
        return 1
    for comment in plan.comments if plan else []:
        print(comment)
    names = plan.name_count() if plan else 0
    what = ", ".join(result.changed) if result.changed else "nothing changed"
    done = "; slurmctld restarted" if result.restarted else "; scontrol reconfigure done" if result.reconfigured else ""
    print(f"{names} node names in {len(plan.groups) if plan else 0} groups; {result.out_dir}: {what}{done}")
    if change and not result.restarted:
        print(f"node names change: {change.describe()}: restart slurmctld (scontrol reconfigure is not enough), "
              "or run `hpc-bridge partitions --restart`")
    return 0


# --------------------------------------------------------------------------- Slurm hooks


class HookContext:
    """What every hook and repair needs, built from the config: client, Slurm, state, node map."""

    def __init__(self, args: argparse.Namespace, need_nodemap: bool = True):
        from hpc_bridge.nodemap import load_nodemap
        from hpc_bridge.slurm import Slurm
        from hpc_bridge.state import StateStore

        self.cfg = load_config_for(args)
        self.command = args.command
        self.config_path = self.cfg.source
        self.nodemap = load_nodemap(self.cfg.nodemap_path) if need_nodemap else None
        self.slurm = Slurm.from_config(self.cfg)
        self.store = StateStore.from_config(self.cfg)
        self._client = None

    @property
    def client(self):
        """Made on first use: a hook with nothing to do never pays for the HTTP stack."""
        if self._client is None:
            self._client = client_for(self.cfg)
            _freeze_imported_objects()
        return self._client

    def spawn_follower(self, now: float):
        """Start the detached follower and return its lease (the caller records it in the state
        file, under the lock): own session, no stdin or stdout tied to slurmctld, mask cleared
        in the child (hooks inherit slurmctld's blocked signals). It runs in `/`, so the config
        path is made absolute first; its stderr goes to this command's log file, so a follower
        that cannot start says why where the hook's own lines are."""
        import os
        import subprocess

        from hpc_bridge.lease import HOST
        from hpc_bridge.state import Lease

        argv = [sys.executable, "-m", "hpc_bridge", "--config", os.path.abspath(self.config_path), "follow"]
        stderr = self._open_own_log()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL if stderr is None else stderr,
                                    start_new_session=True, close_fds=True, env=dict(os.environ), cwd="/")
        finally:
            if stderr is not None:
                os.close(stderr)
        log.info("follower started (pid %d)", proc.pid)
        return Lease(host=HOST, pid=proc.pid, heartbeat=now, since=now)

    def _open_own_log(self) -> int | None:
        """This command's log file for appending (None when there is none or it cannot be opened)."""
        import os

        from hpc_bridge.files import open_owned

        if not self.cfg.paths.log_dir:
            return None
        try:
            return open_owned(os.path.join(self.cfg.paths.log_dir, f"{self.command}.log"),
                              os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except OSError:
            return None


def _hook_result(args: argparse.Namespace, report, ok: bool, verb: str | None = None) -> int:
    line = report.summary(verb) if verb else report.summary()
    log.info("%s", line)
    if wants_json(args):
        from dataclasses import asdict

        emit_json({k: v for k, v in asdict(report).items()} | {"ok": ok})
    else:
        print(line)
    errors = getattr(report, "errors", [])
    for error in errors:  # the hook could not finish a step: that, in one line (the log has the rest)
        print(f"hpc-bridge {args.command}: error: {error}", file=sys.stderr)
    problems = {} if errors else {**(getattr(report, "down", None) or getattr(report, "failed", None) or {}),
                                  **(getattr(report, "problems", None) or {})}
    for name, why in sorted(problems.items())[:20]:
        print(escape_controls(f"  {name}: {why}"), file=sys.stderr)
    for name in [] if errors else getattr(report, "unknown", [])[:20]:
        print(f"  {name}: unknown node (not in nodemap.json, no cloud node)", file=sys.stderr)
    return 0 if ok else 1


def _cmd_resume(args: argparse.Namespace) -> int:
    if not args.hostlist:  # nothing to resume: the job file and the hostlist parser are not needed
        return _nothing_to_do(args)
    import logging.handlers

    from hpc_bridge.hostlist import expand

    early = logging.handlers.BufferingHandler(100)  # the log file is not open yet
    logging.getLogger("hpc_bridge").addHandler(early)
    try:
        from hpc_bridge.resume_file import read_resume_file

        jobs = read_resume_file()  # first: the file is a /proc fd of slurmctld's that soon vanishes
    finally:
        logging.getLogger("hpc_bridge").removeHandler(early)
    names = expand(args.hostlist)  # a malformed hostlist changes nothing
    if not names:
        return _nothing_to_do(args)
    from hpc_bridge.resume import run_resume

    ctx = HookContext(args)
    for record in early.buffer:  # now into the hook's log file
        logging.getLogger(record.name).handle(record)
    report = run_resume(ctx.cfg, args.hostlist, jobs, client=ctx.client, slurm=ctx.slurm, store=ctx.store,
                        nodemap=ctx.nodemap, spawn_follower=ctx.spawn_follower)
    return _hook_result(args, report, report.ok)


def _nothing_to_do(args: argparse.Namespace) -> int:
    """An empty hostlist: nothing to do, and no reason to touch the API, Slurm or the state file
    (nor to load the HTTP stack and the API models): the config is read for the log file only."""
    load_config_for(args)
    log.info("%s: empty hostlist, nothing to do", args.command)
    if wants_json(args):
        emit_json({"names": 0, "ok": True})
    else:
        print(f"{args.command} 0 node(s): nothing to do")
    return 0


def _cmd_suspend(args: argparse.Namespace) -> int:
    from hpc_bridge.suspend import run_suspend

    return _shut_down_hook(args, run_suspend)


def _cmd_resume_fail(args: argparse.Namespace) -> int:
    from hpc_bridge.suspend import run_resume_fail

    return _shut_down_hook(args, run_resume_fail, "resume-fail")


def _shut_down_hook(args: argparse.Namespace, run, verb: str | None = None) -> int:
    if not args.hostlist:
        return _nothing_to_do(args)
    from hpc_bridge.hostlist import expand

    names = expand(args.hostlist)  # a malformed hostlist changes nothing
    if not names:
        return _nothing_to_do(args)
    ctx = HookContext(args)
    report = run(ctx.cfg, args.hostlist, client=ctx.client, slurm=ctx.slurm, store=ctx.store, nodemap=ctx.nodemap)
    return _hook_result(args, report, report.ok, verb)


def _cmd_follow(args: argparse.Namespace) -> int:
    from hpc_bridge.follower import detach_signals, follow
    from hpc_bridge.hostlist import compress
    from hpc_bridge.resume import run_resume

    detach_signals()
    ctx = HookContext(args)

    def resume_again(gone: list[str]):
        return run_resume(ctx.cfg, compress(gone), [], client=ctx.client, slurm=ctx.slurm, store=ctx.store,
                          nodemap=ctx.nodemap)

    report = follow(ctx.cfg, client=ctx.client, slurm=ctx.slurm, store=ctx.store, resume_fn=resume_again)
    log.info("follower done after %d round(s): %d addressed, %d failed, %d recreated, %d past their deadline%s",
             report.rounds, len(report.addressed), len(report.failed), len(report.recreated), len(report.unresolved),
             "; another follower holds the lease" if report.lost_lease else "")
    return 0 if not report.unresolved and not report.failed else 1


# --------------------------------------------------------------------------- operator commands


def _cmd_nodes(args: argparse.Namespace) -> int:
    from hpc_bridge.nodes_view import run_cli

    return run_cli(args)


def _cmd_usage(args: argparse.Namespace) -> int:
    from hpc_bridge.usage import run_cli

    return run_cli(args)


def _cmd_scale(args: argparse.Namespace) -> int:
    from hpc_bridge.scale import run_cli

    return run_cli(args)


def _cmd_clear_hold(args: argparse.Namespace) -> int:
    import time

    from hpc_bridge.nodeops import clear_hold
    from hpc_bridge.state import StateStore

    cfg = load_config_for(args)
    nodes = clear_hold(StateStore.from_config(cfg), args.vm_size, time.time())
    if wants_json(args):
        emit_json({"cleared": args.vm_size, "nodes": nodes})
        return 0
    from hpc_bridge.hostlist import compress_sorted

    print(f"{args.vm_size}: back in service; repair (its timer, or `hpc-bridge repair` now) puts "
          f"{compress_sorted(nodes) if nodes else 'no nodes'} back to idle~")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from hpc_bridge.hostlist import expand
    from hpc_bridge.logs import log_files, matching_lines

    wanted = set(expand(args.hostlist))
    cfg = load_config_for(args)
    rows = list(matching_lines(log_files(cfg.paths.log_dir), wanted))
    if wants_json(args):
        emit_json([{"command": c, "line": line} for c, line in rows])
        return 0
    for command, line in rows:
        print(f"{command}: {line}")
    return 0


def _cmd_example_config(args: argparse.Namespace) -> int:
    from hpc_bridge.install import EXAMPLE_CONFIG, shipped_file

    sys.stdout.write(shipped_file(EXAMPLE_CONFIG))
    return 0


def _cmd_install_hooks(args: argparse.Namespace) -> int:
    from hpc_bridge.install import run_cli

    return run_cli(args)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from hpc_bridge.doctor import run_cli

    return run_cli(args)


def _add_operator_commands(sub: argparse._SubParsersAction) -> None:
    p = _add_command(
        sub, "nodes", _cmd_nodes, "Slurm and cloud side by side, one line per node",
        description="One scontrol show node, one GET nodes and the state file: per node the Slurm state and "
                    "reason, cloud Status/TargetState, machine type, IP, placement group, age and any operation in "
                    "flight. Without a reachable slurmctld only the cloud columns are shown (with a warning).",
        example="hpc-bridge nodes 'hpc-[1-8]' --state down --state Failed",
    )
    p.add_argument("hostlist", nargs="?", help="Slurm hostlist of the nodes to show (default: all)")
    p.add_argument("--state", action="append", metavar="STATE",
                   help="only nodes in this Slurm state/flag (idle, down~, powered_down) or cloud Status/TargetState "
                        "(Ready, Failed); repeatable")
    p = _add_command(
        sub, "usage", _cmd_usage, "core-hours and cost per nodearray and VM size (table, CSV, SVG chart)",
        example="hpc-bridge usage --timeframe lastMonth --svg cost.svg   # open cost.svg in a browser",
    )
    p.add_argument("--timeframe", choices=["monthToDate", "lastMonth", "weekToDate", "custom"],
                   help="period (default monthToDate; --from/--to imply custom)")
    p.add_argument("--from", dest="from_", metavar="ISO", help="start (ISO-8601, UTC), rounded down to the hour/day")
    p.add_argument("--to", metavar="ISO", help="end (ISO-8601, UTC), rounded up to the hour/day")
    p.add_argument("--granularity", choices=["total", "daily", "hourly"], help="interval length (default daily)")
    p.add_argument("--csv", action="store_true", help="CSV on stdout: one row per interval, nodearray and VM size")
    p.add_argument("--svg", metavar="FILE", help="write a stacked bar chart of --metric over the intervals")
    p.add_argument("--metric", choices=["cost", "hours"], default="cost", help="what the chart stacks (default cost)")
    p = _add_command(
        sub, "scale", _cmd_scale, "grow a nodearray to a total number of nodes or cores (the scale endpoint)",
        description="Ask the cluster to hold at least N nodes (or cores) in NODEARRAY; it adds nodes with its own "
                    "names (they are not Slurm nodes unless named like them) and never removes any.",
        example="hpc-bridge scale htc --nodes 4 --wait",
    )
    p.add_argument("nodearray")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--nodes", type=int, metavar="N", help="total nodes wanted in the nodearray")
    target.add_argument("--cores", type=int, metavar="N", help="total cores wanted in the nodearray")
    p.add_argument("--wait", action="store_true", help="show progress until the new nodes are Ready or failed")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds --wait waits at most (default 1800)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between polls with --wait (default 5)")
    p = _add_command(
        sub, "logs", _cmd_logs, "the lines of hpc-bridge's logs that name these nodes (hostlists included)",
        description="Reads every command's log under [paths] log_dir (and rotated, uncompressed copies) and prints, "
                    "in time order, the lines naming any of the nodes, also where a line names them inside a "
                    "hostlist (htc-f2sv2-[1-40]).",
        example="hpc-bridge logs htc-f2sv2-7",
    )
    p.add_argument("hostlist", help="Slurm hostlist of the nodes")
    _add_command(
        sub, "example-config", _cmd_example_config, "print the sample config: every key with its default, commented",
        example="hpc-bridge example-config > /etc/hpc-bridge/config.toml",
    )
    p = _add_command(
        sub, "clear-hold", _cmd_clear_hold,
        "put a VM size held out of service (its VMs booted but slurmd never registered) back in service",
        description="After [resume] boot_failure_limit VMs of one size were Ready but their slurmd never registered "
                    "within ResumeTimeout, resume-fail holds that size out of service (its nodes DOWN with the "
                    "reason) until an admin has fixed the cause (image, network, munge key) and clears the hold. "
                    "Repair then puts its nodes back to idle~.",
        example="hpc-bridge clear-hold htc/Standard_F2s_v2",
    )
    p.add_argument("vm_size", metavar="NODEARRAY/VMSIZE", help="as in the hold's reason, e.g. htc/Standard_F2s_v2")
    p = _add_command(
        sub, "install-hooks", _cmd_install_hooks,
        "print or write the slurm.conf lines, hook wrappers and repair timer; --check an existing slurm.conf",
        description="Without options: print the include file for slurm.conf, the three hook wrappers (python "
                    "interpreter and config path fixed, since Slurm runs hooks with no PATH) and the systemd "
                    "service + timer for repair. --write writes them; --check lists what DIR/slurm.conf lacks.",
        example="hpc-bridge install-hooks --slurm-conf-dir /etc/slurm --write",
    )
    # Defaults are filled in by hpc_bridge.install (DEFAULT_HOOKS_DIR, DEFAULT_SYSTEMD_DIR): importing
    # it here cost every hook process its import.
    p.add_argument("--slurm-conf-dir", required=True, metavar="DIR", help="directory of slurm.conf")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the files (include file into DIR)")
    mode.add_argument("--check", action="store_true", help="exit 1 and list the fixes when DIR/slurm.conf lacks anything")
    p.add_argument("--hooks-dir", metavar="DIR", help="where the wrappers go (default /usr/local/libexec/hpc-bridge)")
    p.add_argument("--systemd-dir", metavar="DIR", help="where the units go (default /etc/systemd/system)")
    p.add_argument("--python", metavar="PATH", help="interpreter for the wrappers (default: this one)")
    p.add_argument("--pythonpath", metavar="PATH", help="PYTHONPATH for the wrappers (default: the source tree when "
                   "hpc_bridge is not installed in site-packages)")
    p.add_argument("--user", help="user for the repair service and the logrotate snippet (default: SlurmUser from "
                   "slurm.conf, else slurm)")
    p.add_argument("--logrotate-dir", metavar="DIR", help="also write the logrotate snippet for this config's paths "
                   "there (e.g. /etc/logrotate.d)")
    p = _add_command(
        sub, "doctor", _cmd_doctor, "check the installation end to end; one line per check, a fix for each failure",
        example="hpc-bridge doctor --config /etc/hpc-bridge/config.toml",
    )
    p.add_argument("--systemd-dir", metavar="DIR", help="where install-hooks wrote the repair timer (default: the "
                   "system's unit directories)")


# --------------------------------------------------------------------------- repair


def _cmd_repair(args: argparse.Namespace) -> int:
    from hpc_bridge.repair import format_plan, run_repair

    ctx = HookContext(args)
    with ctx.client:
        report = run_repair(ctx.cfg, client=ctx.client, slurm=ctx.slurm, store=ctx.store, nodemap=ctx.nodemap,
                            dry_run=args.dry_run, spawn_follower=ctx.spawn_follower)
    if wants_json(args):
        emit_json(report.to_json())
        return 0 if report.ok else 1
    if report.actions and not report.busy:
        print(format_plan(report.actions))
    if args.dry_run and report.waiting:
        import time

        print("waiting out the grace ([repair] grace):")
        for w in report.waiting:
            print(f"  {w.node}: {w.action} from {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(w.at))} "
                  f"if still so ({w.reason})")
    print(report.summary())
    for kind, err in sorted(report.errors.items()):
        print(f"  {kind}: {err}", file=sys.stderr)
    return 0 if report.ok else 1


def _add_repair_command(sub: argparse._SubParsersAction) -> None:
    p = _add_command(
        sub, "repair", _cmd_repair, "one-shot reconcile of Slurm, the cloud and the state file",
        description="Read Slurm's nodes, the cloud's nodes and status and the state file once, decide what "
                    "drifted (leaked VMs, failed nodes, stuck power-ups, down~ nodes with no VM, missing "
                    "addresses, unfinished operations, ended cool-offs) and fix it with batched calls. "
                    "A second copy exits 0 at once; run it by hand or from the systemd timer.",
        example="hpc-bridge repair --dry-run",
    )
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (node, Slurm state, cloud state, action, reason); change nothing")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpc-bridge",
        description="Slurm power saving for clusters managed through the CycleCloud cluster REST API.",
        epilog=EXIT_CODES,
        parents=[_common_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hpc-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_command(
        sub, "status", _cmd_status, "show the cluster's nodearrays and buckets (VM sizes, counts, limits)",
        example="hpc-bridge status --json",
    )
    p = _add_command(
        sub, "operations", _cmd_operations, "list operations, or show one operation's nodes",
        example="hpc-bridge operations 3f0c...  # progress of one operation",
    )
    p.add_argument("id", nargs="?", help="operation id (omit to list all)")
    p = _add_command(
        sub, "sim", _cmd_sim, "run the cluster API simulator (HTTP, loopback) until SIGTERM/SIGINT",
        example="hpc-bridge sim --port 8080 --scenario my-cluster.toml",
    )
    p.add_argument("--scenario", metavar="FILE", help="scenario TOML (default: the shipped demo scenario)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: pick a free one)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p = _add_command(
        sub, "demo", _cmd_demo, "the whole loop on an in-process simulator; no Slurm, no config file",
        example="hpc-bridge demo",
    )
    p.add_argument("--scenario", metavar="FILE", help="scenario TOML (default: the shipped demo scenario)")

    p = _add_command(
        sub, "partitions", _cmd_partitions,
        "write partitions.conf, gres.conf, topology.conf and nodemap.json from the cluster's buckets",
        description="Read the cluster status once and write, through the templates, the Slurm node and partition "
        "config, gres.conf, topology.conf and the node map into [slurm] conf_dir (or --output-dir). "
        "Files are replaced atomically; the previous ones are kept as <name>.bak.",
        example="hpc-bridge partitions --diff   # then: hpc-bridge partitions --reconfigure",
    )
    p.add_argument("--output-dir", metavar="DIR", help="write here instead of [slurm] conf_dir")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--diff", action="store_true", help="show a unified diff against the files on disk; change nothing")
    mode.add_argument("--check", action="store_true", help="exit 1 when the files on disk are out of date (for cron)")
    mode.add_argument("--reconfigure", action="store_true", help="run scontrol reconfigure after writing; when the "
                      "set of node names changes, write nothing and exit 1 (slurmctld needs a restart for that)")
    mode.add_argument("--restart", action="store_true", help="write, then restart slurmctld with [slurm] "
                      "restart_command and wait until it answers (for a change of the node names)")


    hook_epilog = ("Slurm runs this with one argument, a hostlist; point slurm.conf at the wrapper in "
                   "scripts/hooks/, which copes with the hook's empty environment.")
    p = _add_command(
        sub, "resume", _cmd_resume, "ResumeProgram: create or start the cloud nodes for a Slurm hostlist",
        description="Create (or start, if deallocated) the cloud nodes named by a Slurm hostlist, in one API "
                    "call each, and return at once. Nodes that cannot be created go DOWN with the reason. "
                    + hook_epilog,
        example="hpc-bridge resume 'hpc-[1-4],gpu-1'",
    )
    p.add_argument("hostlist", help="Slurm hostlist expression")
    p = _add_command(
        sub, "suspend", _cmd_suspend, "SuspendProgram: shut down / deallocate / terminate nodes",
        description="Apply each nodearray's suspend policy (shutdown = the node's ShutdownPolicy, deallocate, "
                    "terminate) to the cloud nodes named by a Slurm hostlist. " + hook_epilog,
        example="hpc-bridge suspend 'hpc-[1-4]'",
    )
    p.add_argument("hostlist", help="Slurm hostlist expression")
    p = _add_command(
        sub, "resume-fail", _cmd_resume_fail, "ResumeFailProgram: clean up nodes that never came up",
        description="Terminate the VMs of nodes that did not come up within ResumeTimeout and put the cloud's "
                    "reason in the Slurm reason (see sinfo -R). " + hook_epilog,
        example="hpc-bridge resume-fail 'hpc-3'",
    )
    p.add_argument("hostlist", help="Slurm hostlist expression")
    p = sub.add_parser("follow", parents=[_common_options()])  # internal: started by resume, detached
    p.set_defaults(func=_cmd_follow, command="follow")
    _add_operator_commands(sub)
    _add_repair_command(sub)

    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a process of its own (hooks, console script), not a call from a test
        global _OWN_PROCESS
        _OWN_PROCESS = True
        # httpcore imports trio whenever it is installed (~140 ms, most of a hook's start-up
        # over `import httpx, pydantic`); hpc-bridge only ever uses the sync client.
        sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
        # `import httpx` also imports its command-line client when click is installed (click,
        # rich, pygments: ~30 ms); hpc-bridge never runs it, and httpx falls back without it.
        sys.modules.setdefault("click", None)  # type: ignore[arg-type]
        # pydantic looks for plugins by scanning the metadata of every installed distribution
        # the first time it builds a validator (~10 ms here, more on a controller with many
        # packages); hpc-bridge uses none. An admin's own setting is kept.
        import os

        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from hpc_bridge.log import setup_logging

    setup_logging(args.command, None, getattr(args, "verbose", 0))
    try:
        return int(args.func(args) or 0)
    except BridgeError as err:
        log.error("%s", err)
        print(f"hpc-bridge {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"hpc-bridge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as err:  # the machine (a file, a directory, a full disk), not a bug: say which
        what = (err.strerror or str(err)) + (f": {err.filename}" if err.filename else "")
        log.error("%s", what)
        print(f"hpc-bridge {args.command}: error: {what}", file=sys.stderr)
        return 1
    except RecursionError:
        log.error("input nested too deeply")
        print(f"hpc-bridge {args.command}: error: an input file is nested too deeply to read", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: keep the traceback in the log, one line for the user
        log.exception("internal error in %s", args.command)
        print(
            f"hpc-bridge {args.command}: internal error: {type(err).__name__}: {' '.join(str(err).split())[:200]} "
            "(the log file has the details; please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
