"""Teredo on the wire: the UDP payload, its headers, and the IPv6/ICMPv6 pieces Teredo uses.

UDP payload grammar (RFC 4380 §5.1.1, RFC 6081 §4)::

    [Authentication] [Origin indication] IPv6 packet [Trailers]

Each part is told apart by its first two bytes: 00 01 authentication, 00 00 origin indication,
a high nibble of 6 an IPv6 header. The IPv6 packet's total length (40 + Payload Length) must not
exceed what is left (RFC 6081 §4 relaxes RFC 4380's "equal"); the rest are trailers, read by
`teredo.core.trailers`.

The verbs: `parse_x(data) -> X` reads a whole message and `encode_x(...) -> bytes` writes one;
`pull_x(data, offset)` and `push_x(x)` do the same for the parts of a UDP payload. Anything
malformed raises `ParseError`, never `struct.error`, `IndexError` or `ValueError` from deep
inside; `is_x(packet) -> bool` answers without raising.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from teredo.core.address import IPV4_MASK, PORT_MASK, Endpoint, endpoint
from teredo.core.errors import ParseError
from teredo.core.record import record  # a frozen dataclass without dataclasses' start-up cost
from teredo.core.trailers import NO_TRAILERS, Trailer, encode_trailers, parse_trailers

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

IPV6_HEADER_LENGTH: Final = 40  # RFC 8200 §3
ICMPV6_ERROR_LIMIT: Final = 1280  # RFC 4443 §2.4 (c): an error message fits the minimum MTU
ALL_NODES: Final = IPv6Address("ff02::1")  # RFC 4291; local discovery (RFC 4380 §5.2.8)
ALL_ROUTERS: Final = IPv6Address("ff02::2")  # RFC 4291; RS destination (RFC 4380 §5.2.1)
AUTH_HEADER_MIN_LENGTH: Final = 13  # RFC 4380 §5.1.1: 4 + nonce 8 + confirmation 1
ORIGIN_INDICATION_LENGTH: Final = 8  # RFC 4380 §5.1.1
NONCE_LENGTH: Final = 8  # RFC 4380 §5.1.1

# RA fields that RFC 4380 §5.3.2 and RFC 4861 §6.1.2 leave open: the values Miredo's server sends.
RA_RETRANS_TIMER_MS: Final = 2000
PIO_FLAG_AUTONOMOUS: Final = 0x40
INFINITE_LIFETIME: Final = 0xFFFFFFFF


class NextHeader(IntEnum):
    ICMPV6 = 58
    NO_NEXT_HEADER = 59  # RFC 4380 §2.8: bubbles


class ICMPv6Type(IntEnum):
    DESTINATION_UNREACHABLE = 1
    PACKET_TOO_BIG = 2
    TIME_EXCEEDED = 3
    PARAMETER_PROBLEM = 4
    ECHO_REQUEST = 128
    ECHO_REPLY = 129
    ROUTER_SOLICITATION = 133
    ROUTER_ADVERTISEMENT = 134


class UnreachableCode(IntEnum):  # RFC 4443 §3.1
    NO_ROUTE = 0
    ADMINISTRATIVELY_PROHIBITED = 1
    ADDRESS_UNREACHABLE = 3
    PORT_UNREACHABLE = 4


_BUBBLE_HEADER: Final = bytes((0x60, 0, 0, 0, 0, 0, NextHeader.NO_NEXT_HEADER, 0))


# ---------------------------------------------------------------------------------------------
# Teredo headers


_set = object.__setattr__  # a hot record's own __init__ (see teredo.core.record)


@record
class Authentication:
    """Authentication encapsulation (RFC 4380 §5.1.1); nonce-only when id and value are empty."""

    nonce: bytes
    confirmation: int = 0
    client_id: bytes = b""
    auth_value: bytes = b""

    def __init__(
        self, nonce: bytes, confirmation: int = 0, client_id: bytes = b"", auth_value: bytes = b""
    ) -> None:  # per datagram: written out, as fast as dataclasses' (teredo.core.record)
        _set(self, "nonce", nonce)
        _set(self, "confirmation", confirmation)
        _set(self, "client_id", client_id)
        _set(self, "auth_value", auth_value)


@record
class OriginIndication:
    """Origin indication (RFC 4380 §5.1.1): the real outer source of a relayed packet."""

    address: IPv4Address
    port: int

    def __init__(self, address: IPv4Address, port: int) -> None:  # per datagram (as above)
        _set(self, "address", address)
        _set(self, "port", port)

    @property
    def endpoint(self) -> Endpoint:
        return endpoint(self.address, self.port)


@record
class TeredoPacket:
    """A parsed Teredo UDP payload.

    `trailers` holds the known RFC 6081 trailers in order (`teredo.core.trailers`);
    `malformed_trailers` is set when their processing stopped at a malformed one (RFC 6081
    §5.1.2): the receiver counts it, and uses the packet and the trailers before it.
    """

    ipv6: bytes
    authentication: Authentication | None = None
    origin: OriginIndication | None = None
    trailers: tuple[Trailer, ...] = ()
    malformed_trailers: bool = False

    def __init__(
        self,
        ipv6: bytes,
        authentication: Authentication | None = None,
        origin: OriginIndication | None = None,
        trailers: tuple[Trailer, ...] = (),
        malformed_trailers: bool = False,
    ) -> None:  # per datagram (as above)
        _set(self, "ipv6", ipv6)
        _set(self, "authentication", authentication)
        _set(self, "origin", origin)
        _set(self, "trailers", trailers)
        _set(self, "malformed_trailers", malformed_trailers)


def push_authentication(auth: Authentication) -> bytes:
    if len(auth.nonce) != NONCE_LENGTH:
        raise ValueError("the authentication nonce is 8 bytes")
    if len(auth.client_id) > 255 or len(auth.auth_value) > 255:
        raise ValueError("client id and authentication value are at most 255 bytes")
    return (
        bytes((0, 1, len(auth.client_id), len(auth.auth_value)))
        + auth.client_id
        + auth.auth_value
        + auth.nonce
        + bytes((auth.confirmation,))
    )


def pull_authentication(data: bytes, offset: int = 0) -> tuple[Authentication, int]:
    """Parse an authentication header at `offset`; return it and the offset after it."""
    if len(data) - offset < AUTH_HEADER_MIN_LENGTH or data[offset : offset + 2] != b"\x00\x01":
        raise ParseError("truncated or missing authentication header")
    id_length, auth_length = data[offset + 2], data[offset + 3]
    end = offset + AUTH_HEADER_MIN_LENGTH + id_length + auth_length
    if len(data) < end:
        raise ParseError("authentication header longer than the packet")
    start = offset + 4
    return (
        Authentication(
            client_id=bytes(data[start : start + id_length]),
            auth_value=bytes(data[start + id_length : start + id_length + auth_length]),
            nonce=bytes(data[end - 9 : end - 1]),
            confirmation=data[end - 1],
        ),
        end,
    )


def push_origin_indication(origin: OriginIndication) -> bytes:
    return struct.pack("!HHI", 0, origin.port ^ PORT_MASK, int(origin.address) ^ IPV4_MASK)


def pull_origin_indication(data: bytes, offset: int = 0) -> tuple[OriginIndication, int]:
    if len(data) - offset < ORIGIN_INDICATION_LENGTH or data[offset : offset + 2] != b"\x00\x00":
        raise ParseError("truncated or missing origin indication")
    _, port, address = struct.unpack_from("!HHI", data, offset)
    return (
        OriginIndication(IPv4Address(address ^ IPV4_MASK), port ^ PORT_MASK),
        offset + ORIGIN_INDICATION_LENGTH,
    )


def ipv6_total_length(data: bytes, offset: int = 0) -> int:
    """Check an IPv6 header at `offset` and return the packet's total length (header + payload).

    RFC 6081 §4: the total length must be at most what the datagram holds; the rest is trailers.
    """
    if len(data) - offset < IPV6_HEADER_LENGTH:
        raise ParseError("IPv6 packet shorter than its 40-byte header")
    if data[offset] >> 4 != 6:
        raise ParseError("not an IPv6 packet (version is not 6)")
    total = IPV6_HEADER_LENGTH + ((data[offset + 4] << 8) | data[offset + 5])
    if total > len(data) - offset:
        raise ParseError("IPv6 payload length exceeds the datagram")
    return total


def parse_teredo_packet(data: bytes) -> TeredoPacket:
    """Parse a Teredo UDP payload (RFC 4380 §5.1.1 order, RFC 6081 §4 trailers)."""
    offset = 0
    authentication = origin = None
    if data[:2] == b"\x00\x01":
        authentication, offset = pull_authentication(data, offset)
    if data[offset : offset + 2] == b"\x00\x00":
        origin, offset = pull_origin_indication(data, offset)
    elif data[offset : offset + 2] == b"\x00\x01":
        # RFC 4380 §5.1.1 puts the authentication header first; an origin indication before
        # one, or two of them, is not a legal order (our reading: the RFC names no other).
        raise ParseError("authentication header in the wrong place")
    total = ipv6_total_length(data, offset)
    end = offset + total
    # RFC 6081 §4: what follows the IPv6 packet is trailers (ParseError: discard the packet).
    found = parse_trailers(data[end:]) if end < len(data) else NO_TRAILERS
    return TeredoPacket(
        ipv6=bytes(data[offset:end]),
        authentication=authentication,
        origin=origin,
        trailers=found.trailers,
        malformed_trailers=found.malformed,
    )


def encode_teredo_packet(packet: TeredoPacket) -> bytes:
    parts = []
    if packet.authentication is not None:
        parts.append(push_authentication(packet.authentication))
    if packet.origin is not None:
        parts.append(push_origin_indication(packet.origin))
    parts.append(packet.ipv6)
    parts.append(encode_trailers(packet.trailers))
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# IPv6 and ICMPv6


@record
class IPv6Header:
    source: IPv6Address
    destination: IPv6Address
    next_header: int
    payload_length: int
    hop_limit: int
    traffic_class: int = 0
    flow_label: int = 0

    def __init__(
        self,
        source: IPv6Address,
        destination: IPv6Address,
        next_header: int,
        payload_length: int,
        hop_limit: int,
        traffic_class: int = 0,
        flow_label: int = 0,
    ) -> None:  # per packet (as above)
        _set(self, "source", source)
        _set(self, "destination", destination)
        _set(self, "next_header", next_header)
        _set(self, "payload_length", payload_length)
        _set(self, "hop_limit", hop_limit)
        _set(self, "traffic_class", traffic_class)
        _set(self, "flow_label", flow_label)


def parse_ipv6_header(packet: bytes) -> IPv6Header:
    ipv6_total_length(packet)
    word, payload_length, next_header, hop_limit = struct.unpack_from("!IHBB", packet)
    return IPv6Header(
        source=IPv6Address(bytes(packet[8:24])),
        destination=IPv6Address(bytes(packet[24:40])),
        next_header=next_header,
        payload_length=payload_length,
        hop_limit=hop_limit,
        traffic_class=(word >> 20) & 0xFF,
        flow_label=word & 0xFFFFF,
    )


def encode_ipv6_packet(
    source: IPv6Address | bytes,
    destination: IPv6Address | bytes,
    next_header: int,
    payload: bytes,
    hop_limit: int = 64,
) -> bytes:
    """An IPv6 packet: the fixed header (RFC 8200 §3) and `payload`."""
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
        + _packed(source)
        + _packed(destination)
        + payload
    )


def _packed(address: IPv6Address | bytes) -> bytes:
    return address if isinstance(address, bytes) else address.packed


def ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """The folded 16-bit one's complement sum of `data` (RFC 1071), 0 only for all zeros.

    A sum of 16-bit words in one's complement arithmetic is the number they form modulo 0xFFFF
    (because 2**16 = 1 mod 0xFFFF): one `int.from_bytes` and one remainder, ~3 us for 1280 bytes.
    The C accelerator has a faster twin (`teredo.adapters.accel`).
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8  # an odd trailing byte is padded with a zero byte
    if not value:
        return 0
    return value % 0xFFFF or 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's complement checksum (RFC 1071): the complement of the sum."""
    return ~ones_complement_sum(data) & 0xFFFF


