"""Security checks as tests: the password stays secret (logs, errors, --json, process
arguments), TLS is verified unless the config says otherwise, no shell anywhere, private
directories and files, and lock files that cannot be turned against another file."""

from __future__ import annotations

import ast
import base64
import json
import os
import stat
import time
from pathlib import Path

import pytest

from bridge_env import REPO, BridgeEnv, default_scenario
from scripted_http import Reply, ScriptedServer, self_signed_cert

PASSWORD = "Xq7-s3cr3t-pa55w0rd-ZZ"


@pytest.fixture(scope="module")
def env(tmp_path_factory, host_slurm):
    from slurmcluster import SlurmCluster

    clusters = []

    def factory(start: bool = False, **kwargs):
        c = SlurmCluster(tmp_path_factory.mktemp("slurm"), release=host_slurm, **kwargs)
        clusters.append(c)
        return c

    scenario = default_scenario(cluster={"password": PASSWORD})
    e = BridgeEnv.create(tmp_path_factory.mktemp("sec"), factory, scenario=scenario,
                         config_extra='[resume]\nresume_timeout = 15\n')
    yield e
    e.close()
    for c in clusters:
        c.stop()


def secrets() -> list[str]:
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    return [PASSWORD, token]


def assert_clean(text: str, where: str) -> None:
    for s in secrets():
        assert s not in text, f"secret found in {where}"


