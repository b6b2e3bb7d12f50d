"""The TUN <-> UDP event loop shared by the client and relay daemons.

One `TunnelLoop` joins a tunnel engine (`teredo.tunnel.TunnelEngine`: the relay, or the client
which extends it) to one UDP socket and one TUN device on the running asyncio loop:

- **UDP readable**: drain every queued datagram into the socket's reused buffer; for each, try
  the engine's fast path `accept_from_teredo(view, source, now)` and on success write the view
  to the TUN device unchanged (no copy, no objects); otherwise hand a copy to the full path
  `receive_datagram`.
- **TUN readable**: drain every queued packet; the fast path `forward_to_teredo(view, now)`
  names the peer's mapping and the view goes out on the socket unchanged; otherwise the full
  path `send_ipv6` takes a copy.
- After any full-path call and on the timer: send `datagrams_to_send()`, write
  `packets_to_deliver()`, run `after_flush` (the client drains its events there) and re-arm the
  one timer at `get_timer()`.

`now` is read once per drained batch (`time.monotonic`, the clock of `loop.time()`), not per
packet. Outputs of the full path are flushed right after each call so that a peer's queued
packets leave before fast-path packets that follow them.

The client daemon reuses it as is: `TunnelLoop(client, udp, tun, after_flush=on_events)`; other
sockets (local discovery) can be added with `loop.add_reader` and call `flush()` after feeding
the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from teredo.runtime.timer import Timer
from teredo.runtime.tun import TunDevice
from teredo.runtime.udp import Address, UdpSocket
from teredo.tunnel import TunnelEngine

log = logging.getLogger(__name__)


class TunnelLoop:
    """Glue between a tunnel engine, its UDP socket and its TUN device (see the module doc)."""

    def __init__(
        self,
        engine: TunnelEngine,
        udp: UdpSocket,
        tun: TunDevice,
        *,
        after_flush: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.udp = udp
        self.tun = tun
        self.after_flush = after_flush
        self.clock = clock
        self._timer: Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tun_packets = 0
        self.udp_datagrams = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start reading both sides and arm the engine's timer."""
        loop = loop or asyncio.get_running_loop()
        self._loop = loop
        self._timer = Timer(self._on_timer, loop)
        loop.add_reader(self.udp.fileno(), self._on_udp)
        loop.add_reader(self.tun.fileno(), self._on_tun)
        self.flush()

    def stop(self) -> None:
        """Stop reading; the caller closes the socket and the device."""
        if self._loop is not None:
            for fd in (self.udp.fileno(), self.tun.fileno()):
                if fd >= 0:
                    self._loop.remove_reader(fd)
            self._loop = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- outputs -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send and deliver what the engine produced; re-arm the timer."""
        engine = self.engine
        send = self.udp.send
        for payload, destination in engine.datagrams_to_send():
            send(payload, destination)
        write = self.tun.write
        for packet in engine.packets_to_deliver():
            write(packet)
        if self.after_flush is not None:
            self.after_flush()
        if self._timer is not None:
            self._timer.set(engine.get_timer())

    def counters(self) -> dict[str, int]:
        """I/O counters for the status document (failures only when non-zero)."""
        counters = {"udp_datagrams_in": self.udp_datagrams, "tun_packets_in": self.tun_packets}
        for prefix, source in (("udp_", self.udp.counters()), ("tun_", self.tun.counters())):
            for name, value in source.items():
                if value:
                    counters[prefix + name] = value
        return counters

    # -- readiness callbacks -------------------------------------------------------------------

    def _on_udp(self) -> None:
        engine = self.engine
        now = self.clock()
        accept = engine.accept_from_teredo
        write = self.tun.write
        receive = engine.receive_datagram
        flush = self.flush

        def handle(view: memoryview, source: Address) -> None:
            if accept(view, source, now):
                write(view)
            else:
                receive(bytes(view), source, now)
                flush()

        self.udp_datagrams += self.udp.drain(handle)

    def _on_tun(self) -> None:
        engine = self.engine
        now = self.clock()
        forward = engine.forward_to_teredo
        send = self.udp.send
        full = engine.send_ipv6
        flush = self.flush

        def handle(view: memoryview) -> None:
            destination = forward(view, now)
            if destination is not None:
                send(view, destination)
            else:
                full(bytes(view), now)
                flush()

        self.tun_packets += self.tun.drain(handle)

    def _on_timer(self, now: float) -> None:
        try:
            # The Timer never fires before the deadline; `now` is on loop.time()'s clock.
            self.engine.handle_timer(max(now, self.clock()))
        finally:
            self.flush()
