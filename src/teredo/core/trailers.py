"""RFC 6081 trailers: the TLVs after a Teredo packet's IPv6 packet (RFC 6081 §4).

On the wire (RFC 6081 §4.1)::

    Type (1) | Length (1) = length of Value | Value (Length bytes)

What a trailer is, in this module:

- `Trailer(type, value)`: one TLV as it was on the wire (`value` excludes type and length). The
  packet parser (`teredo.core.wire.parse_teredo_packet`) keeps the known ones in
  `TeredoPacket.trailers`, in order.
- `NonceTrailer`, `AlternateAddressTrailer`, `NeighborDiscoveryTrailer`, `RandomPortTrailer`:
  what the four trailers of RFC 6081 §4.2-§4.5 mean, built by `decode_trailer` (which checks
  the values the RFC constrains) and turned back into a TLV by `encode_trailer`.

Processing rules (RFC 6081 §5.1.2), in `parse_trailers`:

- trailers are read in order;
- a trailer that does not fit in what is left of the datagram (fewer than 2 bytes, or fewer than
  2 + Length) is malformed, and processing stops there: what came before is kept, the packet
  too;
- a known type whose Length is not the one its section gives is treated the same way (it cannot
  be read as that trailer, and reading on after it would be reading garbage);
- an unknown type is skipped, unless its two highest bits are 01: then the whole packet is
  discarded (RFC 6081 §4.1), which `parse_trailers` says by raising `ParseError`.

Where each trailer may appear (`misplaced`): all four ride on bubbles only (RFC 6081 §4.2-§4.5
name only bubbles); the Alternate Address trailer only in an indirect bubble sent by a client
(RFC 6081 §4.3: "MUST NOT be present in any packets other than indirect bubbles"), which reaches
its peer with the server's origin indication. A receiver ignores, and counts, a trailer where it
may not be; the packet itself is processed as if it were absent.

Nothing here raises anything but `ParseError` for bad input, and `ValueError` for values our own
code tries to send that the RFC forbids.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from teredo.core.address import Endpoint, endpoint, ipv4_value
from teredo.core.errors import ParseError
from teredo.core.record import record  # a frozen dataclass without dataclasses' start-up cost

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final


class TrailerType(IntEnum):  # RFC 6081 §4
    NONCE = 0x01  # §4.2
    # The Random Port trailer has two type values in RFC 6081: §4.5 (the message syntax) says
    # 0x05, while the IANA table of §9 registers 0x02 for it. Both are accepted on receipt, so
    # that a peer built from either reading is understood; we send 0x05, the value of the
    # normative message definition (and the one a peer reading §4.5 checks for). Both have the
    # top bits 00, so a peer that knows only the other value skips ours without harm.
    RANDOM_PORT_IANA = 0x02  # §9
    ALTERNATE_ADDRESS = 0x03  # §4.3
    NEIGHBOR_DISCOVERY = 0x04  # §4.4
    RANDOM_PORT = 0x05  # §4.5


class DiscoveryType(IntEnum):  # RFC 6081 §4.4
    SOLICITATION = 0x00  # TeredoDiscoverySolicitation
    ADVERTISEMENT = 0x01  # TeredoDiscoveryAdvertisement


NONCE_TRAILER_LENGTH: Final = 4  # RFC 6081 §4.2
ALTERNATE_ADDRESS_ENTRY_LENGTH: Final = 6  # RFC 6081 §4.3: IPv4 address and port
ALTERNATE_ADDRESS_MAX_ENTRIES: Final = 4  # RFC 6081 §4.3: Length 8 to 26
NEIGHBOR_DISCOVERY_LENGTH: Final = 4  # RFC 6081 §4.4
RANDOM_PORT_LENGTH: Final = 2  # RFC 6081 §4.5

# The Length each known type must have (RFC 6081 §4.2-§4.5).
TRAILER_LENGTHS: Final[dict[int, frozenset[int]]] = {
    TrailerType.NONCE: frozenset({NONCE_TRAILER_LENGTH}),
    TrailerType.ALTERNATE_ADDRESS: frozenset(
        2 + ALTERNATE_ADDRESS_ENTRY_LENGTH * n for n in range(1, ALTERNATE_ADDRESS_MAX_ENTRIES + 1)
    ),  # 8, 14, 20, 26
    TrailerType.NEIGHBOR_DISCOVERY: frozenset({NEIGHBOR_DISCOVERY_LENGTH}),
    TrailerType.RANDOM_PORT: frozenset({RANDOM_PORT_LENGTH}),
    TrailerType.RANDOM_PORT_IANA: frozenset({RANDOM_PORT_LENGTH}),
}

_DISCARD_BITS: Final = 0b01  # RFC 6081 §4.1: unknown type with these top bits: drop the packet
_NONCE_HEADER: Final = bytes((TrailerType.NONCE, NONCE_TRAILER_LENGTH))


@record
class Trailer:
    """An RFC 6081 §4.1 trailer, TLV. `value` excludes type and length."""

    type: int
    value: bytes

    def __init__(self, type: int, value: bytes) -> None:
        object.__setattr__(self, "type", type)  # per datagram: written out (core.record)
        object.__setattr__(self, "value", value)


@record
class ParsedTrailers:
    """What `parse_trailers` found: the known trailers in order, and whether processing
    stopped at a malformed one (RFC 6081 §5.1.2) or skipped unknown ones."""

    trailers: tuple[Trailer, ...] = ()
    malformed: bool = False
    skipped: int = 0


NO_TRAILERS: Final = ParsedTrailers()


def parse_trailers(data: bytes | memoryview) -> ParsedTrailers:
    """The trailers in `data` (what follows the IPv6 packet), by RFC 6081 §5.1.2.

    Raises ParseError only for an unknown type whose top bits are 01 (the packet must be
    discarded, RFC 6081 §4.1); anything else malformed ends processing with `malformed` set.
    """
    trailers: list[Trailer] = []
    skipped = 0
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < 2:
            return ParsedTrailers(tuple(trailers), True, skipped)
        kind, length = data[offset], data[offset + 1]
        if end - offset < 2 + length:
            return ParsedTrailers(tuple(trailers), True, skipped)
        lengths = TRAILER_LENGTHS.get(kind)
        if lengths is not None:
            if length not in lengths:
                return ParsedTrailers(tuple(trailers), True, skipped)
            trailers.append(Trailer(kind, bytes(data[offset + 2 : offset + 2 + length])))
        elif kind >> 6 == _DISCARD_BITS:
            raise ParseError(f"unknown trailer type {kind:#04x} that demands discarding")
        else:
            skipped += 1  # RFC 6081 §4.1: top bits 00, 10 or 11: skip over it
        offset += 2 + length
    return ParsedTrailers(tuple(trailers), False, skipped)


def encode_trailers(trailers: tuple[Trailer, ...] | list[Trailer]) -> bytes:
    """Trailers on the wire, in order (RFC 6081 §4.1)."""
    return b"".join(bytes((t.type, len(t.value))) + t.value for t in trailers)


# ---------------------------------------------------------------------------------------------
# The four trailers' meanings


@record
class NonceTrailer:
    """RFC 6081 §4.2: a 4-byte nonce, in indirect and direct bubbles."""

    nonce: bytes


@record
class AlternateAddressTrailer:
    """RFC 6081 §4.3: 1-4 other (address, port) pairs the sender can be reached at."""

    entries: tuple[Endpoint, ...]


@record
class NeighborDiscoveryTrailer:
    """RFC 6081 §4.4: whether a direct bubble solicits an answer or is one."""

    discovery: DiscoveryType


@record
class RandomPortTrailer:
    """RFC 6081 §4.5: the external port the sender predicts its NAT gave it toward us."""

    port: int


KnownTrailer = NonceTrailer | AlternateAddressTrailer | NeighborDiscoveryTrailer | RandomPortTrailer


def decode_trailer(trailer: Trailer) -> KnownTrailer:
    """What a known trailer says; ParseError when its value breaks its section's rules."""
    kind, value = trailer.type, trailer.value
    if len(value) not in TRAILER_LENGTHS.get(kind, ()):
        raise ParseError(f"trailer type {kind:#04x} with a length its section does not allow")
    if kind == TrailerType.NONCE:
        return NonceTrailer(value)
    if kind == TrailerType.ALTERNATE_ADDRESS:
        # The 2 reserved bytes are ignored on receipt (RFC 6081 §4.3).
        return AlternateAddressTrailer(alternate_addresses(trailer))
    if kind == TrailerType.NEIGHBOR_DISCOVERY:
        # The 3 reserved bytes are ignored on receipt (RFC 6081 §4.4).
        if value[0] not in (DiscoveryType.SOLICITATION, DiscoveryType.ADVERTISEMENT):
            raise ParseError(f"unknown DiscoveryType {value[0]:#04x}")
        return NeighborDiscoveryTrailer(DiscoveryType(value[0]))
    # TrailerType.RANDOM_PORT or RANDOM_PORT_IANA (see TrailerType).
    return RandomPortTrailer(int.from_bytes(value, "big"))


