"""The traffic generator (benchmarks/flood.c) against this project's codec, without root.

flood.c is compiled as the benchmarks compile it; `-m show` prints its fake clients and `-x`
prints the datagrams it would send, which are parsed here with teredo.core.address and
teredo.core.wire
(RFC 4380 §4 address format, §5.1.1 authentication, §2.8 bubbles, §5.2.1 RS) and checksummed
independently.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest
from benchlib import compiled_flood

from teredo.core.address import parse_teredo_address
from teredo.core.wire import (
    internet_checksum,
    is_bubble,
    is_router_solicitation,
    parse_teredo_packet,
)

SERVER = "198.51.100.2"
RELAY = "198.51.100.18"
NATIVE = "2001:db8:2::2"


@pytest.fixture(scope="module")
def flood() -> Iterator[Path]:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to compile benchmarks/flood.c")
    with compiled_flood() as binary:
        yield binary


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)


def datagrams(binary: Path, *args: str) -> list[bytes]:
    result = run(binary, *args, "-x")
    assert result.returncode == 0, result.stderr
    return [bytes.fromhex(line) for line in result.stdout.split()]


def udp4_checksum_ok(datagram: bytes) -> bool:
    source, destination = datagram[12:16], datagram[16:20]
    udp = datagram[20:]
    pseudo = source + destination + struct.pack("!BBH", 0, 17, len(udp))
    return internet_checksum(pseudo + udp) in (0, 0xFFFF)


def upper_checksum_ok(ipv6: bytes) -> bool:
    length = struct.unpack("!H", ipv6[4:6])[0]
    pseudo = ipv6[8:40] + struct.pack("!I3xB", length, ipv6[6])
    return internet_checksum(pseudo + ipv6[40 : 40 + length]) in (0, 0xFFFF)


@pytest.mark.parametrize("first", [0, 5, 999998, 4000000])
def test_fake_clients_are_self_consistent_teredo_clients(flood: Path, first: int) -> None:
    result = run(flood, "-m", "show", "-n", "8", "-o", str(first), "-S", SERVER)
    assert result.returncode == 0, result.stderr
    seen = set()
    for line in result.stdout.splitlines():
        _, address, port, teredo = line.split()
        decoded = parse_teredo_address(teredo)
        assert decoded.server == IPv4Address(SERVER)
        assert decoded.mapped_address == IPv4Address(address)
        assert IPv4Address(address) in IPv4Network("100.64.0.0/10")
        assert decoded.mapped_port == int(port) and 1024 <= int(port) < 65536
        assert decoded.flags & ~0x3CFF == 0 and not decoded.cone  # RFC 5991 §3.1 bits only
        seen.add((address, port))
    assert len(seen) == 8  # distinct mappings


def test_teredo_datagrams_carry_a_valid_ipv6_udp_packet(flood: Path) -> None:
    args = ["-m", "teredo", "-n", "3", "-S", SERVER, "-R", RELAY, "-d", NATIVE, "-c", "3"]
    shown = run(flood, "-m", "show", "-n", "3", "-S", SERVER).stdout.splitlines()
    for datagram, client in zip(datagrams(flood, *args), shown, strict=True):
        _, address, port, teredo = client.split()
        assert datagram[0] == 0x45 and datagram[9] == 17
        assert IPv4Address(datagram[12:16]) == IPv4Address(address)  # outer = the mapping
        assert IPv4Address(datagram[16:20]) == IPv4Address(RELAY)
        sport, dport, length = struct.unpack("!HHH", datagram[20:26])
        assert (sport, dport, length) == (int(port), 3545, len(datagram) - 20)
        assert udp4_checksum_ok(datagram)
        ipv6 = parse_teredo_packet(datagram[28:]).ipv6
        assert len(ipv6) == 40 + 8 + 64 and ipv6[6] == 17
        assert IPv6Address(ipv6[8:24]) == IPv6Address(teredo)
        assert IPv6Address(ipv6[24:40]) == IPv6Address(NATIVE)
        assert struct.unpack("!H", ipv6[42:44])[0] == 9  # the lab's sink port
        assert upper_checksum_ok(ipv6)


def test_bubbles_are_bare_ipv6_headers(flood: Path) -> None:
    args = ["-m", "bubble", "-n", "2", "-S", SERVER, "-R", RELAY, "-d", NATIVE, "-c", "2"]
    for datagram in datagrams(flood, *args):
        assert udp4_checksum_ok(datagram)
        ipv6 = parse_teredo_packet(datagram[28:]).ipv6
        assert is_bubble(ipv6) and len(ipv6) == 40


def test_router_solicitations_are_what_a_client_sends(flood: Path) -> None:
    args = ["-m", "rs", "-S", SERVER, "-R", SERVER, "-c", "2"]
    nonces = set()
    for datagram in datagrams(flood, *args):
        assert struct.unpack("!H", datagram[22:24])[0] == 3544  # to the server's Teredo port
        assert udp4_checksum_ok(datagram)
        packet = parse_teredo_packet(datagram[28:])
        assert packet.authentication is not None and packet.origin is None
        auth = packet.authentication
        assert (auth.client_id, auth.auth_value, auth.confirmation) == (b"", b"", 0)
        nonces.add(auth.nonce)
        assert is_router_solicitation(packet.ipv6)
        assert IPv6Address(packet.ipv6[8:24]) == IPv6Address("fe80::ffff:ffff:ffff")
        assert IPv6Address(packet.ipv6[24:40]) == IPv6Address("ff02::2")
        assert upper_checksum_ok(packet.ipv6)
    assert len(nonces) == 2  # a new nonce each


def test_native_and_plain_packets(flood: Path) -> None:
    shown = run(flood, "-m", "show", "-n", "2", "-S", SERVER).stdout.splitlines()
    args = ["-m", "native", "-n", "2", "-S", SERVER, "-s", NATIVE, "-c", "2"]
    for ipv6, client in zip(datagrams(flood, *args), shown, strict=True):
        assert IPv6Address(ipv6[24:40]) == IPv6Address(client.split()[3])
        assert IPv6Address(ipv6[8:24]) == IPv6Address(NATIVE) and upper_checksum_ok(ipv6)
    args = ["-m", "plain", "-s", "2001:db8:4::2", "-d", NATIVE, "-c", "1"]
    (ipv6,) = datagrams(flood, *args)
    assert len(ipv6) == 112 and upper_checksum_ok(ipv6)


@pytest.mark.parametrize(
    "args, words",
    [
        (["-m", "teredo", "-S", SERVER, "-R", "8.8.8.8", "-d", NATIVE], "lab address"),
        (["-m", "plain", "-s", "2001:db8:4::2", "-d", "2001:4860::8888"], "2001:db8::/32"),
        (["-m", "teredo", "-S", SERVER, "-R", RELAY, "-d", NATIVE, "-F", "10.0.0.0/8"], "100.64"),
        (["-m", "nope"], "-m takes"),
        (["-m", "teredo", "-R", RELAY, "-d", NATIVE], "-S SERVER is required"),
    ],
)
def test_refuses_what_is_not_the_lab(flood: Path, args: list[str], words: str) -> None:
    result = run(flood, *args, "-c", "1")
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_refuses_to_send_outside_a_named_namespace(flood: Path) -> None:
    inode = Path("/proc/self/ns/net").stat().st_ino
    named = Path("/run/netns")
    if named.is_dir() and any(p.stat().st_ino == inode for p in named.iterdir()):
        pytest.skip("the tests run inside a named network namespace")
    result = run(flood, "-m", "teredo", "-S", SERVER, "-R", RELAY, "-d", NATIVE, "-c", "1")
    assert result.returncode == 2 and "named network namespace" in result.stderr
