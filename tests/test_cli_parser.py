"""The command line parser declares only the command it is given (a hook's start-up); every
parse must come out as the whole grammar's would, help and errors included."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpc_bridge.cli.parser import COMMANDS, _command_named, build_parser


def parse(parser, argv: list[str]) -> tuple[str, object]:
    """("ok", the namespace) or ("exit", code, what argparse wrote) for one parse."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return "ok", vars(parser.parse_args(argv))
        except SystemExit as exit_:
            return "exit", (exit_.code, out.getvalue(), err.getvalue())


def test_the_list_of_commands_is_the_whole_grammars():
    full = build_parser()
    assert tuple(full._subparsers._group_actions[0].choices) == COMMANDS


@pytest.mark.parametrize("argv, command", [
    (["resume", "htc-[1-2]"], "resume"),
    (["--config", "/etc/x.toml", "suspend", "a-1"], "suspend"),
    (["--config=/etc/x.toml", "-vv", "--json", "resume-fail", "a-1"], "resume-fail"),
    (["-v", "-v", "repair", "--dry-run"], "repair"),
    (["--config", "resume", "status"], "status"),  # a config file named like a command
    (["-h", "resume"], None),  # help: the whole grammar
    (["--conf", "x", "resume"], None),  # an abbreviation argparse would read: the whole grammar
    (["-x", "resume"], None),
    (["resum", "a-1"], None),  # not a command: argparse says which there are
    ([], None),
    (["--config"], None),
])
def test_command_named_reads_past_the_common_options_only(argv, command):
    assert _command_named(argv, COMMANDS) == command


TOKENS = list(COMMANDS) + ["--config", "--config=c.toml", "c.toml", "-v", "-vv", "--verbose", "--json", "-h",
                           "--help", "--dry-run", "htc-[1-4]", "--nodes", "4", "--wait", "--state", "down", "x",
                           "--conf", "--version", "--csv", "--output-dir", "d", "--check", "--write"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=7))
def test_every_parse_is_the_whole_grammars(argv):
    assert parse(build_parser(argv), argv) == parse(build_parser(), argv)


def test_a_hooks_parse_declares_only_the_hook():
    lean = build_parser(["--config", "c.toml", "resume", "htc-1"])
    assert tuple(lean._subparsers._group_actions[0].choices) == ("resume",)
    assert vars(lean.parse_args(["--config", "c.toml", "resume", "htc-1"]))["short_lived"] is True
