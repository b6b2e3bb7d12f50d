"""The Teredo server core (RFC 4380 §5.3, §7; RFC 5991 §3.2): deterministic, no I/O."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.core.address import (
    TEREDO_PORT,
    Endpoint,
    encode_teredo_address,
    endpoint,
    server_link_local,
)
from teredo.core.errors import LocalProtocolError
from teredo.core.server import (
    DROP_REASONS,
    MAX_FORWARDED_PAYLOAD,
    MAX_FORWARDED_TRAILERS,
    ServerSettings,
    SourceRateLimiter,
    TeredoServer,
)
from teredo.core.trailers import (
    Trailer,
    encode_trailers,
    nonce_trailer,
)
from teredo.core.wire import (
    Authentication,
    OriginIndication,
    TeredoPacket,
    encode_bubble,
    encode_echo,
    encode_ipv6_packet,
    encode_router_solicitation,
    encode_teredo_packet,
    parse_echo,
    parse_router_advertisement,
    parse_teredo_packet,
)


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


PRIMARY = IPv4Address("203.0.113.120")
SECONDARY = IPv4Address("203.0.113.121")
CLIENT = ("192.0.2.1", 4096)
NONCE = hexbytes("0123456789abcdef")
MIREDO_LL = IPv6Address("fe80::ffff:ffff:ffff")
MIREDO_CONE_LL = IPv6Address("fe80::8000:5445:5245:444f")
WINDOWS_LL = IPv6Address("fe80::ffff:ffff:fffe")
WINDOWS_CONE_LL = IPv6Address("fe80::8000:ffff:ffff:fffe")
NATIVE = IPv6Address("2001:db8:2::2")
# A client of this server (its address embeds PRIMARY) and one of another server.
OUR_CLIENT = encode_teredo_address(PRIMARY, IPv4Address(CLIENT[0]), CLIENT[1])
PEER = ("198.51.100.10", 40000)
OTHER_SERVER = IPv4Address("198.51.100.200")
PEER_ADDRESS = encode_teredo_address(OTHER_SERVER, IPv4Address(PEER[0]), PEER[1])
PEER_OF_OURS = encode_teredo_address(PRIMARY, IPv4Address(PEER[0]), PEER[1])
RELAY = ("198.51.100.18", 3545)

# The RS and RA vectors of test_wire.py: a nonce-only RS from fe80::ffff:ffff:ffff, and the RA
# a server at 203.0.113.120 answers to 192.0.2.1:4096, with the field values Miredo's server uses.
RS_PAYLOAD = hexbytes(
    "0001 00 00 0123456789abcdef 00"
    "60000000 0008 3a ff fe800000000000000000ffffffffffff ff020000000000000000000000000002"
    "85 00 7d37 00000000"
)
RA_PAYLOAD = hexbytes(
    "0001 00 00 0123456789abcdef 00"
    "0000 efff 3ffffdfe"
    "60000000 0038 3a ff fe80000000000000 8000f22734ff8e87 fe80000000000000 0000ffffffffffff"
    "86 00 954c 00 00 0000 00000000 000007d0"
    "03 04 40 40 ffffffff ffffffff 00000000 20010000cb0071780000000000000000"
    "05 01 0000 00000500"
)


def make_server(**changes: object) -> TeredoServer:
    values: dict[str, object] = {"primary": PRIMARY, "secondary": SECONDARY}
    values.update(changes)
    return TeredoServer(ServerSettings(**values))  # type: ignore[arg-type]


def rs(
    source: IPv6Address,
    nonce: bytes | None = NONCE,
    *,
    client_id: bytes = b"",
    auth_value: bytes = b"",
) -> bytes:
    authentication = (
        None
        if nonce is None
        else Authentication(nonce=nonce, client_id=client_id, auth_value=auth_value)
    )
    return encode_teredo_packet(
        TeredoPacket(ipv6=encode_router_solicitation(source), authentication=authentication)
    )


def only_drop(server: TeredoServer) -> str:
    assert not server.datagrams_to_send()
    assert not server.native_packets_to_send()
    [(reason, count)] = server.drops.items()
    assert count == 1
    assert reason in DROP_REASONS
    return reason


# ---------------------------------------------------------------------------------------------
# Router Solicitation -> Router Advertisement (RFC 4380 §5.3.2)


def test_rs_ra_vector_is_byte_exact() -> None:
    assert len(RA_PAYLOAD) == 117
    server = make_server()
    server.receive_datagram(RS_PAYLOAD, CLIENT, PRIMARY, 0.0)
    [(data, destination, source)] = server.datagrams_to_send()
    assert data == RA_PAYLOAD
    assert destination == CLIENT
    assert source == PRIMARY
    assert server.counters["router_advertisements"] == 1
    assert not server.drops


def test_rs_on_secondary_with_c0_is_answered_from_secondary() -> None:
    server = make_server()
    server.receive_datagram(RS_PAYLOAD, CLIENT, SECONDARY, 0.0)
    [(data, _, source)] = server.datagrams_to_send()
    assert source == SECONDARY
    assert data == RA_PAYLOAD  # prefix and link-local always name the primary address


@pytest.mark.parametrize(
    ("rs_source", "arrived_on", "answered_from"),
    [
        (MIREDO_CONE_LL, PRIMARY, SECONDARY),
        (MIREDO_CONE_LL, SECONDARY, PRIMARY),
        (WINDOWS_CONE_LL, PRIMARY, SECONDARY),
        (WINDOWS_LL, PRIMARY, PRIMARY),
        (WINDOWS_LL, SECONDARY, SECONDARY),
        (MIREDO_LL, PRIMARY, PRIMARY),
        (IPv6Address("fe80::1234"), PRIMARY, PRIMARY),  # any link-local source
        (IPv6Address("fe80::8000:0:0:1"), SECONDARY, PRIMARY),
    ],
)
def test_cone_bit_picks_the_answering_address(
    rs_source: IPv6Address, arrived_on: IPv4Address, answered_from: IPv4Address
) -> None:
    """C=1 -> the other address, C=0 -> the same one (RFC 4380 §5.3.2; RFC 5991 §3.2 keeps
    it: a server must not ignore the bit)."""
    server = make_server()
    server.receive_datagram(rs(rs_source), CLIENT, arrived_on, 0.0)
    [(data, destination, source)] = server.datagrams_to_send()
    assert (destination, source) == (CLIENT, answered_from)
    packet = parse_teredo_packet(data)
    assert packet.authentication == Authentication(nonce=NONCE)
    assert packet.origin == OriginIndication(IPv4Address(CLIENT[0]), CLIENT[1])
    ra = parse_router_advertisement(packet.ipv6)  # checksum, hop limit 255, link-local source
    assert ra.source == server_link_local(PRIMARY) == server.link_local
    assert ra.destination == rs_source
    [pio] = ra.prefixes
    assert IPv6Network((pio.prefix, pio.prefix_length)) == IPv6Network("2001:0:cb00:7178::/64")
    assert ra.mtu == 1280


def test_nonce_is_echoed_in_a_nonce_only_header() -> None:
    """No secure qualification, so the client id and value are not returned (RFC 4380 §5.2.2:
    only the nonce is repeated)."""
    server = make_server()
    nonce = bytes(range(8))
    server.receive_datagram(
        rs(MIREDO_LL, nonce, client_id=b"id", auth_value=b"x" * 20), CLIENT, PRIMARY, 0.0
    )
    [(data, _, _)] = server.datagrams_to_send()
    assert data.startswith(b"\x00\x01\x00\x00" + nonce + b"\x00\x00\x00")
    assert parse_teredo_packet(data).authentication == Authentication(nonce=nonce)


def test_rs_without_authentication_gets_an_ra_without_it() -> None:
    server = make_server()
    server.receive_datagram(rs(MIREDO_LL, nonce=None), CLIENT, PRIMARY, 0.0)
    [(data, _, _)] = server.datagrams_to_send()
    assert data[:2] == b"\x00\x00"  # the origin indication comes first
    assert data == RA_PAYLOAD[13:]


def test_prefix_and_mtu_come_from_the_settings_and_reload() -> None:
    server = make_server(prefix=IPv6Network("3ffe:831f::/32"), mtu=1400)
    server.receive_datagram(RS_PAYLOAD, CLIENT, PRIMARY, 0.0)
    ra = parse_router_advertisement(parse_teredo_packet(server.datagrams_to_send()[0].data).ipv6)
    assert ra.prefixes[0].prefix == IPv6Address("3ffe:831f:cb00:7178::")
    assert ra.mtu == 1400
    server.reconfigure(ServerSettings(PRIMARY, SECONDARY, mtu=1280))
    server.receive_datagram(RS_PAYLOAD, CLIENT, PRIMARY, 1.0)
    assert server.datagrams_to_send()[0].data == RA_PAYLOAD
    assert server.counters["router_advertisements"] == 2  # counters survive a reload


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda p: p[:20] + b"\xfe" + p[21:], "hop limit 254"),
        (lambda p: p[:-6] + b"\x00\x00" + p[-4:], "bad checksum"),
        (lambda p: p[:-7] + b"\x01" + p[-6:], "code 1"),
    ],
)
def test_invalid_rs_is_dropped(mutate: Callable[[bytes], bytes], why: str) -> None:
    server = make_server()
    payload = mutate(RS_PAYLOAD)
    assert len(payload) == len(RS_PAYLOAD), why
    server.receive_datagram(payload, CLIENT, PRIMARY, 0.0)
    assert only_drop(server) == "bad_router_solicitation"


def test_ra_destination_must_be_global() -> None:
    """RFC 4380 §5.3.2: the RA's IPv4 destination must be global unicast (here rule 3 of
    §5.3.1 refuses the RS's source first)."""
    server = make_server()
    server.receive_datagram(RS_PAYLOAD, ("192.168.1.5", 4096), PRIMARY, 0.0)
    assert only_drop(server) == "not_global_source"