def encode_trailer(trailer: KnownTrailer) -> Trailer:
    """The TLV for `trailer`; ValueError for a value RFC 6081 §4 forbids sending."""
    if isinstance(trailer, NonceTrailer):
        if len(trailer.nonce) != NONCE_TRAILER_LENGTH:
            raise ValueError("an RFC 6081 nonce trailer carries 4 bytes")
        return Trailer(TrailerType.NONCE, bytes(trailer.nonce))
    if isinstance(trailer, AlternateAddressTrailer):
        entries = trailer.entries
        if not 1 <= len(entries) <= ALTERNATE_ADDRESS_MAX_ENTRIES:
            raise ValueError("an alternate address trailer carries 1 to 4 entries")
        value = bytearray(2)  # Reserved, 0 (RFC 6081 §4.3)
        for host, port in entries:
            address = ipv4_value(host)
            if address < 0 or not _is_unicast(address) or not 0 < port <= 0xFFFF:
                raise ValueError(f"{host}:{port} is not a unicast address and non-zero port")
            value += struct.pack("!IH", address, port)
        return Trailer(TrailerType.ALTERNATE_ADDRESS, bytes(value))
    if isinstance(trailer, NeighborDiscoveryTrailer):
        return Trailer(TrailerType.NEIGHBOR_DISCOVERY, bytes((trailer.discovery, 0, 0, 0)))
    if not 0 <= trailer.port <= 0xFFFF:
        raise ValueError(f"port {trailer.port} is not a 16-bit number")
    return Trailer(TrailerType.RANDOM_PORT, trailer.port.to_bytes(2, "big"))  # §4.5's type


