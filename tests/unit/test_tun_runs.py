"""Reading a TUN queue in runs: a SOCK_SEQPACKET pair stands in for the queue (one message per
read, EAGAIN when empty), and the C reader must read exactly what its Python twin reads."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.adapters.accel import read_runs
from teredo.adapters.tun_runs import (
    READ_BYTES,
    Run,
    python_read_runs,
)
from teredo.core.offload import GSO_NONE, GSO_TCPV6, NEEDS_CSUM, VNET_HEADER
from teredo.core.wire import internet_checksum
from testsupport import require_accelerators

Reader = Callable[[int, memoryview, int], tuple[int, list[Run], int, int]]
READERS = pytest.mark.parametrize("reader", [read_runs, python_read_runs])
SOURCE = bytes.fromhex("20010db8000200000000000000000002")
PEER_A = bytes.fromhex("20010000c6336402000080007cffbffd")
PEER_B = bytes.fromhex("20010000c6336402000080007cffbffe")
PLAIN = VNET_HEADER.pack(0, GSO_NONE, 0, 0, 0, 0)


def udp(destination: bytes, payload: bytes, source: bytes = SOURCE) -> bytes:
    upper = struct.pack("!HHHH", 5201, 40000, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB", 0x60000000, len(upper), 17, 64) + source + destination + upper


def partial(packet: bytes) -> bytes:
    """The packet as the kernel hands it with NEEDS_CSUM: the pseudo-header sum in the field."""
    pseudo = packet[8:40] + struct.pack("!IxxxB", len(packet) - 40, 17)
    folded = ~internet_checksum(pseudo) & 0xFFFF
    return packet[:46] + folded.to_bytes(2, "big") + packet[48:]


@pytest.fixture
def queue() -> Iterator[tuple[socket.socket, socket.socket]]:
    writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    reader.setblocking(False)
    yield writer, reader
    writer.close()
    reader.close()


def read_all(
    reader: Reader, fd: int, max_reads: int = 64
) -> list[tuple[int, list[tuple[int, bytes, int, int]], int, int]]:
    """Every call until the queue is empty: (reads, runs with their bytes, dropped, error)."""
    calls = []
    buffer = memoryview(bytearray(4 * READ_BYTES))
    while True:
        reads, runs, dropped, error = reader(fd, buffer, max_reads)
        taken = [
            (size, bytes(buffer[start:end]), kind, gso) for start, end, size, kind, gso in runs
        ]
        calls.append((reads, taken, dropped, error))
        if error:
            return calls


@READERS
def test_runs_group_packets_that_leave_together(
    reader: Reader, queue: tuple[socket.socket, socket.socket]
) -> None:
    writer, tun = queue
    a = [udp(PEER_A, bytes([n]) * 100) for n in range(3)]
    short_a = udp(PEER_A, b"x" * 10)
    b = udp(PEER_B, b"y" * 100)
    for packet in (*a, short_a, a[0], b, b, b"\x60" * 20):
        writer.send(PLAIN + packet)
    super_packet = udp(PEER_A, bytes(3000))
    writer.send(VNET_HEADER.pack(NEEDS_CSUM, GSO_TCPV6, 60, 1000, 40, 16) + super_packet)
    writer.send(PLAIN)  # an empty read is skipped
    [(reads, runs, dropped, error)] = read_all(reader, tun.fileno())
    assert (reads, dropped, error) == (10, 0, errno.EAGAIN)
    assert runs == [
        (len(a[0]), b"".join(a) + short_a, GSO_NONE, 0),  # a shorter one ends a run
        (len(a[0]), a[0], GSO_NONE, 0),
        (len(b), b + b, GSO_NONE, 0),  # a new destination starts a run
        (20, b"\x60" * 20, GSO_NONE, 0),  # shorter than an IPv6 header: alone
        (len(super_packet), super_packet, GSO_TCPV6, 1000),
    ]


@READERS
def test_a_new_source_starts_a_run(
    reader: Reader, queue: tuple[socket.socket, socket.socket]
) -> None:
    """A client's verdict depends on the source too (`required_source`): one run, one source."""
    writer, tun = queue
    ours, other = udp(PEER_A, b"z" * 100), udp(PEER_A, b"z" * 100, source=PEER_B)
    for packet in (ours, ours, other, ours):
        writer.send(PLAIN + packet)
    [(reads, runs, _, _)] = read_all(reader, tun.fileno())
    assert reads == 4
    assert [data for _, data, _, _ in runs] == [ours + ours, other, ours]


@READERS
def test_runs_complete_checksums_and_drop_impossible_offsets(
    reader: Reader, queue: tuple[socket.socket, socket.socket]
) -> None:
    writer, tun = queue
    packet = udp(PEER_A, b"checksum me")
    writer.send(VNET_HEADER.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 40, 6) + partial(packet))
    writer.send(VNET_HEADER.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 40, 600) + packet)
    [(reads, runs, dropped, _)] = read_all(reader, tun.fileno())
    assert (reads, dropped, len(runs)) == (2, 1, 1)
    completed = runs[0][1]
    pseudo = completed[8:40] + struct.pack("!IxxxB", len(completed) - 40, 17)
    assert internet_checksum(pseudo + completed[40:]) == 0


@READERS
def test_runs_stop_at_max_reads_and_at_the_segment_limits(
    reader: Reader, queue: tuple[socket.socket, socket.socket]
) -> None:
    writer, tun = queue
    for _ in range(70):
        writer.send(PLAIN + udp(PEER_A, bytes(100)))
    calls = read_all(reader, tun.fileno(), max_reads=66)
    assert [(reads, [len(run[1]) // 148 for run in runs]) for reads, runs, _, _ in calls] == [
        (66, [64, 2]),  # at most 64 datagrams leave in one send
        (4, [4]),
    ]


def _messages() -> st.SearchStrategy[list[bytes]]:
    plain = [udp(peer, bytes(size)) for peer in (PEER_A, PEER_B) for size in (0, 100, 1200)]
    headers = st.sampled_from(
        [
            PLAIN,
            VNET_HEADER.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 40, 6),
            VNET_HEADER.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6),
            VNET_HEADER.pack(NEEDS_CSUM, GSO_TCPV6, 60, 1000, 40, 16),
        ]
    )
    packets = st.one_of(st.sampled_from(plain), st.binary(max_size=80))
    return st.lists(st.tuples(headers, packets).map(lambda pair: pair[0] + pair[1]), max_size=150)


@settings(max_examples=60)
@given(_messages(), st.integers(1, 80))
def test_the_c_and_python_readers_agree(messages: list[bytes], max_reads: int) -> None:
    require_accelerators()
    results = []
    for reader in (read_runs, python_read_runs):
        writer, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        tun.setblocking(False)
        with writer, tun:
            for message in messages:
                writer.send(message)
            results.append(read_all(reader, tun.fileno(), max_reads))
    assert results[0] == results[1]
