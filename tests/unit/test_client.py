"""The client core over tests/fakenet.py: this project's server and relay cores around it.

Flows: qualification behind each NAT, client <-> client through the server (bubbles, RFC 6081
nonces for symmetric NATs), client <-> native host through a relay (the echo test with a nonce,
both directions), local discovery, hairpinning, spoofing and floods.
"""

from __future__ import annotations

import itertools
import os
import tracemalloc
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from fakenet import (
    FULLCONE,
    NAT_KINDS,
    PORT_RESTRICTED,
    RESTRICTED,
    SYMMETRIC,
    ClientNode,
    FakeNetwork,
    Hop,
    Nat,
    NativeHost,
    RelayNode,
    ServerNode,
)
from teredo.core.address import TEREDO_PORT, encode_teredo_address, parse_teredo_address
from teredo.core.client import ClientSettings, TeredoClient
from teredo.core.errors import ParseError
from teredo.core.extensions import Extensions
from teredo.core.peering import PeeringSettings
from teredo.core.qualification import (
    AddressChanged,
    NatBehaviour,
    Offline,
    QualificationState,
    Qualified,
    ServerPair,
)
from teredo.core.random_port import MAX_RANDOM_PORTS, predicted_port
from teredo.core.relay import TeredoRelay
from teredo.core.server import ServerSettings, TeredoServer
from teredo.core.trailers import (
    TrailerType,
    alternate_addresses,
    nonce_trailer,
    trailer_nonce,
)
from teredo.core.wire import (
    ALL_NODES,
    Authentication,
    OriginIndication,
    TeredoPacket,
    encode_bubble,
    encode_echo,
    encode_teredo_packet,
    is_bubble,
    is_echo,
    parse_echo,
    parse_teredo_packet,
)

PRIMARY = IPv4Address("198.51.100.2")
SECONDARY = IPv4Address("198.51.100.3")
SERVER = ("198.51.100.2", 3544)
RELAY = ("198.51.100.18", 3545)
NATIVE = "2001:db8:2::2"
ALL_EXTENSIONS = Extensions()


def counting_random() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(8, "big")[-n:].rjust(n, b"\x00")


def make_client(
    now: float = 0.0,
    local_discovery: bool = False,
    extensions: Extensions = ALL_EXTENSIONS,
    **kwargs: object,
) -> TeredoClient:
    settings = ClientSettings(
        servers=(ServerPair(PRIMARY, SECONDARY),),
        local_discovery=local_discovery,
        extensions=extensions,
    )
    return TeredoClient(
        settings,
        random_bytes=os.urandom,
        secret=os.urandom(32),
        now=now,
        **kwargs,  # type: ignore[arg-type]
    )


class World:
    """Server, relay, native host; clients added behind NATs. Owns the clock."""

    def __init__(self) -> None:
        self.net = FakeNetwork()
        self.now = 0.0
        self.server = TeredoServer(ServerSettings(PRIMARY, SECONDARY))
        ServerNode(self.server, self.net)
        self.relay = TeredoRelay(
            PeeringSettings(), random_bytes=os.urandom, secret=os.urandom(32), now=0.0
        )
        self.net.attach(RelayNode(self.relay, RELAY, self.net))
        self.native: NativeHost = self.net.add_native_host(NATIVE)

    def add_client(
        self,
        private: tuple[str, int],
        nat: Nat | None,
        local_discovery: bool = False,
        local_networks: tuple[IPv4Network, ...] = (),
        extensions: Extensions = ALL_EXTENSIONS,
    ) -> tuple[TeredoClient, ClientNode]:

        client = make_client(
            self.now,
            local_discovery=local_discovery,
            extensions=extensions,
            local=private,
            local_networks=local_networks,
        )
        node = ClientNode(client, private)
        self.net.attach(node, nat)
        client.start(self.now)
        return client, node

    def run(self, seconds: float) -> None:
        self.now = self.net.advance(self.now, self.now + seconds)

    def run_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        end = self.now + timeout
        while self.now < end and not condition():
            self.run(0.1)
        return condition()


def ping(source: TeredoClient, destination: str | IPv6Address, seq: int = 1) -> bytes:
    assert source.address is not None
    return encode_echo(source.address, IPv6Address(destination), 7, seq, b"hello teredo")


def echo_requests(packets: list[bytes]) -> list[bytes]:
    return [p for p in packets if is_echo(p) and parse_echo(p).is_request]


def echo_replies(packets: list[bytes]) -> list[bytes]:
    return [p for p in packets if is_echo(p) and not parse_echo(p).is_request]


def answer_pings(world: World, client: TeredoClient, node: ClientNode) -> None:
    """Play the host stack: answer echo requests the client delivered."""
    for packet in echo_requests(node.delivered):
        echo = parse_echo(packet)
        client.send_ipv6(
            encode_echo(
                echo.destination,
                echo.source,
                echo.identifier,
                echo.sequence,
                echo.data,
                is_request=False,
            ),
            world.now,
        )
    node.delivered.clear()


# -- qualification ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NAT_KINDS)
def test_client_qualifies_behind_each_nat(kind: str) -> None:
    world = World()
    client, _ = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", kind))
    world.run(1.0)
    assert client.state is QualificationState.QUALIFIED
    assert client.address is not None
    decoded = parse_teredo_address(client.address)
    assert decoded.server == PRIMARY and decoded.mapped_address == IPv4Address("203.0.113.2")
    expected = NatBehaviour.SYMMETRIC if kind == SYMMETRIC else NatBehaviour.RESTRICTED
    assert client.qualifier.nat is expected
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    assert isinstance(events[0], Qualified)
    status = client.status()
    assert status["state"] == "qualified" and status["address"] == str(client.address)
    assert status["nat"] == expected.value


def test_packets_before_qualification_are_dropped() -> None:
    client = make_client()
    client.start(0.0)
    client.send_ipv6(encode_echo(IPv6Address("2001::1"), IPv6Address(NATIVE), 1, 1, b"x"), 0.1)
    bubble = encode_bubble(IPv6Address("2001:0:c633:6402::1"), IPv6Address("2001::2"))
    client.receive_datagram(bubble, ("203.0.113.9", 4000), 0.1)
    assert client.drops["not_qualified"] == 2
    assert client.packets_to_deliver() == []


def test_offline_and_back_withdraws_and_restores_the_address() -> None:
    world = World()
    client, _ = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", PORT_RESTRICTED))
    world.run(1.0)
    address = client.address
    world.net.drop = lambda hop: hop.destination == SERVER or hop.source == SERVER
    assert world.run_until(lambda: client.state is QualificationState.OFFLINE, 60.0)
    assert client.address is None
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    assert any(isinstance(e, Offline) and e.old == address for e in events)
    world.net.drop = None
    assert world.run_until(lambda: client.state is QualificationState.QUALIFIED, 30.0)
    assert client.address == address


