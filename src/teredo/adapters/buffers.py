"""Receive buffers whose memory is only used where data lands.

`bytearray(n)` writes n zero bytes, so every page of it is resident at once. A daemon's
receive buffers are sized for the largest datagram or super-packet (64 KiB) times a batch,
but ordinary traffic touches only their first page or two: the server's 64-slot batch is 4 MiB
of which a Router Solicitation uses 4 KiB a slot. An anonymous mapping (`mmap(-1, n)`) reads as
zeros too, and the kernel gives it a page only when something is written there: resident
memory follows the traffic instead of the worst case (`bash scripts/bench --footprint`).
"""

from __future__ import annotations

import mmap


def lazy_buffer(size: int) -> memoryview:
    """A writable, zero-filled buffer of `size` bytes whose pages are allocated on first write."""
    return memoryview(mmap.mmap(-1, size))
