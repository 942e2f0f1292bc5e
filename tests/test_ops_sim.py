"""The operator commands end to end against the simulator over HTTP (no Slurm here; the
real-slurmctld cases are in test_ops_slurm.py)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hpc_bridge.cli import main
from hpc_bridge.sim.server import SimServer


def write_config(tmp_path: Path, sim: SimServer, **extra: str) -> Path:
    pw = tmp_path / "password"
    pw.write_text(sim.password)
    pw.chmod(0o600)
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir(exist_ok=True)
    text = (
        f'[cluster]\nurl = "{sim.url}"\nname = "{sim.cluster_name}"\nusername = "{sim.username}"\n'
        f'password_file = "{pw}"\nretries = 1\nretry_budget = 5.0\n'
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\nlog_dir = "{tmp_path / "log"}"\n'
        f'[slurm]\nconf_dir = "{extra.get("conf_dir", conf_dir)}"\n'
        + (f'bin_dir = "{extra["bin_dir"]}"\n' if "bin_dir" in extra else "") +
        f'[resume]\nresume_timeout = {extra.get("resume_timeout", 900)}\n'
    )
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture
def sim():
    with SimServer() as s:
        s.start()
        yield s


@pytest.fixture
def config(tmp_path, sim, monkeypatch):
    monkeypatch.delenv("HPC_BRIDGE_PASSWORD", raising=False)
    monkeypatch.delenv("SLURM_CONF", raising=False)
    return write_config(tmp_path, sim)


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- scale + nodes


def test_scale_wait_then_nodes_without_slurm(capsys, config, sim):
    rc, out, err = run(capsys, "--config", str(config), "scale", "htc", "--nodes", "2", "--wait", "--poll", "0.2",
                       "--timeout", "60")
    assert rc == 0, err
    # htc is managed (the default: all nodearrays): its scaled nodes are not Slurm's, and it says so
    assert err.count("warning: nodearray htc is managed by hpc-bridge") == 1
    lines = out.splitlines()
    assert lines[0].startswith("scale htc to 2 nodes: added 2 node(s), operation ")
    scale_log = (Path(tomllib.loads(config.read_text())["paths"]["log_dir"]) / "scale.log").read_text()
    assert "scale htc to 2 nodes: added 2 node(s), operation" in scale_log and "is managed" in scale_log
    op_id = lines[0].rsplit(" ", 1)[1]
    assert any("2/2 Ready" in line for line in lines)
    assert "htc-1" in out and "htc-2" in out

    # scale again to the same total: nothing added
    rc, out, _ = run(capsys, "--config", str(config), "--json", "scale", "htc", "--nodes", "2")
    assert rc == 0 and json.loads(out)["added"] == 0

    # operations shows the scale operation's nodes
    rc, out, _ = run(capsys, "--config", str(config), "operations", op_id)
    assert rc == 0 and "htc-1" in out
    # the list: status and nodes from hpc-bridge's own records where it has one, by operation id
    rc, out, _ = run(capsys, "--config", str(config), "operations")
    assert rc == 0 and out.splitlines()[0].split() == ["OPERATION", "ACTION", "STARTED", "STATUS", "NODES"]
    assert f"{op_id} " in out and "not hpc-bridge's" in out  # scale's operation is not in the state file
    from hpc_bridge.state import StateStore
    from hpc_bridge.state_records import DONE

    paths = tomllib.loads(config.read_text())["paths"]
    with StateStore(Path(paths["state_dir"]) / "state.json").transaction() as state:
        rec = state.begin("create", ["htc-1", "htc-2"], "req-1", now=1.0, deadline=2.0)
        rec.accept(op_id)
        rec.close(DONE, 2.0, "all nodes Ready")
    rc, out, _ = run(capsys, "--config", str(config), "operations")
    (line,) = [l for l in out.splitlines() if l.startswith(op_id)]
    assert line.split()[-2:] == ["done", "htc-[1-2]"], line
    rc, out, _ = run(capsys, "--config", str(config), "--json", "operations", op_id)
    assert json.loads(out)["hpcBridge"] == {"status": "done", "requestId": "req-1", "nodes": ["htc-1", "htc-2"],
                                            "message": "all nodes Ready"}

    # nodes: no slurm.conf -> cloud columns only, one warning line, exit 0
    rc, out, err = run(capsys, "--config", str(config), "nodes")
    assert rc == 0
    assert err.count("warning:") == 1 and "Slurm not reachable" in err
    header = out.splitlines()[0].split()
    assert header[:3] == ["NODE", "CLOUD", "TARGET"] and "SLURM" not in header
    rc, out, _ = run(capsys, "--config", str(config), "--json", "nodes", "htc-[2-3]")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["htc-2", "htc-3"]
    assert rows[0]["status"] == "Ready" and rows[0]["privateIp"] and rows[0]["machineType"] == "Standard_F2s_v2"
    assert rows[1]["status"] is None  # named but absent
    rc, out, _ = run(capsys, "--config", str(config), "--json", "nodes", "--state", "Ready")
    assert {r["name"] for r in json.loads(out)} == {"htc-1", "htc-2"}


def test_scale_wait_reports_failed_nodes(capsys, config, sim):
    sim.set_faults(boot_failure_rate=1.0)
    rc, out, err = run(capsys, "--config", str(config), "scale", "gpu", "--cores", "24", "--wait", "--poll", "0.2",
                       "--timeout", "60")
    assert rc == 1
    assert "Failed" in out and "1 node(s) failed" in err


def test_scale_errors_are_one_line(capsys, config):
    rc, _, err = run(capsys, "--config", str(config), "scale", "nosuch", "--nodes", "1")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and err.startswith("hpc-bridge scale: error:")
    rc, _, err = run(capsys, "--config", str(config), "scale", "htc")
    assert rc == 2  # argparse: one of --nodes/--cores required


# --------------------------------------------------------------------------- usage


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def test_usage_table_csv_json_svg(capsys, config, sim, tmp_path):
    rc, _, err = run(capsys, "--config", str(config), "scale", "hpc", "--nodes", "2")
    assert rc == 0, err
    rc, _, err = run(capsys, "--config", str(config), "scale", "htc", "--nodes", "3")
    assert rc == 0, err
    sim.advance(2 * 86400)
    rc, _, err = run(capsys, "--config", str(config), "scale", "gpu", "--nodes", "1")
    sim.advance(86400)
    now = sim.now()
    window = ["--from", _iso(now - 4 * 86400), "--to", _iso(now)]

    rc, out, err = run(capsys, "--config", str(config), "usage", *window)
    assert rc == 0, err
    table = out.splitlines()
    assert table[1].split()[:4] == ["NODEARRAY", "VM", "SIZE", "CORE-HOURS"]
    hpc = next(line for line in table if line.startswith("hpc "))
    # 2 nodes x 120 cores x ~3 days
    assert 2 * 120 * 70 < float(hpc.split()[2]) < 2 * 120 * 73
    assert table[-1].startswith("TOTAL")

    rc, out, _ = run(capsys, "--config", str(config), "usage", *window, "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["nodearray"] for r in rows} == {"hpc", "htc", "gpu"}
    assert len({r["start"] for r in rows}) >= 4  # daily intervals

    rc, out, _ = run(capsys, "--config", str(config), "--json", "usage", *window, "--granularity", "total")
    data = json.loads(out)
    assert len({i["start"] for i in data["intervals"]}) == 1
    assert data["total"]["cost"] == pytest.approx(sum(r["cost"] for r in data["summary"]), abs=0.05)

    svg = tmp_path / "cost.svg"
    rc, _, err = run(capsys, "--config", str(config), "usage", *window, "--svg", str(svg))
    assert rc == 0 and f"wrote {svg}" in err
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    bars = [r for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert bars and all(float(r.get("height")) > 0 for r in bars)
    assert any("gpu / Standard_NC24ads_A100_v4" in (t.text or "") for t in root.iter(f"{ns}text"))
    hours_svg = tmp_path / "hours.svg"
    rc, _, _ = run(capsys, "--config", str(config), "usage", *window, "--granularity", "hourly", "--metric", "hours",
                   "--svg", str(hours_svg))
    assert rc == 0
    ET.parse(hours_svg)
    _render_in_browser(svg, tmp_path / "cost.png")


def _render_in_browser(svg: Path, png: Path) -> None:
    """Render with headless chromium when it is installed: the chart must load in a browser."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser or os.environ.get("HPC_BRIDGE_NO_BROWSER"):
        return
    try:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
                        "--window-size=1000,500", svg.as_uri()], capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("chromium did not answer within 60 s")
    assert png.exists() and png.stat().st_size > 2000


