"""How `teredo` reports what goes wrong around a command: usage errors prefixed once, naming the
help to read; a reader that goes away (`teredo ... | head -1`) ends the command quietly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from teredo.cli import main
from teredo.core.errors import EXIT_BROKEN_PIPE


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["client", "-x"], "unrecognized arguments: -x (see teredo client --help)"),
        (["--bogus"], "unrecognized arguments: --bogus (see teredo --help)"),
        (["lab", "up", "--bogus"], "unrecognized arguments: --bogus (see teredo lab up --help)"),
        (
            ["decode"],
            "the following arguments are required: address (see teredo decode --help)",
        ),
        (
            ["probe", "x", "--timeout", "soon"],
            "argument --timeout: invalid float value: 'soon' (see teredo probe --help)",
        ),
        (["nonsense"], "argument COMMAND: invalid choice: 'nonsense' (choose from "),
    ],
)
def test_usage_errors_say_teredo_once(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    # `teredo client -f` once said "teredo: teredo: unrecognized arguments: -f (see --help)".
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"teredo: {message}"), err
    assert err.count("teredo:") == 1 and err.count("\n") == 1


def into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """`teredo ARGV | head -0`: stdout is a pipe whose reader is already gone."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [sys.executable, "-m", "teredo", *argv],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        os.close(writer)


@pytest.mark.parametrize(
    "argv",
    [
        ("decode", "2001:0:cb00:7178:285c:efff:3fff:fdfe"),
        ("decode", "2001:0:cb00:7178:285c:efff:3fff:fdfe", "--json"),
        ("encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:4096"),
        ("--version",),
    ],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(argv: tuple[str, ...]) -> None:
    # `teredo lab status | head -1` once printed a BrokenPipeError traceback.
    result = into_closed_pipe(*argv)
    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE == 141  # as if killed by SIGPIPE


def test_errors_still_reach_stderr_when_stdout_is_closed() -> None:
    result = into_closed_pipe("decode", "hello")
    assert result.returncode == 2
    assert result.stderr == "teredo: 'hello' is not an IPv6 address\n"
