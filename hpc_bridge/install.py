"""`hpc-bridge install-hooks`: the slurm.conf lines, hook wrappers and repair timer, and a check
of an existing slurm.conf.

Pure parts: `desired_settings()` (what slurm.conf needs, from the hpc-bridge config),
`include_file_text()`, `wrapper_text()`, `systemd_units()` and `check_settings()` (what an
existing slurm.conf, read by hpc_bridge.slurm_conf, lacks); `write_install()` writes the files.

Slurm reads a key given more than once with the *latest* value (it logs "specified more than
once, latest value used"), so the generated include file is meant to be included at the END of
slurm.conf; `--check` reports a key whose effective value is wrong wherever it was set.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from hpc_bridge.errors import ConfigError
from hpc_bridge.files import write_atomically
from hpc_bridge.slurm_conf import SlurmConf, read_slurm_conf

log = logging.getLogger("hpc_bridge.install")

HOOKS = {"resume": "ResumeProgram", "suspend": "SuspendProgram", "resume-fail": "ResumeFailProgram"}
INCLUDE_FILE = "hpc-bridge.conf"
DEFAULT_HOOKS_DIR = "/usr/local/libexec/hpc-bridge"
DEFAULT_SYSTEMD_DIR = "/etc/systemd/system"
REPAIR_SERVICE = "hpc-bridge-repair.service"
REPAIR_TIMER = "hpc-bridge-repair.timer"
TREE_WIDTH = 65533  # Slurm's advice for cloud nodes: no tree fan-out through nodes that may be off


@dataclass(frozen=True)
class Setting:
    key: str
    value: str
    why: str


@dataclass(frozen=True)
class Problem:
    key: str
    message: str  # what is wrong, one line
    fix: str  # the line to add / the action to take


# Keys whose value is a comma-separated list: hpc-bridge adds its words to the site's, never
# replaces them (PrivateData=jobs,usage stays jobs,usage and gains cloud).
LIST_KEYS = frozenset({"privatedata", "slurmctldparameters", "grestypes"})


def needed_settings(cfg, hooks_dir: str, resume_rate: int = 0, suspend_rate: int = 0) -> list[Setting]:
    """What slurm.conf needs for hpc-bridge (list-valued keys: only our words), in write order.
    Power-saving times are not here: `hpc-bridge partitions` sets them on each generated
    partition, so that only cloud nodes are ever powered down."""
    ctld = ["idle_on_node_suspend"]
    if cfg.slurm.address_mode == "registration":
        ctld.append("cloud_reg_addrs")
    elif cfg.slurm.address_mode == "dns":
        ctld.append("cloud_dns")
    return [
        Setting("ResumeProgram", os.path.join(hooks_dir, "resume"), "create/start the cloud nodes"),
        Setting("SuspendProgram", os.path.join(hooks_dir, "suspend"), "shut down / deallocate / terminate them"),
        Setting("ResumeFailProgram", os.path.join(hooks_dir, "resume-fail"), "clean up nodes that never came up"),
        Setting("ResumeRate", str(resume_rate), "0: no limit, hpc-bridge batches the API calls"),
        Setting("SuspendRate", str(suspend_rate), "0: no limit"),
        Setting("PrivateData", "cloud", "show powered-down cloud nodes in sinfo/scontrol"),
        Setting("SlurmctldParameters", ",".join(ctld), "powered-down nodes go idle at once"
                + ("; slurmd's address is taken from its registration" if "cloud_reg_addrs" in ctld else "")),
        Setting("TreeWidth", str(TREE_WIDTH), "no message fan-out through cloud nodes"),
        Setting("GresTypes", "gpu", "gres.conf from hpc-bridge partitions declares GPUs"),
        Setting("TopologyPlugin", "topology/tree", "topology.conf from hpc-bridge partitions (placement groups)"),
    ]


def controller_hosts(conf: SlurmConf | None) -> list[str]:
    """The slurmctld hosts slurm.conf names, primary first: every `SlurmctldHost=name(addr)`
    (or the older ControlMachine/BackupController). More than one: a backup controller runs the
    hooks after a failover, so both hosts need the same lines, hooks, timer and state_dir."""
    if conf is None:
        return []
    values = [v for v, _ in conf.occurrences.get("slurmctldhost", [])]
    if not values:
        values = [v for key in ("controlmachine", "backupcontroller") for v, _ in conf.occurrences.get(key, [])]
    return list(dict.fromkeys(v.split("(", 1)[0].strip() for v in values if v.strip()))


def shared_settings(conf: SlurmConf, cfg, hooks_dir: str) -> dict[str, str | None]:
    """What every controller of one cluster must read the same (the effective values of the
    keys hpc-bridge sets, the controller list, Slurm's own StateSaveLocation): compared by
    `doctor` across the hosts."""
    keys = [s.key for s in needed_settings(cfg, hooks_dir)] + ["StateSaveLocation"]
    out = {key: conf.get(key) for key in keys}
    out["SlurmctldHost"] = ",".join(controller_hosts(conf)) or None
    return out


def _list_words(value: str | None) -> list[str]:
    return list(dict.fromkeys(w.strip() for w in (value or "").split(",") if w.strip()))


def merged_value(setting: Setting, site_value: str | None) -> str | None:
    """The value the include file must set for `setting` given the site's own effective value,
    or None when the site's value already does (then the include leaves the key to the site,
    and Slurm never sees it twice)."""
    key = setting.key.lower()
    if site_value is None:
        return setting.value
    if key in LIST_KEYS:
        have = _list_words(site_value)
        lower = {w.lower() for w in have}
        missing = [w for w in _list_words(setting.value) if w.lower() not in lower]
        return ",".join(have + missing) if missing else None
    if key == "treewidth":
        width = _seconds(site_value)
        return None if width is not None and width >= TREE_WIDTH else setting.value
    if key == "topologyplugin":
        return None if site_value.strip().lower() == setting.value else setting.value
    return None if site_value.strip() == setting.value else setting.value


def desired_settings(cfg, hooks_dir: str, site: SlurmConf | None = None) -> list[Setting]:
    """The lines of the include file: what the site's slurm.conf (read without the include
    file) lacks, list-valued keys merged with the site's words."""
    out = []
    for s in needed_settings(cfg, hooks_dir):
        value = merged_value(s, site.get(s.key) if site else None)
        if value is not None:
            out.append(Setting(s.key, value, s.why))
    return out


