"""hpc_bridge.slurm and the real-Slurm harness.

Parser tables use lines captured from real Slurm 22.05.8 runs (tests/data). Everything else runs
against a real slurmctld/slurmd started by tests/slurmcluster.py (skipped without root/Slurm,
failing with CI=true).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpc_bridge.errors import SlurmError
from hpc_bridge.resume_file import Job, parse_resume_file
from hpc_bridge.slurm import (
    cloud_nodes_hidden,
    slurm_version,
    FREE_TEXT_NODE_KEYS,
    KNOWN_NODE_KEYS,
    MAX_ARGV_BYTES,
    Slurm,
    parse_show_config_output,
    parse_show_node_line,
    parse_show_node_output,
)
from hpc_bridge.slurm import _split_pairs

from slurmcluster import REPO, add_node_ports

DATA = Path(__file__).parent / "data" / "scontrol_show_node_22.05.txt"
CAPTURED = [ln for ln in DATA.read_text().splitlines() if ln.startswith("NodeName=")]


def _captured(state: str, reason: bool | None = None) -> str:
    for ln in CAPTURED:
        if f" State={state} " in ln and (reason is None or ("Reason=" in ln) == reason):
            return ln
    raise LookupError(state)


# -- parser (pure) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state,reason,flags",
    [
        ("IDLE+CLOUD+POWERED_DOWN", False, {"IDLE", "CLOUD", "POWERED_DOWN"}),
        ("DOWN+CLOUD+POWERED_DOWN", True, {"DOWN", "CLOUD", "POWERED_DOWN"}),
        ("IDLE+CLOUD+POWERED_DOWN+NOT_RESPONDING", False, {"IDLE", "CLOUD", "POWERED_DOWN", "NOT_RESPONDING"}),
        ("MIXED+CLOUD+POWERED_DOWN", False, {"MIXED", "CLOUD", "POWERED_DOWN"}),
        ("MIXED+CLOUD+NOT_RESPONDING+POWERING_UP", False, {"MIXED", "CLOUD", "NOT_RESPONDING", "POWERING_UP"}),
        ("MIXED+CLOUD", False, {"MIXED", "CLOUD"}),
        ("IDLE+CLOUD", False, {"IDLE", "CLOUD"}),
        ("IDLE+CLOUD+POWERING_DOWN", False, {"IDLE", "CLOUD", "POWERING_DOWN"}),
        ("IDLE+CLOUD+POWER_UP+POWERED_DOWN", False, {"IDLE", "CLOUD", "POWER_UP", "POWERED_DOWN"}),
        ("IDLE+CLOUD+DRAIN+POWERED_DOWN", True, {"IDLE", "CLOUD", "DRAIN", "POWERED_DOWN"}),
        ("IDLE+CLOUD+DRAIN+INVALID_REG", True, {"IDLE", "CLOUD", "DRAIN", "INVALID_REG"}),
    ],
)
def test_state_flags_from_captured_lines(state, reason, flags):
    node = parse_show_node_line(_captured(state, reason))
    assert node.state_flags == frozenset(flags)
    assert node.state == state.split("+")[0]
    assert (node.reason is not None) == reason


def test_captured_powered_down_line_fields():
    node = parse_show_node_line(_captured("IDLE+CLOUD+POWERED_DOWN", False))
    assert node.cloud and node.powered_down and node.has("IDLE", "CLOUD")
    assert node.cpus in (2, 4) and node.real_memory in (500, 1000)
    assert node.node_addr == node.name == node.node_hostname
    assert node.boot_time is None and node.last_busy is None and node.slurmd_start_time is None
    assert node.reason is None
    assert node.raw["CfgTRES"].startswith("cpu=")
    assert node.raw["AllocTRES"] == ""


def test_captured_running_line_fields():
    node = parse_show_node_line(_captured("MIXED+CLOUD"))
    assert node.name == "t-1"
    assert node.features == ("cloud", "small") == node.active_features
    assert node.partitions == ("p", "q")
    assert node.gres == "gpu:2"
    assert node.node_addr == "127.0.0.1" and node.node_hostname == "localhost"
    assert node.raw["OS"].startswith("Linux ") and "PREEMPT_DYNAMIC" in node.raw["OS"]
    assert node.raw["RealMemory"] == "1000"  # not swallowed by OS's free text
    assert node.boot_time and node.last_busy
    assert isinstance(node.port, int)


def test_captured_reason_with_spaces_colons_and_equals():
    node = parse_show_node_line(_captured("DOWN+CLOUD+POWERED_DOWN", True))
    assert node.reason == "Capacity failure: Standard_F2 (quota=0) in eastus [bucket b-1]"
    assert node.reason_user == "root" and node.reason_time.startswith("20")


@pytest.mark.parametrize("version,private_data,hidden", [
    ("22.05.8", "cloud", False),
    ("22.05.8", "none", True),
    ("22.05.8", "jobs,cloud", False),
    ("23.11.10", "none", True),  # not tried: taken to hide them, as 22.05 does
    ("24.11.5", "none", False),
    ("25.05.0", "none", False),
    (None, "none", True),
    ("garbage", "none", True),
])
def test_cloud_nodes_hidden_by_version_and_private_data(version, private_data, hidden):
    config = {"PrivateData": private_data} | ({"SLURM_VERSION": version} if version else {})
    assert cloud_nodes_hidden(config) is hidden


@pytest.mark.parametrize(
    "reason",
    [
        "simple",
        "two  spaces",
        "Key=Value inside",
        "State=IDLE looks like a key",
        "NodeName=x Partitions=y Weight=3",
        "ends with brackets [x]",
        "ünïcode ✓",
    ],
)
def test_reason_round_trip_in_synthetic_line(reason):
    base = _captured("IDLE+CLOUD+POWERED_DOWN", False).replace("State=IDLE+", "State=DOWN+")
    node = parse_show_node_line(f"{base} Reason={reason} [slurm@2024-01-01T00:00:00]")
    assert node.reason == reason
    assert node.reason_user == "slurm" and node.reason_time == "2024-01-01T00:00:00"
    assert node.state_flags == {"DOWN", "CLOUD", "POWERED_DOWN"}


def test_unknown_future_keys_still_split():
    node = parse_show_node_line("NodeName=a State=IDLE+CLOUD NewKey=1 Partitions=p Reason=x y [u@t] Later=2")
    assert node.raw["NewKey"] == "1" and node.partitions == ("p",)
    # inside free text only keys Slurm really prints end the value: an unknown one stays text
    assert node.raw["Reason"] == "x y [u@t] Later=2" and "Later" not in node.raw


def test_whole_output_and_empty():
    nodes = parse_show_node_output("\n".join(CAPTURED[:3]) + "\n")
    assert set(nodes) == {parse_show_node_line(ln).name for ln in CAPTURED[:3]}
    assert parse_show_node_output("No nodes in the system\n") == {}
    with pytest.raises(SlurmError):
        parse_show_node_line("garbage without a name")


# The parser before it was made fast (one regex match and a few dict look-ups per candidate
# key): the reference the fast one must agree with on every line.
_REF_KEY_RE = re.compile(r"(?:^|(?<= ))([A-Za-z][A-Za-z0-9_]*)=")


def _reference_split_pairs(line: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    key = None
    start = 0
    for m in _REF_KEY_RE.finditer(line):
        cand = m.group(1)
        if key is not None:
            if key in FREE_TEXT_NODE_KEYS and (cand not in KNOWN_NODE_KEYS or cand in pairs or cand == key):
                continue
            if key not in FREE_TEXT_NODE_KEYS and cand not in KNOWN_NODE_KEYS and not cand[0].isupper():
                continue
            pairs[key] = line[start : m.start()].strip()
        key = cand
        start = m.end()
    if key is not None:
        pairs[key] = line[start:].strip()
    return pairs


_KEYS = sorted(KNOWN_NODE_KEYS)
_word = st.sampled_from(_KEYS + ["NewKey", "Later", "lower", "x", "cpu", "Foo_1"])
_value = st.one_of(
    st.sampled_from(["", "1", "(null)", "N/A", "cpu=2,mem=3G", "a b", "Linux 6.1 #1 SMP", "[u@t]", "=", " "]),
    st.text(alphabet=" =_aZ09,:[]@\t", max_size=12),
)
_piece = st.one_of(
    st.tuples(_word, _value).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.sampled_from(["", " ", "plain", "=x", "9Key=1"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_piece, max_size=12), st.sampled_from([" ", "  ", " \t"]))
def test_fast_split_agrees_with_reference(pieces, sep):
    line = sep.join(["NodeName=n-1", *pieces]).strip()
    assert list(_split_pairs(line).items()) == list(_reference_split_pairs(line).items())


def test_fast_split_agrees_with_reference_on_captured_lines():
    for ln in CAPTURED:
        assert list(_split_pairs(ln).items()) == list(_reference_split_pairs(ln).items())
        for extra in (" Reason=quota: NodeName=x State=IDLE [a@b] Foo=1 Reason=y", " Comment=a b Extra=c=d OS=x"):
            assert list(_split_pairs(ln + extra).items()) == list(_reference_split_pairs(ln + extra).items())


def test_show_config_parse():
    cfg = parse_show_config_output(
        "Configuration data as of 2024-01-01T00:00:00\nSuspendTime             = 5 sec\nPrivateData             = cloud\n"
    )
    assert cfg == {"SuspendTime": "5 sec", "PrivateData": "cloud"}


# -- validation (nothing reaches scontrol) ---------------------------------------------------


NOWHERE = Slurm(bin_dir="/nonexistent-bin", slurm_conf="/nonexistent-etc/slurm.conf")  # any real call would fail with "not found"


@pytest.mark.parametrize("name", ["", "a b", "a=b", "a,b", "a\nb", "t-[1-2]", "-x", None, "x;rm"])
def test_bad_node_names_rejected(name):
    with pytest.raises(SlurmError, match="invalid Slurm node name"):
        NOWHERE.update_nodes(["ok-1", name], state="RESUME")


@pytest.mark.parametrize("reason", ["two\nlines", "tab\there", "", "   ", "x" * 2000, "bell\a"])
def test_bad_reasons_rejected(reason):
    with pytest.raises(SlurmError, match="reason"):
        NOWHERE.update_nodes(["a-1"], state="DOWN", reason=reason)


@pytest.mark.parametrize("state", ["DOWN Reason=x", "IDLE,x", "", "power-up"])
def test_bad_states_rejected(state):
    with pytest.raises(SlurmError, match="state"):
        NOWHERE.update_nodes(["a-1"], state=state, reason="r")


def test_other_validation():
    with pytest.raises(SlurmError, match="needs a reason"):
        NOWHERE.update_nodes(["a-1"], state="DOWN")
    with pytest.raises(SlurmError, match="2 values for 1 nodes"):
        NOWHERE.update_nodes(["a-1"], node_addr=["1.2.3.4", "1.2.3.5"])
    with pytest.raises(SlurmError, match="NodeAddr"):
        NOWHERE.update_nodes(["a-1"], node_addr=["1.2.3.4,5"])
    with pytest.raises(SlurmError, match="nothing to change"):
        NOWHERE.update_nodes(["a-1"])
    assert NOWHERE.update_nodes([], state="RESUME") == 0
    with pytest.raises(SlurmError, match="absolute"):
        Slurm(bin_dir="usr/bin")
    assert NOWHERE.calls == 0


def test_missing_binary_is_one_line_error():
    with pytest.raises(SlurmError) as err:
        NOWHERE.show_nodes()
    assert "/nonexistent-bin/scontrol not found" in str(err.value) and "\n" not in str(err.value)
    assert NOWHERE.ping() is False


def test_chunks_stay_under_argv_limit():
    names = [f"node-with-a-long-name-{i:06d}" for i in range(20000)]
    addrs = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(20000)]
    chunks = list(NOWHERE._chunks(names, addrs, names, ["State=RESUME"]))
    assert len(chunks) > 1
    assert [n for c in chunks for n in c[0]] == names
    assert [a for c in chunks for a in c[1]] == addrs
    for c_names, c_addrs, c_hosts in chunks:
        size = sum(len(x) + 1 for x in c_names) + sum(len(x) + 1 for x in c_addrs) + sum(len(x) + 1 for x in c_hosts)
        assert size < MAX_ARGV_BYTES
    small = list(NOWHERE._chunks(names[:100], None, None, []))
    assert len(small) == 1


def test_add_node_ports_rewrites_only_portless_nodename_lines():
    text = (
        "# generated\n"
        "NodeName=DEFAULT State=CLOUD\n"
        "NodeName=hpc-[1-3] CPUs=4 State=CLOUD Feature=cloud  # comment\n"
        "NodeName=x-1 Port=9999 CPUs=1\n"
        "nodename=gpu-[1-2] \\\n  Gres=gpu:2\n"
        "PartitionName=hpc Nodes=hpc-[1-3]\n"
    )
    ports = {}
    exp = {"hpc-[1-3]": ["hpc-1", "hpc-2", "hpc-3"], "gpu-[1-2]": ["gpu-1", "gpu-2"]}
    out = add_node_ports(text, exp.__getitem__, lambda n: ports.setdefault(n, 20000 + len(ports)))
    lines = out.splitlines()
    assert lines[1] == "NodeName=DEFAULT State=CLOUD"
    assert lines[2] == "NodeName=hpc-[1-3] CPUs=4 State=CLOUD Feature=cloud Port=[20000-20002]"
    assert lines[3] == "NodeName=x-1 Port=9999 CPUs=1"
    assert lines[4] == "nodename=gpu-[1-2]   Gres=gpu:2 Port=[20003-20004]"
    assert lines[5] == "PartitionName=hpc Nodes=hpc-[1-3]"
    # a stable map that is no longer contiguous still pairs up positionally
    ports2 = {"hpc-1": 5, "hpc-2": 9, "hpc-3": 6}
    out2 = add_node_ports("NodeName=hpc-[1-3] CPUs=1\n", exp.__getitem__, ports2.__getitem__)
    assert out2 == "NodeName=hpc-[1-3] CPUs=1 Port=[5,9,6]\n"


# -- hook wrappers -----------------------------------------------------------------------------


def test_hook_wrappers_run_with_empty_environment(tmp_path):
    """Installed wrappers exec <python> -m hpc_bridge <action> --config <path> HOSTLIST with no
    PATH/HOME; the 'python' here is a recorder so the wrapper itself is what is tested."""
    rec = tmp_path / "argv.txt"
    fake_python = tmp_path / "python"
    fake_python.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"open({str(rec)!r}, 'a').write(repr([sys.argv[1:], os.environ.get('PYTHONPATH'), "
        "sorted(os.environ)]) + '\\n')\n"
    )
    fake_python.chmod(0o755)
    dest = tmp_path / "hooks"
    subprocess.run(
        [sys.executable, str(REPO / "scripts/hooks/install"), "--dest", str(dest), "--python", str(fake_python),
         "--config", "/etc/hb/config.toml", "--pythonpath", "/src/hb"],
        check=True, capture_output=True,
    )
    for action in ("resume", "suspend", "resume-fail"):
        p = subprocess.run([str(dest / action), "hpc-[1-2],gpu-3"], env={"SLURM_CONF": "/x/slurm.conf"}, capture_output=True)
        assert p.returncode == 0, p.stderr
    subprocess.run([str(dest / "resume"), "a-1"], env={"HPC_BRIDGE_CONFIG": "/other.toml"}, check=True)
    got = [eval(line) for line in rec.read_text().splitlines()]  # noqa: S307 - our own repr
    assert got[0][0] == ["-m", "hpc_bridge", "resume", "--config", "/etc/hb/config.toml", "hpc-[1-2],gpu-3"]
    assert got[1][0][2] == "suspend" and got[2][0][2] == "resume-fail"
    assert got[0][1] == "/src/hb"
    assert "HOME" not in got[0][2]
    assert got[3][0][4] == "/other.toml"
    # uninstalled templates fall back to fixed defaults, still without PATH
    text = (REPO / "scripts/hooks/resume").read_text()
    assert "@HPC_BRIDGE_PYTHON@" in text and "/usr/bin/python3" in text


# -- against a real slurmctld --------------------------------------------------------------------

NODES = (
    "NodeName=t-[1-2] CPUs=4 RealMemory=1000 State=CLOUD Feature=cloud\n"
    "NodeName=u-1 CPUs=2 RealMemory=500 State=CLOUD Feature=cloud,other\n"
    "PartitionName=cl Nodes=t-[1-2],u-1 Default=YES MaxTime=INFINITE State=UP\n"
)


@pytest.fixture
def cluster(slurm_cluster_factory):
    return slurm_cluster_factory(nodes_conf_text=NODES)


def test_show_nodes_powered_down_cloud_nodes(cluster):
    s = cluster.slurm()
    nodes = s.show_nodes()
    assert s.calls == 1
    assert set(nodes) == {"t-1", "t-2", "u-1"}
    for n in nodes.values():
        assert n.state_flags == {"IDLE", "CLOUD", "POWERED_DOWN"}
        assert n.state == "IDLE" and n.reason is None
        assert n.port == cluster.node_port(n.name)
    assert nodes["u-1"].features == ("cloud", "other") and nodes["u-1"].cpus == 2
    assert nodes["t-1"].partitions == ("cl",) and nodes["t-1"].real_memory == 1000
    assert len({n.port for n in nodes.values()}) == 3  # one port per node
    assert s.ping()
    assert s.show_config()["SuspendTime"] == "5 sec"
    # 22.05 hides powered-down cloud nodes unless PrivateData=cloud; 24.11 lists them anyway
    # and reports PrivateData=none for the same slurm.conf line (README: Slurm releases)
    config = s.show_config()
    assert config["PrivateData"] == ("none" if cluster.release.version_tuple >= (24, 11) else "cloud")
    assert slurm_version(config) == cluster.release.version_tuple
    assert not cloud_nodes_hidden(config)


def test_update_down_with_reason_and_back_batched(cluster):
    s = cluster.slurm()
    reason = "Capacity failure: Standard_F2s (quota=0) in [eastus] x=y"
    assert s.update_nodes(["t-2", "t-1", "u-1"], state="DOWN", reason=reason) == 1
    nodes = s.show_nodes()
    for n in nodes.values():
        assert n.state_flags == {"DOWN", "CLOUD", "POWERED_DOWN"}
        assert n.reason == reason and n.reason_user == "root"
    assert s.update_nodes(["t-1", "t-2", "u-1"], state="RESUME") == 1
    for n in s.show_nodes().values():
        # 22.05 adds NOT_RESPONDING here (never-booted node): assert on the flags that matter
        assert n.has("IDLE", "CLOUD", "POWERED_DOWN") and "DOWN" not in n.state_flags
        # 24.11 keeps the reason on the idle~ node, 22.05 clears it (README: Slurm releases)
        assert n.reason == (reason if cluster.release.version_tuple >= (24, 11) else None)
    assert s.calls == 4


def test_unknown_node_fails_the_whole_call(cluster):
    s = cluster.slurm()
    with pytest.raises(SlurmError) as err:
        s.update_nodes(["t-1", "nope-1"], state="DOWN", reason="x")
    msg = str(err.value)
    assert "Invalid node name" in msg and "scontrol update" in msg and "\n" not in msg
    assert s.show_nodes()["t-1"].state == "IDLE"  # Slurm applied nothing


def test_set_and_reset_addresses(cluster):
    s = cluster.slurm()
    assert s.set_addresses({"t-1": ("127.0.0.11", "h-one"), "t-2": ("127.0.0.12", "h-two"), "u-1": ("127.0.0.13", None)}) == 2
    nodes = s.show_nodes()
    assert (nodes["t-1"].node_addr, nodes["t-1"].node_hostname) == ("127.0.0.11", "h-one")
    assert (nodes["t-2"].node_addr, nodes["t-2"].node_hostname) == ("127.0.0.12", "h-two")
    assert (nodes["u-1"].node_addr, nodes["u-1"].node_hostname) == ("127.0.0.13", "u-1")
    assert s.reset_addresses(["t-1", "t-2", "u-1"]) == 1
    assert all(n.node_addr == n.name == n.node_hostname for n in s.show_nodes().values())


def test_ping_false_when_controller_gone(cluster):
    s = cluster.slurm(timeout=2)
    assert s.ping()
    cluster.stop()
    assert s.ping() is False
    with pytest.raises(SlurmError) as err:  # scontrol retries for ~10 s; our timeout cuts it
        s.show_nodes()
    assert "\n" not in str(err.value)


def test_a_slurmd_for_a_queued_power_up_starts_once_slurmctld_issued_it(slurm_cluster_factory):
    """`scontrol update State=POWER_UP` only queues a power-up: slurmctld issues it (POWERING_UP,
    ResumeProgram) at its next power-save pass. The harness starts a node's slurmd after that, as
    a real VM boots after ResumeProgram ran; a slurmd started before may boot before the request
    and then never register (next test). A slow pass (every 3 s) keeps the window wide open."""
    c = slurm_cluster_factory(nodes_conf_text=NODES, start=False,
                              slurmctld_parameters="idle_on_node_suspend,power_save_interval=3")
    calls = c.workdir / "resume-calls"
    record = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    c.resume_program = c.make_program("record-resume", [c.python, "-c", record, str(calls)])
    c.suspend_program = "/bin/true"
    c.start()
    c.scontrol("update", "NodeName=t-1", "NodeAddr=127.0.0.1", "NodeHostName=localhost")
    c.scontrol("update", "NodeName=t-1", "State=POWER_UP")
    c.start_slurmd("t-1", wait=True)
    # slurmctld powered it up (POWER_UP cleared, ResumeProgram run), then the slurmd registered; a
    # slurmd that registers before the pass leaves IDLE+CLOUD+POWER_UP and no ResumeProgram call
    assert c.node_flags("t-1") == {"IDLE", "CLOUD"}
    c.wait_for(lambda: calls.exists(), 10, what="ResumeProgram run")
    assert calls.read_text().split() == ["t-1"]


def test_a_slurmd_booted_before_its_power_up_never_registers_and_the_wait_says_why(slurm_cluster_factory):
    """slurmctld ignores the registration of a slurmd whose boot time is older than the node's
    power-up request ("Still waiting for boot", at debug level only) and does not ask the node
    again before ResumeTimeout: why slurmds started before the request sometimes never came up.
    A registration wait that times out shows slurmctld's view, its log lines and the slurmd's."""
    c = slurm_cluster_factory(nodes_conf_text=NODES, resume_program="/bin/true", suspend_program="/bin/true")
    c.scontrol("update", "NodeName=t-1", "NodeAddr=127.0.0.1", "NodeHostName=localhost")
    c.scontrol("update", "NodeName=t-1", "State=POWER_UP")
    c.wait_for(lambda: "POWERING_UP" in c.node_flags("t-1"), 30, what="power-up issued")
    c.start_slurmd("t-1", fresh_boot=False)  # reports the machine's boot, long before the request
    with pytest.raises(TimeoutError) as err:
        c.wait_registered(["t-1"], timeout=5)
    report = str(err.value)
    assert "Still waiting for boot of node t-1" in report and "POWERING_UP" in report, report
    assert "slurmd running" in report and "slurmd-t-1.log" in report, report


def _pids_with(marker: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                    out.append(int(entry))
            except OSError:
                pass
    return out


def test_power_saving_loop_runs_jobs_on_cloud_nodes(slurm_cluster_factory):
    """sbatch -N2 on powered-down cloud nodes: resume (one batched call, no PATH in env) ->
    slurmds via sim-boot-hook -> job completes -> SuspendTime -> idle~ again, slurmds gone."""
    c = slurm_cluster_factory(nodes_conf_text=NODES, start=False, suspend_time=3, suspend_timeout=3)
    c.use_test_hooks()
    c.start()
    out = c.workdir / "job.out"
    job = c.sbatch("-N2", "-w", "t-[1-2]", "-o", str(out), "--wrap", "srun hostname")
    c.wait_for(lambda: c.job_state(job) == "COMPLETED", 60, what=f"job {job} COMPLETED")
    assert len(out.read_text().split()) == 2  # srun ran hostname on both nodes
    calls = [line for line in (c.run_dir / "hook-calls.log").read_text().splitlines()]
    assert len(calls) == 1 and '"resume"' in calls[0] and '"t-[1-2]"' in calls[0]
    assert '"PATH"' not in calls[0]  # hooks get no PATH
    # SLURM_RESUME_FILE as this release writes it (23.02 changed the format) reads the same
    resume_file = json.loads(json.loads(calls[0])["resume_file"])
    new_format = c.release.version_tuple >= (23, 2)
    assert ("all_nodes_resume" if new_format else "all_nodes") in resume_file, resume_file
    assert ("nodes_resume" if new_format else "nodes") in resume_file["jobs"][0], resume_file
    assert parse_resume_file(json.dumps(resume_file)) == [Job(str(job), ("t-1", "t-2"), "cl" if new_format else None)]
    c.wait_for(
        lambda: all(c.node_flags(n) == {"IDLE", "CLOUD", "POWERED_DOWN"} for n in ("t-1", "t-2")),
        30,
        what="nodes back to idle~",
    )
    assert "suspend" in (c.run_dir / "hook-calls.log").read_text()
    c.wait_for(lambda: not list(c.run_dir.glob("slurmd-t-*.pid")), 10, what="boot-hook pid files removed")
    assert c.node_flags("u-1") == {"IDLE", "CLOUD", "POWERED_DOWN"}


def test_stop_kills_running_jobs_and_daemons(slurm_cluster_factory):
    c = slurm_cluster_factory(nodes_conf_text=NODES, start=False)
    c.use_test_hooks()
    c.start()
    job = c.sbatch("-N1", "-w", "u-1", "-o", "/dev/null", "--wrap", "sleep 300")
    c.wait_for(lambda: c.job_state(job) == "RUNNING", 60, what="job running")
    slurmd_pids = [int(p.read_text()) for p in c.run_dir.glob("slurmd-*.pid")]
    assert slurmd_pids
    ctld = c.status()["slurmctld"]
    munged = c.status()["munged"]
    sleep_pids = c.wait_for(lambda: [p for p in _pids_with("sleep") if _has_env(p, f"SLURM_CONF={c.conf_path}")], 10, what="job's sleep")
    c.stop()
    for pid in [*slurmd_pids, ctld, munged, *sleep_pids]:
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _has_env(pid: int, item: str) -> bool:
    try:
        return item.encode() in open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return False


def test_no_slurm_conf_is_refused_before_dns(monkeypatch):
    """Without a config file scontrol would look the controller up in DNS: refuse instead."""
    import hpc_bridge.slurm as slurm_mod

    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setattr(slurm_mod, "DEFAULT_SLURM_CONF", "/nonexistent-etc/slurm.conf")
    with pytest.raises(SlurmError, match="no slurm.conf"):
        Slurm().show_nodes()
