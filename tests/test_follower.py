"""The one follower of a state directory, as real processes: the resume hook, the simulator over
HTTP (its own request counts), a real slurmctld (no slurmd: addresses are what is checked)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from bridge_env import BridgeEnv, default_scenario
from hpc_bridge.lease import FOLLOWER_NICENESS

POLL = 0.5
FAST = f"[resume]\npoll_interval = {POLL}\npoll_max = 2.0\nfollower_lease = 10.0\n"


@pytest.fixture
def message_timeout() -> int:
    return 10


@pytest.fixture
def env(tmp_path, slurm_cluster_factory, message_timeout):
    # no slurmd boots here (addresses are what is checked): a simulated boot takes 1.2 s, not 3
    e = BridgeEnv.create(tmp_path, slurm_cluster_factory, scenario=default_scenario(timings={"time_scale": 0.02}),
                         config_extra=FAST, message_timeout=message_timeout)
    yield e
    lease = e.state().get("follower")
    if lease:  # never leave a follower behind (it would poll a stopped simulator)
        with_pid(lease["pid"], signal.SIGKILL)
    e.close()


def with_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def addresses(env, names):
    nodes = env.cluster.slurm().show_nodes()
    return {n: nodes[n].node_addr for n in names}


def all_addressed(env, names) -> bool:
    # read in-process from the simulator's model: a GET nodes here would count as the follower's
    with env.sim._lock:
        want = {r.name: r.ip for r in env.sim.model.nodes.values() if r.name in names and r.status == "Ready"}
    return len(want) == len(names) and addresses(env, names) == want


def follower_gone(env) -> bool:
    state = env.state()
    return state.get("follower") is None and not state.get("watch")


def log_lines(env, name: str, text: str) -> list[str]:
    path = env.log_dir / name
    return [line for line in path.read_text().splitlines() if text in line] if path.exists() else []


def f2(first, last):
    return [f"htc-f2sv2-{i}" for i in range(first, last + 1)]


def test_a_burst_of_resumes_has_one_follower_and_bounded_polling(env):
    env.sim.reset_stats()
    t0 = time.monotonic()
    hosts = [f"htc-{size}-[{i}-{i + 1}]" for size in ("f2sv2", "f4sv2") for i in range(1, 9, 2)]  # 8 x 2 nodes
    procs = [env.popen_hook("resume", h) for h in hosts]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    names = f2(1, 8) + [f"htc-f4sv2-{i}" for i in range(1, 9)]
    env.wait_for(lambda: all_addressed(env, names), timeout=90, what="all 16 nodes addressed")
    env.wait_for(lambda: follower_gone(env), timeout=60, what="the follower to finish and let go")
    elapsed = time.monotonic() - t0
    stats = env.sim.stats()["requests"]
    follower_gets = stats.get("nodes", 0)  # a resume hook reads nodes with its GET status, never GET nodes
    # one follower for the whole burst, and its polling bounded by the interval, not by hooks
    assert len(log_lines(env, "resume.log", "follower started")) == 1
    assert 1 <= follower_gets <= elapsed / POLL + 2, (follower_gets, elapsed)
    assert stats["nodes/create"] == len(hosts) and stats["status"] == len(hosts)


def test_a_killed_follower_is_replaced_by_the_next_resume_and_its_nodes_still_followed(env):
    assert env.hook("resume", "htc-f2sv2-[1-2]").rc == 0
    first = env.state()["follower"]["pid"]
    # background work: niced below the hooks and slurmctld
    assert os.getpriority(os.PRIO_PROCESS, first) - os.getpriority(os.PRIO_PROCESS, 0) == FOLLOWER_NICENESS
    with_pid(first, signal.SIGKILL)
    assert env.hook("resume", "htc-f2sv2-[3-4]").rc == 0
    second = env.state()["follower"]["pid"]
    assert second != first
    # the first resume's nodes were on the list in the state file: the new follower has them
    env.wait_for(lambda: all_addressed(env, f2(1, 4)), timeout=60, what="all 4 nodes addressed")
    env.wait_for(lambda: follower_gone(env), timeout=60, what="the follower to let go")


def test_a_killed_follower_is_replaced_by_repair(env):
    assert env.hook("resume", "htc-f2sv2-[1-2]").rc == 0
    first = env.state()["follower"]["pid"]
    with_pid(first, signal.SIGKILL)
    from hpc_bridge.lease import pid_alive

    env.wait_for(lambda: not pid_alive(first), what="the follower dead")
    run = env.cli("repair")
    assert run.rc in (0, 1), run.stderr
    assert len(log_lines(env, "repair.log", "follower started")) == 1
    env.wait_for(lambda: all_addressed(env, f2(1, 2)), timeout=60, what="both nodes addressed")


def test_followers_racing_for_the_lease_end_with_one(env):
    assert env.hook("resume", "htc-f2sv2-[1-2]").rc == 0
    first = env.state()["follower"]["pid"]
    os.kill(first, signal.SIGSTOP)  # alive, holding the lease: two more arrive and must leave
    try:
        extra = [subprocess.Popen(env.argv("--config", str(env.config_path), "follow"),
                                  env=env.cli_env()) for _ in range(2)]
        assert [p.wait(timeout=60) for p in extra] == [0, 0]
        assert len(log_lines(env, "follow.log", "holds the lease; exiting")) == 2
    finally:
        os.kill(first, signal.SIGCONT)
    with_pid(first, signal.SIGKILL)
    # nobody holds it now: of two started at once, one takes over and the other leaves
    racing = [subprocess.Popen(env.argv("--config", str(env.config_path), "follow"),
                               env=env.cli_env()) for _ in range(2)]
    for p in racing:
        p.wait(timeout=90)
    assert len(log_lines(env, "follow.log", "taking over from pid")) == 1
    assert len(log_lines(env, "follow.log", "holds the lease; exiting")) == 3
    assert all_addressed(env, f2(1, 2)) and follower_gone(env)


def test_a_follower_that_cannot_start_says_so_in_the_hooks_log(env, tmp_path, monkeypatch):
    from hpc_bridge.context import HookContext, open_config

    monkeypatch.setenv("PYTHONPATH", env.cli_env()["PYTHONPATH"])  # the follower inherits it: this code

    ctx = HookContext(open_config("resume", str(env.config_path))[0], "resume")
    ctx.config_path = str(tmp_path / "gone.toml")  # e.g. the file was moved after the hook read it
    ctx.spawn_follower(time.time())
    env.wait_for(lambda: log_lines(env, "resume.log", "follow: error: config file"), what="the follower's error")


@pytest.mark.parametrize("message_timeout", [4], ids=["MessageTimeout=4"])  # Slurm's 10 s, the usual here, waited out for nothing
def test_a_follower_whose_scontrol_fails_tries_again_next_round(env):
    """A slurmctld too busy to answer within MessageTimeout (here: stopped) fails the follower's
    scontrol update; the follower tries again next round instead of ending with the nodes
    unaddressed (under load that left a node's name to DNS when its job launched)."""
    slurmctld = int((env.cluster.run_dir / "slurmctld.pid").read_text().split()[0])
    os.kill(slurmctld, signal.SIGSTOP)
    try:
        assert env.hook("resume", "htc-f2sv2-[1-2]").rc == 0  # a create: no scontrol call
        follower = env.state()["follower"]["pid"]
        env.wait_for(lambda: log_lines(env, "follow.log", "trying again"), timeout=90,
                     what="the follower's scontrol update failing")
    finally:
        os.kill(slurmctld, signal.SIGCONT)
    env.wait_for(lambda: all_addressed(env, f2(1, 2)), timeout=60, what="both nodes addressed")
    env.wait_for(lambda: follower_gone(env), timeout=60, what="the follower to let go")
    assert len(log_lines(env, "resume.log", "follower started")) == 1
    assert log_lines(env, "follow.log", f"{follower} INFO hpc_bridge.cli: follower done")