def partitions_include(cfg) -> str:
    return os.path.join(cfg.slurm.conf_dir, "partitions.conf")


def include_file_text(cfg, settings: list[Setting], config_path: str) -> str:
    lines = [
        "# hpc-bridge: Slurm power saving for cloud nodes. Written by `hpc-bridge install-hooks`.",
        f"# hpc-bridge config: {config_path}",
        "# Include this file at the END of slurm.conf (a later value of a key wins), then",
        "# `scontrol reconfigure` (TreeWidth/TopologyPlugin/GresTypes need a slurmctld restart).",
        "# Only what slurm.conf lacks is here; list-valued keys carry slurm.conf's words plus ours.",
        "# SuspendTime, SuspendTimeout and ResumeTimeout are set on each generated partition",
        "# (partitions.conf), so only cloud nodes are powered down: leave the global ones unset.",
        "",
    ]
    if not settings:
        lines.append("# (slurm.conf already sets everything hpc-bridge needs)")
    for s in settings:
        lines.append(f"# {s.why}")
        lines.append(f"{s.key}={s.value}")
    lines += ["", "# nodes and partitions generated from the cluster's buckets by `hpc-bridge partitions`;",
              "# gres.conf and topology.conf are read from slurm.conf's directory",
              f"include {partitions_include(cfg)}", ""]
    return "\n".join(lines)


def _check_path(what: str, value: str) -> str:
    if not os.path.isabs(value):
        raise ConfigError(f"{what} must be an absolute path, got {value!r}")
    if any(c in value for c in "'\"\n\r\\$`"):
        raise ConfigError(f"{what} contains a character a hook wrapper cannot hold: {value!r}")
    return value


