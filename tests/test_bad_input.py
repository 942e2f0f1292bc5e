"""Bad input, end to end and in bulk: every case gives a clear one-line error (no traceback), a
non-zero exit, and changes nothing — not the state file, not the simulator (no mutating
request), not Slurm.

End-to-end cases run the real CLI as a subprocess against the simulator (real HTTP) and a real
slurmctld that includes the generated partitions (one environment for the module). Hostile API
bodies come from a scripted real HTTP server. The bulk runs through the pure functions with
hypothesis (hostlists, resume files, configs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge_env import REPO, BridgeEnv
from scripted_http import Reply, ScriptedServer

from hpc_bridge import hostlist
from hpc_bridge.config import config_from_dict
from hpc_bridge.errors import ConfigError, HostlistError, UsageError
from hpc_bridge.resume_file import parse_resume_file, read_resume_file
from hpc_bridge.slurm import Slurm
from hpc_bridge.state import StateStore
from hpc_bridge.errors import SlurmError

MUTATING_ENDPOINTS = ("nodes/", "scale")
SETTLED = {"Terminating": "Terminated", "Deallocating": "Deallocated", "Off": "Ready", "Acquiring": "Ready",
           "Preparing": "Ready", "Failed": "Ready"}


# --------------------------------------------------------------------------- one environment for the module


@pytest.fixture(scope="module")
def env(tmp_path_factory, slurm_release):
    from slurmcluster import SlurmCluster

    root = tmp_path_factory.mktemp("badinput")
    clusters = []

    def factory(start: bool = False, **kwargs):
        c = SlurmCluster(tmp_path_factory.mktemp("slurm"), release=slurm_release, **kwargs)
        clusters.append(c)
        return c

    # no follower: one left running by an earlier test's resume would change the state file
    # between a test's before and after (it renews its lease every round)
    e = BridgeEnv.create(root, factory, config_extra="[resume]\nfollower = false\n")
    yield e
    e.close()
    for c in clusters:
        c.stop()


def snapshot(env: BridgeEnv) -> dict:
    """Everything a bad input must leave alone."""
    state = env.state_dir / "state.json"
    with env.sim._lock:
        # where a node is going, not how far it got (a node from an earlier test may still move)
        cloud = sorted((r.name, SETTLED.get(r.status, r.status)) for r in env.sim.model.nodes.values())
        ops = len(env.sim.model.operations)
    stats = env.sim.stats()["requests"]
    return {
        "state": state_without_down_reasons(state),
        # the lock's own files (state.json.lock*) change whenever it is taken, and are no state
        "state_files": sorted(p.name for p in env.state_dir.glob("*") if not p.name.startswith("state.json.lock"))
        if env.state_dir.exists() else [],
        "cloud": cloud,
        "operations": ops,
        "mutating_requests": sum(v for k, v in stats.items() if k.startswith(MUTATING_ENDPOINTS)),
        "slurm": env.cluster.scontrol("-o", "show", "node"),
    }


def state_without_down_reasons(path: Path):
    """The state file's content; `down_reasons` aside: marking a node DOWN records why (by design:
    resume-fail restores the cause), and unknown names are marked DOWN by resume."""
    if not path.exists():
        return None
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(data, dict):
        data.pop("down_reasons", None)
        if not data.get("operations") and not data.get("cooloffs"):
            return None  # an empty state is no state
    return json.dumps(data, sort_keys=True)


def assert_refused(run, before: dict, after: dict, *, words: tuple[str, ...] = (), rc: int | None = None) -> None:
    assert run.rc != 0, (run.stdout, run.stderr)
    if rc is not None:
        assert run.rc == rc, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    assert lines[0].startswith("hpc-bridge "), lines[0]
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    for key in before:
        assert before[key] == after[key], f"{key} changed"


# --------------------------------------------------------------------------- hostile hostlists (CLI)

HOSTILE_HOSTLISTS = [
    "htc-f2sv2-[1-2",  # unbalanced
    "htc-f2sv2-[[1-2]]",
    "htc-f2sv2-[2-1]",  # reversed
    "htc-f2sv2-[a-b]",
    "htc-f2sv2-[1-2]x",  # text after the last bracket
    "a[0-65535]b[0-65535]",  # ~4e9 names: capped
    "n[0-70000]",  # more than a range may hold
    "n[18446744073709551616]",  # a number above 2**64-1 (Slurm clamps it)
    "n[18446744073709551614-18446744073709551615]",  # a range ending at 2**64-1 (Slurm loses it)
    "htc-f2sv2-1\nhtc-f2sv2-2",  # newline: not a separator in Slurm, one name with it inside
    "htc-f2sv2-1\nNodeName=ALL",
    "htc-f2sv2-1\rhtc-f2sv2-2",
    "htc-f2sv2-1\x0b",
    "htc-f2sv2-1\x0c",
    "htc-f2sv2-[1-2;rm -rf /]",
    "htc-f2sv2-[$(reboot)]",
    "htc-f2sv2-[`id`]",
]


@pytest.mark.parametrize("expr", HOSTILE_HOSTLISTS, ids=lambda e: repr(e)[:40])
def test_hostile_hostlist_resume_changes_nothing(env, expr):
    before = snapshot(env)
    run = env.hook("resume", expr)
    assert_refused(run, before, snapshot(env))
    assert run.rc == 2 and "hostlist" in run.stderr, run.stderr  # refused as a hostlist: a usage error


@pytest.mark.parametrize("verb", ["suspend", "resume-fail"])
@pytest.mark.parametrize("expr", ["htc-f2sv2-[1-2", "a[0-65535]b[0-65535]", "x\r", "htc-f2sv2-[1-2]x"])
def test_hostile_hostlist_other_hooks_change_nothing(env, verb, expr):
    before = snapshot(env)
    run = env.hook(verb, expr)
    assert_refused(run, before, snapshot(env))
    assert run.rc == 2 and "hostlist" in run.stderr, run.stderr


@pytest.mark.parametrize("expr", [
    "htc-f2sv2-1;reboot", "htc-f2sv2-1|id", "$(id)", "`id`", "htc-f2sv2-1&&id", "htc-f2sv2-1>x", "../../etc/passwd",
    "NodeName=ALL", "htc-f2sv2-1 State=DOWN", "ALL", "*", "htc-f2sv2-1-2]",
    "htc-f2sv2-[1-2]|[3]",
])
def test_shell_metacharacters_and_unknown_names(env, expr):
    """Names made of shell metacharacters or '=' are just unknown names: never a shell,
    never an `scontrol` argument, never an API call; the hook says which names are unknown."""
    before = snapshot(env)
    run = env.hook("suspend", expr)
    after = snapshot(env)
    assert run.rc == 1 and "Traceback" not in run.stderr, run.stderr
    assert "unknown node" in run.stderr
    assert not (REPO / "x").exists()
    for key in before:
        assert before[key] == after[key], key


def test_unknown_names_resume_documented_behaviour(env):
    """Documented: resume leaves a name that is not in the node map as it is (a site's own node
    is not ours to change): the hook fails with one line, nothing is created, recorded or marked."""
    before = snapshot(env)
    run = env.hook("resume", "nosuch-[1-3]")
    after = snapshot(env)
    assert run.rc == 1 and "Traceback" not in run.stderr
    assert "unknown node" in run.stderr or "nosuch" in run.stderr
    for key in ("state", "cloud", "operations", "mutating_requests", "slurm"):
        assert before[key] == after[key], key


# --------------------------------------------------------------------------- configs (CLI)

GOOD = {"url": "http://127.0.0.1:9", "name": "demo", "username": "admin"}


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_CONFIGS = [
    ("missing cluster", "[paths]\nstate_dir = \"/tmp/x\"\n", "missing key cluster"),
    ("missing url", '[cluster]\nname = "d"\nusername = "u"\n', "missing key cluster.url"),
    ("unknown top key", '[cluster]\nurl = "http://127.0.0.1:1"\nname = "d"\nusername = "u"\n[bogus]\nx = 1\n', "unknown key bogus"),
    ("unknown cluster key", '[cluster]\nurl = "http://127.0.0.1:1"\nname = "d"\nusername = "u"\npasword = "x"\n', "unknown key cluster.pasword"),
    ("wrong type retries", '[cluster]\nurl = "http://127.0.0.1:1"\nname = "d"\nusername = "u"\nretries = "many"\n', "cluster.retries"),
    ("wrong type verify", '[cluster]\nurl = "http://127.0.0.1:1"\nname = "d"\nusername = "u"\nverify_tls = "maybe"\n', "cluster.verify_tls"),
    ("negative timeout", '[cluster]\nurl = "http://127.0.0.1:1"\nname = "d"\nusername = "u"\ntimeout = -1\n', "cluster.timeout"),
    ("bad url scheme", '[cluster]\nurl = "ftp://x"\nname = "d"\nusername = "u"\n', "cluster.url"),
    ("plain http remote", '[cluster]\nurl = "http://example.invalid"\nname = "d"\nusername = "u"\n', "plain http"),
    ("relative state dir", '[cluster]\nurl = "http://127.0.0.1:1"\nname = "d"\nusername = "u"\n[paths]\nstate_dir = "rel"\n', "absolute"),
    ("bad address mode", '[cluster]\nurl = "http://127.0.0.1:1"\nname = "d"\nusername = "u"\n[slurm]\naddress_mode = "telepathy"\n', "slurm.address_mode"),
    ("bad suspend policy", '[cluster]\nurl = "http://127.0.0.1:1"\nname = "d"\nusername = "u"\n[partitions.nodearrays.htc]\nsuspend_policy = "explode"\n', "suspend_policy"),
    ("newline in name", '[cluster]\nurl = "http://127.0.0.1:1"\nname = "d\\nx"\nusername = "u"\n', "cluster.name"),
    ("not toml", "[cluster\nurl=", "not valid TOML"),
    ("section is a string", 'cluster = "x"\n', "cluster"),
    ("binary garbage", "\x00\x01\x02", "config file"),
]


@pytest.mark.parametrize("label,text,words", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_line_exit_2(env, tmp_path, label, text, words):
    path = write_config(tmp_path / "bad.toml", text)
    before = snapshot(env)
    run = env.cli("--config", str(path), "resume", "htc-f2sv2-1")
    assert_refused(run, before, snapshot(env), words=(words,), rc=2)


def test_missing_config_file(env, tmp_path):
    before = snapshot(env)
    run = env.cli("--config", str(tmp_path / "nope.toml"), "suspend", "htc-f2sv2-1")
    assert_refused(run, before, snapshot(env), words=("not found",), rc=2)


# --------------------------------------------------------------------------- password files (CLI)


def config_with_password(env: BridgeEnv, tmp_path: Path, password_file: Path) -> Path:
    text = env.config_path.read_text().replace(str(env.root / "password"), str(password_file))
    return write_config(tmp_path / "pw.toml", text)


@pytest.mark.parametrize("label,mode,content,words", [
    ("world readable", 0o644, "secret\n", "readable by group or others"),
    ("group readable", 0o640, "secret\n", "readable by group or others"),
    ("world writable", 0o602, "secret\n", "readable by group or others"),
    ("empty", 0o600, "\n", "empty"),
    ("not utf-8", 0o600, b"\xff\xfe\x00pw", "cannot read"),
    ("missing", None, None, "No such file"),
    ("a directory", "dir", None, "password file"),
])
def test_bad_password_file(env, tmp_path, label, mode, content, words):
    pw = tmp_path / "pw"
    if mode == "dir":
        pw.mkdir(mode=0o700)
    elif mode is not None:
        if isinstance(content, bytes):
            pw.write_bytes(content)
        else:
            pw.write_text(content)
        pw.chmod(mode)
    cfg = config_with_password(env, tmp_path, pw)
    before = snapshot(env)
    run = env.cli("--config", str(cfg), "resume", "htc-f2sv2-1")
    assert_refused(run, before, snapshot(env), words=(words,), rc=2)
    assert "secret" not in run.stderr


# --------------------------------------------------------------------------- state file


def test_future_schema_state_file_is_refused_and_untouched(env):
    path = env.state_dir / "state.json"
    env.state_dir.mkdir(mode=0o700, exist_ok=True)
    saved = path.read_bytes() if path.exists() else None
    future = json.dumps({"version": 99, "operations": [], "what": "from the future"}).encode()
    path.write_bytes(future)
    try:
        before = snapshot(env)
        run = env.hook("resume", "htc-f2sv2-7")
        after = snapshot(env)
        # nothing is sent without its record; the node goes DOWN with the cause at once
        assert run.rc == 1 and "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
        assert "schema version 99" in run.stderr and "upgrade hpc-bridge" in run.stderr, run.stderr
        for key in ("state", "cloud", "operations", "mutating_requests"):
            assert before[key] == after[key], key
        # nothing moved aside (the lock's own files are state.json.lock*)
        assert all(f == "state.json" or f.startswith("state.json.lock") for f in after["state_files"])
        node = env.cluster.slurm().show_nodes()["htc-f2sv2-7"]
        assert "DOWN" in node.state_flags and "schema version 99" in node.reason, node
        assert path.read_bytes() == future
        # suspend / resume-fail of a node with no cloud node have nothing to record: they may
        # succeed, but never touch the file
        for verb in ("suspend", "resume-fail"):
            run = env.hook(verb, "htc-f2sv2-7")
            assert "Traceback" not in run.stderr
            assert run.rc == 0 or "schema version" in run.stderr, run.stderr
            assert path.read_bytes() == future
    finally:
        if saved is None:
            path.unlink()
        else:
            path.write_bytes(saved)


@pytest.mark.parametrize("garbage", [b'{"version": 1, "operations": [{"request_id"', b"", b"\x00\x00\x00",
                                     b"[]", b'{"version": 1, "operations": [{"bogus": 1}]}'])
def test_truncated_state_file_is_moved_aside_loudly(env, garbage):
    """Not a refusal: the hook goes on with an empty state, the bad file is kept aside, the log
    says so in capitals (repair rebuilds what it can from the API)."""
    path = env.state_dir / "state.json"
    env.state_dir.mkdir(mode=0o700, exist_ok=True)
    # under the state lock, and counted first: a follower left by an earlier test may be between
    # its read and its write (its write would replace the garbage), or may read the garbage and
    # move it aside before this hook does (then it is still exactly one copy kept aside)
    asides_before = set(env.state_dir.glob("state.json.corrupt-*"))
    with StateStore(path).locked():
        saved = path.read_bytes() if path.exists() else None
        path.write_bytes(garbage)
    run = env.hook("resume", "htc-f2sv2-8")  # reads the state under the lock
    assert run.rc == 0, run.stderr
    assert env.hook("suspend", "htc-f2sv2-8").rc == 0
    asides = set(env.state_dir.glob("state.json.corrupt-*")) - asides_before
    assert len(asides) == 1
    assert asides.pop().read_bytes() == garbage
    # in the hook's log, or in the follower's when the follower read it first
    assert any("STATE FILE CORRUPT" in log.read_text() for log in env.log_dir.glob("*.log"))
    if saved is not None:
        with StateStore(path).locked():
            path.write_bytes(saved)


# --------------------------------------------------------------------------- SLURM_RESUME_FILE (CLI)


RESUME_FILES = [
    ("missing", None),
    ("not json", b"jobs: many"),
    ("empty", b""),
    ("a list", b"[1, 2]"),
    ("jobs not a list", b'{"jobs": 3}'),
    ("job without id", b'{"jobs": [{"nodes": "htc-f4sv2-1"}]}'),
    ("bad hostlist", b'{"jobs": [{"job_id": 1, "nodes": "htc-f4sv2-[1-"}]}'),
    ("binary", b"\x00\xff garbage"),
]


@pytest.mark.parametrize("index", range(len(RESUME_FILES)), ids=[r[0] for r in RESUME_FILES])
def test_garbage_resume_file_resumes_without_job_info(env, tmp_path, index):
    """Documented: a missing or garbage SLURM_RESUME_FILE is a warning; resume goes on without
    job information (no all-or-nothing grouping)."""
    label, content = RESUME_FILES[index]
    path = tmp_path / "resume-file"
    if content is not None:
        path.write_bytes(content)
    name = f"htc-f4sv2-{index + 1}"
    run = env.cli("resume", name, env={"SLURM_RESUME_FILE": str(path)})
    assert run.rc == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert name in env.cloud_nodes()
    log = (env.log_dir / "resume.log").read_text()
    assert "resuming without job information" in log
    assert env.hook("suspend", name).rc == 0


# --------------------------------------------------------------------------- hostile API bodies (scripted server)


def scripted_config(env: BridgeEnv, tmp_path: Path, url: str, extra: str = "") -> Path:
    text = env.config_path.read_text().replace(env.sim.url, url)
    text = text.replace(f'state_dir = "{env.state_dir}"', f'state_dir = "{tmp_path / "state"}"')
    return write_config(tmp_path / "scripted.toml", text + extra)


def status_body(env: BridgeEnv) -> dict:
    with env.sim._lock:
        return env.sim.model.status(env.sim.now())


def node_body(name: str, **over) -> dict:
    node = {"Name": name, "NodeId": f"id-{abs(hash(name))}", "Template": "htc", "MachineType": "Standard_F2s_v2",
            "Status": "Ready", "TargetState": "Started", "PrivateIp": "10.1.0.4", "Hostname": "ip-10-1-0-4"}
    node.update(over)
    return node


HOSTILE_BODIES = [
    ("nodes not json", lambda s: Reply(200, "<html>not json</html>"), "nodes"),
    ("nodes truncated json", lambda s: Reply(200, '{"nodes": [{"Name": "a"'), "nodes"),
    ("nodes missing list", lambda s: Reply(200, {"items": []}), "nodes"),
    ("nodes wrong type", lambda s: Reply(200, {"nodes": "all of them"}), "nodes"),
    ("nodes null", lambda s: Reply(200, "null"), "nodes"),
]


@pytest.mark.parametrize("label,script,word", HOSTILE_BODIES, ids=[b[0] for b in HOSTILE_BODIES])
@pytest.mark.parametrize("verb", ["resume", "suspend"])
def test_api_body_not_understood(env, tmp_path, label, script, word, verb):
    status = status_body(env)

    def answer(seen):
        if seen.path.endswith("/status"):
            return Reply(200, status)
        if seen.method == "POST":
            return Reply(500, {"error": "a mutating call was made"})
        return script(seen)

    with ScriptedServer(answer) as server:
        cfg = scripted_config(env, tmp_path, server.url)
        before = snapshot(env)
        run = env.cli("--config", str(cfg), verb, "htc-f2sv2-3")
        after = snapshot(env)
    assert run.rc != 0 and "Traceback" not in run.stderr, run.stderr
    assert not [s for s in server.seen if s.method == "POST"]
    state = state_without_down_reasons(tmp_path / "state" / "state.json")
    assert state is None or not json.loads(state).get("operations") or verb == "suspend"
    for key in ("cloud", "operations", "mutating_requests", "state"):
        assert before[key] == after[key], key
    if verb == "resume":
        # the names go DOWN with the cause, as for an unreachable API (documented); nothing else
        assert "cluster API" in run.stderr


def test_a_409_on_the_retry_of_a_create_the_api_never_saw_is_reported_as_its_rejection(env, tmp_path):
    """The create is answered 500, its retry 409, and the request id is found nowhere: nothing
    was created. The reference's 409 is then "Invalid input": the node goes DOWN with a reason
    naming it, not as a refusal ("create refused"), and no capacity cool-off starts."""
    status = status_body(env)
    name = "htc-f2sv2-7"
    posts = []

    def answer(seen):
        if seen.path.endswith("/status"):
            return Reply(200, status)
        if seen.method == "POST":
            posts.append(seen)
            return Reply(500) if len(posts) == 1 else Reply(409)  # No Content, as documented
        if seen.path.endswith("/nodes"):
            return Reply(404) if "request_id" in seen.query else Reply(200, {"nodes": []})
        if seen.path == "/operations/":
            return Reply(200, [])
        raise AssertionError(seen.path)

    with ScriptedServer(answer) as server:
        cfg = scripted_config(env, tmp_path, server.url)
        run = env.cli("--config", str(cfg), "resume", name)
    assert run.rc == 1 and "Traceback" not in run.stderr, run.stderr
    assert len(posts) == 2 and posts[0].body["requestId"] == posts[1].body["requestId"]
    node = env.cluster.slurm().show_nodes()[name]
    assert "DOWN" in node.state_flags
    assert "409" in node.reason and "invalid input" in node.reason and "create refused" not in node.reason, node.reason
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert not state.get("cooloffs")
    assert [op["outcome"] for op in state["operations"]] == ["failed"]


def test_unusable_node_records_are_skipped_with_one_warning_each(env, tmp_path):
    """A record without a usable Name (a string, a nameless object) is skipped with a warning
    naming it; the other records are used as usual (nothing fails, nothing is created)."""
    status = status_body(env)
    name = "htc-f2sv2-3"
    nodes = ["htc-f2sv2-1", {"NodeId": "id-nameless", "Status": "Ready"},
             node_body(name, CoreCount=2.5, PlacementGroupId=7, Memory=None, Extra={"deep": [{"x": None}]})]

    def answer(seen):
        if seen.path.endswith("/status"):
            return Reply(200, status)
        if seen.method == "POST":
            return Reply(500, {"error": "no mutating call expected"})
        return Reply(200, {"nodes": nodes})

    with ScriptedServer(answer) as server:
        cfg = scripted_config(env, tmp_path, server.url)
        run = env.cli("--config", str(cfg), "resume", name)
    assert run.rc == 0 and "Traceback" not in run.stderr, run.stderr
    assert not [s for s in server.seen if s.method == "POST"]
    warnings = [ln for ln in (env.log_dir / "resume.log").read_text().splitlines() if "without a usable Name" in ln]
    assert len(warnings) == 2
    assert "htc-f2sv2-1" in warnings[0] and "id-nameless" in warnings[1]


@pytest.mark.parametrize("field,value", [
    ("PrivateIp", "10.0.0.1 State=DOWN"),
    ("PrivateIp", "10.0.0.1\nNodeName=ALL"),
    ("PrivateIp", "10.0.0.1,10.0.0.2"),
    ("Hostname", "evil Weight=1"),
    ("Hostname", "a=b"),
    ("Hostname", "x\ty"),
])
def test_hostile_address_never_reaches_scontrol(env, tmp_path, field, value):
    status = status_body(env)
    name = "htc-f2sv2-4"

    def answer(seen):
        if seen.path.endswith("/status"):
            return Reply(200, status)
        if seen.method == "POST":
            return Reply(500, {"error": "no mutating call expected"})
        return Reply(200, {"nodes": [node_body(name, **{field: value})]})

    with ScriptedServer(answer) as server:
        cfg = scripted_config(env, tmp_path, server.url)
        before = snapshot(env)
        run = env.cli("--config", str(cfg), "resume", name)
        after = snapshot(env)
    assert run.rc != 0 and "Traceback" not in run.stderr, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "invalid" in lines[0], run.stderr
    assert before["slurm"] == after["slurm"]
    assert value.split()[0] not in env.cluster.scontrol("-o", "show", "node", name).split("NodeAddr=")[1].split()[0] \
        or field == "Hostname"
    assert not [s for s in server.seen if s.method == "POST"]


@pytest.mark.parametrize("bad_name", ["htc\nNodeName=evil", "htc Feature=x", "htc=1", "ht c", "htc;id", "h" * 300])
def test_hostile_nodearray_name_never_reaches_slurm_conf(env, tmp_path, bad_name):
    status = status_body(env)
    status = json.loads(json.dumps(status))
    status["nodearrays"][1]["name"] = bad_name

    def answer(seen):
        if seen.path.endswith("/status"):
            return Reply(200, status)
        return Reply(200, {"nodes": []})

    out = tmp_path / "out"
    with ScriptedServer(answer) as server:
        cfg = scripted_config(env, tmp_path, server.url)
        run = env.cli("--config", str(cfg), "partitions", "--output-dir", str(out))
    assert "Traceback" not in run.stderr
    written = "".join(p.read_text() for p in out.glob("*.conf")) if out.exists() else ""
    bad_first_line = bad_name.split("\n")[0]
    assert "NodeName=evil" not in written and "Feature=x" not in written and ";id" not in written
    if run.rc == 0:  # the array was skipped with a comment, never written as a name
        assert f"PartitionName={bad_first_line} " not in written
        assert f"Nodes={bad_first_line}" not in written


# --------------------------------------------------------------------------- bulk: hostlists (hypothesis)

HOSTLIST_ALPHABET = st.sampled_from(list("abn-_.0123456789[],- \t\n\r\x00;|$`=*"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(HOSTLIST_ALPHABET, max_size=40))
def test_expand_either_names_or_one_line_hostlist_error(expr):
    try:
        names = hostlist.expand(expr)
    except HostlistError as err:
        assert "\n" not in str(err) and str(err)
        return
    for n in names:
        assert n and not any(c in n for c in " ,\t\n\r\x00"), n


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 6), st.integers(1, 65536))
@example(2, 1000)  # exactly MAX_TOTAL names
@example(2, 1001)  # the smallest square above it
def test_expand_cartesian_products_are_capped(groups, width):
    """Up to MAX_TOTAL names: every one of them, in order, none twice; above: one line naming
    the cap (or the bracket group that alone yields too many), never a partial list."""
    expr = "n" + "".join(f"x[0-{width - 1}]" for _ in range(groups))
    total = width ** groups
    if total > hostlist.MAX_TOTAL:
        with pytest.raises(HostlistError, match="more than") as refused:
            hostlist.expand(expr)
        assert "\n" not in str(refused.value)
        return
    names = hostlist.expand(expr)
    assert len(names) == total
    assert names[0] == "n" + "x0" * groups and names[-1] == "n" + f"x{width - 1}" * groups
    assert len(set(names)) == total


# --------------------------------------------------------------------------- bulk: resume files (hypothesis)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
resume_docs = st.fixed_dictionaries(
    {}, optional={"jobs": st.lists(st.fixed_dictionaries({}, optional={
        "job_id": json_values, "nodes": json_values | st.text(HOSTLIST_ALPHABET, max_size=20),
        "nodes_resume": json_values, "partition": json_values}) | json_values, max_size=4),
        "all_nodes": json_values, "all_nodes_resume": json_values})


@settings(max_examples=250, deadline=None)
@given(resume_docs | json_values)
def test_parse_resume_file_never_crashes(doc):
    try:
        jobs = parse_resume_file(json.dumps(doc))
    except UsageError as err:
        assert "\n" not in str(err)
        return
    for job in jobs:
        assert isinstance(job.job_id, str) and all(isinstance(n, str) for n in job.nodes)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64))
def test_read_resume_file_garbage_bytes_is_a_warning(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rf") / "f"
    path.write_bytes(data)
    assert isinstance(read_resume_file({"SLURM_RESUME_FILE": str(path)}), list)


def test_resume_file_from_a_memfd_is_read_and_a_fifo_or_device_is_refused(tmp_path):
    """Slurm's SLURM_RESUME_FILE is /proc/<slurmctld pid>/fd/N of a memfd; a FIFO or a device
    named there must neither hang the hook nor flood it."""
    fd = os.memfd_create("resume_job")
    try:
        os.write(fd, json.dumps({"jobs": [{"job_id": 7, "nodes_resume": "hpc-[1-2]"}]}).encode())
        jobs = read_resume_file({"SLURM_RESUME_FILE": f"/proc/{os.getpid()}/fd/{fd}"})
    finally:
        os.close(fd)
    assert [(j.job_id, j.nodes) for j in jobs] == [("7", ("hpc-1", "hpc-2"))]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_resume_file({"SLURM_RESUME_FILE": str(fifo)}) == []  # returns: no writer needed
    assert read_resume_file({"SLURM_RESUME_FILE": "/dev/zero"}) == []


# --------------------------------------------------------------------------- bulk: configs (hypothesis)

wrong_values = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.text(max_size=12))
CLUSTER_KEYS = ["url", "name", "username", "password_file", "verify_tls", "ca_bundle", "timeout", "retries",
                "retry_budget", "allow_plain_http"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CLUSTER_KEYS + ["bogus", "Url", "passwd"]), wrong_values,
       st.sampled_from(["cluster", "paths", "slurm", "resume", "repair", "state", "nonsense"]))
def test_config_bad_values_are_one_line_config_errors(key, value, section):
    data = {"cluster": dict(GOOD)}
    data.setdefault(section, {})
    if isinstance(data[section], dict):
        data[section][key] = value
    try:
        config_from_dict(data, source="t.toml")
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith("config file t.toml: ")
        assert err.exit_code == 2


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_slurm_refuses_hostile_tokens_before_running_anything(value):
    """Whatever a cloud record carries, it reaches scontrol only as a clean token."""
    slurm = Slurm(bin_dir="/nonexistent-bin", slurm_conf="/nonexistent/slurm.conf")
    clean = value and value.isprintable() and not any(c in value for c in " ,=\t") and len(value) <= 255
    try:
        slurm.set_addresses({"htc-f2sv2-1": (value, "h1")})
    except SlurmError as err:
        assert "\n" not in str(err)
        if clean:
            # a clean value got as far as running the (absent) scontrol
            assert "not found" in str(err) or "slurm.conf" in str(err)
        return
    pytest.fail("no error from a nonexistent scontrol")


@pytest.mark.parametrize("verb", ["resume", "resume-fail"])
def test_name_slurm_accepts_but_no_hostlist_can_hold(env, verb):
    """`a-1]` is a name by Slurm's hostlist syntax: an unknown one, refused before scontrol
    (not a usage error, and not a failure of the hook's own logging)."""
    before = snapshot(env)
    run = env.hook(verb, "htc-f2sv2-1-2]")
    after = snapshot(env)
    assert run.rc == 1 and "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    assert "htc-f2sv2-1-2]" in run.stderr
    for key in ("state", "cloud", "operations", "mutating_requests"):
        assert before[key] == after[key], key
