"""The peer table keeps a mirror (the kernel data path's peer map) in step with its established
peers, and learns from it when the kernel last heard from them."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address

from teredo.core.address import Endpoint, encode_teredo_address
from teredo.core.peering import PeeringSettings
from teredo.core.relay import TeredoRelay
from teredo.core.wire import encode_echo

NATIVE = IPv6Address("2001:db8:2::2")


class FakeMirror:
    """The kernel map as a dict; `heard` plays the kernel forwarding a peer's packets."""

    def __init__(self) -> None:
        self.peers: dict[bytes, tuple[Endpoint, float]] = {}
        self.calls = 0
        self.full = False  # a full map takes no new entry

    def set_peer(self, address: bytes, mapping: Endpoint, last_rx: float) -> bool:
        self.calls += 1
        if self.full and address not in self.peers:
            return False
        self.peers[address] = (mapping, last_rx)
        return True

    def remove_peer(self, address: bytes) -> bool:
        self.calls += 1
        return self.peers.pop(address, None) is not None

    def last_rx(self, address: bytes) -> float | None:
        self.calls += 1
        entry = self.peers.get(address)
        return entry[1] if entry else None

    def learned_peer(self, address: bytes) -> tuple[Endpoint, float] | None:
        self.calls += 1
        return self.peers.get(address)

    def last_rx_batch(self) -> Iterator[tuple[bytes, float]]:
        for address, (_, last_rx) in list(self.peers.items()):
            yield address, last_rx

    def heard(self, address: bytes, now: float) -> None:
        mapping, _ = self.peers[address]
        self.peers[address] = (mapping, now)


def counting_random() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def relay(max_peers: int = 1000) -> tuple[TeredoRelay, FakeMirror]:
    engine = TeredoRelay(
        PeeringSettings(max_peers=max_peers),
        random_bytes=counting_random(),
        secret=b"k" * 32,
        now=0.0,
    )
    mirror = FakeMirror()
    engine.peers.mirror = mirror
    return engine, mirror


def teredo(port: int, ip: str = "203.0.113.2") -> bytes:
    return encode_teredo_address(IPv4Address("198.51.100.2"), IPv4Address(ip), port).packed


def from_peer(peer: bytes) -> bytes:
    return encode_echo(IPv6Address(peer), NATIVE, 1, 1, b"x")


def to_peer(peer: bytes) -> bytes:
    return encode_echo(NATIVE, IPv6Address(peer), 1, 1, b"x")


def test_a_trusted_peer_is_published_with_its_mapping() -> None:
    engine, mirror = relay()
    peer = teredo(40000)
    engine.receive_datagram(from_peer(peer), ("203.0.113.2", 40000), 1.0)
    assert mirror.peers[peer] == (("203.0.113.2", 40000), 1.0)


def test_a_queued_peer_is_withdrawn_until_it_answers() -> None:
    engine, mirror = relay()
    peer = teredo(40000)
    engine.receive_datagram(from_peer(peer), ("203.0.113.2", 40000), 1.0)
    engine.send_ipv6(to_peer(peer), 40.0)  # stale here and in the mirror: set up again
    assert peer not in mirror.peers and engine.peers.get(peer).queue  # type: ignore[union-attr]
    engine.receive_datagram(from_peer(peer), ("203.0.113.2", 40000), 40.5)  # it answers
    assert mirror.peers[peer] == (("203.0.113.2", 40000), 40.5)


def test_the_kernel_keeping_a_peer_alive_keeps_it_valid_and_unexpired() -> None:
    engine, mirror = relay()
    peer = teredo(40000)
    engine.receive_datagram(from_peer(peer), ("203.0.113.2", 40000), 1.0)
    for second in range(2, 100):
        mirror.heard(peer, float(second))  # every packet takes the kernel's path
        engine.handle_timer(float(second))
    assert engine.peers.get(peer) is not None and peer in mirror.peers
    engine.send_ipv6(to_peer(peer), 100.0)  # a packet the kernel passed up (say, GSO)
    assert engine.datagrams_to_send() == [(to_peer(peer), ("203.0.113.2", 40000))]


def test_an_idle_peer_expires_here_and_there() -> None:
    engine, mirror = relay()
    peer = teredo(40000)
    engine.receive_datagram(from_peer(peer), ("203.0.113.2", 40000), 1.0)
    for second in range(2, 60):
        engine.handle_timer(float(second))
    assert engine.peers.get(peer) is None and peer not in mirror.peers


def test_eviction_asks_the_mirror_before_judging_a_peer_on_probation() -> None:
    engine, mirror = relay(max_peers=10)
    established = teredo(1)
    engine.receive_datagram(from_peer(established), ("203.0.113.2", 1), 1.0)
    mirror.heard(established, 1.5)  # only the kernel heard it again
    for port in range(2, 40):  # a flood of new sources, each seen once
        engine.receive_datagram(from_peer(teredo(port)), ("203.0.113.2", port), 2.0)
    assert engine.peers.get(established) is not None and established in mirror.peers
    assert len(mirror.peers) == len(engine.peers) == 10


