"""The command line's grammar: every command, its options, help and example."""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

from hpc_bridge import __version__
from hpc_bridge.cli import admin, hooks, views

EXIT_CODES = """exit codes:
  0  success
  1  the command failed (API error, Slurm error, a check failed)
  2  usage or configuration error

configuration: --config PATH, else $HPC_BRIDGE_CONFIG, else /etc/hpc-bridge/config.toml
logs: one file per command under [paths] log_dir (default /var/log/hpc-bridge); -v also prints them
"""


def _common_options() -> argparse.ArgumentParser:
    """Options accepted both before and after the command name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="configuration file")
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log to stderr too (-vv: debug)"
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    return common


class _Undeclared:
    """Where the options of a command that is not being run go when only one command is
    declared (see build_parser): every call is accepted and does nothing."""

    def __getattr__(self, name: str) -> Callable[..., "_Undeclared"]:
        return self._accept

    def _accept(self, *args: object, **kwargs: object) -> "_Undeclared":
        return self


class _Subcommands:
    """The subcommands' registry: all of them, or only the one `only` names."""

    def __init__(self, sub: argparse._SubParsersAction, only: str | None):
        self._sub, self._only = sub, only

    def declares(self, name: str) -> bool:
        return self._only is None or name == self._only

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self._sub.add_parser(name, **kwargs)


# The options before a command name that build_parser can read past on its own: anything else
# there (help, an abbreviation, a mistake) gets the whole grammar and argparse's own answer.
_VALUE_OPTIONS = ("--config",)
_FLAG_OPTIONS = ("--verbose", "--json")


def _command_named(argv: Sequence[str], commands: Sequence[str]) -> str | None:
    """The command `argv` names when only the common options come before it, else None."""
    tokens = iter(argv)
    for token in tokens:
        if token in _VALUE_OPTIONS:
            next(tokens, None)
        elif token.startswith(tuple(f"{o}=" for o in _VALUE_OPTIONS)) or token in _FLAG_OPTIONS or \
                (len(token) > 1 and token.startswith("-") and not token.startswith("--") and set(token[1:]) == {"v"}):
            continue
        else:
            return token if token in commands else None
    return None


