"""Shared pytest fixtures.

Slurm part (slurm helper): ``slurm_cluster_factory`` builds real clusters on loopback
(tests/slurmcluster.py). Without root or the Debian Slurm packages the tests using it are
skipped with the reason; with env CI=true that is a failure instead (CI must run them).

Every cluster a test starts comes through one of SLURM_FIXTURES (``slurm_cluster_factory`` and
the module fixtures that build their own clusters ask for ``slurm_release`` or ``host_slurm``):
a test using one is marked ``slurm`` at collection, so ``-m "not slurm"`` starts no Slurm. A test
that starts a slurmctld without the mark fails (the mark is then missing from its fixture).
"""

from __future__ import annotations

import logging
import os
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import slurmcluster  # noqa: E402
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


@pytest.fixture(scope="module")
def host_slurm() -> SlurmRelease:
    """The host's Slurm, for module fixtures that build clusters of their own (another SlurmUser,
    their own factory): skips (fails with CI=true) when it cannot run."""
    _require_slurm()
    return SlurmRelease("host")


#: Fixtures through which every test that starts a slurmctld gets its Slurm.
SLURM_FIXTURES = frozenset({"slurm_release", "host_slurm"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLURM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slurm)
    if os.environ.get("HPC_BRIDGE_TEST_EVERY_PAIR") != "1":
        _pair_forms_with_releases(config, items)


def _pair_forms_with_releases(config, items) -> None:
    """A test run once per API form (bridge_env.all_forms) and once per Slurm release runs each
    form on one release, taking the releases in turn, instead of every form on every release:
    every form and every release still runs every such test (the form is the simulator's side,
    the release Slurm's; nothing of one depends on the other). HPC_BRIDGE_TEST_EVERY_PAIR=1 runs
    them all."""
    releases = [r.name for r in RELEASES]
    forms_of: dict[tuple, list[str]] = {}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "api_form" in params and "slurm_release" in params:
            forms = forms_of.setdefault((item.path, item.originalname), [])
            if params["api_form"] not in forms:
                forms.append(params["api_form"])
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        forms = forms_of.get((item.path, item.originalname))
        if forms and len(forms) > 1 and len(releases) > 1:
            form, release = forms.index(params["api_form"]), releases.index(params["slurm_release"].name)
            longer = max(len(forms), len(releases))
            # pair the i-th of the longer list with the (i mod n)-th of the shorter, starting at a
            # different release for each test (so no form always meets the same release)
            turn = zlib.crc32(item.originalname.encode()) % len(releases)
            if not any(i % len(forms) == form and (i + turn) % len(releases) == release for i in range(longer)):
                drop.append(item)
                continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _check_slurm_mark(item):
    """Wraps each phase of a test: a slurmctld started in it by a test not marked slurm fails it."""
    before = slurmcluster.SLURMCTLD_STARTS
    result = yield
    started = slurmcluster.SLURMCTLD_STARTS - before
    if started and item.get_closest_marker("slurm") is None:
        raise pytest.fail.Exception(
            f"{item.nodeid} started {started} slurmctld but is not marked slurm: get Slurm through one of "
            f"{sorted(SLURM_FIXTURES)} (conftest.py)", pytrace=False)
    return result


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_check_slurm_mark)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_check_slurm_mark)
pytest_runtest_teardown = pytest.hookimpl(wrapper=True)(_check_slurm_mark)


def pytest_report_header(config):
    return "Slurm releases: " + ", ".join(
        f"{r.name} ({r.version if r.unavailable() is None else 'unavailable'}, {r.where})" for r in RELEASES)


def pytest_terminal_summary(terminalreporter):
    if _ran:
        terminalreporter.write_line("real Slurm clusters ran: " + ", ".join(
            f"Slurm {version}: {count}" for version, count in sorted(_ran.items())))
    terminalreporter.write_line(f"slurmctld started: {slurmcluster.SLURMCTLD_STARTS}")


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
