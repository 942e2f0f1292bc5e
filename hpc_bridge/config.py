"""The TOML configuration file and its validation.

Path: --config, else $HPC_BRIDGE_CONFIG, else /etc/hpc-bridge/config.toml. Unknown keys are
errors (they are usually typos). The cluster password never lives in this file: it comes from
`password_file` (which must be private to its owner) or from $HPC_BRIDGE_PASSWORD.

Every key is declared once, as a `Key` of a plain `Section` class. A valid file is checked by
plain code (every hook reads the config, and importing pydantic and building its schemas cost
a short hook more than the rest of its start-up); only a file that this check does not accept
as it is goes through a pydantic model made from the same declarations, which words the
problems (one phrase per key) or, where pydantic converts a value, supplies the converted one.
"""

from __future__ import annotations

import ipaddress
import math
import os
import stat
from functools import cache
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from hpc_bridge.errors import ConfigError
from hpc_bridge.files import NotARegularFile, UnreadableToml, read_regular_file, read_toml

MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024

DEFAULT_CONFIG_PATH = "/etc/hpc-bridge/config.toml"
CONFIG_ENV = "HPC_BRIDGE_CONFIG"
PASSWORD_ENV = "HPC_BRIDGE_PASSWORD"


# Upper bounds of the durations: past them a value is a typo, and a huge one (1e308) would only
# overflow later, in a socket timeout or a date.
YEAR = 366 * 86400.0


_REQUIRED = object()


class Key:
    """One config key: its type, its default, its bounds, and checks of its value.

    kind: str, bool, int or float; a tuple of the allowed strings; list (of strings); a Section
    class; or dict (of `of`, a Section class, by name). A check takes the value (None too, for
    a nullable key) and returns it, possibly normalised, or raises ValueError naming the problem.
    """

    def __init__(self, kind: Any, default: Any = _REQUIRED, *, factory: Callable[[], Any] | None = None,
                 nullable: bool = False, of: Any = None, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None, checks: tuple[Callable[[Any], Any], ...] = ()):
        self.kind, self.default, self.factory, self.nullable, self.of = kind, default, factory, nullable, of
        self.bounds = {name: bound for name, bound in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le))
                       if bound is not None}
        self.checks = checks

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED and self.factory is None

    def default_value(self) -> Any:
        return self.factory() if self.factory is not None else self.default

    def accept(self, value: Any) -> Any:
        """The value as the section keeps it, or _REFUSED when it is not plainly valid (then
        pydantic decides, and words the problem)."""
        if value is None:
            accepted = None if self.nullable else _REFUSED
        else:
            accepted = _accept_kind(self.kind, self.of, value)
            if accepted is not _REFUSED and self.bounds and not _within(accepted, self.bounds):
                accepted = _REFUSED
        if accepted is _REFUSED:
            return _REFUSED
        try:
            for check in self.checks:
                accepted = check(accepted)
        except ValueError:
            return _REFUSED
        return accepted


_REFUSED = object()


def _accept_kind(kind: Any, of: Any, value: Any) -> Any:
    if kind is bool or kind is str:
        return value if type(value) is kind else _REFUSED
    if kind is int:
        return value if type(value) is int else _REFUSED
    if kind is float:
        ok = type(value) in (int, float) and math.isfinite(value)
        return float(value) if ok else _REFUSED
    if isinstance(kind, tuple):
        return value if type(value) is str and value in kind else _REFUSED
    if kind is list:
        ok = type(value) is list and all(type(item) is str for item in value)
        return list(value) if ok else _REFUSED
    if kind is dict:
        if type(value) is not dict or not all(type(name) is str for name in value):
            return _REFUSED
        sections = {name: of.accept(item) for name, item in value.items()}
        return _REFUSED if _REFUSED in sections.values() else sections
    if isinstance(value, kind):
        return value
    return kind.accept(value)


def _within(value: float, bounds: dict[str, float]) -> bool:
    return all({"gt": value > b, "ge": value >= b, "lt": value < b, "le": value <= b}[name]
               for name, b in bounds.items())