def test_allow_private_addresses_relaxes_the_ipv4_checks() -> None:
    server = make_server(allow_private=True)
    private = ("10.1.0.2", 5000)
    server.receive_datagram(RS_PAYLOAD, private, PRIMARY, 0.0)
    [(_, destination, _)] = server.datagrams_to_send()
    assert destination == private
    # ...and a forward to a client whose mapping is private.
    client = encode_teredo_address(PRIMARY, IPv4Address(private[0]), private[1])
    server.receive_datagram(encode_bubble(IPv6Address("fe80::1"), client), RELAY, PRIMARY, 0.0)
    [(_, destination, _)] = server.datagrams_to_send()
    assert destination == private
    assert not server.drops


# ---------------------------------------------------------------------------------------------
# Acceptance checks (RFC 4380 §5.3.1 rules 1-7), in order


def test_rule1_malformed_is_dropped() -> None:
    server = make_server()
    for i in range(len(RS_PAYLOAD)):
        server.receive_datagram(RS_PAYLOAD[:i], CLIENT, PRIMARY, 0.0)
    assert server.drops == {"malformed": len(RS_PAYLOAD)}
    assert not server.datagrams_to_send()


def test_rule2_neither_bubble_nor_icmpv6_is_dropped() -> None:
    server = make_server()
    udp = encode_ipv6_packet(OUR_CLIENT, NATIVE, 17, bytes(8))
    server.receive_datagram(udp, CLIENT, PRIMARY, 0.0)
    assert only_drop(server) == "not_bubble_or_icmpv6"


def test_rule2_no_next_header_with_a_payload_is_not_a_bubble() -> None:
    server = make_server()
    server.receive_datagram(encode_ipv6_packet(OUR_CLIENT, NATIVE, 59, b"x"), CLIENT, PRIMARY, 0)
    assert only_drop(server) == "not_bubble_or_icmpv6"


@pytest.mark.parametrize("address", ["10.0.0.1", "127.0.0.1", "224.0.0.253", "0.1.2.3"])
def test_rule3_non_global_ipv4_source_is_dropped(address: str) -> None:
    server = make_server()
    source = (address, 4096)
    own = encode_teredo_address(PRIMARY, IPv4Address(source[0]), source[1])
    server.receive_datagram(encode_bubble(own, PEER_OF_OURS), source, PRIMARY, 0.0)
    assert only_drop(server) == "not_global_source"


def test_rule5_teredo_source_with_matching_mapping_is_forwarded() -> None:
    """A client's indirect bubble to another client of ours, with an origin indication (RFC 4380
    §5.3.1)."""
    server = make_server()
    bubble = encode_bubble(OUR_CLIENT, PEER_OF_OURS)
    server.receive_datagram(bubble, CLIENT, PRIMARY, 0.0)
    [(data, destination, source)] = server.datagrams_to_send()
    assert (destination, source) == (PEER, PRIMARY)
    assert data == hexbytes("0000 efff 3ffffdfe") + bubble
    assert server.counters["origin_indications"] == 1


