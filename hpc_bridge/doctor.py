"""`hpc-bridge doctor`: check a live installation end to end, one line per check.

`gather()` collects the facts once (config, one GET status, slurm.conf and its includes on disk,
one scontrol show node, the node map, the state file, the repair timer unit); `run_checks()`
is pure over them and returns one `Check` per line, each failure with its fix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from hpc_bridge.errors import ApiUnreachable, AuthError, BridgeError, ConfigError, NotFoundError, TlsError
from hpc_bridge.slurm import cloud_nodes_hidden

log = logging.getLogger("hpc_bridge.doctor")

OK, FAIL, WARN, SKIP = "ok", "FAIL", "warn", "skip"
TYPICAL_BOOT = 300  # seconds: a cloud VM with its software install rarely Ready sooner
SYSTEMD_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


@dataclass(frozen=True)
class Check:
    name: str
    result: str  # ok / FAIL / warn / skip
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.result:>4}] {self.name}" + (f": {self.detail}" if self.detail else "")
        if self.result in (FAIL, WARN) and self.fix:
            text += f"\n       fix: {self.fix}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "result": self.result.lower(), "detail": self.detail, "fix": self.fix or None}


@dataclass
class Facts:
    config_path: str = ""
    config_error: str | None = None
    cfg: Any = None
    password_source: str | None = None  # "env" / "file"
    password_error: str | None = None
    api_error: BaseException | None = None
    status: Any = None  # ClusterStatus
    slurm_conf_path: str | None = None
    slurm_conf: Any = None  # slurm_conf.SlurmConf
    slurm_conf_error: str | None = None
    conf_problems: list[Any] = field(default_factory=list)  # install.Problem
    partitions_changed: list[str] | None = None
    partitions_error: str | None = None
    slurm_nodes: dict[str, Any] | None = None
    slurm_error: str | None = None
    nodemap_names: set[str] | None = None
    nodemap_error: str | None = None
    state_error: str | None = None
    boot_times: list[float] = field(default_factory=list)  # observed create/start -> done, seconds
    timer_unit: str | None = None  # path of the repair timer unit found
    timer_enabled: bool = False
    slurm_user: str = "root"  # slurm.conf SlurmUser: who runs the hooks
    slurm_uid: int | None = 0  # None: no such user on this host
    files: list["FileFacts"] = field(default_factory=list)  # state_dir, log_dir and what is in them
    files_error: str | None = None
    log_problem: str | None = None
    hook_runs: dict[str, str | None] = field(default_factory=dict)  # slurm.conf key -> None (ran fine) or why not
    running_config: dict[str, str] | None = None  # `scontrol show config` of the running slurmctld
    running_config_error: str | None = None
    lock_problem: str | None = None  # why the state lock does not exclude another process (None: it does)
    lock_tested: bool = False
    state_mount: "Mount | None" = None  # the filesystem holding state_dir
    host: str = ""
    controllers: list[str] = field(default_factory=list)  # SlurmctldHost names, primary first
    shared: dict[str, str | None] = field(default_factory=dict)  # what every controller must read the same
    timer_state: str = ""  # "enabled" / "installed" / "missing": what the other controllers learn of ours
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> its last doctor record
    peers_error: str | None = None


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    options: frozenset[str]  # mount and superblock options, "key=value" or "flag"


@dataclass(frozen=True)
class FileFacts:
    path: str
    uid: int
    mode: int  # st_mode, type bits included


# A listing of state_dir and log_dir longer than this is cut (it is a sign of trouble itself).
MAX_FILES_CHECKED = 10_000


def _names(names) -> str:
    from hpc_bridge.hostlist import compress_or_list

    text = compress_or_list(names)
    return text if len(text) <= 120 else text[:117] + "..."


# --------------------------------------------------------------------------- checks (pure)


def check_config(f: Facts) -> list[Check]:
    if f.config_error:
        return [Check("config valid", FAIL, f.config_error,
                      "fix the key named above; `hpc-bridge example-config` documents every key")]
    out = [Check("config valid", OK, f.config_path)]
    if f.password_error:
        fix = ("chmod 600 the file (owned by the user running the hooks, SlurmUser)" if "readable by" in f.password_error
               else "set [cluster] password_file to a file holding only the password (mode 600)")
        out.append(Check("password file private", FAIL, f.password_error, fix))
    elif f.password_source == "env":
        out.append(Check("password file private", OK, "password from $HPC_BRIDGE_PASSWORD"))
    else:
        out.append(Check("password file private", OK, f.cfg.cluster.password_file if f.cfg else ""))
    return out


def check_api(f: Facts) -> list[Check]:
    if f.cfg is None:
        return [Check("API reachable", SKIP, "no valid config")]
    url = f.cfg.cluster.url
    name = f.cfg.cluster.name
    err = f.api_error
    tls_fail = isinstance(err, TlsError)
    reach = Check("API reachable", OK, url)
    if isinstance(err, ApiUnreachable) and not tls_fail:
        return [Check("API reachable", FAIL, str(err),
                      f"check [cluster] url ({url}), the network path and that the server is running")]
    out = [reach]
    # TLS
    if url.startswith("https://"):
        if tls_fail:
            out.append(Check("TLS verified", FAIL, str(err),
                             "set [cluster] ca_bundle to the CA certificate that signed the server's certificate"))
            return out
        if not f.cfg.cluster.verify_tls:
            out.append(Check("TLS verified", FAIL, "verify_tls = false: the server's certificate is not checked",
                             "set [cluster] verify_tls = true (and ca_bundle for a private CA)"))
        else:
            out.append(Check("TLS verified", OK, "certificate verified" + (
                f" against {f.cfg.cluster.ca_bundle}" if f.cfg.cluster.ca_bundle else "")))
    else:
        from hpc_bridge.config import is_loopback_url

        if is_loopback_url(url):
            out.append(Check("TLS verified", OK, "plain http to loopback (simulator or local proxy)"))
        else:
            out.append(Check("TLS verified", FAIL, "plain http: the password crosses the network in clear",
                             "use an https:// url"))
    if isinstance(err, AuthError):
        out.append(Check("credentials accepted", FAIL, str(err),
                         "check [cluster] username and the password file's content"))
        return out
    if f.password_error and err is None and f.status is None:
        out.append(Check("credentials accepted", SKIP, "no password"))
        return out
    if isinstance(err, NotFoundError):
        out.append(Check("credentials accepted", OK))
        out.append(Check("cluster found", FAIL, str(err),
                         f"check [cluster] name ({name!r}) against the cluster's name in CycleCloud"))
        return out
    if err is not None:
        out.append(Check("credentials accepted", SKIP, "API error before the check"))
        out.append(Check("cluster found", FAIL, str(err), "see the log file (hpc-bridge doctor -v) and the server's log"))
        return out
    out.append(Check("credentials accepted", OK, f.cfg.cluster.username))
    arrays = ", ".join(na.name for na in f.status.nodearrays) if f.status else ""
    out.append(Check("cluster found", OK, f"{name} (nodearrays: {arrays or 'none'})"))
    return out


_PROGRAMS = ("ResumeProgram", "SuspendProgram", "ResumeFailProgram")


def check_slurm_conf(f: Facts) -> list[Check]:
    if f.cfg is None:
        return [Check("slurm.conf", SKIP, "no valid config")]
    if f.slurm_conf_error:
        return [Check("slurm.conf readable", FAIL, f.slurm_conf_error,
                      "set [slurm] conf_dir (or slurm_conf) to where slurm.conf lives")]
    by_key: dict[str, list[Any]] = {}
    for p in f.conf_problems:
        by_key.setdefault(p.key, []).append(p)
    out = []
    progs = [p for k in _PROGRAMS for p in by_key.get(k, [])]
    if progs:
        out.append(Check("slurm.conf hook programs", FAIL, "; ".join(p.message for p in progs),
                         "hpc-bridge install-hooks --write, then " + "; ".join(p.fix for p in progs if "=" in p.fix)[:300]))
    else:
        out.append(Check("slurm.conf hook programs", OK,
                         ", ".join(f"{k}={f.slurm_conf.get(k)}" for k in _PROGRAMS)))
    pd = by_key.get("PrivateData")
    out.append(Check("slurm.conf PrivateData=cloud", FAIL, pd[0].message, pd[0].fix) if pd
               else Check("slurm.conf PrivateData=cloud", OK))
    out.append(check_resume_timeout(f, by_key.get("ResumeTimeout")))
    inc = by_key.get("include", []) + by_key.get("conf_dir", [])
    out.append(Check("slurm.conf includes generated files", FAIL, "; ".join(p.message for p in inc),
                     "; ".join(p.fix for p in inc)) if inc
               else Check("slurm.conf includes generated files", OK,
                          os.path.join(f.cfg.slurm.conf_dir, "partitions.conf")))
    handled = set(_PROGRAMS) | {"PrivateData", "ResumeTimeout", "include", "conf_dir"}
    rest = [p for p in f.conf_problems if p.key not in handled]
    out.append(Check("slurm.conf other settings", FAIL, "; ".join(p.message for p in rest),
                     "; ".join(p.fix for p in rest)) if rest
               else Check("slurm.conf other settings", OK, "no global SuspendTime, SlurmctldParameters, TreeWidth, "
                          "GresTypes, TopologyPlugin, nothing set twice"))
    return out


def check_resume_timeout(f: Facts, problems: list[Any] | None) -> Check:
    """ResumeTimeout is the one `hpc-bridge partitions` sets on each generated partition:
    [resume] resume_timeout (whole seconds)."""
    name = "ResumeTimeout longer than boot time"
    from hpc_bridge.partitions_plan import whole_seconds

    rt = whole_seconds(f.cfg.resume.resume_timeout)
    if problems:
        return Check(name, FAIL, problems[0].message, problems[0].fix)
    longest = max(f.boot_times, default=None)
    if longest is not None:
        if rt <= longest * 1.2:
            want = int(longest * 1.5) + 60
            return Check(name, FAIL, f"ResumeTimeout={rt}s, but nodes took up to {longest:.0f}s to boot "
                         "(state file): slow nodes fail and their jobs are requeued",
                         f"[resume] resume_timeout = {want}, then hpc-bridge partitions --reconfigure")
        return Check(name, OK, f"{rt}s; longest observed boot {longest:.0f}s")
    if rt < TYPICAL_BOOT:
        return Check(name, WARN, f"ResumeTimeout={rt}s; no boot observed yet, cloud VMs typically need "
                     f"{TYPICAL_BOOT}s or more", "[resume] resume_timeout = 1800, then hpc-bridge partitions --reconfigure")
    return Check(name, OK, f"{rt}s (no boot observed yet)")


def check_generated(f: Facts) -> list[Check]:
    name = "generated files up to date"
    if f.partitions_error:
        return [Check(name, FAIL, f.partitions_error, "hpc-bridge partitions")]
    if f.partitions_changed is None:
        return [Check(name, SKIP, "cluster status not available")]
    if f.partitions_changed:
        return [Check(name, FAIL, "out of date: " + ", ".join(f.partitions_changed),
                      "hpc-bridge partitions --diff, then hpc-bridge partitions --reconfigure")]
    return [Check(name, OK)]


def check_nodemap(f: Facts) -> list[Check]:
    name = "Slurm cloud nodes match the node map"
    if f.nodemap_error:
        return [Check(name, FAIL, f.nodemap_error, "hpc-bridge partitions")]
    if f.slurm_error:
        return [Check(name, FAIL, f"Slurm not reachable: {f.slurm_error}",
                      "start slurmctld; check [slurm] bin_dir and conf_dir")]
    if f.slurm_nodes is None or f.nodemap_names is None:
        return [Check(name, SKIP)]
    cloud = {n for n, sn in f.slurm_nodes.items() if sn.cloud}
    only_slurm = cloud - f.nodemap_names
    only_map = f.nodemap_names - cloud
    problems = []
    if only_slurm:
        problems.append(f"{len(only_slurm)} cloud node(s) in Slurm but not in the node map: {_names(only_slurm)}")
    if only_map:
        problems.append(f"{len(only_map)} node(s) in the node map but not in Slurm: {_names(only_map)}")
    if not cloud and not f.nodemap_names:
        return [Check(name, WARN, "no cloud nodes at all", "hpc-bridge partitions --reconfigure")]
    if problems:
        return [Check(name, FAIL, "; ".join(problems),
                      "hpc-bridge partitions --reconfigure (and check PrivateData=cloud: hidden nodes look missing)")]
    return [Check(name, OK, f"{len(cloud)} node(s)")]


def check_state(f: Facts) -> list[Check]:
    if f.cfg is None:
        return [Check("state file readable", SKIP)]
    if f.state_error:
        return [Check("state file readable", FAIL, f.state_error,
                      f"make {f.cfg.paths.state_dir} owned by SlurmUser (mode 700); move a corrupt file aside and run "
                      "hpc-bridge repair")]
    return [Check("state file readable", OK, str(f.cfg.state_file))]


def check_ownership(f: Facts) -> list[Check]:
    """Everything under state_dir and log_dir is SlurmUser's, private, and no link: a file
    another user (root, after a command run by hand) owns locks the hooks out; a link there is
    a way to make a root command write elsewhere."""
    import stat

    name = "state and log files owned by SlurmUser"
    if f.slurm_uid is None:
        return [Check(name, FAIL, f"SlurmUser {f.slurm_user!r} (slurm.conf) is not a user on this host",
                      "set SlurmUser in slurm.conf to the user slurmctld runs as")]
    if f.files_error:
        return [Check(name, FAIL, f.files_error, "make it a directory owned by SlurmUser, mode 700")]
    problems = []
    user = f.slurm_user
    for ff in f.files:
        mode = stat.S_IMODE(ff.mode)
        if stat.S_ISLNK(ff.mode):
            problems.append((ff.path, "is a symbolic link", f"rm {ff.path}"))
        elif not (stat.S_ISDIR(ff.mode) or stat.S_ISREG(ff.mode)):
            problems.append((ff.path, "is not a regular file", f"rm {ff.path}"))
        elif ff.uid != f.slurm_uid:
            problems.append((ff.path, f"owned by uid {ff.uid}, not by {user}", f"chown {user}: {ff.path}"))
        elif stat.S_ISDIR(ff.mode) and mode & 0o077:
            problems.append((ff.path, f"mode {mode:04o}: open to group or others", f"chmod 700 {ff.path}"))
        elif stat.S_ISREG(ff.mode) and mode & 0o022:
            problems.append((ff.path, f"mode {mode:04o}: writable by group or others", f"chmod 600 {ff.path}"))
    if problems:
        shown = problems[:5]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        return [Check(name, FAIL, "; ".join(f"{p} {why}" for p, why, _ in shown) + more,
                      "; ".join(fix for _, _, fix in shown) + " (every file there must be SlurmUser's)")]
    return [Check(name, OK, f"{len(f.files)} entries, all {user}'s")]


def check_log(f: Facts) -> list[Check]:
    if f.log_problem:
        return [Check("log file writable", FAIL, f.log_problem,
                      f"make {f.cfg.paths.log_dir} a directory owned by {f.slurm_user}, mode 700, holding no links")]
    return []


def check_timer(f: Facts) -> list[Check]:
    name = "repair timer installed"
    if not f.timer_unit:
        return [Check(name, FAIL, "no hpc-bridge-repair.timer unit",
                      "hpc-bridge install-hooks --write; systemctl enable --now hpc-bridge-repair.timer")]
    if not f.timer_enabled:
        return [Check(name, FAIL, f"{f.timer_unit} is not enabled",
                      "systemctl enable --now hpc-bridge-repair.timer")]
    return [Check(name, OK, f.timer_unit)]


def check_hook_runs(f: Facts) -> list[Check]:
    """The hooks as slurmctld runs them: as SlurmUser, with no PATH (an empty hostlist does
    nothing but read the config): a wrapper whose interpreter or config SlurmUser cannot reach
    fails here, not at the first job."""
    name = f"hooks run as SlurmUser ({f.slurm_user})"
    if not f.hook_runs:
        return [Check(name, SKIP, "no hook program to run")]
    bad = {k: why for k, why in f.hook_runs.items() if why}
    if bad:
        return [Check(name, FAIL, "; ".join(f"{k}: {why}" for k, why in bad.items()),
                      f"make the interpreter, the hpc-bridge package and its config readable by {f.slurm_user} "
                      "(e.g. a virtualenv outside root-only directories), then hpc-bridge install-hooks --write")]
    return [Check(name, OK, ", ".join(f.hook_runs))]


# What slurmctld must have read for hpc-bridge: slurm.conf key -> how `scontrol show config` names it.
_RUNNING_KEYS = {"ResumeProgram": "ResumeProgram", "SuspendProgram": "SuspendProgram",
                 "ResumeFailProgram": "ResumeFailProgram"}


def check_running_config(f: Facts) -> list[Check]:
    """The running slurmctld's settings, not only the files: an include added but not yet read
    (no restart or reconfigure) passes every file check and still powers nothing up."""
    name = "slurmctld runs with these settings"
    if f.running_config is None:
        return [Check(name, SKIP, f.running_config_error or "slurmctld not asked")]
    problems = []
    for key, shown in _RUNNING_KEYS.items():
        want = f.slurm_conf.get(key) if f.slurm_conf else None
        have = f.running_config.get(shown)
        if want and have != want:
            problems.append(f"{key} is {have or 'not set'} in slurmctld, {want} in slurm.conf")
    if cloud_nodes_hidden(f.running_config):
        problems.append("PrivateData lacks cloud in slurmctld")
    suspend_time = (f.running_config.get("SuspendTime") or "NONE").split()[0]
    if suspend_time.upper() not in ("NONE", "INFINITE", "-1"):
        problems.append(f"a global SuspendTime ({suspend_time}) in slurmctld powers down the site's nodes too")
    if problems:
        return [Check(name, FAIL, "; ".join(problems),
                      "scontrol reconfigure (systemctl restart slurmctld after TreeWidth/TopologyPlugin changes); "
                      "if slurm.conf itself is wrong: hpc-bridge install-hooks --check")]
    return [Check(name, OK, "hook programs, PrivateData, no global SuspendTime")]


def check_lock(f: Facts) -> list[Check]:
    """The state file's lock (and repair's: the same flock(2)) really keeps a second process
    out where state_dir is: the storage may not lock at all (ENOLCK), or only per host."""
    name = "state lock excludes another process"
    if not f.lock_tested:
        return [Check(name, SKIP, "state directory not there yet")]
    if f.lock_problem:
        return [Check(name, FAIL, f.lock_problem,
                      "put [paths] state_dir on a filesystem with working locks (local, NFSv4, or NFSv3 with "
                      "rpc.statd/lockd running and not mounted nolock)")]
    return [Check(name, OK, "a child process was refused the lock this one held")]


# Filesystems every host mounting them sees (and locks) as one.
_SHARED_FS = ("nfs", "nfs4", "lustre", "gpfs", "ceph", "fuse.glusterfs", "glusterfs", "beegfs", "ocfs2", "gfs2",
              "cifs", "smb3", "fuse.cephfs", "wekafs")


def check_shared_storage(f: Facts) -> list[Check]:
    """With a backup controller, state_dir must be one directory for both hosts, locked as one."""
    if len(f.controllers) < 2:
        return []
    name = f"state_dir shared by the controllers ({', '.join(f.controllers)})"
    m = f.state_mount
    if m is None:
        return [Check(name, WARN, "could not tell which filesystem holds state_dir",
                      "check that every controller mounts the same state_dir")]
    where = f"{m.fstype} at {m.point}"
    if m.fstype in ("nfs", "nfs4"):
        local = {o for o in m.options if o in ("nolock", "local_lock=all", "local_lock=flock")}
        if local:
            return [Check(name, FAIL, f"{where} mounted {','.join(sorted(local))}: locks exclude only processes on "
                          "this host, so each controller could run repair (and a follower) at once",
                          "mount it without nolock/local_lock (NFSv4; NFSv3 needs rpc.statd/lockd on both hosts)")]
        version = next((o.split("=", 1)[1] for o in m.options if o.startswith("vers=")), "4" if m.fstype == "nfs4" else "")
        if version.startswith("3"):
            return [Check(name, OK, f"{where} (NFSv3: locks through lockd; without it they fail, see the lock check)")]
        return [Check(name, OK, where)]
    if m.fstype in _SHARED_FS:
        return [Check(name, OK, where)]
    return [Check(name, WARN, f"{where} is not a network filesystem: the controllers share it only if they are "
                  "this one host", "put [paths] state_dir (and Slurm's StateSaveLocation) on storage every "
                  "controller mounts, e.g. NFSv4")]


def check_controllers(f: Facts) -> list[Check]:
    """Every controller runs hpc-bridge the same way: the same slurm.conf settings, the repair
    timer enabled. Each doctor run leaves its host's facts in state_dir, so the hosts are
    compared there (as last seen by doctor on each)."""
    if len(f.controllers) < 2:
        return []
    name = "controllers set up alike"
    if f.peers_error:
        return [Check(name, WARN, f.peers_error, "make state_dir writable by this user and run doctor again")]
    problems, missing = [], []
    for host in f.controllers:
        if host == f.host:
            continue
        peer = f.peers.get(host)
        if peer is None:
            missing.append(host)
            continue
        theirs = peer.get("shared") or {}
        differ = sorted(k for k in f.shared.keys() | theirs.keys() if f.shared.get(k) != theirs.get(k))
        if differ:
            problems.append(f"{host} reads other values for " + ", ".join(
                f"{k} ({theirs.get(k) or 'unset'} there, {f.shared.get(k) or 'unset'} here)" for k in differ))
        if peer.get("timer") != "enabled":
            problems.append(f"the repair timer on {host} is {peer.get('timer') or 'missing'}")
    if f.host not in f.controllers:
        problems.append(f"this host ({f.host}) is not one of slurm.conf's SlurmctldHost names")
    if problems:
        return [Check(name, FAIL, "; ".join(problems),
                      "the same slurm.conf and hpc-bridge config on every controller, hpc-bridge install-hooks "
                      "--write and systemctl enable --now hpc-bridge-repair.timer on each, then doctor on each")]
    if missing:
        return [Check(name, WARN, f"doctor has not run on {', '.join(missing)} yet (it compares the hosts through "
                      "state_dir)", f"run hpc-bridge doctor on {', '.join(missing)}")]
    return [Check(name, OK, ", ".join(f.controllers))]


def run_checks(f: Facts) -> list[Check]:
    out = check_config(f)
    if f.cfg is None:
        return out
    for fn in (check_api, check_slurm_conf, check_running_config, check_hook_runs, check_generated, check_nodemap,
               check_state, check_ownership, check_log, check_timer, check_lock, check_shared_storage,
               check_controllers):
        out.extend(fn(f))
    return out


def failed(checks: list[Check]) -> bool:
    return any(c.result == FAIL for c in checks)


# --------------------------------------------------------------------------- gathering (I/O)


def find_timer(systemd_dirs=SYSTEMD_DIRS) -> tuple[str | None, bool]:
    from hpc_bridge.install import REPAIR_TIMER

    unit = next((os.path.join(d, REPAIR_TIMER) for d in systemd_dirs
                 if os.path.isfile(os.path.join(d, REPAIR_TIMER))), None)
    enabled = any(os.path.exists(os.path.join(d, "timers.target.wants", REPAIR_TIMER)) for d in systemd_dirs)
    return unit, enabled


def boot_times(operations) -> list[float]:
    """Seconds from create/start to all nodes Ready, of the operations seen getting there (not
    those closed later by repair: its run time is not a boot time)."""
    from hpc_bridge.state_records import RESUME_ACTIONS

    return [op.ready - op.started for op in operations
            if op.action in RESUME_ACTIONS and op.ready is not None and op.ready > op.started]


def gather(config_path: str | None, *, client_factory: Callable[[Any], Any] | None = None,
           systemd_dirs=SYSTEMD_DIRS, slurm=None) -> Facts:
    from hpc_bridge.config import PASSWORD_ENV, config_path as resolve, load_config
    from hpc_bridge.install import check_settings
    from hpc_bridge.slurm_conf import read_slurm_conf, slurm_conf_path

    f = Facts(config_path=resolve(config_path))
    try:
        cfg = load_config(config_path)
    except ConfigError as err:
        f.config_error = str(err)
        return f
    f.cfg = cfg
    try:
        cfg.cluster.password()
        f.password_source = "env" if os.environ.get(PASSWORD_ENV) else "file"
    except ConfigError as err:
        f.password_error = str(err)

    # API: one GET status
    if not f.password_error:
        from hpc_bridge.api.client import ClusterClient

        factory = client_factory or (lambda c: ClusterClient.from_config(c, retries=1, retry_budget=5.0))
        try:
            with factory(cfg) as client:
                f.status = client.get_status()
        except BridgeError as err:
            f.api_error = err

    # slurm.conf on disk
    f.slurm_conf_path = slurm_conf_path(cfg)
    try:
        f.slurm_conf = read_slurm_conf(f.slurm_conf_path)
        hooks_dir = os.path.dirname(f.slurm_conf.get("ResumeProgram") or "") or None
        f.conf_problems = check_settings(f.slurm_conf, cfg, hooks_dir=hooks_dir)
    except ConfigError as err:
        f.slurm_conf_error = str(err)

    # generated files
    if f.status is not None:
        from hpc_bridge.partitions import run_partitions

        try:
            f.partitions_changed = run_partitions(cfg, f.status, check=True).changed
        except BridgeError as err:
            f.partitions_error = str(err)

    # Slurm nodes and the node map
    from hpc_bridge.nodemap import load_nodemap

    try:
        f.nodemap_names = set(load_nodemap(cfg.nodemap_path).names())
    except BridgeError as err:
        f.nodemap_error = str(err)
    try:
        from hpc_bridge.nodes_view import _slurm_for

        slurm = slurm or _slurm_for(cfg)
        f.slurm_nodes = slurm.show_nodes()
        f.running_config = slurm.show_config()
    except BridgeError as err:
        f.slurm_error = f.running_config_error = str(err)

    # state file: readable, not corrupt, known schema
    from hpc_bridge.files import NotARegularFile, read_regular_file
    from hpc_bridge.state import MAX_STATE_BYTES, StateStore
    from hpc_bridge.state_records import State

    try:
        raw = read_regular_file(cfg.state_file, MAX_STATE_BYTES)  # a FIFO there must not hang doctor
        state = State.from_json(json.loads(raw), str(cfg.state_file))
        f.boot_times = boot_times(state.operations.values())
    except FileNotFoundError:
        if not os.access(cfg.paths.state_dir if os.path.isdir(cfg.paths.state_dir) else
                         os.path.dirname(cfg.paths.state_dir.rstrip("/")) or "/", os.W_OK):
            f.state_error = f"state directory {cfg.paths.state_dir} is not writable"
    except OSError as err:
        f.state_error = f"cannot read {cfg.state_file}: {err.strerror}"
    except BridgeError as err:
        f.state_error = str(err)
    except NotARegularFile as err:
        f.state_error = f"{cfg.state_file}: {err}"
    except (ValueError, TypeError, KeyError) as err:
        f.state_error = f"{cfg.state_file} is corrupt ({type(err).__name__})"

    try:  # the history is informational: a problem with it is not a state-file problem
        f.boot_times += boot_times(StateStore.from_config(cfg).history())
    except BridgeError as err:
        log.warning("%s", err)

    f.timer_unit, f.timer_enabled = find_timer(systemd_dirs)
    f.timer_state = "enabled" if f.timer_enabled else "installed" if f.timer_unit else "missing"
    gather_shared_storage(f, StateStore.from_config(cfg))
    f.slurm_user = (f.slurm_conf.get("SlurmUser") if f.slurm_conf else None) or "root"
    f.slurm_uid = uid_of(f.slurm_user)
    f.files, f.files_error = list_files(cfg.paths.state_dir, cfg.paths.log_dir)
    if f.slurm_conf is not None:
        f.hook_runs = run_hooks(f.slurm_conf, f.slurm_user, f.slurm_conf_path)
    return f


def gather_shared_storage(f: Facts, store) -> None:
    """The lock test, the filesystem of state_dir, and, with a backup controller, this host's
    record in state_dir (written) and the other controllers' (read)."""
    from hpc_bridge import flock
    from hpc_bridge.install import controller_hosts, shared_settings
    from hpc_bridge.state_records import HOST

    f.host = HOST
    state_dir = str(store.path.parent)
    if os.path.isdir(state_dir):
        f.lock_tested = True
        try:
            f.lock_problem = flock.excludes_another_process(str(store.lock_path), timeout=store.lock_timeout)
        except OSError as err:
            f.lock_problem = f"cannot lock {store.lock_path}: {err.strerror or err}"
    f.state_mount = mount_of(state_dir)
    f.controllers = controller_hosts(f.slurm_conf)
    if len(f.controllers) < 2 or f.slurm_conf is None or not os.path.isdir(state_dir):
        return
    hooks_dir = os.path.dirname(f.slurm_conf.get("ResumeProgram") or "") or None
    from hpc_bridge.install import DEFAULT_HOOKS_DIR

    f.shared = shared_settings(f.slurm_conf, f.cfg, hooks_dir or DEFAULT_HOOKS_DIR)
    f.peers, f.peers_error = exchange_records(state_dir, HOST, {"shared": f.shared, "timer": f.timer_state})


CONTROLLER_RECORD = "controller-{host}.json"


def exchange_records(state_dir: str, host: str, mine: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Write this host's record into state_dir and read the other hosts' (host -> record);
    with why the records could not be used, if so."""
    import glob
    import tempfile
    import time

    from hpc_bridge.files import NotARegularFile, hand_over, read_regular_file

    path = os.path.join(state_dir, CONTROLLER_RECORD.format(host=host))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=state_dir)
        try:
            hand_over(fd, state_dir)
            with os.fdopen(fd, "w") as fh:
                json.dump({**mine, "host": host, "time": time.time()}, fh, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        return {}, f"cannot write {path}: {err.strerror or err}"
    peers: dict[str, dict[str, Any]] = {}
    for other in glob.glob(os.path.join(glob.escape(state_dir), CONTROLLER_RECORD.format(host="*"))):
        try:
            record = json.loads(read_regular_file(other, 64 * 1024))
        except (OSError, ValueError, NotARegularFile):
            continue  # half-written by hand, or not ours: as if that host had no record
        if isinstance(record, dict) and isinstance(record.get("host"), str) and record["host"] != host:
            peers[record["host"]] = record
    return peers, None


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> Mount | None:
    """The mount holding `path` (the longest mount point above it), from mountinfo."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    return parse_mountinfo(lines, real)


def parse_mountinfo(lines: list[str], path: str) -> Mount | None:
    """Pure: the mount of `path` in mountinfo lines ("id parent dev root point opts [tags] - type
    source superopts"; spaces in paths are written \\040)."""
    best: Mount | None = None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 6 or len(rest) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        if not (path == point or path.startswith(point.rstrip("/") + "/")):
            continue
        if best is None or len(point) >= len(best.point):
            options = frozenset(fields[5].split(",")) | frozenset(rest[2].split(","))
            best = Mount(point, rest[0], options)
    return best


def run_hooks(conf, user: str, slurm_conf: str, timeout: float = 60.0) -> dict[str, str | None]:
    """Run each hook program of slurm.conf the way slurmctld does: as `user` (when we are root),
    environment SLURM_CONF only (no PATH), cwd /, one argument: an empty hostlist. Returns
    slurm.conf key -> None when it exited 0, else the exit status and its first stderr line."""
    import pwd
    import subprocess

    out: dict[str, str | None] = {}
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0 and user != "root":
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            return {"SlurmUser": f"no user {user} on this host"}
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    for key in _RUNNING_KEYS:
        program = conf.get(key)
        if not program or not os.path.isabs(program) or not os.access(program, os.X_OK):
            continue  # the slurm.conf checks say what is wrong with it
        try:
            proc = subprocess.run([program, ""], env={"SLURM_CONF": slurm_conf}, cwd="/", stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, errors="replace", timeout=timeout, **as_user)
        except subprocess.TimeoutExpired:
            out[key] = f"{program} did not finish within {timeout:g} s"
            continue
        except OSError as err:
            out[key] = f"{program}: {err.strerror or err}"
            continue
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        out[key] = None if proc.returncode == 0 else \
            f"{program} exited {proc.returncode}: {lines[0][:200] if lines else 'no message'}"
    return out


def uid_of(user: str) -> int | None:
    import pwd

    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def list_files(*directories: str) -> tuple[list[FileFacts], str | None]:
    """Each directory and everything under it (links not followed), from lstat."""
    out: list[FileFacts] = []
    for top in directories:
        try:
            st = os.lstat(top)
        except FileNotFoundError:
            continue  # made, by its first writer
        except OSError as err:
            return out, f"{top}: {err.strerror}"
        out.append(FileFacts(top, st.st_uid, st.st_mode))
        if os.path.islink(top):
            continue
        for root, dirs, names in os.walk(top, onerror=None):
            for entry in dirs + names:
                path = os.path.join(root, entry)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue  # gone meanwhile
                out.append(FileFacts(path, st.st_uid, st.st_mode))
                if len(out) >= MAX_FILES_CHECKED:
                    return out, None
    return out, None


def run_doctor(config_path: str | None, systemd_dir: str | None, command: str = "doctor",
               verbose: int = 0) -> list[Check]:
    """Every check, in order (a check that cannot run says so: none raises)."""
    from hpc_bridge.log import setup_logging

    facts = gather(config_path, systemd_dirs=[systemd_dir] if systemd_dir else SYSTEMD_DIRS)
    if facts.cfg is not None:
        try:
            _, facts.log_problem = setup_logging(command, facts.cfg.paths.log_dir, verbose)
        except (BridgeError, OSError):
            pass
    return run_checks(facts)
