"""The Slurm hooks (resume, suspend, resume-fail), the follower they start, and repair."""

from __future__ import annotations

import argparse
import logging
import sys

from hpc_bridge.cli.output import camel_keys, emit_json, open_config, wants_json
from hpc_bridge.log import escape_controls

log = logging.getLogger("hpc_bridge.cli")


def hook_context(args: argparse.Namespace, need_nodemap: bool = True):
    from hpc_bridge.context import HookContext

    return HookContext(open_config(args), args.command, need_nodemap)


def _hook_result(args: argparse.Namespace, report, ok: bool, verb: str | None = None) -> int:
    line = report.summary(verb) if verb else report.summary()
    log.info("%s", line)
    if wants_json(args):
        from dataclasses import asdict

        emit_json(camel_keys(asdict(report)) | {"ok": ok})
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


def cmd_resume(args: argparse.Namespace) -> int:
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

    ctx = hook_context(args)
    for record in early.buffer:  # now into the hook's log file
        logging.getLogger(record.name).handle(record)
    report = run_resume(ctx.cfg, args.hostlist, jobs, client=ctx.client, slurm=ctx.slurm, store=ctx.store,
                        nodemap=ctx.nodemap, spawn_follower=ctx.spawn_follower)
    return _hook_result(args, report, report.ok)


def _nothing_to_do(args: argparse.Namespace) -> int:
    """An empty hostlist: nothing to do, and no reason to touch the API, Slurm or the state file
    (nor to load the HTTP stack and the API models): the config is read for the log file only."""
    open_config(args)
    log.info("%s: empty hostlist, nothing to do", args.command)
    if wants_json(args):
        emit_json({"names": 0, "ok": True})
    else:
        print(f"{args.command} 0 node(s): nothing to do")
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    from hpc_bridge.suspend import run_suspend

    return _shut_down_hook(args, run_suspend)


def cmd_resume_fail(args: argparse.Namespace) -> int:
    from hpc_bridge.suspend import run_resume_fail

    return _shut_down_hook(args, run_resume_fail, "resume-fail")


def _shut_down_hook(args: argparse.Namespace, run, verb: str | None = None) -> int:
    if not args.hostlist:
        return _nothing_to_do(args)
    from hpc_bridge.hostlist import expand

    names = expand(args.hostlist)  # a malformed hostlist changes nothing
    if not names:
        return _nothing_to_do(args)
    ctx = hook_context(args)
    report = run(ctx.cfg, args.hostlist, client=ctx.client, slurm=ctx.slurm, store=ctx.store, nodemap=ctx.nodemap)
    return _hook_result(args, report, report.ok, verb)


def cmd_follow(args: argparse.Namespace) -> int:
    from hpc_bridge.follower import detach_signals, follow

    detach_signals()
    ctx = hook_context(args)
    report = follow(ctx.cfg, client=ctx.client, slurm=ctx.slurm, store=ctx.store, nodemap=ctx.nodemap)
    log.info("follower done after %d round(s): %d addressed, %d failed, %d recreated, %d past their deadline%s",
             report.rounds, len(report.addressed), len(report.failed), len(report.recreated), len(report.unresolved),
             "; another follower holds the lease" if report.lost_lease else "")
    return 0 if not report.unresolved and not report.failed else 1


def cmd_repair(args: argparse.Namespace) -> int:
    from hpc_bridge.repair import run_repair

    ctx = hook_context(args)
    with ctx.client:
        report = run_repair(ctx.cfg, client=ctx.client, slurm=ctx.slurm, store=ctx.store, nodemap=ctx.nodemap,
                            dry_run=args.dry_run, now=args.clock, spawn_follower=ctx.spawn_follower)
    if wants_json(args):
        emit_json(report.to_json())
        return 0 if report.ok else 1
    if report.actions and not report.busy:
        print(repair_table(report.actions))
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


def repair_table(actions) -> str:
    """Repair's plan for people: one line per node and action."""
    from hpc_bridge.table import format_table

    return format_table(["node", "slurm state", "cloud state", "action", "reason"], (a.row() for a in actions))
