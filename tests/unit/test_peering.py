"""The peering engine shared by client and relay: timers, rate limits, bounds, robustness.

Time is driven by hand (`now = engine.get_timer(); engine.handle_timer(now)`); randomness and the
cookie secret are fixed, so every byte is predictable.
"""

from __future__ import annotations

import itertools
import random
import tracemalloc
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.core.address import Endpoint, encode_teredo_address, teredo_mapping
from teredo.core.peering import PeeringEngine, PeeringSettings, bubble_cookie
from teredo.core.peers import Peer
from teredo.core.relay import TeredoRelay
from teredo.core.trailers import trailer_nonce
from teredo.core.wire import (
    ICMPv6Type,
    TeredoPacket,
    UnreachableCode,
    encode_bubble,
    encode_echo,
    encode_ipv6_packet,
    icmpv6_message,
    parse_teredo_packet,
)

SERVER = ("198.51.100.2", 3544)
NATIVE = IPv6Address("2001:db8:2::2")
SECRET = b"k" * 32


def counting_random() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def relay(now: float = 0.0, **kwargs: object) -> TeredoRelay:
    return TeredoRelay(
        PeeringSettings(**kwargs),  # type: ignore[arg-type]
        random_bytes=counting_random(),
        secret=SECRET,
        now=now,
    )


def teredo(ip: str = "203.0.113.2", port: int = 40000, server: str = "198.51.100.2") -> bytes:
    return encode_teredo_address(IPv4Address(server), IPv4Address(ip), port).packed


def to_peer(peer: bytes, data: bytes = b"x") -> bytes:
    return encode_echo(NATIVE, IPv6Address(peer), 1, 1, data)


def from_peer(peer: bytes, data: bytes = b"x") -> bytes:
    return encode_echo(IPv6Address(peer), NATIVE, 1, 1, data)


# ---------------------------------------------------------------------------------------------
# Bubbles: what, where, how often


def test_first_packet_queues_and_sends_direct_and_indirect_bubbles() -> None:
    engine = relay()
    peer = teredo()
    engine.send_ipv6(to_peer(peer), 0.0)
    sent = engine.datagrams_to_send()
    cookie = bubble_cookie(SECRET, peer)
    direct = encode_bubble(IPv6Address(cookie), IPv6Address(peer), hop_limit=0)
    assert sent == [
        (direct, ("203.0.113.2", 40000)),
        (direct + bytes.fromhex("0104 00000001"), SERVER),  # RFC 6081 nonce trailer
    ]
    entry = engine.peers.get(peer)
    assert entry is not None and not entry.trusted
    assert entry.nonce_sent == bytes.fromhex("00000001")
    assert entry.queued_bytes == len(to_peer(peer))
    # The cookie is link-local with the U/G bits cleared.
    assert cookie[:8] == bytes.fromhex("fe80000000000000") and cookie[8] & 0x03 == 0
    assert engine.get_timer() == 1.0  # the sweep; the retry is at 2.0


def test_bubble_spacing_retries_and_exhaustion_with_unreachable() -> None:
    engine = relay()
    peer = teredo()
    packet = to_peer(peer)
    engine.send_ipv6(packet, 0.0)
    engine.send_ipv6(to_peer(peer, b"y"), 0.5)  # within 2 s: queued, no new bubble
    assert len(engine.datagrams_to_send()) == 2
    times = []
    now = 0.0
    while now < 20.0:
        deadline = engine.get_timer()
        assert deadline is not None
        now = deadline
        engine.handle_timer(now)
        if engine.datagrams_to_send():
            times.append(now)
    assert times == [2.0, 4.0, 6.0]  # RFC 4380 §5.4.1: every 2 s, up to 3 repeats
    assert engine.counters["bubbles_sent"] == 8
    errors = engine.packets_to_deliver()
    assert len(errors) == 2  # one per queued packet
    message = icmpv6_message(errors[0])
    assert message is not None
    kind, code, body = message
    assert (kind, code) == (ICMPv6Type.DESTINATION_UNREACHABLE, UnreachableCode.ADDRESS_UNREACHABLE)
    assert body[4:] == packet
    assert engine.drops["peer_unreachable"] == 2
    assert engine.peers.total_queued_bytes == 0
    # While the budget is spent, new packets fail at once (and are not queued).
    engine.send_ipv6(packet, 21.0)
    assert engine.datagrams_to_send() == []
    assert len(engine.packets_to_deliver()) == 1
    assert engine.peers.total_queued_bytes == 0