def test_rule5_spoofed_teredo_source_is_dropped() -> None:
    """The IPv6 source's embedded mapping must be the outer source (RFC 4380 §5.3.1, §7.4.2)."""
    server = make_server()
    for spoofer in ((CLIENT[0], 4097), ("192.0.2.2", 4096)):
        server.receive_datagram(encode_bubble(OUR_CLIENT, PEER_OF_OURS), spoofer, PRIMARY, 0.0)
    assert server.drops == {"spoofed_source": 2}
    assert not server.datagrams_to_send()


def test_rule5_flags_of_the_source_are_ignored() -> None:
    server = make_server()
    flagged = encode_teredo_address(PRIMARY, IPv4Address(CLIENT[0]), CLIENT[1], flags=0xBCFF)
    server.receive_datagram(encode_bubble(flagged, PEER_OF_OURS), CLIENT, PRIMARY, 0.0)
    assert len(server.datagrams_to_send()) == 1


def test_rule6_relay_bubble_from_link_local_reaches_our_client_with_origin() -> None:
    """Miredo's relay (and ours) sends indirect bubbles from fe80::<cookie>, a link-local
    address keyed on the client: not a Teredo source, so rule 6 lets them in."""
    server = make_server()
    bubble = encode_bubble(IPv6Address("fe80::1:2:3:4"), OUR_CLIENT)
    server.receive_datagram(bubble, RELAY, PRIMARY, 0.0)
    [(data, destination, source)] = server.datagrams_to_send()
    assert (destination, source) == (CLIENT, PRIMARY)
    packet = parse_teredo_packet(data)
    assert packet.origin == OriginIndication(IPv4Address(RELAY[0]), RELAY[1])
    assert packet.ipv6 == bubble


def test_rule6_native_echo_reply_reaches_our_client() -> None:
    server = make_server()
    reply = encode_echo(NATIVE, OUR_CLIENT, 1, 2, b"12345678", is_request=False)
    server.receive_datagram(reply, RELAY, SECONDARY, 0.0)
    [(data, destination, source)] = server.datagrams_to_send()
    assert (destination, source) == (CLIENT, PRIMARY)  # forwards always leave from the primary
    assert parse_teredo_packet(data).ipv6 == reply


def test_rule7_non_teredo_source_to_another_servers_client_is_dropped() -> None:
    server = make_server()
    server.receive_datagram(encode_bubble(NATIVE, PEER_ADDRESS), RELAY, PRIMARY, 0.0)
    assert only_drop(server) == "not_our_client"


def test_rule7_non_teredo_source_to_native_is_dropped() -> None:
    server = make_server()
    server.receive_datagram(encode_echo(NATIVE, NATIVE, 0, 0, b""), RELAY, PRIMARY, 0.0)
    assert only_drop(server) == "not_our_client"


def test_teredo_source_to_another_servers_client_gets_no_origin_indication() -> None:
    server = make_server()
    bubble = encode_bubble(OUR_CLIENT, PEER_ADDRESS)
    server.receive_datagram(bubble, CLIENT, PRIMARY, 0.0)
    [(data, destination, _)] = server.datagrams_to_send()
    assert (data, destination) == (bubble, PEER)


