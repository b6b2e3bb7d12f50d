"""Wire vectors, truncation discipline and round trips.

The vectors were computed by hand from the layouts of RFC 4380 §5.1.1 (headers), §5.2.1 (RS),
§5.3.2 (RA), §5.2.9 (echo test) and §2.8 (bubbles), and RFC 6081 §4 (trailers); where the RFCs
leave a field open (RA timers, lifetimes, the MTU option, a bubble's hop limit), they hold the
values Miredo sends.
"""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teredo.core.address import server_link_local
from teredo.core.errors import ParseError
from teredo.core.trailers import (
    Trailer,
    trailer_nonce,
)
from teredo.core.wire import (
    Authentication,
    OriginIndication,
    PrefixInformation,
    RouterAdvertisement,
    TeredoPacket,
    encode_bubble,
    encode_echo,
    encode_icmpv6_error,
    encode_router_advertisement,
    encode_router_solicitation,
    encode_teredo_packet,
    icmpv6_message,
    is_bubble,
    is_echo,
    is_router_solicitation,
    parse_echo,
    parse_ipv6_header,
    parse_router_advertisement,
    parse_teredo_packet,
    push_origin_indication,
)


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


NONCE = hexbytes("0123456789abcdef")
A1 = IPv6Address("2001:0:cb00:7178:0:efff:3fff:fdfe")
A2 = IPv6Address("2001:0:c633:6476:0:dfff:3fff:fdf5")
CLIENT_LL = IPv6Address("fe80::ffff:ffff:ffff")
SERVER = IPv4Address("203.0.113.120")

# RFC 4380 §5.1.1's example (port 337, 1.2.3.4), and RFC 6081 Figure 2's client A
ORIGIN_VECTORS = [
    (337, "1.2.3.4", "0000 feae fefdfcfb"),
    (4096, "192.0.2.1", "0000 efff 3ffffdfe"),
]

# A nonce-only RS from fe80::ffff:ffff:ffff: auth | IPv6 header | RS
RS_PAYLOAD = hexbytes(
    "0001 00 00 0123456789abcdef 00"
    "60000000 0008 3a ff fe800000000000000000ffffffffffff ff020000000000000000000000000002"
    "85 00 7d37 00000000"
)
# The RA that answers it from server 203.0.113.120 to 192.0.2.1:4096:
# auth | origin | IPv6 | RA | PIO | MTU
RA_PAYLOAD = hexbytes(
    "0001 00 00 0123456789abcdef 00"
    "0000 efff 3ffffdfe"
    "60000000 0038 3a ff fe80000000000000 8000f22734ff8e87 fe80000000000000 0000ffffffffffff"
    "86 00 954c 00 00 0000 00000000 000007d0"
    "03 04 40 40 ffffffff ffffffff 00000000 20010000cb0071780000000000000000"
    "05 01 0000 00000500"
)
# An echo test (RFC 4380 §5.2.9) from A1 to 2001:db8::1, hop limit 64, its nonce as data
ECHO = hexbytes(
    "60000000 0010 3a 40 20010000cb0071780000efff3ffffdfe 20010db8000000000000000000000001"
    "80 00 74ec 0000 0000 a1b2c3d4e5f60718"
)
# A direct bubble from A1 to A2, hop limit 0 (RFC 4380 §2.8)
BUBBLE = hexbytes(
    "60000000 0000 3b 00 20010000cb0071780000efff3ffffdfe 20010000c63364760000dfff3ffffdf5"
)


@pytest.mark.parametrize(("port", "address", "expected"), ORIGIN_VECTORS)
def test_origin_indication_vectors(port: int, address: str, expected: str) -> None:
    origin = OriginIndication(IPv4Address(address), port)
    assert push_origin_indication(origin) == hexbytes(expected)


def test_router_solicitation_vector() -> None:
    rs = encode_router_solicitation(CLIENT_LL)
    payload = encode_teredo_packet(TeredoPacket(ipv6=rs, authentication=Authentication(NONCE)))
    assert payload == RS_PAYLOAD
    assert len(payload) == 61  # the 103-byte Windows frame minus Ethernet/IPv4/UDP
    parsed = parse_teredo_packet(payload)
    assert parsed.authentication == Authentication(NONCE)
    assert parsed.origin is None
    assert is_router_solicitation(parsed.ipv6)


