"""The only module that runs Slurm commands.

Every command is an argv list with an absolute path (hooks run with no PATH), never a shell.
Many nodes go into one ``scontrol update`` call; only an argv that would exceed ~100 KiB is
split into chunks. Everything that reaches scontrol is validated first, and every failure is a
:class:`~hpc_bridge.errors.SlurmError` with a one-line message (command and Slurm's complaint).

Reading the node table is one ``scontrol -o show node`` call. Powered-down cloud nodes appear in
it only when slurm.conf has ``PrivateData=cloud`` (22.05: ``scontrol -a`` does not help).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from hpc_bridge.errors import SlurmError

__all__ = [
    "Slurm",
    "SlurmNode",
    "parse_show_node_line",
    "parse_show_node_output",
    "parse_show_config_output",
    "slurm_version",
    "cloud_nodes_hidden",
    "MAX_ARGV_BYTES",
]

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"

# Linux caps one argument at 128 KiB (MAX_ARG_STRLEN); stay well below it for the whole argv.
MAX_ARGV_BYTES = 100 * 1024

# Keys `scontrol -o show node` prints (22.05 .. 24.x). Free-text values (Reason, Comment, ...)
# end only where one of these keys starts, so "Reason=quota: Foo=bar" stays one value.
KNOWN_NODE_KEYS = frozenset(
    """NodeName Arch CoresPerSocket CPUAlloc CPUEfctv CPUTot CPULoad AvailableFeatures
    ActiveFeatures Features Gres GresDrain GresUsed NodeAddr NodeHostName Port Version OS
    RealMemory AllocMem FreeMem Sockets Boards State ThreadsPerCore TmpDisk Weight Owner
    MCS_label NextState Partitions BootTime SlurmdStartTime LastBusyTime ResumeAfterTime
    CfgTRES AllocTRES CapWatts CurrentWatts AveWatts LowestJoules ConsumedJoules
    ExtSensorsJoules ExtSensorsWatts ExtSensorsTemp Reason Comment Extra CPUSpecList
    MemSpecLimit CoreSpecCount Reservation InstanceId InstanceType Topology Cluster
    Power PowerConsumption RestrictedCoresPerGPU""".split()
)
FREE_TEXT_NODE_KEYS = frozenset({"Reason", "Comment", "Extra", "OS"})

# A candidate key: a word at the start of the line or after a space, followed by "=". It is
# matched with the space before it (split() runs on " " + line): a pattern that starts with a
# literal is ~5x faster in re than a look-behind, and the space is only ever stripped off.
_KEY_RE = re.compile(r" ([A-Za-z][A-Za-z0-9_]*+)=")
_REASON_SUFFIX_RE = re.compile(r"^(?P<text>.*?)\s*\[(?P<user>[^\]@\s]*)@(?P<time>[^\]\s]*)\]$", re.S)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_STATE_RE = re.compile(r"^[A-Za-z_]+$")
_NULLS = frozenset({"", "(null)", "None", "Unknown", "N/A", "n/a"})
# scontrol refuses these without a reason; say so before the call.
_STATES_NEEDING_REASON = frozenset({"DOWN", "DRAIN", "FAIL"})


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ was a third of parsing 10,000 lines
class SlurmNode:
    """One line of ``scontrol -o show node``, as plain data (treat it as read-only).

    ``state`` is the base state (IDLE, DOWN, MIXED, ALLOCATED, ...); ``state_flags`` holds every
    '+'-separated part of State= *including* the base (e.g. {"IDLE", "CLOUD", "POWERED_DOWN"}).
    ``reason`` is the text without Slurm's ``[user@time]`` suffix (see reason_user/reason_time).
    Missing or null values ("(null)", "None", "Unknown") are None / empty.
    """

    name: str
    state: str
    state_flags: frozenset[str]
    reason: str | None = None
    reason_user: str | None = None
    reason_time: str | None = None
    node_addr: str | None = None
    node_hostname: str | None = None
    features: tuple[str, ...] = ()
    active_features: tuple[str, ...] = ()
    partitions: tuple[str, ...] = ()
    cpus: int | None = None
    real_memory: int | None = None
    gres: str = ""
    port: int | None = None
    boot_time: str | None = None
    slurmd_start_time: str | None = None
    last_busy: str | None = None
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def has(self, *flags: str) -> bool:
        """True when every flag is in state_flags."""
        return all(f in self.state_flags for f in flags)

    @property
    def powered_down(self) -> bool:
        return "POWERED_DOWN" in self.state_flags

    @property
    def cloud(self) -> bool:
        return "CLOUD" in self.state_flags


def _split_pairs(line: str) -> dict[str, str]:
    """Split one ``Key=Value Key=Value`` line; values may contain spaces (Reason=...).

    ``_KEY_RE.split`` cuts the line at every candidate `` Word=`` in C: [prefix, key, value,
    key, value, ...]; the pieces, with " " before each key, concatenate back to the line. When
    every candidate is a key Slurm prints and none repeats (a usual line, ~40 keys), no value
    can swallow a later candidate, so the pairs are the pieces as they are. Otherwise the rules
    below decide which candidates end a value; a skipped candidate joins the value it is in.
    """
    parts = _KEY_RE.split(" " + line)
    keys = parts[1::2]
    if KNOWN_NODE_KEYS.issuperset(keys) and len(set(keys)) == len(keys):
        return dict(zip(keys, map(str.strip, parts[2::2])))
    pairs: dict[str, str] = {}
    key: str | None = None
    value: list[str] = []
    for i in range(1, len(parts), 2):
        cand = parts[i]
        if key is not None:
            # Inside free text only a key Slurm really prints ends the value; elsewhere any
            # ` Word=` does (so keys added by a newer Slurm still split).
            # Slurm prints each key once: a key already seen is part of the free text.
            if key in FREE_TEXT_NODE_KEYS and (cand not in KNOWN_NODE_KEYS or cand in pairs or cand == key):
                value += (" ", cand, "=", parts[i + 1])
                continue
            if key not in FREE_TEXT_NODE_KEYS and cand not in KNOWN_NODE_KEYS and not cand[0].isupper():
                value += (" ", cand, "=", parts[i + 1])
                continue
            pairs[key] = "".join(value).strip()
        key = cand
        value = [parts[i + 1]]
    if key is not None:
        pairs[key] = "".join(value).strip()
    return pairs


def _opt(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return None if value in _NULLS else value


# The helpers below see the same few values on every line of a big cluster (feature lists,
# partitions, states, CPU counts): each distinct value is parsed once per process. Their
# results are immutable (int, str, tuple, frozenset), so sharing them is safe.
@functools.lru_cache(maxsize=4096)
def _int(value: str | None) -> int | None:
    value = _opt(value)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _list(value: str | None) -> tuple[str, ...]:
    value = _opt(value)
    if value is None:
        return ()
    return tuple(v for v in value.split(",") if v)


@functools.lru_cache(maxsize=1024)
def _state(state_text: str) -> tuple[str, frozenset[str]]:
    """State= text -> (base state, every '+'-separated part upper-cased)."""
    # sinfo-style suffixes (*~#%!) never appear in scontrol, but be lenient.
    parts = [p.strip().rstrip("*~#%!$@^-") for p in state_text.strip().split("+")]
    parts = [p.upper() for p in parts if p]
    return (parts[0] if parts else "UNKNOWN"), (frozenset(parts) or frozenset({"UNKNOWN"}))


def parse_show_node_line(line: str) -> SlurmNode:
    """Parse one ``scontrol -o show node`` line. Raises SlurmError when it is not one."""
    pairs = _split_pairs(line.strip())
    get = pairs.get
    name = get("NodeName", "").strip()
    if not name:
        raise SlurmError(f"unexpected scontrol show node line: {line.strip()[:120]!r}")
    base, flags = _state(get("State", ""))
    reason = _opt(get("Reason"))
    reason_user = reason_time = None
    if reason is not None:
        m = _REASON_SUFFIX_RE.match(reason)
        if m:
            reason, reason_user, reason_time = m.group("text"), m.group("user"), m.group("time")
            reason = reason or None
    features = _list(get("AvailableFeatures", get("Features")))
    return SlurmNode(
        name=name,
        state=base,
        state_flags=flags,
        reason=reason,
        reason_user=reason_user or None,
        reason_time=reason_time or None,
        node_addr=_opt(get("NodeAddr")),
        node_hostname=_opt(get("NodeHostName")),
        features=features,
        active_features=_list(get("ActiveFeatures")) if "ActiveFeatures" in pairs else features,
        partitions=_list(get("Partitions")),
        cpus=_int(get("CPUTot")),
        real_memory=_int(get("RealMemory")),
        gres=_opt(get("Gres")) or "",
        port=_int(get("Port")),
        boot_time=_opt(get("BootTime")),
        slurmd_start_time=_opt(get("SlurmdStartTime")),
        last_busy=_opt(get("LastBusyTime")),
        raw=MappingProxyType(pairs),  # a fresh dict of this call's: no copy needed
    )


def parse_show_node_output(text: str) -> dict[str, SlurmNode]:
    """Parse the whole ``scontrol -o show node`` output (one node a line) into name -> node."""
    nodes: dict[str, SlurmNode] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or not line.startswith("NodeName="):
            # "No nodes in the system" and blank lines.
            continue
        node = parse_show_node_line(line)
        nodes[node.name] = node
    return nodes


def parse_show_config_output(text: str) -> dict[str, str]:
    """Parse ``scontrol show config`` (``Key = Value`` lines) into a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        key = key.strip()
        if sep and key and " " not in key:
            out[key] = value.strip()
    return out