def icmpv6_checksum(source: bytes, destination: bytes, message: bytes) -> int:
    """ICMPv6 checksum over the IPv6 pseudo-header (RFC 4443 §2.3, RFC 8200 §8.1).

    `message` is the ICMPv6 message with its checksum field as it stands; pass zeros to compute,
    or the received message to verify (a correct one yields 0).
    """
    pseudo = source + destination + struct.pack("!I3xB", len(message), NextHeader.ICMPV6)
    return internet_checksum(pseudo + message)


def encode_icmpv6(
    source: IPv6Address | bytes,
    destination: IPv6Address | bytes,
    kind: int,
    code: int,
    body: bytes,
    hop_limit: int = 64,
) -> bytes:
    """An IPv6 packet carrying an ICMPv6 message; `body` follows type, code and checksum."""
    message = bytes((kind, code, 0, 0)) + body
    checksum = icmpv6_checksum(_packed(source), _packed(destination), message)
    message = message[:2] + checksum.to_bytes(2, "big") + message[4:]
    return encode_ipv6_packet(source, destination, NextHeader.ICMPV6, message, hop_limit)


def icmpv6_message(packet: bytes) -> tuple[int, int, bytes] | None:
    """(type, code, body) of an IPv6 packet that is ICMPv6 with a valid checksum, else None.

    `body` is what follows type, code and checksum. Extension headers are not followed: Teredo's
    control messages (RS, RA, echo) never carry them.
    """
    if len(packet) < IPV6_HEADER_LENGTH + 4 or packet[6] != NextHeader.ICMPV6:
        return None
    end = IPV6_HEADER_LENGTH + ((packet[4] << 8) | packet[5])
    message = packet[IPV6_HEADER_LENGTH:end]
    if len(message) < 4 or icmpv6_checksum(packet[8:24], packet[24:40], message) != 0:
        return None
    return message[0], message[1], bytes(message[4:])


