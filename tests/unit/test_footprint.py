"""What a daemon and a one-shot command import: the footprint's guard (no timing, no memory).

Each module listed here once cost a daemon memory or a command start-up time for nothing
(`bash scripts/bench --footprint` measures both); a change that imports one again at start
fails here, in a fresh interpreter, with the module's name.
"""

from __future__ import annotations

import pytest

from testsupport import imported_after

# The daemons' path: pyroute2 (~15 MiB, ~150 ms), OpenSSL through ssl and hashlib (~8 MiB),
# argparse and its parsers (~0.5 MiB; help and mistakes only), shutil (bz2, lzma: 0.3 MiB),
# and what only some paths need.
NOT_IN_DAEMONS = (
    "pyroute2",
    "argparse",
    "ssl",
    "_hashlib",
    "shutil",
    "pathlib",
    "logging.handlers",
    "difflib",
)
# What one role does not need: the server's core (its Python twins of the C batch functions
# included), the parsers of the other commands.
NOT_IN_ROLE = {
    "client": ("teredo.core.server", "teredo.lab.arguments"),
    "relay": ("teredo.core.server", "teredo.lab.arguments"),
    "server": ("teredo.lab.arguments",),
}
# The one-shot commands: no event loop, no daemon machinery, no server core, no other
# command's parser.
NOT_IN_COMMANDS = (
    *NOT_IN_DAEMONS,
    "asyncio",
    "ctypes",
    "json",
    "logging",
    "teredo.core.server",
    "teredo.lab.arguments",  # only `teredo lab` builds its parser
)


@pytest.mark.parametrize("role", ["client", "relay", "server"])
def test_a_daemon_starts_without_heavy_modules(role: str) -> None:
    code = (
        "import teredo.cli, teredo.adapters.openssl as o\n"
        f"assert teredo.cli.quick_parse(['{role}', '-f', '-c', 'x.conf']) is not None\n"
        "o.import_without_openssl()\n"
        f"import teredo.programs.{role}_daemon, teredo.adapters.bpf, teredo.adapters.netlink"
    )
    modules = imported_after(code)
    assert f"teredo.programs.{role}_daemon" in modules
    assert sorted(modules.intersection(NOT_IN_DAEMONS + NOT_IN_ROLE[role])) == []


# `--version` and `decode` (an address's fields, no configuration): not even typing's or
# dataclasses' import (with inspect, ast, dis, tokenize), which together doubled their time.
NOT_IN_LIGHTEST = ("typing", "dataclasses", "inspect")


@pytest.mark.parametrize(
    ("argv", "more"),
    [
        (["--version"], NOT_IN_LIGHTEST),
        (["decode", "2001:0:4136:e378:8000:63bf:3fff:fdd2"], NOT_IN_LIGHTEST),
        (["checkconf", "/dev/null"], NOT_IN_LIGHTEST),  # core.peers: core.typenames
    ],
)
def test_a_one_shot_command_imports_little(argv: list[str], more: tuple[str, ...]) -> None:
    code = (
        "import contextlib, io, teredo.cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):\n"
        f"    teredo.cli.main({argv!r})"
    )
    assert sorted(imported_after(code).intersection(NOT_IN_COMMANDS + more)) == []


def test_openssl_is_back_for_later_imports() -> None:
    """asyncio and hashlib run without OpenSSL; a module imported afterwards still gets ssl."""
    code = (
        "import teredo.adapters.openssl as o\n"
        "o.import_without_openssl()\n"
        "import asyncio, hashlib, hmac\n"
        "assert hashlib.sha256(b'x').hexdigest().startswith('2d711642')\n"
        "assert hmac.new(b'k', b'x', 'sha256').hexdigest().startswith('c38edc88')\n"
        "assert 'ssl' not in sys.modules and '_hashlib' not in sys.modules\n"
        "import ssl"
    )
    modules = imported_after(code)
    assert "ssl" in modules and "asyncio" in modules
