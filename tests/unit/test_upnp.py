"""The UPnP port mapping adapter (RFC 6081 §5.3.3, §5.3.5) against a stand-in for miniupnpc.

The real library against a real gateway (miniupnpd) is in tests/e2e/test_lab_extensions.py;
here, what the adapter does with each answer a gateway can give, and without the library.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from teredo.adapters.upnp import DESCRIPTION, UpnpPortMapping


class Gateway:
    """What miniupnpc.UPnP answers, as a gateway would, recording the calls."""

    devices = 1
    refuse = False
    address: str | Exception = "203.0.113.2"

    def __init__(self) -> None:
        self.discoverdelay = 0
        self.calls: list[tuple[Any, ...]] = []
        Gateway.last = self

    last: Gateway

    def discover(self) -> int:
        return self.devices

    def selectigd(self) -> str:
        return "http://192.168.1.1:5000/rootDesc.xml"

    def addportmapping(self, *args: Any) -> bool:
        self.calls.append(("add", *args))
        if self.refuse:
            raise Exception("ConflictInMappingEntry")
        return True

    def externalipaddress(self) -> str:
        if isinstance(self.address, Exception):
            raise self.address
        return self.address

    def deleteportmapping(self, *args: Any) -> bool:
        self.calls.append(("delete", *args))
        return True


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> type[Gateway]:
    module = types.ModuleType("miniupnpc")
    fresh: type[Gateway] = type("UPnP", (Gateway,), {})  # class attributes per test
    module.UPnP = fresh  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "miniupnpc", module)
    return fresh


def test_maps_the_local_port_as_rfc_6081_says_and_unmaps_it(gateway: type[Gateway]) -> None:
    mapping = UpnpPortMapping.load()
    assert mapping is not None
    assert mapping.add(("192.168.1.10", 40123)) == ("203.0.113.2", 40123)
    # External port = internal port, UDP, our address, "TEREDO", no remote host.
    assert Gateway.last.calls == [("add", 40123, "UDP", "192.168.1.10", 40123, DESCRIPTION, "")]
    mapping.remove()
    assert Gateway.last.calls[-1] == ("delete", 40123, "UDP", "")
    mapping.remove()  # once only
    assert len(Gateway.last.calls) == 2


def test_no_gateway_no_mapping(gateway: type[Gateway]) -> None:
    gateway.devices = 0
    mapping = UpnpPortMapping.load()
    assert mapping is not None and mapping.add(("192.168.1.10", 40123)) is None


def test_a_refused_mapping_is_no_mapping(gateway: type[Gateway]) -> None:
    gateway.refuse = True
    mapping = UpnpPortMapping.load()
    assert mapping is not None
    assert mapping is not None
    assert mapping.add(("192.168.1.10", 40123)) is None
    mapping.remove()
    assert [c[0] for c in Gateway.last.calls] == ["add"]


def test_without_the_external_address_the_mapping_is_removed(gateway: type[Gateway]) -> None:
    """RFC 6081 §5.3.3: GetExternalIPAddress failed: uninitialize, go on without."""
    gateway.address = Exception("501 Action Failed")
    mapping = UpnpPortMapping.load()
    assert mapping is not None and mapping.add(("192.168.1.10", 40123)) is None
    assert [c[0] for c in Gateway.last.calls] == ["add", "delete"]


def test_without_the_library_the_client_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "miniupnpc", None)  # import raises ImportError
    assert UpnpPortMapping.load() is None