def encode_bubble(
    source: IPv6Address | bytes, destination: IPv6Address | bytes, hop_limit: int = 0
) -> bytes:
    """A bubble: an IPv6 header with no payload, next header 59 (RFC 4380 §2.8)."""
    if hop_limit == 0 and type(source) is bytes and type(destination) is bytes:
        return _BUBBLE_HEADER + source + destination  # the packet paths' case: no objects
    return encode_ipv6_packet(source, destination, NextHeader.NO_NEXT_HEADER, b"", hop_limit)


def is_bubble(packet: bytes | bytearray | memoryview) -> bool:
    """Whether an IPv6 packet is a bubble: payload length 0, next header 59 (RFC 4380 §2.8)."""
    return len(packet) >= IPV6_HEADER_LENGTH and packet[4:7] == b"\x00\x00\x3b"


def encode_router_solicitation(source: IPv6Address) -> bytes:
    """An RS from a client link-local address to ff02::2, no options (RFC 4380 §5.2.1)."""
    return encode_icmpv6(
        source, ALL_ROUTERS, ICMPv6Type.ROUTER_SOLICITATION, 0, bytes(4), hop_limit=255
    )


def is_router_solicitation(packet: bytes) -> bool:
    """A valid RS (RFC 4861 §6.1.1: hop limit 255, code 0, checksum, at least 8 bytes)."""
    message = icmpv6_message(packet)
    return (
        message is not None
        and message[0] == ICMPv6Type.ROUTER_SOLICITATION
        and message[1] == 0
        and len(message[2]) >= 4
        and packet[7] == 255
    )


