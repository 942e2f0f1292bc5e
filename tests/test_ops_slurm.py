"""install-hooks, nodes and doctor against a REAL slurmctld (tests/slurmcluster.py) and the
simulator: the slurm.conf includes the file `install-hooks --write` generated, which includes
the `partitions` output; slurmctld must accept it, `--check` must find nothing missing, `nodes`
must show Slurm's view, and `doctor` must pass every check."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpc_bridge import doctor
from hpc_bridge.cli import main
from hpc_bridge.sim.server import SimServer
from slurmcluster import SiteCluster
from test_ops_sim import write_config


def _open_traverse(path: Path) -> None:
    # munged refuses a socket below a directory others cannot traverse (pytest makes them 0700)
    for d in (path, *path.parents):
        if str(d).startswith("/tmp/") and not d.stat().st_mode & 0o001:
            d.chmod(d.stat().st_mode | 0o111)


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_install_nodes_doctor_with_real_slurmctld(capsys, slurm_cluster_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.delenv("HPC_BRIDGE_PASSWORD", raising=False)
    with SimServer() as sim:
        sim.start()
        # a site's slurm.conf with none of hpc-bridge's keys; the include file comes last
        c = slurm_cluster_factory(start=False, cluster_class=SiteCluster)
        c.etc.mkdir(parents=True, exist_ok=True)
        # hpc-bridge runs here, in this process: it reaches the cluster's release through its
        # client wrappers (the host's own binaries, for the host's release)
        config = write_config(tmp_path, sim, conf_dir=str(c.etc), bin_dir=c.bin_dir)
        hooks, units = tmp_path / "hooks", tmp_path / "systemd"
        cfg = ["--config", str(config)]

        rc, out, err = run(capsys, *cfg, "partitions")
        assert rc == 0, err
        rc, out, err = run(capsys, *cfg, "install-hooks", "--slurm-conf-dir", str(c.etc), "--write",
                           "--hooks-dir", str(hooks), "--systemd-dir", str(units), "--user", "root")
        assert rc == 0, err
        (units / "timers.target.wants").mkdir()
        (units / "timers.target.wants" / "hpc-bridge-repair.timer").symlink_to(units / "hpc-bridge-repair.timer")

        c.workdir.mkdir(parents=True, exist_ok=True)
        _open_traverse(c.workdir)
        c.start()  # slurmctld accepts slurm.conf + hpc-bridge.conf + partitions.conf + gres.conf + topology.conf

        # the live daemon took the generated settings (they come after the harness' own)
        config_lines = c.scontrol("show", "config")
        assert f"ResumeProgram           = {hooks / 'resume'}" in config_lines
        # power saving on the generated partitions ([resume] resume_timeout), not globally
        partitions = c.scontrol("-o", "show", "partition").splitlines()
        assert partitions and all(" ResumeTimeout=900 " in f"{p} " and " SuspendTime=600 " in f"{p} "
                                  for p in partitions)
        assert c.slurm().show_config()["SuspendTime"] in ("NONE", "INFINITE")

        rc, out, err = run(capsys, *cfg, "install-hooks", "--slurm-conf-dir", str(c.etc), "--check",
                           "--hooks-dir", str(hooks))
        assert rc == 0, out

        # nodes: Slurm's view of every generated node (powered down, visible thanks to PrivateData=cloud)
        rc, out, err = run(capsys, *cfg, "--json", "nodes")
        assert rc == 0 and "warning" not in err, err
        rows = json.loads(out)
        assert rows and all(r["slurmState"] == "idle~" for r in rows)
        assert all(r["machineType"] for r in rows)  # from the node map, no cloud record yet
        first = rows[0]["name"]
        c.scontrol("update", f"NodeName={first}", "State=DOWN", "Reason=disk on fire")
        rc, out, _ = run(capsys, *cfg, "nodes", "--state", "down")
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["NODE", "SLURM", "REASON"]
        assert len(lines) == 2 and lines[1].startswith(first) and "down~" in lines[1] and "disk on fire" in lines[1]
        c.scontrol("update", f"NodeName={first}", "State=RESUME")

        # doctor, in process with the test's systemd dir: every check passes
        facts = doctor.gather(str(config), systemd_dirs=[str(units)])
        checks = doctor.run_checks(facts)
        assert not doctor.failed(checks), "\n".join(ch.line() for ch in checks)
        names = {ch.name for ch in checks}
        assert {"slurm.conf hook programs", "Slurm cloud nodes match the node map",
                "generated files up to date"} <= names

        # the CLI (looking in the system's systemd dirs) fails only where the timer is
        rc, out, _ = run(capsys, *cfg, "doctor")
        failed = [line for line in out.splitlines() if line.startswith("[FAIL]")]
        if not os.path.exists("/etc/systemd/system/hpc-bridge-repair.timer"):
            assert rc == 1 and failed == ["[FAIL] repair timer installed: no hpc-bridge-repair.timer unit"]
        # ... and with the directory install-hooks wrote to, like install-hooks takes it, all pass
        rc, out, _ = run(capsys, *cfg, "doctor", "--systemd-dir", str(units))
        assert rc == 0 and "all checks passed" in out, out

        # a node Slurm has but the node map lacks is reported
        nodemap = c.etc / "nodemap.json"
        nodemap.write_text(json.dumps({"version": 1, "cluster": sim.cluster_name, "nodes": {}}))
        checks = doctor.run_checks(doctor.gather(str(config), systemd_dirs=[str(units)]))
        bad = [ch for ch in checks if ch.result == doctor.FAIL]
        assert {ch.name for ch in bad} == {"Slurm cloud nodes match the node map", "generated files up to date"}