def test_mapping_change_changes_the_address() -> None:
    world = World()
    nat = Nat("203.0.113.2", PORT_RESTRICTED)
    client, _ = world.add_client(("10.1.0.2", 5000), nat)
    world.run(1.0)
    old = client.address
    nat.reset()
    world.run(31.0)
    assert client.address is not None and client.address != old
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    assert any(isinstance(e, AddressChanged) and e.old == old for e in events)


# -- client <-> native host through the relay -------------------------------------------------


@pytest.mark.parametrize("kind", NAT_KINDS)
def test_client_pings_native_host_via_echo_test(kind: str) -> None:
    world = World()
    client, node = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", kind))
    world.run(1.0)
    client.send_ipv6(ping(client, NATIVE), world.now)
    world.run(3.0)
    # The echo test went via the server with a 64-bit nonce; the relay answered it, became
    # trusted for the native peer and the queued ping went through it.
    assert client.counters["echo_tests_sent"] >= 1
    assert client.counters["echo_tests_succeeded"] == 1
    peer = client.peers.get(IPv6Address(NATIVE).packed)
    assert peer is not None and peer.trusted and peer.mapped == RELAY
    requests = echo_requests(world.native.received)
    assert any(parse_echo(p).data == b"hello teredo" for p in requests)
    replies = echo_replies(node.delivered)
    assert [parse_echo(p).data for p in replies] == [b"hello teredo"]
    # Established: the next ping takes the fast path straight to the relay.
    second = ping(client, NATIVE, seq=2)
    assert client.forward_to_teredo(second, world.now) == RELAY


@pytest.mark.parametrize("kind", [FULLCONE, RESTRICTED, PORT_RESTRICTED, SYMMETRIC])
def test_native_host_pings_client(kind: str) -> None:
    world = World()
    client, node = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", kind))
    world.run(1.0)
    assert client.address is not None
    world.native.send(
        encode_echo(IPv6Address(NATIVE), client.address, 9, 1, b"from native"), world.now
    )
    world.run(3.0)
    # Relay -> server indirect bubble -> client direct bubble -> relay sends the packet; the
    # client holds it, verifies the relay with its own echo test, then delivers it.
    requests = echo_requests(node.delivered)
    assert [parse_echo(p).data for p in requests] == [b"from native"]
    assert client.counters["held_for_echo_test"] == 1
    answer_pings(world, client, node)
    world.run(1.0)
    assert any(parse_echo(p).data == b"from native" for p in echo_replies(world.native.received))


def test_relay_is_not_trusted_without_our_nonce() -> None:
    """RFC 4380 §5.2.9, §7.2.2: a packet from a native source through an unknown relay is not
    delivered; an echo reply with a wrong nonce does not make the relay trusted."""
    world = World()
    client, node = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", FULLCONE))
    world.run(1.0)
    assert client.address is not None
    world.net.drop = lambda hop: hop.destination == SERVER and hop.source[0] == "203.0.113.2"
    rogue = ("203.0.113.66", 3545)
    spoofed = encode_echo(IPv6Address(NATIVE), client.address, 1, 1, b"spoof", is_request=False)
    client.receive_datagram(spoofed, rogue, world.now)
    forged = encode_echo(IPv6Address(NATIVE), client.address, 1, 1, b"\x00" * 8, is_request=False)
    client.receive_datagram(forged, rogue, world.now)
    world.run(10.0)
    peer = client.peers.get(IPv6Address(NATIVE).packed)
    assert peer is not None and not peer.trusted
    assert node.delivered == []
    assert client.counters.get("echo_tests_succeeded", 0) == 0


def test_native_destination_unreachable_after_four_echo_tests() -> None:
    world = World()
    client, node = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", FULLCONE))
    world.run(1.0)
    world.native.answer_pings = False
    client.send_ipv6(ping(client, NATIVE), world.now)
    world.run(12.0)
    assert client.counters["echo_tests_sent"] == 4  # RFC 4380 §5.2.9: 2 s, 3 repeats
    assert client.drops["peer_unreachable"] == 1
    errors = [p for p in node.delivered if p[6] == 58 and p[40] == 1]
    assert len(errors) == 1  # ICMPv6 destination unreachable to the stack


# -- client <-> client through the server -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind_a", "kind_b"),
    [
        (PORT_RESTRICTED, PORT_RESTRICTED),
        (FULLCONE, PORT_RESTRICTED),
        (RESTRICTED, FULLCONE),
        (SYMMETRIC, FULLCONE),  # RFC 6081 §5.2 (symmetric NAT support): the nonce trailer
        (SYMMETRIC, RESTRICTED),
        (FULLCONE, SYMMETRIC),
    ],
)
def test_client_to_client(kind_a: str, kind_b: str) -> None:
    world = World()
    a, node_a = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", kind_a))
    b, node_b = world.add_client(("10.2.0.2", 5000), Nat("203.0.113.18", kind_b))
    world.run(1.0)
    assert a.address is not None and b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_b.delivered)), 10.0)
    answer_pings(world, b, node_b)
    assert world.run_until(lambda: bool(echo_replies(node_a.delivered)), 10.0)
    # And the other way round, once set up.
    node_a.delivered.clear()
    b.send_ipv6(ping(b, a.address, seq=5), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_a.delivered)), 10.0)


def test_a_symmetric_peer_is_answered_at_its_learned_mapping_at_once() -> None:
    """RFC 6081 §6.1: B learns A's mapping from A's direct bubble (packet 5), then answers at
    it (packet 7). The RFC's B waits for A's next indirect bubble, 2 s later, and B's 2 s reply
    spacing could then refuse it (a lab test lost a round so, once in six); ours answers at
    once, so A's packets flow before A's bubbles would be repeated. (A random port-symmetric
    NAT: behind a sequential one, RFC 6081 §5.5 reaches B another way.)"""
    world = World()
    a, _ = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", SYMMETRIC, random_ports=True))
    b, node_b = world.add_client(("10.2.0.2", 5000), Nat("203.0.113.18", RESTRICTED))
    world.run(1.0)
    assert a.address is not None and b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_b.delivered)), 1.5)
    assert b.counters["mismatched_mapping_accepted"] == 1
    assert b.drops.get("bubble_reply_rate_limited", 0) == 0


def test_symmetric_to_port_restricted_fails_as_rfc_6081_says() -> None:
    """Figure 1: a random port-symmetric NAT toward a port-restricted one is "No"."""
    world = World()
    a, _ = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", SYMMETRIC, random_ports=True))
    b, node_b = world.add_client(("10.2.0.2", 5000), Nat("203.0.113.18", PORT_RESTRICTED))
    world.run(1.0)
    assert b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    world.run(12.0)
    assert echo_requests(node_b.delivered) == []


