"""Commands that set a site up and check it: partitions, install-hooks, doctor, example-config;
and the simulator and the demo."""

from __future__ import annotations

import argparse
import sys

from hpc_bridge.cli.output import emit_json, open_config, wants_json


def cmd_partitions(args: argparse.Namespace) -> int:
    from hpc_bridge.context import client_for
    from hpc_bridge.partitions import run_partitions

    cfg = open_config(args)
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


def cmd_install_hooks(args: argparse.Namespace) -> int:
    from hpc_bridge.install import check_install, install, prepare_install, problem_json, problems_lines

    cfg = open_config(args)
    if args.check:
        path, problems = check_install(cfg, args.slurm_conf_dir, args.hooks_dir)
        if wants_json(args):
            emit_json({"slurmConf": path, "ok": not problems, "missing": [problem_json(p) for p in problems]})
            return 1 if problems else 0
        for line in problems_lines(problems):
            print(line)
        print(f"{path}: " + (f"{len(problems)} problem(s)" if problems else "everything hpc-bridge needs is set"))
        return 1 if problems else 0
    inst = prepare_install(cfg, slurm_conf_dir=args.slurm_conf_dir, hooks_dir=args.hooks_dir,
                           systemd_dir=args.systemd_dir, python=args.python, pythonpath=args.pythonpath,
                           user=args.user, logrotate_dir=args.logrotate_dir)
    if args.write:
        install(cfg, inst)
        if wants_json(args):
            emit_json({"written": inst.written, "next": inst.next_steps,
                       "problems": [problem_json(p) for p in inst.problems]})
            return 0
        for path in inst.written:
            print(f"wrote {path}")
        for line in problems_lines(inst.problems):
            print(line)
        print("next steps:")
        for line in inst.next_steps:
            print(f"  {line}")
        return 0
    if wants_json(args):
        emit_json({"files": {p: t for p, (t, _) in inst.plan.files.items()}, "next": inst.next_steps})
        return 0
    for path, (text, mode) in inst.plan.files.items():
        print(f"----- {path} (mode {mode:o})")
        print(text.rstrip("\n"))
    print("----- (nothing written; --write writes the files above)")
    for line in inst.next_steps:
        print(line)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit 1 when any check fails."""
    from hpc_bridge.doctor import FAIL, failed, run_doctor

    checks = run_doctor(getattr(args, "config", None), getattr(args, "systemd_dir", None), args.command,
                        getattr(args, "verbose", 0))
    bad = failed(checks)
    if wants_json(args):
        emit_json({"ok": not bad, "checks": [c.to_json() for c in checks]})
    else:
        for c in checks:
            print(c.line())
        n = sum(c.result == FAIL for c in checks)
        print(f"{n} check(s) failed" if bad else "all checks passed")
    return 1 if bad else 0


def cmd_example_config(args: argparse.Namespace) -> int:
    from hpc_bridge.install import EXAMPLE_CONFIG, shipped_file

    sys.stdout.write(shipped_file(EXAMPLE_CONFIG))
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from hpc_bridge.sim.server import serve

    code = serve(args.scenario, args.host, args.port, allow_remote=args.allow_remote,
                 quiet=not getattr(args, "verbose", 0), on_ready=lambda url: print(f"listening on {url}", flush=True))
    sys.stdout.flush()
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from hpc_bridge.demo import run_demo

    return run_demo(sys.stdout, scenario=args.scenario)
