"""Shared pytest fixtures.

Slurm part (slurm helper): ``slurm_cluster_factory`` builds real clusters on loopback
(tests/slurmcluster.py). Without root or the Debian Slurm packages the tests using it are
skipped with the reason; with env CI=true that is a failure instead (CI must run them).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurmcluster import SlurmCluster, SlurmRelease, releases_from_env  # noqa: E402

RELEASES = releases_from_env()
_ran: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _restore_hpc_bridge_logger():
    """A test that runs setup_logging in this process (as a hook does) leaves the hpc_bridge
    logger not propagating, with its own handlers: later tests' caplog would see nothing."""
    logger = logging.getLogger("hpc_bridge")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        if handler not in saved[0]:
            logger.removeHandler(handler)
            handler.close()
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def api_form() -> str:
    """The simulator form a BridgeEnv serves (tests/bridge_env.py FORMS). "default" unless a
    test or module is marked with bridge_env.all_forms (then once per form)."""
    return "default"


def _require_slurm(release: SlurmRelease | None = None) -> None:
    """Skip (fail with CI=true) unless clusters of ``release`` (default: the host's) can run."""
    why = (release or SlurmRelease("host")).unavailable()
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the real-Slurm tests cannot run: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module", params=RELEASES, ids=[f"slurm{r.name}" for r in RELEASES])
def slurm_release(request) -> SlurmRelease:
    """Each real-Slurm test runs once per release scripts/test set up (the host's by default)."""
    _require_slurm(request.param)
    return request.param


def pytest_report_header(config):
    return "Slurm releases: " + ", ".join(
        f"{r.name} ({r.version if r.unavailable() is None else 'unavailable'}, {r.where})" for r in RELEASES)


def pytest_terminal_summary(terminalreporter):
    if _ran:
        terminalreporter.write_line("real Slurm clusters ran: " + ", ".join(
            f"Slurm {version}: {count}" for version, count in sorted(_ran.items())))


@pytest.fixture
def slurm_cluster_factory(tmp_path_factory, slurm_release):
    """Call it like SlurmCluster(...) minus the workdir; returns a *started* cluster, stopped at
    teardown (all of them, by PID). Pass ``start=False`` to get it unstarted (to add programs
    with ``make_program`` first, then call ``.start()``), ``cluster_class=SiteCluster`` for a
    site's own config that hpc-bridge joins through its include file. Runs with ``slurm_release``."""
    clusters: list[SlurmCluster] = []

    def make(*args, start: bool = True, cluster_class: type[SlurmCluster] = SlurmCluster, **kwargs) -> SlurmCluster:
        workdir = tmp_path_factory.mktemp("slurm")
        kwargs.setdefault("release", slurm_release)
        c = cluster_class(workdir, *args, **kwargs)
        _ran[slurm_release.version] = _ran.get(slurm_release.version, 0) + 1
        clusters.append(c)
        if start:
            c.start()
        return c

    yield make
    errors = []
    for c in reversed(clusters):
        try:
            c.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]
