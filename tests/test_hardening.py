"""Hardening against the admin's root shell, hostile servers and half-failed hooks, with real
processes: slurmctld runs as a second user (SlurmUser=nobody) and runs the hooks as that user,
as on a production controller; root runs the admin commands by hand; a server of the test's
own trickles its answers on loopback."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bridge_env import REPO, BridgeEnv, default_scenario
from scripted_http import TricklingServer

SLURM_USER = "nobody"


def _blocking_ancestors(paths: list[str], uid: int) -> list[Path]:
    """Directories above `paths` that `uid` (no group in common) cannot traverse."""
    out = []
    for p in paths:
        for d in Path(os.path.realpath(p)).parents:
            st = d.stat()
            if st.st_uid != uid and not st.st_mode & 0o001 and d not in out:
                out.append(d)
    return out


@pytest.fixture(scope="module")
def slurm_user():
    """SlurmUser for these tests: `nobody`, which can run this Python and read this tree (the
    interpreter may live under root's home: its directories get o+x for the module, restored
    at the end)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a second user runs the hooks")
    user = pwd.getpwnam(SLURM_USER)
    opened = _blocking_ancestors([sys.executable, *sys.path[1:], str(REPO)], user.pw_uid)
    modes = {d: d.stat().st_mode for d in opened}
    for d in opened:
        d.chmod(stat.S_IMODE(modes[d]) | 0o001)
    yield user
    for d, mode in modes.items():
        d.chmod(stat.S_IMODE(mode))


@pytest.fixture(scope="module")
def env(slurm_user, host_slurm):
    from slurmcluster import SlurmCluster

    # Not under pytest's base temp dir: every pytest session that starts (another run on this
    # machine) makes /tmp/pytest-of-root 0700 again, and slurmctld, running as SlurmUser, would
    # lose its munge socket and state directory mid-test.
    base = Path(tempfile.mkdtemp(prefix="hb-harden-", dir="/tmp"))
    base.chmod(0o755)
    clusters = []

    def factory(start: bool = False, **kwargs):
        c = SlurmCluster(base / "slurm", slurm_user=SLURM_USER, release=host_slurm, **kwargs)
        clusters.append(c)
        return c

    root = base / "bridge"
    root.mkdir(mode=0o755)
    # state and log directories of SlurmUser, as README's install step makes them
    for d in (root / "state", root / "log"):
        d.mkdir(mode=0o700)
        os.chown(d, slurm_user.pw_uid, slurm_user.pw_gid)
    try:
        e = BridgeEnv.create(root, factory, scenario=default_scenario(), bridge_hooks=True,
                             config_extra="[resume]\nresume_timeout = 20\n",
                             # names Slurm knows and the node map does not (a stale map)
                             extra_conf="NodeName=stale-[1-300] CPUs=1 State=CLOUD")
        os.chown(root / "password", slurm_user.pw_uid, slurm_user.pw_gid)
        for p in [root / "log", *(root / "log").iterdir()]:  # `partitions` ran as root before this
            os.chown(p, slurm_user.pw_uid, slurm_user.pw_gid)
        yield e
        e.close()
    finally:
        for c in clusters:
            c.stop()
        shutil.rmtree(base, ignore_errors=True)


def as_slurm_user(env: BridgeEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpc_bridge", "--config", str(env.config_path), *args],
                          capture_output=True, text=True, timeout=timeout, env=env.cli_env(), user=SLURM_USER,
                          group=pwd.getpwnam(SLURM_USER).pw_gid, extra_groups=[], cwd="/")


def owners(*directories: Path) -> dict[str, int]:
    out = {}
    for top in directories:
        out[str(top)] = top.lstat().st_uid
        for p in top.rglob("*"):
            out[str(p)] = p.lstat().st_uid
    return out


