"""The client's random-port sockets (RFC 6081 §5.4, §5.5), as its core asks for them.

Behind a symmetric NAT the client core (`teredo.core.client`) may want a second UDP port per
peer being set up; it chooses the port and says when to open and close it
(`random_port_changes`), what to send from it (`random_port_datagrams`), and takes what comes
to it (`receive_on_random_port`). `RandomPortSockets` does the I/O: each port is bound on the
service socket's address, read on the event loop, and closed when the core says (at most
`teredo.core.random_port.MAX_RANDOM_PORTS` at once, the core's bound).

These peers stay on this user-space path: the core keeps them out of the kernel's peer map
and its fast path (`forward_to_teredo`) hands their packets to the full path, which names
the random port. The C and kernel paths serve the service socket only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from teredo.adapters.udp import UdpSocket, open_udp_socket
from teredo.core.address import Endpoint
from teredo.core.client import TeredoClient
from teredo.core.errors import UserError

log = logging.getLogger(__name__)

RANDOM_PORT_BUFFER_BYTES: Final = 256 * 1024  # kernel buffers: one peer's setup and traffic
MAX_ROUNDS: Final = 8  # a refused bind makes the core close the port: a few rounds at most


class RandomPortSockets:
    """The sockets of the core's random ports. `apply()` after every flush of the data path
    (the client daemon's `on_events`); `flush` is the data path's, called after the core was
    fed from one of these sockets."""

    def __init__(
        self,
        core: TeredoClient,
        address: str,
        add_reader: Callable[[int, Callable[[], None]], object],
        remove_reader: Callable[[int], object],
        flush: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.address = address
        self._add_reader = add_reader
        self._remove_reader = remove_reader
        self.flush = flush
        self.clock = clock
        self.sockets: dict[int, UdpSocket] = {}
        self.datagrams_in = 0
        self.unsent = 0  # datagrams for a port that is not open (its bind failed)

    def apply(self) -> None:
        """Open and close what the core asked for, then send what it wants sent from them."""
        core = self.core
        for _ in range(MAX_ROUNDS):
            changes = core.random_port_changes()
            if not changes:
                break
            for port, wanted in changes:
                if wanted:
                    self._open(port)
                else:
                    self._close(port)
        for payload, destination, port in core.random_port_datagrams():
            udp = self.sockets.get(port)
            if udp is None:
                self.unsent += 1
            else:
                udp.send(payload, destination)

    def close(self) -> None:
        for port in list(self.sockets):
            self._close(port)

    def counters(self) -> dict[str, int]:
        """For the status document: what the random ports received, what could not leave."""
        counters = {"random_port_datagrams_in": self.datagrams_in}
        if self.unsent:
            counters["random_port_unsent"] = self.unsent
        return counters

    def _open(self, port: int) -> None:
        if port in self.sockets:
            return
        try:
            udp = open_udp_socket(
                self.address,
                port,
                buffer_bytes=RANDOM_PORT_BUFFER_BYTES,
                address_setting="BindAddress",
                port_setting=None,
            )
        except (OSError, UserError) as error:
            log.debug("random port %d not opened: %s", port, error)
            self.core.random_port_failed(port, self.clock())
            return
        self.sockets[port] = udp
        self._add_reader(udp.fileno(), lambda: self._readable(port))
        log.debug("random port %s:%d open", self.address, port)

    def _close(self, port: int) -> None:
        udp = self.sockets.pop(port, None)
        if udp is not None:
            self._remove_reader(udp.fileno())
            udp.close()
            log.debug("random port %d closed", port)

    def _readable(self, port: int) -> None:
        udp = self.sockets.get(port)
        if udp is None:
            return
        receive = self.core.receive_on_random_port
        now = self.clock()

        def handle(view: memoryview, source: Endpoint) -> None:
            receive(bytes(view), source, port, now)

        self.datagrams_in += udp.drain(handle)
        self.flush()
