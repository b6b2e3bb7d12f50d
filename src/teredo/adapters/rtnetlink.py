"""rtnetlink with the standard library: the few messages that configure a Teredo interface.

Why not pyroute2 here: importing it costs a daemon some 150 ms of start-up and 15 MiB of
memory, for the dozen message kinds below. The lab and the tests keep pyroute2.

Theory of operation
-------------------
A request is one netlink message (a `nlmsghdr`, then a fixed family header, then attributes,
each padded to 4 bytes; netlink(7), rtnetlink(7)) sent on an `AF_NETLINK`/`NETLINK_ROUTE`
socket of the calling process's network namespace. The kernel handles an rtnetlink request
while it is being sent, so its answer is already queued when `send` returns: plain blocking
calls on a socket of our own never wait. Every request asks for an acknowledgement
(`NLM_F_ACK`): an `NLMSG_ERROR` message whose error is 0 on success or a negative errno, which
becomes `RtnetlinkError` (an `OSError` with that errno: the caller words the sentence a person
reads). A dump (`NLM_F_DUMP`) answers with messages marked `NLM_F_MULTI` until `NLMSG_DONE`.

Encoding and decoding are pure functions (`encode_*`, `parse_messages`, `parse_attributes`),
checked against hand-written bytes in `tests/unit/test_rtnetlink.py`; `Rtnetlink` is the
_socket. Answers are bounds-checked: a malformed one raises `RtnetlinkError(EBADMSG)`.
"""

from __future__ import annotations

import _socket  # socket.py without its enums and selectors, which cost a launch ~1.5 ms
import errno
import os
import struct
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Address, IPv6Address

from teredo.core.record import record  # a dataclass without dataclasses' start-up cost

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

# netlink(7), <linux/netlink.h>
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x001
NLM_F_MULTI: Final = 0x002
NLM_F_ACK: Final = 0x004
NLM_F_DUMP: Final = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400

# rtnetlink(7), <linux/rtnetlink.h>
RTM_NEWLINK: Final = 16
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26

IFLA_MTU: Final = 4
IFA_ADDRESS: Final = 1
IFA_FLAGS: Final = 8
RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PRIORITY: Final = 6
RTA_TABLE: Final = 15

IFF_UP: Final = 0x1
RT_TABLE_MAIN: Final = 254
RTPROT_STATIC: Final = 4  # what `ip route add` and pyroute2 mark an administrator's route with
RT_SCOPE_UNIVERSE: Final = 0
RTN_UNICAST: Final = 1

HEADER: Final = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
LINK: Final = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
ADDRESS: Final = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
ROUTE: Final = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst/src len, tos, table, protocol,
#                                             scope, type, flags
ATTRIBUTE: Final = struct.Struct("=HH")  # rtattr: length, type
ERROR: Final = struct.Struct("=i")  # nlmsgerr: -errno, then the request's header
U32: Final = struct.Struct("=I")
RECEIVE_BYTES: Final = 65536  # larger than any one answer the kernel queues (a dump part <= 32 KiB)


class RtnetlinkError(OSError):
    """The kernel refused a request (its errno), or answered something we cannot read."""


@record
class Message:
    """One netlink message of an answer: its type and flags, the bytes after the header."""

    type: int
    flags: int
    body: bytes


@record
class AddressEntry:
    """One address of a dump (`RTM_NEWADDR`): interface index, address (IFA_ADDRESS), length."""

    index: int
    address: IPv4Address | IPv6Address
    prefixlen: int


@record
class RouteEntry:
    """One route of a dump or a `get` (`RTM_NEWROUTE`), with the attributes the daemons use."""

    type: int
    table: int
    destination: IPv6Address | None
    prefixlen: int
    output_index: int | None
    metric: int | None


# --- encoding ---------------------------------------------------------------------------------


def _align(length: int) -> int:
    return (length + 3) & ~3


def encode_attribute(kind: int, value: bytes) -> bytes:
    """An rtattr: length, type, value, padded to 4 bytes."""
    length = ATTRIBUTE.size + len(value)
    return ATTRIBUTE.pack(length, kind) + value + bytes(_align(length) - length)


