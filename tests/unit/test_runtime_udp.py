"""teredo.adapters.udp on loopback: socket options, drain, pktinfo, send counters, bind errors."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from teredo.adapters.udp import (
    IP_MTU_DISCOVER,
    IP_PKTINFO,
    IP_PMTUDISC_DONT,
    UdpSocket,
    open_udp_socket,
)
from teredo.core.errors import UserError


@pytest.fixture
def udp() -> Iterator[UdpSocket]:
    sock = open_udp_socket("127.0.0.1", 0)
    yield sock
    sock.close()


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def drain_all(udp: UdpSocket, pktinfo: bool = False) -> list[tuple[object, ...]]:
    """Everything queued now (loopback delivers before sendto returns)."""
    got: list[tuple[object, ...]] = []
    if pktinfo:
        udp.drain_pktinfo(lambda view, source, dest: got.append((bytes(view), source, dest)))
    else:
        udp.drain(lambda view, source: got.append((bytes(view), source)))
    return got


def test_socket_options(udp: UdpSocket) -> None:
    sock = udp.sock
    assert sock.getblocking() is False
    assert sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_DONT
    assert sock.getsockopt(socket.IPPROTO_IP, IP_PKTINFO) == 0
    # The kernel doubles the request and caps it at rmem_max unless SO_RCVBUFFORCE worked; it is
    # in any case not below its own default.
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 4096
    assert udp.local[0] == "127.0.0.1" and udp.local[1] > 0


def test_drain_hands_each_datagram_with_its_source(udp: UdpSocket, sender: socket.socket) -> None:
    sender.sendto(b"first", udp.local)
    sender.sendto(b"second datagram", udp.local)
    got = drain_all(udp)
    assert got == [(b"first", sender.getsockname()), (b"second datagram", sender.getsockname())]
    assert drain_all(udp) == []


def test_drain_respects_limit(udp: UdpSocket, sender: socket.socket) -> None:
    for i in range(5):
        sender.sendto(bytes([i]), udp.local)
    seen: list[bytes] = []
    assert udp.drain(lambda view, source: seen.append(bytes(view)), limit=2) == 2
    assert udp.drain(lambda view, source: seen.append(bytes(view)), limit=10) == 3
    assert seen == [bytes([i]) for i in range(5)]


def test_pktinfo_tells_which_local_address_was_used(sender: socket.socket) -> None:
    # Bound to the wildcard: 127.0.0.1 and 127.0.0.2 both reach it, like a server's two addresses.
    udp = open_udp_socket("0.0.0.0", 0, pktinfo=True)
    try:
        port = udp.local[1]
        sender.sendto(b"to one", ("127.0.0.1", port))
        sender.sendto(b"to two", ("127.0.0.2", port))
        got = drain_all(udp, pktinfo=True)
    finally:
        udp.close()
    assert got == [
        (b"to one", sender.getsockname(), "127.0.0.1"),
        (b"to two", sender.getsockname(), "127.0.0.2"),
    ]


def test_send_delivers_and_returns_true(udp: UdpSocket, sender: socket.socket) -> None:
    assert udp.send(b"hello", sender.getsockname()) is True
    assert sender.recvfrom(100) == (b"hello", udp.local)


class _FailingSocket:
    """Stands in for a socket whose sendto fails with a given errno."""

    def __init__(self, error: OSError) -> None:
        self.error = error

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 9)

    def sendto(self, data: bytes, destination: tuple[str, int]) -> int:
        raise self.error


@pytest.mark.parametrize(
    ("error", "counter"),
    [
        (BlockingIOError(errno.EAGAIN, "again"), "send_eagain"),
        (OSError(errno.ENOBUFS, "no buffer space"), "send_enobufs"),
        (OSError(errno.EHOSTUNREACH, "no route"), "send_errors"),
    ],
)
def test_send_failures_are_counted_not_raised(error: OSError, counter: str) -> None:
    udp = UdpSocket(_FailingSocket(error))  # type: ignore[arg-type]
    assert udp.send(b"x", ("127.0.0.1", 1)) is False
    assert udp.send(b"x", ("127.0.0.1", 1)) is False
    counters = udp.counters()
    assert counters[counter] == 2
    assert sum(counters.values()) == 2


def test_bind_to_an_address_not_on_this_host() -> None:
    with pytest.raises(UserError) as caught:
        open_udp_socket("198.18.0.254", 3544, address_setting="ServerBindAddress")
    message = str(caught.value)
    assert "198.18.0.254:3544" in message
    assert "not an address of this host" in message
    assert "ServerBindAddress" in message


def test_bind_to_a_port_in_use(udp: UdpSocket) -> None:
    with pytest.raises(UserError) as caught:
        open_udp_socket("127.0.0.1", udp.local[1])
    message = str(caught.value)
    assert f"127.0.0.1:{udp.local[1]}" in message
    assert "already in use" in message
    assert "BindPort" in message


def test_bind_error_without_a_port_setting(udp: UdpSocket) -> None:
    with pytest.raises(UserError, match=r"stop that program$"):
        open_udp_socket("127.0.0.1", udp.local[1], port_setting=None)
