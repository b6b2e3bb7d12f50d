"""The rtnetlink messages, byte for byte (rtnetlink(7)), and the answers' handling without a kernel.

The same code against the real kernel: tests/e2e/test_runtime_netns.py.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from teredo.adapters import rtnetlink
from teredo.adapters.rtnetlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETROUTE,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    AddressEntry,
    RouteEntry,
    Rtnetlink,
    RtnetlinkError,
)

TEREDO = IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2")


def header(length: int, kind: int, flags: int, sequence: int, port: int = 0) -> bytes:
    return struct.pack("=IHHII", length, kind, flags, sequence, port)


def attribute(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + bytes(-length % 4)


def test_link_up_with_mtu() -> None:
    body = rtnetlink.encode_link(7, flags=1, change=1, mtu=1280)
    # ifinfomsg: AF_UNSPEC, pad, type 0, index 7, flags IFF_UP, change IFF_UP; IFLA_MTU (4)
    assert body == bytes([0, 0, 0, 0]) + struct.pack("=iII", 7, 1, 1) + bytes.fromhex(
        "0800 0400 00050000"
    )
    message = rtnetlink.encode_message(RTM_NEWLINK, NLM_F_ACK, 9, body)
    assert message[:16] == header(16 + len(body), 16, NLM_F_REQUEST | NLM_F_ACK, 9)
    assert message[16:] == body


def test_address_with_nodad() -> None:
    body = rtnetlink.encode_address(3, TEREDO, 32, flags=0x02)
    assert body == (
        bytes([socket.AF_INET6, 32, 0x02, 0])
        + struct.pack("=I", 3)
        + attribute(1, TEREDO.packed)  # IFA_ADDRESS
        + attribute(8, struct.pack("=I", 0x02))  # IFA_FLAGS
    )
    removal = rtnetlink.encode_address(3, TEREDO, 32)
    assert removal == bytes([socket.AF_INET6, 32, 0, 0]) + struct.pack("=I", 3) + attribute(
        1, TEREDO.packed
    )


def test_ipv4_address_and_padding() -> None:
    body = rtnetlink.encode_address(2, IPv4Address("192.0.2.1"), 24)
    assert body == bytes([socket.AF_INET, 24, 0, 0]) + struct.pack("=I", 2) + bytes.fromhex(
        "08000100c0000201"
    )
    assert rtnetlink.encode_attribute(3, b"tun") == bytes.fromhex("0700 0300 74756e00")


def test_default_route_with_metric_has_no_destination() -> None:
    body = rtnetlink.encode_route(IPv6Address("::"), 0, output_index=5, metric=1029)
    # rtmsg: AF_INET6, /0, table main, proto static, scope universe, unicast
    assert body == (
        bytes([socket.AF_INET6, 0, 0, 0, 254, 4, 0, 1])
        + struct.pack("=I", 0)
        + attribute(4, struct.pack("=I", 5))  # RTA_OIF
        + attribute(6, struct.pack("=I", 1029))  # RTA_PRIORITY
    )


def test_route_removal_matches_any_protocol_and_metric() -> None:
    prefix = IPv6Address("2001::")
    body = rtnetlink.encode_route(prefix, 32, output_index=5, adding=False)
    assert body == (
        bytes([socket.AF_INET6, 32, 0, 0, 254, 0, 0, 0])
        + struct.pack("=I", 0)
        + attribute(1, prefix.packed)
        + attribute(4, struct.pack("=I", 5))
    )


def test_dumps() -> None:
    assert rtnetlink.encode_dump(RTM_GETADDR, socket.AF_INET) == bytes([socket.AF_INET]) + bytes(7)
    assert rtnetlink.encode_dump(RTM_GETROUTE, socket.AF_INET6) == bytes([socket.AF_INET6]) + bytes(
        11
    )


def route_message(sequence: int, *, table: int = 254, kind: int = 1, metric: int = 1024) -> bytes:
    body = (
        bytes([socket.AF_INET6, 32, 0, 0, 254, 4, 0, kind])
        + struct.pack("=I", 0)
        + attribute(15, struct.pack("=I", table))  # RTA_TABLE
        + attribute(1, IPv6Address("2001::").packed)
        + attribute(4, struct.pack("=I", 5))
        + attribute(6, struct.pack("=I", metric))
    )
    return header(16 + len(body), RTM_NEWROUTE, NLM_F_MULTI, sequence) + body


def test_parse_route() -> None:
    [(sequence, message)] = list(rtnetlink.parse_messages(route_message(4, table=1000)))
    assert sequence == 4
    assert message.type == RTM_NEWROUTE
    assert rtnetlink.parse_route(message.body) == RouteEntry(
        type=1,
        table=1000,
        destination=IPv6Address("2001::"),
        prefixlen=32,
        output_index=5,
        metric=1024,
    )


def test_parse_address() -> None:
    body = bytes([socket.AF_INET, 24, 0, 0]) + struct.pack("=I", 2)
    body += attribute(2, IPv4Address("192.0.2.9").packed)  # IFA_LOCAL, not used
    body += attribute(1, IPv4Address("192.0.2.1").packed)
    assert rtnetlink.parse_address(body) == AddressEntry(2, IPv4Address("192.0.2.1"), 24)
    assert rtnetlink.parse_address(bytes([socket.AF_INET6, 64, 0, 0, 2, 0, 0, 0])) is None


@pytest.mark.parametrize(
    "data",
    [
        header(16, RTM_NEWROUTE, 0, 1)[:10],  # truncated header
        header(15, RTM_NEWROUTE, 0, 1),  # length below the header's
        header(40, RTM_NEWROUTE, 0, 1) + bytes(8),  # longer than the datagram
    ],
)
def test_malformed_messages(data: bytes) -> None:
    with pytest.raises(RtnetlinkError) as caught:
        list(rtnetlink.parse_messages(data))
    assert caught.value.errno == errno.EBADMSG


@pytest.mark.parametrize(
    "body",
    [
        bytes(8),  # shorter than an rtmsg
        bytes(12) + struct.pack("=HH", 40, 1) + bytes(4),  # attribute longer than the body
        bytes(12) + attribute(1, bytes(4)),  # RTA_DST that is not 16 bytes
        bytes(12) + attribute(6, bytes(2)),  # RTA_PRIORITY that is not 4
    ],
)
def test_malformed_routes(body: bytes) -> None:
    with pytest.raises(RtnetlinkError) as caught:
        rtnetlink.parse_route(body)
    assert caught.value.errno == errno.EBADMSG


class FakeSocket:
    """Stands for the kernel's end: records what is sent, answers from a script."""

    def __init__(self, answers: list[bytes]) -> None:
        self.sent: list[bytes] = []
        self.answers = answers

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.answers.pop(0)

    def close(self) -> None:
        pass