def encode_message(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    """A whole request: the header (NLM_F_REQUEST added), then `body`."""
    return HEADER.pack(HEADER.size + len(body), kind, flags | NLM_F_REQUEST, sequence, 0) + body


def encode_link(index: int, *, flags: int = 0, change: int = 0, mtu: int | None = None) -> bytes:
    """The body of an RTM_NEWLINK that changes `change` flags to `flags` and sets the MTU."""
    body = LINK.pack(_socket.AF_UNSPEC, 0, index, flags, change)
    if mtu is not None:
        body += encode_attribute(IFLA_MTU, U32.pack(mtu))
    return body


def encode_address(
    index: int, address: IPv4Address | IPv6Address, prefixlen: int, flags: int = 0
) -> bytes:
    """The body of an RTM_NEWADDR/RTM_DELADDR (`flags`: IFA_F_*, e.g. IFA_F_NODAD)."""
    family = _socket.AF_INET6 if address.version == 6 else _socket.AF_INET
    body = ADDRESS.pack(family, prefixlen, flags & 0xFF, 0, index)
    body += encode_attribute(IFA_ADDRESS, address.packed)
    if flags:
        body += encode_attribute(IFA_FLAGS, U32.pack(flags))
    return body


def encode_route(
    destination: IPv6Address,
    prefixlen: int,
    *,
    output_index: int | None = None,
    metric: int | None = None,
    gateway: IPv6Address | None = None,
    adding: bool = True,
) -> bytes:
    """The body of an IPv6 RTM_NEWROUTE (`adding`), RTM_DELROUTE or RTM_GETROUTE.

    An added route is a unicast route of the main table marked `static`, as `ip route add`
    makes it; a deletion matches any protocol and type, and any metric when `metric` is None.
    """
    if adding:
        protocol, route_type = RTPROT_STATIC, RTN_UNICAST
    else:
        protocol, route_type = 0, 0
    body = ROUTE.pack(
        _socket.AF_INET6, prefixlen, 0, 0, RT_TABLE_MAIN, protocol, RT_SCOPE_UNIVERSE, route_type, 0
    )
    if prefixlen:
        body += encode_attribute(RTA_DST, destination.packed)
    if output_index is not None:
        body += encode_attribute(RTA_OIF, U32.pack(output_index))
    if gateway is not None:
        body += encode_attribute(RTA_GATEWAY, gateway.packed)
    if metric is not None:
        body += encode_attribute(RTA_PRIORITY, U32.pack(metric))
    return body


def encode_dump(kind: int, family: int) -> bytes:
    """The body of an RTM_GETADDR or RTM_GETROUTE dump of one address family."""
    if kind == RTM_GETADDR:
        return ADDRESS.pack(family, 0, 0, 0, 0)
    return ROUTE.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


# --- decoding ---------------------------------------------------------------------------------


def _malformed(what: str) -> RtnetlinkError:
    return RtnetlinkError(errno.EBADMSG, f"malformed netlink answer: {what}")


def parse_messages(data: bytes) -> Iterator[tuple[int, Message]]:
    """The (sequence, message) pairs of one received datagram."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            raise _malformed("truncated header")
        length, kind, flags, sequence, _port = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            raise _malformed(f"message length {length}")
        yield sequence, Message(kind, flags, data[offset + HEADER.size : offset + length])
        offset += _align(length)


def parse_attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The attributes from `offset` on, by type (nested and repeated ones are not split)."""
    attributes: dict[int, bytes] = {}
    while len(data) - offset >= ATTRIBUTE.size:
        length, kind = ATTRIBUTE.unpack_from(data, offset)
        if length < ATTRIBUTE.size or offset + length > len(data):
            raise _malformed(f"attribute length {length}")
        attributes[kind & 0x3FFF] = data[offset + ATTRIBUTE.size : offset + length]
        offset += _align(length)
    return attributes


def parse_error(body: bytes) -> int:
    """The errno of an NLMSG_ERROR message: 0 for an acknowledgement."""
    if len(body) < ERROR.size:
        raise _malformed("truncated error message")
    (code,) = ERROR.unpack_from(body)
    return -int(code)


def _u32(attributes: Mapping[int, bytes], kind: int) -> int | None:
    value = attributes.get(kind)
    if value is None:
        return None
    if len(value) != U32.size:
        raise _malformed(f"attribute {kind} of {len(value)} bytes")
    return int(U32.unpack(value)[0])


def parse_address(body: bytes) -> AddressEntry | None:
    """An RTM_NEWADDR body; None for an address without IFA_ADDRESS or of another family."""
    if len(body) < ADDRESS.size:
        raise _malformed("truncated ifaddrmsg")
    family, prefixlen, _flags, _scope, index = ADDRESS.unpack_from(body)
    value = parse_attributes(body, ADDRESS.size).get(IFA_ADDRESS)
    if value is None:
        return None
    if family == _socket.AF_INET6 and len(value) == 16:
        return AddressEntry(index, IPv6Address(value), prefixlen)
    if family == _socket.AF_INET and len(value) == 4:
        return AddressEntry(index, IPv4Address(value), prefixlen)
    return None


def parse_route(body: bytes) -> RouteEntry:
    """An IPv6 RTM_NEWROUTE body (RTA_TABLE, when present, overrides the 8-bit table)."""
    if len(body) < ROUTE.size:
        raise _malformed("truncated rtmsg")
    _family, prefixlen, _src, _tos, table, _protocol, _scope, kind, _flags = ROUTE.unpack_from(body)
    attributes = parse_attributes(body, ROUTE.size)
    destination = attributes.get(RTA_DST)
    if destination is not None and len(destination) != 16:
        raise _malformed(f"RTA_DST of {len(destination)} bytes")
    return RouteEntry(
        type=kind,
        table=_u32(attributes, RTA_TABLE) or table,
        destination=IPv6Address(destination) if destination is not None else None,
        prefixlen=prefixlen,
        output_index=_u32(attributes, RTA_OIF),
        metric=_u32(attributes, RTA_PRIORITY),
    )


# --- the socket -------------------------------------------------------------------------------


class Rtnetlink:
    """One NETLINK_ROUTE socket of this network namespace; requests one at a time.

    Raises `RtnetlinkError` with the kernel's errno when it refuses a request, `OSError` when
    the socket itself fails.
    """

    def __init__(self) -> None:
        self._socket = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _socket.NETLINK_ROUTE)
        self._sequence = 0

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, kind: int, body: bytes, flags: int = 0) -> list[Message]:
        """Send one request with NLM_F_ACK; its answers (not the ack) once the kernel acks it."""
        sequence = self._send(kind, flags | NLM_F_ACK, body)
        answers: list[Message] = []
        while True:
            for message in self._receive(sequence):
                if message.type == NLMSG_ERROR:
                    code = parse_error(message.body)
                    if code:
                        raise RtnetlinkError(code, os.strerror(code))
                    return answers
                answers.append(message)

    def dump(self, kind: int, body: bytes) -> list[Message]:
        """Send a dump request; every message up to NLMSG_DONE."""
        sequence = self._send(kind, NLM_F_DUMP, body)
        answers: list[Message] = []
        while True:
            for message in self._receive(sequence):
                if message.type == NLMSG_DONE:
                    return answers
                if message.type == NLMSG_ERROR:
                    code = parse_error(message.body)
                    raise RtnetlinkError(code or errno.EBADMSG, os.strerror(code or errno.EBADMSG))
                answers.append(message)

    # -- the operations the daemons need --

    def set_link(
        self, index: int, *, flags: int = 0, change: int = 0, mtu: int | None = None
    ) -> None:
        self.request(RTM_NEWLINK, encode_link(index, flags=flags, change=change, mtu=mtu))

    def add_address(
        self, index: int, address: IPv4Address | IPv6Address, prefixlen: int, flags: int = 0
    ) -> None:
        """Add an address; EEXIST when it is already there."""
        body = encode_address(index, address, prefixlen, flags)
        self.request(RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_EXCL)

    def remove_address(
        self, index: int, address: IPv4Address | IPv6Address, prefixlen: int
    ) -> None:
        """Remove an address; EADDRNOTAVAIL when it is not there."""
        self.request(RTM_DELADDR, encode_address(index, address, prefixlen))

    def add_route(
        self,
        destination: IPv6Address,
        prefixlen: int,
        index: int,
        metric: int | None,
        gateway: IPv6Address | None = None,
    ) -> None:
        """Add an IPv6 route through interface `index` (and `gateway`, when given); EEXIST
        when the same route is there."""
        body = encode_route(
            destination, prefixlen, output_index=index, metric=metric, gateway=gateway
        )
        self.request(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_EXCL)

    def remove_route(
        self, destination: IPv6Address, prefixlen: int, index: int, metric: int | None
    ) -> None:
        """Remove an IPv6 route through interface `index`; ESRCH when there is none."""
        body = encode_route(destination, prefixlen, output_index=index, metric=metric, adding=False)
        self.request(RTM_DELROUTE, body)

    def get_route(self, destination: IPv6Address) -> RouteEntry | None:
        """The route the kernel would use toward `destination` (`ip route get`)."""
        body = encode_route(destination, 128, adding=False)
        for message in self.request(RTM_GETROUTE, body):
            if message.type == RTM_NEWROUTE:
                return parse_route(message.body)
        return None

    def addresses(self, family: int) -> list[AddressEntry]:
        """Every address of `family` (AF_INET or AF_INET6) on every interface."""
        found = []
        for message in self.dump(RTM_GETADDR, encode_dump(RTM_GETADDR, family)):
            if message.type == RTM_NEWADDR:
                entry = parse_address(message.body)
                if entry is not None:
                    found.append(entry)
        return found

    def routes(self) -> list[RouteEntry]:
        """Every IPv6 route, of every table."""
        dump = self.dump(RTM_GETROUTE, encode_dump(RTM_GETROUTE, _socket.AF_INET6))
        return [parse_route(message.body) for message in dump if message.type == RTM_NEWROUTE]

    # -- internals --

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._sequence += 1
        self._socket.send(encode_message(kind, flags, self._sequence, body))
        return self._sequence

    def _receive(self, sequence: int) -> Iterator[Message]:
        """The messages of the next datagram that answer `sequence` (others are dropped)."""
        data = self._socket.recv(RECEIVE_BYTES)
        for answered, message in parse_messages(data):
            if answered == sequence and message.type not in (NLMSG_NOOP, NLMSG_OVERRUN):
                yield message
