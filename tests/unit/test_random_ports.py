"""The client daemon's random-port sockets (`teredo.programs.random_ports`) on real sockets:
opened on the address asked, sent from, read into the core with the port they came to, closed
when the core says; a port that cannot be bound is reported to the core."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from teredo.core.address import Endpoint
from teredo.programs.random_ports import RandomPortSockets


class FakeCore:
    """What `RandomPortSockets` uses of `teredo.core.client.TeredoClient`."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, bool]] = []
        self.datagrams: list[tuple[bytes, Endpoint, int]] = []
        self.received: list[tuple[bytes, Endpoint, int]] = []
        self.failed: list[int] = []

    def random_port_changes(self) -> list[tuple[int, bool]]:
        out, self.changes = self.changes, []
        return out

    def random_port_datagrams(self) -> list[tuple[bytes, Endpoint, int]]:
        out, self.datagrams = self.datagrams, []
        return out

    def receive_on_random_port(self, data: bytes, source: Endpoint, port: int, now: float) -> None:
        self.received.append((data, source, port))

    def random_port_failed(self, port: int, now: float) -> None:
        self.failed.append(port)
        self.changes.append((port, False))  # as the core does


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def exchange() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    core = FakeCore()
    flushed: list[int] = []
    sockets = RandomPortSockets(
        core,  # type: ignore[arg-type]
        "127.0.0.1",
        loop.add_reader,
        loop.remove_reader,
        lambda: flushed.append(1),
    )
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        port = free_port()
        core.changes = [(port, True), (busy.getsockname()[1], True)]
        core.datagrams = [(b"bubble", peer.getsockname(), port), (b"lost", peer.getsockname(), 1)]
        sockets.apply()
        data, source = await loop.run_in_executor(None, peer.recvfrom, 2048)
        peer.sendto(b"answer", ("127.0.0.1", port))
        for _ in range(200):
            if core.received:
                break
            await asyncio.sleep(0.01)
        open_before_close = sorted(sockets.sockets)
        core.changes = [(port, False)]
        sockets.apply()
        return {
            "sent": (data, source),
            "port": port,
            "received": core.received,
            "failed": core.failed,
            "busy": busy.getsockname()[1],
            "open": open_before_close,
            "open_after": sorted(sockets.sockets),
            "flushed": bool(flushed),
            "counters": sockets.counters(),
        }
    finally:
        sockets.close()
        peer.close()
        busy.close()


def test_random_ports_open_send_receive_and_close() -> None:
    result = asyncio.run(exchange())
    port = result["port"]
    assert result["sent"] == (b"bubble", ("127.0.0.1", port))
    assert [(data, p) for data, _, p in result["received"]] == [(b"answer", port)]
    assert result["failed"] == [result["busy"]]  # in use: the core hears of it
    assert result["open"] == [port] and result["open_after"] == []
    assert result["flushed"]
    assert result["counters"] == {"random_port_datagrams_in": 1, "random_port_unsent": 1}