def with_answers(answers: list[bytes]) -> tuple[Rtnetlink, FakeSocket]:
    fake = FakeSocket(answers)
    nl = Rtnetlink.__new__(Rtnetlink)
    nl._socket = fake  # type: ignore[assignment]
    nl._sequence = 0
    return nl, fake


def error_message(sequence: int, code: int) -> bytes:
    body = struct.pack("=i", code) + header(16, 0, 0, sequence)
    return header(16 + len(body), NLMSG_ERROR, 0, sequence) + body


def test_ack_ends_a_request() -> None:
    nl, fake = with_answers([error_message(1, 0)])
    nl.add_route(IPv6Address("::"), 0, 5, 1029)
    [sent] = fake.sent
    assert sent[:16] == header(
        len(sent), RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 1
    )


def test_refusal_is_the_kernels_errno() -> None:
    nl, _ = with_answers([error_message(1, -errno.EEXIST)])
    with pytest.raises(RtnetlinkError) as caught:
        nl.add_address(5, TEREDO, 32)
    assert caught.value.errno == errno.EEXIST
    nl, _ = with_answers([error_message(1, -errno.ESRCH)])
    with pytest.raises(RtnetlinkError) as caught:
        nl.remove_route(IPv6Address("2001::"), 32, 5, None)
    assert caught.value.errno == errno.ESRCH
    assert nl._socket.sent[0][4:6] == struct.pack("=H", RTM_DELROUTE)  # type: ignore[attr-defined]


def test_answers_to_other_requests_are_ignored() -> None:
    nl, _ = with_answers(
        [error_message(7, -errno.EPERM), route_message(1, kind=2), error_message(1, 0)]
    )
    route = nl.get_route(TEREDO)
    assert route is not None and route.type == 2


def test_dump_reads_parts_until_done() -> None:
    done = header(20, NLMSG_DONE, NLM_F_MULTI, 1) + bytes(4)
    nl, fake = with_answers(
        [route_message(1) + route_message(1, table=255), route_message(1), done]
    )
    routes = nl.routes()
    assert [route.table for route in routes] == [254, 255, 254]
    assert fake.sent[0][6:8] == struct.pack("=H", NLM_F_REQUEST | NLM_F_DUMP)


def test_dump_refused() -> None:
    nl, _ = with_answers([error_message(1, -errno.EPERM)])
    with pytest.raises(RtnetlinkError) as caught:
        nl.addresses(socket.AF_INET6)
    assert caught.value.errno == errno.EPERM
