"""Slurm's own failover with hpc-bridge on both controllers: a primary and a backup slurmctld
(`SlurmctldHost` twice), each on a host of its own, one shared state directory.

The two controller hosts are network namespaces this test makes (`ip netns add`), each with a
UTS namespace of its own (its hostname is its SlurmctldHost name, which is how slurmctld knows
whether it is the primary or the backup), joined by a bridge to this process's namespace, where
the simulator (real HTTP) and the slurmds run. Everything uses the test's own private range
(10.213.N.0/24 for the hosts, the next /24 for the cloud nodes' PrivateIp, accepted as local
here), picked unused; names go through Slurm's NodeAddr and SlurmctldHost=name(addr), never
DNS. Each controller host also gets its own slurmctld pid and log directory (a bind mount in its
own mount namespace); StateSaveLocation and [paths] state_dir are plain shared directories.
"Killing a host" kills every process of its network namespace: slurmctld, the hooks it runs,
the follower they started, the host's repair timer.

Scenarios: the primary dies right after it ran resume for `sbatch -N2`; it dies with a suspend
in flight; both hosts' repair timers fire at once (the simulator holds the one that got the lock
mid-run until the other has exited).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import slurmcluster
from bridge_env import BridgeEnv, default_scenario
from slurmcluster import SlurmCluster
from hpc_bridge import hostlist
from hpc_bridge.state_records import SUSPEND_ACTIONS

pytestmark = pytest.mark.slurm

IP = "/usr/sbin/ip"
HOSTS = ("ctl1", "ctl2")  # primary, backup
SLURMCTLD_TIMEOUT = 5  # seconds the backup waits for a silent primary before taking over
TIMER_PERIOD = 2.0  # each host's "systemd timer" runs repair this often
LIVE = ("Acquiring", "Preparing", "Ready", "Off", "Failed")  # a VM that exists and is not shut down
BUSY = frozenset({"DOWN", "DRAIN", "POWERING_UP", "POWER_UP", "POWERING_DOWN", "POWER_DOWN"})


def at_rest(node) -> bool:
    """idle~ and nothing under way (22.05 shows a node powering up as IDLE+POWERED_DOWN+POWERING_UP)."""
    return node.has("IDLE", "POWERED_DOWN") and not node.state_flags & BUSY


class ControllerHosts:
    """Two network namespaces with a UTS namespace each, on a bridge in this namespace."""

    made_here = itertools.count()

    def __init__(self, workdir: Path):
        # names of this process and fixture (a namespace being deleted may outlive its test)
        self.tag = f"hbha{os.getpid() % 100000}{next(self.made_here) % 100}"
        self.bridge = f"{self.tag}b"
        self.workdir = workdir
        self.net, self.nodes_net = _free_networks()
        hosts = list(self.net.hosts())
        self.gateway = str(hosts[0])  # this namespace, on the bridge: the simulator and slurmds
        self.addresses = {name: str(hosts[10 + i]) for i, name in enumerate(HOSTS)}
        self.namespaces = {name: f"{self.tag}-{name}" for name in HOSTS}
        self.made: list[tuple[str, ...]] = []  # undo commands, in reverse order

    def up(self) -> "ControllerHosts":
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self.made.append(("link", "del", self.bridge))
            _ip("addr", "add", f"{self.gateway}/{self.net.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            # the cloud nodes' addresses are this namespace's (their slurmds run here)
            _ip("route", "add", "local", str(self.nodes_net), "dev", self.bridge)
            for i, name in enumerate(HOSTS):
                ns, veth = self.namespaces[name], f"{self.tag}v{i}"
                _ip("netns", "add", ns)
                self.made.append(("netns", "del", ns))
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self.made.append(("link", "del", veth))
                _ip("link", "set", veth, "master", self.bridge, "up")
                inside = ("netns", "exec", ns, IP)
                _ip(*inside, "link", "set", "lo", "up")
                _ip(*inside, "addr", "add", f"{self.addresses[name]}/{self.net.prefixlen}", "dev", "eth0")
                _ip(*inside, "link", "set", "eth0", "up")
                _ip(*inside, "route", "add", str(self.nodes_net), "via", self.gateway)
                (self.workdir / "hosts" / name).mkdir(parents=True, exist_ok=True)
        except BaseException:
            self.down()
            raise
        return self

    def command(self, name: str, argv: list[str]) -> list[str]:
        """argv run on controller host `name`: its network namespace, its hostname, its own
        slurmctld pid/log directory mounted at workdir/host."""
        script = 'hostname "$0" && mount --bind "$1" "$2" && shift 2 && exec "$@"'
        return [IP, "netns", "exec", self.namespaces[name], "/usr/bin/unshare", "--uts", "--", "/bin/sh", "-c",
                script, name, str(self.workdir / "hosts" / name), str(self.workdir / "host"), *argv]

    def pids(self, name: str) -> set[int]:
        out = subprocess.run([IP, "netns", "pids", self.namespaces[name]], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def kill(self, name: str) -> None:
        """The host dies: every process in its namespace, at once (SIGKILL), until none is left."""
        deadline = time.monotonic() + 20
        while (pids := self.pids(name)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        assert not self.pids(name), f"processes left on {name}: {self.pids(name)}"

    def down(self) -> None:
        for name in HOSTS:
            if self.namespaces[name] in subprocess.run([IP, "netns", "list"], capture_output=True,
                                                       text=True).stdout.split():
                self.kill(name)
        while self.made:
            subprocess.run([IP, *self.made.pop()], capture_output=True)


def _ip(*args: str) -> None:
    p = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")


def _free_networks() -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
    """A /24 for the hosts and the next one for the nodes, in 10.213.0.0/16, that no address or
    route of this machine touches (another run's included)."""
    used = []
    for args in (["-4", "addr"], ["-4", "route", "show", "table", "all"]):
        out = subprocess.run([IP, *args], capture_output=True, text=True).stdout
        for m in re.finditer(r"(?:inet |^|local )(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", out, re.M):
            try:
                used.append(ipaddress.IPv4Network(m.group(1), strict=False))
            except ValueError:
                pass
    start = (os.getpid() % 120) * 2
    for k in range(120):
        third = (start + 2 * k) % 240
        pair = (ipaddress.IPv4Network(f"10.213.{third}.0/24"), ipaddress.IPv4Network(f"10.213.{third + 1}.0/24"))
        if not any(n.overlaps(u) and u.prefixlen > 0 for n in pair for u in used):
            return pair
    raise RuntimeError("no free /23 left in 10.213.0.0/16")


class HACluster(SlurmCluster):
    """The harness's cluster with two slurmctlds, one per controller host."""

    def __init__(self, workdir, *args, hosts: ControllerHosts, **kwargs):
        super().__init__(workdir, *args, controllers=[(n, hosts.addresses[n]) for n in HOSTS], **kwargs)
        self.hosts = hosts
        self.ctld_pid_dir = self.ctld_log_dir = hosts.workdir / "host"
        self.extra_conf = (self.extra_conf + f"\nSlurmctldTimeout={SLURMCTLD_TIMEOUT}\n").strip()
        self.ctlds: dict[str, subprocess.Popen] = {}

    def _start_slurmctld(self) -> None:
        """The primary first, the backup once the primary answers: a primary starting next to a
        backup that is starting too asks it to stand down and waits up to 30 s for an answer
        (seen on 24.11: "_shutdown_bu_thread: ... Socket timed out")."""
        (self.hosts.workdir / "host").mkdir(exist_ok=True)
        self.start_controller(HOSTS[0])
        self.wait_for(lambda: self._controllers_up(HOSTS[:1]), 60, what=f"slurmctld on {HOSTS[0]} answering")
        self.start_controller(HOSTS[1])

    def start_controller(self, name: str) -> None:
        self.ctlds[name] = self._daemon(
            self.hosts.command(name, self.command([f"{self.inner_sbin_dir}/slurmctld", "-D", "-i"])),
            self.hosts.workdir / "hosts" / name / "slurmctld.out")
        slurmcluster.SLURMCTLD_STARTS += 1

    def _ctld_up(self) -> bool:
        return self._controllers_up(HOSTS)

    def _controllers_up(self, names) -> bool:
        for name, p in self.ctlds.items():
            if p.poll() is not None:
                raise RuntimeError(f"slurmctld on {name} exited with {p.returncode}:\n" + self.host_log(name))
        out = self.ping()
        return all(f"at {name} is UP" in out for name in names)

    def ping(self) -> str:
        return self.run(["scontrol", "ping"], check=False, timeout=20).stdout

    def host_log(self, name: str, lines: int = 40) -> str:
        text = ""
        for f in ("slurmctld.out", "slurmctld.log"):
            p = self.hosts.workdir / "hosts" / name / f
            if p.exists():
                text += "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def stop(self) -> None:
        for name in HOSTS:
            if self.hosts.pids(name):
                self.hosts.kill(name)
        self.ctlds.clear()
        super().stop()


@pytest.fixture
def ha(tmp_path, slurm_cluster_factory, slurm_release):
    why = "network namespaces need root" if os.geteuid() != 0 else \
        None if all(os.access(p, os.X_OK) for p in (IP, "/usr/bin/unshare")) else "ip(8) or unshare(1) missing"
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the HA test cannot run: {why}", pytrace=False)
        pytest.skip(why)
    hosts = ControllerHosts(tmp_path).up()
    envs = []

    def make(config_extra: str = "", resume_timeout: int = 90, api_timeout: float = 5.0, **scenario_changes) -> HAEnv:
        scenario = default_scenario(**scenario_changes)
        scenario["cluster"]["private_network"] = str(hosts.nodes_net)
        # Slurm 23.11+ takes a cloud node's address from its slurmd's registration, always. Here
        # every slurmd registers from this namespace's one address, not the node's PrivateIp (a
        # VM registers from its own): hpc-bridge setting PrivateIp would fight Slurm over
        # NodeAddr, so there it leaves the address to the registration.
        mode = "ip" if slurm_release.version_tuple < (23, 11) else "registration"
        env = BridgeEnv.create(
            tmp_path / "site", slurm_cluster_factory, scenario=scenario, bridge_hooks=True, boot_slurmd=True,
            sim_host=hosts.gateway, cluster_class=HACluster, hosts=hosts, suspend_time=4,
            resume_timeout=resume_timeout, api_timeout=api_timeout,
            # one follower round a second at most, its lease stale 4 s after it stopped renewing it
            config_extra=(f'address_mode = "{mode}"\n'
                          f"[resume]\nresume_timeout = {resume_timeout}\npoll_interval = 0.5\npoll_max = 1.5\n"
                          "follower_lease = 4\n" + config_extra))
        envs.append(env)
        return HAEnv(env, hosts)

    try:
        yield make
    finally:
        try:
            for env in envs:
                if env.cluster is not None:
                    env.cluster.stop()
                env.close()
        finally:
            hosts.down()


class HAEnv:
    def __init__(self, env: BridgeEnv, hosts: ControllerHosts):
        self.env, self.hosts, self.cluster = env, hosts, env.cluster
        self.timers: dict[str, subprocess.Popen] = {}
        self.t0 = time.monotonic()

    def phase(self, what: str) -> None:
        """The scenario's timeline, for `pytest -s` (figures in README)."""
        print(f"[{time.monotonic() - self.t0:6.1f} s] {what}", flush=True)

    def repair_argv(self, *extra: str) -> list[str]:
        return self.env.argv("--config", str(self.env.config_path), *extra, "repair")

    def on_host(self, name: str, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(self.hosts.command(name, argv), env=self.env.cli_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start_timers(self) -> None:
        """Each host's repair timer (what hpc-bridge-repair.timer does there), every TIMER_PERIOD s."""
        loop = ("import subprocess, sys, time\n"
                "while True:\n"
                "    subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL)\n"
                "    time.sleep(float(sys.argv[1]))\n")
        for name in HOSTS:
            log = open(self.hosts.workdir / "hosts" / name / "repair-timer.log", "ab")
            self.timers[name] = subprocess.Popen(
                self.hosts.command(name, [sys.executable, "-c", loop, str(TIMER_PERIOD), *self.repair_argv()]),
                env=self.env.cli_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def kill_primary(self) -> None:
        self.hosts.kill(HOSTS[0])

    def wait_backup_in_control(self, timeout: float = 60) -> float:
        """Seconds from now until the backup answers for the cluster (the primary down)."""
        t0 = time.monotonic()

        def backup_up():
            out = self.cluster.ping()
            return f"at {HOSTS[0]} is DOWN" in out and f"at {HOSTS[1]} is UP" in out and \
                self.cluster.run(["squeue", "-h"], check=False, timeout=30).returncode == 0
        self.wait(backup_up, timeout=timeout, what="the backup slurmctld in control")
        return time.monotonic() - t0

    def state_ops(self) -> list[dict]:
        return self.env.state().get("operations", [])

    def records(self) -> list[dict]:
        return self.env.all_cloud_records()

    def live_vms(self) -> list[str]:
        return sorted(r["Name"] for r in self.records() if r.get("Status") in LIVE)

    def describe(self) -> str:
        nodes = {n: f"{'+'.join(sorted(s.state_flags))} {s.reason or ''}".strip()
                 for n, s in self.cluster.slurm().show_nodes().items()
                 if not at_rest(s) or s.reason}
        return (f"slurm nodes {nodes}; cloud {[(r['Name'], r.get('Status')) for r in self.records()]}; "
                f"ping {self.cluster.ping()!r}; ops {[(o['action'], o['nodes'], o['outcome'], o.get('host')) for o in self.state_ops()]}")

    def wait(self, predicate, timeout: float, what: str):
        try:
            return self.env.wait_for(predicate, timeout=timeout, what=what)
        except AssertionError as err:
            raise AssertionError(f"{err}: {self.describe()}\n--- {HOSTS[1]}:\n{self.cluster.host_log(HOSTS[1])}") from None

    def job_state(self, job: int) -> str | None:
        """The job's state (a requeued one released at once); each change of it or of its nodes'
        states and addresses goes into the timeline."""
        state = self.cluster.job_state(job)
        nodes = self.cluster.slurm().show_nodes()
        seen = (state, tuple(sorted((n, "+".join(sorted(s.state_flags - {"CLOUD"})), s.node_addr)
                                    for n, s in nodes.items() if n.startswith("hpc-") and not at_rest(s))))
        if seen != getattr(self, "_seen", None):
            self._seen = seen
            self.phase(f"job {job} {state}; nodes {seen[1]}")
        if self.cluster.job(job).get("Reason") == "BeginTime":  # requeued: start it now
            self.cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)
        return state

    def assert_created_once(self) -> None:
        """No name got a second VM: one cloud record per name, every create added what it asked for."""
        names = [r["Name"] for r in self.records()]
        assert len(names) == len(set(names)), f"a name has two VMs: {sorted(names)}"
        creates = self.env.sim.stats()["creates"]
        assert creates["nodes_requested"] == creates["nodes_added"], creates

    def assert_no_orphan(self) -> None:
        """Every VM still up is a node Slurm is using; after the nodes power down, none is up."""
        def settled():
            slurm = self.cluster.slurm().show_nodes()
            up = [n for n in self.live_vms() if not (n in slurm and not {"POWERED_DOWN"} & slurm[n].state_flags)]
            return not up and all(at_rest(s) for n, s in slurm.items() if n in {r["Name"] for r in self.records()})
        self.wait(settled, timeout=90, what="every VM shut down and its node idle~ (repair on the backup)")
        run = subprocess.run(self.hosts.command(HOSTS[1], self.repair_argv("--json")), env=self.env.cli_env(),
                             capture_output=True, text=True, timeout=120)
        report = json.loads(run.stdout)
        assert run.returncode == 0 and not [a for a in report["actions"] if a.get("kind") != "report"], run.stdout


def restored_jobs_know_cloud_addresses(version: str) -> bool:
    """Before Slurm 23.11.4 a job that slurmctld recovers from its saved state (after a restart
    or a failover) while its cloud nodes power up loses the nodes' addresses (its alias list:
    commit 86a777633a, "Fix building the correct alias_list for jobs on startup"): an `srun` in
    it then asks DNS for the node names and fails. Seen here on 22.05 whenever the primary had
    saved the job as allocated before it died."""
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    return parts >= (23, 11, 4)


def test_primary_killed_after_resume_backup_finishes_the_job_on_nodes_created_once(ha):
    h = ha(timings={"acquiring": 20, "preparing": 40, "time_scale": 0.25})
    h.start_timers()
    # every node runs a task where Slurm keeps the addresses across the failover; before that,
    # the batch script alone (on the first node: slurmctld reaches it by its NodeAddr)
    srun = restored_jobs_know_cloud_addresses(h.cluster.release.version)
    job = h.cluster.sbatch("--output", str(h.env.root / "job-%j.out"), "-p", "hpc", "-N2",
                           "--wrap", ("srun " if srun else "") + "printenv SLURMD_NODENAME")
    # the primary ran resume: its create for the job's two nodes was accepted by the API
    created = h.wait(lambda: [o for o in h.state_ops() if o["action"] == "create" and o["outcome"] != "pending"],
                     timeout=60, what="the primary's create accepted")
    assert [o["host"] for o in created] == [HOSTS[0]] and len(created[0]["nodes"]) == 2
    h.phase(f"create accepted on {HOSTS[0]}; killing it")
    h.kill_primary()
    h.wait_backup_in_control()
    h.phase(f"{HOSTS[1]} in control")
    h.wait(lambda: h.job_state(job) == "COMPLETED", timeout=150, what=f"job {job} completed on the backup")
    h.phase("job completed")
    ran_on = hostlist.expand(h.cluster.job(job)["NodeList"])
    output = (h.env.root / f"job-{job}.out").read_text().split()
    assert sorted(output) == (sorted(ran_on) if srun else ran_on[:1]), output
    assert sorted(ran_on) == sorted(created[0]["nodes"]), "the job ran on other nodes than the primary brought up"
    h.assert_created_once()
    h.assert_no_orphan()
    h.phase("VMs shut down, nodes idle~, repair plans nothing")
    h.assert_created_once()


def test_suspend_in_flight_when_the_primary_dies_the_vms_still_end_shut_down(ha):
    # deallocating takes 10 s: the primary dies while the cloud is still at it. The backup starts
    # from Slurm's last saved node state, which may still say POWERING_UP (Slurm does not save it
    # when a node registers): it then waits out ResumeTimeout before it gives the nodes up, so a
    # short one keeps the test short.
    h = ha(resume_timeout=45, timings={"acquiring": 20, "preparing": 40, "deallocating": 40, "time_scale": 0.25})
    h.start_timers()
    job = h.cluster.sbatch("--output", str(h.env.root / "job-%j.out"), "-p", "hpc", "-N2",
                           "--wrap", "srun printenv SLURMD_NODENAME")
    h.wait(lambda: h.job_state(job) == "COMPLETED", timeout=120, what=f"job {job} completed on the primary")
    h.phase("job completed")
    ran_on = hostlist.expand(h.cluster.job(job)["NodeList"])
    suspend = h.wait(lambda: [o for o in h.state_ops() if o["action"] in SUSPEND_ACTIONS and o["outcome"] != "pending"],
                     timeout=60, what="the primary's suspend call accepted")
    assert sorted(n for o in suspend for n in o["nodes"]) == sorted(ran_on) and suspend[0]["host"] == HOSTS[0]
    assert {r.get("Status") for r in h.records() if r["Name"] in ran_on} == {"Deallocating"}, h.describe()
    h.phase(f"suspend accepted on {HOSTS[0]}, VMs deallocating; killing it")
    h.kill_primary()
    h.wait_backup_in_control()
    h.phase(f"{HOSTS[1]} in control")
    h.wait(lambda: all(r.get("Status") == "Deallocated" for r in h.records() if r["Name"] in ran_on),
           timeout=90, what="the VMs deallocated")
    h.phase("VMs deallocated")
    h.assert_no_orphan()
    h.phase("nodes idle~, repair plans nothing")
    h.assert_created_once()


def test_both_repair_timers_fire_at_once_one_acts_the_other_exits_0(ha):
    # The repair that takes the lock is held mid-run: the simulator keeps its host's API requests
    # waiting until the other host's repair has exited. So the two overlap on every run, however
    # fast or loaded the machine (the held client's request timeout, 60 s here, outlasts the hold).
    h = ha(config_extra="[repair]\ngrace = 0\n", api_timeout=60)
    # a VM Slurm knows nothing of: repair terminates it (once)
    from hpc_bridge.api.models import NodeCreationSet

    sim = h.env.sim
    with h.env.api_client() as c:
        c.create_nodes([NodeCreationSet.make(count=1, nodearray="htc", definition={"machineType": "Standard_F2s_v2"},
                                             name_format="htc-f2sv2-1")])
    h.wait(lambda: "Ready" in [r.get("Status") for r in h.records()], timeout=30, what="the stray VM up")
    sim.reset_stats()
    hold = sim.hold()
    try:
        runs = {name: h.on_host(name, h.repair_argv("--json")) for name in HOSTS}
        held = hold.wait(timeout=120)
        holder = next((n for n in HOSTS if h.hosts.addresses[n] == held), None)
        assert holder is not None, f"the first API request came from {held}, not from a controller host"
        other = next(n for n in HOSTS if n != holder)
        outs = {other: runs[other].communicate(timeout=120)}  # ran while the holder was mid-run
        h.phase(f"{other}'s repair exited while {holder}'s waited at the API")
    finally:
        hold.release()
    outs[holder] = runs[holder].communicate(timeout=120)
    assert {n: p.returncode for n, p in runs.items()} == dict.fromkeys(HOSTS, 0), outs
    reports = {n: json.loads(out) for n, (out, _) in outs.items()}
    # the one that reached the API held the lock; the other found it held and did nothing
    assert reports[other]["busy"] and reports[other]["actions"] == [], reports
    assert not reports[holder]["busy"], reports
    assert [a["kind"] for a in reports[holder]["actions"]] == ["terminate"], reports
    assert sum(n for endpoint, n in sim.stats()["requests"].items() if "terminate" in endpoint) == 1
    h.wait(lambda: not h.live_vms(), timeout=30, what="the stray VM terminated")


def test_doctor_on_each_controller_compares_them_and_proves_the_lock(ha, tmp_path):
    h = ha()
    h.env.state_dir.mkdir(mode=0o700, exist_ok=True)  # as the first hook leaves it
    systemd = tmp_path / "systemd"  # the repair timer as install-hooks writes it, enabled
    (systemd / "timers.target.wants").mkdir(parents=True)
    (systemd / "hpc-bridge-repair.timer").write_text("[Timer]\nOnUnitActiveSec=60\n")
    (systemd / "timers.target.wants" / "hpc-bridge-repair.timer").symlink_to(systemd / "hpc-bridge-repair.timer")

    def doctor(name: str) -> dict[str, dict]:
        argv = h.env.argv("--config", str(h.env.config_path), "--json", "doctor", "--systemd-dir", str(systemd))
        p = subprocess.run(h.hosts.command(name, argv), env=h.env.cli_env(), capture_output=True, text=True,
                           timeout=120)
        return {c["check"]: c for c in json.loads(p.stdout)["checks"]}

    first = doctor(HOSTS[0])
    assert first["state lock excludes another process"]["result"] == "ok", first
    alike = first["controllers set up alike"]
    assert alike["result"] == "warn" and f"doctor has not run on {HOSTS[1]}" in alike["detail"], alike
    # one machine's directory: shared only because both "hosts" are this machine
    assert first[f"state_dir shared by the controllers ({', '.join(HOSTS)})"]["result"] == "warn"
    second = doctor(HOSTS[1])
    assert second["controllers set up alike"]["result"] == "ok", second["controllers set up alike"]
    assert second["state lock excludes another process"]["result"] == "ok"
