"""A real Slurm cluster on loopback for tests (root, Debian packages slurmctld/slurmd/munge).

    with SlurmCluster(tmp_path, nodes_conf_text="NodeName=t-[1-2] CPUs=4 ...") as c:
        c.start_slurmd("t-1")
        c.run(["sbatch", "-N1", "--wrap", "hostname"])

What it does (recipe: ../shared/SLURM-FACTS.md):
- its own munged (key, socket under the workdir), its own slurm.conf with free ports,
  ``slurmctld -D -i`` in its own session, readiness by ``scontrol ping``;
- one ``slurmd -D -b -N <name>`` per node, each with its own port. Node lines usually come from
  generated files (``hpc-bridge partitions``) that carry no Port=, and Slurm rejects a second
  NodeName line for the same node, so the harness includes *rewritten copies* of those files:
  every ``NodeName=`` line without Port= gets ``Port=[a-b]`` (ports pair up positionally with the
  expanded names; a stable name -> port map is kept across rewrites, see ``sync_includes``);
- ``stop()`` kills by PID what it started: job processes of its slurmds, the slurmds (also those a
  boot hook recorded in ``run_dir/slurmd-<name>.pid``), slurmctld, munged. Nothing leaks.

Every daemon and client gets ``SLURM_CONF`` explicitly (without it clients try DNS SRV).

Releases: ``release=SlurmRelease(...)`` picks the Slurm that runs. The host's packages, or a
Debian root made by ``scripts/slurm-root build`` (e.g. Debian 13's 24.11 on a Debian 12 host):
then every daemon, client and program slurmctld runs is inside that root (``scripts/slurm-root
run``: a private mount namespace holding /proc, /dev, /sys and the directories the cluster
uses, at the same paths), ``bin_dir``/``sbin_dir`` are wrapper scripts for the host side, and
programs slurmctld starts use the root's Python (``self.python``) and ``inner_bin_dir``.
``releases_from_env()`` reads the releases scripts/test set up (HPC_BRIDGE_SLURM_RELEASES).
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SBIN = "/usr/sbin"
BIN = "/usr/bin"

__all__ = ["SlurmCluster", "SiteCluster", "SlurmRelease", "slurm_available", "add_node_ports", "releases_from_env",
           "REPO"]

SLURM_ROOT_TOOL = REPO / "scripts" / "slurm-root"
#: The Python inside a root made by scripts/slurm-root (a venv with hpc-bridge's dependencies).
ROOT_PYTHON = "/opt/hpc-bridge-venv/bin/python3"
_CLIENTS = ("scontrol", "sbatch", "srun", "squeue", "sinfo", "scancel", "salloc", "sacct", "sdiag", "sprio")
_DAEMONS = ("slurmctld", "slurmd", "munged", "mungekey")


class SlurmRelease:
    """One Slurm to test against: the host's (``root`` None) or the one in a Debian root."""

    def __init__(self, name: str, root: str | os.PathLike | None = None):
        self.name = name
        self.root = Path(root).resolve() if root is not None and str(root) != "/" else None
        self._version: str | None = None

    def __repr__(self) -> str:
        return f"SlurmRelease({self.name!r}, {str(self.root) if self.root else 'host'})"

    @property
    def where(self) -> str:
        return f"root {self.root}" if self.root else "host"

    def unavailable(self) -> str | None:
        """None when clusters of this release can run here, else why not (one line)."""
        if self.root is None:
            return slurm_available()
        if os.geteuid() != 0:
            return "real-Slurm tests need root"
        missing = [p for p in (f"{SBIN}/slurmctld", f"{SBIN}/slurmd", f"{SBIN}/munged", f"{BIN}/scontrol", ROOT_PYTHON)
                   if not os.access(f"{self.root}{p}", os.X_OK)]
        if missing:
            return f"Slurm root {self.root} is incomplete (missing {', '.join(missing)}; scripts/slurm-root build)"
        return None

    def command(self, argv: Sequence[str], binds: Iterable[str | os.PathLike] = ()) -> list[str]:
        """argv to run ``argv`` (absolute paths as seen inside) with this release."""
        if self.root is None:
            return list(argv)
        out = [str(SLURM_ROOT_TOOL), "run", str(self.root)]
        for b in binds:
            out += ["--bind", str(b)]
        return [*out, "--", *argv]

    @property
    def version(self) -> str:
        """What ``slurmctld -V`` says (e.g. "24.11.5")."""
        if self._version is None:
            p = subprocess.run(self.command([f"{SBIN}/slurmctld", "-V"]), capture_output=True, text=True, timeout=60,
                               cwd="/")
            words = p.stdout.split()
            self._version = words[-1] if p.returncode == 0 and words else "unknown"
        return self._version

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return _version_tuple(self.version)


def _version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split(".")[:2]:
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def releases_from_env(environ: Mapping[str, str] = os.environ) -> list[SlurmRelease]:
    """HPC_BRIDGE_SLURM_RELEASES="22.05=/ 24.11=/var/cache/.../debian-trixie" (``/``: the host);
    unset: the host's Slurm only, named by its version."""
    spec = environ.get("HPC_BRIDGE_SLURM_RELEASES", "").split()
    if not spec:
        host = SlurmRelease("host")
        if host.unavailable() is None:
            host.name = ".".join(host.version.split(".")[:2])
        return [host]
    out = []
    for item in spec:
        name, _, root = item.partition("=")
        out.append(SlurmRelease(name, root or "/"))
    return out