@record
class PrefixInformation:
    """Prefix Information option (RFC 4861 §4.6.2)."""

    prefix: IPv6Address
    prefix_length: int = 64
    flags: int = PIO_FLAG_AUTONOMOUS
    valid_lifetime: int = INFINITE_LIFETIME
    preferred_lifetime: int = INFINITE_LIFETIME


@record
class RouterAdvertisement:
    """The parts of an RA Teredo uses (RFC 4380 §5.3.2, RFC 4861 §4.2)."""

    source: IPv6Address
    destination: IPv6Address
    prefixes: tuple[PrefixInformation, ...]
    mtu: int | None = None
    cur_hop_limit: int = 0
    flags: int = 0
    router_lifetime: int = 0
    reachable_time: int = 0
    retrans_timer: int = RA_RETRANS_TIMER_MS
    options: tuple[tuple[int, bytes], ...] = ()  # the others, as received: not compared
    __uncompared__ = ("options",)


def encode_router_advertisement(ra: RouterAdvertisement) -> bytes:
    """Encode `ra` as an IPv6 packet (hop limit 255)."""
    body = struct.pack(
        "!BBHII", ra.cur_hop_limit, ra.flags, ra.router_lifetime, ra.reachable_time,
        ra.retrans_timer,
    )  # fmt: skip
    for pio in ra.prefixes:
        body += struct.pack(
            "!BBBBIII", 3, 4, pio.prefix_length, pio.flags, pio.valid_lifetime,
            pio.preferred_lifetime, 0,
        ) + pio.prefix.packed  # fmt: skip
    if ra.mtu is not None:
        body += struct.pack("!BBHI", 5, 1, 0, ra.mtu)
    return encode_icmpv6(
        ra.source, ra.destination, ICMPv6Type.ROUTER_ADVERTISEMENT, 0, body, hop_limit=255
    )


