"""Command-line entry point: argument parsing only, dispatching to the programs and the lab.

Every error a person sees is one sentence on stderr, prefixed once with "teredo: ", with a
non-zero exit (2 for usage and configuration errors), never a traceback. When the reader of the
output goes away (`teredo lab status | head -1`) the command stops quietly with status 141, as a
program killed by SIGPIPE does. Heavy modules are imported inside the command that needs them so
that `teredo decode` starts fast.

The usual command lines (a daemon with Miredo's options, `decode`, `checkconf`, `--version`)
are parsed here, by `quick_parse`, without argparse: its import and parsers cost a daemon ~0.5
MiB for its whole life and a one-shot command ~8 ms. Everything else (help, mistakes, the
other commands) goes to argparse's parsers in `teredo.command_line`, which also explain what
is wrong; both give the same answers (tests/unit/test_cli_parser.py).
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from teredo.core.errors import EXIT_BROKEN_PIPE, UsageError, UserError

TYPE_CHECKING = False  # typing's flag without importing typing (ms a one-shot command pays)
if TYPE_CHECKING:
    from argparse import ArgumentParser, Namespace
    from collections.abc import Callable, Sequence
    from typing import Any, Final, Literal

    Arguments = Namespace | SimpleNamespace  # argparse's answer, or `quick_parse`'s
    Handler = Callable[[Arguments], int]


def cmd_decode(args: Arguments) -> int:
    from teredo.programs.commands import decode

    return decode(args.address, as_json=args.json)


def cmd_encode(args: Arguments) -> int:
    from teredo.programs.commands import encode

    return encode(
        server=args.server,
        mapped=args.mapped,
        cone=args.cone,
        flags=args.flags,
        prefix=args.prefix,
    )


def cmd_checkconf(args: Arguments) -> int:
    from teredo.programs.commands import checkconf

    return checkconf(args.file, resolve=args.resolve, role=args.role)


def _run_service(args: Arguments, kind: Literal["client", "relay", "server"]) -> int:
    import gc

    # No cyclic garbage collection while the daemon imports and sets up: ~45 collections of
    # objects that live on, ~5 ms of a launch. `Service` freezes them and turns it back on.
    gc.disable()
    _prepare_daemon()
    from teredo.programs.service import ServiceOptions, run_service

    options = ServiceOptions(foreground=args.foreground, pidfile=args.pidfile, user=args.user)
    return run_service(kind, args.config, args.argument, options)


def _prepare_daemon() -> None:
    """Hide OpenSSL from the daemon's imports (8 MiB less memory; see teredo.adapters.openssl)
    until `teredo.programs.service.run_service` imports the event loop and the digests
    without it (after the client's launch, which needs neither) and un-hides it."""
    from teredo.adapters.openssl import hide_openssl

    hide_openssl()


def cmd_client(args: Arguments) -> int:
    return _run_service(args, "client")


def cmd_relay(args: Arguments) -> int:
    return _run_service(args, "relay")


def cmd_server(args: Arguments) -> int:
    return _run_service(args, "server")


def cmd_probe(args: Arguments) -> int:
    from teredo.programs.probe import run_probe

    return run_probe(args.server, as_json=args.json, timeout=args.timeout, port=args.port)


def cmd_status(args: Arguments) -> int:
    from teredo.programs.status import run_status

    return run_status(args.socket, as_json=args.json)


def cmd_lab(args: Arguments) -> int:
    import argparse

    from teredo.lab.commands import run_lab_command

    assert isinstance(args, argparse.Namespace)  # `quick_parse` leaves the lab to argparse
    return run_lab_command(args)


# The daemons' command line, Miredo's: subcommand -> (Miredo's program, positional, its help,
# default file).
DAEMONS: dict[str, tuple[str, str, str, str]] = {
    "client": ("miredo", "SERVER", "Teredo server (overrides ServerAddress)",
               "/etc/miredo/miredo.conf"),
    "relay": ("miredo", "SERVER", "accepted as miredo does, and ignored by a relay",
              "/etc/miredo/miredo.conf"),
    "server": ("miredo-server", "ADDRESS", "primary server IPv4 (overrides ServerBindAddress)",
               "/etc/miredo/miredo-server.conf"),
}  # fmt: skip


COMMANDS: tuple[str, ...] = (
    "decode", "encode", "checkconf", "client", "relay", "server", "probe", "status", "lab",
)  # fmt: skip


def build_parser(only: str | None = None) -> ArgumentParser:
    """The whole command line as argparse parsers (`teredo.command_line.build_parser`)."""
    from teredo.command_line import build_parser

    return build_parser(only)


def parser_for(argv: Sequence[str]) -> ArgumentParser:
    """The argparse parser `argv` needs (`teredo.command_line.parser_for`)."""
    from teredo.command_line import parser_for

    return parser_for(argv)


# What `quick_parse` reads, per command: its handler; its values before parsing (argparse's
# defaults); its flags (option -> (name, value)); its options taking one value (option ->
# (name, the values allowed, or None for any)); its positional's name and whether it is
# required. The options are those `teredo.command_line` gives the command.
_DAEMON_SHAPE: Final = (
    {"config": None, "foreground": False, "pidfile": None, "user": None, "version": False},
    {"-f": ("foreground", True), "--foreground": ("foreground", True),
     "-V": ("version", True), "--version": ("version", True)},
    {"-c": ("config", None), "--config": ("config", None), "-p": ("pidfile", None),
     "--pidfile": ("pidfile", None), "-u": ("user", None), "--user": ("user", None)},
    "argument",
    False,
)  # fmt: skip
_QUICK: Final[dict[str, tuple[Handler, tuple[Any, ...]]]] = {
    "decode": (cmd_decode, ({"json": False}, {"--json": ("json", True)}, {}, "address", True)),
    "checkconf": (
        cmd_checkconf,
        (
            {"resolve": True, "role": None},
            {"--no-resolve": ("resolve", False)},
            {"--role": ("role", ("client", "relay", "server"))},
            "file",
            False,
        ),
    ),
    "client": (cmd_client, _DAEMON_SHAPE),
    "relay": (cmd_relay, _DAEMON_SHAPE),
    "server": (cmd_server, _DAEMON_SHAPE),
}


def quick_parse(argv: Sequence[str]) -> SimpleNamespace | None:
    """`argv` parsed without argparse when it is one of the usual command lines: `--version`
    (`-V`) alone, `decode ADDRESS [--json]`, `checkconf [FILE] [--no-resolve] [--role ROLE]`,
    `client|relay|server` with Miredo's options (-c -f -p -u -V and their long names) and its
    positional. Each option at most once, separate from its value, no value starting with
    "-". None for anything else (help, a mistake, an abbreviation, `--opt=value`, the other
    commands): argparse parses those, and explains what is wrong. The answer is argparse's."""
    if list(argv) in (["--version"], ["-V"]):
        return SimpleNamespace(version=True, command=None)
    if not argv or argv[0] not in _QUICK:
        return None
    handler, (defaults, flags, options, positional, required) = _QUICK[argv[0]]
    values: dict[str, Any] = {"version": False, **defaults, positional: None}
    seen: set[str] = set()
    words = iter(argv[1:])
    for word in words:
        if word in flags:
            name, value = flags[word]
        elif word in options:
            name, allowed = options[word]
            value = next(words, "")
            if not _plain(value) or (allowed is not None and value not in allowed):
                return None
        elif _plain(word):
            name, value = positional, word
        else:
            return None
        if name in seen:
            return None
        seen.add(name)
        values[name] = value
    if required and positional not in seen:
        return None
    return SimpleNamespace(command=argv[0], handler=handler, **values)


def _plain(word: str) -> bool:
    """A word argparse takes as a value whatever the parser: not empty, not like an option."""
    return bool(word) and not word.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # here, not at exit, where a closed pipe would be a traceback
    except BrokenPipeError:
        return _reader_gone()


def _run(argv: Sequence[str] | None) -> int:
    try:
        if argv is None:
            argv = sys.argv[1:]
        args: Arguments | None = quick_parse(argv)
        parser = None
        if args is None:
            parser = parser_for(argv)
            args, unknown = parser.parse_known_args(argv)
            if unknown:
                words = [getattr(args, name, None) for name in ("command", "lab_command")]
                command = " ".join(["teredo", *filter(None, words)])
                raise UsageError(
                    f"unrecognized arguments: {' '.join(unknown)} (see {command} --help)"
                )
        if args.version:
            from teredo import __version__

            print(f"teredo {__version__}")
            return 0
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            (parser or build_parser()).print_help(sys.stderr)
            return 2
        return handler(args)
    except UserError as error:
        print(f"teredo: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def _reader_gone() -> int:
    """stdout's reader has gone (`teredo lab status | head -1`): nothing more can be shown, and
    that is no error worth a message. Later writes (the interpreter's last flush) go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE
