"""Log lines: one per distinct message, naming its nodes as a Slurm hostlist."""

from __future__ import annotations

import logging
import os

import pytest

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


@pytest.mark.parametrize("line, hit", [
    ("... INFO hpc_bridge.resume: htc-f2sv2-[1-40]: create accepted (operation x)", True),
    ("... INFO hpc_bridge.resume: htc-f2sv2-[1-6,8]: create accepted", False),
    ("... slurm DOWN htc-f2sv2-7,hpc-1: capacity", True),
    ("... INFO htc-f2sv2-70: created", False),
    ("... INFO x-[1-2],htc-f2sv2-[5-9]: shutdown accepted", True),
    ("... INFO htc-f2sv2-7: done", True),
    ("... INFO bad-[9-1]: odd", False),
])
def test_a_node_is_found_inside_hostlists(line, hit):
    from hpc_bridge.logs import mentions

    assert mentions(line, {"htc-f2sv2-7"}) is hit


def test_logs_command_merges_the_commands_logs_in_time_order(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "resume.log").write_text("2026-01-01 10:00:02,000 1 INFO r: htc-[1-3]: create accepted\n"
                                     "2026-01-01 10:00:05,000 1 INFO r: htc-9: create accepted\n")
    (logs / "suspend.log.1").write_text("2026-01-01 09:00:00,000 2 INFO s: htc-2: shutdown accepted\n")
    (logs / "suspend.log").write_text("2026-01-01 10:00:03,000 2 INFO s: htc-[2,4]: shutdown accepted\n")
    (logs / "repair.log.2.gz").write_bytes(b"\x1f\x8b")
    config = tmp_path / "c.toml"
    config.write_text('[cluster]\nurl = "http://127.0.0.1:1"\nname = "c"\nusername = "u"\n'
                      f'[paths]\nlog_dir = "{logs}"\nstate_dir = "{tmp_path / "state"}"\n')
    run = subprocess.run([sys.executable, "-m", "hpc_bridge", "--config", str(config), "logs", "htc-2"],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in out] == ["suspend:", "resume:", "suspend:"]
    assert "09:00:00" in out[0] and "htc-[1-3]" in out[1] and "htc-[2,4]" in out[2]


def test_a_link_planted_after_rotation_is_not_followed_and_does_not_fail_the_caller(tmp_path, capsys):
    import logging

    from hpc_bridge.log import setup_logging

    log_dir = tmp_path / "log"
    path, problem = setup_logging("rotated", str(log_dir))
    assert problem is None
    logger = logging.getLogger("hpc_bridge.test")
    logger.info("before rotation")
    os.rename(path, path + ".1")  # logrotate
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, path)  # planted before the next write reopens the file
    logger.info("after rotation\nforged line")  # must not raise
    logger.info("and again")
    assert victim.read_text() == "precious\n"
    assert "cannot write log file" in capsys.readouterr().err
    with open(path + ".1") as fh:
        assert fh.read().count("\n") == 1
    setup_logging("rotated", None)