def test_a_root_command_leaves_every_file_to_slurm_user_and_hooks_keep_working(env, slurm_user):
    name = "htc-f2sv2-1"
    # root runs what README has admins run by hand: repair (state file, repair lock, its log)
    run = env.cli("repair")
    assert run.rc == 0, run.stderr
    root_status = env.cli("resume", name)  # and a hook by hand: writes the state file, takes its lock
    assert root_status.rc == 0, root_status.stderr
    files = owners(env.state_dir, env.log_dir)
    assert {"state.json", "state.json.lock", "repair.lock"} <= {Path(p).name for p in files}
    assert {"repair.log", "resume.log"} <= {Path(p).name for p in files}
    not_theirs = {p: uid for p, uid in files.items() if uid != slurm_user.pw_uid}
    assert not not_theirs, not_theirs

    # SlurmUser's processes read, lock and write all of it: the repair timer's repair, a hook
    hook = as_slurm_user(env, "suspend", name)
    assert hook.returncode == 0, hook.stderr
    timer = as_slurm_user(env, "repair")
    assert timer.returncode == 0 and "another repair" not in timer.stderr, timer.stderr
    state = json.loads((env.state_dir / "state.json").read_text())
    assert [op["action"] for op in state["operations"] if name in op["nodes"]][-1] == "shutdown"

    # and slurmctld, running as SlurmUser, powers a node up through the hook
    other = "htc-f2sv2-2"
    env.cluster.scontrol("update", f"nodename={other}", "state=power_up")
    env.wait_for(lambda: other in env.cloud_nodes(), 30, "the create made by slurmctld's resume hook")
    node = env.cluster.nodes()[other]
    assert "DOWN" not in node.state and not node.reason, (node.state, node.reason)
    env.cluster.scontrol("update", f"nodename={other}", "state=power_down_force")


def test_doctor_names_files_slurm_user_does_not_own(env, slurm_user):
    # (a copy an admin made as root; not state.json itself: a follower still running from an
    # earlier test would move an unreadable state file aside meanwhile)
    copy = env.state_dir / "state.json.bak"
    copy.write_text("{}")
    stray = env.log_dir / "stray.log"
    stray.symlink_to("/etc/hostname")
    try:
        run = env.cli("doctor")
    finally:
        copy.unlink()
        stray.unlink()
    line = next(l for l in run.stdout.splitlines() if "] state and log files owned by SlurmUser" in l)
    assert line.startswith("[FAIL]"), run.stdout
    assert f"{copy} owned by uid 0, not by {SLURM_USER}" in line, line
    assert f"{stray} is a symbolic link" in line
    assert f"chown {SLURM_USER}: {copy}" in run.stdout
    assert "[  ok] state and log files owned by SlurmUser" in env.cli("doctor").stdout


def test_a_link_planted_in_the_log_directory_is_not_followed_by_a_root_command(env, tmp_path):
    victim = tmp_path / "authorized_keys"
    victim.write_text("ssh-ed25519 AAAA root@admin\n")
    victim.chmod(0o600)
    log_file = env.log_dir / "status.log"
    log_file.unlink(missing_ok=True)
    log_file.symlink_to(victim)
    try:
        run = env.cli("status")
    finally:
        log_file.unlink()
    assert victim.read_text() == "ssh-ed25519 AAAA root@admin\n"
    assert run.rc == 0, run.stderr
    assert f"warning: cannot write log file {log_file}" in run.stderr


def test_a_file_of_another_owner_in_the_log_directory_is_not_written(env, tmp_path):
    log_file = env.log_dir / "status.log"
    log_file.unlink(missing_ok=True)
    log_file.write_text("")
    os.chown(log_file, 1, 1)  # daemon's, say: not the log directory's owner
    try:
        run = env.cli("status")
        assert log_file.read_text() == ""
        assert "not by the directory's owner" in run.stderr
    finally:
        log_file.unlink()


def test_control_characters_in_a_logged_value_stay_on_one_escaped_line(env):
    """A newline in a state-file value (SlurmUser can write that file) must not start a line of
    its own in a root command's log."""
    evil = "x\nssh-ed25519 AAAA attacker\x1b[31m"
    state = {"version": 1, "operations": [{
        "request_id": evil, "action": "create", "nodes": ["htc-f2sv2-4"], "started": 1.0, "deadline": 2.0,
        "outcome": "pending"}]}
    (env.state_dir / "state.json").write_text(json.dumps(state))
    log_path = env.log_dir / "repair.log"
    before = log_path.read_bytes() if log_path.exists() else b""
    env.cli("repair")
    written = log_path.read_bytes()[len(before):].decode()
    assert written, "repair logged nothing"
    assert not any(line.startswith("ssh-ed25519") for line in written.splitlines())
    assert "\x1b" not in written
    assert "x\\nssh-ed25519 AAAA attacker\\x1b[31m" in written


