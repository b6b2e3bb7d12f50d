"""RFC 6081 trailers (teredo.core.trailers): byte-exact vectors, processing rules, fuzzing.

Each vector is written from the layout in RFC 6081's section for its trailer: type, length,
then the fields in the order and width the figure gives, in network byte order.
"""

from __future__ import annotations

import contextlib
from ipaddress import IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teredo.core.errors import ParseError
from teredo.core.trailers import (
    AlternateAddressTrailer,
    DiscoveryType,
    KnownTrailer,
    NeighborDiscoveryTrailer,
    NonceTrailer,
    ParsedTrailers,
    RandomPortTrailer,
    Trailer,
    TrailerType,
    alternate_addresses,
    decode_trailer,
    encode_trailer,
    encode_trailers,
    misplaced,
    nonce_trailer_bytes,
    parse_trailers,
)
from teredo.core.wire import encode_bubble, parse_teredo_packet

BUBBLE = encode_bubble(IPv6Address("2001::1"), IPv6Address("2001::2"))

# (wire bytes, what they mean): one per trailer, from the RFC's figures.
VECTORS: list[tuple[str, KnownTrailer]] = [
    # RFC 6081 §4.2: Type 0x01, Length 0x04, Nonce (4 bytes).
    ("01 04 deadbeef", NonceTrailer(bytes.fromhex("deadbeef"))),
    # RFC 6081 §4.3: Type 0x03, Length 2 + 6n, Reserved 0x0000, then IPv4 (4) + port (2) each.
    ("03 08 0000 cb007101 0ed5", AlternateAddressTrailer((("203.0.113.1", 3797),))),
    (
        "03 0e 0000 c0a8010a 0fff c0a80100 0fff",
        AlternateAddressTrailer((("192.168.1.10", 4095), ("192.168.1.0", 4095))),
    ),
    (
        "03 1a 0000 0a000001 0001 0a000002 0002 0a000003 0003 0a000004 ffff",
        AlternateAddressTrailer(
            (("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3), ("10.0.0.4", 65535))
        ),
    ),
    # RFC 6081 §4.4: Type 0x04, Length 0x04, DiscoveryType, Reserved (3 bytes of 0).
    ("04 04 00 000000", NeighborDiscoveryTrailer(DiscoveryType.SOLICITATION)),
    ("04 04 01 000000", NeighborDiscoveryTrailer(DiscoveryType.ADVERTISEMENT)),
    # RFC 6081 §4.5: Type 0x05, Length 0x02, Random Port (the §6.4 example's port 1201).
    ("05 02 04b1", RandomPortTrailer(1201)),
]


@pytest.mark.parametrize(("wire", "meaning"), VECTORS)
def test_vectors_parse_decode_and_encode_byte_exact(wire: str, meaning: KnownTrailer) -> None:
    data = bytes.fromhex(wire)
    parsed = parse_trailers(data)
    assert parsed == ParsedTrailers((Trailer(data[0], data[2:]),))
    assert decode_trailer(parsed.trailers[0]) == meaning
    assert encode_trailers([encode_trailer(meaning)]) == data


def test_random_port_accepts_both_type_values_and_sends_the_one_of_section_4_5() -> None:
    # RFC 6081 §9 (IANA) registers 0x02 for what §4.5 calls 0x05: both are read.
    (iana,) = parse_trailers(bytes.fromhex("02 02 04b1")).trailers
    assert decode_trailer(iana) == RandomPortTrailer(1201)
    assert encode_trailer(RandomPortTrailer(1201)).type == 0x05


def test_reserved_fields_are_ignored_on_receipt() -> None:
    (nd,) = parse_trailers(bytes.fromhex("04 04 01 ffffff")).trailers
    assert decode_trailer(nd) == NeighborDiscoveryTrailer(DiscoveryType.ADVERTISEMENT)
    (alt,) = parse_trailers(bytes.fromhex("03 08 ffff cb007101 0ed5")).trailers
    assert decode_trailer(alt) == AlternateAddressTrailer((("203.0.113.1", 3797),))


@pytest.mark.parametrize(
    "value",
    [
        "0000 00000001 0001",  # 0.0.0.1: not unicast
        "0000 e0000001 0001",  # multicast
        "0000 ffffffff 0001",  # broadcast
        "0000 7f000001 0001",  # loopback
        "0000 cb007101 0000",  # port 0
    ],
)
def test_alternate_address_entries_must_be_unicast_with_a_port(value: str) -> None:
    trailer = Trailer(TrailerType.ALTERNATE_ADDRESS, bytes.fromhex(value))
    with pytest.raises(ParseError):
        alternate_addresses(trailer)
    with pytest.raises(ParseError):
        decode_trailer(trailer)


def test_unknown_discovery_type_is_refused() -> None:
    with pytest.raises(ParseError):
        decode_trailer(Trailer(TrailerType.NEIGHBOR_DISCOVERY, bytes.fromhex("02000000")))


@pytest.mark.parametrize(
    "meaning",
    [
        NonceTrailer(b"abc"),
        AlternateAddressTrailer(()),
        AlternateAddressTrailer(tuple(("203.0.113.1", p) for p in range(1, 6))),
        AlternateAddressTrailer((("224.0.0.1", 1),)),
        AlternateAddressTrailer((("203.0.113.1", 0),)),
        AlternateAddressTrailer((("not an address", 1),)),
        RandomPortTrailer(65536),
    ],
)
def test_what_the_rfc_forbids_is_never_sent(meaning: KnownTrailer) -> None:
    with pytest.raises(ValueError):
        encode_trailer(meaning)


def test_unknown_types_are_skipped_or_discard_the_packet_by_their_top_bits() -> None:
    # RFC 6081 §4.1: 00, 10, 11 skip; 01 discards the whole packet.
    for kind in (0x00, 0x3F, 0x80, 0xBF, 0xC0, 0xFF):
        parsed = parse_trailers(bytes((kind, 1, 0xAA)) + nonce_trailer_bytes(b"abcd"))
        assert parsed == ParsedTrailers((Trailer(1, b"abcd"),), skipped=1), hex(kind)
    for kind in (0x40, 0x41, 0x7F):
        with pytest.raises(ParseError):
            parse_trailers(nonce_trailer_bytes(b"abcd") + bytes((kind, 0)))
        with pytest.raises(ParseError):
            parse_teredo_packet(BUBBLE + bytes((kind, 0)))


@pytest.mark.parametrize(
    ("wire", "kept"),
    [
        ("01", 0),  # fewer than 2 bytes left (RFC 6081 §5.1.2, first bullet)
        ("01 04 dead", 0),  # fewer than 2 + Length (second bullet)
        ("01 04 deadbeef 05", 1),
        ("01 04 deadbeef 80 05 00", 1),
        ("01 03 aabbcc 01 04 deadbeef", 0),  # a known type with a length its section refuses
        ("03 09 0000 cb007101 0ed5 00 01 04 deadbeef", 0),
        ("05 01 04 01 04 deadbeef", 0),
    ],
)
def test_processing_stops_at_the_first_malformed_trailer(wire: str, kept: int) -> None:
    parsed = parse_trailers(bytes.fromhex(wire))
    assert parsed.malformed
    assert len(parsed.trailers) == kept
    packet = parse_teredo_packet(BUBBLE + bytes.fromhex(wire))  # the packet itself is kept
    assert packet.ipv6 == BUBBLE and packet.malformed_trailers


def test_trailers_are_processed_in_order() -> None:
    wire = bytes.fromhex("05 02 04b1 01 04 00000001 01 04 00000002 04 04 00 000000")
    kinds = [t.type for t in parse_trailers(wire).trailers]
    assert kinds == [5, 1, 1, 4]


def test_where_each_trailer_may_be() -> None:
    # RFC 6081 §4.2-§4.5: bubbles only; §4.3: the Alternate Address only in indirect bubbles.
    for kind in (TrailerType.NONCE, TrailerType.NEIGHBOR_DISCOVERY, TrailerType.RANDOM_PORT):
        trailer = Trailer(kind, b"")
        assert not misplaced(trailer, bubble=True, indirect=False)
        assert not misplaced(trailer, bubble=True, indirect=True)
        assert misplaced(trailer, bubble=False, indirect=False)
    alternate = Trailer(TrailerType.ALTERNATE_ADDRESS, b"")
    assert not misplaced(alternate, bubble=True, indirect=True)
    assert misplaced(alternate, bubble=True, indirect=False)
    assert misplaced(alternate, bubble=False, indirect=True)


unicast = st.tuples(
    st.integers(1, 126), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)
)
endpoints = st.tuples(
    unicast.map(lambda a: ".".join(map(str, a)))
    | st.sampled_from(["128.0.0.1", "223.255.255.254"]),
    st.integers(1, 0xFFFF),
)
known_trailers: st.SearchStrategy[KnownTrailer] = st.one_of(
    st.binary(min_size=4, max_size=4).map(NonceTrailer),
    st.lists(endpoints, min_size=1, max_size=4).map(lambda e: AlternateAddressTrailer(tuple(e))),
    st.sampled_from(DiscoveryType).map(NeighborDiscoveryTrailer),
    st.integers(0, 0xFFFF).map(RandomPortTrailer),
)


@given(st.lists(known_trailers, max_size=6))
def test_round_trip(meanings: list[KnownTrailer]) -> None:
    wire = encode_trailers([encode_trailer(m) for m in meanings])
    parsed = parse_trailers(wire)
    assert not parsed.malformed
    assert [decode_trailer(t) for t in parsed.trailers] == meanings
    packet = parse_teredo_packet(BUBBLE + wire)
    assert [decode_trailer(t) for t in packet.trailers] == meanings


@given(st.binary(max_size=80))
def test_arbitrary_trailer_bytes_never_raise_anything_but_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parsed = parse_trailers(data)
        for trailer in parsed.trailers:
            with contextlib.suppress(ParseError):
                decode_trailer(trailer)
    with contextlib.suppress(ParseError):
        parse_teredo_packet(BUBBLE + data)


@given(st.lists(known_trailers, min_size=1, max_size=4), st.data())
def test_mutated_trailers_never_raise_anything_but_parse_error(
    meanings: list[KnownTrailer], data: st.DataObject
) -> None:
    wire = bytearray(encode_trailers([encode_trailer(m) for m in meanings]))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(wire) - 1))
        wire[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    with contextlib.suppress(ParseError):
        packet = parse_teredo_packet(BUBBLE + bytes(wire[:cut]))
        for trailer in packet.trailers:
            with contextlib.suppress(ParseError):
                decode_trailer(trailer)
