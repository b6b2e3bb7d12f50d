"""The kernel data path's Python twin against the engine's fast paths (no root, no kernel).

`teredo.bpf.datapath.python_decap_verdict` and `python_encap_verdict` are what the TC programs
decide (tests/e2e/test_bpf_datapath.py runs the programs against them); here they are held
against `PeeringEngine.accept_from_teredo` and `forward_to_teredo` for the same peers: the
kernel may pass more than the engine's fast path takes, for reasons the module docstring
lists, but never takes what the engine would not, and takes everything plain that it would.
"""

from __future__ import annotations

import os
import socket
import struct
from ipaddress import IPv6Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfsupport import (
    CLIENT,
    NATIVE,
    NEW_PEER,
    NEW_PEER_MAPPING,
    NOW_NS,
    PEER,
    PEER_IP,
    PEER_PORT,
    PREFIX,
    PRIVATE_MAPPING,
    PRIVATE_PEER,
    RELAY_IP,
    RELAY_PORT,
    bubble,
    decap_frames,
    encap_packets,
    nonce_trailer,
    peer_table,
    relay_settings,
    teredo_frame,
    udp6,
)
from teredo.bpf.datapath import (
    COUNTER_NAMES,
    MAX_SUMMED_BYTES,
    PEER_VALUE,
    SETTINGS,
    DataPathSettings,
    PeerEntry,
    Role,
    encapsulate,
    python_decap_verdict,
    python_encap_verdict,
)
from teredo.core.address import Endpoint
from teredo.core.client import ClientSettings, TeredoClient
from teredo.core.peering import PeeringEngine, PeeringSettings
from teredo.core.qualification import ServerPair
from teredo.core.relay import TeredoRelay
from teredo.core.wire import internet_checksum

NOW = NOW_NS / 1e9
BPF_SOURCE = os.path.join(os.path.dirname(__file__), "../../src/teredo/bpf/datapath.bpf.c")


def engine_for(role: Role, peers: dict[bytes, PeerEntry]) -> tuple[PeeringEngine, set[bytes]]:
    """An engine of `role` that trusts `peers` as the twin's table holds them."""
    engine: PeeringEngine
    tunnel = PeeringSettings(prefix=PREFIX, allow_private=True)
    local: set[bytes] = set()
    if role == Role.CLIENT:
        from ipaddress import IPv4Address

        client = TeredoClient(
            ClientSettings(servers=(ServerPair(IPv4Address("198.51.100.9"), None),), tunnel=tunnel),
            random_bytes=os.urandom,
            secret=os.urandom(32),
            now=0.0,
        )
        client._set_address(IPv6Address(CLIENT))  # as qualification does
        engine, local = client, {CLIENT}
    else:
        host_specific = role == Role.HOST_SPECIFIC_RELAY
        local = {NATIVE} if host_specific else set()
        engine = TeredoRelay(
            tunnel,
            random_bytes=os.urandom,
            secret=os.urandom(32),
            now=0.0,
            host_specific=host_specific,
            host_addresses=local,
        )
    for address, entry in peers.items():
        engine.trust_peer(address, entry.mapping, entry.last_rx_ns / 1e9)
    return engine, local


def delivered(frame: bytes) -> tuple[bytes, Endpoint] | None:
    """What the kernel's IP and UDP layers would give the daemon's socket (bound to
    RELAY_IP:RELAY_PORT) for `frame` received by the all-zero-MAC test device, parsed here
    independently of the twin: the UDP payload and its source; None when they would not.
    Except the UDP checksum, which the kernel's path leaves to the inner packet's."""
    if len(frame) < 42 or frame[:6] != bytes(6) or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    if ip[0] != 0x45 or int.from_bytes(ip[6:8], "big") & 0x3FFF or ip[9] != 17:
        return None
    if int.from_bytes(ip[2:4], "big") != len(ip) or internet_checksum(ip[:20]) != 0:
        return None
    if ip[16:20] != socket.inet_aton(RELAY_IP):
        return None
    udp = ip[20:]
    if int.from_bytes(udp[2:4], "big") != RELAY_PORT or int.from_bytes(udp[4:6], "big") != len(udp):
        return None
    # The UDP checksum is not looked at: the socket would refuse a wrong one, the kernel's
    # path does not check it on purpose (the inner packet's own checksums protect it).
    source = (socket.inet_ntoa(ip[12:16]), int.from_bytes(udp[0:2], "big"))
    return bytes(udp[8:]), source