def slurm_available(sbin_dir: str = SBIN, bin_dir: str = BIN) -> str | None:
    """None when this machine can run the cluster, else why not (one line)."""
    if os.geteuid() != 0:
        return "real-Slurm tests need root (slurmd, munged as root)"
    missing = [
        p
        for p in (
            f"{sbin_dir}/slurmctld",
            f"{sbin_dir}/slurmd",
            f"{sbin_dir}/munged",
            f"{bin_dir}/scontrol",
            f"{bin_dir}/sbatch",
        )
        if not os.access(p, os.X_OK)
    ]
    if not shutil.which("mungekey", path=f"{sbin_dir}:{bin_dir}"):
        missing.append("mungekey")
    if missing:
        return "Slurm/munge not installed (missing " + ", ".join(missing) + "; apt-get install slurmctld slurmd slurm-client munge)"
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class _PortPool:
    """Free TCP ports below the ephemeral range, handed out in ascending runs."""

    def __init__(self, low: int = 20000, high: int = 32000):
        self.low, self.high = low, high
        self.next = random.randrange(low, high - 2000)

    def take(self, n: int = 1) -> list[int]:
        out: list[int] = []
        tries = 0
        while len(out) < n:
            if self.next >= self.high:
                self.next = self.low
            p = self.next
            self.next += 1
            if _port_free(p):
                out.append(p)
            tries += 1
            if tries > (self.high - self.low):
                raise RuntimeError("no free TCP ports left")
        return out


def _port_expr(ports: Sequence[int]) -> str:
    """[18001-18003,18007] for Slurm's Port= (a hostlist of numbers, order preserved)."""
    parts: list[str] = []
    i = 0
    while i < len(ports):
        j = i
        while j + 1 < len(ports) and ports[j + 1] == ports[j] + 1:
            j += 1
        parts.append(str(ports[i]) if i == j else f"{ports[i]}-{ports[j]}")
        i = j + 1
    return "[" + ",".join(parts) + "]"


def _logical_lines(text: str) -> list[str]:
    """slurm.conf lines with backslash continuations joined."""
    out: list[str] = []
    buf = ""
    for line in text.splitlines():
        if line.endswith("\\"):
            buf += line[:-1]
            continue
        out.append(buf + line)
        buf = ""
    if buf:
        out.append(buf)
    return out


def add_node_ports(text: str, expand: Callable[[str], list[str]], port_of: Callable[[str], int]) -> str:
    """Add ``Port=[...]`` to every ``NodeName=`` line (not DEFAULT, not already with Port=).

    ``expand`` turns the NodeName hostlist into names in Slurm's order; ``port_of`` gives each
    name's port. Pure text transform: the rest of each line is kept as it is.
    """
    out = []
    for line in _logical_lines(text):
        stripped = line.split("#", 1)[0].strip()
        m = re.match(r"(?i)^nodename=(\S+)(\s|$)", stripped)
        if not m or m.group(1).upper() == "DEFAULT" or re.search(r"(?i)(^|\s)port=", stripped):
            out.append(line)
            continue
        names = expand(m.group(1))
        out.append(f"{stripped} Port={_port_expr([port_of(n) for n in names])}")
    return "\n".join(out) + "\n"


#: slurmctlds this process started (SlurmCluster.start): the tests' conftest checks that only
#: tests marked ``slurm`` start one.
SLURMCTLD_STARTS = 0