def test_answer_after_retries_flushes_queue_in_order() -> None:
    engine = relay()
    peer = teredo()
    first, second = to_peer(peer, b"1"), to_peer(peer, b"2")
    engine.send_ipv6(first, 0.0)
    engine.handle_timer(2.0)
    engine.send_ipv6(second, 3.0)
    engine.datagrams_to_send()
    engine.receive_datagram(encode_bubble(IPv6Address(peer), NATIVE), ("203.0.113.2", 40000), 3.5)
    assert engine.datagrams_to_send() == [
        (first, ("203.0.113.2", 40000)),
        (second, ("203.0.113.2", 40000)),
    ]
    assert engine.peers.total_queued_bytes == 0
    engine.handle_timer(4.0)  # the pending retry finds the peer trusted: nothing to do
    assert engine.datagrams_to_send() == []


def test_stale_trusted_peer_is_set_up_again() -> None:
    engine = relay()
    peer = teredo()
    source = ("203.0.113.2", 40000)
    engine.receive_datagram(from_peer(peer), source, 0.0)
    assert engine.forward_to_teredo(to_peer(peer), 29.9) == source
    assert engine.forward_to_teredo(to_peer(peer), 30.0) is None  # RFC 4380 §5.2.4: 30 s
    engine.send_ipv6(to_peer(peer), 30.0)
    sent = engine.datagrams_to_send()
    assert [to for _, to in sent] == [source, SERVER]  # bubbles, packet queued
    engine.receive_datagram(from_peer(peer), source, 30.2)
    assert engine.datagrams_to_send() == [(to_peer(peer), source)]


def test_icmp_errors_are_rate_limited() -> None:
    engine = relay()
    packet = encode_echo(NATIVE, IPv6Address("2001:db8:9::1"), 1, 1, b"x")
    for i in range(100):
        engine.send_ipv6(packet, i * 0.002)  # 100 in 0.2 s
    assert len(engine.packets_to_deliver()) == 11  # a burst of 10, +1 token earned at 0.1 s
    assert engine.drops["icmp_error_rate_limited"] == 89
    for i in range(100):
        engine.send_ipv6(packet, 10.0 + i * 0.1)  # 10 per second: all answered
    assert len(engine.packets_to_deliver()) == 100


def test_no_icmp_error_about_an_icmp_error() -> None:
    engine = relay()
    engine.send_ipv6(encode_echo(NATIVE, IPv6Address("2001:db8:9::1"), 1, 1, b"x"), 0.0)
    [error] = engine.packets_to_deliver()
    # Route the error back as if it were addressed to a non-Teredo destination again.
    bounced = error[:8] + NATIVE.packed + IPv6Address("2001:db8:9::1").packed + error[40:]
    engine.send_ipv6(bounced, 0.1)
    assert engine.packets_to_deliver() == []


def test_multicast_and_malformed_from_stack_are_dropped() -> None:
    engine = relay()
    engine.send_ipv6(encode_echo(NATIVE, IPv6Address("ff02::1"), 1, 1, b"x"), 0.0)
    engine.send_ipv6(b"\x60" + bytes(10), 0.0)
    engine.send_ipv6(to_peer(teredo())[:-1], 0.0)  # payload length longer than the packet
    assert engine.drops == {"multicast_destination": 1, "malformed_from_stack": 2}
    assert engine.datagrams_to_send() == []


def test_non_global_server_is_refused() -> None:
    engine = relay()
    engine.send_ipv6(to_peer(teredo(server="10.0.0.1")), 0.0)
    engine.send_ipv6(to_peer(teredo(server="0.0.0.0")), 0.0)
    engine.send_ipv6(to_peer(teredo(port=0)), 0.0)
    assert engine.drops == {"non_global_server": 2, "non_global_destination": 1}
    assert len(engine.peers) == 0


# ---------------------------------------------------------------------------------------------
# Bounds: queues, table size, expiry, floods


def test_queue_limit_per_peer() -> None:
    engine = relay()
    peer = teredo()
    big = to_peer(peer, bytes(1000))
    engine.send_ipv6(big, 0.0)
    engine.send_ipv6(big, 0.1)  # 2 * 1048 > 1280
    assert engine.drops["queue_full"] == 1
    entry = engine.peers.get(peer)
    assert entry is not None and entry.queued_bytes == len(big)