def alternate_addresses(trailer: Trailer) -> tuple[Endpoint, ...]:
    """The entries of an Alternate Address trailer (RFC 6081 §4.3); ParseError when one is not
    a unicast address with a non-zero port."""
    value = trailer.value
    entries = []
    for offset in range(2, len(value) - ALTERNATE_ADDRESS_ENTRY_LENGTH + 1, 6):
        address, port = struct.unpack_from("!IH", value, offset)
        if port == 0 or not _is_unicast(address):
            raise ParseError("alternate address entry is not a unicast address and port")
        entries.append(endpoint(address, port))
    return tuple(entries)


def _is_unicast(address: int) -> bool:
    """RFC 6081 §4.3's "valid unicast address": not 0.0.0.0/8, loopback, multicast, reserved
    or broadcast (RFC 1122 §3.2.1.3, RFC 5771, RFC 1112)."""
    first = address >> 24
    return first not in (0, 127) and first < 224


# ---------------------------------------------------------------------------------------------
# Where each trailer may be


def misplaced(trailer: Trailer, *, bubble: bool, indirect: bool) -> bool:
    """Whether `trailer` may not be where it was received: on anything but a bubble
    (RFC 6081 §4.2-§4.5), or, for an Alternate Address trailer, on anything but an indirect
    bubble (one that came through a server, with an origin indication; RFC 6081 §4.3)."""
    if not bubble:
        return True
    return trailer.type == TrailerType.ALTERNATE_ADDRESS and not indirect


# ---------------------------------------------------------------------------------------------
# The nonce trailer, the one the symmetric NAT support uses on every bubble (RFC 6081 §5.2)


def nonce_trailer(nonce: bytes) -> Trailer:
    return encode_trailer(NonceTrailer(nonce))


def nonce_trailer_bytes(nonce: bytes) -> bytes:
    """A nonce trailer on the wire (RFC 6081 §4.2): type 0x01, length 4, the nonce."""
    return _NONCE_HEADER + nonce


def trailer_nonce(trailers: tuple[Trailer, ...]) -> bytes | None:
    """The value of the first nonce trailer, if any (RFC 6081 §4.2)."""
    for trailer in trailers:
        if trailer.type == TrailerType.NONCE:
            return trailer.value
    return None


def alternate_address_bytes(entries: tuple[Endpoint, ...] | list[Endpoint]) -> bytes:
    """An Alternate Address trailer on the wire (RFC 6081 §4.3)."""
    return encode_trailers([encode_trailer(AlternateAddressTrailer(tuple(entries)))])
