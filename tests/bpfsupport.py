"""Packets for the kernel data path's tests (`from bpfsupport import ...`): Teredo datagrams as
Ethernet frames, IPv6 packets with correct checksums, and hypothesis strategies that mutate
them (truncations, bit flips, wrong ports and mappings, trailers, bubbles)."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv6Network

from hypothesis import strategies as st

from teredo.bpf.datapath import PEER_TRUSTED, DataPathSettings, PeerEntry, Role
from teredo.core.wire import internet_checksum

RELAY_IP = "198.51.100.1"
RELAY_PORT = 3545
PEER_IP = "198.51.100.2"
PEER_PORT = 40000
RELAY_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")
NATIVE = socket.inet_pton(socket.AF_INET6, "2001:db8:1::1")
# RFC 4380 §4 style Teredo addresses (server 65.54.227.120); their embedded mappings do not
# matter to the data path, which only compares the learned one.
PEER = socket.inet_pton(socket.AF_INET6, "2001:0:4136:e378:8000:63bf:3fff:fdd2")
OTHER_PEER = socket.inet_pton(socket.AF_INET6, "2001:0:4136:e378:8000:63bf:3fff:fdd3")
STALE_PEER = socket.inet_pton(socket.AF_INET6, "2001:0:4136:e378:8000:63bf:3fff:fdd4")
UNKNOWN_PEER = socket.inet_pton(socket.AF_INET6, "2001:0:4136:e378:8000:63bf:3fff:fdd5")
CLIENT = socket.inet_pton(socket.AF_INET6, "2001:0:4136:e378:8000:1234:3fff:fd00")


def teredo_address(mapping: tuple[str, int], server: str = "65.54.227.120") -> bytes:
    """The Teredo address (RFC 4380 §4, flags 0x8000) that embeds `mapping`."""
    port = (mapping[1] ^ 0xFFFF).to_bytes(2, "big")
    ipv4 = bytes(byte ^ 0xFF for byte in socket.inet_aton(mapping[0]))
    return b"\x20\x01\x00\x00" + socket.inet_aton(server) + b"\x80\x00" + port + ipv4


# Sources with no entry whose address embeds where they send from (RFC 4380 §5.2.3 rx case 3):
# a relay's kernel path learns the first (global), and the second only with allow_private.
NEW_PEER_MAPPING = (PEER_IP, PEER_PORT + 3)
NEW_PEER = teredo_address(NEW_PEER_MAPPING)
PRIVATE_MAPPING = ("10.1.2.3", PEER_PORT)
PRIVATE_PEER = teredo_address(PRIVATE_MAPPING)
LEARNABLE = (NEW_PEER, PRIVATE_PEER)
MULTICAST = socket.inet_pton(socket.AF_INET6, "ff02::1")
LINK_LOCAL = socket.inet_pton(socket.AF_INET6, "fe80::1")
PREFIX = IPv6Network("2001::/32")
NOW_NS = 1_000 * 10**9


def ipv6(source: bytes, destination: bytes, next_header: int, upper: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 0x60000000, len(upper), next_header, 64) + source + destination + upper
    )


def with_checksum(
    source: bytes, destination: bytes, next_header: int, upper: bytes, at: int
) -> bytes:
    pseudo = source + destination + struct.pack("!I3xB", len(upper), next_header)
    check = internet_checksum(pseudo + upper)
    if next_header == 17 and check == 0:
        check = 0xFFFF
    return upper[:at] + check.to_bytes(2, "big") + upper[at + 2 :]


def udp6(
    source: bytes, destination: bytes, payload: bytes, ports: tuple[int, int] = (7777, 9001)
) -> bytes:
    upper = struct.pack("!HHHH", ports[0], ports[1], 8 + len(payload), 0) + payload
    return ipv6(source, destination, 17, with_checksum(source, destination, 17, upper, 6))


def tcp6(source: bytes, destination: bytes, payload: bytes = b"", flags: int = 0x02) -> bytes:
    upper = struct.pack("!HHIIBBHHH", 7778, 9100, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    return ipv6(source, destination, 6, with_checksum(source, destination, 6, upper, 16))


def icmp6_echo(source: bytes, destination: bytes, payload: bytes = b"ping") -> bytes:
    upper = struct.pack("!BBHHH", 128, 0, 0, 1, 1) + payload
    return ipv6(source, destination, 58, with_checksum(source, destination, 58, upper, 2))


def bubble(source: bytes, destination: bytes) -> bytes:
    return ipv6(source, destination, 59, b"")


def udp4(
    payload: bytes,
    source: tuple[str, int] = (PEER_IP, PEER_PORT),
    destination: tuple[str, int] = (RELAY_IP, RELAY_PORT),
    *,
    checksum: bool = True,
    frag_off: int = 0,
) -> bytes:
    """IPv4 + UDP around `payload`, with correct checksums (UDP's 0 when `checksum` is off)."""
    src, dst = socket.inet_aton(source[0]), socket.inet_aton(destination[0])
    udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0) + payload
    if checksum:
        pseudo = src + dst + struct.pack("!xBH", 17, len(udp))
        check = internet_checksum(pseudo + udp) or 0xFFFF
        udp = udp[:6] + check.to_bytes(2, "big") + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, frag_off, 64, 17, 0, src, dst)
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    return header + udp


