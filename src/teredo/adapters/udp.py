"""IPv4 UDP sockets for Teredo: open with the right options, drain, send without raising.

`open_udp_socket` returns a `UdpSocket`: a bound, non-blocking socket with

- the Don't Fragment bit off (`IP_MTU_DISCOVER = IP_PMTUDISC_DONT`): "Teredo implementations
  SHOULD NOT set the Don't Fragment (DF) bit of the encapsulating IPv4 header" (RFC 4380 §5.1.2);
- large receive and send buffers (`SO_RCVBUFFORCE` when allowed, else `SO_RCVBUF`, which the
  kernel caps at `net.core.rmem_max`): under load, packets die in socket buffers first;
- optionally `IP_PKTINFO`, so each datagram comes with the IPv4 address it was sent *to*: a
  server with two addresses on one socket, and a client telling multicast discovery bubbles
  from unicast ones (RFC 4380 §5.2.8), need it.

Receiving is callback-based and allocation-light: `drain` reads every queued datagram into one
reused buffer and hands the handler a `memoryview` of it, valid only during the call (copy with
`bytes(view)` to keep it). Hook it to asyncio with
`loop.add_reader(udp.fileno(), udp.drain, handler)`.

Two offloads cut system calls on the data path, each with a fallback where the kernel lacks it:

- `send_segments` sends many datagrams of one size to one destination in one call (UDP
  segmentation offload, `UDP_SEGMENT`, Linux >= 4.18), or one call each where refused;
- `enable_coalescing` (`UDP_GRO`, Linux >= 5.0) lets the kernel hand over consecutive datagrams
  of one flow in one read; `drain` splits them again, so handlers see single datagrams, and
  `drain_batches` hands each read over whole.

A Teredo server moves whole batches (`teredo.core.server.ServerBatch`): `python_recv_batch`
reads up to a batch of datagrams into fixed-size slots of one buffer, each with a record
(`teredo.core.server.RECORD`: source address and port, length), and `python_send_batch` sends
the answers of a batch that go out from one _socket. The C module does each in one system call
(`recvmmsg`, `sendmmsg`); these are its portable twins (`teredo.adapters.accel` chooses).

Sending never raises for a full queue or a transient network error: `send` returns False and
counts the failure (`send_eagain`, `send_enobufs`, `send_errors`), because a dropped datagram is
normal for UDP and must not stop a daemon. `counters()` gives them as a dict for the status
document.

Sources and destinations are `Endpoint`s, the socket module's own `(host, port)` tuples: no
conversion on the receive path.
"""

from __future__ import annotations

import _socket  # socket.py without its enums and selectors, which cost a launch ~1.5 ms
import errno
import os
import struct
from collections.abc import Callable
from ipaddress import IPv4Address

from teredo.adapters.buffers import lazy_buffer
from teredo.core.address import DISCOVERY_GROUP, Endpoint
from teredo.core.errors import TransientError, UserError
from teredo.core.logger import get_logger

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

log = get_logger(__name__)  # imports logging when it logs (teredo.core.logger)

# Linux <linux/in.h> values the socket module does not export.
IP_MTU_DISCOVER: Final = 10
IP_PMTUDISC_DONT: Final = 0  # RFC 4380 §5.1.2: never set DF; fragment locally when needed
IP_PKTINFO: Final = 8  # ancillary struct in_pktinfo {ifindex, spec_dst, addr}
SO_SNDBUFFORCE: Final = 32  # like SO_SNDBUF but ignores wmem_max (CAP_NET_ADMIN)
SO_RCVBUFFORCE: Final = 33
SIOCGIFADDR: Final = 0x8915  # netdevice(7): an interface's primary IPv4 address
SIOCGIFNETMASK: Final = 0x891B  # netdevice(7): and its netmask
# Linux <linux/udp.h>
SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103  # send: cut the buffer into datagrams of this many bytes
UDP_GRO: Final = 104  # receive: accept coalesced datagrams, told their size in a cmsg
MAX_SEGMENTS: Final = 64  # UDP_MAX_SEGMENTS of older kernels (newer take 128)
MAX_SEGMENTED_BYTES: Final = 65507  # one UDP/IPv4 payload, before the kernel cuts it