@pytest.mark.parametrize(
    ("source", "checksum"),
    [("fe80::ffff:ffff:ffff", 0x7D37), ("fe80::8000:5445:5245:444f", 0x125D),
     ("fe80::ffff:ffff:fffe", 0x7D38)],
)  # fmt: skip
def test_rs_checksums(source: str, checksum: int) -> None:
    rs = encode_router_solicitation(IPv6Address(source))
    assert int.from_bytes(rs[42:44], "big") == checksum


def test_router_advertisement_vector() -> None:
    ra = RouterAdvertisement(
        source=server_link_local(SERVER),
        destination=CLIENT_LL,
        prefixes=(PrefixInformation(IPv6Address("2001:0:cb00:7178::")),),
        mtu=1280,
    )
    packet = TeredoPacket(
        ipv6=encode_router_advertisement(ra),
        authentication=Authentication(NONCE),
        origin=OriginIndication(IPv4Address("192.0.2.1"), 4096),
    )
    assert encode_teredo_packet(packet) == RA_PAYLOAD
    assert len(RA_PAYLOAD) == 117
    parsed = parse_teredo_packet(RA_PAYLOAD)
    assert parsed == packet
    assert parse_router_advertisement(parsed.ipv6) == ra


def test_ra_without_mtu_option_parses_with_none() -> None:
    ra = RouterAdvertisement(
        source=server_link_local(SERVER),
        destination=CLIENT_LL,
        prefixes=(PrefixInformation(IPv6Address("2001:0:cb00:7178::")),),
    )
    assert parse_router_advertisement(encode_router_advertisement(ra)).mtu is None


@pytest.mark.parametrize(
    ("offset", "value", "why"),
    [(7, 64, "hop limit"), (8, 0x20, "source not link-local"), (40, 0x87, "type"),
     (41, 1, "code"), (42, 0, "checksum")],
)  # fmt: skip
def test_invalid_ra_is_rejected(offset: int, value: int, why: str) -> None:
    ipv6 = bytearray(parse_teredo_packet(RA_PAYLOAD).ipv6)
    ipv6[offset] = value
    with pytest.raises(ParseError):
        parse_router_advertisement(bytes(ipv6))


def test_ra_option_with_zero_length_is_rejected() -> None:
    ipv6 = bytearray(parse_teredo_packet(RA_PAYLOAD).ipv6)
    ipv6[40 + 16 + 1] = 0  # PIO length 0
    # fix up the checksum so that only the option is wrong
    ipv6[42:44] = b"\x00\x00"
    from teredo.core.wire import icmpv6_checksum

    checksum = icmpv6_checksum(bytes(ipv6[8:24]), bytes(ipv6[24:40]), bytes(ipv6[40:]))
    ipv6[42:44] = checksum.to_bytes(2, "big")
    with pytest.raises(ParseError):
        parse_router_advertisement(bytes(ipv6))


def test_echo_vector() -> None:
    echo = encode_echo(A1, IPv6Address("2001:db8::1"), 0, 0, hexbytes("a1b2c3d4e5f60718"))
    assert echo == ECHO
    parsed = parse_echo(ECHO)
    assert parsed is not None
    assert parsed.is_request
    assert parsed.data == hexbytes("a1b2c3d4e5f60718")
    reply = encode_echo(IPv6Address("2001:db8::1"), A1, 0, 0, parsed.data, is_request=False)
    parsed_reply = parse_echo(reply)
    assert parsed_reply is not None and not parsed_reply.is_request


def test_echo_with_bad_checksum_is_not_an_echo() -> None:
    assert not is_echo(ECHO[:-1] + b"\x00")
    with pytest.raises(ParseError):
        parse_echo(ECHO[:-1] + b"\x00")


def test_bubble_vector() -> None:
    assert encode_bubble(A1, A2) == BUBBLE
    assert is_bubble(BUBBLE)
    assert not is_bubble(ECHO)
    header = parse_ipv6_header(BUBBLE)
    assert (header.source, header.destination, header.next_header) == (A1, A2, 59)


