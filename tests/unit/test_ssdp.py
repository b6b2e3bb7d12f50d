"""The SSDP search of `teredo probe` (adapters/ssdp.py) and its sequential-NAT rule, without a
network: what an IGD's answer looks like, what is dropped."""

from __future__ import annotations

from teredo.adapters.ssdp import IGD_TYPE, parse_response, search_request
from teredo.core.qualification import NatBehaviour
from teredo.programs.probe import SEQUENTIAL_DELTA_MAX, is_sequential

MINIUPNPD_ANSWER = (
    b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: " + IGD_TYPE.encode() + b"\r\n"
    b"USN: uuid:3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b::" + IGD_TYPE.encode() + b"\r\n"
    b"EXT:\r\nSERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.1\r\n"
    b"LOCATION: http://10.1.0.1:33757/rootDesc.xml\r\n\r\n"
)


def test_search_request_is_an_m_search_for_an_igd() -> None:
    text = search_request().decode()
    assert text.startswith("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert 'MAN: "ssdp:discover"' in text and f"ST: {IGD_TYPE}\r\n" in text
    assert text.endswith("\r\n\r\n")


def test_parse_response() -> None:
    headers = parse_response(MINIUPNPD_ANSWER)
    assert headers is not None
    assert headers["location"] == "http://10.1.0.1:33757/rootDesc.xml"
    assert headers["server"] == "Debian/12 UPnP/1.1 MiniUPnPd/2.3.1"


def test_other_datagrams_are_dropped() -> None:
    for data in (
        b"",
        b"\xff\xfe",
        b"NOTIFY * HTTP/1.1\r\nLOCATION: http://x/\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nLOCATION: http://x/\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n",  # no LOCATION
        MINIUPNPD_ANSWER[:20],
    ):
        assert parse_response(data) is None, data


def test_sequential_is_a_small_positive_step_behind_a_symmetric_nat() -> None:
    assert is_sequential(NatBehaviour.SYMMETRIC, 1)
    assert is_sequential(NatBehaviour.SYMMETRIC, SEQUENTIAL_DELTA_MAX)
    assert not is_sequential(NatBehaviour.SYMMETRIC, SEQUENTIAL_DELTA_MAX + 1)
    assert not is_sequential(NatBehaviour.SYMMETRIC, 0)
    assert not is_sequential(NatBehaviour.SYMMETRIC, -1)
    assert not is_sequential(NatBehaviour.SYMMETRIC, None)
    assert not is_sequential(NatBehaviour.RESTRICTED, 1)
