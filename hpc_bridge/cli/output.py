"""Everything the CLI writes: JSON for scripts, lines and tables for people, one-line errors.

JSON for scripts is camelCase throughout (as the cluster API's own JSON is); a record the API
sent is passed on with its own field names.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

_WORD_START = re.compile(r"_([a-z0-9])")


def camel(key: str) -> str:
    """`scontrol_calls` -> `scontrolCalls`."""
    return _WORD_START.sub(lambda m: m.group(1).upper(), key)


def camel_keys(data: dict[str, Any]) -> dict[str, Any]:
    """The same mapping with camelCase keys (the values are left as they are)."""
    return {camel(k): v for k, v in data.items()}


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def open_config(args: argparse.Namespace):
    """Load the config named on the command line and start logging to its log_dir; say so on
    stderr when the log file cannot be written."""
    from hpc_bridge.context import open_config as load

    cfg, problem = load(args.command, getattr(args, "config", None), getattr(args, "verbose", 0))
    if problem:
        print(f"hpc-bridge {args.command}: warning: {problem}; warnings and errors go to stderr", file=sys.stderr)
    return cfg
