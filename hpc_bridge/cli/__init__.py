"""hpc-bridge command line: it parses, dispatches, and is the only part of hpc-bridge that prints.

`parser` holds the grammar; `hooks` (resume, suspend, resume-fail, follow, repair), `views`
(status, operations, nodes, usage, scale, logs, clear-hold) and `admin` (partitions,
install-hooks, doctor, example-config, sim, demo) run one command each: they call the package's
code, which returns data, and render that as tables and lines for people or JSON for scripts
(`output`). Exit codes: 0 ok, 1 failed, 2 usage or configuration error. Errors are one line on
stderr; details go to the log file.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

from hpc_bridge.errors import BridgeError

log = logging.getLogger("hpc_bridge.cli")


def main(argv: list[str] | None = None, *, clock: Callable[[], float] = time.time) -> int:
    """Run one command. ``clock`` is what repair takes for now (its grace, cool-offs, deadlines):
    only a caller in Python can give another (the tests, to run repair "later" without sleeping);
    no option or environment variable changes it, so `hpc-bridge` always runs on the real clock."""
    if argv is None:  # a process of its own (hooks, console script), not a call from a test
        from hpc_bridge.context import mark_own_process

        mark_own_process()
        # httpcore imports trio whenever it is installed (~140 ms, most of a hook's start-up
        # over `import httpx, pydantic`); hpc-bridge only ever uses the sync client.
        sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
        # anyio, likewise, serves only httpcore's async primitives (~2 ms of every hook).
        sys.modules.setdefault("anyio", None)  # type: ignore[arg-type]
        # `import httpx` also imports its command-line client when click is installed (click,
        # rich, pygments: ~30 ms); hpc-bridge never runs it, and httpx falls back without it.
        sys.modules.setdefault("click", None)  # type: ignore[arg-type]
        # pydantic looks for plugins by scanning the metadata of every installed distribution
        # the first time it builds a validator (~10 ms here, more on a controller with many
        # packages); hpc-bridge uses none. An admin's own setting is kept.
        import os

        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from hpc_bridge.cli.parser import build_parser

    parser = build_parser(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    args.clock = clock
    from hpc_bridge.log import setup_logging

    setup_logging(args.command, None, getattr(args, "verbose", 0))
    if not getattr(args, "short_lived", False):
        from hpc_bridge.context import freeze_imported_objects

        freeze_imported_objects()  # a long-running command (follower, simulator) collects as usual
    rc = _run(args)
    if argv is None and getattr(args, "short_lived", False):
        _end_process(rc)
    return rc


def _end_process(rc: int) -> None:
    """A hook's last step: its output and log lines flushed, the process ends without tearing
    down the interpreter (freeing every module and model one by one, a few ms of each hook that
    nothing needs: the kernel releases memory, files and locks at once)."""
    import logging
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nobody is reading any more
            pass
    logging.shutdown()
    os._exit(rc)


def _run(args) -> int:
    """The command, with every failure turned into a line and an exit code."""
    try:
        return int(args.func(args) or 0)
    except BridgeError as err:
        log.error("%s", err)
        print(f"hpc-bridge {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"hpc-bridge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as err:  # the machine (a file, a directory, a full disk), not a bug: say which
        what = (err.strerror or str(err)) + (f": {err.filename}" if err.filename else "")
        log.error("%s", what)
        print(f"hpc-bridge {args.command}: error: {what}", file=sys.stderr)
        return 1
    except RecursionError:
        log.error("input nested too deeply")
        print(f"hpc-bridge {args.command}: error: an input file is nested too deeply to read", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: keep the traceback in the log, one line for the user
        log.exception("internal error in %s", args.command)
        print(
            f"hpc-bridge {args.command}: internal error: {type(err).__name__}: {' '.join(str(err).split())[:200]} "
            "(the log file has the details; please report it)",
            file=sys.stderr,
        )
        return 1