def test_icmpv6_error_fits_1280_bytes() -> None:
    big = encode_echo(A1, IPv6Address("2001:db8::1"), 1, 1, bytes(1400))
    error = encode_icmpv6_error(IPv6Address("2001:db8::ff"), 1, 3, big)
    assert len(error) == 1280
    assert parse_ipv6_header(error).destination == A1
    message = icmpv6_message(error)
    assert message is not None and message[:2] == (1, 3)
    assert message[2][4:] == big[: 1280 - 48]


def test_trailers_in_a_packet_and_the_length_rule() -> None:
    payload = BUBBLE + hexbytes("01 04 deadbeef") + hexbytes("80 01 00")  # unknown 10xxxxxx: skip
    parsed = parse_teredo_packet(payload)
    assert parsed.ipv6 == BUBBLE
    assert trailer_nonce(parsed.trailers) == hexbytes("deadbeef")
    assert not parsed.malformed_trailers


def test_unknown_trailer_with_top_bits_01_discards_the_packet() -> None:
    with pytest.raises(ParseError):
        parse_teredo_packet(BUBBLE + hexbytes("41 00"))


def test_a_malformed_trailer_keeps_the_packet_and_says_so() -> None:
    parsed = parse_teredo_packet(BUBBLE + hexbytes("01 04 deadbeef 01"))
    assert parsed.ipv6 == BUBBLE
    assert parsed.trailers == (Trailer(1, hexbytes("deadbeef")),)
    assert parsed.malformed_trailers


@pytest.mark.parametrize(
    "payload", [RS_PAYLOAD, RA_PAYLOAD, ECHO, BUBBLE, hexbytes("0000 efff 3ffffdfe") + BUBBLE]
)
def test_every_truncation_is_a_parse_error(payload: bytes) -> None:
    for i in range(len(payload)):
        with pytest.raises(ParseError):
            parse_teredo_packet(payload[:i])


@pytest.mark.parametrize(
    "payload",
    [
        hexbytes("0000 efff 3ffffdfe 0001 00 00 0123456789abcdef 00") + BUBBLE,  # wrong order
        hexbytes("0001 00 00 0123456789abcdef 00 0001 00 00 0123456789abcdef 00") + BUBBLE,
        hexbytes("45000014") + bytes(36),  # IPv4
        hexbytes("0002") + BUBBLE,
        b"",
    ],
)
def test_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(ParseError):
        parse_teredo_packet(payload)


def test_auth_header_with_id_and_value() -> None:
    auth = Authentication(NONCE, confirmation=1, client_id=b"client", auth_value=bytes(20))
    packet = TeredoPacket(ipv6=BUBBLE, authentication=auth)
    assert parse_teredo_packet(encode_teredo_packet(packet)) == packet


ipv6s = st.integers(0, 2**128 - 1).map(IPv6Address)
auths = st.builds(
    Authentication,
    nonce=st.binary(min_size=8, max_size=8),
    confirmation=st.integers(0, 255),
    client_id=st.binary(max_size=40),
    auth_value=st.binary(max_size=40),
)
origins = st.builds(
    OriginIndication, st.integers(0, 2**32 - 1).map(IPv4Address), st.integers(0, 0xFFFF)
)
trailers = st.one_of(
    st.binary(min_size=4, max_size=4).map(lambda v: Trailer(1, v)),
    st.binary(min_size=2, max_size=2).map(lambda v: Trailer(5, v)),
    st.binary(min_size=4, max_size=4).map(lambda v: Trailer(4, v)),
)


@given(
    ipv6s, ipv6s, st.binary(max_size=200), st.none() | auths, st.none() | origins,
    st.lists(trailers, max_size=3),
)  # fmt: skip
def test_teredo_packet_round_trip(
    source: IPv6Address,
    destination: IPv6Address,
    payload: bytes,
    auth: Authentication | None,
    origin: OriginIndication | None,
    trailer_list: list[Trailer],
) -> None:
    from teredo.core.wire import encode_ipv6_packet

    ipv6 = encode_ipv6_packet(source, destination, 17, payload)
    packet = TeredoPacket(ipv6, auth, origin, tuple(trailer_list))
    assert parse_teredo_packet(encode_teredo_packet(packet)) == packet


@given(st.binary(max_size=120))
def test_arbitrary_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_teredo_packet(data)


@given(st.binary(min_size=40, max_size=200))
def test_arbitrary_ra_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_router_advertisement(bytes([0x60]) + data)
