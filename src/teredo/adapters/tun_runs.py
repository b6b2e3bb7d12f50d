"""Reading an offloaded TUN queue in *runs*: the packets that can leave in one send.

A client or relay forwarding a flood of small packets to one peer would pay one Python round
trip per packet: read, look up the peer, send. The engine's verdict for a plain packet
(`PeeringEngine.forward_to_teredo`) depends only on its IPv6 addresses (the destination's peer,
and for a client the source), and UDP segmentation offload sends equal-sized datagrams to one
destination in one call. So the reader groups what
it reads:

    read_runs(fd, buffer, max_reads) -> (reads, runs, dropped, error)

reads up to `max_reads` packets (each after its virtio-net header, `teredo.core.offload`) into
`buffer`, back to back, while at least `READ_BYTES` of room is left, and returns them as runs
`(start, end, size, gso_type, gso_size)` in the order read:

- `gso_type == GSO_NONE`: plain packets at `buffer[start:end]`, `size` bytes each but maybe the
  last (shorter, which ends the run), all with the same IPv6 source and destination, at most
  `MAX_SEGMENTS` of them and `MAX_SEGMENTED_BYTES` in all; a partial checksum (`NEEDS_CSUM`) is
  completed. A packet shorter than an IPv6 header is a run of its own.
- otherwise: one super-packet at `buffer[start:end]` as read, for `teredo.adapters.accel.segment`.

`dropped` counts packets whose checksum offsets lie outside them; `error` is the errno that
stopped the reading (`EAGAIN`: the queue is empty), 0 when `max_reads` or the room did.

The optional C module `teredo._accel` does it without a Python round trip per packet
(~0.1 us of user time per packet instead of ~1.5 us); `python_read_runs` is its portable twin
(`teredo.adapters.accel` chooses), and the tests check that both read the same runs from the
same queue.
"""

from __future__ import annotations

import os
from typing import Final

from teredo.adapters.udp import MAX_SEGMENTED_BYTES, MAX_SEGMENTS
from teredo.core.offload import (
    GSO_NONE,
    IPV6_HEADER_BYTES,
    NEEDS_CSUM,
    VNET_HEADER,
    VNET_HEADER_BYTES,
    OffloadError,
    complete_checksum,
)

READ_BYTES: Final = 65536  # room for one read: any packet, even a super-packet

Run = tuple[int, int, int, int, int]
"""(start, end, size, gso_type, gso_size): see the module documentation."""


def python_read_runs(
    fd: int, buffer: memoryview, max_reads: int
) -> tuple[int, list[Run], int, int]:
    """Read packets from the TUN queue `fd` into `buffer` and group them into runs (module doc)."""
    header = bytearray(VNET_HEADER_BYTES)
    unpack = VNET_HEADER.unpack
    runs: list[Run] = []
    last_start = len(buffer) - READ_BYTES
    position = reads = dropped = error = 0
    # The open run: `count` packets of `size` bytes at buffer[start:position], all `addresses`.
    start = size = count = 0
    addresses = b""
    closed = True  # nothing more may join the open run
    while reads < max_reads and position <= last_start:
        try:
            length = os.readv(fd, (header, buffer[position : position + READ_BYTES]))
        except OSError as failure:
            error = failure.errno or -1
            break
        reads += 1
        length -= VNET_HEADER_BYTES
        if length <= 0:
            continue
        packet = buffer[position : position + length]
        flags, gso_type, _, gso_size, csum_start, csum_offset = unpack(header)
        if gso_type != GSO_NONE:
            if count:
                runs.append((start, position, size, GSO_NONE, 0))
                count = 0
            runs.append((position, position + length, length, gso_type, gso_size))
            position += length
            continue
        if flags & NEEDS_CSUM:
            try:
                complete_checksum(packet, csum_start, csum_offset)
            except OffloadError:
                dropped += 1
                continue
        if (
            count
            and not closed
            and IPV6_HEADER_BYTES <= length <= size
            and count < MAX_SEGMENTS
            and position + length - start <= MAX_SEGMENTED_BYTES
            and packet[8:40] == addresses
        ):
            count += 1
            closed = length < size
        else:
            if count:
                runs.append((start, position, size, GSO_NONE, 0))
            start, size, count = position, length, 1
            closed = length < IPV6_HEADER_BYTES
            addresses = bytes(packet[8:40])
        position += length
    if count:
        runs.append((start, position, size, GSO_NONE, 0))
    return reads, runs, dropped, error
