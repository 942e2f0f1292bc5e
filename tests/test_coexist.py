"""hpc-bridge dropped into an existing Slurm cluster, the way README's admin install does it.

The site's slurm.conf has a static on-prem node in its own default partition, its own
`PrivateData=jobs,usage` and `SlurmctldParameters=enable_configless,...`, its own ResumeTimeout,
and no power saving. hpc-bridge joins through `hpc-bridge partitions` (into slurm.conf's
directory) and `hpc-bridge install-hooks --write` (the include file, added as slurm.conf's last
line). A real slurmctld, real slurmds (the static node's, and the cloud nodes' started by the
simulator's boot hook) and the real simulator over HTTP.

The cloud nodes' lines come straight from the generated partitions.conf (no Port= added), so
they share the cluster's SlurmdPort: these tests boot one cloud node at a time.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge_env import REPO, BridgeEnv, _traversable, default_scenario
from hpc_bridge.sim.server import SimServer
from hpc_bridge.slurm import cloud_nodes_hidden
from slurmcluster import SiteCluster, SlurmCluster
from test_hardening import slurm_user  # noqa: F401 (fixture: nobody, able to run this Python and tree)

SUSPEND_TIME = 4
RESUME_TIMEOUT = 30
STATIC = "adm-static"

SITE_SETTINGS = ["PrivateData=jobs,usage", "SlurmctldParameters=enable_configless,power_save_interval=1",
                 "ResumeTimeout=90", "GresTypes=gpu"]


@pytest.fixture
def site(tmp_path, slurm_cluster_factory):
    root = tmp_path
    cluster = slurm_cluster_factory(
        start=False, cluster_class=SiteCluster, site_settings=SITE_SETTINGS,
        nodes_conf_text=(f"NodeName={STATIC} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=2 RealMemory=1000\n"
                         f"PartitionName=onprem Nodes={STATIC} Default=YES MaxTime=INFINITE State=UP\n"),
        resume_timeout=RESUME_TIMEOUT,
    )
    scenario = copy.deepcopy(default_scenario())
    scenario["hooks"] = {"on_ready": cluster.boot_hook_argv("start"), "on_stop": cluster.boot_hook_argv("stop"),
                         "env": cluster.hook_env()}
    sim = SimServer(scenario).start()
    try:
        cluster.write_conf()  # the site's slurm.conf exists before hpc-bridge is installed
        yield install_bridge(root, sim, cluster)
    finally:
        sim.stop()


def write_config(root: Path, sim: SimServer, cluster: SlurmCluster, extra: str = "") -> Path:
    password = root / "password"
    password.write_text(sim.password + "\n")
    password.chmod(0o600)
    config = root / "config.toml"
    config.write_text(
        "[cluster]\n"
        f'url = "{sim.url}"\nname = "{sim.cluster_name}"\nusername = "{sim.username}"\n'
        f'password_file = "{password}"\nretries = 3\nretry_budget = 10.0\ntimeout = 5.0\n'
        f'[paths]\nstate_dir = "{root / "state"}"\nlog_dir = "{root / "log"}"\n'
        f'[slurm]\nconf_dir = "{cluster.etc}"\nslurm_conf = "{cluster.conf_path}"\n{extra}'
        f"[suspend]\nsuspend_time = {SUSPEND_TIME}\nsuspend_timeout = 5\n"
        f"[resume]\nresume_timeout = {RESUME_TIMEOUT}\n"
    )
    return config


def install_bridge(root: Path, sim: SimServer, cluster: SiteCluster) -> BridgeEnv:
    """README's steps 4-7: partitions into slurm.conf's directory, install-hooks --write, the
    include line last in slurm.conf (SiteCluster writes it), start slurmctld."""
    config = write_config(root, sim, cluster)
    env = BridgeEnv(root, sim, config, cluster.etc, root / "state", root / "log")
    env.cluster = cluster
    run = env.cli("partitions")
    assert run.rc == 0, run.stderr
    run = env.cli("install-hooks", "--slurm-conf-dir", str(cluster.etc), "--hooks-dir", str(root / "hooks"),
                  "--systemd-dir", str(root / "systemd"), "--write")
    assert run.rc == 0, run.stderr
    _traversable(cluster.workdir)
    cluster.start()
    return env


def wait_job(cluster: SlurmCluster, job: int, timeout: float = 120) -> str:
    def done():
        state = cluster.job_state(job)
        return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None
    return cluster.wait_for(done, timeout, what=f"job {job} finished")


def slurmctld_log(cluster: SlurmCluster) -> str:
    return (cluster.log_dir / "slurmctld.log").read_text(errors="replace")


def test_the_sites_nodes_settings_and_default_partition_survive(site):
    env, c = site, site.cluster
    include = (c.etc / "hpc-bridge.conf").read_text()
    # the include merges the site's list values and leaves out what the site already sets
    assert "PrivateData=jobs,usage,cloud" in include
    assert "SlurmctldParameters=enable_configless,power_save_interval=1,idle_on_node_suspend" in include
    assert not re.search(r"(?m)^(GresTypes|ResumeTimeout|SuspendTime)=", include)
    config = c.slurm().show_config()
    # the site's values are kept; cloud shows where the release needs it (24.11 reports none)
    assert set(config["PrivateData"].split(",")) >= {"jobs", "usage"} and not cloud_nodes_hidden(config)
    assert {"enable_configless", "idle_on_node_suspend"} <= set(config["SlurmctldParameters"].split(","))
    assert config["SuspendTime"] in ("NONE", "INFINITE")  # no global power saving: site nodes never suspend
    parts = {p.split()[0].split("=", 1)[1]: p for p in c.scontrol("-o", "show", "partition").splitlines()}
    assert " Default=YES " in f" {parts['onprem']} "
    assert all(" Default=NO " in f" {p} " for name, p in parts.items() if name != "onprem")
    # the site's partition has no SuspendTime of its own (24.11 shows GLOBAL, the NONE above)
    assert re.search(r"(^| )SuspendTime=(NONE|GLOBAL)( |$)", parts["onprem"]) or "SuspendTime=" not in parts["onprem"]
    assert f"SuspendTime={SUSPEND_TIME}" in parts["htc"]
    # the site's node is under a switch of topology.conf (topology/tree schedules nothing else)
    assert f"SwitchName=site Nodes={STATIC}" in (c.etc / "topology.conf").read_text()

    # jobs run on both kinds: the static node, and a cloud node hpc-bridge brings up
    c.start_slurmd(STATIC, wait=True)
    job = c.sbatch("-N1", "--wrap", "hostname")  # no -p: the site's default partition
    assert c.job(job)["Partition"] == "onprem"
    assert wait_job(c, job) == "COMPLETED"
    cloud_job = c.sbatch("-p", "htc", "-N1", "--wrap", "hostname")
    assert wait_job(c, cloud_job) == "COMPLETED", c.job(cloud_job)
    (cloud_node,) = [n for n in c.job(cloud_job)["NodeList"].split(",")]
    # the follower recorded when the VM was Ready: doctor's boot time ends there
    from hpc_bridge import doctor
    from hpc_bridge.state import StateStore

    # (a job requeued after a failed launch brings up another node: one boot time per create)
    boots = doctor.boot_times(StateStore(env.state_dir / "state.json").read().operations.values())
    assert boots and all(0 < boot < RESUME_TIMEOUT for boot in boots), boots
    # power saving works for the cloud node (SuspendTime on its partition only) ...
    c.wait_for(lambda: {"IDLE", "POWERED_DOWN"} <= c.node_flags(cloud_node), 60, what=f"{cloud_node} idle~")
    # ... and never touched the static node, idle all that time
    flags = c.node_flags(STATIC)
    assert "IDLE" in flags and not flags & {"POWERED_DOWN", "POWERING_DOWN", "POWER_DOWN", "DOWN"}, flags
    suspend_log = (env.log_dir / "suspend.log").read_text()
    assert cloud_node in suspend_log and STATIC not in suspend_log
    ctld_log = slurmctld_log(c)
    assert "switches lack access" not in ctld_log
    # set twice: only the two list keys merged with the site's (install-hooks --check says how to end that)
    assert set(re.findall(r"error: (\w+) \d+ specified more than once", ctld_log)) == {
        "PrivateData", "SlurmctldParameters"}

    # a resume or suspend of a node that is not ours changes nothing
    for verb in ("resume", "suspend", "resume-fail"):
        run = env.hook(verb, STATIC)
        assert run.rc == 1 and "unknown node" in run.stderr and "Traceback" not in run.stderr, run.stderr
    node = c.nodes()[STATIC]
    assert "IDLE" in node.state_flags and not node.reason and node.node_addr == "127.0.0.1", node
    job = c.sbatch("-N1", "--wrap", "hostname")
    assert wait_job(c, job) == "COMPLETED"


def test_check_flags_what_the_site_sets_twice_until_its_lines_carry_the_words(site):
    env, c = site, site.cluster
    args = ["install-hooks", "--slurm-conf-dir", str(c.etc), "--hooks-dir", str(env.root / "hooks")]
    run = env.cli(*args, "--check")
    assert run.rc == 1
    assert "PrivateData is set more than once" in run.stdout and "set PrivateData=jobs,usage,cloud" in run.stdout
    assert "SlurmctldParameters is set more than once" in run.stdout
    # the admin does what the fix says: the site's own lines carry the words, install-hooks again
    c.site_settings = [s.replace("jobs,usage", "jobs,usage,cloud").replace(
        "power_save_interval=1", "power_save_interval=1,idle_on_node_suspend") for s in SITE_SETTINGS]
    c.write_conf()
    assert env.cli(*args, "--systemd-dir", str(env.root / "systemd"), "--write").rc == 0
    include = (c.etc / "hpc-bridge.conf").read_text()
    assert not re.search(r"(?m)^(PrivateData|SlurmctldParameters)=", include)
    run = env.cli(*args, "--check")
    assert run.rc == 0, run.stdout
    # a hook program that is not hpc-bridge's is flagged
    c.site_settings = c.site_settings + ["SuspendProgram=/bin/true"]
    c.with_bridge = False
    c.write_conf()
    text = c.conf_path.read_text() + f"include {c.etc / 'hpc-bridge.conf'}\nSuspendProgram=/bin/true\n"
    c.conf_path.write_text(text)
    run = env.cli(*args, "--check")
    assert run.rc == 1 and "SuspendProgram=/bin/true is not hpc-bridge's suspend hook" in run.stdout
    assert "SuspendProgram is set more than once" in run.stdout


def test_node_count_change_asks_for_a_restart_and_slurmctld_stays_up(site):
    env, c = site, site.cluster
    before = {p: (c.etc / p).read_text() for p in ("partitions.conf", "nodemap.json")}
    # nothing changed: reconfigure is safe and done
    run = env.cli("partitions", "--reconfigure")
    assert run.rc == 0 and "scontrol reconfigure done" in run.stdout, run.stderr
    assert c.slurm().ping()
    # one nodearray's max_nodes lowered: 22.05 would exit on reconfigure; nothing written, a restart asked for
    config = write_config(env.root, env.sim, c, extra="")
    config.write_text(config.read_text() + "[partitions.nodearrays.htc]\nmax_nodes = 6\n")
    run = env.cli("partitions", "--reconfigure")
    assert run.rc == 1 and "Traceback" not in run.stderr
    assert "node names change: 4 removed (htc-f2sv2-[7-8],htc-f4sv2-[7-8])" in run.stderr
    assert "--restart" in run.stderr and "nothing written" in run.stderr
    assert {p: (c.etc / p).read_text() for p in before} == before
    time.sleep(1)
    assert c.slurm().ping() and "htc-f2sv2-8" in c.nodes()
    # --restart writes and restarts slurmctld with the site's command, then waits for it
    restart = c.make_program("restart-slurmctld", [c.python, str(Path(__file__).parent / "restart_slurmctld.py"),
                                                   str(c.run_dir / "slurmctld.pid"), str(c.conf_path)])
    config.write_text(config.read_text().replace("[slurm]\n", f'[slurm]\nrestart_command = ["{restart}"]\n'))
    run = env.cli("partitions", "--restart")
    assert run.rc == 0 and "slurmctld restarted" in run.stdout, run.stderr
    assert c.slurm().ping()
    nodes = c.nodes()
    assert "htc-f2sv2-6" in nodes and "htc-f2sv2-7" not in nodes and STATIC in nodes
    assert not re.search(r"\] (\w+: )?fatal: ", slurmctld_log(c))  # a fatal message (at debug 22.05 logs "syslog=fatal")


def test_vms_whose_slurmd_never_registers_hold_their_size_out_of_service(tmp_path, slurm_cluster_factory):
    """A bad image: the VMs boot (cloud Ready) but slurmd never registers. resume-fail says so,
    and after [resume] boot_failure_limit such VMs of one size the size is held out of service
    (no new VM is billed for it) until `hpc-bridge clear-hold`; then repair puts it back."""
    env = BridgeEnv.create(tmp_path, slurm_cluster_factory, bridge_hooks=True, boot_slurmd=False, resume_timeout=8,
                           config_extra="[resume]\nresume_timeout = 8\nboot_failure_limit = 2\n"
                                        "[repair]\ngrace = 0\n[state]\nkeep_closed = 60\n")
    try:
        c, key = env.cluster, "htc/Standard_F2s_v2"
        env.sim.reset_stats()
        c.scontrol("update", "NodeName=htc-f2sv2-[1-2]", "State=POWER_UP")
        reason = "hpc-bridge: resume failed: VM Ready, slurmd did not register within ResumeTimeout"

        def failed():
            nodes = c.nodes()
            return all(nodes[n].reason == reason and "DOWN" in nodes[n].state_flags for n in ("htc-f2sv2-1", "htc-f2sv2-2"))
        c.wait_for(failed, 60, what="resume-fail with the real cause")
        assert env.sim.stats()["creates"]["nodes_added"] == 2
        # the second failure reached the limit: the size's other idle~ nodes are out of service too
        nodes = c.nodes()
        hold = f"hpc-bridge: {key} out of service until an admin clears it (hpc-bridge clear-hold {key})"
        assert all(nodes[f"htc-f2sv2-{i}"].reason.startswith(hold) for i in range(3, 9)), nodes["htc-f2sv2-3"]
        assert "DOWN" in nodes["htc-f2sv2-3"].state_flags and not nodes["htc-f4sv2-1"].reason
        # repair keeps them out; a power-up asks for no new VM of that size
        assert env.cli("repair").rc == 0
        assert all("DOWN" in f for f in (c.node_flags(f"htc-f2sv2-{i}") for i in range(1, 9)))
        run = env.hook("resume", "htc-f2sv2-3")  # (1 and 2 may still be terminating: left to the follower)
        assert run.rc == 1 and "clear-hold" in run.stderr, run.stdout + run.stderr
        assert env.sim.stats()["creates"]["nodes_added"] == 2
        # status says which size is held
        (row,) = [r for r in json.loads(env.cli("--json", "status").stdout)["buckets"]
                  if (r["nodearray"], r["machineType"]) == ("htc", "Standard_F2s_v2")]
        assert row["inService"] == "held: hpc-bridge clear-hold"
        # one command clears it; repair puts every node of the size back to idle~
        run = env.cli("clear-hold", key)
        assert run.rc == 0 and "back in service" in run.stdout, run.stderr
        assert env.cli("clear-hold", key).rc == 2  # nothing held any more: a usage error
        for _ in range(3):
            if env.cli("repair").rc == 0 and all({"IDLE", "POWERED_DOWN"} <= c.node_flags(f"htc-f2sv2-{i}")
                                                 and "DOWN" not in c.node_flags(f"htc-f2sv2-{i}") for i in range(1, 9)):
                break
            time.sleep(1)
        for i in range(1, 9):
            flags = c.node_flags(f"htc-f2sv2-{i}")
            assert {"IDLE", "POWERED_DOWN"} <= flags and "DOWN" not in flags, (i, flags)
    finally:
        env.close()


def test_doctor_runs_each_hook_as_slurmuser_and_catches_what_it_cannot_reach(slurm_user):
    """A wrapper whose interpreter sits under a root-only directory, or whose config SlurmUser
    cannot read, passes every file check; doctor runs the hooks as SlurmUser with an empty
    hostlist, as slurmctld would, and says why they fail."""
    import os
    import shutil
    import tempfile

    from hpc_bridge import doctor
    from hpc_bridge.slurm_conf import read_slurm_conf

    root = Path(tempfile.mkdtemp(prefix="hb-doctor-", dir="/tmp"))
    try:
        root.chmod(0o755)
        log_dir, private = root / "log", root / "root-only"
        log_dir.mkdir()
        os.chown(log_dir, slurm_user.pw_uid, slurm_user.pw_gid)
        private.mkdir(mode=0o700)
        (private / "python3").symlink_to(sys.executable)
        config_text = ('[cluster]\nurl = "http://127.0.0.1:1"\nname = "c"\nusername = "u"\n'
                       f'[paths]\nlog_dir = "{log_dir}"\nstate_dir = "{root / "state"}"\n'
                       f'[slurm]\nconf_dir = "{root}"\n')
        good, hidden = root / "config.toml", private / "config.toml"
        for path in (good, hidden):
            path.write_text(config_text)
            path.chmod(0o644)

        def wrappers(where: str, python: str, config: Path) -> Path:
            run = subprocess.run([sys.executable, "-m", "hpc_bridge", "--config", str(good), "install-hooks",
                                  "--slurm-conf-dir", str(root), "--hooks-dir", str(root / where), "--systemd-dir",
                                  str(root / "systemd"), "--python", python, "--pythonpath", str(REPO), "--write"],
                                 capture_output=True, text=True, cwd="/",
                                 env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HPC_BRIDGE_CONFIG": str(config)})
            assert run.returncode == 0, run.stderr
            return root / where

        ok = wrappers("ok", sys.executable, good)
        bad_python = wrappers("bad-python", str(private / "python3"), good)
        (root / "slurm.conf").write_text(f"SlurmUser={slurm_user.pw_name}\nResumeProgram={ok}/resume\n"
                                         f"SuspendProgram={bad_python}/suspend\nResumeFailProgram={ok}/resume-fail\n")
        runs = doctor.run_hooks(read_slurm_conf(str(root / "slurm.conf")), slurm_user.pw_name, str(root / "slurm.conf"))
        assert runs["ResumeProgram"] is None and runs["ResumeFailProgram"] is None, runs
        assert "Permission denied" in runs["SuspendProgram"], runs
        # a config SlurmUser cannot read: the wrapper's interpreter starts, the hook cannot
        for hook in ("resume", "suspend", "resume-fail"):
            text = (ok / hook).read_text().replace(str(good), str(hidden))
            (ok / hook).write_text(text)
        (root / "slurm.conf").write_text(f"ResumeProgram={ok}/resume\n")
        runs = doctor.run_hooks(read_slurm_conf(str(root / "slurm.conf")), slurm_user.pw_name, str(root / "slurm.conf"))
        assert runs["ResumeProgram"] and "exited 2" in runs["ResumeProgram"] and str(hidden) in runs["ResumeProgram"]
        facts = doctor.Facts(cfg=object(), slurm_user=slurm_user.pw_name, hook_runs=runs)
        (check,) = doctor.check_hook_runs(facts)
        assert check.result == doctor.FAIL and f"readable by {slurm_user.pw_name}" in check.fix
    finally:
        shutil.rmtree(root, ignore_errors=True)
