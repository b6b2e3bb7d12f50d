"""Lab helpers shared by the end-to-end tests (`from labsupport import ...`).

Labs get random short names, so labs of concurrent runs never collide, and every lab built is
torn down whatever happens. The pytest fixtures in tests/e2e/conftest.py are built on these.
"""

from __future__ import annotations

import json
import secrets
import string
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from teredo.lab.lab import Lab
from testsupport import require_root

LAB_TOOLS = ("ip", "nft", "miredo", "miredo-server", "ping")


def random_lab_name(prefix: str = "e") -> str:
    """A short name no other lab uses: prefix + 5 random lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(5))


class LabFactory:
    """Builds labs (Lab.up) and remembers them, to tear them all down in `close`."""

    def __init__(self) -> None:
        self.labs: list[Lab] = []

    def __call__(self, name: str | None = None, **options: Any) -> Lab:
        lab = Lab(name or random_lab_name(), **options)
        self.labs.append(lab)  # before up(): a failed up() has torn itself down already
        lab.up()
        return lab

    def close(self) -> None:
        for lab in reversed(self.labs):
            lab.down()
        self.labs.clear()


@contextmanager
def built_lab(prefix: str = "e", **options: Any) -> Iterator[Lab]:
    """One lab, up for the `with` block and torn down after it (needs root and the tools)."""
    require_root(*LAB_TOOLS)
    factory = LabFactory()
    try:
        yield factory(random_lab_name(prefix), **options)
    finally:
        factory.close()


def teredo_of(lab: Lab, node: str) -> IPv6Address:
    """The Teredo address of the client on `node`; fails the test when it has none."""
    address = lab.teredo_address(node)
    assert address is not None, f"{node} has no Teredo address"
    return address


def daemon_status(lab: Lab, node: str, socket_path: str | None = None) -> dict[str, Any]:
    """`teredo status --json` of our daemon on `node` (socket default: the lab's NODE.sock)."""
    path = socket_path or str(lab.directory / f"{node}.sock")
    result = lab.exec(
        node, [sys.executable, "-m", "teredo", "status", "--json", "--socket", path], timeout=20
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


FLOOD_SOURCE = Path(__file__).resolve().parents[1] / "benchmarks" / "flood.c"


@contextmanager
def compiled_flood() -> Iterator[Path]:
    """The traffic generator (benchmarks/flood.c), compiled for a test (needs root and gcc)."""
    require_root("gcc")
    with tempfile.TemporaryDirectory(prefix="flood-") as directory:
        binary = Path(directory) / "flood"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(FLOOD_SOURCE)], check=True)
        yield binary