def wrapper_text(hook: str, python: str, config_path: str, pythonpath: str = "") -> str:
    """A /bin/sh wrapper Slurm can run with no PATH: interpreter and config fixed."""
    _check_path("--python", python)
    _check_path("config path", config_path)
    lines = [
        "#!/bin/sh",
        f"# hpc-bridge {HOOKS[hook]} wrapper, written by `hpc-bridge install-hooks`.",
        "# Slurm runs it with no PATH and one argument (a hostlist); everything is fixed here.",
        "# env HPC_BRIDGE_CONFIG, when set, overrides the config path.",
    ]
    if pythonpath:
        for part in pythonpath.split(":"):
            _check_path("--pythonpath", part)
        lines.append(f"PYTHONPATH='{pythonpath}'${{PYTHONPATH:+:$PYTHONPATH}}; export PYTHONPATH")
    lines.append(f"exec '{python}' -m hpc_bridge {hook} --config \"${{HPC_BRIDGE_CONFIG:-{config_path}}}\" \"$@\"")
    return "\n".join(lines) + "\n"


def systemd_units(python: str, config_path: str, user: str = "slurm", pythonpath: str = "",
                  interval: str = "1min") -> dict[str, str]:
    """The repair service (oneshot) and its timer: scripts/systemd/hpc-bridge-repair.{service,timer}
    with the interpreter and config path fixed (no PATH lookup of an `hpc-bridge` script)."""
    _check_path("--python", python)
    _check_path("config path", config_path)
    env = f"Environment=PYTHONPATH={pythonpath}\n" if pythonpath else ""
    service = (
        "[Unit]\n"
        "Description=hpc-bridge repair: reconcile Slurm, the cloud nodes and the state file\n"
        "Documentation=man:slurm.conf(5)\n"
        "After=network-online.target slurmctld.service\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"User={user}\n"
        f"{env}"
        f"ExecStart={python} -m hpc_bridge repair --config {config_path}\n"
        "TimeoutStartSec=300\n"
        "Nice=5\n"
        "NoNewPrivileges=yes\n"
        "PrivateTmp=yes\n"
        "ProtectSystem=full\n"
        "ProtectHome=read-only\n"
    )
    timer = (
        "[Unit]\n"
        "Description=Run hpc-bridge repair regularly\n"
        "\n"
        "[Timer]\n"
        "OnBootSec=2min\n"
        f"OnUnitActiveSec={interval}\n"
        "AccuracySec=5s\n"
        f"Unit={REPAIR_SERVICE}\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {REPAIR_SERVICE: service, REPAIR_TIMER: timer}


def default_pythonpath() -> str:
    """The source tree's root when hpc_bridge is not installed in site-packages (a checkout)."""
    import hpc_bridge

    root = Path(hpc_bridge.__file__).resolve().parent.parent
    if "site-packages" in root.parts or "dist-packages" in root.parts:
        return ""
    return str(root)


def _words(value: str | None) -> set[str]:
    return {w.strip().lower() for w in (value or "").split(",") if w.strip()}


def _seconds(value: str | None) -> int | None:
    if value is None:
        return None
    v = value.strip().lower().removesuffix("sec").strip()
    try:
        return int(v)
    except ValueError:
        return None


def is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def is_hpc_bridge_hook(path: str, hook: str) -> bool:
    """True when the program at `path` runs `hpc_bridge <hook>` (our wrapper, or one of
    scripts/hooks/): a SuspendProgram=/bin/true or another product's hook is not ours."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192).decode("utf-8", "replace")
    except OSError:
        return False
    return re.search(rf"-m hpc_bridge {re.escape(hook)}(\s|$)", head) is not None


def _disabled(value: str | None) -> bool:
    return value is None or value.strip().upper() in ("NONE", "INFINITE", "UNLIMITED", "-1")


def check_settings(conf: SlurmConf, cfg, *, executable: Callable[[str], bool] = is_executable,
                   runs_hook: Callable[[str, str], bool] = is_hpc_bridge_hook,
                   hooks_dir: str | None = None) -> list[Problem]:
    """What `conf` lacks for hpc-bridge, or sets twice (empty list: nothing). Pure given
    `executable` and `runs_hook`."""
    problems: list[Problem] = []
    hooks_dir = hooks_dir or DEFAULT_HOOKS_DIR
    for hook, key in HOOKS.items():
        value = conf.get(key)
        want = os.path.join(hooks_dir, hook)
        if not value:
            problems.append(Problem(key, f"{key} is not set", f"{key}={want}"))
        elif not os.path.isabs(value):
            problems.append(Problem(key, f"{key}={value} is not an absolute path (Slurm runs hooks with no PATH)",
                                    f"{key}={want}"))
        elif not executable(value):
            problems.append(Problem(key, f"{key}={value} is not an existing executable",
                                    f"hpc-bridge install-hooks --write (writes {want}), then {key}={want}"))
        elif not runs_hook(value, hook):
            problems.append(Problem(key, f"{key}={value} is not hpc-bridge's {hook} hook (it does not run "
                                    f"`-m hpc_bridge {hook}`)", f"{key}={want} (hpc-bridge install-hooks --write)"))
    suspend_time = conf.get("SuspendTime")
    if not _disabled(suspend_time):
        problems.append(Problem("SuspendTime", f"a global SuspendTime={suspend_time} ({conf.where['suspendtime']}) "
                                "powers down every idle node, the site's own too, through hpc-bridge's "
                                "SuspendProgram", "remove it: hpc-bridge sets SuspendTime on each generated "
                                "partition ([suspend] suspend_time)"))
    for s in needed_settings(cfg, hooks_dir):
        if merged_value(s, conf.get(s.key)) is not None and s.key not in HOOKS.values():
            have = conf.get(s.key)
            fix = merged_value(s, have)
            problems.append(Problem(s.key, f"{s.key} is {have if have is not None else 'not set'}: {_NEEDS[s.key]}",
                                    f"{s.key}={fix}"))
    problems += duplicate_problems(conf, cfg, hooks_dir)
    want_inc = os.path.normpath(partitions_include(cfg))
    if not any(os.path.normpath(p) == want_inc for p in conf.includes):
        problems.append(Problem("include", f"no `include {want_inc}`: Slurm does not know the cloud nodes",
                                f"include {want_inc}"))
    for path in conf.missing_includes:
        problems.append(Problem("include", f"included file {path} does not exist (slurmctld will not start)",
                                "hpc-bridge partitions" if path.endswith(("partitions.conf",)) else f"create {path}"))
    conf_dir = os.path.dirname(os.path.normpath(conf.path))
    if os.path.normpath(cfg.slurm.conf_dir) != conf_dir:
        problems.append(Problem("conf_dir", f"[slurm] conf_dir is {cfg.slurm.conf_dir} but slurm.conf is in {conf_dir}: "
                                "Slurm reads gres.conf and topology.conf only next to slurm.conf",
                                f"set [slurm] conf_dir = \"{conf_dir}\" in the hpc-bridge config"))
    return problems


_NEEDS = {
    "ResumeRate": "hpc-bridge batches its API calls, Slurm need not hold resumes back (0)",
    "SuspendRate": "hpc-bridge batches its API calls, Slurm need not hold suspends back (0)",
    "PrivateData": "without cloud, powered-down nodes are invisible to scontrol, so hpc-bridge cannot see them",
    "SlurmctldParameters": "hpc-bridge needs the words in the fix",
    "TreeWidth": "messages would be forwarded through nodes that may be powered down",
    "GresTypes": "without gpu, the generated Gres=gpu lines are ignored",
    "TopologyPlugin": "without topology/tree, placement groups from topology.conf are ignored",
}


def duplicate_problems(conf: SlurmConf, cfg, hooks_dir: str) -> list[Problem]:
    """Keys hpc-bridge sets that are set in more than one place: Slurm keeps only the last
    (logging "specified more than once"), so the site's earlier value is silently lost."""
    problems = []
    for s in needed_settings(cfg, hooks_dir):
        seen = conf.occurrences.get(s.key.lower(), [])
        if len(seen) < 2:
            continue
        where = "; ".join(f"{w} {v}" for v, w in seen)
        if s.key.lower() in LIST_KEYS:
            words: list[str] = []
            for value, _ in seen:
                words += [w for w in _list_words(value) if w.lower() not in {x.lower() for x in words}]
            lost = [w for w in words if w.lower() not in _words(conf.get(s.key))]
            detail = f"Slurm keeps only the last, so {','.join(lost)} {'is' if len(lost) == 1 else 'are'} lost" \
                if lost else "Slurm keeps only the last"
            value = merged_value(s, ",".join(words)) or ",".join(words)
        else:
            detail = "Slurm keeps only the last"
            value = merged_value(s, seen[0][0]) or seen[0][0]
        problems.append(Problem(s.key, f"{s.key} is set more than once ({where}): {detail}",
                                f"set {s.key}={value} on the line at {seen[0][1]} and delete the others, then rerun "
                                "hpc-bridge install-hooks --write (the include then leaves it out)"))
    return problems


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text, mode=mode)


