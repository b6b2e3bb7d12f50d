"""teredo.programs.client_start: the launch's loop drives the core until its first event and
hands everything over, with a fake core, device and configurator and a real UDP socket."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from teredo.core.qualification import Offline, Qualified, ServerPair
from teredo.programs.client_start import ClientStart

ADDRESS = IPv6Address("2001:0:c633:6402:3831:5076:34ff:8efd")
SERVER = ServerPair.of(IPv4Address("127.0.0.1"))


class FakeCore:
    """Sends one RS on start; an "RA" datagram qualifies it (or takes it offline)."""

    def __init__(self, answer: str = "qualified") -> None:
        self.answer = answer
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.events: list[Any] = []
        self.received: list[bytes] = []
        self.solicited_at = 0.0
        self.timer: float | None = None
        self.timers_handled = 0

    def start(self, now: float) -> None:
        self.solicited_at = now
        self.outbox.append((b"RS", ("127.0.0.1", 9)))

    def accept_from_teredo(self, view: memoryview, source: Any, now: float) -> bool:
        return False

    def receive_datagram(self, data: bytes, source: Any, now: float) -> None:
        self.received.append(data)
        if self.answer == "qualified":
            self.events.append(
                Qualified(ADDRESS, ("203.0.113.2", 1), 1280, SERVER, self.solicited_at, 0.001)
            )
            self.events.append("later")  # left in the core for the daemon's loop
        else:
            self.events.append(Offline("no answer", None, now + 2, SERVER))

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self.outbox = self.outbox, []
        return out

    def packets_to_deliver(self) -> list[bytes]:
        return []

    def next_event(self) -> Any:
        return self.events.pop(0) if self.events else None

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.timers_handled += 1
        self.timer = None


class FakeUdp:
    """The UdpSocket calls the loop makes, over a real socket (so that poll works)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes, destination: Any) -> bool:
        self.sent.append(bytes(data))
        return True

    def drain(self, handler: Callable[[memoryview, Any], None]) -> int:
        count = 0
        while True:
            try:
                data, source = self.sock.recvfrom(2048)
            except BlockingIOError:
                return count
            handler(memoryview(data), source)
            count += 1

    def close(self) -> None:
        self.sock.close()


class FakeTun:
    name = "teredo"

    def write(self, packet: bytes) -> bool:
        return True

    def close(self) -> None:
        pass


class FakeIface:
    def __init__(self) -> None:
        self.configured: list[tuple[IPv6Address, int]] = []

    def configure_client_now(self, address: IPv6Address, mtu: int) -> None:
        self.configured.append((address, mtu))


def _start(core: FakeCore, udp: FakeUdp) -> tuple[ClientStart, FakeIface]:
    start = ClientStart(core, udp, FakeTun(), (SERVER,), ("10.1.0.2", 1))  # type: ignore[arg-type]
    iface = FakeIface()
    start.iface = iface  # type: ignore[assignment]
    return start, iface


def _answer_soon(udp: FakeUdp) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.sendto(b"RA", udp.sock.getsockname())


def test_qualified_configures_the_interface_and_leaves_the_rest_to_the_daemon() -> None:
    core, udp = FakeCore(), FakeUdp()
    start, iface = _start(core, udp)
    _answer_soon(udp)  # queued before the loop polls: read on its first wait
    try:
        start.qualify(window=2.0)
    finally:
        udp.close()
    assert udp.sent == [b"RS"]  # what the core gave was sent, once
    assert core.received == [b"RA"]
    assert iface.configured == [(ADDRESS, 1280)]
    assert start.started and start.qualified is not None and start.pending is None
    assert start.addressed_at is not None and start.addressed_at >= core.solicited_at
    assert core.next_event() == "later"  # the next event stays for the daemon's loop


def test_another_first_event_is_handed_over_unapplied() -> None:
    core, udp = FakeCore(answer="offline"), FakeUdp()
    start, iface = _start(core, udp)
    _answer_soon(udp)
    try:
        start.qualify(window=2.0)
    finally:
        udp.close()
    assert iface.configured == []
    assert isinstance(start.pending, Offline) and start.qualified is None


def test_no_answer_gives_up_after_the_window_with_the_core_as_it_is() -> None:
    core, udp = FakeCore(), FakeUdp()
    core.timer = time.monotonic() + 0.01  # a core timer inside the window is handled
    start, iface = _start(core, udp)
    began = time.monotonic()
    try:
        start.qualify(window=0.1)
    finally:
        udp.close()
    assert time.monotonic() - began >= 0.1
    assert core.timers_handled == 1
    assert start.started and start.qualified is None and start.pending is None
    assert iface.configured == []


def test_the_launch_imports_neither_the_event_loop_nor_logging() -> None:
    """What the client imports before its address (a fresh interpreter, as `teredo client`):
    not the event loop, logging, the digests, typing, dataclasses, the status TypedDicts, `re`
    nor socket.py (its enums and selectors) (each is milliseconds of the launch; README,
    Footprint)."""
    import subprocess

    code = (
        "import sys\n"
        "from teredo.cli import _prepare_daemon\n"
        "_prepare_daemon()\n"
        "import teredo.programs.service, teredo.programs.client_start, teredo.programs.keys\n"
        "print(' '.join(m for m in ('asyncio', 'logging', '_hashlib', 'ssl', 'hashlib',\n"
        "                           'typing', 'dataclasses', 'teredo.core.status', 're',\n"
        "                           'socket', 'selectors')\n"
        "            if sys.modules.get(m)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
