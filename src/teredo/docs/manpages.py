"""teredo(8), teredo.conf(5) and the README's directive tables, each written from one source.

- teredo(8) from the argparse parser of `teredo.command_line.build_parser`: the commands,
  arguments and help texts `teredo ... --help` prints, so the page cannot drift from them;
- teredo.conf(5) and the two directive tables of README.md from
  `teredo.core.config.DIRECTIVES`: the same names, roles, defaults and help texts that the
  parser uses for its messages.

After changing a command, an option, a help text or a directive, run

    python -m teredo.docs.manpages            # rewrites man/teredo.8, man/teredo.conf.5, README.md
    python -m teredo.docs.manpages --check    # only says what is stale (exit status 1)

`tests/unit/test_manpages.py` runs the check, and renders the pages with man (groff) and
mandoc's linter when they are installed. Plain stdlib: argparse's own actions are read, no
documentation tool is needed. Help texts are short plain text in which `code` is written in
backquotes (bold in the pages, code in the README).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final

from teredo import __version__
from teredo.command_line import build_parser
from teredo.core.config import (
    CONTROL_SOCKET_DIR,
    DEFAULT_CONFIG_PATH,
    DEFAULT_SERVER_CONFIG_PATH,
    DIRECTIVES,
    Directive,
)
from teredo.core.errors import EXIT_BROKEN_PIPE

ROOT: Final = Path(__file__).resolve().parents[3]  # the repository (src/teredo/docs/...)
PAGES: Final = {"teredo.8": "teredo(8)", "teredo.conf.5": "teredo.conf(5)"}
# The pages' date: the last change of substance. A generated date would make every build differ.
DATE: Final = "2026-11-30"
README_BEGIN: Final = (
    "<!-- directive tables: written by `python -m teredo.docs.manpages` from "
    "teredo.core.config.DIRECTIVES; edit them there -->"
)
README_END: Final = "<!-- end of the directive tables -->"
ROLE_ORDER: Final = ("client", "relay", "server")

_CODE: Final = re.compile(r"`([^`]*)`")
# Backslashes, hyphens (so that `--socket` stays copyable), and the few typographic characters
# the help texts use (section sign, en dash, ellipsis).
_SPECIAL: Final = {"\\": r"\e", "-": r"\-", "\u00a7": r"\(sc", "\u2013": r"\(en", "\u2026": "..."}


# --- roff ---------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Plain text for roff: backslashes and hyphens escaped (so `--socket` stays copyable),
    other non-ASCII characters as \\[uXXXX]."""
    out = []
    for char in text:
        if char in _SPECIAL:
            out.append(_SPECIAL[char])
        elif ord(char) > 126:
            out.append(f"\\[u{ord(char):04X}]")
        else:
            out.append(char)
    return "".join(out)


def roff(text: str) -> str:
    """A help text as a roff text line: `code` in bold, safe at the start of a line."""
    parts = _CODE.split(text)
    line = "".join(
        rf"\fB{_escape(part)}\fR" if odd % 2 else _escape(part) for odd, part in enumerate(parts)
    )
    return "\\&" + line if line.startswith((".", "'")) else line


def _bold(text: str) -> str:
    return rf"\fB{_escape(text)}\fR"


def _italic(text: str) -> str:
    return rf"\fI{_escape(text)}\fR"


def _header(name: str, section: int, title: str) -> list[str]:
    return [
        f'.\\" Written by python -m teredo.docs.manpages: edit {_SOURCES[name]}, not this file.',
        f'.TH "{name.upper()}" {section} "{DATE}" "teredo {__version__}" "{title}"',
    ]


_SOURCES: Final = {
    "teredo": "the parser in src/teredo/command_line.py",
    "teredo.conf": "DIRECTIVES in src/teredo/core/config.py",
}


# --- teredo(8) from the parser ------------------------------------------------------------


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, subparser) of each subcommand, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield name, helps.get(name, ""), subparser


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a page documents: not --help, not the subcommand choice."""
    return [
        action
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and action.help != argparse.SUPPRESS
    ]


def _value_name(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(choice) for choice in action.choices) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _usage_of(action: argparse.Action) -> str:
    """One argument in a synopsis, as argparse's usage writes it: [-c FILE], [SERVER], CMD ..."""
    if action.option_strings:
        text = _bold(action.option_strings[0])
        if _takes_value(action):
            text += " " + _italic(_value_name(action))
        return text if action.required else f"[{text}]"
    name = _italic(_value_name(action))
    if action.nargs == "?":
        return f"[{name}]"
    if action.nargs in ("*", argparse.REMAINDER):
        return f"[{name} ...]"
    if action.nargs == "+":
        return f"{name} [{name} ...]"
    return name