LOGROTATE_FILE = "hpc-bridge"
EXAMPLE_CONFIG = "config.example.toml"


def shipped_file(name: str) -> str:
    """A file shipped in the package's templates (the sample config, the logrotate template)."""
    from hpc_bridge.templating import default_template_dir

    return (default_template_dir() / name).read_text(encoding="utf-8")


def logrotate_text(cfg, user: str) -> str:
    """The logrotate snippet for this site's [paths] and SlurmUser (the owner of the files)."""
    import grp
    import pwd

    from hpc_bridge.templating import template_environment

    for what, path in (("[paths] log_dir", cfg.paths.log_dir), ("[paths] state_dir", cfg.paths.state_dir)):
        _check_path(what, path)
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*", user):
        raise ConfigError(f"SlurmUser {user!r} is not a user name logrotate can take")
    try:
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        group = user  # not a user of this host (written for another one): its usual own group
    return template_environment().get_template("logrotate.j2").render(log_dir=cfg.paths.log_dir.rstrip("/"), state_dir=cfg.paths.state_dir.rstrip("/"),
                           user=user, group=group)


@dataclass
class InstallPlan:
    files: dict[str, tuple[str, int]]  # path -> (text, mode)
    include_path: str
    settings: list[Setting]


def plan_install(cfg, *, slurm_conf_dir: str, hooks_dir: str = DEFAULT_HOOKS_DIR,
                 systemd_dir: str = DEFAULT_SYSTEMD_DIR, python: str | None = None, pythonpath: str | None = None,
                 user: str = "slurm", site: SlurmConf | None = None,
                 logrotate_dir: str | None = None) -> InstallPlan:
    """`site`: slurm.conf as read without the include file (its own values, to merge with).
    With `logrotate_dir`, the logrotate snippet for this site's paths goes there too. The
    sample config (every key, commented) is written next to the config file."""
    python = python or sys.executable
    pythonpath = default_pythonpath() if pythonpath is None else pythonpath
    config_path = os.path.abspath(cfg.source) if cfg.source and not cfg.source.startswith("<") else \
        "/etc/hpc-bridge/config.toml"
    for what, d in (("--slurm-conf-dir", slurm_conf_dir), ("--hooks-dir", hooks_dir), ("--systemd-dir", systemd_dir)):
        _check_path(what, d)
    settings = desired_settings(cfg, hooks_dir, site)
    include_path = os.path.join(slurm_conf_dir, INCLUDE_FILE)
    files: dict[str, tuple[str, int]] = {include_path: (include_file_text(cfg, settings, config_path), 0o644)}
    for hook in HOOKS:
        files[os.path.join(hooks_dir, hook)] = (wrapper_text(hook, python, config_path, pythonpath), 0o755)
    for name, text in systemd_units(python, config_path, user=user, pythonpath=pythonpath).items():
        files[os.path.join(systemd_dir, name)] = (text, 0o644)
    if logrotate_dir is not None:
        _check_path("--logrotate-dir", logrotate_dir)
        files[os.path.join(logrotate_dir, LOGROTATE_FILE)] = (logrotate_text(cfg, user), 0o644)
    files[os.path.join(os.path.dirname(config_path), EXAMPLE_CONFIG)] = (shipped_file(EXAMPLE_CONFIG), 0o644)
    return InstallPlan(files=files, include_path=include_path, settings=settings)


