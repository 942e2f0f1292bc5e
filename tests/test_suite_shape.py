"""What conftest.py promises about the suite itself, checked on a real collection (a pytest
subprocess that only collects): with two Slurm releases, a test run per API form and per release
still runs every form and on every release. (That a test starting a slurmctld is marked slurm
is checked as each test runs: see conftest.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict

from bridge_env import FORMS, REPO

TWO_RELEASES = {"HPC_BRIDGE_SLURM_RELEASES": "22.05=/ 24.11=/nonexistent-root"}  # collecting needs neither


def collect(*args: str, env: dict[str, str] | None = None) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "HPC_BRIDGE_TEST_EVERY_PAIR": "", **(env or {})})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_every_form_and_every_release_still_runs_each_test():
    ids = collect("tests/test_hooks.py", "tests/test_e2e.py", "tests/test_repair_slurm.py", env=TWO_RELEASES)
    forms, releases, pairs = defaultdict(set), defaultdict(set), defaultdict(set)
    for nodeid in ids:
        m = re.match(r"(.+)\[(.+)\]$", nodeid)
        if not m:
            continue
        parts = m.group(2).split("-")
        release = next((p for p in parts if p.startswith("slurm")), None)
        form = next((p for p in parts if p in FORMS), None)
        if release and form:
            forms[m.group(1)].add(form)
            releases[m.group(1)].add(release)
            pairs[m.group(1)].add((form, release))
    everything = collect("tests/test_hooks.py", "tests/test_e2e.py", "tests/test_repair_slurm.py",
                         env={**TWO_RELEASES, "HPC_BRIDGE_TEST_EVERY_PAIR": "1"})
    # the all-forms tests of the three files were read (an id format that stopped matching
    # would leave nothing to check)
    assert len(pairs) >= 10 and any(t.startswith("tests/test_hooks.py::") for t in pairs), sorted(pairs)
    assert len(everything) > len(ids)  # some pairs were left out ...
    for test in pairs:
        every_form = {f for i in everything if i.startswith(test + "[") for f in FORMS if f"-{f}]" in i}
        assert forms[test] == every_form, test  # ... but no form
        assert releases[test] == {"slurm22.05", "slurm24.11"}, test  # ... and no release
        assert len(pairs[test]) == max(len(every_form), 2), test  # each pair at most once