def test_indirect_bubble_gets_a_direct_bubble_with_its_nonce() -> None:
    """Answer to the origin with a direct bubble, echoing the nonce (RFC 6081 §5.2.4.2). RFC
    4380 §5.2.3 literally asks for a connectivity test here; the bubble is what peers do."""
    world = World()
    client, _ = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    assert client.address is not None
    peer_address = encode_teredo_address(PRIMARY, IPv4Address("203.0.113.99"), 6000)
    indirect = encode_teredo_packet(
        TeredoPacket(
            ipv6=encode_bubble(peer_address, client.address),
            origin=OriginIndication(IPv4Address("203.0.113.99"), 6001),
            trailers=(nonce_trailer(b"\xde\xad\xbe\xef"),),
        )
    )
    client.receive_datagram(indirect, SERVER, world.now)
    out = client.datagrams_to_send()
    # The direct answer, and (RFC 6081 §6.1 packet 4) our own indirect bubble with our nonce.
    assert [d for _, d in out] == [("203.0.113.99", 6001), SERVER]
    indirect_out = parse_teredo_packet(out[1][0])
    sent_nonce = trailer_nonce(indirect_out.trailers)
    peer_entry = client.peers.get(peer_address.packed)
    assert peer_entry is not None and sent_nonce == peer_entry.nonce_sent is not None
    data = out[0][0]
    packet = parse_teredo_packet(data)
    assert packet.ipv6[8:24] == client.address.packed
    assert packet.ipv6[24:40] == peer_address.packed
    assert trailer_nonce(packet.trailers) == b"\xde\xad\xbe\xef"
    # Spaced: a second indirect bubble within 2 s gets no answer.
    client.receive_datagram(indirect, SERVER, world.now + 1.0)
    assert client.datagrams_to_send() == []
    assert client.drops["bubble_reply_rate_limited"] == 1


def test_indirect_bubble_from_someone_not_the_server_is_dropped() -> None:
    world = World()
    client, _ = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    assert client.address is not None
    indirect = encode_teredo_packet(
        TeredoPacket(
            ipv6=encode_bubble(IPv6Address("2001:0:c633:6402::1"), client.address),
            origin=OriginIndication(IPv4Address("203.0.113.99"), 6001),
        )
    )
    client.receive_datagram(indirect, ("198.51.100.77", 3544), world.now)
    assert client.datagrams_to_send() == []
    assert client.drops["unexpected_origin_indication"] == 1


def test_spoofed_teredo_source_is_dropped() -> None:
    world = World()
    client, node = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    assert client.address is not None
    other = encode_teredo_address(PRIMARY, IPv4Address("203.0.113.50"), 7000)
    packet = encode_echo(other, client.address, 1, 1, b"spoof")
    client.receive_datagram(packet, ("203.0.113.51", 7000), world.now)
    assert node.delivered == [] and client.packets_to_deliver() == []
    assert client.drops["mapping_mismatch"] == 1


def test_link_local_source_never_reaches_the_stack() -> None:
    world = World()
    client, _ = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    assert client.address is not None
    fake = encode_echo(IPv6Address("fe80::1"), client.address, 1, 1, b"x")
    client.receive_datagram(fake, ("203.0.113.51", 7000), world.now)
    assert client.drops["link_local_source"] == 1
    assert client.packets_to_deliver() == []


def test_foreign_source_from_the_stack_is_dropped() -> None:
    world = World()
    client, _ = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    client.send_ipv6(encode_echo(IPv6Address("2001:db8::9"), IPv6Address(NATIVE), 1, 1, b""), 1.0)
    assert client.drops["foreign_source"] == 1


def test_fast_and_full_paths_agree_on_a_foreign_source() -> None:
    """Toward a trusted, valid peer the fast path forwards only our own packets, like the full
    path: a foreign source gets None there, then is dropped by `send_ipv6`, creating nothing."""
    world = World()
    client, _ = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    assert client.address is not None
    peer = encode_teredo_address(PRIMARY, IPv4Address("203.0.113.50"), 7000)
    client.trust_peer(peer.packed, ("203.0.113.50", 7000), world.now)
    ours = encode_echo(client.address, peer, 1, 1, b"ours")
    foreign = encode_echo(IPv6Address("2001:db8::9"), peer, 1, 1, b"not ours")
    assert client.forward_to_teredo(ours, world.now) == ("203.0.113.50", 7000)
    assert client.forward_to_teredo(foreign, world.now) is None
    peers = len(client.peers)
    client.send_ipv6(foreign, world.now)
    assert client.drops["foreign_source"] == 1 and client.datagrams_to_send() == []
    assert len(client.peers) == peers


# -- same NAT: local discovery and hairpinning --------------------------------------------------


def test_local_discovery_connects_peers_behind_a_non_hairpinning_nat() -> None:
    world = World()
    nat = Nat("203.0.113.2", PORT_RESTRICTED, hairpin=False)
    lan = (IPv4Network("10.1.0.0/24"),)
    a, node_a = world.add_client(("10.1.0.2", 5000), nat, True, lan)
    b, node_b = world.add_client(("10.1.0.3", 5001), nat, True, lan)
    world.run(1.0)
    assert a.address is not None and b.address is not None
    assert a.counters["discovery_sent"] >= 1 and b.counters["discovery_received"] >= 1
    peer = b.peers.get(a.address.packed)
    assert peer is not None and peer.local == ("10.1.0.2", 5000)
    a.send_ipv6(ping(a, b.address), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_b.delivered)), 10.0)
    answer_pings(world, b, node_b)
    assert world.run_until(lambda: bool(echo_replies(node_a.delivered)), 10.0)
    peer = a.peers.get(b.address.packed)
    assert peer is not None and peer.mapped == ("10.1.0.3", 5001)


def test_without_discovery_or_hairpinning_same_nat_peers_cannot_meet() -> None:
    world = World()
    nat = Nat("203.0.113.2", PORT_RESTRICTED, hairpin=False)
    off = Extensions(hairpinning=False)
    a, _ = world.add_client(("10.1.0.2", 5000), nat, extensions=off)
    b, node_b = world.add_client(("10.1.0.3", 5001), nat, extensions=off)
    world.run(1.0)
    assert b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    world.run(10.0)
    assert echo_requests(node_b.delivered) == []


def test_hairpinning_nat_connects_same_nat_peers() -> None:
    world = World()
    nat = Nat("203.0.113.2", PORT_RESTRICTED, hairpin=True)
    a, node_a = world.add_client(("10.1.0.2", 5000), nat)
    b, node_b = world.add_client(("10.1.0.3", 5001), nat)
    world.run(1.0)
    assert a.address is not None and b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_b.delivered)), 10.0)
    answer_pings(world, b, node_b)
    assert world.run_until(lambda: bool(echo_replies(node_a.delivered)), 10.0)