def write_install(plan: InstallPlan) -> list[str]:
    written = []
    for path, (text, mode) in plan.files.items():
        try:
            _atomic_write(Path(path), text, mode)
        except OSError as err:
            raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None
        written.append(path)
    return written


def instructions(plan: InstallPlan, slurm_conf_dir: str, controllers: list[str] | None = None) -> list[str]:
    steps = [
        f"1. add this line at the END of {os.path.join(slurm_conf_dir, 'slurm.conf')}:  include {plan.include_path}",
        "   (and delete earlier lines setting the same keys, or `hpc-bridge install-hooks --check` keeps listing them)",
        "2. hpc-bridge partitions            # writes partitions.conf, gres.conf, topology.conf, nodemap.json",
        "3. systemctl daemon-reload && systemctl enable --now " + REPAIR_TIMER,
        "4. systemctl restart slurmctld      # TreeWidth/TopologyPlugin/GresTypes need a restart, the rest a reconfigure",
        "5. hpc-bridge doctor                # checks the whole installation",
    ]
    if controllers and len(controllers) > 1:
        steps += [
            f"6. slurm.conf names {len(controllers)} controllers ({', '.join(controllers)}): whichever runs slurmctld "
            "runs the hooks, so on EACH of them:",
            "   the same slurm.conf (with the include line), this hpc-bridge config at the same path with [paths] "
            "state_dir on storage they all mount (NFSv4, or NFSv3 with lockd; see README \"HA controllers\"), "
            "`hpc-bridge install-hooks --write`, step 3, then step 5 (doctor compares the hosts' settings through "
            "state_dir; repair runs on one host at a time through its lock there)",
        ]
    return steps