def _config_with(env: BridgeEnv, tmp_path: Path, extra: str = "", url: str | None = None,
                 state_dir: Path | None = None, log_dir: Path | None = None) -> Path:
    """The module's config with another API url, state or log directory, and `extra` appended."""
    text = env.config_path.read_text()
    for key, old, new in (("url", env.sim.url, url), ("state_dir", env.state_dir, state_dir),
                          ("log_dir", env.log_dir, log_dir)):
        if new is not None:
            text = text.replace(f'{key} = "{old}"', f'{key} = "{new}"')
    cfg = tmp_path / "changed.toml"
    cfg.write_text(text + extra)
    return cfg


def _config_for(env: BridgeEnv, url: str, tmp_path: Path) -> Path:
    """A config for a server of the test's own: 0.5 s per request, 3 attempts, 3 s per call."""
    cfg = _config_with(env, tmp_path, url=url)
    cfg.write_text(cfg.read_text().replace("retries = 3\nretry_budget = 10.0\ntimeout = 5.0\n",
                                           "retries = 2\nretry_budget = 3.0\ntimeout = 0.5\n"))
    return cfg


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_hooks_and_repair_end_whatever_a_trickling_server_does(env, tmp_path, phase):
    with TricklingServer(phase=phase, interval=0.2) as srv:
        cfg = _config_for(env, srv.url, tmp_path)
        for args in (["status"], ["suspend", "htc-f2sv2-3"], ["resume", "htc-f2sv2-3"], ["repair"]):
            # subprocess's own timeout is the backstop: on a hang this raises TimeoutExpired
            run = env.cli("--config", str(cfg), *args, timeout=90)
            assert run.rc != 0 or args[0] == "resume", (args, run.stderr)
            assert "Traceback" not in run.stderr, run.stderr
            if args[0] != "resume":
                assert len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert srv.requests <= 4 * 3
    node = env.cluster.nodes()["htc-f2sv2-3"]
    assert node.state.startswith("DOWN") and "unreachable" in (node.reason or ""), (node.state, node.reason)
    env.cluster.scontrol("update", "nodename=htc-f2sv2-3", "state=resume")


# --------------------------------------------------------------------------- half-failed hooks


def test_control_characters_in_an_api_message_still_mark_the_nodes_down(env, tmp_path):
    """An error body with ESC, BEL and NUL: the nodes still go DOWN at once, the reason and the
    log hold the characters escaped."""
    from scripted_http import Reply, ScriptedServer
    import httpx

    name = "htc-f2sv2-6"
    auth = (env.sim.username, env.sim.password)
    base = f"{env.sim.url}/clusters/{env.sim.cluster_name}"
    nodes, status = httpx.get(f"{base}/nodes", auth=auth).json(), httpx.get(f"{base}/status", auth=auth).json()

    def api(seen):
        if seen.method == "GET":
            return Reply(200, nodes if seen.path.endswith("/nodes") else status)
        return Reply(400, "bad \x1b[31mred\x07 bell \x00 nul request")

    with ScriptedServer(api) as srv:
        run = env.cli("--config", str(_config_with(env, tmp_path, url=srv.url)), "resume", name)
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    node = env.cluster.nodes()[name]
    assert node.state.startswith("DOWN"), (node.state, node.reason)
    assert "\\x1b[31mred\\x07 bell \\x00 nul" in node.reason, node.reason
    log_text = (env.log_dir / "resume.log").read_text()
    assert "\\x1b[31mred" in log_text and not any(c in log_text for c in "\x1b\x07\x00")
    env.cluster.scontrol("update", f"nodename={name}", "state=resume")


def wait_for_address(env: BridgeEnv, name: str) -> str:
    """The NodeAddr the follower sets once the cloud node is Ready."""
    def addressed():
        addr = env.cluster.nodes()[name].node_addr
        return addr if addr not in (None, name) else None
    return env.wait_for(addressed, 60, f"the follower setting {name}'s address")


