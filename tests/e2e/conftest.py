"""Lab fixtures for end-to-end tests: Teredo labs in network namespaces, always torn down.

    def test_something(lab_factory):
        lab = lab_factory(nat1="symmetric", server="miredo")     # built and ready
        assert lab.ping("cli1", NATIVE_IPV6).ok
        lab.teredo_address("cli2"); lab.exec("v6", ["ip", "-6", "route"])

`lab_factory` (one test) and `module_lab_factory` (one module, for a lab shared by several
tests) build labs under random short names, so labs of concurrent runs never collide, and tear
every lab they built down at the end, whatever happened. Both need root, nft, Miredo and ping:
without them the test skips outside CI and fails in CI (testsupport.require_root).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterator
from typing import Any

import pytest

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


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    require_root(*LAB_TOOLS)
    factory = LabFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_lab_factory() -> Iterator[LabFactory]:
    require_root(*LAB_TOOLS)
    factory = LabFactory()
    try:
        yield factory
    finally:
        factory.close()