def user_from_conf(conf: SlurmConf | None) -> str:
    return (conf.get("SlurmUser") if conf else None) or "slurm"


def problems_lines(problems: Iterable[Problem]) -> list[str]:
    return [f"problem: {p.message}\n  fix: {p.fix}" for p in problems]


def problem_json(p: Problem) -> dict[str, str]:
    return {"key": p.key, "message": p.message, "fix": p.fix}


def check_install(cfg, slurm_conf_dir: str, hooks_dir: str | None = None) -> tuple[str, list[Problem]]:
    """`install-hooks --check`: DIR/slurm.conf as read (its path) and what it lacks for hpc-bridge."""
    existing = read_slurm_conf(os.path.join(os.path.abspath(slurm_conf_dir), "slurm.conf"))
    return existing.path, check_settings(existing, cfg, hooks_dir=hooks_dir or DEFAULT_HOOKS_DIR)


@dataclass
class Installation:
    """The files install-hooks writes (or shows), and after writing what slurm.conf still sets
    against hpc-bridge."""

    plan: InstallPlan
    next_steps: list[str]
    slurm_conf: str
    hooks_dir: str
    has_slurm_conf: bool  # DIR/slurm.conf could be read
    written: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def prepare_install(cfg, *, slurm_conf_dir: str, hooks_dir: str | None = None, systemd_dir: str | None = None,
                    python: str | None = None, pythonpath: str | None = None, user: str | None = None,
                    logrotate_dir: str | None = None) -> Installation:
    """The files for this config and DIR/slurm.conf (its own values merged in when it can be read)."""
    hooks_dir = hooks_dir or DEFAULT_HOOKS_DIR
    conf_dir = os.path.abspath(slurm_conf_dir)
    slurm_conf = os.path.join(conf_dir, "slurm.conf")
    existing = site = None
    try:
        existing = read_slurm_conf(slurm_conf)
        site = read_slurm_conf(slurm_conf, skip=[os.path.join(conf_dir, INCLUDE_FILE)])  # the site's own values
    except ConfigError:
        pass
    plan = plan_install(cfg, slurm_conf_dir=conf_dir, hooks_dir=hooks_dir, systemd_dir=systemd_dir or DEFAULT_SYSTEMD_DIR,
                        python=python, pythonpath=pythonpath, user=user or user_from_conf(existing), site=site,
                        logrotate_dir=logrotate_dir)
    return Installation(plan=plan, next_steps=instructions(plan, conf_dir, controller_hosts(existing)),
                        slurm_conf=slurm_conf, hooks_dir=hooks_dir, has_slurm_conf=existing is not None)


def install(cfg, inst: Installation) -> Installation:
    """Write the files, then read slurm.conf again for what it still sets against hpc-bridge
    (a key twice, a foreign hook, a global SuspendTime); both logged."""
    inst.written = write_install(inst.plan)
    for path in inst.written:
        log.info("wrote %s", path)
    if inst.has_slurm_conf:
        inst.problems = [p for p in check_settings(read_slurm_conf(inst.slurm_conf), cfg, hooks_dir=inst.hooks_dir)
                         if p.key not in ("include",)]
    for p in inst.problems:
        log.warning("%s; fix: %s", p.message, p.fix)
    return inst