ROLES = pytest.mark.parametrize("role", list(Role))


@ROLES
@settings(max_examples=300)
@given(frame=decap_frames())
def test_decap_twin_takes_what_the_engine_accepts(role: Role, frame: bytes) -> None:
    """The engine's fast path, or for a source it has no entry for, what a relay's kernel path
    learns: its full path (rx case 3) delivers the packet unchanged."""
    peers = peer_table()
    engine, local = engine_for(role, peers)
    learn = role != Role.CLIENT  # as the daemons open it, with the engine's allow_private
    settings_ = relay_settings(role=role, learn=learn, allow_private=True)
    verdict = python_decap_verdict(frame, settings_, peers, local)
    datagram = delivered(frame)
    if datagram is None:
        assert not verdict.taken
        return
    payload, source = datagram
    accepted = engine.accept_from_teredo(payload, source, NOW)
    learned = False
    if not accepted and learn and engine.peers.get(payload[8:24]) is None:
        engine.receive_datagram(payload, source, NOW)
        accepted = learned = engine.packets_to_deliver() == [payload]
    if len(payload) + 8 <= MAX_SUMMED_BYTES:
        assert verdict.taken == accepted, verdict
    else:
        assert not verdict.taken
    if verdict.taken:
        assert verdict.packet == payload
        assert verdict.mapping == (source if learned else None)


@ROLES
@settings(max_examples=300)
@given(packet=encap_packets())
def test_encap_twin_sends_where_the_engine_sends(role: Role, packet: bytes) -> None:
    peers = peer_table()
    engine, local = engine_for(role, peers)
    verdict = python_encap_verdict(packet, relay_settings(role=role), peers, local, now_ns=NOW_NS)
    mapping = engine.forward_to_teredo(packet, NOW)
    if verdict.taken:
        assert mapping == verdict.mapping
    elif mapping is not None:
        # The kernel passes more: only for the reasons the engine's fast path does not check.
        assert verdict.reason in ("tx_not_ipv6", "tx_foreign_source", "tx_checksum_incomplete")


def test_decap_rules_by_example() -> None:
    peers = peer_table()
    relay = relay_settings()
    packet = udp6(PEER, NATIVE, b"hello")
    assert python_decap_verdict(teredo_frame(packet), relay, peers) == (
        True,
        "decapsulated",
        packet,
        None,
    )
    cases = {
        "rx_not_plain_ipv6": [
            teredo_frame(nonce_trailer(packet)),
            teredo_frame(bubble(PEER, NATIVE)),
        ],
        "rx_mapping_mismatch": [teredo_frame(packet, source=(PEER_IP, PEER_PORT + 5))],
        "rx_unknown_peer": [teredo_frame(udp6(CLIENT, NATIVE, b"x"))],
        "rx_not_served": [teredo_frame(udp6(PEER, bytes.fromhex("ff02" + "00" * 13 + "01"), b"x"))],
        "rx_fragment_or_options": [teredo_frame(packet, frag_off=0x2000)],
        None: [teredo_frame(packet, destination=(RELAY_IP, 3544))],
    }
    for reason, frames in cases.items():
        for frame in frames:
            assert python_decap_verdict(frame, relay, peers) == (False, reason, None, None)


def test_a_relay_learns_what_its_engine_would_trust() -> None:
    """A source with no entry whose Teredo address embeds where it sent from (RFC 4380 §5.2.3
    rx case 3): a relay's program takes it and learns its mapping; not a client's, not a
    non-global mapping without allow_private, not a mismatch, not into a full map."""
    peers = peer_table()
    relay = relay_settings(learn=True)
    packet = udp6(NEW_PEER, NATIVE, b"hello")
    frame = teredo_frame(packet, source=NEW_PEER_MAPPING)
    assert python_decap_verdict(frame, relay, peers) == (
        True, "decapsulated", packet, NEW_PEER_MAPPING
    )  # fmt: skip
    assert python_decap_verdict(frame, relay, peers, max_peers=3).reason == "rx_peers_full"
    assert python_decap_verdict(frame, relay_settings(), peers).reason == "rx_unknown_peer"
    client = relay_settings(role=Role.CLIENT)
    assert python_decap_verdict(frame, client, peers, {NATIVE}).reason == "rx_unknown_peer"
    moved = teredo_frame(packet, source=(PEER_IP, PEER_PORT + 9))
    assert python_decap_verdict(moved, relay, peers).reason == "rx_unknown_peer"
    private = teredo_frame(udp6(PRIVATE_PEER, NATIVE, b"x"), source=PRIVATE_MAPPING)
    assert python_decap_verdict(private, relay, peers).reason == "rx_unknown_peer"
    relaxed = relay_settings(learn=True, allow_private=True)
    assert python_decap_verdict(private, relaxed, peers).mapping == PRIVATE_MAPPING
    bubble_frame = teredo_frame(bubble(NEW_PEER, NATIVE), source=NEW_PEER_MAPPING)
    assert python_decap_verdict(bubble_frame, relay, peers).reason == "rx_not_plain_ipv6"


