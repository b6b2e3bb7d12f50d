"""Command-line entry point: argument parsing only, dispatching to the programs and the lab.

Every error a person sees is one sentence on stderr with a non-zero exit (2 for usage and
configuration errors), never a traceback. Heavy modules are imported inside the command that
needs them so that `teredo decode` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from teredo.core.errors import UsageError, UserError

Handler = Callable[[argparse.Namespace], int]


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
    added, and `shutil` brings bz2, lzma and zlib, 0.3 MiB in every daemon for nothing."""

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
    """argparse that raises instead of printing its two-line usage error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _cmd_decode(args: argparse.Namespace) -> int:
    from teredo.programs.commands import decode

    return decode(args.address, as_json=args.json)


def _cmd_encode(args: argparse.Namespace) -> int:
    from teredo.programs.commands import encode

    return encode(
        server=args.server,
        mapped=args.mapped,
        cone=args.cone,
        flags=args.flags,
        prefix=args.prefix,
    )


def _cmd_checkconf(args: argparse.Namespace) -> int:
    from teredo.programs.commands import checkconf

    return checkconf(args.file)


def _prepare_daemon() -> None:
    """Import the event loop and digests without OpenSSL before a daemon's modules do (8 MiB
    less memory; see teredo.adapters.openssl)."""
    from teredo.adapters.openssl import import_without_openssl

    import_without_openssl()


def _cmd_client(args: argparse.Namespace) -> int:
    _prepare_daemon()
    from teredo.programs.client_daemon import run_client

    return run_client(args.config, server=args.server)


def _cmd_relay(args: argparse.Namespace) -> int:
    _prepare_daemon()
    from teredo.programs.relay_daemon import run_relay

    return run_relay(args.config)


def _cmd_server(args: argparse.Namespace) -> int:
    _prepare_daemon()
    from teredo.programs.server_daemon import run_server

    return run_server(args.config, address=args.address)


def _cmd_probe(args: argparse.Namespace) -> int:
    from teredo.programs.probe import run_probe

    return run_probe(args.server, as_json=args.json, timeout=args.timeout, port=args.port)


def _cmd_status(args: argparse.Namespace) -> int:
    from teredo.programs.status import run_status

    return run_status(args.socket, as_json=args.json)


def _cmd_lab(args: argparse.Namespace) -> int:
    from teredo.lab.commands import run_lab_command

    return run_lab_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="teredo",
        description="Teredo: IPv6 over UDP/IPv4 through NATs (RFC 4380, 5991, 6081).",
    )
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("decode", help="decode a Teredo IPv6 address")
    p.add_argument("address", help="a Teredo IPv6 address, e.g. 2001:0:cb00:7178:0:efff:3fff:fdfe")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(handler=_cmd_decode)

    p = sub.add_parser("encode", help="build a Teredo IPv6 address from its parts")
    p.add_argument("--server", required=True, metavar="IPV4", help="the Teredo server's IPv4")
    p.add_argument(
        "--mapped", required=True, metavar="IPV4:PORT", help="the client's mapped address and port"
    )
    p.add_argument("--cone", action="store_true", help="set the cone flag (0x8000)")
    p.add_argument("--flags", metavar="N", help="the whole 16-bit flags field (decimal or 0x..)")
    p.add_argument("--prefix", metavar="P", default=None, help="Teredo prefix (default 2001::)")
    p.set_defaults(handler=_cmd_encode)

    p = sub.add_parser("checkconf", help="validate a miredo.conf / miredo-server.conf style file")
    p.add_argument("file", nargs="?", default=None, help="default /etc/miredo/miredo.conf")
    p.set_defaults(handler=_cmd_checkconf)

    config_help = "configuration file (Miredo syntax)"
    p = sub.add_parser("client", help="run a Teredo client in the foreground")
    p.add_argument("-c", "--config", metavar="FILE", help=config_help)
    p.add_argument("server", nargs="?", help="Teredo server (overrides ServerAddress)")
    p.set_defaults(handler=_cmd_client)

    p = sub.add_parser("relay", help="run a Teredo relay in the foreground")
    p.add_argument("-c", "--config", metavar="FILE", help=config_help)
    p.set_defaults(handler=_cmd_relay)

    p = sub.add_parser("server", help="run a Teredo server in the foreground")
    p.add_argument("-c", "--config", metavar="FILE", help=config_help)
    p.add_argument("address", nargs="?", help="primary server IPv4 (overrides ServerBindAddress)")
    p.set_defaults(handler=_cmd_server)

    p = sub.add_parser("probe", help="qualify against a server without root and report the NAT")
    p.add_argument("server", help="Teredo server hostname or IPv4")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--timeout", type=float, default=12.0, help="give up after this many seconds")
    p.add_argument("--port", type=int, default=0, help="local UDP port (default: any)")
    p.set_defaults(handler=_cmd_probe)

    p = sub.add_parser("status", help="show a running teredo daemon's state and counters")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--socket", metavar="PATH", default=None, help="control socket path")
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser("lab", help="a Teredo lab in network namespaces (root)")
    from teredo.lab.arguments import add_lab_arguments

    add_lab_arguments(p)
    p.set_defaults(handler=_cmd_lab)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.version:
            from teredo import __version__

            print(f"teredo {__version__}")
            return 0
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            build_parser().print_help(sys.stderr)
            return 2
        return handler(args)
    except UserError as error:
        print(f"teredo: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
