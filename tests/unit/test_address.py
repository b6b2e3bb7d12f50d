"""Teredo address vectors (RFC 6081 Figures 2 and 3, and two of our own) and properties."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teredo.core.address import (
    LEGACY_TEREDO_PREFIX,
    RANDOM_FLAGS_MASK,
    TEREDO_PREFIX,
    encode_teredo_address,
    is_cone_link_local,
    is_global_ipv4,
    link_local_address,
    parse_teredo_address,
    random_flags,
    server_link_local,
    teredo_flags,
    teredo_mapped_ipv4,
    teredo_mapped_port,
    teredo_mapping,
    teredo_server,
    teredo_server_ipv4,
)
from teredo.core.errors import ParseError

# (server, flags, mapped port, mapped address, Teredo address)
VECTORS = [
    # RFC 6081 §3.1 Figure 2: clients A and B.
    ("203.0.113.120", 0x0000, 4096, "192.0.2.1", "2001:0:cb00:7178:0:efff:3fff:fdfe"),
    ("198.51.100.118", 0x0000, 8192, "192.0.2.10", "2001:0:c633:6476:0:dfff:3fff:fdf5"),
    # RFC 6081 §3.5 Figure 3: clients A and B.
    ("203.0.113.120", 0x0000, 4095, "198.51.100.118", "2001:0:cb00:7178:0:f000:39cc:9b89"),
    ("203.0.113.120", 0x0000, 4096, "198.51.100.118", "2001:0:cb00:7178:0:efff:39cc:9b89"),
    # Not from an RFC: the cone-flag example address often quoted (Wikipedia's), recomputed.
    ("65.54.227.120", 0x8000, 40000, "192.0.2.45", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
    # Not from an RFC: Figure 2's client A with RFC 5991 random bits 0x285C (R1 0xA, R2 0x5C).
    ("203.0.113.120", 0x285C, 4096, "192.0.2.1", "2001:0:cb00:7178:285c:efff:3fff:fdfe"),
]


@pytest.mark.parametrize(("server", "flags", "port", "mapped", "expected"), VECTORS)
def test_encode_vectors(server: str, flags: int, port: int, mapped: str, expected: str) -> None:
    address = encode_teredo_address(IPv4Address(server), IPv4Address(mapped), port, flags)
    assert address == IPv6Address(expected)


@pytest.mark.parametrize(("server", "flags", "port", "mapped", "expected"), VECTORS)
def test_decode_vectors(server: str, flags: int, port: int, mapped: str, expected: str) -> None:
    teredo = parse_teredo_address(expected)
    assert teredo.prefix == TEREDO_PREFIX
    assert teredo.server == IPv4Address(server)
    assert teredo.flags == flags
    assert teredo.mapped_port == port
    assert teredo.mapped_address == IPv4Address(mapped)
    assert teredo.cone == bool(flags & 0x8000)
    assert teredo.random_bits == flags & 0x3CFF
    packed = IPv6Address(expected).packed  # the packet paths' field helpers agree
    assert teredo_mapping(packed) == (mapped, port)
    assert (teredo_mapped_ipv4(packed), teredo_mapped_port(packed)) == (
        int(teredo.mapped_address),
        port,
    )
    assert teredo_server(packed) == (server, 3544)
    assert teredo_server_ipv4(packed) == int(teredo.server)
    assert teredo_flags(packed) == flags


def test_rfc5991_random_bits_are_read_in_place_and_leave_the_cone_bit_clear() -> None:
    teredo = parse_teredo_address("2001:0:cb00:7178:285c:efff:3fff:fdfe")
    assert teredo.random_bits == 0x285C
    assert not teredo.cone


@pytest.mark.parametrize("text", ["2001:db8::1", "::1", "fe80::1", "2002:c000:201::1", "2001:1::"])
def test_non_teredo_addresses_are_refused(text: str) -> None:
    with pytest.raises(ParseError):
        parse_teredo_address(text)


@pytest.mark.parametrize("text", ["not an address", "1.2.3.4", "2001::g", ""])
def test_garbage_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_teredo_address(text)


def test_legacy_prefix() -> None:
    teredo = parse_teredo_address("3ffe:831f:cb00:7178:0:efff:3fff:fdfe")
    assert teredo.prefix == LEGACY_TEREDO_PREFIX
    assert teredo.server == IPv4Address("203.0.113.120")
    with pytest.raises(ParseError):
        parse_teredo_address("3ffe:831f::1", prefixes=(TEREDO_PREFIX,))


def test_server_link_local_addresses() -> None:
    assert server_link_local(IPv4Address("65.55.158.118")) == IPv6Address(
        "fe80::8000:f227:bec8:6189"
    )  # the Windows capture's RA source
    assert server_link_local(IPv4Address("203.0.113.120")) == IPv6Address(
        "fe80::8000:f227:34ff:8e87"
    )
    assert server_link_local(IPv4Address("198.51.100.118")) == IPv6Address(
        "fe80::8000:f227:39cc:9b89"
    )


def test_link_local_forms_and_cone_bit() -> None:
    assert link_local_address(0, 0, IPv4Address("0.0.0.0")) == IPv6Address("fe80::ffff:ffff:ffff")
    assert link_local_address(0x8000, 0, IPv4Address("0.0.0.1")) == IPv6Address(
        "fe80::8000:ffff:ffff:fffe"
    )
    assert not is_cone_link_local(IPv6Address("fe80::ffff:ffff:ffff"))
    assert not is_cone_link_local(IPv6Address("fe80::ffff:ffff:fffe"))  # Windows
    assert is_cone_link_local(IPv6Address("fe80::8000:ffff:ffff:fffe"))
    assert is_cone_link_local(IPv6Address("fe80::8000:5445:5245:444f"))  # Miredo cone


GLOBAL = ["192.0.2.1", "198.51.100.118", "172.32.0.1", "240.0.0.1", "203.0.113.2", "100.64.0.1"]
NOT_GLOBAL = [
    "10.1.2.3", "172.31.255.255", "192.88.99.1", "239.1.1.1", "255.255.255.255",
    "169.254.1.1", "127.0.0.1", "0.1.2.3", "192.168.1.1", "224.0.0.253",
]  # fmt: skip


@pytest.mark.parametrize("text", GLOBAL)
def test_global_ipv4(text: str) -> None:
    assert is_global_ipv4(IPv4Address(text))


@pytest.mark.parametrize("text", NOT_GLOBAL)
def test_not_global_ipv4(text: str) -> None:
    assert not is_global_ipv4(IPv4Address(text))


def test_random_flags_uses_only_the_rfc5991_bits() -> None:
    assert random_flags(lambda n: b"\xff" * n) == RANDOM_FLAGS_MASK
    assert random_flags(lambda n: b"\x00" * n) == 0
    assert random_flags(lambda n: b"\xc3\x5a" * (n // 2)) == 0xC35A & RANDOM_FLAGS_MASK


ipv4s = st.integers(0, 2**32 - 1).map(IPv4Address)
ports = st.integers(0, 0xFFFF)
flags = st.integers(0, 0xFFFF)
prefixes = st.sampled_from([TEREDO_PREFIX, LEGACY_TEREDO_PREFIX])


@given(ipv4s, ipv4s, ports, flags, prefixes)
def test_round_trip(
    server: IPv4Address, mapped: IPv4Address, port: int, flag: int, prefix: IPv6Network
) -> None:
    address = encode_teredo_address(server, mapped, port, flag, prefix)
    teredo = parse_teredo_address(address)
    assert (teredo.server, teredo.mapped_address, teredo.mapped_port, teredo.flags) == (
        server,
        mapped,
        port,
        flag,
    )
    assert teredo.prefix == prefix
    assert teredo.ipv6 == address


@given(ipv4s, ipv4s, ports, flags)
def test_stdlib_oracle(server: IPv4Address, mapped: IPv4Address, port: int, flag: int) -> None:
    # The stdlib's `teredo` property gives (server, client) and ignores the flags and port.
    address = encode_teredo_address(server, mapped, port, flag)
    assert address.teredo == (server, mapped)
