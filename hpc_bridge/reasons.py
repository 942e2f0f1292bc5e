"""The Slurm Reasons hpc-bridge writes: all start with one prefix, so that repair can tell ours
from an admin's (and from Slurm's own)."""

from __future__ import annotations

from hpc_bridge.log import escape_controls

REASON_PREFIX = "hpc-bridge: "
NEVER_REGISTERED = "VM Ready, slurmd did not register within ResumeTimeout"
# Slurm takes a powered-down node back only from a slurmd that booted after the power-up: the
# slurmd of a VM kept through the power-down is never heard again, so a power-up would wait
# for ResumeTimeout. Restarting that slurmd registers the node (ReturnToService=2 resumes it).
KEPT_RUNNING = ("cloud node kept running (KeepAlive) while Slurm powered it down; "
                "restart its slurmd to use it again")
# Suspend's stop failed, so the VM and its slurmd ran on: that slurmd predates the next power-up
# and Slurm would wait ResumeTimeout for it. The power-up is ended; Slurm's suspend then stops the VM.
STOP_FAILED = "cloud node still running after a failed stop; its slurmd predates the power-up: powered down again"


def reason(text: str) -> str:
    """A Slurm Reason of ours: prefixed, one line, no characters scontrol would choke on (an
    API message may carry ESC, BEL or NUL: they are written escaped)."""
    clean = escape_controls(" ".join(str(text).replace("=", ":").split()))[:200]
    return clean if clean.startswith(REASON_PREFIX) else REASON_PREFIX + clean


def is_our_reason(text: str | None) -> bool:
    return bool(text) and text.startswith(REASON_PREFIX.strip())


def hold_reason(key: str, why: str) -> str:
    """Why a VM size (its bucket key) is held out of service after repeated boot failures."""
    return f"{key} out of service until an admin clears it (hpc-bridge clear-hold {key}): {why}"