def test_usage_bad_options(capsys, config):
    rc, _, err = run(capsys, "--config", str(config), "usage", "--from", "2024-05-01")
    assert rc == 2 and "--from and --to go together" in err
    rc, _, err = run(capsys, "--config", str(config), "usage", "--timeframe", "custom")
    assert rc == 2 and "needs --from and --to" in err


# --------------------------------------------------------------------------- install-hooks + doctor


def test_install_hooks_print_write_check(capsys, config, tmp_path):
    conf_dir = tmp_path / "etc"
    hooks, units = tmp_path / "hooks", tmp_path / "systemd"
    common = ["--config", str(config), "install-hooks", "--slurm-conf-dir", str(conf_dir), "--hooks-dir", str(hooks),
              "--systemd-dir", str(units)]
    rc, out, _ = run(capsys, *common)
    assert rc == 0 and "PrivateData=cloud" in out and "nothing written" in out
    assert "ResumeTimeout=" not in out and "SuspendTime=" not in out  # set per generated partition
    assert not hooks.exists()

    rc, out, _ = run(capsys, *common, "--write", "--logrotate-dir", str(tmp_path / "logrotate.d"))
    assert rc == 0
    log_dir = tomllib.loads(config.read_text())["paths"]["log_dir"]
    assert f'"{log_dir}/*.log" {{' in (tmp_path / "logrotate.d" / "hpc-bridge").read_text()
    assert (config.parent / "config.example.toml").read_text().startswith("# hpc-bridge configuration")
    for name in ("resume", "suspend", "resume-fail"):
        assert os.access(hooks / name, os.X_OK)
    assert (units / "hpc-bridge-repair.timer").exists() and (units / "hpc-bridge-repair.service").exists()
    include = conf_dir / "hpc-bridge.conf"
    assert f"include {include}" in out

    # a slurm.conf without the include: --check lists everything, exit 1
    (conf_dir / "slurm.conf").write_text("ClusterName=x\nSlurmctldHost=localhost\n")
    rc, out, _ = run(capsys, *common, "--check")
    assert rc == 1 and "problem: ResumeProgram is not set" in out and "fix: PrivateData=cloud" in out
    # with the include (and the generated partitions.conf present): nothing missing
    (conf_dir / "slurm.conf").write_text(f"ClusterName=x\nSlurmctldHost=localhost\ninclude {include}\n")
    (conf_dir / "partitions.conf").write_text("")
    rc, out, _ = run(capsys, *common, "--check")
    assert rc == 0, out
    rc, out, _ = run(capsys, "--json", *common, "--check")
    assert json.loads(out)["ok"] is True

    # the written wrapper runs hpc-bridge with an empty environment, like slurmctld does
    proc = subprocess.run([str(hooks / "resume"), "--help"], env={}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: hpc-bridge resume " in proc.stdout


def test_install_hooks_check_without_slurm_conf(capsys, config, tmp_path):
    rc, _, err = run(capsys, "--config", str(config), "install-hooks", "--slurm-conf-dir", str(tmp_path / "none"),
                     "--check")
    assert rc == 2 and "not found" in err


def test_doctor_against_simulator_without_slurm(capsys, config, tmp_path):
    rc, out, _ = run(capsys, "--config", str(config), "doctor")
    assert rc == 1
    lines = out.splitlines()
    for name in ("config valid", "password file private", "API reachable", "TLS verified", "credentials accepted",
                 "cluster found"):
        assert any(line.startswith(f"[  ok] {name}") for line in lines), out
    assert "[FAIL] slurm.conf readable" in out and "[FAIL] generated files up to date" in out
    assert lines[-1].endswith("check(s) failed")
    rc, out, _ = run(capsys, "--config", str(config), "--json", "doctor")
    data = json.loads(out)
    assert data["ok"] is False and all(c["fix"] for c in data["checks"] if c["result"] == "fail")


def test_doctor_wrong_password_and_cluster(capsys, config, sim, tmp_path):
    pw = tmp_path / "password"
    pw.write_text("wrong")
    rc, out, _ = run(capsys, "--config", str(config), "doctor")
    assert rc == 1 and "[FAIL] credentials accepted" in out
    pw.chmod(0o644)
    rc, out, _ = run(capsys, "--config", str(config), "doctor")
    assert "[FAIL] password file private" in out and "chmod 600" in out
    pw.write_text(sim.password)
    pw.chmod(0o600)
    config.write_text(config.read_text().replace(f'name = "{sim.cluster_name}"', 'name = "nosuch"'))
    rc, out, _ = run(capsys, "--config", str(config), "doctor")
    assert "[FAIL] cluster found" in out and "[cluster] name" in out
    config.write_text(config.read_text().replace(sim.url, "http://127.0.0.1:9"))
    rc, out, _ = run(capsys, "--config", str(config), "doctor")
    assert "[FAIL] API reachable" in out


def test_doctor_bad_config(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[cluster]\nurll = "x"\n')
    rc, out, _ = run(capsys, "--config", str(bad), "doctor")
    assert rc == 1 and out.startswith("[FAIL] config valid") and "unknown key" in out


def test_help_has_examples(capsys):
    for cmd in ("nodes", "usage", "scale", "install-hooks", "doctor"):
        rc, out, _ = run(capsys, cmd, "--help")
        assert rc == 0 and "example:\n  hpc-bridge " + cmd in out
