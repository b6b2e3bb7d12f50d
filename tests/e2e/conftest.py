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

from collections.abc import Iterator

import pytest

from labsupport import LAB_TOOLS, LabFactory
from testsupport import require_root


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