def test_expiry_by_sweep() -> None:
    engine = relay()
    for port in range(1000, 1100):
        engine.receive_datagram(from_peer(teredo(port=port)), ("203.0.113.2", port), 0.0)
    assert len(engine.peers) == 100
    now = 0.0
    while now < 31.0:
        deadline = engine.get_timer()
        assert deadline is not None
        now = deadline
        engine.handle_timer(now)
    assert len(engine.peers) == 0
    assert engine.status()["expired_peers"] == 100


def test_flood_of_new_sources_keeps_memory_bounded_and_traffic_flowing() -> None:
    max_peers = 256
    engine = relay(max_peers=max_peers, max_total_queue_bytes=64 * 1024)
    legit = teredo("203.0.113.7", 5555)
    legit_source = ("203.0.113.7", 5555)
    rng = random.Random(4)
    tracemalloc.start()
    try:
        engine.receive_datagram(from_peer(legit), legit_source, 0.0)
        baseline = None
        now = 0.0
        for i in range(9000):
            now = i * 0.002  # 500 packets/s of junk for 18 s
            ip = f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            port = rng.randrange(1, 65536)
            kind = i % 3
            if kind == 0:  # valid new Teredo sources (mapping matches)
                engine.receive_datagram(from_peer(teredo(ip, port)), (ip, port), now)
            elif kind == 1:  # spoofed: mapping mismatch
                engine.receive_datagram(from_peer(teredo(ip, port)), (ip, port ^ 1), now)
            else:  # native side: packets to random Teredo destinations
                engine.send_ipv6(to_peer(teredo(ip, port), bytes(200)), now)
            engine.datagrams_to_send()
            engine.packets_to_deliver()
            if now >= (engine.get_timer() or 0):
                engine.handle_timer(now)
            if i % 100 == 0:  # the legitimate peer keeps talking
                engine.receive_datagram(from_peer(legit), legit_source, now)
                assert engine.packets_to_deliver()
                assert engine.forward_to_teredo(to_peer(legit), now) == legit_source
            assert len(engine.peers) <= max_peers
            assert engine.peers.total_queued_bytes <= 64 * 1024
            if i == 3000:
                baseline = tracemalloc.get_traced_memory()[0]
        final = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert baseline is not None
    assert final < baseline + 256 * 1024  # steady state: no growth with the number of packets
    assert engine.drops["mapping_mismatch"] == 3000
    assert len(engine._retries) <= 2 * max_peers + 64


def test_eviction_spares_an_established_peer() -> None:
    engine = relay(max_peers=4)
    established = teredo("203.0.113.9", 9)
    engine.receive_datagram(from_peer(established), ("203.0.113.9", 9), 0.0)
    engine.receive_datagram(from_peer(established), ("203.0.113.9", 9), 0.05)
    for port in range(1, 20):
        engine.send_ipv6(to_peer(teredo(port=port)), 0.1)
    assert len(engine.peers) == 4
    assert engine.peers.get(established) is not None


def test_what_will_be_dropped_creates_no_entry() -> None:
    """Unsolicited bubbles from self-consistent strangers, and packets for destinations the
    relay does not serve (multicast, link-local, Teredo), are dropped or consumed without an
    entry: one UDP socket can claim 2^48 Teredo sources."""
    engine = relay()
    for port in range(1, 200):
        stranger = teredo(port=port)
        source = ("203.0.113.2", port)
        engine.receive_datagram(encode_bubble(IPv6Address(stranger), NATIVE), source, 1.0)
        for destination in ("ff02::1", "fe80::1", str(IPv6Address(teredo(port=9)))):
            packet = encode_echo(IPv6Address(stranger), IPv6Address(destination), 1, 1, b"x")
            engine.receive_datagram(packet, source, 1.0)
    assert len(engine.peers) == 0
    assert engine.counters["bubbles_received"] == 199
    assert engine.drops["destination_not_served"] == 3 * 199


# ---------------------------------------------------------------------------------------------
# Fast paths agree with the full paths