def slurm_version(config: Mapping[str, str]) -> tuple[int, int] | None:
    """(major, minor) of the running Slurm from ``scontrol show config`` (its SLURM_VERSION,
    "24.11.5" -> (24, 11)); None when absent or unreadable."""
    parts = (config.get("SLURM_VERSION") or "").split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


#: The release seen listing powered-down cloud nodes without PrivateData=cloud (its `scontrol
#: show config` then says PrivateData = none even when slurm.conf has cloud). 22.05 hides them;
#: the releases between were not tried and are taken to hide them too.
LISTS_CLOUD_NODES_FROM = (24, 11)


def cloud_nodes_hidden(config: Mapping[str, str]) -> bool:
    """True when the slurmctld whose ``scontrol show config`` this is hides powered-down cloud
    nodes from scontrol, so hpc-bridge could not see them."""
    if "cloud" in {w.strip().lower() for w in (config.get("PrivateData") or "").split(",")}:
        return False
    version = slurm_version(config)
    return version is None or version < LISTS_CLOUD_NODES_FROM


def _first_error_line(stderr: str, stdout: str = "") -> str:
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if "s_p_parse_file" in low:  # "file ... is empty": noise from empty includes
            continue
        if any(w in low for w in ("error", "invalid", "fatal", "denied", "not found", "unable", "must")):
            return ln
    if lines:
        return lines[0]
    out = [ln.strip() for ln in (stdout or "").splitlines() if ln.strip()]
    return out[0] if out else "no output"