class SlurmCluster:
    """One slurmctld + munged (+ slurmds on demand) under ``workdir``. See module doc.

    Node lines come from ``nodes_conf_includes`` (files, rewritten with ports, re-read by
    ``sync_includes``) and/or ``nodes_conf_text`` (written as ``etc/nodes.conf``, same rewrite).
    Programs are absolute paths (or None). Times are seconds.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        nodes_conf_includes: Iterable[str | os.PathLike] = (),
        *,
        nodes_conf_text: str | None = None,
        extra_conf: str = "",
        resume_program: str | None = None,
        suspend_program: str | None = None,
        resume_fail_program: str | None = None,
        suspend_time: int = 5,
        suspend_timeout: int = 5,
        resume_timeout: int = 20,
        topology_conf: str | os.PathLike | None = None,
        gres_conf: str | os.PathLike | None = None,
        slurmctld_parameters: str = "idle_on_node_suspend,power_save_interval=1",
        prolog_wait_for_nodes: bool = True,
        message_timeout: int = 10,
        cluster_name: str = "hb",
        sbin_dir: str = SBIN,
        bin_dir: str = BIN,
        slurm_user: str = "root",
        release: SlurmRelease | None = None,
        controllers: Sequence[tuple[str, str]] = (),
        debug_level: str = "debug",
    ):
        self.workdir = Path(workdir).resolve()
        # (name, address) per SlurmctldHost line, primary first; none: one slurmctld on localhost
        self.controllers = list(controllers)
        self.slurm_user = slurm_user  # slurmctld and the hooks it runs drop to this user
        self.includes = [Path(p).resolve() for p in nodes_conf_includes]
        self.nodes_conf_text = nodes_conf_text
        self.extra_conf = extra_conf
        self.resume_program = resume_program
        self.suspend_program = suspend_program
        self.resume_fail_program = resume_fail_program
        self.suspend_time = suspend_time
        self.suspend_timeout = suspend_timeout
        self.resume_timeout = resume_timeout
        self.topology_conf = topology_conf
        self.gres_conf = gres_conf
        self.slurmctld_parameters = slurmctld_parameters
        self.prolog_wait_for_nodes = prolog_wait_for_nodes
        self.message_timeout = message_timeout  # how long a client waits for slurmctld's answer
        self.cluster_name = cluster_name
        # SlurmctldDebug/SlurmdDebug; HPC_BRIDGE_SLURM_DEBUG=debug2 (...) to dig deeper
        self.debug_level = os.environ.get("HPC_BRIDGE_SLURM_DEBUG") or debug_level
        self.release = release or SlurmRelease("host")
        # Host-side paths (tests, the simulator's boot hook) and what slurmctld's children see.
        self.sbin_dir = sbin_dir
        self.bin_dir = bin_dir
        self.inner_sbin_dir = sbin_dir
        self.inner_bin_dir = bin_dir
        self.python = sys.executable
        # Directories programs inside a root must see (at the same paths): add before start().
        self.shared_paths: list[Path] = [self.workdir, REPO]
        if self.release.root is not None:
            self.inner_sbin_dir, self.inner_bin_dir = SBIN, BIN
            self.sbin_dir = str(self.workdir / "release" / "sbin")
            self.bin_dir = str(self.workdir / "release" / "bin")
            self.python = ROOT_PYTHON

        self.etc = self.workdir / "etc"
        self.run_dir = self.workdir / "run"
        self.log_dir = self.workdir / "log"
        self.state_dir = self.workdir / "state"
        self.spool_dir = self.workdir / "spool"
        self.conf_path = self.etc / "slurm.conf"
        # slurmctld's pid and log file (a subclass running several controllers gives each host its own)
        self.ctld_pid_dir, self.ctld_log_dir = self.run_dir, self.log_dir
        # munge's socket path must stay short (sun_path is 108 bytes).
        self.munge_dir: Path | None = None
        self._munge_tmp = False
        self._pool = _PortPool()
        self.ctld_port = 0
        self.slurmd_port = 0
        self.node_ports: dict[str, int] = {}
        self._ctld: subprocess.Popen | None = None
        self._munged_pid: int | None = None
        self._munged: subprocess.Popen | None = None
        self._slurmds: dict[str, subprocess.Popen] = {}
        self._started = False

    # -- environment -----------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm clients: only what they need, SLURM_CONF always set."""
        return {
            "SLURM_CONF": str(self.conf_path),
            # as seen by the clients and the jobs they submit (inside the root, if any)
            "PATH": f"{self.inner_bin_dir}:{self.inner_sbin_dir}:/usr/bin:/bin",
            "LC_ALL": "C",
        }

    def hook_env(self, node_name: str | None = None) -> dict[str, str]:
        """Environment for scripts/sim-boot-hook: where the cluster's conf and run dir are."""
        env = {
            "SLURM_CONF": str(self.conf_path),
            "HPC_BRIDGE_SLURM_RUN_DIR": str(self.run_dir),
            "HPC_BRIDGE_SLURM_SBIN": self.sbin_dir,
        }
        if node_name:
            env["HPC_BRIDGE_NODE_NAME"] = node_name
        return env

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` with this cluster's Slurm release (inside its root, if any)."""
        return self.release.command(argv, self._binds())

    def _binds(self) -> list[str]:
        # /tmp: munge's socket directory falls back there (see _start_munged).
        return [str(p) for p in (*self.shared_paths, Path("/tmp"))]

    def _write_release_wrappers(self) -> None:
        """bin_dir/sbin_dir scripts that run the root's Slurm programs (host side)."""
        if self.release.root is None:
            return
        for outer, inner, names in ((self.bin_dir, BIN, _CLIENTS), (self.sbin_dir, SBIN, _DAEMONS)):
            Path(outer).mkdir(parents=True, exist_ok=True)
            for name in names:
                if not os.access(f"{self.release.root}{inner}/{name}", os.X_OK):
                    continue
                argv = self.command([f"{inner}/{name}"])
                path = Path(outer) / name
                tmp = path.with_suffix(".tmp")
                tmp.write_text("#!/bin/sh\nexec " + " ".join(map(shlex.quote, argv)) + ' "$@"\n')
                tmp.chmod(0o755)
                os.replace(tmp, path)

    def slurm(self, timeout: float = 30.0):
        """An hpc_bridge.slurm.Slurm bound to this cluster."""
        from hpc_bridge.slurm import Slurm

        return Slurm(bin_dir=self.bin_dir, slurm_conf=str(self.conf_path), timeout=timeout)

    # -- config ------------------------------------------------------------------------------

    def _expand(self, expr: str) -> list[str]:
        proc = subprocess.run(
            [f"{self.bin_dir}/scontrol", "show", "hostnames", expr],
            env={"SLURM_CONF": str(self.etc / "oracle.conf")},
            capture_output=True,
            text=True,
            timeout=30,
        )
        names = proc.stdout.split()
        if proc.returncode != 0 or not names or "Invalid" in proc.stderr:
            raise ValueError(f"bad hostlist in node conf: {expr!r}: {proc.stderr.strip()[:200]}")
        return names

    def _port_of(self, name: str) -> int:
        if name not in self.node_ports:
            self.node_ports[name] = self._pool.take(1)[0]
        return self.node_ports[name]

    def _write_node_includes(self) -> list[Path]:
        (self.etc / "oracle.conf").write_text("ClusterName=oracle\nSlurmctldHost=localhost\n")
        if not os.access(f"{self.bin_dir}/scontrol", os.X_OK):
            self._write_release_wrappers()
        sources: list[tuple[str, str]] = []
        if self.nodes_conf_text is not None:
            sources.append(("nodes.conf", self.nodes_conf_text))
        for i, p in enumerate(self.includes):
            sources.append((f"{i:02d}-{p.name}", p.read_text()))
        written = []
        for name, text in sources:
            target = self.etc / f"ported-{name}"
            # Take ports for new names in the order they appear, so ranges stay contiguous.
            new_text = add_node_ports(text, self._expand, self._port_of)
            tmp = target.with_suffix(".tmp")
            tmp.write_text(new_text)
            os.replace(tmp, target)
            written.append(target)
        (self.run_dir / "ports.json").write_text(json.dumps(self.node_ports, indent=1, sort_keys=True))
        # 24.11's slurmd does not create its spool directory (22.05's does): make one per node,
        # also for the slurmds a boot hook starts.
        for name in self.node_ports:
            (self.spool_dir / name).mkdir(parents=True, exist_ok=True)
        return written

    def _copy_side_file(self, src, name: str) -> None:
        if src is None:
            return
        p = Path(src)
        text = p.read_text() if "\n" not in str(src) and p.exists() else str(src)
        (self.etc / name).write_text(text)

    def _prolog(self) -> str:
        """A PrologSlurmctld that returns once the job's nodes stopped POWERING_UP: with it a
        batch job on resumed cloud nodes starts ~3 s after slurmd registers instead of up to
        30 s later (SLURM-FACTS)."""
        path = self.etc / "prolog-slurmctld"
        path.write_text(
            f"#!{self.python}\n"
            "import os, subprocess, time\n"
            f"os.environ.setdefault('SLURM_CONF', {str(self.conf_path)!r})\n"
            "job = os.environ.get('SLURM_JOB_ID', '')\n"
            f"scontrol = {self.inner_bin_dir + '/scontrol'!r}\n"
            f"deadline = time.monotonic() + {self.resume_timeout + 30}\n"
            "while job and time.monotonic() < deadline:\n"
            "    out = subprocess.run([scontrol, '-o', 'show', 'job', job], capture_output=True, text=True).stdout\n"
            "    if 'State=CONFIGURING' not in out and 'JobState=CONFIGURING' not in out:\n"
            "        break\n"
            "    nodes = out.split(' NodeList=', 1)[-1].split(' ', 1)[0]\n"
            "    if not nodes or nodes == '(null)':\n"
            "        break\n"
            "    st = subprocess.run([scontrol, '-o', 'show', 'node', nodes], capture_output=True, text=True).stdout\n"
            "    busy = ('POWERING_UP', 'POWERED_DOWN', 'NOT_RESPONDING')\n"
            "    if st and not any(b in st for b in busy):\n"
            "        break\n"
            "    time.sleep(0.5)\n"
        )
        path.chmod(0o755)
        return str(path)

    def write_conf(self) -> Path:
        for d in (self.etc, self.run_dir, self.log_dir, self.state_dir, self.spool_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.slurm_user != "root":  # what slurmctld writes once it runs as SlurmUser
            import pwd

            user = pwd.getpwnam(self.slurm_user)
            for d in (self.run_dir, self.log_dir, self.state_dir):
                os.chown(d, user.pw_uid, user.pw_gid)
        if not self.ctld_port:
            self.ctld_port, self.slurmd_port = self._pool.take(2)
        includes = self._write_node_includes()
        # No cgroup filesystem here: 24.11's slurmd refuses to start without one unless the
        # cgroup plugin is off; "disabled" exists since 23.02 (22.05's slurmd rejects it).
        if self.release.version_tuple >= (23, 2):
            (self.etc / "cgroup.conf").write_text("CgroupPlugin=disabled\n")
        self._copy_side_file(self.topology_conf, "topology.conf")
        self._copy_side_file(self.gres_conf, "gres.conf")
        lines = [
            f"ClusterName={self.cluster_name}",
            *([f"SlurmctldHost={name}({addr})" for name, addr in self.controllers] or ["SlurmctldHost=localhost"]),
            f"SlurmUser={self.slurm_user}",
            "SlurmdUser=root",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_dir}/munge.socket.2",
            "CredType=cred/munge",
            f"StateSaveLocation={self.state_dir}",
            f"SlurmdSpoolDir={self.spool_dir}/%n",
            f"SlurmctldPidFile={self.ctld_pid_dir}/slurmctld.pid",
            f"SlurmdPidFile={self.run_dir}/slurmd-daemon-%n.pid",
            f"SlurmctldLogFile={self.ctld_log_dir}/slurmctld.log",
            f"SlurmdLogFile={self.log_dir}/slurmd-%n.log",
            # debug, not info: a registration slurmctld ignores is logged at debug only ("Still
            # waiting for boot of node"); Power logs each ResumeProgram call (the power-up request)
            f"SlurmctldDebug={self.debug_level}",
            f"SlurmdDebug={self.debug_level}",
            "DebugFlags=Power",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "TreeWidth=65533",
            "PrivateData=cloud",
            "SlurmdParameters=config_overrides",
            "GresTypes=gpu",
            f"MessageTimeout={self.message_timeout}",
            "SlurmdTimeout=300",
            "KillWait=2",
            "MinJobAge=300",
            f"SuspendTime={self.suspend_time}",
            f"SuspendTimeout={self.suspend_timeout}",
            f"ResumeTimeout={self.resume_timeout}",
            "ResumeRate=0",
            "SuspendRate=0",
            f"SlurmctldParameters={self.slurmctld_parameters}",
        ]
        for key, prog in (
            ("ResumeProgram", self.resume_program),
            ("SuspendProgram", self.suspend_program),
            ("ResumeFailProgram", self.resume_fail_program),
        ):
            if prog:
                lines.append(f"{key}={prog}")
        if self.prolog_wait_for_nodes:
            lines.append(f"PrologSlurmctld={self._prolog()}")
        if self.topology_conf is not None:
            lines.append("TopologyPlugin=topology/tree")
        if self.extra_conf:
            lines.append(self.extra_conf.strip())
        lines += [f"include {p}" for p in includes]
        self.conf_path.write_text("\n".join(lines) + "\n")
        return self.conf_path

    def sync_includes(self, reconfigure: bool = True) -> None:
        """Re-read the node include files (e.g. after ``hpc-bridge partitions`` rewrote them),
        write port-added copies, and ``scontrol reconfigure`` (resets updated NodeAddrs)."""
        self._write_node_includes()
        if reconfigure and self._started:
            self.scontrol("reconfigure")

    def make_program(self, name: str, argv: Sequence[str]) -> str:
        """Write ``etc/<name>``: an executable that runs ``argv + its own arguments`` (Slurm
        passes the hostlist as $1). For ResumeProgram= & co, which take no arguments and run
        with no PATH. Returns the absolute path."""
        self.etc.mkdir(parents=True, exist_ok=True)
        path = self.etc / name
        path.write_text(
            f"#!{self.python}\n"
            "import os, sys\n"
            f"argv = {list(map(str, argv))!r} + sys.argv[1:]\n"
            "os.execv(argv[0], argv)\n"
        )
        path.chmod(0o755)
        return str(path)

    def use_bridge_hooks(self, config_path: str | os.PathLike) -> dict[str, str]:
        """Install scripts/hooks wrappers (this python, this source tree on PYTHONPATH, the given
        hpc-bridge config) under etc/hooks and point Resume/Suspend/ResumeFailProgram at them.
        Call before start() (or follow with write_conf() + ``scontrol reconfigure``)."""
        dest = self.etc / "hooks"
        subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "hooks" / "install"),
                "--dest", str(dest),
                "--python", self.python,
                "--config", str(Path(config_path).resolve()),
                "--pythonpath", str(REPO),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.resume_program = str(dest / "resume")
        self.suspend_program = str(dest / "suspend")
        self.resume_fail_program = str(dest / "resume-fail")
        return {"resume": self.resume_program, "suspend": self.suspend_program, "resume-fail": self.resume_fail_program}

    def use_test_hooks(self) -> None:
        """Trivial hooks with no cloud (tests/slurm_test_hook.py): resume sets NodeAddr=127.0.0.1
        and starts slurmds through scripts/sim-boot-hook; suspend / resume-fail stop them."""
        hook = [self.python, str(REPO / "tests" / "slurm_test_hook.py")]
        self.resume_program = self.make_program("test-resume", [*hook, "resume", str(self.run_dir)])
        self.suspend_program = self.make_program("test-suspend", [*hook, "suspend", str(self.run_dir)])
        self.resume_fail_program = self.make_program("test-resume-fail", [*hook, "resume-fail", str(self.run_dir)])

    def boot_hook_argv(self, action: str = "start") -> list[str]:
        """argv for the simulator's [hooks] on_ready / on_stop: scripts/sim-boot-hook bound to
        this cluster (node name comes from env HPC_BRIDGE_NODE_NAME)."""
        return [
            sys.executable,
            str(REPO / "scripts" / "sim-boot-hook"),
            action,
            "--conf", str(self.conf_path),
            "--run-dir", str(self.run_dir),
            "--sbin", self.sbin_dir,
        ]

    def node_port(self, name: str) -> int:
        return self.node_ports[name]

    # -- start / stop ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        why = self.release.unavailable() if self.release.root else slurm_available(self.sbin_dir, self.bin_dir)
        if why:
            raise RuntimeError(why)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_release_wrappers()
        _become_subreaper()
        self._started = True  # from here on stop() cleans up whatever did start
        try:
            self._start_munged()
            self.write_conf()
            self._start_slurmctld()
            self.wait_for(self._ctld_up, timeout, what="slurmctld answering scontrol ping")
        except BaseException:
            self.stop()
            raise
        return self

    def _daemon(self, argv: Sequence[str], log_path: Path) -> subprocess.Popen:
        """A Slurm daemon in its own session, in the foreground, its output appended to log_path."""
        with open(log_path, "ab") as log:
            return subprocess.Popen(argv, cwd=self.workdir, env={"SLURM_CONF": str(self.conf_path)},
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def _start_slurmctld(self) -> None:
        self._ctld = self._daemon([f"{self.sbin_dir}/slurmctld", "-D", "-i"], self.log_dir / "slurmctld.out")
        global SLURMCTLD_STARTS
        SLURMCTLD_STARTS += 1

    def _ctld_up(self) -> bool:
        if self._ctld is not None and self._ctld.poll() is not None:
            tail = self.log_tail("slurmctld.out") + self.log_tail("slurmctld.log")
            raise RuntimeError(f"slurmctld exited with {self._ctld.returncode}:\n{tail}")
        p = self.run(["scontrol", "ping"], check=False, timeout=10)
        return p.returncode == 0 and "is UP" in p.stdout

    def _start_munged(self) -> None:
        d = self.workdir / "munge"
        # munged insists on o+x for every directory above its socket (pytest's tmp dirs are
        # 0700) and sun_path is short: fall back to a private dir directly under /tmp.
        if len(str(d / "munge.socket.2")) > 100 or not _world_searchable(self.workdir):
            d = Path(tempfile.mkdtemp(prefix="hbmunge-", dir="/tmp"))
            self._munge_tmp = True
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        self.munge_dir = d
        key = d / "munge.key"
        mungekey = shutil.which("mungekey", path=f"{self.sbin_dir}:{self.bin_dir}")
        if not key.exists():
            subprocess.run([mungekey, "-c", "-k", str(key)], check=True, capture_output=True, timeout=30)
        sock = d / "munge.socket.2"
        log = open(d / "munged.out", "ab")
        self._munged = subprocess.Popen(
            [
                f"{self.sbin_dir}/munged",
                "--foreground",  # our child: stopped and reaped by PID, no zombie left behind
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={d}/munged.pid",
                f"--seed-file={d}/munged.seed",
                f"--log-file={d}/munged.log",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._munged_pid = self._munged.pid

        def munge_up():
            if self._munged.poll() is not None:
                raise RuntimeError(f"munged exited with {self._munged.returncode}: {(d / 'munged.out').read_text()[-500:]}")
            return sock.exists()

        self.wait_for(munge_up, 10, what="munged socket")

    def start_slurmd(self, name: str, wait: bool = False, timeout: float = 30.0, fresh_boot: bool = True) -> int:
        """Start ``slurmd -D -b -N name`` (own session; -b reports a fresh boot: its start).
        Returns its PID. A node whose power-up slurmctld has queued (``State=POWER_UP``) but not
        yet issued gets its slurmd once it is issued: see ``_await_power_up_issued``.
        fresh_boot=False: no -b, the slurmd reports the machine's boot time (a VM up for hours).
        With wait=True, returns once slurmctld sees the node responding (``wait_registered``)."""
        if name in self._slurmds and self._slurmds[name].poll() is None:
            return self._slurmds[name].pid
        self._await_power_up_issued(name, timeout)
        (self.spool_dir / name).mkdir(parents=True, exist_ok=True)
        p = self._daemon([f"{self.sbin_dir}/slurmd", "-D", *(["-b"] if fresh_boot else []), "-N", name],
                         self.log_dir / f"slurmd-{name}.out")
        self._slurmds[name] = p
        if wait:
            self.wait_registered([name], timeout)
        return p.pid

    def _await_power_up_issued(self, name: str, timeout: float) -> None:
        """Return once the node has no power-up queued that slurmctld has yet to issue.

        ``scontrol update State=POWER_UP`` only queues it: slurmctld's power-save pass (every
        power_save_interval) marks the node POWERING_UP, stamps the request time and runs
        ResumeProgram. A slurmd whose boot time (-b: its start, in whole seconds) is older than
        that stamp registers into "Still waiting for boot" (logged at debug only) and is never
        asked again until ResumeTimeout, so a slurmd started between the two sometimes never
        registers. A real VM boots only after ResumeProgram ran: so does this slurmd."""
        def queued():
            node = self.node(name)
            return node if node is not None and node.has("POWER_UP", "POWERED_DOWN") else None

        node = queued()
        deadline = time.monotonic() + timeout
        while node and time.monotonic() < deadline:
            time.sleep(0.1)
            node = queued()
        if node:
            raise TimeoutError(f"{name}: power-up still queued after {timeout:g} s, slurmctld never issued it "
                               f"(State={'+'.join(sorted(node.state_flags))})")

    def node(self, name: str):
        """The node as ``scontrol -o show node name`` shows it (hpc_bridge.slurm.SlurmNode), or
        None when slurmctld does not show it."""
        from hpc_bridge.slurm import parse_show_node_output

        return parse_show_node_output(self.run(["scontrol", "-o", "show", "node", name], check=False).stdout).get(name)

    def _responding(self, name: str) -> bool:
        node = self.node(name)
        return node is not None and not node.state_flags & {"NOT_RESPONDING", "POWERING_UP", "POWERED_DOWN", "DOWN"}

    def wait_registered(self, names: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until slurmctld sees every node's slurmd responding; on timeout raise with what
        each pending node looks like to slurmctld and to its slurmd (see ``registration_report``)."""
        names = list(names)
        try:
            self.wait_for(lambda: all(self._responding(n) for n in names), timeout,
                          what=f"slurmd {','.join(names)} registered")
        except TimeoutError as exc:
            pending = [n for n in names if not self._responding(n)]
            raise TimeoutError(f"{exc}\n{self.registration_report(pending)}") from None

    def registration_report(self, names: Iterable[str], lines: int = 20) -> str:
        """Per node: slurmctld's view (State, NodeAddr, BootTime...), whether its slurmd runs,
        the slurmctld log lines naming it and its slurmd's log tail (where the logs are kept)."""
        ctld_log = ""
        try:
            ctld_log = (self.ctld_log_dir / "slurmctld.log").read_text(errors="replace")
        except OSError:
            pass
        out = []
        for name in names:
            node = self.node(name)
            view = node and " ".join(f"{k}={node.raw[k]}" for k in ("State", "NodeAddr", "Port", "BootTime",
                                                                       "SlurmdStartTime", "LastBusyTime", "Reason")
                                     if k in node.raw)
            pids = {p.pid for p in [self._slurmds.get(name)] if p is not None} | self._recorded_slurmd_pids(only=name)
            alive = sorted(p for p in pids if _is_process(p, b"slurmd"))
            named = [x for x in ctld_log.splitlines() if re.search(rf"\b{re.escape(name)}\b", x)][-lines:]
            out += [f"== {name}: slurmctld has {view or 'no such node'}; slurmd "
                    + (f"running (pid {', '.join(map(str, alive))})" if alive else "not running"),
                    f"-- {self.ctld_log_dir / 'slurmctld.log'} lines naming {name}:", *named,
                    f"-- {self.log_dir / f'slurmd-{name}.log'} (tail):",
                    self.log_tail(f"slurmd-{name}.log", lines) + self.log_tail(f"slurmd-{name}.out", 5)]
        return "\n".join(out)

    def stop_slurmd(self, name: str) -> None:
        """Stop the node's slurmd (started here or by the boot hook) and its job processes."""
        pids = set()
        p = self._slurmds.pop(name, None)
        if p is not None:
            pids.add(p.pid)
        pids |= self._recorded_slurmd_pids(only=name)
        for pid in pids:
            self._kill_slurmd_tree(pid)
        if p is not None:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def _recorded_slurmd_pids(self, only: str | None = None) -> set[int]:
        pids = set()
        for f in self.run_dir.glob("slurmd-*.pid"):
            node = f.name[len("slurmd-") : -len(".pid")]
            if node.startswith("daemon-"):
                node = node[len("daemon-") :]
            if only is not None and node != only:
                continue
            try:
                pids.add(int(f.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
        return pids

    def _kill_slurmd_tree(self, pid: int) -> None:
        """SIGTERM the slurmd's session (slurmd + slurmstepds + job tasks), then SIGKILL."""
        if not _is_process(pid, b"slurmd"):
            return
        victims = _session_members(pid)
        victims |= _descendants(victims | {pid})
        _terminate(victims | {pid}, grace=5.0)

    def stop(self) -> None:
        """Kill everything started here, by PID: slurmds (and their jobs), slurmctld, munged."""
        for name in list(self._slurmds):
            self.stop_slurmd(name)
        for pid in self._recorded_slurmd_pids():
            self._kill_slurmd_tree(pid)
        # slurmstepd double-forks into its own session (re-parented away from slurmd) and
        # ignores SIGTERM; it and the job's tasks carry our SLURM_CONF in their environment.
        # (slurmctld's own children - slurmscriptd, running hooks - wait until it has stopped:
        # killing slurmscriptd first makes slurmctld hang ~10 s on SIGTERM.)
        keep = {self._ctld.pid} | _descendants({self._ctld.pid}) if self._ctld is not None else set()
        _terminate(_pids_with_env("SLURM_CONF", str(self.conf_path)) - keep, grace=2.0)
        if self._ctld is not None:
            kids = _descendants({self._ctld.pid})  # hook programs still running
            _terminate({self._ctld.pid}, grace=10.0)
            try:
                self._ctld.wait(5)
            except subprocess.TimeoutExpired:
                pass
            _terminate(kids, grace=2.0)
            self._ctld = None
        # Boot hooks may have raced a last slurmd in while slurmctld stopped.
        for pid in self._recorded_slurmd_pids():
            self._kill_slurmd_tree(pid)
        _terminate(_pids_with_env("SLURM_CONF", str(self.conf_path)), grace=2.0)
        if self._munged is not None:
            _terminate({self._munged.pid}, grace=5.0)
            try:
                self._munged.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self._munged = self._munged_pid = None
        _reap_adopted()
        if self._munge_tmp and self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
        self._started = False

    # -- by-hand use (scripts/slurm-cluster) ------------------------------------------------------

    def save_state(self) -> Path:
        """Write workdir/cluster.json (PIDs, paths) so another process can attach() and stop()."""
        path = self.workdir / "cluster.json"
        path.write_text(
            json.dumps(
                {
                    "conf": str(self.conf_path),
                    "slurmctld": self._ctld.pid if self._ctld else None,
                    "munged": self._munged.pid if self._munged else None,
                    "munge_dir": str(self.munge_dir) if self.munge_dir else None,
                    "munge_tmp": self._munge_tmp,
                    "slurmds": {n: p.pid for n, p in self._slurmds.items() if p.poll() is None},
                    "ports": self.node_ports,
                },
                indent=1,
            )
        )
        return path

    @classmethod
    def attach(cls, workdir: str | os.PathLike) -> SlurmCluster:
        """A handle on a cluster started by another process (from its cluster.json)."""
        c = cls(workdir)
        state = json.loads((c.workdir / "cluster.json").read_text())
        c._ctld = _PidProc(state["slurmctld"], b"slurmctld") if state.get("slurmctld") else None
        c._munged = _PidProc(state["munged"], b"munged") if state.get("munged") else None
        c._munged_pid = state.get("munged")
        c.munge_dir = Path(state["munge_dir"]) if state.get("munge_dir") else None
        c._munge_tmp = bool(state.get("munge_tmp"))
        c._slurmds = {n: _PidProc(pid, b"slurmd") for n, pid in state.get("slurmds", {}).items()}
        c.node_ports = state.get("ports", {})
        c._started = True
        return c

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- using it ----------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a Slurm client (``["sbatch", "-N2", "--wrap", "hostname"]``) with this cluster's
        SLURM_CONF; a bare argv[0] is looked up in bin_dir then sbin_dir."""
        argv = list(argv)
        if not os.path.isabs(argv[0]):
            for d in (self.bin_dir, self.sbin_dir):
                if os.access(os.path.join(d, argv[0]), os.X_OK):
                    argv[0] = os.path.join(d, argv[0])
                    break
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        p = subprocess.run(
            argv, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=self.workdir, stdin=subprocess.DEVNULL
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} -> exit {p.returncode}: {p.stderr.strip()[:500]}")
        return p

    def scontrol(self, *args: str) -> str:
        return self.run(["scontrol", *args]).stdout

    def sbatch(self, *args: str) -> int:
        """sbatch --parsable ... -> job id."""
        out = self.run(["sbatch", "--parsable", *args]).stdout.strip()
        return int(out.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol -o show job`` as a dict ({} when the job is gone)."""
        p = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        if p.returncode != 0:
            return {}
        return dict(re.findall(r"(?:^| )([A-Za-z][A-Za-z0-9_:/]*)=(\S*)", p.stdout.strip()))

    def job_state(self, job_id: int) -> str | None:
        return self.job(job_id).get("JobState")

    def nodes(self):
        """hpc_bridge.slurm.Slurm(...).show_nodes() for this cluster."""
        return self.slurm().show_nodes()

    def node_flags(self, name: str) -> frozenset[str]:
        n = self.nodes().get(name)
        return n.state_flags if n else frozenset()

    @staticmethod
    def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
        """Poll until predicate() is truthy; return its value, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except (RuntimeError, AssertionError):
                raise
            except Exception as exc:  # transient (file not there yet, ...)
                last_exc = exc
            if time.monotonic() >= deadline:
                extra = f" (last error: {last_exc})" if last_exc else ""
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{extra}")
            time.sleep(interval)

    def log_tail(self, name: str, lines: int = 30) -> str:
        p = self.log_dir / name
        try:
            return "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        except OSError:
            return ""

    def status(self) -> dict:
        """What runs, for scripts/slurm-cluster status."""
        return {
            "conf": str(self.conf_path),
            "slurmctld": self._ctld.pid if self._ctld else None,
            "munged": self._munged_pid,
            "slurmds": {n: p.pid for n, p in self._slurmds.items() if p.poll() is None},
        }


class SiteCluster(SlurmCluster):
    """A site's own cluster that hpc-bridge joins: the harness's daemons, ports and paths, but
    none of the keys hpc-bridge's include file may set (the power-saving ones, PrivateData,
    SlurmctldParameters, TreeWidth, GresTypes, TopologyPlugin: the site has its own values in
    ``site_settings``, or none), then ``include <etc>/hpc-bridge.conf`` as the last line
    (``with_bridge``), as README's admin install says."""

    BRIDGE_KEYS = ("PrivateData=", "SlurmctldParameters=", "SuspendTime=", "SuspendTimeout=", "ResumeTimeout=",
                   "ResumeRate=", "SuspendRate=", "TreeWidth=", "GresTypes=", "TopologyPlugin=", "ResumeProgram=",
                   "SuspendProgram=", "ResumeFailProgram=")

    def __init__(self, workdir, *args, site_settings: Sequence[str] = (), with_bridge: bool = True, **kwargs):
        super().__init__(workdir, *args, **kwargs)
        self.site_settings = list(site_settings)
        self.with_bridge = with_bridge

    def write_conf(self) -> Path:
        path = super().write_conf()
        lines = [line for line in path.read_text().splitlines() if not line.startswith(self.BRIDGE_KEYS)]
        lines += self.site_settings
        if self.with_bridge:
            lines.append(f"include {self.etc / 'hpc-bridge.conf'}")
        path.write_text("\n".join(lines) + "\n")
        return path


# -- process helpers (by PID only) -----------------------------------------------------------


class _PidProc:
    """Just enough of Popen for a daemon started by another process (attach())."""

    def __init__(self, pid: int, name: bytes):
        self.pid = pid if _is_process(pid, name) else -1
        self.returncode = None

    def poll(self):
        if self.pid > 0 and _alive(self.pid):
            return None
        self.returncode = 0
        return 0

    def wait(self, timeout: float | None = None):
        deadline = time.monotonic() + (timeout or 0)
        while self.poll() is None:
            if timeout is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)
        return 0


def _world_searchable(path: Path) -> bool:
    for p in [path, *path.parents]:
        try:
            if not p.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _become_subreaper() -> None:
    """Adopt orphaned descendants (slurmds started by hooks whose parent exited), so that
    killing them leaves no zombie when PID 1 of a container does not reap."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def _is_process(pid: int, name: bytes) -> bool:
    """True when pid is alive (not a zombie) and its command line mentions name."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        if stat.rsplit(b")", 1)[1].split()[0] == b"Z":
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return name in f.read()
    except (OSError, IndexError):
        return False


def _pids_with_env(key: str, value: str) -> set[int]:
    """Live processes whose environment has key=value (ours: same SLURM_CONF path)."""
    needle = f"{key}={value}".encode()
    me = os.getpid()
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env and _alive(int(entry)):
            out.add(int(entry))
    return out


def _reap_adopted() -> None:
    """Reap zombie slurmd/slurmstepd processes this (subreaper) process adopted."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
            comm = raw[raw.index(b"(") + 1 : raw.rindex(b")")]
            fields = raw.rsplit(b")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            continue
        if fields[0] == b"Z" and int(fields[1]) == me and comm in (b"slurmd", b"slurmstepd", b"sleep", b"sh", b"bash"):
            try:
                os.waitpid(int(entry), os.WNOHANG)
            except ChildProcessError:
                pass


def _proc_table() -> list[tuple[int, int, int]]:
    """(pid, ppid, session) of every process."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            out.append((int(entry), int(fields[1]), int(fields[3])))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _session_members(sid: int) -> set[int]:
    return {pid for pid, _, s in _proc_table() if s == sid and pid != sid}


def _descendants(roots: set[int]) -> set[int]:
    table = _proc_table()
    found: set[int] = set()
    frontier = set(roots)
    while frontier:
        kids = {pid for pid, ppid, _ in table if ppid in frontier and pid not in found and pid not in roots}
        found |= kids
        frontier = kids
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _terminate(pids: set[int], grace: float) -> None:
    pids = {p for p in pids if p > 1 and p != os.getpid()}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # Reap our own children so no zombies linger.
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