def test_fast_paths_refuse_what_needs_the_full_path() -> None:
    engine = relay()
    peer = teredo()
    source = ("203.0.113.2", 40000)
    packet = from_peer(peer)
    assert not engine.accept_from_teredo(packet, source, 0.0)  # unknown peer
    engine.receive_datagram(packet, source, 0.0)
    assert engine.accept_from_teredo(packet, source, 0.0)
    assert engine.accept_from_teredo(memoryview(packet), source, 0.0)
    assert not engine.accept_from_teredo(packet + b"\x01\x04abcd", source, 0.0)  # trailer
    assert not engine.accept_from_teredo(packet[:-1], source, 0.0)
    assert not engine.accept_from_teredo(encode_bubble(IPv6Address(peer), NATIVE), source, 0.0)
    assert not engine.accept_from_teredo(b"\x00\x00" + packet, source, 0.0)
    assert not engine.accept_from_teredo(b"", source, 0.0)
    assert engine.forward_to_teredo(to_peer(peer), 1.0) == source
    assert engine.forward_to_teredo(memoryview(to_peer(peer)), 1.0) == source
    assert engine.forward_to_teredo(b"\x60", 1.0) is None
    assert engine.forward_to_teredo(to_peer(teredo(port=1)), 1.0) is None
    assert engine.status()["counters"]["fast_tx"] == 2


def test_status_document() -> None:
    engine = relay()
    engine.receive_datagram(from_peer(teredo()), ("203.0.113.2", 40000), 0.0)
    engine.send_ipv6(to_peer(teredo(port=1)), 0.0)
    status = engine.status()
    assert status["peers"] == 2
    assert status["trusted_peers"] == 1
    assert status["queued_bytes"] == len(to_peer(teredo(port=1)))
    assert status["role"] == "relay"


# ---------------------------------------------------------------------------------------------
# Hooks: how a role plugs its policy in


class Recorder(PeeringEngine):
    """An engine subclass that records the hooks' calls."""

    def __init__(self) -> None:
        super().__init__(PeeringSettings(), random_bytes=counting_random(), secret=SECRET, now=0.0)
        self.calls: list[str] = []
        self.own = teredo("203.0.113.50", 3000)

    def _serves(self, destination: bytes) -> bool:
        return destination == self.own

    def _bubble_source(self, destination: bytes) -> bytes:
        return self.own

    def _on_native_destination(self, packet: bytes, destination: bytes, now: float) -> None:
        self.calls.append("native")
        peer = self.peers.create(destination, now)
        self.queue_packet(destination, peer, packet)
        self.schedule_retry(destination, peer, now + 2.0)

    def _retry_native(self, address: bytes, peer: Peer, now: float) -> None:
        self.calls.append("retry_native")
        self.fail_setup(address, peer, now)

    def _on_unverified(self, packet: TeredoPacket, source: Endpoint, now: float) -> None:
        self.calls.append("unverified")
        self.drop_unverified(packet)


def test_hooks_for_subclasses() -> None:
    engine = Recorder()
    native = encode_echo(IPv6Address(engine.own), NATIVE, 1, 1, b"x")
    engine.send_ipv6(native, 0.0)
    engine.handle_timer(2.0)
    assert engine.calls == ["native", "retry_native"]
    assert len(engine.packets_to_deliver()) == 1  # unreachable after giving up
    peer = teredo()
    engine.send_ipv6(encode_echo(IPv6Address(engine.own), IPv6Address(peer), 1, 1, b"x"), 3.0)
    [(direct, _), (_indirect, _)] = engine.datagrams_to_send()
    assert direct[8:24] == engine.own  # the client's bubbles come from its Teredo address
    inbound = encode_echo(IPv6Address(peer), IPv6Address(engine.own), 1, 1, b"y")
    engine.receive_datagram(inbound, ("203.0.113.9", 1), 3.1)
    assert engine.calls[-1] == "unverified" and engine.drops["mapping_mismatch"] == 1
    engine.receive_datagram(inbound, teredo_mapping(peer), 3.2)
    entry = engine.peers.get(peer)
    assert entry is not None and entry.trusted
    assert engine.packets_to_deliver() == [inbound]


def test_direct_bubble_reply_echoes_nonce_and_respects_rate_limit() -> None:
    engine = Recorder()
    peer_address = teredo()
    peer = engine.peers.create(peer_address, 0.0)
    to = ("203.0.113.2", 40000)
    assert engine.send_direct_bubble(engine.own, peer_address, to, 0.0, b"abcd", peer=peer)
    assert not engine.send_direct_bubble(engine.own, peer_address, to, 1.0, b"abcd", peer=peer)
    [(bubble, where)] = engine.datagrams_to_send()
    assert where == to
    assert trailer_nonce(parse_teredo_packet(bubble).trailers) == b"abcd"
    assert engine.drops == {"bubble_rate_limited": 1}


