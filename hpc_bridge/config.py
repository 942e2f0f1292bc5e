"""The TOML configuration file, validated by pydantic.

Path: --config, else $HPC_BRIDGE_CONFIG, else /etc/hpc-bridge/config.toml. Unknown keys are
errors (they are usually typos). The cluster password never lives in this file: it comes from
`password_file` (which must be private to its owner) or from $HPC_BRIDGE_PASSWORD.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hpc_bridge.errors import ConfigError
from hpc_bridge.files import NotARegularFile, read_regular_file

MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024

DEFAULT_CONFIG_PATH = "/etc/hpc-bridge/config.toml"
CONFIG_ENV = "HPC_BRIDGE_CONFIG"
PASSWORD_ENV = "HPC_BRIDGE_PASSWORD"


# Upper bounds of the durations: past them a value is a typo, and a huge one (1e308) would only
# overflow later, in a socket timeout or a date.
YEAR = 366 * 86400.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, defer_build=True, allow_inf_nan=False)


def _absolute(value: str | None) -> str | None:
    if value is not None and "\0" in value:
        raise ValueError("must not contain a NUL character")
    if value is not None and value != "" and not os.path.isabs(value):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return value


class ClusterConfig(_Section):
    url: str
    name: str
    username: str
    password_file: str | None = None
    verify_tls: bool = True
    ca_bundle: str | None = None
    timeout: float = Field(default=10.0, gt=0, le=3600)
    retries: int = Field(default=4, ge=0, le=20)
    retry_budget: float = Field(default=30.0, gt=0, le=86400, description="total seconds one call may take")
    allow_plain_http: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if has_userinfo(value):
            raise ValueError(USERINFO_REFUSED.removeprefix("url: "))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("name", "username")
    @classmethod
    def _nonblank(cls, value: str) -> str:
        if not value.strip() or any(c in value for c in "\r\n"):
            raise ValueError("must be a non-empty single line")
        return value

    @field_validator("password_file", "ca_bundle")
    @classmethod
    def _abs(cls, value: str | None) -> str | None:
        return _absolute(value)

    @model_validator(mode="after")
    def _plain_http(self) -> "ClusterConfig":
        if urlsplit(self.url).scheme == "http" and not self.allow_plain_http and not is_loopback_url(self.url):
            raise ValueError(
                "url: plain http to a non-loopback host sends the password in clear; "
                "use https or set allow_plain_http = true"
            )
        return self

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


class PathsConfig(_Section):
    state_dir: str = "/var/lib/hpc-bridge"
    log_dir: str = "/var/log/hpc-bridge"

    @field_validator("state_dir", "log_dir")
    @classmethod
    def _abs(cls, value: str) -> str:
        return _absolute(value) or value


AddressMode = Literal["ip", "hostname", "registration", "dns"]


class SlurmConfig(_Section):
    bin_dir: str = "/usr/bin"
    sbin_dir: str = "/usr/sbin"
    conf_dir: str = "/etc/slurm"
    slurm_conf: str | None = None  # SLURM_CONF for the Slurm commands; default: Slurm's own
    address_mode: AddressMode = "ip"
    gpu_device_pattern: str = "/dev/nvidia[0-{last}]"
    template_dir: str | None = None
    # `hpc-bridge partitions --restart`: how this site restarts slurmctld (argv, no shell)
    restart_command: list[str] = Field(default_factory=lambda: ["/usr/bin/systemctl", "restart", "slurmctld"])

    @field_validator("bin_dir", "sbin_dir", "conf_dir", "slurm_conf", "template_dir")
    @classmethod
    def _abs(cls, value: str | None) -> str | None:
        return _absolute(value)

    @field_validator("restart_command")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name a program")
        _absolute(value[0])
        if any("\0" in a for a in value):
            raise ValueError("must not contain a NUL character")
        return value


SuspendPolicy = Literal["shutdown", "deallocate", "terminate"]


class NodearrayConfig(_Section):
    """Per-nodearray overrides for the partition generator and the hooks."""

    managed: bool = True
    partition: str | None = None  # default: the nodearray's name
    default: bool = False
    max_time: str = "INFINITE"
    exclusive: bool | None = None  # default: true for InfiniBand arrays
    memory_reserve_gb: float = Field(default=1.0, ge=0)
    memory_reserve_fraction: float = Field(default=0.05, ge=0, lt=1)
    max_nodes: int | None = Field(default=None, ge=0)  # names per bucket; default: bucket maxCount
    weight: int | None = Field(default=None, ge=0)  # base Weight; default: by cores and memory
    def_mem_per_cpu: int | None = Field(default=None, ge=1)
    threads_per_core: bool = True  # derive ThreadsPerCore from vcpuCount/pcpuCount
    suspend_policy: SuspendPolicy = "shutdown"
    all_or_nothing: bool = True
    placement_groups: bool | None = None  # default: when the bucket has maxPlacementGroupSize > 1 and IB


class PartitionsConfig(_Section):
    managed_nodearrays: list[str] | None = None  # None: all nodearrays
    nodearrays: dict[str, NodearrayConfig] = Field(default_factory=dict)

    def for_array(self, name: str) -> NodearrayConfig:
        return self.nodearrays.get(name) or NodearrayConfig()

    def is_managed(self, name: str) -> bool:
        if self.managed_nodearrays is not None and name not in self.managed_nodearrays:
            return False
        return self.for_array(name).managed


class ResumeConfig(_Section):
    capacity_cooloff: float = Field(default=600.0, ge=0, le=YEAR)
    resume_timeout: float = Field(default=1800.0, gt=0, le=YEAR)  # keep equal to slurm.conf ResumeTimeout
    follower: bool = True  # start a detached follower that sets node addresses as they appear
    # VMs of one size that were Ready but whose slurmd never registered (within [state]
    # retention) before that size is held out of service until `hpc-bridge clear-hold`; 0: never
    boot_failure_limit: int = Field(default=3, ge=0)
    # The one follower of a state directory: seconds between its GET nodes at the fastest, the
    # most it waits while nothing changes (or the API throttles), and how long its lease holds
    # without a heartbeat before another host may take over.
    poll_interval: float = Field(default=2.0, gt=0, le=3600)
    poll_max: float = Field(default=15.0, gt=0, le=3600)
    follower_lease: float = Field(default=60.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _poll_bounds(self) -> "ResumeConfig":
        if self.poll_max < self.poll_interval:
            raise ValueError(f"poll_max ({self.poll_max:g}) must be at least poll_interval "
                             f"({self.poll_interval:g})")
        if self.follower_lease < 2 * self.poll_max:
            raise ValueError(f"follower_lease ({self.follower_lease:g}) must be at least twice "
                             f"poll_max ({self.poll_max:g}): a live follower renews it once per round")
        return self


class SuspendConfig(_Section):
    # Written on each generated partition (`hpc-bridge partitions`), never globally.
    suspend_time: float = Field(default=600.0, gt=0)  # seconds idle before a cloud node is powered down
    suspend_timeout: float = Field(default=300.0, gt=0)  # seconds a node stays powering down


class RepairConfig(_Section):
    grace: float = Field(default=300.0, ge=0, le=YEAR)  # leaked VM / unknown node grace
    lock_timeout: float = Field(default=0.0, ge=0, le=3600)


class StateConfig(_Section):
    lock_timeout: float = Field(default=10.0, gt=0, le=3600)
    retention: float = Field(default=86400.0, gt=0, le=YEAR)
    keep_closed: float = Field(default=3600.0, gt=0, le=YEAR)


class Config(_Section):
    cluster: ClusterConfig
    paths: PathsConfig = Field(default_factory=PathsConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    partitions: PartitionsConfig = Field(default_factory=PartitionsConfig)
    resume: ResumeConfig = Field(default_factory=ResumeConfig)
    suspend: SuspendConfig = Field(default_factory=SuspendConfig)
    repair: RepairConfig = Field(default_factory=RepairConfig)
    state: StateConfig = Field(default_factory=StateConfig)

    source: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _closed_records_outlive_the_grace(self) -> "Config":
        # repair tells a leaked VM from a fresh one by the records of the last `grace` seconds
        if self.state.keep_closed < self.repair.grace:
            raise ValueError(f"state.keep_closed ({self.state.keep_closed:g}) must be at least "
                             f"repair.grace ({self.repair.grace:g})")
        return self

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
        data = tomllib.loads(read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except NotARegularFile as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (use --config or ${CONFIG_ENV})") from None
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path}: not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not valid UTF-8") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: nested too deeply") from None
    return config_from_dict(data, source=path)


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"config file {source}: " + "; ".join(describe_validation_errors(err))) from None
    cfg.source = source
    return cfg


def describe_validation_errors(err: ValidationError) -> list[str]:
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
