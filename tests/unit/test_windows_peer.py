"""Windows as a peer, without Windows: bytes a Windows Teredo client and Microsoft's Teredo
infrastructure really sent, against our parser, server and relay.

Origin of the bytes: the Zeek project's test traces ``testing/btest/Traces/tunnels/Teredo.pcap``
and ``teredo_bubble_with_payload.pcap`` (github.com/zeek/zeek), a Windows (Vista-era) client at
192.168.2.16:3797 behind a NAT, Microsoft's server teredo.ipv6.microsoft.com (65.55.158.80 and
.81) and a relay at 83.170.1.38:32900. The UDP payloads were extracted with
``tshark -r Teredo.pcap -T fields -e frame.number -e udp.payload`` and are quoted unchanged
(frame numbers as in the trace). The client's Teredo address 2001:0:4137:9e50:8000:f12a:b9c8:2815
embeds its NAT's public mapping, 70.55.215.234:3797: the outer source our server and relay see.

What Windows does that Miredo does not, all visible here: the RS comes from
fe80::8000:ffff:ffff:fffd (C=1) with a nonce-only authentication header and a source link-layer
address option (24 bytes of RS, not 8), and is answered from the server's *second* address; the
RA has no MTU option; the address has flags 0x8000 and no random bits (pre-RFC 5991); the echo
test and the bubbles to the relay carry hop limit 21.
"""

from __future__ import annotations

import itertools
import os
from ipaddress import IPv4Address, IPv6Address

import pytest

from fakenet import FULLCONE, PORT_RESTRICTED, ClientNode, FakeNetwork, Nat, ServerNode
from teredo.adapters import accel
from teredo.core.address import encode_teredo_address, parse_teredo_address, server_link_local
from teredo.core.client import ClientSettings, TeredoClient
from teredo.core.peering import PeeringSettings
from teredo.core.qualification import ServerPair
from teredo.core.relay import TeredoRelay
from teredo.core.server import (
    BATCH_SIZE,
    RECORD,
    SLOT_BYTES,
    AnswerFunction,
    ServerBatch,
    ServerSettings,
    TeredoServer,
    python_answer_solicitations,
)
from teredo.core.wire import (
    encode_bubble,
    encode_echo,
    is_bubble,
    is_echo,
    is_router_solicitation,
    parse_echo,
    parse_router_advertisement,
    parse_teredo_packet,
)


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# Teredo.pcap, frame 6: the Windows client's RS to 65.55.158.80:3544.
WINDOWS_RS = hexbytes(
    "0001 00 00 cd5669400b22df88 00"
    "60000000 0018 3a ff fe800000000000008000fffffffffffd ff020000000000000000000000000002"
    "85 00 a91d 00000000 01 02 0000000000008000f12ab9c82815"
)
# Frame 7: Microsoft's RA, from 65.55.158.81:3544 (the other address: the RS had C=1).
MICROSOFT_RA = hexbytes(
    "0001 00 00 cd5669400b22df88 00"
    "0000 f12a b9c82815"
    "60000000 0030 3a ff fe800000000000008000f227bec861af fe800000000000008000fffffffffffd"
    "86 00 1f57 00 00 0000 00000000 000007d0"
    "03 04 40 40 ffffffff ffffffff 00000000 2001000041379e500000000000000000"
)
# Frame 29: the client's bubble to the relay (hop limit 21), toward the native host.
BUBBLE_TO_RELAY = hexbytes(
    "60000000 0000 3b 15 2001000041379e508000f12ab9c82815 20014860000020010000000000000068"
)
# Frame 30: the client's direct IPv6 connectivity test, through its server (hop limit 21).
ECHO_TEST = hexbytes(
    "60000000 000c 3a 15 2001000041379e508000f12ab9c82815 20014860000020010000000000000068"
    "80 00 c57c d373 b69b 53aa0126"
)
# Frame 31: what Microsoft's server sent the client: the relay's bubble (from its link-local
# cookie address) with an origin indication naming the relay, 83.170.1.38:32900.
FORWARDED_RELAY_BUBBLE = hexbytes(
    "0000 7f7b ac55fed9"
    "60000000 0000 3b 00 fe80000000000000708dfe834114a512 2001000041379e508000f12ab9c82815"
)
# Frame 33: the relay's answer to the echo test (the native host's reply), to the client.
ECHO_REPLY_FROM_RELAY = hexbytes(
    "60000000 000c 3a 3a 20014860000020010000000000000068 2001000041379e508000f12ab9c82815"
    "81 00 c47c d373 b69b 53aa0126"
)
# Frame 34: the client's first TCP segment (SYN to port 80) through the relay, hop limit 128.
TCP_SYN = hexbytes(
    "60000000 0018 06 80 2001000041379e508000f12ab9c82815 20014860000020010000000000000068"
    "0506 0050 7c7b6b46 00000000 6002 4000 90a2 0000 020404c4"
)
# teredo_bubble_with_payload.pcap, frame 3: the same bubble as frame 29 with 4 bytes after it
# ("1234"), which RFC 6081 §4 makes a trailer area: type 0x31, length 0x32, truncated.
BUBBLE_WITH_PAYLOAD = BUBBLE_TO_RELAY + b"1234"