def _config_with_stale_map(env: BridgeEnv, tmp_path: Path, extra: str = "") -> Path:
    """A config whose node map has one name Slurm does not know (`gone-1`, of a VM size the
    cluster no longer offers): a map newer than slurm.conf."""
    conf = tmp_path / "conf"
    shutil.copytree(env.conf_dir, conf)
    nodemap = json.loads((conf / "nodemap.json").read_text())
    htc = next(g for g in nodemap["groups"] if g["prefix"] == "htc-f2sv2-")
    nodemap["groups"].append({**htc, "prefix": "gone-", "first": 1, "last": 1, "machine_type": "Standard_Gone"})
    (conf / "nodemap.json").write_text(json.dumps(nodemap))
    text = env.config_path.read_text().replace(f'conf_dir = "{env.conf_dir}"', f'conf_dir = "{conf}"')
    cfg = tmp_path / "stale.toml"
    cfg.write_text(text + extra)
    return cfg


def test_a_failed_down_marking_does_not_stop_the_rest_of_resume(env, tmp_path):
    """One reason group's scontrol call fails (its name is one Slurm does not know): the other
    group still goes DOWN, the created node still gets its address, the hook names the failure."""
    created, refused = "htc-f2sv2-5", "gpu-nc24adsa100v4-1"
    cfg = _config_with_stale_map(env, tmp_path)
    env.sim.set_faults(capacity_failure=["gpu/Standard_NC24ads_A100_v4"])
    try:
        run = env.cli("--config", str(cfg), "resume", f"{created},{refused},gone-1")
    finally:
        env.sim.set_faults(capacity_failure=[])
    node = env.cluster.nodes()[refused]
    assert node.state.startswith("DOWN") and "capacity" in (node.reason or ""), (node.state, node.reason)
    assert run.rc == 1 and "1 node(s) could not be marked DOWN" in run.stderr, run.stderr

    assert wait_for_address(env, created) == env.cloud_nodes()[created]["PrivateIp"]
    env.cli("suspend", created)
    env.cluster.scontrol("update", f"nodename={refused}", "state=resume")


