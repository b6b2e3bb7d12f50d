"""Wireshark's Teredo dissector as an independent oracle for our encoder.

Packets built by `teredo.core.wire` are written to a pcap (Ethernet/IPv4/UDP around them, UDP port
3544 so the dissector claims them) and `tshark` must decode the fields to the values we put in.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from teredo.core.address import encode_teredo_address, server_link_local
from teredo.core.wire import (
    Authentication,
    OriginIndication,
    PrefixInformation,
    RouterAdvertisement,
    TeredoPacket,
    encode_bubble,
    encode_echo,
    encode_router_advertisement,
    encode_router_solicitation,
    encode_teredo_packet,
    internet_checksum,
)
from testsupport import IN_CI

SERVER = IPv4Address("203.0.113.120")
CLIENT = encode_teredo_address(SERVER, IPv4Address("192.0.2.1"), 4096, 0x285C)
PEER = encode_teredo_address(IPv4Address("198.51.100.118"), IPv4Address("192.0.2.10"), 8192)
NONCE = bytes.fromhex("0123456789abcdef")


def frame(payload: bytes, src: str, sport: int, dst: str, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
        IPv4Address(src).packed, IPv4Address(dst).packed,
    )  # fmt: skip
    ip = ip[:10] + internet_checksum(ip).to_bytes(2, "big") + ip[12:]
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip + udp


def write_pcap(path: Path, frames: list[bytes]) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, data in enumerate(frames):
            f.write(struct.pack("<IIII", i, 0, len(data), len(data)))
            f.write(data)


FIELDS = [
    "teredo.auth.idlen", "teredo.auth.aulen", "teredo.auth.nonce", "teredo.auth.conf",
    "teredo.orig.port", "teredo.orig.addr", "ipv6.src", "ipv6.dst", "ipv6.nxt",
    "icmpv6.type", "icmpv6.checksum.status", "icmpv6.opt.prefix", "icmpv6.opt.mtu",
    "ipv6.src_ts_ipv4", "ipv6.src_tc_ipv4", "ipv6.src_tc_port",
    "ipv6.dst_ts_ipv4", "ipv6.dst_tc_ipv4", "ipv6.dst_tc_port", "icmpv6.echo.sequence_number",
]  # fmt: skip


def dissect(tmp_path: Path, frames: list[bytes]) -> list[dict[str, str]]:
    if shutil.which("tshark") is None:
        if IN_CI:
            pytest.fail("tshark is required in CI (Debian package tshark)")
        pytest.skip("needs tshark")
    pcap = tmp_path / "teredo.pcap"
    write_pcap(pcap, frames)
    argv = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for name in FIELDS:
        argv += ["-e", name]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return [dict(zip(FIELDS, line.split("|"), strict=True)) for line in out.splitlines()]


def test_tshark_decodes_our_packets(tmp_path: Path) -> None:
    rs = TeredoPacket(encode_router_solicitation(IPv6Address("fe80::ffff:ffff:ffff")),
                      authentication=Authentication(NONCE))  # fmt: skip
    ra = TeredoPacket(
        encode_router_advertisement(
            RouterAdvertisement(
                source=server_link_local(SERVER),
                destination=IPv6Address("fe80::ffff:ffff:ffff"),
                prefixes=(PrefixInformation(IPv6Address("2001:0:cb00:7178::")),),
                mtu=1280,
            )
        ),
        authentication=Authentication(NONCE),
        origin=OriginIndication(IPv4Address("192.0.2.1"), 4096),
    )
    bubble = TeredoPacket(encode_bubble(CLIENT, PEER),
                          origin=OriginIndication(IPv4Address("198.51.100.7"), 40000))  # fmt: skip
    authed = TeredoPacket(
        encode_echo(CLIENT, IPv6Address("2001:db8::1"), 7, 9, b"payload!"),
        authentication=Authentication(NONCE, 1, b"client-7", bytes(range(20))),
    )
    frames = [
        frame(encode_teredo_packet(rs), "192.168.1.2", 40000, "203.0.113.120", 3544),
        frame(encode_teredo_packet(ra), "203.0.113.120", 3544, "192.0.2.1", 4096),
        frame(encode_teredo_packet(bubble), "203.0.113.120", 3544, "192.0.2.1", 4096),
        frame(encode_teredo_packet(authed), "192.0.2.1", 4096, "203.0.113.120", 3544),
    ]
    rs_f, ra_f, bubble_f, authed_f = dissect(tmp_path, frames)

    assert rs_f["teredo.auth.idlen"] == "0" and rs_f["teredo.auth.aulen"] == "0"
    assert rs_f["teredo.auth.nonce"] == NONCE.hex()
    assert rs_f["teredo.auth.conf"] == "00"
    assert rs_f["ipv6.src"] == "fe80::ffff:ffff:ffff" and rs_f["ipv6.dst"] == "ff02::2"
    assert rs_f["icmpv6.type"] == "133" and rs_f["icmpv6.checksum.status"] == "1"

    assert ra_f["teredo.auth.nonce"] == NONCE.hex()
    assert (ra_f["teredo.orig.port"], ra_f["teredo.orig.addr"]) == ("4096", "192.0.2.1")
    assert ra_f["ipv6.src"] == "fe80::8000:f227:34ff:8e87"
    assert ra_f["icmpv6.type"] == "134" and ra_f["icmpv6.checksum.status"] == "1"
    assert ra_f["icmpv6.opt.prefix"] == "2001:0:cb00:7178::"
    assert ra_f["icmpv6.opt.mtu"] == "1280"

    assert (bubble_f["teredo.orig.port"], bubble_f["teredo.orig.addr"]) == (
        "40000",
        "198.51.100.7",
    )
    assert bubble_f["ipv6.nxt"] == "59"
    assert bubble_f["ipv6.src_ts_ipv4"] == "203.0.113.120"
    assert bubble_f["ipv6.src_tc_ipv4"] == "192.0.2.1"
    assert bubble_f["ipv6.src_tc_port"] == "4096"
    assert bubble_f["ipv6.dst_ts_ipv4"] == "198.51.100.118"
    assert bubble_f["ipv6.dst_tc_ipv4"] == "192.0.2.10"
    assert bubble_f["ipv6.dst_tc_port"] == "8192"

    assert authed_f["teredo.auth.idlen"] == "8" and authed_f["teredo.auth.aulen"] == "20"
    assert authed_f["teredo.auth.conf"] == "01"
    assert authed_f["icmpv6.type"] == "128" and authed_f["icmpv6.checksum.status"] == "1"
    assert authed_f["icmpv6.echo.sequence_number"] == "9"