def test_discovery_filters() -> None:
    world = World()
    client, _ = world.add_client(
        ("10.1.0.2", 5000), Nat("203.0.113.2", PORT_RESTRICTED), True, (IPv4Network("10.1.0.0/24"),)
    )
    world.run(1.0)
    assert client.address is not None and client.qualifier.mapped is not None
    mapped = IPv4Address(client.qualifier.mapped[0])
    same_nat = encode_teredo_address(PRIMARY, mapped, 7000)
    other_nat = encode_teredo_address(PRIMARY, IPv4Address("203.0.113.77"), 7000)
    good = encode_bubble(same_nat, ALL_NODES, hop_limit=1)
    client.receive_discovery(good, ("10.9.9.9", 7000), world.now)  # not on our subnet
    client.receive_discovery(encode_bubble(other_nat, ALL_NODES), ("10.1.0.9", 7000), world.now)
    client.receive_discovery(encode_bubble(same_nat, client.address), ("10.1.0.9", 7000), world.now)
    not_teredo = encode_bubble(IPv6Address("2001:db8::1"), ALL_NODES)
    client.receive_discovery(not_teredo, ("10.1.0.9", 7000), world.now)
    assert client.drops["discovery_not_local"] == 1
    assert client.drops["discovery_other_nat"] == 1
    assert client.drops["bad_discovery_bubble"] == 1
    assert client.drops["discovery_not_teredo"] == 1
    client.receive_discovery(good, ("10.1.0.9", 7000), world.now)
    peer = client.peers.get(same_nat.packed)
    assert peer is not None and not peer.trusted and peer.local == ("10.1.0.9", 7000)


def test_discovery_is_periodic_between_200_and_300_seconds() -> None:
    world = World()
    client, _ = world.add_client(("203.0.113.40", 5000), None, True)
    world.run(1.0)
    sent = client.counters["discovery_sent"]
    world.run(199.0)
    assert client.counters["discovery_sent"] == sent
    world.run(101.0)
    assert client.counters["discovery_sent"] == sent + 1


# -- bounded memory under floods ----------------------------------------------------------------


def test_flood_of_unverified_native_packets_is_bounded() -> None:
    world = World()
    client, node = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    assert client.address is not None
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(3000):  # more than MaxPeers (1024) and than the held-bytes cap
        source = IPv6Address(int(IPv6Address("2001:db8:77::")) + i)
        packet = encode_echo(source, client.address, 1, 1, b"x" * 1000)
        client.receive_datagram(packet, ("203.0.113.66", 3545), world.now)
        client.datagrams_to_send()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(client.peers) <= client.peers.max_peers
    assert client._held_bytes <= 256 * 1024
    assert grown < 8 * 1024 * 1024
    assert node.delivered == []


def test_held_packets_leave_with_their_evicted_peer() -> None:
    """rx case 6: packets held for an echo test are dropped when their peer is evicted, so the
    held-bytes budget is not eaten by entries that can never be released, and a new native
    peer's first packet is held after a flood of others (it was dropped as held_queue_full)."""
    world = World()
    client, _ = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    address = client.address
    assert address is not None

    def from_native(i: int) -> bytes:
        source = IPv6Address(int(IPv6Address("2001:db8:77::")) + i)
        return encode_echo(source, address, 1, 1, b"x" * 1000)

    for i in range(3000):  # more than MaxPeers (1024): most entries are evicted
        client.receive_datagram(from_native(i), ("203.0.113.66", 3545), world.now)
        client.datagrams_to_send()
    held = sum(len(p) for packets in client._held.values() for p, _ in packets)
    assert client._held_bytes == held
    assert set(client._held) <= {address for address, _ in client.peers.items()}
    before = client.drops.get("held_queue_full", 0)
    client.receive_datagram(from_native(99999), ("203.0.113.66", 3545), world.now)
    assert client.drops.get("held_queue_full", 0) == before
    assert client.counters["held_for_echo_test"] > client.drops["held_evicted"] > 0
    world.run(12.0)  # every echo test fails (nobody answers): nothing stays held
    assert client._held_bytes == 0 and not client._held


def test_flood_of_indirect_bubbles_is_bounded() -> None:
    world = World()
    client, _ = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    assert client.address is not None
    for i in range(5000):
        peer = encode_teredo_address(PRIMARY, IPv4Address("203.0.113.99"), 1000 + i)
        indirect = encode_teredo_packet(
            TeredoPacket(
                ipv6=encode_bubble(peer, client.address),
                origin=OriginIndication(IPv4Address("203.0.113.99"), 1000 + i),
            )
        )
        client.receive_datagram(indirect, SERVER, world.now)
        client.datagrams_to_send()
    assert len(client.peers) <= client.peers.max_peers


def test_garbage_never_raises() -> None:
    client = make_client()
    client.start(0.0)
    rng = itertools.count()
    for size in range(0, 200, 3):
        data = bytes((next(rng) * 37) & 0xFF for _ in range(size))
        client.receive_datagram(data, SERVER, 0.1)
        client.receive_datagram(b"\x60" + data, ("203.0.113.1", 1), 0.1)
        client.receive_discovery(data, ("10.0.0.1", 1), 0.1)
        client.send_ipv6(data, 0.1)
    auth = encode_teredo_packet(
        TeredoPacket(ipv6=encode_bubble(IPv6Address("fe80::1"), ALL_NODES),
                     authentication=Authentication(bytes(8))),
    )  # fmt: skip
    client.receive_datagram(auth, SERVER, 0.2)


def test_echo_test_goes_via_our_server_with_a_64_bit_nonce() -> None:
    world = World()
    client, _ = world.add_client(("203.0.113.40", 5000), None)
    world.run(1.0)
    world.net.drop = lambda hop: True
    client.send_ipv6(ping(client, NATIVE), world.now)
    out = client.datagrams_to_send()
    assert len(out) == 1 and out[0][1] == SERVER
    echo = parse_echo(out[0][0])
    assert echo is not None and echo.is_request and len(echo.data) == 8
    assert echo.source == client.address and echo.destination == IPv6Address(NATIVE)
    assert out[0][0][40 + 8 :] == echo.data  # the nonce is the whole payload (fits 88 bytes)
    assert SERVER[1] == TEREDO_PORT


# -- RFC 6081 §5.6: the hairpinning extension ---------------------------------------------------