def cmdlines_with(config_path: str) -> dict[int, str]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if config_path.encode() in raw:
                out[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return out


def environ_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------- the password


def test_password_not_in_argv_environment_logs_errors_or_json(env):
    env.sim.set_faults(latency=0.3)  # hooks and followers live long enough to be seen
    seen: dict[int, str] = {}
    try:
        procs = [env.popen_hook("resume", "htc-f2sv2-[1-2]"), env.popen_hook("resume", "hpc-hb120rsv3-1")]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for pid, cmd in cmdlines_with(str(env.config_path)).items():
                seen[pid] = cmd
                assert_clean(environ_of(pid), f"environment of pid {pid} ({cmd[:80]})")
            if all(p.poll() is not None for p in procs) and any("follow" in c for c in seen.values()):
                break
            time.sleep(0.05)
        outputs = [p.communicate() for p in procs]
    finally:
        env.sim.set_faults(latency=0)
    assert any(" resume " in c for c in seen.values()), seen
    assert any(" follow " in c for c in seen.values()), "the follower was never seen running"
    for pid, cmd in seen.items():
        assert_clean(cmd, f"argv of pid {pid}")
    for out, err in outputs:
        assert_clean(out + err, "hook output")

    # --json and verbose output of the operator commands
    for args in (["status", "--json"], ["nodes", "--json"], ["repair", "--dry-run", "--json"],
                 ["operations", "--json"], ["status", "-vv"], ["suspend", "htc-f2sv2-[1-2]", "--json", "-vv"]):
        run = env.cli(*args)
        assert_clean(run.stdout + run.stderr, " ".join(args))

    # the password refused: the error names the cause, not the secret
    wrong = env.root / "wrong.toml"
    wrong_pw = env.root / "wrong-password"
    wrong_pw.write_text("not-the-" + PASSWORD + "\n")
    wrong_pw.chmod(0o600)
    wrong.write_text(env.config_path.read_text().replace(str(env.root / "password"), str(wrong_pw)))
    run = env.cli("--config", str(wrong), "status", "-vv")
    assert run.rc != 0 and "Traceback" not in run.stderr
    assert "not-the-" not in run.stdout + run.stderr
    assert_clean(run.stdout + run.stderr, "error output")
    run = env.cli("--config", str(wrong), "resume", "htc-f2sv2-5", "--json")
    assert "not-the-" not in run.stdout + run.stderr

    # every log file, the state file, everything written under the environment's directories
    for path in [*env.log_dir.rglob("*"), *env.state_dir.rglob("*")]:
        if path.is_file():
            text = path.read_bytes().decode(errors="replace")
            assert_clean(text, str(path))
            assert "not-the-" not in text, path


def test_password_in_environment_variable_is_masked_too(env, tmp_path):
    cfg = tmp_path / "env.toml"
    lines = [ln for ln in env.config_path.read_text().splitlines() if not ln.startswith("password_file")]
    cfg.write_text("\n".join(lines) + "\n")
    run = env.cli("--config", str(cfg), "status", "--json", "-vv", env={"HPC_BRIDGE_PASSWORD": PASSWORD})
    assert run.rc == 0, run.stderr
    assert_clean(run.stdout + run.stderr, "status with $HPC_BRIDGE_PASSWORD")


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"))

    def answer(seen):
        return Reply(200, {"maxCount": 1, "maxCoreCount": 1, "nodearrays": [], "nodes": [], "state": "Started",
                           "targetState": "Started"})

    with ScriptedServer(answer, certfile=cert, keyfile=key) as server:
        yield server, cert


def tls_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    cfg = tmp_path / "tls.toml"
    cfg.write_text(f'[cluster]\nurl = "{url}"\nname = "demo"\nusername = "admin"\npassword_file = "{pw}"\n'
                   f"retries = 0\n{extra}[paths]\nstate_dir = \"{tmp_path / 'state'}\"\n"
                   f"log_dir = \"{tmp_path / 'log'}\"\n")
    return cfg


def run_cli(cfg: Path, *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "hpc_bridge", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


def test_self_signed_server_refused_by_default(tls_server, tmp_path):
    server, _ = tls_server
    before = len(server.seen)
    run = run_cli(tls_config(tmp_path, server.url.replace("127.0.0.1", "localhost")), "status", "--json")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and ("certificate" in lines[0].lower() or "tls" in lines[0].lower()), run.stderr
    assert len(server.seen) == before  # no request (and no credentials) went over the unverified channel
    assert_clean(run.stdout + run.stderr, "TLS error")


def test_tls_verification_off_only_when_configured(tls_server, tmp_path):
    server, cert = tls_server
    url = server.url.replace("127.0.0.1", "localhost")
    run = run_cli(tls_config(tmp_path, url, "verify_tls = false\n"), "status", "--json")
    assert run.returncode == 0, run.stderr
    run = run_cli(tls_config(tmp_path, url, f'ca_bundle = "{cert}"\n'), "status", "--json")
    assert run.returncode == 0, run.stderr


def test_verify_tls_defaults_to_true():
    from hpc_bridge.config import ClusterConfig

    assert ClusterConfig(url="https://x.example", name="c", username="u").verify_tls is True


# --------------------------------------------------------------------------- no shell


def _python_sources() -> list[Path]:
    files = list((REPO / "hpc_bridge").rglob("*.py"))
    for p in (REPO / "scripts").rglob("*"):
        if p.is_file() and (p.suffix == ".py" or p.read_bytes()[:40].startswith(b"#!") and b"python" in p.read_bytes()[:60]):
            files.append(p)
    return files


def test_no_subprocess_with_a_shell():
    offenders = []
    files = _python_sources()
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            dotted = ""
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                dotted = f"{func.value.id}.{func.attr}"
            if dotted in ("os.system", "os.popen", "os.spawnlp", "os.spawnvp", "pty.spawn", "commands.getoutput",
                          "subprocess.getoutput", "subprocess.getstatusoutput"):
                offenders.append(f"{path}:{node.lineno} {dotted}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append(f"{path}:{node.lineno} shell={ast.unparse(kw.value)}")
            if dotted.startswith("subprocess.") and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
                offenders.append(f"{path}:{node.lineno} {dotted} with a command string")
    assert not offenders, offenders
    # shell wrappers (scripts/hooks) hand the hostlist over as one quoted argument
    for p in (REPO / "scripts" / "hooks").glob("*"):
        text = p.read_text()
        if text.startswith("#!/bin/sh") or text.startswith("#!/bin/bash"):
            assert "eval" not in text.split(), p


# --------------------------------------------------------------------------- files and directories


def test_state_and_log_directories_are_private(env, tmp_path):
    state_dir, log_dir = tmp_path / "new" / "state", tmp_path / "new" / "log"
    cfg = tmp_path / "dirs.toml"
    cfg.write_text(env.config_path.read_text().replace(f'state_dir = "{env.state_dir}"', f'state_dir = "{state_dir}"')
                   .replace(f'log_dir = "{env.log_dir}"', f'log_dir = "{log_dir}"'))
    run = env.cli("--config", str(cfg), "resume", "htc-f4sv2-6", env={})
    assert run.rc == 0, run.stderr
    os.umask(old := os.umask(0))
    for d in (state_dir, log_dir):
        assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0, (d, oct(d.stat().st_mode), oct(old))
    state_file = state_dir / "state.json"
    assert state_file.exists()
    assert stat.S_IMODE(state_file.stat().st_mode) & 0o077 == 0, oct(state_file.stat().st_mode)
    for f in state_dir.iterdir():
        if f.name.endswith(".lock"):
            assert stat.S_IMODE(f.stat().st_mode) & 0o022 == 0, f
    env.cli("--config", str(cfg), "suspend", "htc-f4sv2-6")


@pytest.mark.parametrize("lock_name", ["state.json.lock", "repair.lock"])
def test_lock_file_symlink_cannot_clobber_another_file(env, tmp_path, lock_name):
    state_dir, log_dir = tmp_path / "state", tmp_path / "log"
    state_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state_dir / lock_name).symlink_to(victim)
    cfg = tmp_path / "lock.toml"
    cfg.write_text(env.config_path.read_text().replace(f'state_dir = "{env.state_dir}"', f'state_dir = "{state_dir}"')
                   .replace(f'log_dir = "{env.log_dir}"', f'log_dir = "{log_dir}"'))
    for args in (["resume", "htc-f4sv2-7"], ["suspend", "htc-f4sv2-7"], ["repair", "--dry-run"], ["repair"]):
        run = env.cli("--config", str(cfg), *args)
        assert "Traceback" not in run.stderr, run.stderr
        assert victim.read_text() == "precious\n", args
        assert stat.S_IMODE(victim.stat().st_mode) == stat.S_IMODE((tmp_path / "victim").stat().st_mode)


def test_state_file_symlink_is_replaced_not_followed(env, tmp_path):
    """The state file is written to a temp file and renamed over the name: a symlink planted as
    state.json is replaced, its target untouched."""
    state_dir, log_dir = tmp_path / "state", tmp_path / "log"
    state_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text(json.dumps({"version": 1, "operations": []}))
    before = victim.read_text()
    (state_dir / "state.json").symlink_to(victim)
    cfg = tmp_path / "sym.toml"
    cfg.write_text(env.config_path.read_text().replace(f'state_dir = "{env.state_dir}"', f'state_dir = "{state_dir}"')
                   .replace(f'log_dir = "{env.log_dir}"', f'log_dir = "{log_dir}"'))
    run = env.cli("--config", str(cfg), "resume", "htc-f4sv2-8")
    assert run.rc == 0, run.stderr
    assert victim.read_text() == before
    assert not (state_dir / "state.json").is_symlink()
    env.cli("--config", str(cfg), "suspend", "htc-f4sv2-8")
