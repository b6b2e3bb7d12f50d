"""Relay and host-specific relay core: end-to-end flows over a fake network with NATs, and the
relay's filters (RFC 4380 §5.4, §5.4.1, §5.4.2, §7.3)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import pytest

from fakenet import (
    FULLCONE,
    NAT_KINDS,
    PORT_RESTRICTED,
    SYMMETRIC,
    EngineNode,
    FakeNetwork,
    Nat,
    ServerNode,
)
from teredo.core.address import encode_teredo_address
from teredo.core.config import RelayType, parse_relay_config
from teredo.core.peering import PeeringSettings
from teredo.core.relay import TeredoRelay
from teredo.core.server import ServerSettings, TeredoServer
from teredo.core.trailers import trailer_nonce
from teredo.core.wire import (
    Authentication,
    ICMPv6Type,
    TeredoPacket,
    UnreachableCode,
    encode_bubble,
    encode_echo,
    encode_router_solicitation,
    encode_teredo_packet,
    icmpv6_message,
    is_bubble,
    is_echo,
    parse_router_advertisement,
    parse_teredo_packet,
)

SERVER = ("198.51.100.2", 3544)
RELAY = ("198.51.100.18", 3545)
NATIVE = IPv6Address("2001:db8:2::2")
SECRET = b"k" * 32


def counting_random() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def make_relay(now: float = 0.0, **kwargs: object) -> TeredoRelay:
    settings = kwargs.pop("settings", PeeringSettings())
    return TeredoRelay(
        settings,  # type: ignore[arg-type]
        random_bytes=counting_random(),
        secret=SECRET,
        now=now,
        **kwargs,  # type: ignore[arg-type]
    )


class MiniClient:
    """Just enough of a Teredo client: qualifies with an RS and answers server-relayed bubbles
    with a direct bubble to the origin (as Miredo does), echoing an RFC 6081 nonce trailer."""

    def __init__(self, address: tuple[str, int], echo_nonce: bool = True) -> None:
        self.address = address
        self.teredo: bytes | None = None
        self.echo_nonce = echo_nonce
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.bubbles: list[tuple[bytes, tuple[str, int]]] = []

    def qualify(self) -> None:
        rs = encode_router_solicitation(IPv6Address("fe80::ffff:ffff:ffff"))
        packet = TeredoPacket(ipv6=rs, authentication=Authentication(nonce=bytes(8)))
        self.outbox.append((encode_teredo_packet(packet), SERVER))

    def send(self, ipv6: bytes, to: tuple[str, int]) -> None:
        self.outbox.append((ipv6, to))

    def collect(self, now: float) -> list[tuple[bytes, tuple[str, int], str | None]]:
        out: list[tuple[bytes, tuple[str, int], str | None]] = [
            (payload, to, None) for payload, to in self.outbox
        ]
        self.outbox = []
        return out

    def deliver(
        self, payload: bytes, source: tuple[str, int], destination: tuple[str, int], now: float
    ) -> None:
        packet = parse_teredo_packet(payload)
        if source == SERVER and packet.origin is not None:
            if packet.authentication is not None:
                ra = parse_router_advertisement(packet.ipv6)
                origin = packet.origin
                self.teredo = encode_teredo_address(
                    IPv4Address(SERVER[0]), origin.address, origin.port
                ).packed
                assert ra.prefixes
                return
            if is_bubble(packet.ipv6):
                nonce = trailer_nonce(packet.trailers) if self.echo_nonce else None
                reply = encode_bubble(
                    IPv6Address(packet.ipv6[24:40]), IPv6Address(packet.ipv6[8:24])
                )
                if nonce is not None:
                    reply += bytes((1, 4)) + nonce
                self.outbox.append((reply, (str(packet.origin.address), packet.origin.port)))
                return
        if is_bubble(packet.ipv6):
            self.bubbles.append((packet.ipv6, source))
        else:
            self.received.append((packet.ipv6, source))


class Lab:
    """Server + relay on the public side, a MiniClient behind a NAT of the given kind."""

    def __init__(self, kind: str | None, now: float = 0.0, **relay_kwargs: object) -> None:
        self.net = FakeNetwork()
        self.server = TeredoServer(
            ServerSettings(IPv4Address("198.51.100.2"), IPv4Address("198.51.100.3"))
        )
        ServerNode(self.server, self.net)
        self.relay = make_relay(now, **relay_kwargs)
        self.net.attach(EngineNode(self.relay, RELAY))
        if kind is None:
            self.client = MiniClient(("203.0.113.66", 3544))
            self.net.attach(self.client)
        else:
            self.client = MiniClient(("10.1.0.2", 3544))
            self.nat = Nat("203.0.113.2", kind)
            self.net.attach(self.client, self.nat)
        self.client.qualify()
        self.net.run(now)
        assert self.client.teredo is not None

    @property
    def teredo(self) -> IPv6Address:
        assert self.client.teredo is not None
        return IPv6Address(self.client.teredo)


@pytest.mark.parametrize("kind", [*NAT_KINDS, None])
def test_native_to_client_through_relay_for_every_nat(kind: str | None) -> None:
    lab = Lab(kind)
    request = encode_echo(NATIVE, lab.teredo, 7, 1, b"ping")
    lab.relay.send_ipv6(request, 1.0)
    lab.net.run(1.0)
    assert [p for p, _ in lab.client.received] == [request]
    # The reply from the client, directly to the relay, is forwarded natively.
    reply = encode_echo(lab.teredo, NATIVE, 7, 1, b"ping", is_request=False)
    lab.client.send(reply, RELAY)
    lab.net.run(1.1)
    assert lab.relay.packets_to_deliver() == [reply]
    if kind == SYMMETRIC:
        # The client's port toward the relay differs from its Teredo address: accepted by the
        # cookie (or nonce), the outer mapping is learned.
        assert lab.relay.counters["mismatched_mapping_accepted"] == 1
    # Established: both directions take the fast paths.
    assert lab.relay.forward_to_teredo(request, 1.2) is not None
    peer = lab.relay.peers.get(lab.teredo.packed)
    assert peer is not None and peer.mapped is not None
    assert lab.relay.accept_from_teredo(reply, peer.mapped, 1.2)


@pytest.mark.parametrize("echo_nonce", [True, False])
def test_symmetric_nat_accepted_by_cookie_or_nonce(echo_nonce: bool) -> None:
    lab = Lab(SYMMETRIC)
    lab.client.echo_nonce = echo_nonce
    lab.relay.send_ipv6(encode_echo(NATIVE, lab.teredo, 1, 1, b"x"), 1.0)
    lab.net.run(1.0)
    assert len(lab.client.received) == 1


def test_nonce_alone_is_accepted_when_cookie_is_not_used() -> None:
    """A client that answers with a bubble to the relay's native address but echoes our nonce
    (RFC 6081 §5.2.4.4) is accepted from a mismatched mapping."""
    relay = make_relay()
    peer = encode_teredo_address(
        IPv4Address("198.51.100.2"), IPv4Address("203.0.113.2"), 40000
    ).packed
    relay.send_ipv6(encode_echo(NATIVE, IPv6Address(peer), 1, 1, b"x"), 0.0)
    sent = relay.datagrams_to_send()
    indirect = next(parse_teredo_packet(d) for d, to in sent if to == SERVER)
    nonce = trailer_nonce(indirect.trailers)
    assert nonce is not None
    reply = encode_bubble(IPv6Address(peer), IPv6Address("2001:db8:3::2")) + bytes((1, 4)) + nonce
    relay.receive_datagram(reply, ("203.0.113.2", 50123), 0.1)
    entry = relay.peers.get(peer)
    assert entry is not None and entry.mapped == ("203.0.113.2", 50123)
    wrong = encode_bubble(IPv6Address(peer), NATIVE) + bytes((1, 4)) + b"\x00\x00\x00\x00"
    other = make_relay()
    other.send_ipv6(encode_echo(NATIVE, IPv6Address(peer), 1, 1, b"x"), 0.0)
    other.receive_datagram(wrong, ("203.0.113.2", 50123), 0.1)
    assert other.drops == {"unverified_bubble": 1}


def test_client_to_native_after_relay_entry_expired() -> None:
    """A client that still trusts the relay sends directly after the relay forgot it: its
    embedded mapping matches, so the relay re-creates a trusted entry (rx case 3)."""
    lab = Lab(FULLCONE)
    packet = encode_echo(lab.teredo, NATIVE, 1, 1, b"x")
    lab.client.send(packet, RELAY)
    lab.net.run(0.0)
    assert lab.relay.packets_to_deliver() == [packet]
    peer = lab.relay.peers.get(lab.teredo.packed)
    assert peer is not None and peer.trusted


def test_spoofed_sources_are_dropped_and_leave_no_state() -> None:
    relay = make_relay()
    victim = encode_teredo_address(
        IPv4Address("198.51.100.2"), IPv4Address("203.0.113.2"), 40000
    ).packed
    data = encode_echo(IPv6Address(victim), NATIVE, 1, 1, b"x")
    relay.receive_datagram(data, ("203.0.113.99", 40000), 0.0)  # wrong address
    relay.receive_datagram(data, ("203.0.113.2", 40001), 0.0)  # wrong port
    relay.receive_datagram(encode_echo(NATIVE, NATIVE, 1, 1, b"x"), ("203.0.113.2", 1), 0.0)
    bubble = encode_bubble(IPv6Address(victim), IPv6Address(relay.cookie(victim[:15] + b"\x00")))
    relay.receive_datagram(bubble, ("203.0.113.99", 1), 0.0)  # someone else's cookie
    assert relay.drops == {"mapping_mismatch": 2, "non_teredo_source": 1, "unverified_bubble": 1}
    assert len(relay.peers) == 0
    assert relay.packets_to_deliver() == []


def test_trusted_peer_from_another_source_is_not_accepted() -> None:
    relay = make_relay()
    peer = encode_teredo_address(
        IPv4Address("198.51.100.2"), IPv4Address("203.0.113.2"), 40000
    ).packed
    good = ("203.0.113.2", 40000)
    data = encode_echo(IPv6Address(peer), NATIVE, 1, 1, b"x")
    relay.receive_datagram(data, good, 0.0)
    assert relay.packets_to_deliver() == [data]
    assert not relay.accept_from_teredo(data, ("203.0.113.2", 40001), 0.1)
    relay.receive_datagram(data, ("203.0.113.2", 40001), 0.1)
    assert relay.packets_to_deliver() == []
    assert relay.drops == {"mapping_mismatch": 1}


def test_non_global_mapping_is_refused_unless_allowed() -> None:
    peer = encode_teredo_address(IPv4Address("198.51.100.2"), IPv4Address("10.0.0.1"), 4000).packed
    data = encode_echo(IPv6Address(peer), NATIVE, 1, 1, b"x")
    relay = make_relay()
    relay.receive_datagram(data, ("10.0.0.1", 4000), 0.0)
    assert relay.drops == {"non_global_mapping": 1}
    relay.send_ipv6(encode_echo(NATIVE, IPv6Address(peer), 1, 1, b"x"), 0.0)
    assert relay.drops["non_global_destination"] == 1
    assert relay.datagrams_to_send() == []
    lab_relay = make_relay(settings=PeeringSettings(allow_private=True))
    lab_relay.receive_datagram(data, ("10.0.0.1", 4000), 0.0)
    assert lab_relay.packets_to_deliver() == [data]


def test_non_teredo_destination_from_native_side_is_refused_with_unreachable() -> None:
    relay = make_relay()
    packet = encode_echo(NATIVE, IPv6Address("2001:db8:9::1"), 1, 1, b"x")
    relay.send_ipv6(packet, 0.0)
    assert relay.drops == {"non_teredo_destination": 1}
    [error] = relay.packets_to_deliver()
    message = icmpv6_message(error)
    assert message is not None
    kind, code, body = message
    assert (kind, code) == (ICMPv6Type.DESTINATION_UNREACHABLE, UnreachableCode.NO_ROUTE)
    assert error[24:40] == NATIVE.packed
    assert body[4:] == packet
    assert relay.datagrams_to_send() == []


@pytest.mark.parametrize(
    ("destination", "served"),
    [
        ("2001:db8:2::2", True),
        ("2a00::1", True),
        ("ff02::1", False),
        ("ff0e::1", False),
        ("fe80::1", False),
        ("::1", False),
        ("::", False),
        ("2001:0:c633:6402::1", False),  # Teredo: clients talk to each other directly
    ],
)
def test_relay_served_range(destination: str, served: bool) -> None:
    relay = make_relay()
    peer = encode_teredo_address(
        IPv4Address("198.51.100.2"), IPv4Address("203.0.113.2"), 40000
    ).packed
    data = encode_echo(IPv6Address(peer), IPv6Address(destination), 1, 1, b"x")
    relay.receive_datagram(data, ("203.0.113.2", 40000), 0.0)
    assert relay.packets_to_deliver() == ([data] if served else [])
    assert relay.accept_from_teredo(data, ("203.0.113.2", 40000), 0.0) is served


def test_bubbles_are_consumed_even_to_link_local_cookie() -> None:
    relay = make_relay()
    peer = encode_teredo_address(
        IPv4Address("198.51.100.2"), IPv4Address("203.0.113.2"), 40000
    ).packed
    bubble = encode_bubble(IPv6Address(peer), IPv6Address(relay.cookie(peer)))
    relay.receive_datagram(bubble, ("203.0.113.2", 40000), 0.0)
    assert relay.packets_to_deliver() == []
    entry = relay.peers.get(peer)
    assert entry is not None and entry.trusted
    assert relay.counters["bubbles_received"] == 1
    assert not relay.accept_from_teredo(bubble, ("203.0.113.2", 40000), 0.0)


def test_host_specific_relay_serves_only_host_addresses() -> None:
    host = IPv6Address("2001:db8:2::2")
    hsr = make_relay(host_specific=True, host_addresses=[host])
    peer = encode_teredo_address(
        IPv4Address("198.51.100.2"), IPv4Address("203.0.113.2"), 40000
    ).packed
    mine = encode_echo(IPv6Address(peer), host, 1, 1, b"x")
    other = encode_echo(IPv6Address(peer), IPv6Address("2001:db8:2::3"), 1, 1, b"x")
    hsr.receive_datagram(mine, ("203.0.113.2", 40000), 0.0)
    hsr.receive_datagram(other, ("203.0.113.2", 40000), 0.0)
    assert hsr.packets_to_deliver() == [mine]
    assert hsr.drops == {"destination_not_served": 1}
    assert hsr.accept_from_teredo(mine, ("203.0.113.2", 40000), 0.0)
    assert not hsr.accept_from_teredo(other, ("203.0.113.2", 40000), 0.0)
    hsr.set_host_addresses([IPv6Address("2001:db8:2::3")])
    assert hsr.accept_from_teredo(other, ("203.0.113.2", 40000), 0.0)
    assert hsr.status()["role"] == "host-specific relay"


def test_host_specific_relay_reaches_client_behind_symmetric_nat() -> None:
    lab = Lab(SYMMETRIC, host_specific=True, host_addresses=[NATIVE])
    lab.relay.send_ipv6(encode_echo(NATIVE, lab.teredo, 1, 1, b"x"), 1.0)
    lab.net.run(1.0)
    assert len(lab.client.received) == 1


def test_from_config() -> None:
    config = parse_relay_config("RelayType host-specific\nMaxPeers 10\nAllowPrivateAddresses yes\n")
    assert config.relay_type is RelayType.HOST_SPECIFIC
    relay = TeredoRelay.from_config(config, random_bytes=bytes, secret=SECRET, now=0.0)
    assert relay.host_specific
    assert relay.peers.max_peers == 10
    assert relay.settings.allow_private
    relay = TeredoRelay.from_config(
        parse_relay_config("RelayType relay\n"), random_bytes=bytes, secret=SECRET, now=0.0
    )
    assert not relay.host_specific


def test_port_restricted_relay_direct_bubble_is_filtered_but_indirect_works() -> None:
    lab = Lab(PORT_RESTRICTED)
    lab.relay.send_ipv6(encode_echo(NATIVE, lab.teredo, 1, 1, b"x"), 1.0)
    lab.net.run(1.0)
    filtered = [h for h in lab.net.log if h.why == "filtered by NAT"]
    assert len(filtered) == 1  # the relay's direct bubble
    assert len(lab.client.received) == 1
    assert is_echo(lab.client.received[0][0])