DEFAULT_BUFFER_BYTES: Final = 4 * 1024 * 1024
RECEIVE_BUFFER_BYTES: Final = 65536  # larger than any IPv4 UDP payload (65507)
DRAIN_LIMIT: Final = 64  # datagrams per readiness callback, so one socket cannot starve the loop

# struct in_pktinfo: int ipi_ifindex; struct in_addr ipi_spec_dst; struct in_addr ipi_addr.
_PKTINFO: Final = struct.Struct("=i4s4s")
_ANCILLARY_BYTES: Final = _socket.CMSG_SPACE(_PKTINFO.size)
_GRO_ANCILLARY_BYTES: Final = _socket.CMSG_SPACE(4)  # int: the size of each datagram
_SEGMENT_SIZE: Final = struct.Struct("=H")  # the UDP_SEGMENT option: u16
_GRO_SIZE: Final = struct.Struct("=i")  # the UDP_GRO cmsg: int


DatagramHandler = Callable[[memoryview, Endpoint], None]
"""`handler(payload, source)`; the view is only valid during the call."""

PktinfoHandler = Callable[[memoryview, Endpoint, str], None]
"""`handler(payload, source, destination_ip)`; the view is only valid during the call."""

BatchHandler = Callable[[memoryview, int, Endpoint], None]
"""`handler(payload, segment, source)`: datagrams of `segment` bytes back to back, the last maybe
shorter (see `UdpSocket.drain_batches`); the view is only valid during the call."""