def _compress(names: Sequence[str]) -> str:
    from hpc_bridge.hostlist import compress_or_list  # a plain list where a hostlist cannot be

    return compress_or_list(names)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 255:
        raise SlurmError(f"invalid Slurm node name {name!r}")
    return name


def _check_token(what: str, value: object) -> str:
    if (
        not isinstance(value, str)
        or not value
        or not value.isprintable()
        or any(c in value for c in " ,=\t")
        or len(value) > 255
    ):
        raise SlurmError(f"invalid {what} {value!r}")
    return value


def _check_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise SlurmError(f"invalid Slurm reason {reason!r}: empty")
    if not reason.isprintable():
        raise SlurmError(f"invalid Slurm reason {reason[:80]!r}: control characters or newline")
    if len(reason) > 1024:
        raise SlurmError(f"invalid Slurm reason: {len(reason)} characters (limit 1024)")
    return reason


def _argv_size(argv: Sequence[str]) -> int:
    return sum(len(a.encode()) + 1 for a in argv)


class Slurm:
    """Run Slurm client commands: ``Slurm(bin_dir="/usr/bin", slurm_conf=None, timeout=30)``.

    ``slurm_conf`` is passed as env SLURM_CONF; None keeps the caller's SLURM_CONF (the hooks
    get it from slurmctld) or Slurm's built-in default.
    """

    def __init__(self, bin_dir: str = "/usr/bin", slurm_conf: str | None = None, timeout: float = 30.0):
        if not os.path.isabs(bin_dir):
            raise SlurmError(f"Slurm bin_dir must be an absolute path, got {bin_dir!r}")
        if slurm_conf is not None and not os.path.isabs(slurm_conf):
            raise SlurmError(f"slurm.conf path must be absolute, got {slurm_conf!r}")
        self.bin_dir = bin_dir
        self.slurm_conf = slurm_conf
        self.timeout = timeout
        self.calls = 0  # commands run (tests assert batching with it)

    @classmethod
    def from_config(cls, cfg, timeout: float = 30.0) -> Slurm:
        """Build from hpc_bridge.config.Config: [slurm] bin_dir; slurm.conf from [slurm] slurm_conf,
        else $SLURM_CONF (set by slurmctld for the hooks), else conf_dir/slurm.conf if it exists."""
        scfg = getattr(cfg, "slurm", None)
        bin_dir = str(getattr(scfg, "bin_dir", None) or "/usr/bin")
        conf = getattr(scfg, "slurm_conf", None) or os.environ.get("SLURM_CONF")
        if not conf:
            conf_dir = getattr(scfg, "conf_dir", None)
            cand = os.path.join(str(conf_dir), "slurm.conf") if conf_dir else None
            conf = cand if cand and os.path.isfile(cand) else None
        return cls(bin_dir=bin_dir, slurm_conf=conf, timeout=timeout)

    # -- running -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # Slurm's environment, not ours: the password may be in $HPC_BRIDGE_PASSWORD, and no
        # Slurm command needs it (nor any other HPC_BRIDGE_ variable).
        env = {k: v for k, v in os.environ.items() if not k.startswith("HPC_BRIDGE_")}
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        elif not env.get("SLURM_CONF") and not os.path.isfile(DEFAULT_SLURM_CONF):
            # Without a config file Slurm's clients look the controller up in DNS (SRV records).
            raise SlurmError(
                f"no slurm.conf: {DEFAULT_SLURM_CONF} does not exist and SLURM_CONF is not set "
                "(set [slurm] slurm_conf in the hpc-bridge config)"
            )
        return env

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``<bin_dir>/<tool> args...``; SlurmError on failure (one line)."""
        argv = [os.path.join(self.bin_dir, tool), *args]
        shown = " ".join([tool, *args])
        if len(shown) > 160:
            shown = shown[:157] + "..."
        self.calls += 1
        try:
            proc = subprocess.run(
                argv,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]} not found (check [slurm] bin_dir)") from None
        except PermissionError:
            raise SlurmError(f"{argv[0]} is not executable") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{shown}: no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise SlurmError(f"{shown}: {exc.strerror or exc}") from None
        if check and proc.returncode != 0:
            raise SlurmError(f"{shown} failed (exit {proc.returncode}): {_first_error_line(proc.stderr, proc.stdout)}")
        return proc

    def scontrol(self, *args: str) -> str:
        return self.run("scontrol", *args).stdout

    # -- reading -------------------------------------------------------------------------

    def show_nodes(self) -> dict[str, SlurmNode]:
        """All nodes, one ``scontrol -o show node`` call (powered-down cloud nodes need
        ``PrivateData=cloud`` in slurm.conf)."""
        return parse_show_node_output(self.scontrol("-o", "show", "node"))

    def show_config(self) -> dict[str, str]:
        return parse_show_config_output(self.scontrol("show", "config"))

    def ping(self) -> bool:
        """True when the primary slurmctld answers ``scontrol ping``."""
        try:
            proc = self.run("scontrol", "ping", check=False)
        except SlurmError:
            return False
        return proc.returncode == 0 and " is UP" in proc.stdout

    # -- changing ------------------------------------------------------------------------

    def reconfigure(self) -> None:
        """``scontrol reconfigure``. Note: resets NodeAddr/NodeHostName set by update to slurm.conf's.
        Never after a change of the set of node names: 22.05's slurmctld then exits ("MaxNodeCount
        has changed ... slurmctld must be restarted"); restart it instead (`restart_controller`)."""
        self.scontrol("reconfigure")

    def restart_controller(self, argv: Sequence[str], wait: float = 60.0, poll: float = 0.5) -> None:
        """Run the admin's restart command (argv, no shell; e.g. systemctl restart slurmctld),
        then wait until slurmctld answers ``scontrol ping``. SlurmError when it does not."""
        shown = " ".join(argv)
        self.calls += 1
        try:
            proc = subprocess.run(list(argv), env=self._env(), stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=max(self.timeout, wait), check=False)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{shown}: did not finish within {max(self.timeout, wait):g} s") from None
        except OSError as exc:
            raise SlurmError(f"{shown}: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            raise SlurmError(f"{shown} failed (exit {proc.returncode}): {_first_error_line(proc.stderr, proc.stdout)}")
        deadline = time.monotonic() + wait
        while not self.ping():
            if time.monotonic() > deadline:
                raise SlurmError(f"slurmctld does not answer scontrol ping {wait:g} s after {shown} (see its log)")
            time.sleep(poll)

    def update_nodes(
        self,
        names: Iterable[str],
        state: str | None = None,
        reason: str | None = None,
        node_addr: Sequence[str] | None = None,
        node_hostname: Sequence[str] | None = None,
    ) -> int:
        """One ``scontrol update NodeName=... [State=] [Reason=] [NodeAddr=] [NodeHostName=]``.

        Without addresses the names are compressed to a hostlist; with addresses
        (lists pairing up positionally with ``names``) they keep their order. The call is split
        only when the argv would exceed MAX_ARGV_BYTES. Returns the number of scontrol calls
        (0 for no names). One unknown name makes Slurm reject the whole call.
        """
        names = [_check_name(n) for n in names]
        if state is not None:
            if not isinstance(state, str) or not _STATE_RE.match(state):
                raise SlurmError(f"invalid Slurm node state {state!r}")
            state = state.upper()
            if state in _STATES_NEEDING_REASON and reason is None:
                raise SlurmError(f"State={state} needs a reason")
        if reason is not None:
            reason = _check_reason(reason)
        addrs = None if node_addr is None else [_check_token("NodeAddr", a) for a in node_addr]
        hosts = None if node_hostname is None else [_check_token("NodeHostName", h) for h in node_hostname]
        for what, lst in (("NodeAddr", addrs), ("NodeHostName", hosts)):
            if lst is not None and len(lst) != len(names):
                raise SlurmError(f"{what}: {len(lst)} values for {len(names)} nodes")
        if state is None and reason is None and addrs is None and hosts is None:
            raise SlurmError("scontrol update: nothing to change")
        if not names:
            return 0
        if len(set(names)) != len(names):
            if addrs is not None or hosts is not None:
                raise SlurmError("duplicate node names in an address update")
            names = list(dict.fromkeys(names))

        tail: list[str] = []
        if state is not None:
            tail.append(f"State={state}")
        if reason is not None:
            tail.append(f"Reason={reason}")
        calls = 0
        for chunk in self._chunks(names, addrs, hosts, tail):
            c_names, c_addrs, c_hosts = chunk
            if addrs is None and hosts is None:
                expr = _compress(c_names)
            else:
                expr = ",".join(c_names)
            argv = ["update", f"NodeName={expr}"]
            if c_addrs is not None:
                argv.append("NodeAddr=" + ",".join(c_addrs))
            if c_hosts is not None:
                argv.append("NodeHostName=" + ",".join(c_hosts))
            argv.extend(tail)
            self.scontrol(*argv)
            calls += 1
        return calls

    def _chunks(self, names, addrs, hosts, tail):
        """Split (names, addrs, hosts) so each argv stays under MAX_ARGV_BYTES (uncompressed
        sizes: compressing only makes it smaller)."""
        fixed = _argv_size(["scontrol", "update", "NodeName=", "NodeAddr=", "NodeHostName=", *tail]) + 64
        budget = MAX_ARGV_BYTES - fixed
        start, size = 0, 0
        for i, n in enumerate(names):
            item = len(n) + 1
            if addrs is not None:
                item += len(addrs[i]) + 1
            if hosts is not None:
                item += len(hosts[i]) + 1
            if size + item > budget and i > start:
                yield self._slice(names, addrs, hosts, start, i)
                start, size = i, 0
            size += item
        if start < len(names):
            yield self._slice(names, addrs, hosts, start, len(names))

    @staticmethod
    def _slice(names, addrs, hosts, a, b):
        return (
            names[a:b],
            None if addrs is None else addrs[a:b],
            None if hosts is None else hosts[a:b],
        )

    def set_addresses(self, mapping: Mapping[str, tuple[str, str | None]]) -> int:
        """Set NodeAddr (and NodeHostName) for many nodes: ``{name: (addr, hostname|None)}``.
        Batched: one call for the nodes with a hostname, one for those without. Returns calls."""
        with_host = sorted((n, a, h) for n, (a, h) in mapping.items() if h is not None)
        without = sorted((n, a) for n, (a, h) in mapping.items() if h is None)
        calls = 0
        if with_host:
            calls += self.update_nodes(
                [n for n, _, _ in with_host],
                node_addr=[a for _, a, _ in with_host],
                node_hostname=[h for _, _, h in with_host],
            )
        if without:
            calls += self.update_nodes([n for n, _ in without], node_addr=[a for _, a in without])
        return calls

    def reset_addresses(self, names: Iterable[str]) -> int:
        """NodeAddr = NodeHostName = the node's own name (after power down, ip mode)."""
        names = sorted({_check_name(n) for n in names})
        if not names:
            return 0
        # The three lists are the same, so one hostlist expression serves all of them (slurmctld
        # expands NodeAddr/NodeHostName as hostlists and pairs them with the names in order):
        # 5,000 nodes are one call instead of three ~100 KiB ones.
        expr = _compress(names)
        if 3 * len(expr) + 64 < MAX_ARGV_BYTES:
            self.scontrol("update", f"NodeName={expr}", f"NodeAddr={expr}", f"NodeHostName={expr}")
            return 1
        return self.update_nodes(names, node_addr=names, node_hostname=names)