def test_origin_indication_from_outside_is_dropped() -> None:
    server = make_server()
    payload = encode_teredo_packet(
        TeredoPacket(
            encode_bubble(OUR_CLIENT, PEER_OF_OURS),
            origin=OriginIndication(IPv4Address(PEER[0]), PEER[1]),
        )
    )
    server.receive_datagram(payload, CLIENT, PRIMARY, 0.0)
    assert only_drop(server) == "origin_indication"


def test_authentication_header_is_not_forwarded() -> None:
    server = make_server()
    bubble = encode_bubble(OUR_CLIENT, PEER_ADDRESS)
    payload = encode_teredo_packet(TeredoPacket(bubble, authentication=Authentication(NONCE)))
    server.receive_datagram(payload, CLIENT, PRIMARY, 0.0)
    assert server.datagrams_to_send()[0].data == bubble


# ---------------------------------------------------------------------------------------------
# Loops (Miredo's hardening) and destinations (RFC 4380 §5.3.1)


@pytest.mark.parametrize("address", [PRIMARY, SECONDARY])
def test_datagrams_from_our_own_port_3544_are_dropped(address: IPv4Address) -> None:
    server = make_server()
    server.receive_datagram(RS_PAYLOAD, endpoint(address, TEREDO_PORT), PRIMARY, 0.0)
    assert only_drop(server) == "loop"


def test_our_own_address_on_another_port_is_not_a_loop() -> None:
    server = make_server()
    server.receive_datagram(RS_PAYLOAD, endpoint(SECONDARY, 5000), PRIMARY, 0.0)
    assert len(server.datagrams_to_send()) == 1


def test_forward_toward_our_own_address_is_a_loop() -> None:
    server = make_server()
    to_us = encode_teredo_address(PRIMARY, SECONDARY, TEREDO_PORT)
    server.receive_datagram(encode_bubble(OUR_CLIENT, to_us), CLIENT, PRIMARY, 0.0)
    assert only_drop(server) == "loop"


@pytest.mark.parametrize(
    ("destination", "reason"),
    [
        (IPv6Address("fe80::1"), "destination_not_global"),
        (IPv6Address("ff02::1"), "destination_not_global"),
        (IPv6Address("fc00::1"), "destination_not_global"),
        (IPv6Address("::1"), "destination_not_global"),
        (IPv6Address("ff02::2"), "local_not_rs"),
        (server_link_local(PRIMARY), "local_not_rs"),
        (server_link_local(SECONDARY), "local_not_rs"),
        (encode_teredo_address(PRIMARY, IPv4Address("10.0.0.1"), 80),
         "destination_ipv4_not_global"),
        (encode_teredo_address(OTHER_SERVER, IPv4Address("255.255.255.255"), 80),
         "destination_ipv4_not_global"),
        (encode_teredo_address(PRIMARY, IPv4Address(PEER[0]), 0), "destination_ipv4_not_global"),
    ],
)  # fmt: skip
def test_destinations_that_are_never_forwarded(destination: IPv6Address, reason: str) -> None:
    server = make_server()
    server.receive_datagram(encode_echo(OUR_CLIENT, destination, 0, 0, b""), CLIENT, PRIMARY, 0.0)
    assert only_drop(server) == reason


def test_echo_request_to_native_is_forwarded_as_native_ipv6() -> None:
    """The client's direct connectivity test (RFC 4380 §5.2.9), hop limit decremented."""
    server = make_server()
    echo = encode_echo(OUR_CLIENT, NATIVE, 7, 9, NONCE, hop_limit=64)
    server.receive_datagram(echo, CLIENT, PRIMARY, 0.0)
    assert not server.datagrams_to_send()
    [native] = server.native_packets_to_send()
    assert native[7] == 63
    assert native[:7] + native[8:] == echo[:7] + echo[8:]
    parsed = parse_echo(native)  # the checksum is still valid
    assert parsed is not None and parsed.data == NONCE
    assert server.counters["forwarded_native"] == 1


def test_native_forward_with_hop_limit_1_is_dropped() -> None:
    server = make_server()
    server.receive_datagram(
        encode_echo(OUR_CLIENT, NATIVE, 0, 0, b"", hop_limit=1), CLIENT, PRIMARY, 0
    )
    assert only_drop(server) == "hop_limit_exceeded"