class UdpSocket:
    """A bound, non-blocking IPv4 UDP socket with a reused receive buffer and send counters.

    Build it with `open_udp_socket`. `sock` is the underlying socket for anything not wrapped
    here (`getsockname()`, multicast options through `join_multicast`).
    """

    __slots__ = (
        "_buffer",
        "_view",
        "coalesced_reads",
        "coalescing",
        "local",
        "receive_errors",
        "segmentation",
        "segmentation_fallbacks",
        "send_eagain",
        "send_enobufs",
        "send_errors",
        "sock",
    )

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.local: Endpoint = sock.getsockname()
        self._buffer = lazy_buffer(RECEIVE_BUFFER_BYTES)  # pages only where datagrams land
        self._view = self._buffer
        self.send_eagain = 0
        self.send_enobufs = 0
        self.send_errors = 0
        self.receive_errors = 0
        self.segmentation = True  # until the kernel says it cannot
        self.segmentation_fallbacks = 0
        self.coalescing = False
        self.coalesced_reads = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes | bytearray | memoryview, destination: Endpoint) -> bool:
        """Send one datagram; on failure count it and return False instead of raising."""
        try:
            self.sock.sendto(data, destination)
        except BlockingIOError:
            self.send_eagain += 1
            return False
        except OSError as error:
            if error.errno == errno.ENOBUFS:
                self.send_enobufs += 1
            else:
                # EHOSTUNREACH, ENETUNREACH, EPERM from a firewall...: the network's business.
                self.send_errors += 1
                log.debug("sendto %s:%d failed: %s", destination[0], destination[1], error)
            return False
        return True

    def send_segments(
        self, data: bytes | bytearray | memoryview, segment_size: int, destination: Endpoint
    ) -> bool:
        """Send `data` as datagrams of `segment_size` bytes (the last may be shorter), all to
        `destination`, in one system call where the kernel can; False when any was dropped.

        At most `MAX_SEGMENTS` datagrams and `MAX_SEGMENTED_BYTES` bytes per call. A kernel
        without UDP segmentation gets one call per datagram from then on; a refusal for this
        call only (EINVAL: a segment too large for the route's MTU) falls back for this call.
        """
        if len(data) <= segment_size:
            return self.send(data, destination)
        if self.segmentation:
            try:
                self.sock.sendmsg(
                    (data,),
                    ((SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(segment_size)),),
                    0,
                    destination,
                )
            except BlockingIOError:
                self.send_eagain += 1
                return False
            except OSError as error:
                code = error.errno
                if code == errno.ENOBUFS:
                    self.send_enobufs += 1
                    return False
                if code not in (errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT):
                    self.send_errors += 1
                    log.debug("sendmsg %s:%d failed: %s", destination[0], destination[1], error)
                    return False
                if code != errno.EINVAL:
                    self.segmentation = False
                    log.info(
                        "UDP segmentation offload unavailable (%s): one send per datagram",
                        error.strerror,
                    )
                self.segmentation_fallbacks += 1
            else:
                return True
        sent = True
        view = memoryview(data)
        for start in range(0, len(view), segment_size):
            sent = self.send(view[start : start + segment_size], destination) and sent
        return sent

    def enable_coalescing(self) -> bool:
        """Ask the kernel to coalesce received datagrams (UDP_GRO); False when it cannot."""
        try:
            self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError as error:
            log.debug("UDP_GRO refused: %s", error)
            return False
        self.coalescing = True
        return True

    def drain(self, handler: DatagramHandler, limit: int = DRAIN_LIMIT) -> int:
        """Read up to `limit` queued datagrams, calling `handler(view, source)` for each.

        Returns how many were read. Stops early when the socket is empty. The view aliases the
        reused buffer: it is overwritten by the next datagram.
        """
        if self.coalescing:

            def split(view: memoryview, segment: int, source: Endpoint) -> None:
                for start in range(0, len(view), segment):
                    handler(view[start : start + segment], source)

            return self.drain_batches(split, limit)
        receive = self.sock.recvfrom_into
        buffer, view = self._buffer, self._view
        count = 0
        while count < limit:
            try:
                size, source = receive(buffer)
            except BlockingIOError:
                break
            except OSError as error:
                # A queued ICMP error (ECONNREFUSED...) surfaces here; it is not fatal.
                self.receive_errors += 1
                log.debug("recvfrom failed: %s", error)
                count += 1
                continue
            count += 1
            handler(view[:size], source)
        return count

    def drain_batches(self, handler: BatchHandler, limit: int = DRAIN_LIMIT) -> int:
        """Like `drain`, but hand over each read whole: `handler(view, segment, source)`.

        With coalescing on, one read holds datagrams of one flow back to back, `segment` bytes
        each but the last; otherwise (or when the kernel did not coalesce) one datagram, and
        `segment` is its size. Returns how many datagrams were read.
        """
        receive = self.sock.recvmsg_into
        buffers, view = [self._buffer], self._view
        reads = count = 0
        while reads < limit:
            try:
                size, ancillary, _flags, source = receive(buffers, _GRO_ANCILLARY_BYTES)
            except BlockingIOError:
                break
            except OSError as error:
                self.receive_errors += 1
                log.debug("recvmsg failed: %s", error)
                reads += 1
                continue
            reads += 1
            if not ancillary:
                count += 1
                handler(view[:size], size or 1, source)
                continue
            segment = _GRO_SIZE.unpack_from(ancillary[0][2])[0] or size or 1
            self.coalesced_reads += 1
            count += -(-size // segment)
            handler(view[:size], segment, source)
        return count

    def drain_pktinfo(self, handler: PktinfoHandler, limit: int = DRAIN_LIMIT) -> int:
        """Like `drain`, but also pass the datagram's destination IPv4 address (dotted quad).

        Needs `open_udp_socket(..., pktinfo=True)`. The destination is the address in the IPv4
        header: one of the host's addresses, or a multicast group such as 224.0.0.253.
        """
        receive = self.sock.recvmsg_into
        buffers, view = [self._buffer], self._view
        local_ip = self.local[0]
        count = 0
        while count < limit:
            try:
                size, ancillary, _flags, source = receive(buffers, _ANCILLARY_BYTES)
            except BlockingIOError:
                break
            except OSError as error:
                self.receive_errors += 1
                log.debug("recvmsg failed: %s", error)
                count += 1
                continue
            count += 1
            destination = local_ip
            for level, kind, data in ancillary:
                if level == _socket.IPPROTO_IP and kind == IP_PKTINFO:
                    destination = _socket.inet_ntoa(data[8:12])  # ipi_addr: header destination
            handler(view[:size], source, destination)
        return count

    def counters(self) -> dict[str, int]:
        """The failure counters, for a status document."""
        return {
            "send_eagain": self.send_eagain,
            "send_enobufs": self.send_enobufs,
            "send_errors": self.send_errors,
            "receive_errors": self.receive_errors,
            "segmentation_fallbacks": self.segmentation_fallbacks,
            "coalesced_reads": self.coalesced_reads,
        }

    def close(self) -> None:
        self.sock.close()


def python_recv_batch(
    sock: _socket.socket,
    data: bytearray | memoryview,
    slot: int,
    records: bytearray | memoryview,
    max_count: int,
) -> tuple[int, int]:
    """Read up to `max_count` queued datagrams from `sock`, datagram i into `data[i * slot:]`.

    Writes record i (`RECORD`: source address, length, port, tag 0) into `records`; a datagram
    longer than `slot` is cut to it. Returns `(count, error)`: error is the errno that stopped the
    reading (EAGAIN: the queue is empty; anything else, such as a queued ECONNREFUSED, is for
    the caller to count), 0 when `max_count` were read. Twin of `teredo._accel.recv_batch`, which
    reads with `recvmmsg`; raises ValueError alike when the buffers cannot hold `max_count`. After
    a short `recvmmsg` the C version says EAGAIN without asking again: an error that came after
    some datagrams is then reported by the next read, where this one reports it at once.
    """
    from teredo.core.server import MAX_BATCH, RECORD  # a server's; not in a client or relay

    if (
        slot <= 0
        or not 0 <= max_count <= MAX_BATCH
        or max_count > len(data) // slot
        or max_count > len(records) // RECORD.size
    ):
        raise ValueError("batch buffers too small for the count")
    view = memoryview(data)
    receive = sock.recvfrom_into
    count = error = 0
    while count < max_count:
        start = count * slot
        try:
            size, source = receive(view[start : start + slot])
        except OSError as failure:
            error = failure.errno or errno.EIO
            break
        address = int.from_bytes(_socket.inet_aton(source[0]), "big")
        RECORD.pack_into(records, count * RECORD.size, address, size, source[1], 0)
        count += 1
    return count, error


def python_send_batch(
    sock: _socket.socket,
    out: bytearray | memoryview,
    slot: int,
    records: bytearray | memoryview,
    count: int,
    which: int,
) -> tuple[int, int, int, int]:
    """Send the answers among the first `count` whose record's tag is `which` from `sock`.

    Answer k is `out[k * slot:]` with the destination and length of record k (`RECORD`).
    Returns `(sent, eagain, enobufs, errors)`: a datagram that cannot be sent is counted and
    skipped, as `UdpSocket.send` does. Twin of `teredo._accel.send_batch`, which sends with
    `sendmmsg`; raises ValueError alike when the buffers cannot hold `count`.
    """
    from teredo.core.server import MAX_BATCH, RECORD  # a server's; not in a client or relay

    if (
        slot <= 0
        or not 0 <= count <= MAX_BATCH
        or count > len(out) // slot
        or count > len(records) // RECORD.size
    ):
        raise ValueError("batch buffers too small for the count")
    entries = [RECORD.unpack_from(records, k * RECORD.size) for k in range(count)]
    if any(tag == which and length > slot for _, length, _, tag in entries):
        raise ValueError("an answer is longer than its slot")
    view = memoryview(out)
    send = sock.sendto
    sent = eagain = enobufs = errors = 0
    for k, (address, length, port, tag) in enumerate(entries):
        if tag != which:
            continue
        start = k * slot
        try:
            send(
                view[start : start + length], (_socket.inet_ntoa(address.to_bytes(4, "big")), port)
            )
        except BlockingIOError:
            eagain += 1
        except OSError as failure:
            if failure.errno == errno.ENOBUFS:
                enobufs += 1
            else:
                errors += 1
        else:
            sent += 1
    return sent, eagain, enobufs, errors


def open_udp_socket(
    address: IPv4Address | str,
    port: int,
    *,
    pktinfo: bool = False,
    reuse_address: bool = False,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    address_setting: str = "BindAddress",
    port_setting: str | None = "BindPort",
    not_local_fix: str | None = None,
) -> UdpSocket:
    """Open a non-blocking IPv4 UDP socket bound to (address, port) with Teredo's options.

    `port` 0 lets the kernel choose (read it back from `UdpSocket.local`). `pktinfo` enables
    `drain_pktinfo`. `reuse_address` (SO_REUSEADDR) is for a multicast receiver sharing its
    port; leave it off otherwise so that a second daemon on the same port is an error, not a
    silent split of the traffic. `address_setting` and `port_setting` name the configuration
    directives in the error a person sees when the bind fails (`port_setting=None`: the port is
    not configurable); `not_local_fix` replaces the advice given when `address` is not one of
    this host's (by default: set `address_setting` to one of them, or 0.0.0.0).

    Raises `UserError` naming the address and the fix when the bind fails.
    """
    host = str(address)
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(_socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        _set_buffer(sock, _socket.SO_RCVBUF, SO_RCVBUFFORCE, buffer_bytes)
        _set_buffer(sock, _socket.SO_SNDBUF, SO_SNDBUFFORCE, buffer_bytes)
        if pktinfo:
            sock.setsockopt(_socket.IPPROTO_IP, IP_PKTINFO, 1)
        if reuse_address:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise _bind_error(
                error, host, port, address_setting, port_setting, not_local_fix
            ) from None
    except BaseException:
        sock.close()
        raise
    udp = UdpSocket(sock)
    log.debug(
        "UDP socket bound to %s:%d (rcvbuf %d, sndbuf %d, pktinfo %s)",
        udp.local[0],
        udp.local[1],
        sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF),
        sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF),
        pktinfo,
    )
    return udp