def ethernet(
    packet: bytes, kind: int = 0x0800, destination: bytes = bytes(6), source: bytes = PEER_MAC
) -> bytes:
    """An Ethernet frame; BPF_PROG_TEST_RUN's device (loopback) has the all-zero address."""
    return destination + source + kind.to_bytes(2, "big") + packet


def teredo_frame(inner: bytes, **options: object) -> bytes:
    return ethernet(udp4(inner, **options))  # type: ignore[arg-type]


def nonce_trailer(packet: bytes) -> bytes:
    return packet + bytes((0x01, 0x04)) + b"\x12\x34\x56\x78"  # RFC 6081 §4.2


def relay_settings(**changes: object) -> DataPathSettings:
    values: dict[str, object] = {
        "role": Role.RELAY,
        "local": (RELAY_IP, RELAY_PORT),
        "prefix": PREFIX,
        "tun_ifindex": 1,
    }
    values.update(changes)
    return DataPathSettings(**values)  # type: ignore[arg-type]


def peer_table(now_ns: int = NOW_NS) -> dict[bytes, PeerEntry]:
    """Two fresh peers at their mappings, one stale (heard from 31 s ago)."""
    return {
        PEER: PeerEntry((PEER_IP, PEER_PORT), now_ns - 10**9, PEER_TRUSTED),
        OTHER_PEER: PeerEntry((PEER_IP, PEER_PORT + 1), now_ns - 2 * 10**9, PEER_TRUSTED),
        STALE_PEER: PeerEntry((PEER_IP, PEER_PORT + 2), now_ns - 31 * 10**9, PEER_TRUSTED),
    }


_SOURCES = (PEER, PEER, PEER, OTHER_PEER, STALE_PEER, UNKNOWN_PEER, CLIENT, NEW_PEER, PRIVATE_PEER)
_DESTINATIONS = (
    NATIVE,
    NATIVE,
    NATIVE,
    CLIENT,
    CLIENT,
    PEER,
    MULTICAST,
    LINK_LOCAL,
    bytes(15) + b"\x01",
    bytes(16),
)
_MAPPINGS = ((PEER_IP, PEER_PORT),) * 4 + (
    (PEER_IP, PEER_PORT + 1),
    (PEER_IP, PEER_PORT + 2),
    ("203.0.113.9", PEER_PORT),
    NEW_PEER_MAPPING,
    NEW_PEER_MAPPING,
    PRIVATE_MAPPING,
)