def test_encap_rules_by_example() -> None:
    peers = peer_table()
    client = relay_settings(role=Role.CLIENT)
    to_peer = udp6(CLIENT, PEER, b"hello")
    verdict = python_encap_verdict(to_peer, client, peers, {CLIENT}, now_ns=NOW_NS)
    assert verdict == (True, "encapsulated", None, (PEER_IP, PEER_PORT))
    foreign = python_encap_verdict(udp6(NATIVE, PEER, b"x"), client, peers, {CLIENT}, now_ns=NOW_NS)
    assert foreign.reason == "tx_foreign_source"
    stale = python_encap_verdict(to_peer, client, peers, {CLIENT}, now_ns=NOW_NS + 29 * 10**9)
    assert stale.reason == "tx_stale_peer"  # last heard 1 s before NOW_NS: 30 s then


@given(st.binary(max_size=1500), st.integers(0, 0xFFFF))
def test_encapsulate_writes_valid_checksums(packet: bytes, identification: int) -> None:
    out = encapsulate(packet, (RELAY_IP, RELAY_PORT), (PEER_IP, PEER_PORT), identification)
    assert internet_checksum(out[:20]) == 0
    assert out[6:8] == b"\0\0"  # DF off (RFC 4380 §5.1.2)
    assert out[8] == 64 and out[9] == 17
    pseudo = out[12:20] + struct.pack("!xBH", 17, len(out) - 20)
    assert internet_checksum(pseudo + out[20:]) == 0
    assert out[28:] == packet


def test_layouts_match_the_program() -> None:
    """The record sizes the C structs have, and the counters in the C enum's order."""
    source = Path(BPF_SOURCE).read_text()
    assert PEER_VALUE.size == 16 and SETTINGS.size == 40
    enum = source[source.index("enum counter {") : source.index("COUNTERS\n};")]
    names = [line.strip().rstrip(",").lower() for line in enum.splitlines()[1:] if line.strip()]
    assert tuple(names) == COUNTER_NAMES
    record = relay_settings(validity=30.0, tun_ifindex=7, fib_ifindex=9, learn=True).pack()
    assert record[32:40] == b"\x01" + bytes(7)  # learn, allow_private, padding
    assert record[:6] == socket.inet_aton(RELAY_IP) + RELAY_PORT.to_bytes(2, "big")
    assert record[8:12] == b"\x20\x01\x00\x00"
    assert struct.unpack("=IIQ", record[12:16] + record[16:20] + record[24:32]) == (
        7,
        9,
        30 * 10**9,
    )
    entry = PeerEntry((PEER_IP, PEER_PORT), 123)
    assert PeerEntry.unpack(entry.pack()) == entry
    assert isinstance(relay_settings(), DataPathSettings)


def test_missing_capabilities_are_named() -> None:
    """Without CAP_PERFMON the verifier refuses the programs with a log, and the relay once said
    it needed a newer Linux; the capabilities missing are what it says now."""
    from teredo.adapters.bpf import missing_capabilities

    root = "Name:\tteredo\nCapEff:\t000001ffffffffff\n"
    assert missing_capabilities(root) == []
    unit = f"CapEff:\t{(1 << 12) | (1 << 39) | (1 << 6) | (1 << 7):016x}\n"  # no CAP_PERFMON
    assert missing_capabilities(unit) == ["CAP_PERFMON"]
    assert missing_capabilities("CapEff:\t0000000000000000\n") == [
        "CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"
    ]  # fmt: skip
    assert missing_capabilities(f"CapEff:\t{(1 << 12) | (1 << 21):016x}\n") == []  # SYS_ADMIN
