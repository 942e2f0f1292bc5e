"""SLURM_RESUME_FILE: which jobs a resume is for (22.05 and 23.02+ formats).

Kept apart from resume.py so that the hook can read the file first thing, before it loads the
HTTP stack and the API models (the file is a /proc fd of slurmctld's that soon vanishes).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from dataclasses import dataclass

from hpc_bridge import hostlist
from hpc_bridge.errors import UsageError

log = logging.getLogger("hpc_bridge.resume")

_MAX_BYTES = 64 * 2**20  # Slurm's file lists the jobs of one resume: far smaller than this


@dataclass(frozen=True)
class Job:
    job_id: str
    nodes: tuple[str, ...]  # the nodes being resumed for this job
    partition: str | None = None


def parse_resume_file(text: str) -> list[Job]:
    """Jobs from SLURM_RESUME_FILE, in the 22.05 or the 23.02+ format."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"SLURM_RESUME_FILE is not JSON ({err.msg} at char {err.pos})") from None
    except RecursionError:
        raise UsageError("SLURM_RESUME_FILE is nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("jobs", []), list):
        raise UsageError("SLURM_RESUME_FILE: expected an object with a 'jobs' list")
    jobs = []
    for item in data.get("jobs", []):
        if not isinstance(item, dict) or "job_id" not in item:
            raise UsageError("SLURM_RESUME_FILE: a job entry has no job_id")
        expr = item.get("nodes_resume", item.get("nodes", ""))
        if not isinstance(expr, str):
            raise UsageError(f"SLURM_RESUME_FILE: job {item['job_id']}: nodes is not a string")
        jobs.append(Job(str(item["job_id"]), tuple(hostlist.expand(expr)), item.get("partition") or None))
    return jobs


def read_resume_file(env: dict[str, str] | None = None) -> list[Job]:
    """Read the file named by SLURM_RESUME_FILE at once (it is a /proc fd that soon vanishes).
    No variable: no job information (a manual power up, or Slurm before 22.05)."""
    env = os.environ if env is None else env
    path = env.get("SLURM_RESUME_FILE")
    if not path:
        return []
    try:
        # O_NONBLOCK and a regular file only (Slurm's is a memfd): a FIFO or a device named there
        # must not hang or flood the hook.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            data = fh.read(_MAX_BYTES + 1)
        if len(data) > _MAX_BYTES:
            raise OSError(errno.EFBIG, f"larger than {_MAX_BYTES // 2**20} MiB")
        text = data.decode("utf-8")
    except OSError as err:
        log.warning("SLURM_RESUME_FILE %s unreadable (%s); resuming without job information", path, err.strerror)
        return []
    except UnicodeDecodeError:
        log.warning("SLURM_RESUME_FILE %s is not UTF-8 text; resuming without job information", path)
        return []
    try:
        return parse_resume_file(text)
    except UsageError as err:
        log.warning("%s; resuming without job information", err)
        return []