# -- Peers the kernel learned (a relay's map trusts self-consistent sources itself) ----------


def learning_relay() -> tuple[TeredoRelay, FakeMirror]:
    engine, mirror = relay()
    engine.peers.learning = True
    return engine, mirror


def test_a_peer_the_kernel_learned_is_adopted_when_a_packet_for_it_reaches_the_engine() -> None:
    """The packet leaves at once to the learned mapping, as the kernel would have sent it: no
    bubble, no queue; the peer is as fresh as the kernel last heard from it."""
    engine, mirror = learning_relay()
    peer = teredo(40000)
    mirror.peers[peer] = (("203.0.113.2", 40000), 5.0)
    packet = to_peer(peer)
    engine.send_ipv6(packet, 10.0)
    assert engine.datagrams_to_send() == [(packet, ("203.0.113.2", 40000))]
    assert engine.status()["counters"]["peers_adopted"] == 1
    entry = engine.peers.get(peer)
    assert entry is not None and entry.last_rx == 5.0 and entry.is_valid(10.0)


def test_a_stale_or_unlearned_peer_is_set_up_as_any_other() -> None:
    for learning, heard in ((True, 0.0), (False, 5.0)):
        engine, mirror = relay()
        engine.peers.learning = learning
        peer = teredo(40000)
        mirror.peers[peer] = (("203.0.113.2", 40000), heard)
        packet = to_peer(peer)
        engine.send_ipv6(packet, 31.0)  # heard from 31 s ago, or not a learning map
        sent = [datagram for datagram, _ in engine.datagrams_to_send()]
        assert sent and packet not in sent  # bubbles: the packet waits for the answer
        assert "peers_adopted" not in engine.status()["counters"]


def test_the_learned_sweep_removes_idle_learned_peers_only() -> None:
    """A pass over the map, in slices: an entry only the map holds goes once idle; one the
    table holds is the table's own sweep's business, however old it looks in the map."""
    engine, mirror = learning_relay()
    table = engine.peers
    idle, fresh, held = teredo(1), teredo(2), teredo(3)
    mirror.peers[idle] = (("203.0.113.2", 1), 1.0)
    mirror.peers[fresh] = (("203.0.113.2", 2), 40.0)
    engine.receive_datagram(from_peer(held), ("203.0.113.2", 3), 1.0)  # the table's own
    assert held in table and held in mirror.peers
    now = 1.0 + table.idle_timeout + 10
    mirror.peers[fresh] = (("203.0.113.2", 2), now - 1)
    for _ in range(3):
        table.sweep_learned(now, budget=1)
    assert table.learned == 0  # the pass has not ended yet: no count until it has
    table.sweep_learned(now, budget=1)
    assert set(mirror.peers) == {fresh, held}
    assert (table.learned, table.learned_expired) == (1, 1)
    assert engine.status()["learned_peers"] == 1


def test_the_engine_sweeps_the_learned_peers_on_its_timer() -> None:
    engine, mirror = learning_relay()
    for port in range(1, 101):
        mirror.peers[teredo(port)] = (("203.0.113.2", port), 0.0)
    now = 0.0
    while now < 100.0 and mirror.peers:
        now = max(now, engine.get_timer() or now)
        engine.handle_timer(now)
        now += 0.5
    assert not mirror.peers and engine.status()["learned_expired"] == 100


def test_an_established_peer_at_rest_is_handed_over_to_a_learning_map_and_back() -> None:
    """A peer the relay set up itself, once at rest, is left to the map (which holds all of
    it); a packet for it later is sent at once (adopted), and a table whose map does not
    learn keeps its peers."""
    for learning in (True, False):
        engine, mirror = relay()
        engine.peers.learning = learning
        peer, mapping = teredo(40000), ("203.0.113.2", 40000)
        engine.receive_datagram(from_peer(peer), mapping, 1.0)  # rx case 3: trusted
        assert engine.packets_to_deliver() and mirror.peers[peer][0] == mapping
        now = 1.0
        while now < 40.0:
            now += 1.0
            mirror.heard(peer, now)  # the kernel forwards its packets meanwhile
            engine.handle_timer(now)
        counters = engine.status()["counters"]
        if not learning:
            assert peer in engine.peers and "peers_handed_to_kernel" not in counters
            continue
        assert peer not in engine.peers and mirror.peers[peer] == (mapping, now)
        assert counters["peers_handed_to_kernel"] == 1
        packet = to_peer(peer)
        engine.send_ipv6(packet, now + 0.5)
        assert engine.datagrams_to_send() == [(packet, mapping)]
        assert peer in engine.peers


def test_a_peer_the_map_does_not_hold_stays_in_the_table() -> None:
    engine, mirror = learning_relay()
    mirror.full = True
    peer = teredo(40000)
    engine.receive_datagram(from_peer(peer), ("203.0.113.2", 40000), 1.0)
    assert peer not in mirror.peers
    for now in range(2, 20):
        engine.handle_timer(float(now))
    assert peer in engine.peers