MICROSOFT = IPv4Address("65.55.158.80")
MICROSOFT_2 = IPv4Address("65.55.158.81")
CLIENT_MAPPING = ("70.55.215.234", 3797)
CLIENT_ADDRESS = IPv6Address("2001:0:4137:9e50:8000:f12a:b9c8:2815")
NATIVE = IPv6Address("2001:4860:0:2001::68")
RELAY = ("83.170.1.38", 32900)


def test_windows_address_decodes_to_its_mapping() -> None:
    teredo = parse_teredo_address(CLIENT_ADDRESS)
    assert teredo.server == MICROSOFT
    assert teredo.flags == 0x8000  # cone, no random bits: Windows before RFC 5991
    assert (str(teredo.mapped_address), teredo.mapped_port) == CLIENT_MAPPING


def test_windows_rs_parses() -> None:
    packet = parse_teredo_packet(WINDOWS_RS)
    assert packet.authentication is not None
    assert packet.authentication.nonce == hexbytes("cd5669400b22df88")
    assert (packet.authentication.client_id, packet.authentication.auth_value) == (b"", b"")
    assert is_router_solicitation(packet.ipv6)
    assert packet.ipv6[8:24] == IPv6Address("fe80::8000:ffff:ffff:fffd").packed
    assert packet.trailers == () and not packet.malformed_trailers


def test_microsoft_ra_parses_without_an_mtu_option() -> None:
    packet = parse_teredo_packet(MICROSOFT_RA)
    assert packet.origin is not None
    assert (str(packet.origin.address), packet.origin.port) == CLIENT_MAPPING
    ra = parse_router_advertisement(packet.ipv6)
    assert ra.mtu is None  # the client then uses 1280 (RFC 4380 §5.2.1)
    assert ra.source == server_link_local(MICROSOFT)
    assert [p.prefix for p in ra.prefixes] == [IPv6Address("2001:0:4137:9e50::")]


def microsoft_like_server() -> TeredoServer:
    return TeredoServer(ServerSettings(MICROSOFT, MICROSOFT_2))


def check_answer_to_windows(data: bytes, sender: IPv4Address) -> None:
    """Our answer says what Microsoft's server said: from the other address (C=1), the same
    authentication header and origin indication byte for byte, and an RA with the same source,
    destination and prefix (ours adds the MTU option, as Miredo's does)."""
    assert sender == MICROSOFT_2
    assert data[:21] == MICROSOFT_RA[:21]
    ours = parse_router_advertisement(parse_teredo_packet(data).ipv6)
    theirs = parse_router_advertisement(parse_teredo_packet(MICROSOFT_RA).ipv6)
    assert (ours.source, ours.destination, ours.prefixes) == (
        theirs.source,
        theirs.destination,
        theirs.prefixes,
    )
    assert ours.mtu == 1280


