#!/usr/bin/env python3
"""Benchmark hpc_bridge.hostlist against python-hostlist and Slurm's scontrol.

Run by hand:  python scripts/bench_hostlist.py [--repeat N]
Needs the benchmark-only dependency (pip install python-hostlist, or the project's `bench`
extra) and /usr/bin/scontrol for the scontrol column. Prints medians of repeated runs side by
side and exits non-zero when a target is missed:

  * expand + compress of 1,000,000 names across many prefixes: at least 3x faster than
    python-hostlist (expand_hostlist + collect_hostlist);
  * one large expression (1,048,576 hosts): expand within 2x of `scontrol show hostnames`
    (scontrol's time includes starting the process and printing; ours is the in-process call).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpc_bridge import hostlist as ours  # noqa: E402

SCONTROL = "/usr/bin/scontrol"


def median_time(fn, repeat: int) -> tuple[float, object]:
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def many_prefix_names() -> list[str]:
    """1,000,000 names: 1,000 prefixes (racks) x 1,000 nodes, mixed zero padding, some gaps,
    in natural order (what Slurm hands to a hook)."""
    names = []
    for rack in range(1000):
        if rack % 2:
            prefix, fmt = f"r{rack}-gpu", "{:04d}"
        else:
            prefix, fmt = f"r{rack}-cpu", "{}"
        # 1,000 nodes per prefix, a gap every 250 to force several ranges per bracket
        nums = [i + (i // 250) for i in range(1, 1001)]
        names.extend(prefix + fmt.format(n) for n in nums)
    return names


def run_scontrol(cmd: str, arg: str, conf: str) -> list[str]:
    env = dict(os.environ, SLURM_CONF=conf)
    proc = subprocess.run([SCONTROL, "show", cmd, arg], capture_output=True, text=True, env=env,
                          check=True)
    return proc.stdout.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    args = parser.parse_args()
    repeat = args.repeat
    failures = []
    rows = []

    try:
        import hostlist as pyhl  # python-hostlist
    except ImportError:
        pyhl = None
        failures.append("python-hostlist is not installed (pip install python-hostlist)")

    # --- 1M names across many prefixes -------------------------------------------------------
    names = many_prefix_names()
    expr = ours.compress(names)
    t_exp, got = median_time(lambda: ours.expand(expr), repeat)
    assert got == names, "expand(compress(names)) != names"
    t_cmp, _ = median_time(lambda: ours.compress(names), repeat)
    t_cmps, got_s = median_time(lambda: ours.compress_sorted(names), repeat)
    assert got_s == expr, "names are in natural order: sorted and plain compress agree"
    row = {"case": f"1M names, 1000 prefixes ({len(expr)} chars)",
           "ours_expand": t_exp, "ours_compress": t_cmp, "ours_compress_sorted": t_cmps}
    if pyhl is not None:
        p_exp, p_got = median_time(lambda: pyhl.expand_hostlist(expr), max(1, repeat // 2))
        if p_got != names:
            print("note: python-hostlist expands differently from Slurm here", file=sys.stderr)
        p_cmp, _ = median_time(lambda: pyhl.collect_hostlist(names), max(1, repeat // 2))
        row.update(py_expand=p_exp, py_compress=p_cmp)
        speedup = (p_exp + p_cmp) / (t_exp + t_cmp)
        speedup_sorted = (p_exp + p_cmp) / (t_exp + t_cmps)
        row.update(speedup=speedup, speedup_sorted=speedup_sorted)
        if speedup < 3.0:
            failures.append(f"expand+compress only {speedup:.2f}x faster than python-hostlist")
        if speedup_sorted < 3.0:
            failures.append(
                f"expand+compress_sorted only {speedup_sorted:.2f}x faster than python-hostlist")
    rows.append(row)

    # --- one large expression vs scontrol ----------------------------------------------------
    big = ",".join(f"big{k}-[000000-065535]" for k in range(16))  # 1,048,576 hosts
    t_big, got_big = median_time(lambda: ours.expand(big), repeat)
    srow = {"case": f"1 expression, {len(got_big):,} hosts", "ours_expand": t_big}
    if os.access(SCONTROL, os.X_OK):
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, "slurm.conf")
            Path(conf).write_text("ClusterName=bench\nSlurmctldHost=localhost\n")
            s_big, s_got = median_time(lambda: run_scontrol("hostnames", big, conf), repeat)
            assert s_got == got_big, "scontrol and expand disagree"
            # compress of as many names as scontrol's argument can take (< 128 KiB)
            small = names[:12000]
            small_arg = ",".join(small)
            s_cmp, s_out = median_time(lambda: run_scontrol("hostlist", small_arg, conf), repeat)
            t_small, o_out = median_time(lambda: ours.compress(small), repeat)
            assert s_out == [o_out], "scontrol and compress disagree"
        srow.update(scontrol_expand=s_big, ratio=t_big / s_big)
        if t_big > 2.0 * s_big:
            failures.append(f"single large expression: {t_big / s_big:.2f}x scontrol's time")
        rows.append(srow)
        rows.append({"case": f"compress {len(small):,} names ({len(small_arg)} chars arg)",
                     "ours_compress": t_small, "scontrol_compress": s_cmp})
    else:
        failures.append(f"{SCONTROL} not found: scontrol comparison skipped")
        rows.append(srow)

    # --- print --------------------------------------------------------------------------------
    def ms(v):
        return f"{v * 1000:9.1f} ms" if isinstance(v, float) else f"{'-':>12}"

    print(f"median of {repeat} runs (python-hostlist: {max(1, repeat // 2)} runs)")
    print(f"{'case':44} {'metric':22} {'ours':>12} {'python-hostlist':>16} {'scontrol':>12}")
    r = rows[0]
    print(f"{r['case']:44} {'expand':22} {ms(r['ours_expand'])} {ms(r.get('py_expand')):>16} "
          f"{ms(None)}")
    print(f"{'':44} {'compress':22} {ms(r['ours_compress'])} {ms(r.get('py_compress')):>16} "
          f"{ms(None)}")
    print(f"{'':44} {'compress_sorted':22} {ms(r['ours_compress_sorted'])} {ms(None):>16} "
          f"{ms(None)}")
    if "speedup" in r:
        print(f"{'':44} {'speed-up expand+compress':22} {r['speedup']:11.1f}x   (target >= 3x)")
        print(f"{'':44} {'  ... with _sorted':22} {r['speedup_sorted']:11.1f}x   (target >= 3x)")
    r = rows[1]
    print(f"{r['case']:44} {'expand':22} {ms(r['ours_expand'])} {ms(None):>16} "
          f"{ms(r.get('scontrol_expand'))}")
    if "ratio" in r:
        print(f"{'':44} {'ours / scontrol':22} {r['ratio']:11.2f}x   (target <= 2x)")
    if len(rows) > 2:
        r = rows[2]
        print(f"{r['case']:44} {'compress':22} {ms(r['ours_compress'])} {ms(None):>16} "
              f"{ms(r['scontrol_compress'])}")
    for failure in failures:
        print(f"TARGET MISSED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
