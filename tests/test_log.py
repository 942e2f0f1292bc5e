"""Log lines: one per distinct message, naming its nodes as a Slurm hostlist."""

from __future__ import annotations

import logging

from hpc_bridge.log import log_per_message


def test_one_line_per_message_with_compressed_names(caplog):
    logger = logging.getLogger("test_log_lines")
    messages = {f"n-{i}": "Ready" for i in range(1, 1001)} | {"g-2": "Failed", "g-1": "Failed", "x": "Off"}
    with caplog.at_level(logging.INFO, logger="test_log_lines"):
        log_per_message(logger, logging.INFO, messages, "%s: already %s")
    assert caplog.messages == ["n-[1-1000]: already Ready", "g-[1-2]: already Failed", "x: already Off"]
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_nothing_to_say_writes_nothing(caplog):
    with caplog.at_level(logging.DEBUG):
        log_per_message(logging.getLogger("test_log_lines"), logging.ERROR, {})
    assert caplog.records == []


def test_names_slurm_takes_but_a_hostlist_cannot_hold_are_listed_plainly():
    """Slurm accepts `a-1]` as a node name; logging it must not be what fails a hook."""
    from hpc_bridge.log import node_names

    assert node_names(["n-2", "n-1", "n-3"]) == "n-[1-3]"
    assert node_names(["htc-1-2]", "b", "b"]) == "b,htc-1-2]"