def test_bubble_to_native_is_dropped() -> None:
    server = make_server()
    server.receive_datagram(encode_bubble(OUR_CLIENT, NATIVE), CLIENT, PRIMARY, 0.0)
    assert only_drop(server) == "bubble_to_native"


@pytest.mark.parametrize("destination", [NATIVE, PEER_OF_OURS])
def test_oversize_non_bubble_is_dropped(destination: IPv6Address) -> None:
    """As Miredo: at most MAX_FORWARDED_PAYLOAD bytes of IPv6 payload; the server is no relay."""
    server = make_server()
    fits = encode_echo(OUR_CLIENT, destination, 0, 0, bytes(MAX_FORWARDED_PAYLOAD - 8))
    server.receive_datagram(fits, CLIENT, PRIMARY, 0.0)
    assert len(server.datagrams_to_send()) + len(server.native_packets_to_send()) == 1
    too_big = encode_echo(OUR_CLIENT, destination, 0, 0, bytes(MAX_FORWARDED_PAYLOAD - 7))
    server.receive_datagram(too_big, CLIENT, PRIMARY, 0.0)
    assert only_drop(server) == "oversize"


def test_trailers_are_forwarded_unchanged() -> None:
    """RFC 6081 bubbles depend on their trailers reaching the peer (RFC 6081 §4)."""
    server = make_server()
    bubble = encode_bubble(OUR_CLIENT, PEER_OF_OURS)
    trailers = encode_trailers([nonce_trailer(b"\xde\xad\xbe\xef")]) + hexbytes("80 02 aa bb")
    payload = b"\x00\x01\x00\x00" + NONCE + b"\x00" + bubble + trailers
    server.receive_datagram(payload, CLIENT, PRIMARY, 0.0)
    [(data, _, _)] = server.datagrams_to_send()
    assert data == hexbytes("0000 efff 3ffffdfe") + bubble + trailers
    assert parse_teredo_packet(data).trailers == (Trailer(1, b"\xde\xad\xbe\xef"),)


def test_too_many_trailer_bytes_are_dropped() -> None:
    server = make_server()
    trailers = encode_trailers([Trailer(0x80, bytes(100)), Trailer(0x80, bytes(100))])
    assert len(trailers) > MAX_FORWARDED_TRAILERS
    server.receive_datagram(encode_bubble(OUR_CLIENT, PEER_ADDRESS) + trailers, CLIENT, PRIMARY, 0)
    assert only_drop(server) == "oversize_trailers"


def test_local_address_must_be_ours() -> None:
    server = make_server()
    with pytest.raises(LocalProtocolError):
        server.receive_datagram(RS_PAYLOAD, CLIENT, IPv4Address("198.51.100.1"), 0.0)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="differ"):
        ServerSettings(PRIMARY, PRIMARY)
    with pytest.raises(ValueError, match="/32"):
        ServerSettings(PRIMARY, SECONDARY, prefix=IPv6Network("2001::/48"))
    with pytest.raises(ValueError, match="MTU"):
        ServerSettings(PRIMARY, SECONDARY, mtu=1000)


# ---------------------------------------------------------------------------------------------
# Rate limits and bounded memory


def test_rate_limit_per_source_and_refill() -> None:
    server = make_server(rate_per_second=1.0, rate_burst=3.0)
    for _ in range(5):
        server.receive_datagram(RS_PAYLOAD, CLIENT, PRIMARY, 10.0)
    assert len(server.datagrams_to_send()) == 3
    assert server.drops == {"rate_limited": 2}
    other = ("192.0.2.99", 1)
    server.receive_datagram(RS_PAYLOAD, other, PRIMARY, 10.0)  # another /32 has its own bucket
    server.receive_datagram(RS_PAYLOAD, CLIENT, PRIMARY, 12.0)  # two tokens earned meanwhile
    server.receive_datagram(RS_PAYLOAD, CLIENT, PRIMARY, 12.0)
    server.receive_datagram(RS_PAYLOAD, CLIENT, PRIMARY, 12.0)
    assert len(server.datagrams_to_send()) == 3
    assert server.drops == {"rate_limited": 3}