@pytest.mark.parametrize("hairpin", [False, True])
@pytest.mark.parametrize("kind", [PORT_RESTRICTED, SYMMETRIC])
def test_hairpinning_extension_connects_peers_behind_one_nat(kind: str, hairpin: bool) -> None:
    """Two clients behind one NAT, without local discovery: the Alternate Address trailer of
    their indirect bubbles names their local endpoints, and they meet there whether or not the
    NAT hairpins (RFC 6081 §3.5, §5.6)."""
    world = World()
    nat = Nat("203.0.113.2", kind, hairpin=hairpin)
    a, node_a = world.add_client(("10.1.0.2", 5000), nat)
    b, node_b = world.add_client(("10.1.0.3", 5001), nat)
    world.run(1.0)
    assert a.address is not None and b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_b.delivered)), 10.0)
    answer_pings(world, b, node_b)
    assert world.run_until(lambda: bool(echo_replies(node_a.delivered)), 10.0)
    node_a.delivered.clear()
    b.send_ipv6(ping(b, a.address, seq=7), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_a.delivered)), 10.0)
    assert a.counters["alternate_addresses_sent"] >= 1
    if not hairpin:
        peer = a.peers.get(b.address.packed)
        assert peer is not None and peer.mapped == ("10.1.0.3", 5001)
        assert a.status()["peers_hairpinning"] == 1
        assert a.peer_extensions(b.address.packed) == ["hairpinning"]


def test_alternate_address_trailer_names_the_local_endpoint() -> None:
    world = World()
    a, _ = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", PORT_RESTRICTED))
    b, _ = world.add_client(("10.2.0.2", 5000), Nat("203.0.113.18", PORT_RESTRICTED))
    world.run(1.0)
    assert a.address is not None and b.address is not None
    world.net.log.clear()
    a.send_ipv6(ping(a, b.address), world.now)
    world.net.run(world.now)
    indirect = [h.payload for h in world.net.log if h.destination == SERVER]
    assert indirect, "an indirect bubble through B's server"
    trailers = parse_teredo_packet(indirect[0]).trailers
    assert [t.type for t in trailers] == [TrailerType.NONCE, TrailerType.ALTERNATE_ADDRESS]
    assert alternate_addresses(trailers[1]) == (("10.1.0.2", 5000),)


def test_without_the_extension_no_alternate_address_is_sent() -> None:
    world = World()
    off = Extensions(hairpinning=False)
    a, _ = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", PORT_RESTRICTED), extensions=off)
    b, _ = world.add_client(("10.2.0.2", 5000), Nat("203.0.113.18", PORT_RESTRICTED))
    world.run(1.0)
    assert b.address is not None
    world.net.log.clear()
    a.send_ipv6(ping(a, b.address), world.now)
    world.net.run(world.now)
    indirect = [h.payload for h in world.net.log if h.destination == SERVER]
    assert [t.type for t in parse_teredo_packet(indirect[0]).trailers] == [TrailerType.NONCE]


# -- RFC 6081 §5.7: server load reduction ----------------------------------------------------


def established_pair(
    world: World, extensions: Extensions = ALL_EXTENSIONS
) -> tuple[TeredoClient, ClientNode, TeredoClient, ClientNode]:
    a, node_a = world.add_client(
        ("10.1.0.2", 5000), Nat("203.0.113.2", RESTRICTED), extensions=extensions
    )
    b, node_b = world.add_client(
        ("10.2.0.2", 5000), Nat("203.0.113.18", RESTRICTED), extensions=extensions
    )
    world.run(1.0)
    assert a.address is not None and b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_b.delivered)), 10.0)
    return a, node_a, b, node_b


def test_an_idle_peer_is_revalidated_without_its_server() -> None:
    """After 30 s of silence, a packet for the peer sends a direct bubble with a
    TeredoDiscoverySolicitation, the peer answers with an advertisement, the packet leaves:
    nothing through the server (RFC 6081 §3.6, §5.7)."""
    world = World()
    a, _, b, node_b = established_pair(world)
    assert b.address is not None
    world.run(40.0)  # the peer is no longer valid (RFC 4380 §5.2.4: 30 s)
    node_b.delivered.clear()
    world.net.log.clear()
    a.send_ipv6(ping(a, b.address, seq=9), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_b.delivered)), 5.0)
    to_server = [h for h in world.net.log if h.destination == SERVER and is_bubble_hop(h)]
    assert to_server == []
    assert a.counters["solicitations_sent"] == 1
    assert b.counters["advertisements_sent"] == 1
    assert a.counters["advertisements_received"] == 1
    assert a.status()["peers_server_load_reduction"] == 1


def test_three_unanswered_solicitations_fall_back_to_an_indirect_bubble() -> None:
    world = World()
    a, _, b, _ = established_pair(world)
    assert b.address is not None
    world.run(40.0)
    b_mapped = a.peers.get(b.address.packed)
    assert b_mapped is not None and b_mapped.mapped is not None
    lost = b_mapped.mapped
    world.net.drop = lambda hop: hop.destination == lost  # the peer's mapping went away
    world.net.log.clear()
    a.send_ipv6(ping(a, b.address, seq=9), world.now)
    world.run(7.0)
    assert a.counters["solicitations_sent"] == 3
    assert a.counters["solicitations_unanswered"] == 1
    assert any(h.destination == SERVER and is_bubble_hop(h) for h in world.net.log)


def test_without_server_load_reduction_the_server_is_asked_at_once() -> None:
    world = World()
    off = Extensions(server_load_reduction=False)
    a, _, b, _ = established_pair(world, off)
    assert b.address is not None
    world.run(40.0)
    world.net.log.clear()
    a.send_ipv6(ping(a, b.address, seq=9), world.now)
    world.net.run(world.now)
    assert a.counters.get("solicitations_sent", 0) == 0
    assert any(h.destination == SERVER and is_bubble_hop(h) for h in world.net.log)


def is_bubble_hop(hop: Hop) -> bool:
    try:
        return is_bubble(parse_teredo_packet(hop.payload).ipv6)
    except ParseError:
        return False


# -- status (netsh interface teredo show state) ---------------------------------------------


def test_status_shows_state_nat_behaviours_and_mapping() -> None:
    world = World()
    client = make_client(world.now, local=("10.1.0.2", 5000))
    assert client.status(world.now)["client_state"] == "offline"
    node = ClientNode(client, ("10.1.0.2", 5000))
    world.net.attach(node, Nat("203.0.113.2", SYMMETRIC, port_preserving=True))
    client.start(world.now)
    assert client.status(world.now)["client_state"] == "probe"
    world.run(1.0)
    status = client.status(world.now)
    assert status["client_state"] == "dormant"  # qualified, no peer
    assert status["nat"] == "symmetric"
    assert status["nat_behaviours"] == ["port-preserving"]
    assert status["local_mapping"] == "10.1.0.2:5000"
    assert status["extensions"]["hairpinning"] is True
    client.set_upnp_mapping(("203.0.113.2", 5000))
    status = client.status(world.now)
    assert status["nat_behaviours"] == ["upnp", "port-preserving"]
    assert client.upnp_mapped is None  # the mapping the server saw: a single NAT (§5.3.3)


# -- RFC 6081 §5.3: UPnP-enabled symmetric NAT ------------------------------------------------