def join_multicast(
    udp: UdpSocket,
    interface: IPv4Address | str = "0.0.0.0",
    group: IPv4Address = DISCOVERY_GROUP,
) -> None:
    """Join `group` on the interface holding `interface` and send multicast there, TTL 1, no loop.

    For local client discovery (RFC 4380 §5.2.8): discovery bubbles must not leave the link
    (TTL 1) and a client must not hear its own (loop off). `interface` 0.0.0.0 lets the kernel
    pick by route. Raises `UserError` when the kernel refuses the membership.
    """
    sock = udp.sock
    local = _socket.inet_aton(str(interface))
    try:
        sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_IF, local)
        sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_LOOP, 0)
        membership = _socket.inet_aton(str(group)) + local  # struct ip_mreq
        sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_ADD_MEMBERSHIP, membership)
    except OSError as error:
        raise UserError(
            f"cannot join multicast group {group} on {interface}: {error.strerror}; "
            "check that the interface is up with multicast enabled, or turn local discovery off"
        ) from None


def _set_buffer(sock: _socket.socket, option: int, force_option: int, size: int) -> None:
    """Set a socket buffer size, beyond the sysctl cap when we have CAP_NET_ADMIN."""
    try:
        sock.setsockopt(_socket.SOL_SOCKET, force_option, size)
    except PermissionError:
        sock.setsockopt(_socket.SOL_SOCKET, option, size)