def _item_of(action: argparse.Action) -> str:
    """The tag of an argument's .TP item: every spelling, then its value."""
    if not action.option_strings:
        return _italic(_value_name(action))
    names = ", ".join(_bold(option) for option in action.option_strings)
    return names + (" " + _italic(_value_name(action)) if _takes_value(action) else "")


def _help_of(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": ""}
    return text


def _commands(
    parser: argparse.ArgumentParser, words: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every command that runs something, depth first: (words after teredo, help, parser)."""
    for name, help_text, subparser in _subcommands(parser):
        path = (*words, name)
        nested = list(_subcommands(subparser))
        if nested:
            if subparser.description:
                yield path, subparser.description, subparser
            yield from _commands(subparser, path)
        else:
            yield path, subparser.description or help_text, subparser


def _synopsis(path: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """A synopsis block (.SY/.YS: continuation lines indented under the first word)."""
    lines = [".SY teredo"]
    if path:
        lines.append(" ".join(_bold(word) for word in path))
    return [*lines, *(_usage_of(action) for action in _arguments(parser)), ".YS"]


def render_teredo_8(parser: argparse.ArgumentParser | None = None) -> str:
    """teredo(8), from `teredo.command_line.build_parser()` (or `parser`)."""
    parser = parser or build_parser()
    commands = list(_commands(parser, ()))
    lines = _header("teredo", 8, "System Manager's Manual")
    lines += [
        ".SH NAME",
        r"teredo \- Teredo IPv6 tunneling through NATs: client, relay, server and tools",
        ".SH SYNOPSIS",
        *_synopsis((), parser),
    ]
    for path, _, subparser in commands:
        if _arguments(subparser) or not list(_subcommands(subparser)):
            lines += _synopsis(path, subparser)
    lines += [
        ".SH DESCRIPTION",
        roff(parser.description or ""),
        ".PP",
        roff(
            "`teredo client`, `teredo relay` and `teredo server` run the three Teredo roles "
            "of RFC 4380 (with the RFC 5991 security updates and the RFC 6081 extensions) "
            "in the foreground, configured by Miredo's files, read unchanged (see "
            "teredo.conf(5)). The other commands are tools: an address codec, a "
            "configuration checker, a NAT probe, the status of a running daemon, and a "
            "Teredo lab in network namespaces."
        ),
        ".PP",
        roff(
            "Every command takes `-h` (`--help`). Errors are one sentence on standard "
            "error, prefixed with `teredo:`."
        ),
        ".SH OPTIONS",
    ]
    for action in _arguments(parser):
        lines += [".TP", _item_of(action), roff(_help_of(action))]
    lines.append(".SH COMMANDS")
    for path, description, subparser in commands:
        lines += [f'.SS "teredo {" ".join(path)}"', roff(description)]
        for action in _arguments(subparser):
            lines += [".TP", _item_of(action), roff(_help_of(action))]
    lines += [
        ".SH EXIT STATUS",
        ".TP",
        "0",
        roff("success; for a daemon, a clean stop (SIGTERM or SIGINT)"),
        ".TP",
        "1",
        roff("a runtime failure, explained in one sentence on standard error"),
        ".TP",
        "2",
        roff("a usage or configuration error; `teredo checkconf` also for an ignored line"),
        ".TP",
        "130",
        roff("interrupted (Ctrl-C) during a one-shot command"),
        ".TP",
        str(EXIT_BROKEN_PIPE),
        roff(
            "the reader of the output went away (`teredo lab status | head -1`), as for a "
            "program killed by SIGPIPE"
        ),
        ".SH FILES",
        ".TP",
        _bold(DEFAULT_CONFIG_PATH),
        roff("the client or relay configuration (Miredo's), see teredo.conf(5)"),
        ".TP",
        _bold(DEFAULT_SERVER_CONFIG_PATH),
        roff("the server configuration (Miredo's)"),
        ".TP",
        _bold(f"{CONTROL_SOCKET_DIR}/"),
        roff(
            "the daemons' control sockets (`ControlSocket`), read by `teredo status`; see "
            "teredo.conf(5)"
        ),
        ".SH SEE ALSO",
        r"\fBteredo.conf\fR(5), \fBmiredo\fR(8), \fBmiredo\-server\fR(8), \fBip\fR(8)",
        ".PP",
        "RFC 4380, RFC 5991, RFC 6081",
    ]
    return "\n".join(lines) + "\n"


# --- teredo.conf(5) and the README from the directive table ------------------------------


def roles_of(directive: Directive) -> str:
    """ "client, relay", or "all" for a directive of every role."""
    if set(ROLE_ORDER) <= directive.roles:
        return "all"
    return ", ".join(role for role in ROLE_ORDER if role in directive.roles)


def _directive_items(directives: Iterable[Directive]) -> list[str]:
    lines = []
    for directive in directives:
        lines += [
            ".TP",
            _bold(directive.name),
            roff(directive.help[0].upper() + directive.help[1:] + "."),
            ".br",
            roff(f"For: {roles_of(directive)}. Default: ") + roff(directive.default) + ".",
        ]
    return lines


def render_teredo_conf_5(directives: Sequence[Directive] = DIRECTIVES) -> str:
    """teredo.conf(5), from `teredo.core.config.DIRECTIVES`."""
    lines = _header("teredo.conf", 5, "File Formats Manual")
    lines += [
        ".SH NAME",
        r"teredo.conf \- configuration files of teredo: Miredo's miredo.conf and "
        r"miredo\-server.conf",
        ".SH SYNOPSIS",
        _bold(DEFAULT_CONFIG_PATH),
        ".br",
        _bold(DEFAULT_SERVER_CONFIG_PATH),
        ".SH DESCRIPTION",
        roff(
            "teredo(8) reads Miredo's configuration files unchanged. One directive per "
            "line: a name, blanks, a value. Names are case-insensitive. Blank lines and "
            "lines starting with `#` are ignored, and a `#` word after the value starts a "
            "comment. Numbers are decimal. Yes-or-no values take `yes`/`no`, `true`/`false`, "
            "`on`/`off` or `1`/`0`."
        ),
        ".PP",
        roff(
            "A file with `ServerBindAddress` configures a server; otherwise `RelayType` "
            "chooses between a client and a relay. A directive another role uses, an unknown "
            "directive (a near miss gets a suggestion) or a repeated one (the first counts) "
            "is ignored with a warning, as by Miredo; `teredo checkconf` fails on such a "
            "line, as `miredo-checkconf` does. An invalid value stops the daemon with one "
            "sentence naming the file, the line and the fix."
        ),
        ".SH DIRECTIVES",
        ".SS Miredo's directives",
    ]
    lines += _directive_items(d for d in directives if d.miredo)
    lines += [
        ".SS Additions of teredo",
        roff("Same syntax; Miredo does not know them and ignores them with a warning."),
    ]
    lines += _directive_items(d for d in directives if not d.miredo)
    lines += [
        ".SH EXAMPLES",
        roff("A client (`teredo client`):"),
        ".PP",
        ".EX",
        "RelayType client",
        "ServerAddress 198.51.100.2",
        "InterfaceName teredo",
        ".EE",
        ".PP",
        roff("A server (`teredo server`) on two consecutive public addresses:"),
        ".PP",
        ".EX",
        "ServerBindAddress 198.51.100.2",
        "ServerBindAddress2 198.51.100.3",
        ".EE",
        ".SH SEE ALSO",
        r"\fBteredo\fR(8), \fBmiredo.conf\fR(5), \fBmiredo\-server.conf\fR(5)",
    ]
    return "\n".join(lines) + "\n"


def directive_tables(directives: Sequence[Directive] = DIRECTIVES) -> str:
    """The README's two tables (Miredo's directives, then ours) between their markers."""

    def table(rows: Iterable[Directive]) -> list[str]:
        lines = ["| directive | for | default | notes |", "| --- | --- | --- | --- |"]
        for d in rows:
            lines.append(f"| `{d.name}` | {roles_of(d)} | {d.default} | {d.help} |")
        return lines

    lines = [README_BEGIN, ""]
    lines += table(d for d in directives if d.miredo)
    lines += ["", "Our additions (same syntax; Miredo does not know them):", ""]
    lines += table(d for d in directives if not d.miredo)
    lines += ["", README_END]
    return "\n".join(lines)


def render_readme(text: str) -> str:
    """README.md with its directive tables rewritten; ValueError without the markers."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError("README.md has lost the markers of its directive tables")
    return text[:begin] + directive_tables() + text[end + len(README_END) :]


def generated(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file under `root` and the text it must have."""
    return {
        root / "man" / "teredo.8": render_teredo_8(),
        root / "man" / "teredo.conf.5": render_teredo_conf_5(),
        root / "README.md": render_readme((root / "README.md").read_text()),
    }


def stale(root: Path = ROOT) -> list[Path]:
    """The generated files whose text differs from what the sources give."""
    return [
        path
        for path, text in generated(root).items()
        if not path.exists() or path.read_text() != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m teredo.docs.manpages",
        description="Write man/teredo.8, man/teredo.conf.5 and README.md's directive tables.",
    )
    parser.add_argument("--check", action="store_true", help="only list stale files; exit 1")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this)")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale(args.root)
        for path in paths:
            print(f"{path} is stale: run python -m teredo.docs.manpages", file=sys.stderr)
        return 1 if paths else 0
    for path, text in generated(args.root).items():
        path.parent.mkdir(exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
