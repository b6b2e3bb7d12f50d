"""The TUN <-> UDP event loop shared by the client and relay daemons.

One `DataPath` joins a peering engine (`teredo.core.peering.PeeringEngine`: the relay, or the
client, which extends it) to one UDP socket and one TUN device on the running asyncio loop:

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

When the TUN device was opened with offloads (`open_tun(..., offload=True)`), the TUN side
reads the queue in *runs* (`teredo.adapters.accel.read_runs`, in C where built): packets
with their virtio-net headers, straight into one batch buffer, grouped as they come:

- plain packets with one IPv6 source and destination, of one size (a shorter one ends the
  run), partial checksums (`NEEDS_CSUM`) completed: the first one's fast-path verdict is
  theirs, and a run leaves in one `send_segments` call (UDP segmentation offload), so a flood
  of small packets to one peer costs one read per packet in C and one Python round trip and
  send per run;
- a super-packet (TCP or UDP segmentation) is cut into MTU-sized IPv6 packets in a second
  buffer, which leave in runs of up to `MAX_SEGMENTS` the same way: ~50 packets for one read
  and one or two sends.

The UDP side, with offloads, asks the kernel to coalesce datagrams (`UDP_GRO`): one read then
holds up to 64 datagrams of one flow. The first is checked by the engine's fast path, and
`teredo.adapters.accel.coalesce_segments` joins it and those that follow it in the same TCP or
UDP flow (same IPv6 addresses, so the same verdict) into one super-packet for one TUN write; the
kernel cuts it again where it must (or hands it to TCP whole). Anything else goes alone, in
order.

Without offloads (an old kernel, or a device opened without them) every packet is read and
sent on its own: the portable path.

`now` is read once per drained batch (`time.monotonic`, the clock of `loop.time()`), not per
packet. Outputs of the full path are flushed right after each call so that a peer's queued
packets leave before fast-path packets that follow them.

The client daemon reuses it as is: `DataPath(client, udp, tun, after_flush=on_events)`; other
sockets (local discovery) can be added with `loop.add_reader` and call `flush()` after feeding
the engine.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv6Network
from typing import TYPE_CHECKING, Final

from teredo.adapters import accel
from teredo.adapters.accel import coalesce_segments, read_runs, segment
from teredo.adapters.buffers import lazy_buffer
from teredo.adapters.heap import release_free_memory
from teredo.adapters.timer import Timer
from teredo.adapters.tun import DRAIN_LIMIT, TunDevice
from teredo.adapters.tun_runs import READ_BYTES
from teredo.adapters.udp import MAX_SEGMENTED_BYTES, MAX_SEGMENTS, UdpSocket
from teredo.core.address import Endpoint
from teredo.core.offload import COALESCED_BYTES, GSO_NONE, OffloadError
from teredo.core.peering import PeeringEngine

if TYPE_CHECKING:
    from teredo.adapters.bpf import KernelDataPath

log = logging.getLogger(__name__)

BATCH_BYTES: Final = 4 * READ_BYTES  # a run of packets plus the next read
SEGMENT_BYTES: Final = 4 * READ_BYTES  # a super-packet cut into segments, headers repeated
LOADING_SWITCH_INTERVAL: Final = 0.0005  # seconds: see open_kernel_path_meanwhile


class DataPath:
    """Glue between a peering engine, its UDP socket and its TUN device (see the module doc)."""

    def __init__(
        self,
        engine: PeeringEngine,
        udp: UdpSocket,
        tun: TunDevice,
        *,
        after_flush: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        kernel: KernelDataPath | None = None,
    ) -> None:
        self.engine = engine
        self.udp = udp
        self.tun = tun
        self.kernel = kernel
        if kernel is not None:
            engine.peers.mirror = kernel
            engine.peers.learning = kernel.settings.learn
        self.after_flush = after_flush
        self.clock = clock
        self._timer: Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tun_packets = 0
        self.udp_datagrams = 0
        self.offload_drops = 0
        self.super_packets_in = 0  # TUN reads that held many packets (segmentation offload)
        self.super_packets_out = 0  # TUN writes that held many packets (coalesced)
        # Sized for the largest super-packets; pages are allocated as traffic reaches them.
        self._batch = lazy_buffer(BATCH_BYTES) if tun.vnet_hdr else memoryview(b"")
        self._segments = lazy_buffer(SEGMENT_BYTES) if tun.vnet_hdr else memoryview(b"")
        self._coalesced = lazy_buffer(COALESCED_BYTES) if tun.vnet_hdr else memoryview(b"")

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start reading both sides and arm the engine's timer."""
        loop = loop or asyncio.get_running_loop()
        self._loop = loop
        self._timer = Timer(self._on_timer, loop)
        if self.tun.vnet_hdr:
            # With the kernel's path too: a batch of one flow (a peer's UDP_SEGMENT send, or
            # what a network card's GRO joined) reaches the kernel's path as one super-packet,
            # which it passes to us whole, and we forward it in one go; single datagrams, the
            # many-peers case, are the kernel's.
            self.udp.enable_coalescing()
        log.info("data path: %s", self.description())
        loop.add_reader(
            self.udp.fileno(), self._on_udp_offloaded if self.tun.vnet_hdr else self._on_udp
        )
        loop.add_reader(
            self.tun.fileno(), self._on_tun_offloaded if self.tun.vnet_hdr else self._on_tun
        )
        self.flush()

    def attach_kernel(self, kernel: KernelDataPath) -> None:
        """Hand established peers to the kernel's path from now on (the client loads it while
        it qualifies: until then every packet takes this user-space path, complete on its
        own). Peers trusted before it came are told to it by the table's sweep."""
        self.kernel = kernel
        self.engine.peers.mirror = kernel
        self.engine.peers.learning = kernel.settings.learn
        log.info("data path: %s", self.description())

    def description(self) -> str:
        """Which data path runs, for the log and `teredo status`."""
        kernel = self.kernel
        first = ""
        if kernel is not None:
            learned = " (and new ones it can trust)" if kernel.settings.learn else ""
            first = f"the kernel (eBPF) for established peers{learned}, then "
        if not self.tun.vnet_hdr:
            return first + "one system call per packet (no offloads)"
        return first + (
            f"TUN offloads {self.tun.offloads:#x}, UDP coalescing "
            f"{'on' if self.udp.coalescing else 'off'}, C accelerators "
            f"{'on' if accel.ACCELERATED else 'off'}"
        )

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
        if self.tun.vnet_hdr:
            counters["tun_super_packets_in"] = self.super_packets_in
            counters["tun_super_packets_out"] = self.super_packets_out
        if self.offload_drops:
            counters["offload_drops"] = self.offload_drops
        if self.kernel is not None:
            for name, value in self.kernel.counters().items():
                counters["kernel_" + name] = value
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

        def handle(view: memoryview, source: Endpoint) -> None:
            if accept(view, source, now):
                write(view)
            else:
                receive(bytes(view), source, now)
                flush()

        self.udp_datagrams += self.udp.drain(handle)

    def _on_udp_offloaded(self) -> None:
        engine = self.engine
        now = self.clock()
        accept = engine.accept_from_teredo
        receive = engine.receive_datagram
        out = self._coalesced
        write, write_frame = self.tun.write, self.tun.write_frame
        flush = self.flush

        def handle(view: memoryview, segment: int, source: Endpoint) -> None:
            # One read is one UDP flow: every datagram in `view` comes from `source`.
            position, size = 0, len(view)
            while position < size:
                first = view[position : position + segment]
                if not accept(first, source, now):
                    receive(bytes(first), source, now)
                    flush()
                    position += segment
                    continue
                # What joins `first` has its IPv6 addresses and its UDP source: accepted too.
                count, length = coalesce_segments(view[position:], segment, out)
                if count == 1:
                    write(first)
                else:
                    engine.fast_rx += count - 1
                    self.super_packets_out += 1
                    write_frame(out[:length])
                position += count * segment

        self.udp_datagrams += self.udp.drain_batches(handle)

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

    def _on_tun_offloaded(self) -> None:
        engine = self.engine
        now = self.clock()
        forward = engine.forward_to_teredo
        full = engine.send_ipv6
        fd, batch = self.tun.fd, self._batch
        send_segments = self.udp.send_segments
        reads = 0
        while reads < DRAIN_LIMIT:
            read, runs, dropped, error = read_runs(fd, batch, DRAIN_LIMIT - reads)
            reads += read
            self.offload_drops += dropped
            for start, end, size, gso_type, gso_size in runs:
                if gso_type != GSO_NONE:
                    self._forward_super_packet(batch[start:end], gso_type, gso_size, now)
                    continue
                # Plain packets for one destination: the first one's verdict is theirs.
                destination = forward(batch[start : start + size], now)
                if destination is not None:
                    engine.fast_tx += (end - start - 1) // size
                    send_segments(batch[start:end], size, destination)
                    continue
                for packet in range(start, end, size):
                    full(bytes(batch[packet : min(packet + size, end)]), now)
                    self.flush()
            if error:
                if error != errno.EAGAIN:
                    self.tun.read_errors += 1
                    log.debug("read from %s failed: %s", self.tun.name, os.strerror(error))
                break
        self.tun_packets += reads

    def _forward_super_packet(
        self, packet: memoryview, gso_type: int, gso_size: int, now: float
    ) -> None:
        """Cut a super-packet into segments and send them in runs, or give them to the full
        path one by one when the peer is not ready."""
        out = self._segments
        try:
            count, size, end = segment(packet, gso_type, gso_size, out)
        except OffloadError:
            self.offload_drops += 1
            return
        engine = self.engine
        destination = engine.forward_to_teredo(out[: min(size, end)], now)
        if destination is None:
            for start in range(0, end, size):
                engine.send_ipv6(bytes(out[start : min(start + size, end)]), now)
            self.flush()
            return
        engine.fast_tx += count - 1
        self.super_packets_in += 1
        step = min(MAX_SEGMENTS, MAX_SEGMENTED_BYTES // size) * size
        send_segments = self.udp.send_segments
        for start in range(0, end, step):
            send_segments(out[start : min(start + step, end)], size, destination)


def open_kernel_path(
    role: str,
    *,
    tun: TunDevice,
    udp: UdpSocket,
    prefix: IPv6Network,
    max_peers: int,
    local_addresses: Iterable[bytes] = (),
    allow_private: bool = False,
) -> KernelDataPath | None:
    """The kernel data path for a daemon (`teredo.adapters.bpf`), or None when it cannot be
    used here, with the reason in the log: the daemon then runs its user-space path alone,
    which is complete on its own. Call it as root, before dropping privileges. A relay's
    learns the peers it can trust itself (`teredo.bpf.datapath`), with the relay's
    ``AllowPrivateAddresses``; a client's does not."""
    try:
        from teredo.adapters.bpf import KernelDataPath, KernelDataPathUnavailable, ipv4_interfaces
        from teredo.bpf.datapath import Role
    except ImportError as error:  # pragma: no cover - the package ships both
        log.info("kernel data path off: %s", error)
        return None
    kinds = {"relay": Role.RELAY, "host-specific relay": Role.HOST_SPECIFIC_RELAY}
    kind = kinds.get(role, Role.CLIENT)
    try:
        return KernelDataPath.open(
            kind,
            tun_ifindex=socket.if_nametoindex(tun.name),
            ipv4_ifindexes=ipv4_interfaces(udp.local[0]),
            local=udp.local,
            prefix=prefix,
            local_addresses=local_addresses,
            max_peers=max_peers,
            learn=kind != Role.CLIENT,
            allow_private=allow_private,
        )
    except (KernelDataPathUnavailable, OSError) as error:
        log.info("kernel data path off: %s", error)
        return None
    finally:
        release_free_memory()  # what libbpf used to load it, 0.7 MiB resident otherwise


async def open_kernel_path_meanwhile(
    role: str,
    *,
    tun: TunDevice,
    udp: UdpSocket,
    prefix: IPv6Network,
    max_peers: int,
) -> KernelDataPath | None:
    """`open_kernel_path` in a thread while the event loop goes on (the client qualifies
    meanwhile). Loading and attaching take some 40-60 ms, nearly all of it in the kernel
    (the verifier, the qdisc and filter changes) and in libbpf, whose calls through ctypes
    release the GIL: the loop barely waits for them. Returns once the thread has ended, so
    that the caller can then drop privileges (capabilities are per thread); if cancelled, it
    still waits for the thread and closes what it attached, which must not outlive us."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    outcome: list[KernelDataPath | BaseException | None] = []

    def work() -> None:
        try:
            outcome.append(
                open_kernel_path(role, tun=tun, udp=udp, prefix=prefix, max_peers=max_peers)
            )
        except BaseException as error:  # handed to the loop's thread below
            outcome.append(error)
        finally:
            loop.call_soon_threadsafe(_resolve, done)

    thread = threading.Thread(target=work, name="teredo-bpf-load", daemon=True)
    # The thread's Python parts (imports, ctypes structures) hold the GIL: the loop, woken by
    # the server's answer, gets it back within 0.5 ms instead of Python's default 5.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(LOADING_SWITCH_INTERVAL)
    thread.start()
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        thread.join()
        if outcome and outcome[0] is not None and not isinstance(outcome[0], BaseException):
            outcome[0].close()
        raise
    finally:
        sys.setswitchinterval(interval)
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