@st.composite
def inner_packets(
    draw: st.DrawFn,
    sources: tuple[bytes, ...] = _SOURCES,
    destinations: tuple[bytes, ...] = _DESTINATIONS,
) -> bytes:
    source = draw(st.sampled_from(sources))
    destination = draw(st.sampled_from(destinations))
    payload = draw(st.binary(max_size=draw(st.sampled_from((16, 200, 1400)))))
    kind = draw(st.sampled_from(("udp", "tcp", "icmp", "bubble")))
    if kind == "udp":
        return udp6(source, destination, payload)
    if kind == "tcp":
        return tcp6(source, destination, payload)
    if kind == "icmp":
        return icmp6_echo(source, destination, payload)
    return bubble(source, destination)


def _mutate(data: bytes, draw: st.DrawFn, rate: int = 2) -> bytes:
    kinds = ("none",) * rate + ("flip", "truncate", "append", "byte")
    kind = draw(st.sampled_from(kinds))
    if kind == "none" or not data:
        return data
    if kind == "flip":
        position = draw(st.integers(0, len(data) * 8 - 1))
        flipped = bytearray(data)
        flipped[position // 8] ^= 1 << (position % 8)
        return bytes(flipped)
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=12))
    position = draw(st.integers(0, min(len(data), 80) - 1))
    return data[:position] + bytes((draw(st.integers(0, 255)),)) + data[position + 1 :]


@st.composite
def decap_frames(draw: st.DrawFn) -> bytes:
    """Teredo datagrams as frames, valid or mutated: trailers, wrong ports and mappings,
    checksums off, fragments, bit flips, truncations. A third are plain valid ones."""
    if draw(st.integers(0, 2)) == 0:
        sender, mapping = draw(
            st.sampled_from(((PEER, (PEER_IP, PEER_PORT)),) * 2 + ((NEW_PEER, NEW_PEER_MAPPING),))
        )
        valid = draw(inner_packets(sources=(sender,), destinations=(NATIVE,)))
        if valid[6] != 59:
            return teredo_frame(valid, source=mapping, checksum=draw(st.booleans()))
    inner = draw(inner_packets())
    if draw(st.booleans()) and draw(st.booleans()):
        inner = nonce_trailer(inner)
    inner = _mutate(inner, draw, rate=4)
    source = draw(st.sampled_from(_MAPPINGS))
    ours = (RELAY_IP, RELAY_PORT)
    destination = draw(
        st.sampled_from((ours,) * 6 + ((RELAY_IP, 3544), ("198.51.100.7", RELAY_PORT)))
    )
    frag_off = draw(st.sampled_from((0,) * 8 + (0x4000, 0x2000, 0x0001)))
    packet = udp4(inner, source, destination, checksum=draw(st.booleans()), frag_off=frag_off)
    if draw(st.integers(0, 7)) == 0:  # a wrong IPv4 header or UDP checksum
        at = draw(st.sampled_from((10, 26)))
        packet = packet[:at] + bytes((packet[at] ^ 0x40,)) + packet[at + 1 :]
    mac = draw(st.sampled_from((bytes(6),) * 8 + (b"\xff" * 6, RELAY_MAC)))
    return _mutate(ethernet(packet, destination=mac), draw, rate=6)


@st.composite
def encap_packets(draw: st.DrawFn) -> bytes:
    """IPv6 packets routed into the TUN device, valid or mutated."""
    destinations = (PEER, OTHER_PEER, STALE_PEER, UNKNOWN_PEER, MULTICAST)
    packet = draw(inner_packets(sources=(NATIVE, CLIENT, PEER), destinations=destinations))
    if draw(st.integers(0, 5)) == 0 and packet[6] in (6, 17):  # a partial checksum:
        at = 40 + (16 if packet[6] == 6 else 6)  # the pseudo-header sum only
        pseudo = packet[8:40] + struct.pack("!I3xB", len(packet) - 40, packet[6])
        partial = (~internet_checksum(pseudo)) & 0xFFFF
        packet = packet[:at] + partial.to_bytes(2, "big") + packet[at + 2 :]
    return _mutate(packet, draw)
