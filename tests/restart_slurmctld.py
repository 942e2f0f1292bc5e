#!/usr/bin/env python3
"""A site's "restart slurmctld" for the tests (what `systemctl restart slurmctld` does):

    restart_slurmctld.py PIDFILE SLURM_CONF

SIGTERM the slurmctld named in PIDFILE, wait until it is gone, start a new one (daemonized,
with SLURM_CONF in its environment, so the harness's stop() finds and stops it by PID)."""

import os
import signal
import subprocess
import sys
import time


def main() -> int:
    pidfile, conf = sys.argv[1], sys.argv[2]
    with open(pidfile) as fh:
        pid = int(fh.read().split()[0])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
        except OSError:
            break
        time.sleep(0.1)
    else:
        print(f"slurmctld {pid} did not stop", file=sys.stderr)
        return 1
    workdir = os.path.dirname(os.path.dirname(os.path.abspath(conf)))
    return subprocess.run(["/usr/sbin/slurmctld", "-i"], env={"SLURM_CONF": conf}, cwd=workdir,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main())
