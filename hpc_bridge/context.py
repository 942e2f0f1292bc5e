"""What a command builds from its config file: the config with logging started, the API client,
and for the hooks and repair the Slurm runner, state store and node map.

The CLI parses the command line and calls these; nothing here prints (a problem worth telling
the user is returned to the caller).
"""

from __future__ import annotations

from typing import Callable

from hpc_bridge.config import Config
from hpc_bridge.errors import BridgeError

_own_process = False  # the command runs as a process of its own (not called in-process by a test)


def mark_own_process() -> None:
    global _own_process
    _own_process = True


def open_config(command: str, path: str | None, verbose: int = 0) -> tuple[Config, str | None]:
    """Load the config (path, else $HPC_BRIDGE_CONFIG, else the default) and start logging to
    its log_dir. Returns the config and why the log file cannot be written (or None)."""
    from hpc_bridge.config import load_config
    from hpc_bridge.log import register_secret, setup_logging

    cfg = load_config(path)
    _, problem = setup_logging(command, cfg.paths.log_dir, verbose)
    try:
        register_secret(cfg.cluster.password())
    except BridgeError:
        pass  # reported when a command actually needs the password
    return cfg, problem


def client_for(cfg: Config):
    from hpc_bridge.api.client import ClusterClient

    return ClusterClient.from_config(cfg)


def freeze_imported_objects() -> None:
    """Move what the imports made (modules, classes, pydantic schemas: most of a hook's heap)
    out of the collector's reach, and let it collect again (`python -m hpc_bridge` starts with
    it off, so the imports are not scanned while they are being made). A short hook process
    otherwise spends a measurable share of its time re-scanning them in full collections, and
    once more at exit. Only in a process of our own: a caller's heap is not ours to freeze."""
    import gc

    if _own_process:
        gc.freeze()
        gc.enable()


class HookContext:
    """What every hook, the follower and repair need, built from the config: client, Slurm,
    state, node map."""

    def __init__(self, cfg: Config, command: str, need_nodemap: bool = True):
        from hpc_bridge.nodemap import load_nodemap
        from hpc_bridge.slurm import Slurm
        from hpc_bridge.state import StateStore

        self.cfg = cfg
        self.command = command
        self.config_path = cfg.source
        self.nodemap = load_nodemap(cfg.nodemap_path) if need_nodemap else None
        self.slurm = Slurm.from_config(cfg)
        self.store = StateStore.from_config(cfg)
        self._client = None

    @property
    def client(self):
        """Made on first use: a hook given an empty hostlist, which never asks for it, does not pay
        for the HTTP stack."""
        if self._client is None:
            self._client = client_for(self.cfg)
            freeze_imported_objects()
        return self._client

    @property
    def spawn_follower(self) -> Callable:
        """Starts the detached follower for this config (see lease.spawn_follower)."""
        from functools import partial

        from hpc_bridge.lease import spawn_follower

        return partial(spawn_follower, self.config_path, self.cfg.paths.log_dir, self.command)