def test_our_server_answers_the_windows_rs_as_microsofts_did() -> None:
    server = microsoft_like_server()
    server.receive_datagram(WINDOWS_RS, CLIENT_MAPPING, MICROSOFT, 0.0)
    [answer] = server.datagrams_to_send()
    assert answer.destination == CLIENT_MAPPING
    check_answer_to_windows(answer.data, answer.source)
    assert server.counters["router_advertisements_cone"] == 1


@pytest.mark.parametrize("answer", [python_answer_solicitations, accel.answer_solicitations])
def test_the_batch_path_hands_the_windows_rs_to_the_full_path(answer: AnswerFunction) -> None:
    """The fast path answers only 8-byte RSs; Windows' carries an option: same answer."""
    server = microsoft_like_server()
    batch = ServerBatch(BATCH_SIZE)
    batch.view[: len(WINDOWS_RS)] = WINDOWS_RS
    RECORD.pack_into(
        batch.records, 0, int(IPv4Address(CLIENT_MAPPING[0])), len(WINDOWS_RS), 3797, 0
    )
    assert server.receive_batch(batch, 1, MICROSOFT, 0.0, answer) == 0
    [datagram] = server.datagrams_to_send()
    check_answer_to_windows(datagram.data, datagram.source)
    assert len(WINDOWS_RS) <= SLOT_BYTES


def test_our_server_forwards_the_windows_echo_test_natively() -> None:
    server = microsoft_like_server()
    server.receive_datagram(ECHO_TEST, CLIENT_MAPPING, MICROSOFT, 0.0)
    [native] = server.native_packets_to_send()
    assert native == ECHO_TEST[:7] + bytes((20,)) + ECHO_TEST[8:]  # hop limit 21 - 1
    assert parse_echo(native).data == hexbytes("53aa0126")


def test_our_server_forwards_the_relay_bubble_byte_for_byte_as_microsofts_did() -> None:
    server = microsoft_like_server()
    server.receive_datagram(FORWARDED_RELAY_BUBBLE[8:], RELAY, MICROSOFT, 0.0)
    [forward] = server.datagrams_to_send()
    assert (forward.data, forward.destination, forward.source) == (
        FORWARDED_RELAY_BUBBLE,
        CLIENT_MAPPING,
        MICROSOFT,
    )


def windows_facing_relay() -> TeredoRelay:
    counter = itertools.count(1)
    return TeredoRelay(
        PeeringSettings(),
        random_bytes=lambda n: next(counter).to_bytes(n, "big"),
        secret=b"k" * 32,
        now=0.0,
    )


def test_our_relay_carries_the_windows_clients_traffic_both_ways() -> None:
    relay = windows_facing_relay()
    # The client's bubble (hop limit 21) creates nothing; its TCP SYN is delivered natively
    # (its source is consistent with the outer source: RFC 4380 §5.2.3 case 3 for a relay).
    relay.receive_datagram(BUBBLE_TO_RELAY, CLIENT_MAPPING, 0.0)
    assert relay.packets_to_deliver() == []
    relay.receive_datagram(TCP_SYN, CLIENT_MAPPING, 0.1)
    assert relay.packets_to_deliver() == [TCP_SYN]
    # The answer from the native side goes straight to the client's mapping.
    relay.send_ipv6(ECHO_REPLY_FROM_RELAY, 0.2)
    assert relay.datagrams_to_send() == [(ECHO_REPLY_FROM_RELAY, CLIENT_MAPPING)]