# ---------------------------------------------------------------------------------------------
# Robustness: nothing from the network or the stack raises


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=120),
    ip=st.sampled_from(["203.0.113.2", "10.0.0.1", "255.255.255.255", "0.0.0.0"]),
    port=st.integers(0, 65535),
)
def test_arbitrary_datagrams_never_raise(data: bytes, ip: str, port: int) -> None:
    engine = relay()
    engine.receive_datagram(data, (ip, port), 0.0)
    engine.accept_from_teredo(data, (ip, port), 0.0)
    engine.send_ipv6(data, 0.0)
    engine.forward_to_teredo(data, 0.0)
    engine.handle_timer(100.0)


@settings(max_examples=300, deadline=None)
@given(
    src=st.sampled_from([teredo(), NATIVE.packed, bytes(16), b"\xff" * 16]),
    dst=st.sampled_from([teredo(), NATIVE.packed, b"\xfe\x80" + bytes(14), bytes(16)]),
    next_header=st.sampled_from([58, 59, 17, 6]),
    payload=st.binary(max_size=40),
    trailer=st.binary(max_size=12),
    prefix=st.sampled_from([b"", b"\x00\x00" + bytes(6), b"\x00\x01\x00\x00" + bytes(9)]),
)
def test_structured_datagrams_never_raise(
    src: bytes, dst: bytes, next_header: int, payload: bytes, trailer: bytes, prefix: bytes
) -> None:
    engine = relay()
    packet = encode_ipv6_packet(IPv6Address(src), IPv6Address(dst), next_header, payload)
    engine.receive_datagram(prefix + packet + trailer, ("203.0.113.2", 40000), 0.0)
    engine.send_ipv6(packet, 0.0)
    engine.handle_timer(10.0)


def test_retry_heap_stays_proportional_to_the_table() -> None:
    engine = relay(max_peers=8)
    for port in range(1, 1001):  # new destinations at one instant: each evicts another
        engine.send_ipv6(to_peer(teredo(port=port)), 0.0)
        assert len(engine._retries) <= 2 * 8 + 64
    engine.datagrams_to_send()
    engine.handle_timer(2.0)  # the surviving peers still get their retries
    assert len(engine.datagrams_to_send()) == 2 * len(engine.peers) == 16


def test_the_bare_bubble_shortcut_decides_as_the_full_path() -> None:
    """A relay's shortcut for strangers' bare bubbles consumes exactly what the engine's full
    path would consume without an entry, and leaves the rest to it."""
    shortcut, full = relay(), relay()
    stranger = teredo(port=5000)
    cases = [
        (encode_bubble(IPv6Address(stranger), NATIVE), ("203.0.113.2", 5000)),  # consumed
        (encode_bubble(IPv6Address(stranger), NATIVE), ("203.0.113.2", 5001)),  # mismatch
        (encode_bubble(IPv6Address(teredo("10.0.0.1", 5000)), NATIVE), ("10.0.0.1", 5000)),
        (encode_bubble(IPv6Address(stranger), IPv6Address("fe80::1")), ("203.0.113.2", 5000)),
        (encode_bubble(NATIVE, NATIVE), ("203.0.113.2", 5000)),  # not a Teredo source
    ]
    for packet, source in cases:
        shortcut.receive_datagram(packet, source, 1.0)
        super(TeredoRelay, full).receive_datagram(packet, source, 1.0)
    assert shortcut.counters == full.counters and shortcut.drops == full.drops
    assert len(shortcut.peers) == len(full.peers) == 0


def test_malformed_and_misplaced_trailers_are_dropped_and_counted() -> None:
    """RFC 6081 §5.1.2: processing stops at a malformed trailer, the packet is still used;
    §4.2-§4.5: trailers ride on bubbles only, the Alternate Address on indirect ones only."""
    engine = relay()
    peer = teredo()
    bubble = encode_ipv6_packet(IPv6Address(peer), NATIVE, 59, b"")
    engine.receive_datagram(bubble + bytes.fromhex("01 04 dead"), ("203.0.113.2", 40000), 0.0)
    assert engine.drops.get("malformed_trailer") == 1
    alternate = bytes.fromhex("03 08 0000 cb007101 0ed5")
    engine.receive_datagram(bubble + alternate, ("203.0.113.2", 40000), 0.0)
    assert engine.drops.get("misplaced_trailer") == 1
    echo = from_peer(peer) + bytes.fromhex("01 04 deadbeef")
    engine.receive_datagram(echo, ("203.0.113.2", 40000), 0.0)
    assert engine.drops.get("misplaced_trailer") == 2
    assert engine.packets_to_deliver() == [from_peer(peer)]  # the packet itself goes on