def upnp_client(
    world: World,
    private: tuple[str, int],
    nat: Nat,
    extensions: Extensions = ALL_EXTENSIONS,
    *,
    replies: bool = True,
) -> tuple[TeredoClient, ClientNode]:
    """A client whose NAT maps its port by UPnP, as the daemon does before it qualifies."""
    client, node = world.add_client(private, nat, extensions=extensions)
    if extensions.upnp:
        client.set_upnp_mapping(nat.add_port_mapping(private, private[1], replies=replies))
    return client, node


@pytest.mark.parametrize("kind_b", [SYMMETRIC, PORT_RESTRICTED])
def test_upnp_symmetric_nats_reach_each_other(kind_b: str) -> None:
    """Figure 1 of RFC 6081: UPnP symmetric <-> UPnP symmetric and UPnP port-restricted, "SNS +
    UPnP", in §3.2's model: each NAT keeps the port toward the first server address (so the
    address names the UPnP mapping: a single NAT), maps every other destination anew, and
    nothing of the client's leaves from the UPnP port otherwise."""
    world = World()
    a, node_a = upnp_client(
        world,
        ("10.1.0.2", 5000),
        Nat("203.0.113.2", SYMMETRIC, port_preserving=True),
        replies=False,
    )
    b, node_b = upnp_client(
        world,
        ("10.2.0.2", 5000),
        Nat("203.0.113.18", kind_b, port_preserving=True),
        replies=False,
    )
    world.run(1.0)
    assert a.address is not None and b.address is not None
    assert a.qualifier.nat.value == "symmetric" and a.upnp_mapped is None
    # As ping does, once a second: A trusts B (B's answer to A's indirect bubble) one server
    # hop before B trusts A (A's answer to B's), so A's first packet may arrive too early.
    for seq in range(1, 4):
        a.send_ipv6(ping(a, b.address, seq=seq), world.now)
        if world.run_until(lambda: bool(echo_requests(node_b.delivered)), 1.0):
            break
    assert echo_requests(node_b.delivered)
    answer_pings(world, b, node_b)
    assert world.run_until(lambda: bool(echo_replies(node_a.delivered)), 10.0)
    node_a.delivered.clear()
    b.send_ipv6(ping(b, a.address, seq=5), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_a.delivered)), 10.0)
    if kind_b == SYMMETRIC:  # the §5.3.4.3 rule: each sends to the other's UPnP port
        assert a.status()["peers_upnp"] == 1 and b.status()["peers_upnp"] == 1


def test_without_the_upnp_rule_symmetric_nats_do_not_meet() -> None:
    """The same pair with the extension off: both learn each other's mappings, but neither NAT
    lets in what the other sends there (RFC 6081 §3.2's failure case)."""
    world = World()
    off = Extensions(upnp=False, hairpinning=False, port_preserving=False, sequential_ports=False)
    a, _ = upnp_client(
        world, ("10.1.0.2", 5000), Nat("203.0.113.2", SYMMETRIC, port_preserving=True), off
    )
    b, node_b = upnp_client(
        world, ("10.2.0.2", 5000), Nat("203.0.113.18", SYMMETRIC, port_preserving=True), off
    )
    world.run(1.0)
    assert b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    world.run(12.0)
    assert echo_requests(node_b.delivered) == []


def test_a_second_nat_offers_the_upnp_mapping_as_an_alternate_address() -> None:
    """RFC 6081 §5.6.3: a UPnP mapping that is not the qualified one (another NAT between the
    gateway and the Internet) goes into the Alternate Address trailer with the local endpoint."""
    world = World()
    a, _ = world.add_client(("10.1.0.2", 5000), Nat("203.0.113.2", PORT_RESTRICTED))
    b, _ = world.add_client(("10.2.0.2", 5000), Nat("203.0.113.18", PORT_RESTRICTED))
    world.run(1.0)
    assert b.address is not None
    a.set_upnp_mapping(("192.168.7.1", 5000))  # the inner NAT's outside
    world.net.log.clear()
    a.send_ipv6(ping(a, b.address), world.now)
    world.net.run(world.now)
    indirect = [h.payload for h in world.net.log if h.destination == SERVER]
    trailers = parse_teredo_packet(indirect[0]).trailers
    assert alternate_addresses(trailers[1]) == (("10.1.0.2", 5000), ("192.168.7.1", 5000))


@pytest.mark.parametrize("random_ports", [False, True])
def test_symmetric_nat_support_still_reaches_a_cone_peer(random_ports: bool) -> None:
    """Figure 1: random or sequential port-symmetric <-> address-restricted is "SNS"."""
    world = World()
    a, _ = world.add_client(
        ("10.1.0.2", 5000), Nat("203.0.113.2", SYMMETRIC, random_ports=random_ports)
    )
    b, node_b = world.add_client(("10.2.0.2", 5000), Nat("203.0.113.18", RESTRICTED))
    world.run(1.0)
    assert b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    assert world.run_until(lambda: bool(echo_requests(node_b.delivered)), 10.0)
    assert b.status()["peers_symmetric_nat"] == 1


class KernelMap:
    """The kernel data path's peer map (`teredo.core.peers.PeerMirror`), as a dict."""

    def __init__(self) -> None:
        self.peers: dict[bytes, tuple[str, int]] = {}

    def set_peer(self, address: bytes, mapping: tuple[str, int], last_rx: float) -> bool:
        self.peers[address] = mapping
        return True

    def remove_peer(self, address: bytes) -> bool:
        return self.peers.pop(address, None) is not None

    def last_rx(self, address: bytes) -> float | None:
        return None

    def learned_peer(self, address: bytes) -> tuple[tuple[str, int], float] | None:
        return None

    def last_rx_batch(self) -> Iterator[tuple[bytes, float]]:
        return iter(())


def test_a_peer_sent_to_at_its_embedded_mapping_stays_out_of_the_kernel_map() -> None:
    """The kernel's peer map has one mapping per peer, for both directions: a peer under the
    §5.3.4.3 rule is sent to elsewhere than it is received from, so the daemon keeps it."""
    world = World()
    a, _ = upnp_client(
        world,
        ("10.1.0.2", 5000),
        Nat("203.0.113.2", SYMMETRIC, port_preserving=True),
        replies=False,
    )
    b, node_b = upnp_client(
        world,
        ("10.2.0.2", 5000),
        Nat("203.0.113.18", SYMMETRIC, port_preserving=True),
        replies=False,
    )
    kernel = KernelMap()
    a.peers.mirror = kernel
    world.run(1.0)
    assert b.address is not None
    for seq in range(1, 4):
        a.send_ipv6(ping(a, b.address, seq=seq), world.now)
        if world.run_until(lambda: bool(echo_requests(node_b.delivered)), 1.0):
            break
    assert a.peer_extensions(b.address.packed) == ["upnp"]
    assert b.address.packed not in kernel.peers
    packet = ping(a, b.address, seq=9)
    assert a.forward_to_teredo(packet, world.now) == parse_teredo_address(b.address).mapped