def parse_router_advertisement(packet: bytes) -> RouterAdvertisement:
    """Parse and validate an RA per RFC 4861 §6.1.2; ParseError when invalid.

    Checks: ICMPv6 type 134, code 0, valid checksum, hop limit 255, link-local source, at least
    16 bytes, options well formed with non-zero lengths.
    """
    header = parse_ipv6_header(packet)
    message = icmpv6_message(packet)
    if message is None:
        raise ParseError("not ICMPv6, or a bad checksum")
    kind, code, body = message
    if kind != ICMPv6Type.ROUTER_ADVERTISEMENT or code != 0:
        raise ParseError("not a router advertisement")
    if header.hop_limit != 255 or not header.source.is_link_local:
        raise ParseError("router advertisement not from an on-link router")
    if len(body) < 12:
        raise ParseError("router advertisement shorter than 16 bytes")
    hop, flags, lifetime, reachable, retrans = struct.unpack_from("!BBHII", body)
    prefixes = []
    mtu = None
    options = []
    offset = 12
    while offset < len(body):
        if len(body) - offset < 2 or body[offset + 1] == 0:
            raise ParseError("malformed router advertisement option")
        kind, length = body[offset], body[offset + 1] * 8
        if len(body) - offset < length:
            raise ParseError("router advertisement option longer than the message")
        option = body[offset : offset + length]
        if kind == 3:
            if length != 32:
                raise ParseError("prefix information option is not 32 bytes")
            plen, pflags, valid, preferred = struct.unpack_from("!BBII", option, 2)
            prefixes.append(
                PrefixInformation(IPv6Address(option[16:32]), plen, pflags, valid, preferred)
            )
        elif kind == 5:
            if length != 8:
                raise ParseError("MTU option is not 8 bytes")
            mtu = struct.unpack_from("!I", option, 4)[0]
        else:
            options.append((kind, bytes(option)))
        offset += length
    return RouterAdvertisement(
        source=header.source,
        destination=header.destination,
        prefixes=tuple(prefixes),
        mtu=mtu,
        cur_hop_limit=hop,
        flags=flags,
        router_lifetime=lifetime,
        reachable_time=reachable,
        retrans_timer=retrans,
        options=tuple(options),
    )


@record
class Echo:
    """An ICMPv6 echo request or reply (RFC 4443 §4)."""

    source: IPv6Address
    destination: IPv6Address
    is_request: bool
    identifier: int
    sequence: int
    data: bytes


def encode_echo(
    source: IPv6Address | bytes,
    destination: IPv6Address | bytes,
    identifier: int,
    sequence: int,
    data: bytes,
    is_request: bool = True,
    hop_limit: int = 64,
) -> bytes:
    kind = ICMPv6Type.ECHO_REQUEST if is_request else ICMPv6Type.ECHO_REPLY
    body = struct.pack("!HH", identifier, sequence) + data
    return encode_icmpv6(source, destination, kind, 0, body, hop_limit)


def is_echo(packet: bytes) -> bool:
    """Whether `packet` is a well-formed ICMPv6 echo request or reply (checksum included)."""
    message = icmpv6_message(packet)
    return (
        message is not None
        and message[0] in (ICMPv6Type.ECHO_REQUEST, ICMPv6Type.ECHO_REPLY)
        and message[1] == 0
        and len(message[2]) >= 4
    )


def parse_echo(packet: bytes) -> Echo:
    """The echo request or reply in `packet` (RFC 4443 §4); ParseError if it is not one or its
    checksum is wrong."""
    if not is_echo(packet):
        raise ParseError("not an ICMPv6 echo request or reply with a valid checksum")
    message = icmpv6_message(packet)
    assert message is not None
    identifier, sequence = struct.unpack_from("!HH", message[2])
    return Echo(
        source=IPv6Address(bytes(packet[8:24])),
        destination=IPv6Address(bytes(packet[24:40])),
        is_request=message[0] == ICMPv6Type.ECHO_REQUEST,
        identifier=identifier,
        sequence=sequence,
        data=message[2][4:],
    )


def encode_icmpv6_error(
    source: IPv6Address, kind: int, code: int, invoking_packet: bytes, parameter: int = 0
) -> bytes:
    """An ICMPv6 error about `invoking_packet`, sent back to its source (RFC 4443 §2.4).

    As much of the invoking packet as fits is quoted, keeping the whole error within 1280 bytes.
    """
    destination = IPv6Address(bytes(invoking_packet[8:24]))
    room = ICMPV6_ERROR_LIMIT - IPV6_HEADER_LENGTH - 8
    body = struct.pack("!I", parameter) + bytes(invoking_packet[:room])
    return encode_icmpv6(source, destination, kind, code, body)