class Section:
    """A config section: one attribute per Key. `checks` are whole-section checks: functions of
    the section that raise ValueError naming the keys involved."""

    keys: dict[str, Key] = {}
    checks: tuple[Callable[[Any], None], ...] = ()

    def __init_subclass__(cls) -> None:
        cls.keys = {name: key for name, key in vars(cls).items() if isinstance(key, Key)}
        for name in cls.keys:
            delattr(cls, name)  # instances hold the values

    def __init__(self, **values: Any):
        accepted = type(self).accept(values)
        if accepted is _REFUSED:
            raise ConfigError(f"{type(self).__name__}: " + "; ".join(_problems(type(self), values)))
        self.__dict__.update(accepted.__dict__)

    @classmethod
    def accept(cls, data: Any) -> Any:
        """A section of the data when it is plainly valid, else _REFUSED."""
        if type(data) is not dict or not data.keys() <= cls.keys.keys():
            return _REFUSED
        section = cls.__new__(cls)
        for name, key in cls.keys.items():
            if name in data:
                value = key.accept(data[name])
            elif key.required:
                return _REFUSED
            else:
                value = key.accept(key.default_value())
            if value is _REFUSED:
                return _REFUSED
            section.__dict__[name] = value
        try:
            for check in cls.checks:
                check(section)
        except ValueError:
            return _REFUSED
        return section

    def to_dict(self) -> dict[str, Any]:
        """The section as data that validates to an equal section."""
        return {name: _plain(getattr(self, name)) for name in self.keys}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self.keys)})"


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in value.items()}
    return value


@cache
def _pydantic_model(section: type[Section]) -> Any:
    """A pydantic model with the section's keys, bounds and checks, for what plain checks refuse."""
    from typing import Literal, Optional

    from pydantic import ConfigDict, Field, create_model, field_validator, model_validator

    def annotation(key: Key) -> Any:
        kind = key.kind
        if isinstance(kind, tuple):
            kind = Literal[kind]
        elif kind is list:
            kind = list[str]
        elif kind is dict:
            kind = dict[str, _pydantic_model(key.of)]
        elif isinstance(kind, type) and issubclass(kind, Section):
            kind = _pydantic_model(kind)
        return Optional[kind] if key.nullable else kind

    def field(key: Key) -> Any:
        if key.factory is not None:
            factory = key.factory
            if isinstance(key.kind, type) and issubclass(key.kind, Section):
                factory = lambda: {}  # noqa: E731 (a default section, validated like one written out)
            return Field(default_factory=factory, **key.bounds)
        return Field(default=... if key.default is _REQUIRED else key.default, **key.bounds)

    validators: dict[str, Any] = {}
    for name, key in section.keys.items():
        for i, check in enumerate(key.checks):
            validators[f"check_{name}_{i}"] = field_validator(name)(
                classmethod(lambda cls, value, check=check: check(value)))
    for i, check in enumerate(section.checks):
        def whole(self, check=check):
            check(self)
            return self
        validators[f"check_{i}"] = model_validator(mode="after")(whole)
    return create_model(
        section.__name__,  # pydantic names the model in some messages
        __config__=ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False),
        __validators__=validators,
        **{name: (annotation(key), field(key)) for name, key in section.keys.items()},
    )


def _problems(section: type[Section], data: Any) -> list[str]:
    """The problems pydantic finds in data the plain checks refused (none: it converted a value)."""
    from pydantic import ValidationError

    try:
        _pydantic_model(section).model_validate(data)
    except ValidationError as err:
        return describe_validation_errors(err)
    return []


def _validated(section: type[Section], data: Any, source: str) -> Any:
    accepted = section.accept(data)
    if accepted is _REFUSED:
        from pydantic import ValidationError

        try:
            converted = _pydantic_model(section).model_validate(data)
        except ValidationError as err:
            raise ConfigError(f"config file {source}: " + "; ".join(describe_validation_errors(err))) from None
        # pydantic accepted it by converting a value (a number written as a string, ...): keep
        # what it converted to, checked once more as plain data
        accepted = section.accept(converted.model_dump())
        if accepted is _REFUSED:
            raise ConfigError(f"config file {source}: not a valid configuration")
    return accepted


def _absolute(value: str | None) -> str | None:
    if value is not None and "\0" in value:
        raise ValueError("must not contain a NUL character")
    if value is not None and value != "" and not os.path.isabs(value):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return value


def _url(value: str) -> str:
    parts = urlsplit(value)
    if has_userinfo(value):
        raise ValueError(USERINFO_REFUSED.removeprefix("url: "))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _nonblank(value: str) -> str:
    if not value.strip() or any(c in value for c in "\r\n"):
        raise ValueError("must be a non-empty single line")
    return value


def _plain_http(cluster: Any) -> None:
    if plain_http_refused(cluster.url, cluster.allow_plain_http):
        raise ValueError(PLAIN_HTTP_REFUSED)