@pytest.mark.parametrize("kind_b", [SYMMETRIC, PORT_RESTRICTED])
def test_an_inbound_only_upnp_mapping_is_reached_through_the_alternate_address(
    kind_b: str,
) -> None:
    """A gateway whose mapping only lets datagrams in (a DNAT), the client's own traffic leaving
    from random ports: the server sees another mapping than the UPnP one, so the client offers
    the UPnP mapping in its Alternate Address trailer (RFC 6081 §5.6.3); the peer's direct
    bubble there comes back through the same NAT state, both ways."""
    world = World()
    a, node_a = upnp_client(
        world, ("10.1.0.2", 5000), Nat("203.0.113.2", SYMMETRIC, random_ports=True)
    )
    b, node_b = upnp_client(
        world, ("10.2.0.2", 5000), Nat("203.0.113.18", kind_b, random_ports=True)
    )
    world.run(1.0)
    assert a.address is not None and b.address is not None
    assert a.upnp_mapped == ("203.0.113.2", 5000)  # not the qualified mapping
    for seq in range(1, 4):
        a.send_ipv6(ping(a, b.address, seq=seq), world.now)
        if world.run_until(lambda: bool(echo_requests(node_b.delivered)), 1.0):
            break
    assert echo_requests(node_b.delivered)
    answer_pings(world, b, node_b)
    assert world.run_until(lambda: bool(echo_replies(node_a.delivered)), 10.0)


# -- RFC 6081 §5.4/§5.5: the random port ---------------------------------------------------------

# The fake network's NATs as RFC 6081 Figure 1 names them (the symmetric ones map per
# destination; `Nat` allocates in sequence unless told to keep the port or draw at random).
FIGURE_NATS: dict[str, Callable[[str], Nat]] = {
    "port-restricted": lambda ip: Nat(ip, PORT_RESTRICTED, port_preserving=True),
    "port-preserving": lambda ip: Nat(ip, SYMMETRIC, port_preserving=True),
    "sequential": lambda ip: Nat(ip, SYMMETRIC),
    "random": lambda ip: Nat(ip, SYMMETRIC, random_ports=True),
}


def random_port_pair(
    initiator: str, responder: str, extensions: Extensions = ALL_EXTENSIONS
) -> tuple[World, TeredoClient, ClientNode, TeredoClient, ClientNode]:
    world = World()
    a, node_a = world.add_client(("10.1.0.2", 5000), FIGURE_NATS[initiator]("203.0.113.2"))
    b, node_b = world.add_client(
        ("10.2.0.2", 5000), FIGURE_NATS[responder]("203.0.113.18"), extensions=extensions
    )
    world.run(1.0)
    assert a.address is not None and b.address is not None
    return world, a, node_a, b, node_b


def ping_pong(world: World, a: TeredoClient, node_a: ClientNode, b: TeredoClient,
              node_b: ClientNode, within: float = 10.0) -> bool:  # fmt: skip
    """A pings B (one echo request, as the first packet of a real ping) and B answers; the
    request must arrive `within` seconds of the fake network's time."""
    assert b.address is not None
    a.send_ipv6(ping(a, b.address), world.now)
    if not world.run_until(lambda: bool(echo_requests(node_b.delivered)), within):
        return False
    answer_pings(world, b, node_b)
    return world.run_until(lambda: bool(echo_replies(node_a.delivered)), 10.0)


@pytest.mark.parametrize(
    ("initiator", "responder", "extension"),
    [
        ("port-restricted", "port-preserving", "port_preserving"),
        ("port-preserving", "port-restricted", "port_preserving"),
        ("port-preserving", "port-preserving", "port_preserving"),
        ("port-restricted", "sequential", "sequential_ports"),
        ("sequential", "port-restricted", "sequential_ports"),
        ("port-preserving", "sequential", "sequential_ports"),
    ],
)
def test_the_sns_pp_and_sns_ss_cells_of_figure_1_work(
    initiator: str, responder: str, extension: str
) -> None:
    """RFC 6081 Figure 1's SNS+PP and SNS+SS cells: the symmetric side(s) reach the peer from
    a random port, which the other side learns from a Random Port trailer. The first packet
    arrives in the first round of bubbles, not after the 2 s retry of RFC 4380 §5.2.6 (a
    ping's first echoes would be held or lost meanwhile)."""
    world, a, node_a, b, node_b = random_port_pair(initiator, responder)
    assert ping_pong(world, a, node_a, b, node_b, within=1.0)
    # Both ways, once set up.
    node_a.delivered.clear()
    assert ping_pong(world, b, node_b, a, node_a)
    served = [c for c in (a, b) if c.status()[f"peers_{extension}"] == 1]  # type: ignore[literal-required]
    assert served, (a.status(), b.status())
    assert a.status()["random_ports"] + b.status()["random_ports"] >= 1


@pytest.mark.parametrize(
    ("initiator", "responder"),
    [
        ("sequential", "port-preserving"),
        ("random", "port-restricted"),
        ("port-preserving", "random"),
    ],
)
def test_the_no_cells_around_them_stay_no(initiator: str, responder: str) -> None:
    world, a, node_a, b, node_b = random_port_pair(initiator, responder)
    assert not ping_pong(world, a, node_a, b, node_b)


@pytest.mark.parametrize(
    ("responder", "off"),
    [
        ("port-preserving", Extensions(port_preserving=False)),
        ("sequential", Extensions(sequential_ports=False)),
    ],
)
def test_each_random_port_extension_can_be_turned_off(responder: str, off: Extensions) -> None:
    world, a, node_a, b, node_b = random_port_pair("port-restricted", responder, off)
    assert not ping_pong(world, a, node_a, b, node_b)
    assert b.status()["random_ports"] == 0 and "random_ports_opened" not in b.counters


def test_the_echo_test_announces_the_port_between_its_two_answers() -> None:
    """RFC 6081 §5.5.4.1.1/§5.5.4.4: RS to the first server address, bubble to the peer, RS to
    the second, all from the random port; the Random Port trailer of the indirect bubble that
    follows names the midpoint of the two mappings the server saw, the bubble's own."""
    world, a, node_a, b, _ = random_port_pair("sequential", "port-restricted")
    start = len(world.net.log)
    a.send_ipv6(ping(a, b.address or ""), world.now)
    world.run(0.5)
    (port,) = node_a.opened
    # From A's NAT, other than the mappings toward the server (qualification).
    hops = [
        h
        for h in world.net.log[start:]
        if h.source[0] == "203.0.113.2" and h.source[1] not in (40000, 40001)
    ]
    first = next(i for i, h in enumerate(hops) if h.destination == SERVER)
    rs1, bubble, rs2 = hops[first : first + 3]
    assert rs1.destination == SERVER and rs2.destination == (str(SECONDARY), 3544)
    assert bubble.destination == ("203.0.113.18", 5000)
    assert bubble.source[1] == (rs1.source[1] + rs2.source[1]) // 2
    indirect = [
        h for h in world.net.log[start:]
        if h.source[0] == "203.0.113.2" and h.destination == SERVER
        and parse_teredo_packet(h.payload).trailers
    ]  # fmt: skip
    trailers = parse_teredo_packet(indirect[0].payload).trailers
    assert (TrailerType.RANDOM_PORT, bubble.source[1].to_bytes(2, "big")) in [
        (t.type, t.value) for t in trailers
    ]
    assert port != 5000


