"""The TUN device: the IPv6 side of a Teredo client or relay.

`open_tun(name)` creates (or attaches to) a layer-3 TUN interface through `/dev/net/tun` with
`IFF_TUN | IFF_NO_PI`: every read returns exactly one IPv6 packet, every write injects one, with
no extra header. The file descriptor is non-blocking and close-on-exec. The device is not made
persistent, so the kernel deletes it when the last descriptor closes: a crashed daemon leaves no
interface behind. (If an interface of that name already existed, persistent, we attach to it
and leave its persistence alone.)

Configure the interface (link up, MTU, addresses, routes) with `teredo.adapters.netlink`.

Hook the device to asyncio with `loop.add_reader(tun.fileno(), tun.drain, handler)`; the
handler gets a `memoryview` of a reused buffer, valid only during the call.

Two kernel features serve the fast data path (`teredo.programs.datapath`):

- `offload=True` opens the queue with a virtio-net header (IFF_VNET_HDR) and asks for checksum,
  TCP and UDP segmentation offloads (TUNSETOFFLOAD): the kernel then hands over 64 KiB
  super-packets with partial checksums, and the reader finishes them (`teredo.core.offload`). Each
  read starts with `VNET_HEADER_BYTES` of header; `write` adds a plain header by itself. When
  the kernel refuses an offload the queue still works, with fewer (or no) offloads:
  `offloads` says which were granted.
- `multi_queue=True` (IFF_MULTI_QUEUE): call `open_tun` again with the same name to attach more
  queues; the kernel spreads flows across them. The daemons use one queue each (one event loop
  in one thread); only the tests open several.
"""

from __future__ import annotations

import _socket  # socket.py without its enums and selectors, which cost a launch ~1.5 ms
import errno
import fcntl
import os
import struct
from collections.abc import Callable

from teredo.adapters.buffers import lazy_buffer
from teredo.core.errors import UsageError, UserError
from teredo.core.logger import get_logger
from teredo.core.offload import PLAIN_HEADER, VNET_HEADER_BYTES

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

log = get_logger(__name__)  # imports logging when it logs (teredo.core.logger)

TUN_DEVICE: Final = "/dev/net/tun"

# <linux/if_tun.h>
TUNSETIFF: Final = 0x400454CA  # _IOW('T', 202, int)
IFF_TUN: Final = 0x0001
IFF_MULTI_QUEUE: Final = 0x0100
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000
TUNSETOFFLOAD: Final = 0x400454D0  # _IOW('T', 208, unsigned int)
TUN_F_CSUM: Final = 0x01  # the reader completes checksums
TUN_F_TSO6: Final = 0x04  # ... and segments TCP over IPv6
TUN_F_TSO_ECN: Final = 0x08  # ... with CWR on the first segment only
TUN_F_USO4: Final = 0x20  # ... and segments UDP (kernels >= 6.2: only with USO6, never alone)
TUN_F_USO6: Final = 0x40  # ... over IPv6 (the kernel refuses one without the other: EINVAL)
# Offloads asked for, best first; a kernel that refuses one set gets the next.
OFFLOAD_CHOICES: Final = (
    TUN_F_CSUM | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM,
)

IFNAMSIZ: Final = 16  # including the terminating NUL
READ_BUFFER_BYTES: Final = 65536 + VNET_HEADER_BYTES  # any packet, even a GSO super-packet
DRAIN_LIMIT: Final = 64  # packets per readiness callback

_IFREQ: Final = struct.Struct("16sH22x")  # struct ifreq: name, flags, padding to 40 bytes

PacketHandler = Callable[[memoryview], None]
"""`handler(packet)`; the view is only valid during the call."""


