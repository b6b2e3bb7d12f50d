import _socket
from collections.abc import Callable

def ones_complement_sum(data: bytes | bytearray | memoryview, /) -> int: ...
def coalesce_segments(
    data: bytes | bytearray | memoryview, segment: int, out: bytearray | memoryview, /
) -> tuple[int, int]: ...
def segment(
    packet: bytes | bytearray | memoryview, gso_type: int, gso_size: int, out: memoryview, /
) -> tuple[int, int, int]: ...
def read_runs(
    fd: int, buffer: memoryview, max_reads: int, /
) -> tuple[int, list[tuple[int, int, int, int, int]], int, int]: ...

class RateLimiter:
    """Token buckets per IPv4 address in a bounded LRU table (see SourceRateLimiter)."""

    rate: float
    burst: float
    def __init__(
        self, rate: float, burst: float, max_entries: int, seed: bytes | None = None
    ) -> None: ...
    @property
    def max_entries(self) -> int: ...
    def allow(self, key: int, now: float, /) -> bool: ...
    def __len__(self) -> int: ...

def answer_solicitations(
    data: bytearray | memoryview,
    slot: int,
    records: bytearray | memoryview,
    count: int,
    plan: tuple[bytes, int, int, int, bool, bytes],
    limiter: object,
    now: float,
    local: int,
    out: bytearray | memoryview,
    out_slot: int,
    out_records: bytearray | memoryview,
    slow: Callable[[int], object],
    /,
) -> tuple[int, int, int, int, int, int, int]: ...
def recv_batch(
    sock: _socket.socket,
    data: bytearray | memoryview,
    slot: int,
    records: bytearray | memoryview,
    max_count: int,
    /,
) -> tuple[int, int]: ...
def send_batch(
    sock: _socket.socket,
    out: bytearray | memoryview,
    slot: int,
    records: bytearray | memoryview,
    count: int,
    which: int,
    /,
) -> tuple[int, int, int, int]: ...