def test_predicted_port_is_the_midpoint() -> None:
    # RFC 6081 §5.5.4.4 prints "(EchoTestUpperPort + EchoTestUpperPort)/2": a typo for this.
    assert predicted_port(40003, 40005) == 40004
    assert predicted_port(40003, 40006) == 40004


def test_without_the_servers_answers_the_echo_test_fails_over() -> None:
    """RFC 6081 §5.5.2.2: no prediction after 1 s, a second echo test (from a new random
    port: the first one's mappings would give the same ports); none after 2 s more, the
    indirect bubble goes without a Random Port trailer, and the port is given back."""
    world, a, node_a, b, _ = random_port_pair("sequential", "port-restricted")
    primary_mapping = ("203.0.113.2", 40000)
    world.net.drop = lambda hop: (
        hop.source[1] == 3544 and hop.destination[0] == "203.0.113.2"
        and hop.destination != primary_mapping
    )  # fmt: skip
    start = len(world.net.log)
    a.send_ipv6(ping(a, b.address or ""), world.now)
    world.run(4.0)
    assert a.counters["port_echo_tests_sent"] == 2
    assert a.counters["port_echo_tests_failed"] == 1
    assert len(node_a.opened) == 2 and a.status()["random_ports"] == 0
    indirect = [
        parse_teredo_packet(h.payload)
        for h in world.net.log[start:]
        if h.source == primary_mapping and h.destination == SERVER
        and parse_teredo_packet(h.payload).trailers
    ]  # fmt: skip
    assert indirect
    assert all(t.type != TrailerType.RANDOM_PORT for packet in indirect for t in packet.trailers)


def test_random_ports_are_bounded_and_given_back() -> None:
    """Strangers' indirect bubbles make the client set them up: at most MAX_RANDOM_PORTS
    random ports at once (the rest refused and counted), and those whose peer never answered
    on them are closed by the Peer Refresh Timer (RFC 6081 §5.4.2.1)."""
    world = World()
    client, node = world.add_client(
        ("10.1.0.2", 5000), FIGURE_NATS["port-preserving"]("203.0.113.2")
    )
    world.run(1.0)
    assert client.address is not None
    strangers = MAX_RANDOM_PORTS + 8
    for i in range(strangers):
        peer = encode_teredo_address(
            IPv4Address(f"198.51.{i}.2"), IPv4Address(f"203.0.{i}.9"), 6000
        )
        indirect = encode_teredo_packet(
            TeredoPacket(
                ipv6=encode_bubble(peer, client.address),
                origin=OriginIndication(IPv4Address(f"203.0.{i}.9"), 6000),
                trailers=(nonce_trailer(i.to_bytes(4, "big")),),
            )
        )
        client.receive_datagram(indirect, SERVER, world.now)
    assert client.status()["random_ports"] == MAX_RANDOM_PORTS
    assert client.counters["random_ports_refused"] == strangers - MAX_RANDOM_PORTS
    world.run(61.0)
    assert client.status()["random_ports"] == 0
    assert client.counters["random_ports_expired"] == MAX_RANDOM_PORTS
    assert sorted(node.ports) == []


def test_random_port_peers_stay_off_the_fast_and_kernel_paths() -> None:
    """A peer reached through the random port is sent to from it: never by the fast path
    (which sends from the service port) nor from the kernel's peer map; and the Peer Refresh
    Timer keeps its mappings open with bubbles from the random port (RFC 6081 §5.4.2.1)."""
    world, a, node_a, b, node_b = random_port_pair("port-restricted", "port-preserving")
    kernel = KernelMap()
    b.peers.mirror = kernel
    assert ping_pong(world, a, node_a, b, node_b)
    assert a.address is not None and b.address is not None
    reply = encode_echo(b.address, a.address, 7, 2, b"again")
    assert b.forward_to_teredo(reply, world.now) is None
    assert a.address.packed not in kernel.peers
    (port,) = node_b.ports
    mapping = ("203.0.113.18", port)  # kept by the port-preserving NAT
    start = len(world.net.log)
    world.run(100.0)
    refreshes = [
        h for h in world.net.log[start:]
        if h.source == mapping and is_bubble(parse_teredo_packet(h.payload).ipv6)
    ]  # fmt: skip
    assert 2 <= len(refreshes) <= 4


def test_the_random_port_takes_only_its_peer() -> None:
    world, a, node_a, b, node_b = random_port_pair("port-restricted", "port-preserving")
    assert ping_pong(world, a, node_a, b, node_b)
    (port,) = node_b.ports
    assert b.address is not None
    stranger = encode_teredo_address(PRIMARY, IPv4Address("203.0.113.77"), 7000)
    b.receive_on_random_port(
        encode_bubble(stranger, b.address), ("203.0.113.77", 7000), port, world.now
    )
    b.receive_on_random_port(b"\x00junk", ("203.0.113.77", 7000), port, world.now)
    b.receive_on_random_port(b"junk", ("203.0.113.77", 7000), port + 1, world.now)
    assert b.drops["random_port_stranger"] == 2
    assert b.drops["random_port_closed"] == 1


def test_random_ports_go_with_the_address() -> None:
    world, a, node_a, b, node_b = random_port_pair("port-restricted", "port-preserving")
    assert ping_pong(world, a, node_a, b, node_b)
    assert b.status()["random_ports"] == 1
    b.stop()
    world.run(0.1)
    assert b.status()["random_ports"] == 0 and node_b.ports == {}


@pytest.mark.parametrize("responder", ["port-preserving", "sequential"])
def test_a_random_port_peer_is_reached_again_after_a_silence(responder: str) -> None:
    """Silent for longer than the peer's validity (30 s): the next packet revalidates it
    through the random port (RFC 6081 §5.7's solicitation leaves from it), whose mappings the
    Peer Refresh Timer kept open."""
    world, a, node_a, b, node_b = random_port_pair("port-restricted", responder)
    assert ping_pong(world, a, node_a, b, node_b)
    world.run(45.0)
    node_a.delivered.clear()
    assert ping_pong(world, b, node_b, a, node_a)
    world.run(45.0)
    node_b.delivered.clear()
    assert ping_pong(world, a, node_a, b, node_b)
    assert b.status()["random_ports"] == 1
