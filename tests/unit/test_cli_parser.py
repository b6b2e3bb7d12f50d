"""`teredo` parses the usual command lines without argparse and builds only the argparse parser
the others need: the same answers as the whole parser."""

from __future__ import annotations

import argparse

import pytest

from teredo import cli, command_line

COMMAND_LINES = [
    ["--version"],
    ["-V"],
    ["decode", "2001::1"],
    ["decode", "--json", "2001::1"],
    ["encode", "--server", "192.0.2.1", "--mapped", "198.51.100.1:4000", "--cone"],
    ["checkconf", "--no-resolve", "--role", "relay", "/etc/miredo/miredo.conf"],
    ["client", "-f", "-c", "/etc/teredo.conf", "192.0.2.1"],
    ["relay", "-V"],
    ["server", "-p", "/run/teredo.pid", "-u", "nobody", "192.0.2.1"],
    ["probe", "--json", "--timeout", "2", "192.0.2.1"],
    ["status", "--socket", "/run/teredo/x.sock"],
    ["lab", "status"],
    ["--version", "decode", "2001::1"],
]


def parsed(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, object]:
    args, unknown = parser.parse_known_args(argv)
    assert unknown == []
    return vars(args)


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=" ".join)
def test_the_parser_built_for_a_command_line_parses_it_as_the_whole_one(argv: list[str]) -> None:
    assert parsed(cli.parser_for(argv), argv) == parsed(cli.build_parser(), argv)


@pytest.mark.parametrize(
    ("argv", "commands"),
    [
        (["--version"], set()),
        (["decode", "2001::1"], {"decode"}),
        (["-h", "decode"], set(cli.COMMANDS)),  # the top level's help lists every command
        (["--he"], set(cli.COMMANDS)),
        ([], set(cli.COMMANDS)),
        (["decod"], set(cli.COMMANDS)),  # an unknown command: the error names the real ones
    ],
)
def test_only_the_commands_needed_are_built(argv: list[str], commands: set[str]) -> None:
    parser = cli.parser_for(argv)
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == commands


def test_every_command_has_its_builder() -> None:
    assert set(cli.COMMANDS) == set(command_line._ADD_COMMAND)
    [sub] = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == list(cli.COMMANDS)


def test_an_unknown_command_is_one_sentence_naming_the_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["decod"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("teredo: argument COMMAND: invalid choice: 'decod'")
    assert "'decode'" in error and "'lab'" in error


# The usual command lines, which `quick_parse` reads without argparse.
QUICK_LINES = [
    ["--version"],
    ["-V"],
    ["decode", "2001::1"],
    ["decode", "--json", "2001::1"],
    ["decode", "2001::1", "--json"],
    ["checkconf"],
    ["checkconf", "/etc/miredo/miredo.conf"],
    ["checkconf", "--no-resolve", "--role", "relay", "/etc/miredo/miredo.conf"],
    ["checkconf", "x.conf", "--role", "server"],
    ["client"],
    ["client", "-f", "-c", "/etc/teredo.conf", "192.0.2.1"],
    ["client", "--foreground", "--config", "a b.conf", "--pidfile", "p", "--user", "u", "s"],
    ["relay", "-V"],
    ["relay", "-f", "-c", "/run/relay.conf"],
    ["server", "-p", "/run/teredo.pid", "-u", "nobody", "192.0.2.1"],
    ["server", "192.0.2.1", "--version"],
]
# Left to argparse: help, mistakes, abbreviations, joined forms, repeats, the other commands.
ARGPARSE_LINES = [
    [],
    ["-h"],
    ["client", "-h"],
    ["client", "--help"],
    ["decode"],
    ["decode", "a", "b"],
    ["decode", "--js", "2001::1"],
    ["decode", "--json", "--json", "2001::1"],
    ["decode", "--", "-1"],
    ["decode", ""],
    ["checkconf", "--role", "nobody"],
    ["checkconf", "--role"],
    ["checkconf", "--role=relay"],
    ["client", "-fc", "x.conf"],
    ["client", "-c"],
    ["client", "-c", "-f"],
    ["client", "-cx.conf"],
    ["client", "--config=x.conf"],
    ["client", "--fore"],
    ["client", "-f", "-f"],
    ["client", "-c", "a", "-c", "b"],
    ["client", "a", "b"],
    ["client", "-x"],
    ["-V", "client"],
    ["--version", "decode", "2001::1"],
    ["encode", "--server", "192.0.2.1", "--mapped", "198.51.100.1:4000"],
    ["probe", "192.0.2.1"],
    ["status"],
    ["lab", "status"],
    ["decod"],
]


@pytest.mark.parametrize("argv", QUICK_LINES, ids=" ".join)
def test_the_usual_command_lines_are_parsed_without_argparse_as_argparse_does(
    argv: list[str],
) -> None:
    quick = cli.quick_parse(argv)
    assert quick is not None
    assert vars(quick) == parsed(cli.build_parser(), argv)


@pytest.mark.parametrize("argv", ARGPARSE_LINES, ids=lambda argv: " ".join(argv) or "(none)")
def test_other_command_lines_are_left_to_argparse(argv: list[str]) -> None:
    assert cli.quick_parse(argv) is None