class ClusterConfig(Section):
    url = Key(str, checks=(_url,))
    name = Key(str, checks=(_nonblank,))
    username = Key(str, checks=(_nonblank,))
    password_file = Key(str, None, nullable=True, checks=(_absolute,))
    verify_tls = Key(bool, True)
    ca_bundle = Key(str, None, nullable=True, checks=(_absolute,))
    timeout = Key(float, 10.0, gt=0, le=3600)
    retries = Key(int, 4, ge=0, le=20)
    retry_budget = Key(float, 30.0, gt=0, le=86400)  # total seconds one call may take
    allow_plain_http = Key(bool, False)
    checks = (_plain_http,)

    def password(self) -> str:
        """The API password: from $HPC_BRIDGE_PASSWORD, else from password_file (owner-only)."""
        env = os.environ.get(PASSWORD_ENV)
        if env:
            return env
        if not self.password_file:
            raise ConfigError(
                f"no cluster password: set [cluster] password_file or the {PASSWORD_ENV} environment variable"
            )
        return read_secret_file(self.password_file)


def read_secret_file(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as err:
        raise ConfigError(f"password file {path}: {err.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"password file {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        secret = read_regular_file(path, MAX_SECRET_BYTES).decode("utf-8").strip()
    except NotARegularFile as err:
        raise ConfigError(f"password file {path}: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"password file {path}: cannot read it ({type(err).__name__})") from None
    if not secret:
        raise ConfigError(f"password file {path} is empty")
    return secret


USERINFO_REFUSED = ("url: must not carry a user name or password (user@host): it would show in errors and "
                    "logs; set [cluster] username, and the password in password_file or $HPC_BRIDGE_PASSWORD")


PLAIN_HTTP_REFUSED = ("url: plain http to a host that is not this machine sends the password in clear; use https, "
                      "or set [cluster] allow_plain_http = true")


def plain_http_refused(url: str, allow_plain_http: bool) -> bool:
    """Plain http to another host: the password would cross the network in clear (the config
    and the client both refuse it, unless the admin allows it)."""
    return urlsplit(url).scheme == "http" and not allow_plain_http and not is_loopback_url(url)


def has_userinfo(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _absolute_path(value: str) -> str:
    return _absolute(value) or value


class PathsConfig(Section):
    state_dir = Key(str, "/var/lib/hpc-bridge", checks=(_absolute_path,))
    log_dir = Key(str, "/var/log/hpc-bridge", checks=(_absolute_path,))


ADDRESS_MODES = ("ip", "hostname", "registration", "dns")


def _argv(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("must name a program")
    _absolute(value[0])
    if any("\0" in a for a in value):
        raise ValueError("must not contain a NUL character")
    return value


class SlurmConfig(Section):
    bin_dir = Key(str, "/usr/bin", checks=(_absolute,))
    sbin_dir = Key(str, "/usr/sbin", checks=(_absolute,))
    conf_dir = Key(str, "/etc/slurm", checks=(_absolute,))
    slurm_conf = Key(str, None, nullable=True, checks=(_absolute,))  # SLURM_CONF for the Slurm commands; default: Slurm's own
    address_mode = Key(ADDRESS_MODES, "ip")
    gpu_device_pattern = Key(str, "/dev/nvidia[0-{last}]")
    template_dir = Key(str, None, nullable=True, checks=(_absolute,))
    # `hpc-bridge partitions --restart`: how this site restarts slurmctld (argv, no shell)
    restart_command = Key(list, factory=lambda: ["/usr/bin/systemctl", "restart", "slurmctld"], checks=(_argv,))


SUSPEND_POLICIES = ("shutdown", "deallocate", "terminate")


class NodearrayConfig(Section):
    """Per-nodearray overrides for the partition generator and the hooks."""

    managed = Key(bool, True)
    partition = Key(str, None, nullable=True)  # default: the nodearray's name
    default = Key(bool, False)
    max_time = Key(str, "INFINITE")
    exclusive = Key(bool, None, nullable=True)  # default: true for InfiniBand arrays
    memory_reserve_gb = Key(float, 1.0, ge=0)
    memory_reserve_fraction = Key(float, 0.05, ge=0, lt=1)
    max_nodes = Key(int, None, nullable=True, ge=0)  # names per bucket; default: bucket maxCount
    weight = Key(int, None, nullable=True, ge=0)  # base Weight; default: by cores and memory
    def_mem_per_cpu = Key(int, None, nullable=True, ge=1)
    threads_per_core = Key(bool, True)  # derive ThreadsPerCore from vcpuCount/pcpuCount
    suspend_policy = Key(SUSPEND_POLICIES, "shutdown")
    all_or_nothing = Key(bool, True)
    placement_groups = Key(bool, None, nullable=True)  # default: when the bucket has maxPlacementGroupSize > 1 and IB


class PartitionsConfig(Section):
    managed_nodearrays = Key(list, None, nullable=True)  # None: all nodearrays
    nodearrays = Key(dict, of=NodearrayConfig, factory=dict)

    def for_array(self, name: str) -> NodearrayConfig:
        return self.nodearrays.get(name) or NodearrayConfig()

    def is_managed(self, name: str) -> bool:
        if self.managed_nodearrays is not None and name not in self.managed_nodearrays:
            return False
        return self.for_array(name).managed


def _poll_bounds(resume: Any) -> None:
    if resume.poll_max < resume.poll_interval:
        raise ValueError(f"poll_max ({resume.poll_max:g}) must be at least poll_interval "
                         f"({resume.poll_interval:g})")
    if resume.follower_lease < 2 * resume.poll_max:
        raise ValueError(f"follower_lease ({resume.follower_lease:g}) must be at least twice "
                         f"poll_max ({resume.poll_max:g}): a live follower renews it once per round")


class ResumeConfig(Section):
    capacity_cooloff = Key(float, 600.0, ge=0, le=YEAR)
    resume_timeout = Key(float, 1800.0, gt=0, le=YEAR)  # keep equal to slurm.conf ResumeTimeout
    follower = Key(bool, True)  # start a detached follower that sets node addresses as they appear
    # VMs of one size that were Ready but whose slurmd never registered (within [state]
    # retention) before that size is held out of service until `hpc-bridge clear-hold`; 0: never
    boot_failure_limit = Key(int, 3, ge=0)
    # The one follower of a state directory: seconds between its GET nodes at the fastest, the
    # most it waits while nothing changes (or the API throttles), and how long its lease holds
    # without a heartbeat before another host may take over.
    poll_interval = Key(float, 2.0, gt=0, le=3600)
    poll_max = Key(float, 15.0, gt=0, le=3600)
    follower_lease = Key(float, 60.0, gt=0, le=86400)
    checks = (_poll_bounds,)


class SuspendConfig(Section):
    # Written on each generated partition (`hpc-bridge partitions`), never globally.
    suspend_time = Key(float, 600.0, gt=0)  # seconds idle before a cloud node is powered down
    suspend_timeout = Key(float, 300.0, gt=0)  # seconds a node stays powering down


class RepairConfig(Section):
    grace = Key(float, 300.0, ge=0, le=YEAR)  # leaked VM / unknown node grace
    lock_timeout = Key(float, 0.0, ge=0, le=3600)


class StateConfig(Section):
    lock_timeout = Key(float, 10.0, gt=0, le=3600)
    retention = Key(float, 86400.0, gt=0, le=YEAR)
    keep_closed = Key(float, 3600.0, gt=0, le=YEAR)


def _closed_records_outlive_the_grace(cfg: Any) -> None:
    # repair tells a leaked VM from a fresh one by the records of the last `grace` seconds
    if cfg.state.keep_closed < cfg.repair.grace:
        raise ValueError(f"state.keep_closed ({cfg.state.keep_closed:g}) must be at least "
                         f"repair.grace ({cfg.repair.grace:g})")


class Config(Section):
    cluster = Key(ClusterConfig)
    paths = Key(PathsConfig, factory=PathsConfig)
    slurm = Key(SlurmConfig, factory=SlurmConfig)
    partitions = Key(PartitionsConfig, factory=PartitionsConfig)
    resume = Key(ResumeConfig, factory=ResumeConfig)
    suspend = Key(SuspendConfig, factory=SuspendConfig)
    repair = Key(RepairConfig, factory=RepairConfig)
    state = Key(StateConfig, factory=StateConfig)
    checks = (_closed_records_outlive_the_grace,)

    source: str = ""  # the file it was read from

    @property
    def state_file(self) -> Path:
        return Path(self.paths.state_dir) / "state.json"

    @property
    def nodemap_path(self) -> Path:
        return Path(self.slurm.conf_dir) / "nodemap.json"


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str | None = None) -> Config:
    """Read and validate the config; any problem → ConfigError with one line per problem."""
    path = config_path(path)
    try:
        data = read_toml(path, MAX_CONFIG_BYTES)
    except UnreadableToml as err:
        if err.missing:
            raise ConfigError(f"config file {path} not found (use --config or ${CONFIG_ENV})") from None
        raise ConfigError(f"config file {path}: {err}") from None
    return config_from_dict(data, source=path)


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    cfg = _validated(Config, data, source)
    cfg.source = source
    return cfg


def describe_validation_errors(err: Any) -> list[str]:
    """One short phrase per problem, naming the key as it is written in the TOML file."""
    problems = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key {key}")
        elif item["type"] == "missing":
            problems.append(f"missing key {key}")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {msg}" if item["loc"] else msg)  # a whole-file check names its keys
    return problems
