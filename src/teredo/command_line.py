"""The whole command line as argparse parsers: help, usage errors, the man page.

`teredo.cli` parses the usual command lines of the daemons and the one-shot commands itself
(`teredo.cli.quick_parse`) and comes here for everything else: help, a mistake to explain, the
lab's and the other commands' options. argparse and its parsers cost a daemon ~0.5 MiB for its
whole life and a one-shot command ~8 ms, for a command line that is parsed once.

`build_parser` is also the source of the teredo(8) man page (`teredo.docs.manpages`): every
argument's help text there is the one `--help` prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from teredo.cli import (
    COMMANDS,
    DAEMONS,
    cmd_checkconf,
    cmd_client,
    cmd_decode,
    cmd_encode,
    cmd_lab,
    cmd_probe,
    cmd_relay,
    cmd_server,
    cmd_status,
)
from teredo.core.errors import UsageError

TYPE_CHECKING = False  # typing's flag without importing typing (ms a one-shot command pays)
if TYPE_CHECKING:
    from typing import Any


def _terminal_columns() -> int:
    """$COLUMNS, else the terminal's width, else 80: what `shutil.get_terminal_size` says."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, its width found without `shutil`: argparse makes one per argument
    added, and `shutil` brings bz2, lzma and zlib (0.3 MiB, ~3 ms) for nothing."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing its two-line usage error; `main` prints it
    once, prefixed with "teredo: ", and the message names the help of the (sub)command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


_DAEMON_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "client": cmd_client,
    "relay": cmd_relay,
    "server": cmd_server,
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` the top level and that one subcommand (`""`:
    none): what `main` builds, since every subparser costs a one-shot command time."""
    parser = _Parser(
        prog="teredo",
        description="Teredo: IPv6 over UDP/IPv4 through NATs (RFC 4380, 5991, 6081).",
    )
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for command in COMMANDS if only is None else (only,) if only else ():
        _ADD_COMMAND[command](sub)
    return parser


def parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser `argv` needs: only its subcommand's, or none for top-level options alone
    (`teredo --version`); the whole one to list the commands (no command, an unknown one, or
    the top level's help)."""
    if not argv:
        return build_parser()
    for word in argv:
        if word.startswith("--h") or (word[:1] == "-" and word[1:2] != "-" and "h" in word):
            return build_parser()  # help asked before any command: it lists them all
        if not word.startswith("-"):
            return build_parser(word if word in _ADD_COMMAND else None)
    return build_parser("")


def _add_decode(sub: Any) -> None:
    p = sub.add_parser("decode", help="decode a Teredo IPv6 address")
    p.add_argument("address", help="a Teredo IPv6 address, e.g. 2001:0:cb00:7178:0:efff:3fff:fdfe")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(handler=cmd_decode)


def _add_encode(sub: Any) -> None:
    p = sub.add_parser("encode", help="build a Teredo IPv6 address from its parts")
    p.add_argument("--server", required=True, metavar="IPV4", help="the Teredo server's IPv4")
    p.add_argument(
        "--mapped", required=True, metavar="IPV4:PORT", help="the client's mapped address and port"
    )
    p.add_argument("--cone", action="store_true", help="set the cone flag (0x8000)")
    p.add_argument("--flags", metavar="N", help="the whole 16-bit flags field (decimal or 0x..)")
    p.add_argument("--prefix", metavar="P", default=None, help="Teredo prefix (default 2001::)")
    p.set_defaults(handler=cmd_encode)


def _add_checkconf(sub: Any) -> None:
    p = sub.add_parser("checkconf", help="validate a miredo.conf / miredo-server.conf style file")
    p.add_argument("file", nargs="?", default=None, help="default /etc/miredo/miredo.conf")
    p.add_argument(
        "--no-resolve",
        dest="resolve",
        action="store_false",
        help="do not resolve the client's server names",
    )
    p.add_argument(
        "--role",
        choices=("client", "relay", "server"),
        help="check FILE as `teredo ROLE -c FILE` reads it (default: the role the file says)",
    )
    p.set_defaults(handler=cmd_checkconf)


def _add_daemon(sub: Any, role: str) -> None:
    miredo, argument, argument_help, default_file = DAEMONS[role]
    summary = f"run a Teredo {role} ({miredo}'s command line)"
    p = sub.add_parser(
        role,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}: detach and log to syslog, or "
        "stay in the foreground with -f.",
    )
    p.add_argument(
        "-c", "--config", metavar="FILE", help=f"configuration file (default {default_file})"
    )
    p.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="do not detach; log to stderr (unless the file sets SyslogFacility)",
    )
    p.add_argument("-p", "--pidfile", metavar="FILE", help="write the process id to FILE, locked")
    p.add_argument("-u", "--user", metavar="USER", help="drop privileges to USER (overrides User)")
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    p.add_argument("argument", nargs="?", metavar=argument, help=argument_help)
    p.set_defaults(handler=_DAEMON_HANDLERS[role])


def _add_probe(sub: Any) -> None:
    p = sub.add_parser("probe", help="qualify against a server without root and report the NAT")
    p.add_argument("server", help="Teredo server hostname or IPv4")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--timeout", type=float, default=12.0, help="give up after this many seconds")
    p.add_argument("--port", type=int, default=0, help="local UDP port (default: any)")
    p.set_defaults(handler=cmd_probe)


def _add_status(sub: Any) -> None:
    p = sub.add_parser("status", help="show a running teredo daemon's state and counters")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--socket", metavar="PATH", default=None, help="control socket path")
    p.set_defaults(handler=cmd_status)


def _add_lab(sub: Any) -> None:
    p = sub.add_parser("lab", help="a Teredo lab in network namespaces (root)")
    from teredo.lab.arguments import add_lab_arguments

    add_lab_arguments(p)
    p.set_defaults(handler=cmd_lab)


_ADD_COMMAND: dict[str, Callable[[Any], None]] = {
    "decode": _add_decode,
    "encode": _add_encode,
    "checkconf": _add_checkconf,
    "client": lambda sub: _add_daemon(sub, "client"),
    "relay": lambda sub: _add_daemon(sub, "relay"),
    "server": lambda sub: _add_daemon(sub, "server"),
    "probe": _add_probe,
    "status": _add_status,
    "lab": _add_lab,
}