def test_a_state_lock_timeout_after_the_create_still_marks_refused_nodes_down(env, tmp_path):
    """The create is sent; then the state file stays locked past lock_timeout: the node the
    API refused still goes DOWN at once (not at ResumeTimeout), the created one still comes up,
    and the hook says what it could not record."""
    from hpc_bridge import flock

    created, refused = "htc-f2sv2-7", "gpu-nc24adsa100v4-2"
    cfg = _config_with(env, tmp_path, "[state]\nlock_timeout = 1\n")
    env.sim.set_faults(endpoints={"nodes/create": {"latency": 3.0}}, capacity_failure=["gpu/Standard_NC24ads_A100_v4"])
    try:
        hook = subprocess.Popen([sys.executable, "-m", "hpc_bridge", "--config", str(cfg), "resume",
                                 f"{created},{refused}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env.cli_env())

        def recorded():
            return any(created in op["nodes"] and op["outcome"] == "pending"
                       for op in env.state().get("operations", []))
        env.wait_for(recorded, 30, "the create recorded")
        with flock.exclusive(str(env.state_dir / "state.json.lock"), 30):
            out, err = hook.communicate(timeout=60)
    finally:
        env.sim.set_faults(endpoints={"nodes/create": {"latency": 0.0}}, capacity_failure=[])
    assert hook.returncode == 1 and "locked by another" in err, err
    assert created in env.cloud_nodes()
    node = env.cluster.nodes()[refused]
    assert node.state.startswith("DOWN") and "capacity" in (node.reason or ""), (node.state, node.reason)

    wait_for_address(env, created)
    assert not env.cluster.nodes()[created].state.startswith("DOWN")
    env.cli("suspend", created)
    env.cluster.scontrol("update", f"nodename={refused}", "state=resume")


def test_unknown_names_cost_no_scontrol_call_and_no_state(env):
    before = len((env.state_dir / "state.json").read_bytes())
    run = env.cli("--json", "resume", "stale-[1-300]")
    assert json.loads(run.stdout)["scontrolCalls"] == 0
    # a mistyped range: 65,437 names neither Slurm nor the map knows
    run = env.cli("--json", "resume", "htc-f2sv2-[100-65536]")
    assert run.rc == 1 and "Traceback" not in run.stderr
    assert json.loads(run.stdout)["scontrolCalls"] == 0
    state = env.state()
    assert not any(n.startswith("stale-") or n == "htc-f2sv2-100" for n in state.get("down_reasons", {}))
    assert len((env.state_dir / "state.json").read_bytes()) < before + 4096


# --------------------------------------------------------------------------- the smaller ones


def _with_slurm_key(env: BridgeEnv, tmp_path: Path, line: str, **replace: str) -> Path:
    text = env.config_path.read_text().replace("[slurm]\n", f"[slurm]\n{line}\n", 1)
    for old, new in replace.items():
        text = text.replace(old, new)
    cfg = tmp_path / "slurmkey.toml"
    cfg.write_text(text)
    return cfg


def test_slurm_commands_do_not_inherit_the_password(env, tmp_path):
    """$HPC_BRIDGE_PASSWORD is ours: the scontrol processes a hook runs do not get it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "seen"
    seen.mkdir()
    real = Path(env.cluster.bin_dir)
    for tool in real.iterdir():
        if tool.name.startswith("s") and tool.name != "scontrol":
            (bin_dir / tool.name).symlink_to(tool)
    # the real scontrol, run by a wrapper that first keeps a copy of its environment
    wrapper = bin_dir / "scontrol"
    wrapper.write_text(f'#!/bin/sh\nenv > {seen}/env-$$\nexec {real}/scontrol "$@"\n')
    wrapper.chmod(0o755)
    cfg = _with_slurm_key(env, tmp_path, f'bin_dir = "{bin_dir}"')
    run = subprocess.run([sys.executable, "-m", "hpc_bridge", "--config", str(cfg), "suspend", "htc-f2sv2-8"],
                         capture_output=True, text=True, timeout=60,
                         env={**env.cli_env(), "HPC_BRIDGE_PASSWORD": env.sim.password})
    assert run.returncode == 0, run.stderr
    environments = [p.read_text() for p in seen.iterdir()]
    assert environments, "no scontrol call was made"
    assert not any(env.sim.password in e or "HPC_BRIDGE_PASSWORD" in e for e in environments)
    assert all("SLURM_CONF=" in e for e in environments)


def test_a_suspend_whose_read_failed_is_left_pending_for_repair(env, tmp_path):
    from scripted_http import Reply, ScriptedServer

    name = "htc-f2sv2-8"
    with ScriptedServer(lambda seen: Reply(500, "down for maintenance")) as srv:
        cfg = _config_with(env, tmp_path, url=srv.url)
        cfg.write_text(cfg.read_text().replace("retries = 3\nretry_budget = 10.0", "retries = 0\nretry_budget = 10.0"))
        run = env.cli("--config", str(cfg), "suspend", name)
    assert run.rc == 1, run.stderr
    ops = [op for op in env.state()["operations"] if op["nodes"] == [name] and op["action"] == "shutdown"]
    assert ops and ops[-1]["outcome"] == "pending", ops
    request_id = ops[-1]["request_id"]
    assert env.cli("repair").rc == 0  # repair sends it, now that the API answers
    after = {op["request_id"]: op for op in env.state()["operations"]}
    assert request_id not in after or after[request_id]["outcome"] != "pending", after.get(request_id)


@pytest.mark.parametrize("what", ["config-dev-zero", "config-fifo", "password-fifo", "huge-timeout"])
def test_special_files_and_huge_numbers_are_one_line_config_errors(env, tmp_path, what):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cfg = tmp_path / "c.toml"
    text = env.config_path.read_text()
    if what == "config-dev-zero":
        cfg = Path("/dev/zero")
    elif what == "config-fifo":
        cfg = fifo
    elif what == "password-fifo":
        cfg.write_text(text.replace(f'password_file = "{env.root / "password"}"', f'password_file = "{fifo}"'))
        fifo.chmod(0o600)
    else:
        cfg.write_text(text.replace("timeout = 5.0", "timeout = 1e308"))
    run = subprocess.run([sys.executable, "-m", "hpc_bridge", "--config", str(cfg), "status"],
                         capture_output=True, text=True, timeout=60, env=env.cli_env())
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert "internal error" not in run.stderr
    word = {"config-dev-zero": "not a regular file", "config-fifo": "not a regular file",
            "password-fifo": "not a regular file", "huge-timeout": "cluster.timeout"}[what]
    assert word in lines[0], lines[0]


def test_a_fifo_as_state_file_is_moved_aside_not_waited_on(env, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    os.mkfifo(state_dir / "state.json")
    cfg = _config_with(env, tmp_path, state_dir=state_dir)
    run = subprocess.run([sys.executable, "-m", "hpc_bridge", "--config", str(cfg), "resume", "htc-f2sv2-8"],
                         capture_output=True, text=True, timeout=60, env=env.cli_env())
    env.cli("--config", str(cfg), "suspend", "htc-f2sv2-8")
    assert run.returncode == 0, run.stderr
    assert (state_dir / "state.json").is_file()
    assert [p for p in state_dir.iterdir() if p.name.startswith("state.json.corrupt-")]


def test_an_unwritable_log_directory_is_said_not_silent(env, tmp_path):
    not_a_dir = tmp_path / "log"
    not_a_dir.write_text("")
    cfg = _config_with(env, tmp_path, log_dir=not_a_dir)
    run = env.cli("--config", str(cfg), "status")
    assert run.rc == 0
    assert f"warning: cannot write log file {not_a_dir}/status.log" in run.stderr, run.stderr


def test_a_dead_hooks_create_is_closed_once_slurm_powered_its_node_down(env, tmp_path):
    """A resume killed after recording its create: once Slurm has given the node up (powered
    down), repair closes the record and stops the VM, instead of keeping it to the deadline."""
    import time

    from hpc_bridge.api.client import ClusterClient
    from hpc_bridge.state import StateStore

    name = "htc-f4sv2-1"
    request = {"sets": [{"count": 1, "nodearray": "htc", "nameFormat": name,
                         "definition": {"machineType": "Standard_F4s_v2"}}]}
    with ClusterClient(env.sim.url, env.sim.cluster_name, env.sim.username, env.sim.password) as c:
        c.create_nodes(request["sets"])  # the create went out; then its hook was killed
    dead = subprocess.Popen(["true"])
    dead.wait()
    now = time.time()
    with StateStore(env.state_dir / "state.json").transaction() as state:
        op = state.begin("create", [name], "killed-hook-create", now - 600, now + 1800, request=request)
        op.pid = dead.pid
    assert "POWERED_DOWN" in env.cluster.nodes()[name].state_flags
    cfg = _config_with(env, tmp_path, "[repair]\ngrace = 0\n")
    for _ in range(2):
        run = env.cli("--config", str(cfg), "repair")
        assert run.rc == 0, run.stderr
    ops = {o["request_id"]: o for o in env.state()["operations"]}
    assert "killed-hook-create" not in ops or ops["killed-hook-create"]["outcome"] not in ("pending", "accepted")
    status = env.cloud_nodes().get(name, {}).get("Status")
    assert status in (None, "Terminating", "Terminated", "Stopping", "Off", "Deallocating", "Deallocated"), status


def test_a_url_with_a_password_is_refused_before_anything_is_sent(env, tmp_path):
    url = env.sim.url.replace("http://", f"http://{env.sim.username}:{env.sim.password}@")
    cfg = _config_with(env, tmp_path, url=url)
    before = env.sim.stats()["requests"]
    for args in (["status"], ["suspend", "htc-f2sv2-8"], ["repair"]):
        run = env.cli("--config", str(cfg), *args)
        assert run.rc == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "user name or password" in run.stderr and env.sim.password not in run.stderr + run.stdout
    assert env.sim.stats()["requests"] == before
    assert env.sim.password not in json.dumps(env.state())


def test_doctor_is_not_held_by_a_fifo_as_state_or_history_file(env, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    os.mkfifo(state_dir / "state.json")
    os.mkfifo(state_dir / "state.history.jsonl")
    cfg = _config_with(env, tmp_path, state_dir=state_dir)
    run = subprocess.run([sys.executable, "-m", "hpc_bridge", "--config", str(cfg), "doctor"],
                         capture_output=True, text=True, timeout=120, env=env.cli_env())
    line = next(l for l in run.stdout.splitlines() if "] state file readable" in l)
    assert line.startswith("[FAIL]") and "not a regular file" in line, line
