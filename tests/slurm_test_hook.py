#!/usr/bin/env python3
"""Trivial Resume/Suspend program for the harness tests (not hpc-bridge): no cloud at all.

    slurm_test_hook.py resume|suspend|resume-fail RUN_DIR HOSTLIST

Run by slurmctld with only SLURM_CONF in the environment. resume: NodeAddr=127.0.0.1 for the
named nodes (one batched scontrol update, via hpc_bridge.slurm), then scripts/sim-boot-hook
start per node. suspend: sim-boot-hook stop per node, then addresses back to the names.
A resume records the SLURM_RESUME_FILE text it was given (hook-calls.log, "resume_file").
The harness renders a wrapper that fixes interpreter, run dir and argv (see SlurmCluster users
in tests/test_slurm.py). Appends one line per call to RUN_DIR/hook-calls.log.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpc_bridge.slurm import Slurm  # noqa: E402


def main():
    action, run_dir, hostlist = sys.argv[1], sys.argv[2], sys.argv[3]
    conf = os.environ["SLURM_CONF"]
    record = {"action": action, "hosts": hostlist, "t": time.time(), "env": sorted(os.environ)}
    if os.environ.get("SLURM_RESUME_FILE"):
        # what this Slurm release writes there (its format changed in 23.02); read at once
        with open(os.environ["SLURM_RESUME_FILE"]) as f:
            record["resume_file"] = f.read()
    with open(os.path.join(run_dir, "hook-calls.log"), "a") as f:
        f.write(json.dumps(record) + "\n")
    names = subprocess.run(
        ["/usr/bin/scontrol", "show", "hostnames", hostlist], capture_output=True, text=True, check=True
    ).stdout.split()
    slurm = Slurm(slurm_conf=conf)
    hook = [sys.executable, str(REPO / "scripts" / "sim-boot-hook")]
    if action == "resume":
        slurm.set_addresses({n: ("127.0.0.1", "localhost") for n in names})
        for n in names:
            subprocess.run([*hook, "start", "--node", n, "--conf", conf, "--run-dir", run_dir], check=True)
    elif action in ("suspend", "resume-fail"):
        for n in names:
            subprocess.run([*hook, "stop", "--node", n, "--run-dir", run_dir], check=True)
        slurm.reset_addresses(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