def interface_holding(address: IPv4Address) -> tuple[str, int] | None:
    """The interface whose primary IPv4 address is `address`, with its prefix length
    (SIOCGIFADDR, SIOCGIFNETMASK); None when no interface has it as its primary address.
    For advice in messages (an `ip addr add` command that fits), not for decisions."""
    import fcntl
    import socket

    for _, name in socket.if_nameindex():
        request = name.encode().ljust(40, b"\0")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                if fcntl.ioctl(probe, SIOCGIFADDR, request)[20:24] != address.packed:
                    continue
                mask = fcntl.ioctl(probe, SIOCGIFNETMASK, request)[20:24]
        except OSError:  # no IPv4 address on that interface, or it went away
            continue
        return name, bin(int.from_bytes(mask, "big")).count("1")
    return None


def _bind_error(
    error: OSError,
    host: str,
    port: int,
    address_setting: str,
    port_setting: str | None,
    not_local_fix: str | None = None,
) -> UserError:
    where = f"UDP {host}:{port}"
    code = error.errno
    if code == errno.EADDRNOTAVAIL:  # may be configured later (at boot): a daemon retries
        fix = not_local_fix or (
            f"set {address_setting} to one of this host's IPv4 addresses (or 0.0.0.0)"
        )
        return TransientError(f"cannot bind {where}: {host} is not an address of this host; {fix}")
    if code == errno.EADDRINUSE:
        fix = f"stop that program or set {port_setting}" if port_setting else "stop that program"
        return UserError(
            f"cannot bind {where}: the port is already in use (another teredo or miredo?); {fix}"
        )
    if code in (errno.EACCES, errno.EPERM):
        fix = (
            f"run as root or set {port_setting} to 1024 or above" if port_setting else "run as root"
        )
        return UserError(f"cannot bind {where}: permission denied; {fix}")
    reason = error.strerror or os.strerror(code or 0)
    return UserError(f"cannot bind {where}: {reason}; check {address_setting}")