def test_rate_limit_protects_a_reflection_victim() -> None:
    """Forwards to one destination /32 spend its bucket whatever the sources."""
    server = make_server(rate_per_second=1.0, rate_burst=2.0)
    for i in range(4):
        source = (f"192.0.2.{10 + i}", 1000)
        own = encode_teredo_address(OTHER_SERVER, IPv4Address(source[0]), source[1])
        server.receive_datagram(encode_bubble(own, PEER_OF_OURS), source, PRIMARY, 0.0)
    assert len(server.datagrams_to_send()) == 2
    assert server.drops == {"rate_limited": 2}


def test_rate_limiter_table_is_bounded_and_lru() -> None:
    limiter = SourceRateLimiter(rate=1.0, burst=1.0, max_entries=3)
    assert limiter.allow(1, 0.0)
    assert not limiter.allow(1, 0.0)
    for key in (2, 3, 4):
        limiter.allow(key, 0.0)
    assert len(limiter) == 3
    assert limiter.allow(1, 0.0)  # key 1 was evicted: a fresh bucket (fails open, bounded)
    assert not limiter.allow(1, -5.0)  # a clock going backwards earns nothing


def test_rate_limiting_can_be_disabled() -> None:
    server = make_server(rate_per_second=None)
    for _ in range(1000):
        server.receive_datagram(RS_PAYLOAD, CLIENT, PRIMARY, 0.0)
    assert len(server.datagrams_to_send()) == 1000
    assert server.rate_limit_entries == 0


SOURCES = st.builds(endpoint, st.integers(0, 2**32 - 1), st.integers(0, 65535))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), source=SOURCES, secondary=st.booleans())
def test_arbitrary_datagrams_never_raise(data: bytes, source: Endpoint, secondary: bool) -> None:
    server = make_server()
    server.receive_datagram(data, source, SECONDARY if secondary else PRIMARY, 0.0)
    assert (
        sum(server.drops.values())
        + len(server.datagrams_to_send())
        + len(server.native_packets_to_send())
        >= 1
    )


def _plausible_payload() -> st.SearchStrategy[bytes]:
    """Structured fuzz: Teredo headers, an IPv6 header with varied addresses, junk after."""
    addresses = st.sampled_from(
        [OUR_CLIENT, PEER_ADDRESS, PEER_OF_OURS, NATIVE, MIREDO_LL, IPv6Address("ff02::2"),
         server_link_local(PRIMARY), IPv6Address("::"), IPv6Address("fe80::8000:1:2:3")]
    )  # fmt: skip
    header = st.builds(
        lambda src, dst, nh, hop, body, auth, trailer: (
            (b"\x00\x01\x00\x00" + NONCE + b"\x00" if auth else b"")
            + encode_ipv6_packet(src, dst, nh, body, hop)
            + trailer
        ),
        addresses,
        addresses,
        st.sampled_from([58, 59, 17, 0]),
        st.integers(0, 255),
        st.one_of(st.just(b""), st.binary(max_size=120), st.just(bytes.fromhex("8500" + "00" * 6))),
        st.booleans(),
        st.binary(max_size=20),
    )  # fmt: skip
    return header


@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(st.tuples(_plausible_payload(), SOURCES), max_size=30))
def test_plausible_traffic_never_raises_and_memory_is_bounded(
    payloads: list[tuple[bytes, Endpoint]],
) -> None:
    server = make_server(rate_max_sources=8)
    now = 0.0
    for data, source in payloads:
        now += 0.5
        server.receive_datagram(data, source, PRIMARY, now)
        for datagram in server.datagrams_to_send():
            assert len(datagram.data) <= len(data) + 8 + 117  # never an amplifier of size
            assert datagram.source in (PRIMARY, SECONDARY)
        server.native_packets_to_send()
        assert server.rate_limit_entries <= 8
    assert set(server.drops) <= set(DROP_REASONS)
    assert sum(server.drops.values()) <= len(payloads)