def test_our_relay_sets_up_a_new_windows_peer_the_way_the_trace_shows() -> None:
    """Native -> Windows client first: our relay queues the packet and sends bubbles; the
    client answers as frame 32 does, with a direct bubble (hop limit 0) to the address our
    relay's bubble came from, and the queued packet leaves to its mapping."""
    relay = windows_facing_relay()
    relay.send_ipv6(ECHO_REPLY_FROM_RELAY, 0.0)
    sent = relay.datagrams_to_send()
    indirect = [parse_teredo_packet(d) for d, to in sent if to == (str(MICROSOFT), 3544)]
    assert len(indirect) == 1 and is_bubble(indirect[0].ipv6)
    cookie = IPv6Address(indirect[0].ipv6[8:24])
    answer = encode_bubble(CLIENT_ADDRESS, cookie)  # Windows echoes no RFC 6081 nonce here
    relay.receive_datagram(answer, CLIENT_MAPPING, 0.3)
    assert (ECHO_REPLY_FROM_RELAY, CLIENT_MAPPING) in relay.datagrams_to_send()


def test_the_bubble_with_payload_is_a_bubble_with_a_malformed_trailer() -> None:
    """Zeek flags these 4 bytes as a weird; RFC 6081 §4 reads them as trailers, and §5.1.2
    stops at the malformed one: the bubble is still a bubble, the trailer is counted."""
    packet = parse_teredo_packet(BUBBLE_WITH_PAYLOAD)
    assert packet.ipv6 == BUBBLE_TO_RELAY and is_bubble(packet.ipv6)
    assert packet.trailers == () and packet.malformed_trailers
    relay = windows_facing_relay()
    relay.receive_datagram(BUBBLE_WITH_PAYLOAD, CLIENT_MAPPING, 0.0)
    assert relay.drops == {"malformed_trailer": 1}
    relay.receive_datagram(TCP_SYN, CLIENT_MAPPING, 0.1)
    assert relay.packets_to_deliver() == [TCP_SYN]


def test_hop_limit_21_echo_request_survives_our_server_and_the_reply_our_relay() -> None:
    """The whole echo test of the trace: request out through our server, reply back through
    our relay."""
    server = microsoft_like_server()
    server.receive_datagram(ECHO_TEST, CLIENT_MAPPING, MICROSOFT, 0.0)
    [request] = server.native_packets_to_send()
    echo = parse_echo(request)
    reply = encode_echo(
        echo.destination, echo.source, echo.identifier, echo.sequence, echo.data, is_request=False
    )
    assert reply[8:] == ECHO_REPLY_FROM_RELAY[8:]  # the relay's frame 33 but for the hop limit
    relay = windows_facing_relay()
    relay.receive_datagram(TCP_SYN, CLIENT_MAPPING, 0.0)  # the client is known to the relay
    relay.send_ipv6(reply, 0.1)
    assert relay.datagrams_to_send() == [(reply, CLIENT_MAPPING)]


# -- our client with a Windows client as its peer ----------------------------------------------


class WindowsPeer:
    """A fake node that behaves as the trace's Windows client does: it qualifies with the RS of
    frame 6 (C=1, nonce-only, a source link-layer option) and takes the address with flags
    0x8000 and no random bits; it answers an indirect bubble relayed by its server with a direct
    bubble of hop limit 21 (frames 29, 31); it answers echo requests with hop limit 128, its
    stack's default (frame 34); and it sends no RFC 6081 trailer."""

    def __init__(self, private: tuple[str, int]) -> None:
        self.address = private
        self.teredo: IPv6Address | None = None
        self.outbox: list[tuple[bytes, tuple[str, int]]] = [(WINDOWS_RS, (str(MICROSOFT), 3544))]
        self.received: list[bytes] = []
        self.direct_bubbles: list[bytes] = []
        self.queue: dict[IPv6Address, list[bytes]] = {}

    def send(self, packet: bytes) -> None:
        """A first packet to a Teredo peer: held, with an indirect bubble through the peer's
        server and a direct one to its mapping (RFC 4380 §5.2.4, hop limit 21 as in frame 29)."""
        assert self.teredo is not None
        peer = IPv6Address(packet[24:40])
        self.queue.setdefault(peer, []).append(packet)
        teredo = parse_teredo_address(peer)
        bubble = encode_bubble(self.teredo, peer, hop_limit=21)
        self.outbox.append((bubble, (str(teredo.server), 3544)))
        self.outbox.append((bubble, (str(teredo.mapped_address), teredo.mapped_port)))

    def collect(self, now: float) -> list[tuple[bytes, tuple[str, int], str | None]]:
        out, self.outbox = self.outbox, []
        return [(data, to, None) for data, to in out]

    def deliver(
        self, payload: bytes, source: tuple[str, int], destination: object, now: float
    ) -> None:
        packet = parse_teredo_packet(payload)
        ipv6 = packet.ipv6
        if packet.authentication is not None and packet.origin is not None:
            parse_router_advertisement(ipv6)
            origin = packet.origin
            self.teredo = encode_teredo_address(MICROSOFT, origin.address, origin.port, 0x8000)
            return
        assert self.teredo is not None
        peer = IPv6Address(ipv6[8:24])
        if packet.origin is not None and is_bubble(ipv6):
            bubble = encode_bubble(self.teredo, peer, hop_limit=21)
            self.outbox.append((bubble, packet.origin.endpoint))
            return
        if is_bubble(ipv6):
            self.direct_bubbles.append(ipv6)
            for waiting in self.queue.pop(peer, []):  # the peer answered: send what waited
                self.outbox.append((waiting, source))
            return
        self.received.append(ipv6)
        if is_echo(ipv6) and parse_echo(ipv6).is_request:
            echo = parse_echo(ipv6)
            reply = encode_echo(
                self.teredo, peer, echo.identifier, echo.sequence, echo.data, False, 128
            )
            self.outbox.append((reply, source))


