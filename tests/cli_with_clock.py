#!/usr/bin/env python3
"""hpc-bridge's command line on a clock SECONDS ahead of the real one, for tests that would
otherwise sleep through repair's grace or a cool-off:

    cli_with_clock.py SECONDS [hpc-bridge arguments...]

Test-only: the product's entries (`hpc-bridge`, `python -m hpc_bridge`) always run on the real
clock; only a caller of hpc_bridge.cli.main in Python can hand it another."""

import sys
import time

from hpc_bridge.cli import main

if __name__ == "__main__":
    ahead = float(sys.argv[1])
    raise SystemExit(main(sys.argv[2:], clock=lambda: time.time() + ahead))
