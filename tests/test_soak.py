"""The reliability soak, short: 60 hook processes (resume / suspend / resume-fail on overlapping
hostlists, 4 at a time, some SIGKILLed) against the simulator with ~20 % injected request faults,
boot and capacity failures, and a real slurmctld; then repair. Every invariant must hold.
The long run is `python scripts/soak.py` (figures in the README's Reliability section)."""

from __future__ import annotations

import importlib.util
import os
import sys

from bridge_env import REPO


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", REPO / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


def test_short_soak_keeps_every_invariant(tmp_path, slurm_cluster_factory, capsys):
    soak = load_soak()
    seed = os.environ.get("HPC_BRIDGE_SOAK_SEED", "5")  # another seed: the same test, other timings
    # --minutes only bounds a machine so slow that 60 cycles do not fit: the test asks for 40
    args = soak.parse_args(["--cycles", "60", "--seed", seed, "--nodes", "80", "--concurrency", "4",
                            "--kill-rate", "0.2", "--minutes", "15"])
    run = soak.Soak(args, tmp_path, slurm_factory=slurm_cluster_factory)
    try:
        run.setup()
        run.run_cycles()
        run.quiesce_and_repair()
        run.check()
        rc = run.report()
    finally:
        run.close()
    out = capsys.readouterr()
    print(out.out, out.err)
    f = run.figures
    assert rc == 0, out.err[-4000:]
    assert f["cycles"] >= 40
    assert f["request_fault_fraction"] >= 0.1 and f["kills"] >= 1
    assert f["duplicate_creates"] == 0
    assert f["orphan_vms_after_repair"] == 0
    assert f["powering_up_past_deadline"] == 0
    assert f["state_file_unreadable"] == 0
    assert f["operations_lost"] == 0
    assert not run.failures