def _add_command(
    sub: _Subcommands,
    name: str,
    func: Callable[[argparse.Namespace], int],
    summary: str,
    description: str = "",
    example: str = "",
) -> argparse.ArgumentParser | _Undeclared:
    if not sub.declares(name):
        return _Undeclared()
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


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser. When `argv` plainly names a command (only the common options
    before it), only that command is declared: a Slurm hook is a process of its own per call,
    and declaring all of them cost it ~3 ms. The parse is the same; only help and "invalid
    choice" would list the commands, and those cases get the whole grammar."""
    only = None if argv is None else _command_named(argv, COMMANDS)
    parser = argparse.ArgumentParser(
        prog="hpc-bridge",
        description="Slurm power saving for clusters managed through the CycleCloud cluster REST API.",
        epilog=EXIT_CODES,
        parents=[_common_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hpc-bridge {__version__}")
    sub = _Subcommands(parser.add_subparsers(dest="command", metavar="COMMAND"), only)

    _add_command(
        sub, "status", views.cmd_status, "show the cluster's nodearrays and buckets (VM sizes, counts, limits)",
        example="hpc-bridge status --json",
    )
    p = _add_command(
        sub, "operations", views.cmd_operations, "list operations, or show one operation's nodes",
        example="hpc-bridge operations 3f0c...  # progress of one operation",
    )
    p.add_argument("id", nargs="?", help="operation id (omit to list all)")
    p = _add_command(
        sub, "sim", admin.cmd_sim, "run the cluster API simulator (HTTP, loopback) until SIGTERM/SIGINT",
        example="hpc-bridge sim --port 8080 --scenario my-cluster.toml",
    )
    p.add_argument("--scenario", metavar="FILE", help="scenario TOML (default: the shipped demo scenario)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: pick a free one)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p = _add_command(
        sub, "demo", admin.cmd_demo, "the whole loop on an in-process simulator; no Slurm, no config file",
        example="hpc-bridge demo",
    )
    p.add_argument("--scenario", metavar="FILE", help="scenario TOML (default: the shipped demo scenario)")

    p = _add_command(
        sub, "partitions", admin.cmd_partitions,
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
    for name, func, summary, description, example in (
        ("resume", hooks.cmd_resume, "ResumeProgram: create or start the cloud nodes for a Slurm hostlist",
         "Create (or start, if deallocated) the cloud nodes named by a Slurm hostlist, in one API call each, and "
         "return at once. Nodes that cannot be created go DOWN with the reason. ",
         "hpc-bridge resume 'hpc-[1-4],gpu-1'"),
        ("suspend", hooks.cmd_suspend, "SuspendProgram: shut down / deallocate / terminate nodes",
         "Apply each nodearray's suspend policy (shutdown = the node's ShutdownPolicy, deallocate, terminate) to "
         "the cloud nodes named by a Slurm hostlist. ",
         "hpc-bridge suspend 'hpc-[1-4]'"),
        ("resume-fail", hooks.cmd_resume_fail, "ResumeFailProgram: clean up nodes that never came up",
         "Terminate the VMs of nodes that did not come up within ResumeTimeout and put the cloud's reason in the "
         "Slurm reason (see sinfo -R). ",
         "hpc-bridge resume-fail 'hpc-3'"),
    ):
        p = _add_command(sub, name, func, summary, description=description + hook_epilog, example=example)
        p.add_argument("hostlist", help="Slurm hostlist expression")
        p.set_defaults(short_lived=True)
    if sub.declares("follow"):  # internal: started by resume, detached
        p = sub.add_parser("follow", parents=[_common_options()])
        p.set_defaults(func=hooks.cmd_follow, command="follow")
    _add_operator_commands(sub)
    _add_repair_command(sub)

    return parser


def _add_operator_commands(sub: _Subcommands) -> None:
    p = _add_command(
        sub, "nodes", views.cmd_nodes, "Slurm and cloud side by side, one line per node",
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
        sub, "usage", views.cmd_usage, "core-hours and cost per nodearray and VM size (table, CSV, SVG chart)",
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
        sub, "scale", views.cmd_scale, "grow a nodearray to a total number of nodes or cores (the scale endpoint)",
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
        sub, "logs", views.cmd_logs, "the lines of hpc-bridge's logs that name these nodes (hostlists included)",
        description="Reads every command's log under [paths] log_dir (and rotated, uncompressed copies) and prints, "
                    "in time order, the lines naming any of the nodes, also where a line names them inside a "
                    "hostlist (htc-f2sv2-[1-40]).",
        example="hpc-bridge logs htc-f2sv2-7",
    )
    p.add_argument("hostlist", help="Slurm hostlist of the nodes")
    _add_command(
        sub, "example-config", admin.cmd_example_config, "print the sample config: every key with its default, commented",
        example="hpc-bridge example-config > /etc/hpc-bridge/config.toml",
    )
    p = _add_command(
        sub, "clear-hold", views.cmd_clear_hold,
        "put a VM size held out of service (its VMs booted but slurmd never registered) back in service",
        description="After [resume] boot_failure_limit VMs of one size were Ready but their slurmd never registered "
                    "within ResumeTimeout, resume-fail holds that size out of service (its nodes DOWN with the "
                    "reason) until an admin has fixed the cause (image, network, munge key) and clears the hold. "
                    "Repair then puts its nodes back to idle~.",
        example="hpc-bridge clear-hold htc/Standard_F2s_v2",
    )
    p.add_argument("vm_size", metavar="NODEARRAY/VMSIZE", help="as in the hold's reason, e.g. htc/Standard_F2s_v2")
    p = _add_command(
        sub, "install-hooks", admin.cmd_install_hooks,
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
        sub, "doctor", admin.cmd_doctor, "check the installation end to end; one line per check, a fix for each failure",
        example="hpc-bridge doctor --config /etc/hpc-bridge/config.toml",
    )
    p.add_argument("--systemd-dir", metavar="DIR", help="where install-hooks wrote the repair timer (default: the "
                   "system's unit directories)")


def _add_repair_command(sub: _Subcommands) -> None:
    p = _add_command(
        sub, "repair", hooks.cmd_repair, "one-shot reconcile of Slurm, the cloud and the state file",
        description="Read Slurm's nodes, the cloud's nodes and status and the state file once, decide what "
                    "drifted (leaked VMs, failed nodes, stuck power-ups, down~ nodes with no VM, missing "
                    "addresses, unfinished operations, ended cool-offs) and fix it with batched calls. "
                    "A second copy exits 0 at once; run it by hand or from the systemd timer.",
        example="hpc-bridge repair --dry-run",
    )
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (node, Slurm state, cloud state, action, reason); change nothing")


# Every command build_parser declares, in the order help lists them.
COMMANDS = ("status", "operations", "sim", "demo", "partitions", "resume", "suspend", "resume-fail", "follow",
            "nodes", "usage", "scale", "logs", "example-config", "clear-hold", "install-hooks", "doctor", "repair")