def windows_and_our_client() -> tuple[FakeNetwork, WindowsPeer, TeredoClient, ClientNode, float]:
    """Our server (at Microsoft's addresses), the Windows client behind a full-cone NAT at the
    trace's mapping, our client behind a port-restricted NAT; both qualified."""
    net = FakeNetwork()
    ServerNode(microsoft_like_server(), net)
    windows = WindowsPeer(("192.168.2.16", 3797))
    net.attach(windows, Nat(CLIENT_MAPPING[0], FULLCONE, port_preserving=True))
    client = TeredoClient(
        ClientSettings(servers=(ServerPair(MICROSOFT, MICROSOFT_2),)),
        random_bytes=os.urandom,
        secret=os.urandom(32),
        now=0.0,
        local=("10.1.0.2", 5000),
    )
    node = ClientNode(client, ("10.1.0.2", 5000))
    net.attach(node, Nat("198.51.100.77", PORT_RESTRICTED))
    client.start(0.0)
    now = net.advance(0.0, 1.0)
    assert windows.teredo == CLIENT_ADDRESS  # what the trace's client got, from our server
    assert client.address is not None
    return net, windows, client, node, now


def test_our_client_reaches_a_windows_client() -> None:
    """Our bubbles, the Windows client's direct bubble (hop limit 21) back, then our ping and
    its answer (hop limit 128)."""
    net, windows, client, node, now = windows_and_our_client()
    assert client.address is not None
    request = encode_echo(client.address, CLIENT_ADDRESS, 7, 1, b"from teredo")
    client.send_ipv6(request, now)
    net.advance(now, now + 1.0)
    assert windows.received == [request]
    reply = encode_echo(CLIENT_ADDRESS, client.address, 7, 1, b"from teredo", False, 128)
    assert node.delivered == [reply]


def test_a_windows_client_reaches_our_client() -> None:
    """The Windows client's bubbles (hop limit 21, no RFC 6081 nonce), our direct bubble back
    to the origin our server names, then its ping, answered."""
    net, windows, client, node, now = windows_and_our_client()
    assert client.address is not None
    ping = encode_echo(CLIENT_ADDRESS, client.address, 9, 1, b"from windows", True, 128)
    windows.send(ping)
    now = net.advance(now, now + 1.0)
    assert node.delivered == [ping]
    answer = encode_echo(client.address, CLIENT_ADDRESS, 9, 1, b"from windows", False, 64)
    client.send_ipv6(answer, now)
    net.advance(now, now + 1.0)
    assert windows.received == [answer]
