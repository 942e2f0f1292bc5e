import gc

# A hook is a short process whose imports make most of its heap: collecting while they are made
# is wasted work. The CLI turns collection back on (with those objects frozen out of its reach)
# as soon as a command has what it needs, or at once for a command that runs for long.
gc.disable()

from hpc_bridge.cli import main  # noqa: E402

raise SystemExit(main())