class TunDevice:
    """An open TUN queue. Build it with `open_tun`.

    `name` is the interface name the kernel gave (it can differ from the request when the
    request was a template like "teredo%d").
    """

    __slots__ = (
        "_buffers",
        "_view",
        "fd",
        "multi_queue",
        "name",
        "offloads",
        "read_errors",
        "vnet_hdr",
        "write_eagain",
        "write_errors",
    )

    def __init__(
        self, fd: int, name: str, *, multi_queue: bool, vnet_hdr: bool, offloads: int = 0
    ) -> None:
        self.fd = fd
        self.name = name
        self.multi_queue = multi_queue
        self.vnet_hdr = vnet_hdr
        self.offloads = offloads
        buffer = lazy_buffer(READ_BUFFER_BYTES)  # pages only where packets land
        self._buffers: list[memoryview] = [buffer]
        self._view = buffer
        self.read_errors = 0
        self.write_eagain = 0
        self.write_errors = 0

    def fileno(self) -> int:
        return self.fd

    @property
    def index(self) -> int:
        """The interface index (in the network namespace of this process)."""
        return _socket.if_nametoindex(self.name)

    def drain(self, handler: PacketHandler, limit: int = DRAIN_LIMIT) -> int:
        """Read up to `limit` queued packets, calling `handler(view)` for each; return the count.

        The view aliases the reused buffer and is overwritten by the next read. With a
        virtio-net header the view starts with it (the offloaded data path,
        `teredo.programs.datapath`, reads the device itself through `read_runs`).
        """
        readv, fd, buffers, view = os.readv, self.fd, self._buffers, self._view
        count = 0
        while count < limit:
            try:
                size = readv(fd, buffers)
            except BlockingIOError:
                break
            except OSError as error:
                self.read_errors += 1
                log.debug("read from %s failed: %s", self.name, error)
                break
            count += 1
            handler(view[:size])
        return count

    def write(self, packet: bytes | bytearray | memoryview) -> bool:
        """Inject one packet into the kernel; on failure count it and return False.

        The kernel rejects (EINVAL) a packet whose first nibble is not an IP version. With a
        virtio-net header, a plain one (nothing to offload) goes first.
        """
        if self.vnet_hdr:
            return self.write_with_header(PLAIN_HEADER, packet)
        try:
            os.write(self.fd, packet)
        except OSError as error:
            return self._write_failed(error)
        return True

    def write_with_header(self, header: bytes, packet: bytes | bytearray | memoryview) -> bool:
        """Inject one packet with its own virtio-net header (a super-packet for the kernel to
        cut); needs `offload=True`. On failure count it and return False."""
        try:
            os.writev(self.fd, (header, packet))
        except OSError as error:
            return self._write_failed(error)
        return True

    def write_frame(self, frame: bytes | bytearray | memoryview) -> bool:
        """Inject a virtio-net header and its packet held in one buffer, as
        `coalesce_segments` (`teredo.adapters.accel`) writes them; needs `offload=True`. On
        failure count it and return False."""
        try:
            os.write(self.fd, frame)
        except OSError as error:
            return self._write_failed(error)
        return True

    def _write_failed(self, error: OSError) -> bool:
        if isinstance(error, BlockingIOError):
            self.write_eagain += 1
        else:
            self.write_errors += 1
            log.debug("write to %s failed: %s", self.name, error)
        return False

    def counters(self) -> dict[str, int]:
        """The failure counters, for a status document."""
        return {
            "read_errors": self.read_errors,
            "write_eagain": self.write_eagain,
            "write_errors": self.write_errors,
        }

    def close(self) -> None:
        """Close the queue; the kernel deletes the interface with its last queue."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_tun(
    name: str = "teredo",
    *,
    multi_queue: bool = False,
    offload: bool = False,
    device: str = TUN_DEVICE,
) -> TunDevice:
    """Create or attach to the TUN interface `name` and return its non-blocking queue.

    The interface is created in this process's network namespace and starts down; bring it up
    with `netlink`. Raises `UsageError` for a name the kernel cannot take, and `UserError` with
    the fix when the device is missing, permission is lacking or the name is taken.
    """
    encoded = _check_name(name)
    flags = IFF_TUN | IFF_NO_PI
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    if offload:
        flags |= IFF_VNET_HDR
    existed = _exists(name)
    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(
            f"{device} is missing; load the tun module (modprobe tun) or, in a container, "
            "pass the device in"
        ) from None
    except PermissionError:
        raise UserError(
            f"cannot open {device}: permission denied; run as root or grant CAP_NET_ADMIN"
        ) from None
    try:
        answer = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(encoded, flags))
    except OSError as error:
        os.close(fd)
        raise _setiff_error(error, name) from None
    actual = _IFREQ.unpack(answer)[0].rstrip(b"\0").decode("ascii")
    offloads = _set_offloads(fd) if offload else 0
    log.info(
        "%s TUN interface %s%s%s",
        "attached to existing" if existed else "created",
        actual,
        " (multi-queue)" if multi_queue else "",
        f" (offloads {offloads:#x})" if offload else "",
    )
    return TunDevice(fd, actual, multi_queue=multi_queue, vnet_hdr=offload, offloads=offloads)


def _set_offloads(fd: int) -> int:
    """Ask for the best offloads the kernel grants; 0 when it grants none."""
    for choice in OFFLOAD_CHOICES:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, choice)
        except OSError as error:
            log.debug("TUNSETOFFLOAD %#x refused: %s", choice, error)
            continue
        return choice
    return 0


def _check_name(name: str) -> bytes:
    try:
        encoded = name.encode("ascii")
    except UnicodeEncodeError:
        encoded = b""
    if (
        not encoded
        or len(encoded) >= IFNAMSIZ
        or name in (".", "..")
        or any(c in "/:" or c.isspace() for c in name)
    ):
        raise UsageError(
            f"InterfaceName {name!r} is not a valid interface name; use 1 to 15 ASCII "
            "characters without '/', ':' or spaces"
        )
    return encoded


def _exists(name: str) -> bool:
    try:
        _socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _setiff_error(error: OSError, name: str) -> UserError:
    code = error.errno
    if code in (errno.EPERM, errno.EACCES):
        return UserError(
            f"cannot create TUN interface {name}: permission denied; "
            "run as root or grant CAP_NET_ADMIN"
        )
    if code == errno.EBUSY:
        return UserError(
            f"TUN interface {name} is already in use (another teredo or miredo?); stop it or "
            "set InterfaceName to another name"
        )
    if code == errno.EINVAL:
        return UserError(
            f"interface {name} exists but is not a TUN device with these flags; delete it "
            f"(ip link del {name}) or set InterfaceName to another name"
        )
    return UserError(f"cannot create TUN interface {name}: {error.strerror}")
