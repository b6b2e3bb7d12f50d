"""Checksum completion and segmentation of super-packets, against wire.internet_checksum."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teredo.adapters.accel import coalesce_segments, ones_complement_sum, segment
from teredo.core.offload import (
    COALESCED_BYTES,
    GSO_ECN,
    GSO_TCPV6,
    GSO_UDP_L4,
    MAX_COALESCED,
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    OffloadError,
    complete_checksum,
    python_coalesce_segments,
    python_segment,
)
from teredo.core.wire import internet_checksum
from teredo.core.wire import ones_complement_sum as python_ones_complement_sum
from testsupport import require_accelerators

SOURCE = bytes.fromhex("20010db8000200000000000000000002")
DESTINATION = bytes.fromhex("20010000c6336402000080007cffbffd")


def pseudo_header(packet: bytes) -> bytes:
    upper = len(packet) - 40
    return packet[8:40] + struct.pack("!IxxxB", upper, packet[6])


def transport_valid(packet: bytes) -> bool:
    return internet_checksum(pseudo_header(packet) + packet[40:]) == 0


def ipv6(next_header: int, transport: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 0x60012345, len(transport), next_header, 64)
        + SOURCE
        + DESTINATION
        + transport
    )


def tcp_packet(payload: bytes, *, sequence: int, flags: int, options: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", 5201, 40000, sequence, 77, offset << 4, flags, 512, 0, 0)
    return ipv6(6, header + options + payload)


def with_partial_checksum(packet: bytes, field: int) -> bytearray:
    """What the kernel hands over with NEEDS_CSUM: the field holds the pseudo-header sum."""
    partial = bytearray(packet)
    upper = len(packet) - 40
    pseudo = ones_complement_sum(packet[8:40] + struct.pack("!IxxxB", upper, packet[6]))
    partial[field : field + 2] = pseudo.to_bytes(2, "big")
    return partial


@pytest.mark.parametrize("summer", [ones_complement_sum, python_ones_complement_sum])
@given(data=st.binary(min_size=0, max_size=3000))
def test_ones_complement_sum_agrees_with_rfc1071(
    summer: Callable[[bytes], int], data: bytes
) -> None:
    """The C accelerator (when built) and the Python sum both agree with RFC 1071's fold."""
    expected = ~internet_checksum(data) & 0xFFFF
    got = summer(data)
    # 0 and 0xFFFF are the same number in one's complement; RFC 1071's fold never gives 0 for
    # data that is not all zeros, and neither does ours.
    assert got == expected or ({got, expected} == {0, 0xFFFF} and not any(data))


def test_sums_take_views() -> None:
    data = bytearray(range(256)) * 5
    assert ones_complement_sum(memoryview(data)[3:]) == python_ones_complement_sum(data[3:])


@given(st.binary(min_size=1, max_size=1400), st.sampled_from([6, 17]))
def test_complete_checksum_makes_the_packet_valid(payload: bytes, next_header: int) -> None:
    if next_header == 6:
        packet = tcp_packet(payload, sequence=1, flags=TCP_ACK)
        field = 40 + 16
    else:
        packet = ipv6(17, struct.pack("!HHHH", 3544, 40000, 8 + len(payload), 0) + payload)
        field = 40 + 6
    partial = with_partial_checksum(packet, field)
    complete_checksum(partial, 40, field - 40)
    assert transport_valid(bytes(partial))


def test_complete_checksum_refuses_offsets_outside_the_packet() -> None:
    with pytest.raises(OffloadError):
        complete_checksum(bytearray(60), 40, 30)


@given(
    payload=st.binary(min_size=1, max_size=9000),
    mss=st.integers(min_value=1, max_value=1220),
    sequence=st.integers(min_value=0, max_value=0xFFFFFFFF),
    flags=st.sampled_from([TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_FIN | TCP_PSH | TCP_CWR]),
    options=st.sampled_from([b"", bytes([1, 1, 8, 10]) + bytes(range(8))]),
)
def test_tcp_segments_are_valid_and_carry_the_stream(
    payload: bytes, mss: int, sequence: int, flags: int, options: bytes
) -> None:
    packet = tcp_packet(payload, sequence=sequence, flags=flags, options=options)
    partial = with_partial_checksum(packet, 56)
    out = memoryview(bytearray(len(payload) // mss * 200 + 2 * len(packet) + 200))
    count, size, end = segment(memoryview(partial), GSO_TCPV6 | GSO_ECN, mss, out)
    header_bytes = 40 + 20 + len(options)
    assert count == -(-len(payload) // mss)
    assert size == header_bytes + mss
    stream = b""
    position = 0
    for index in range(count):
        last = index == count - 1
        length = end - position if last else size
        piece = bytes(out[position : position + length])
        position += length
        assert transport_valid(piece)
        assert struct.unpack("!H", piece[4:6])[0] == len(piece) - 40
        assert piece[:4] == packet[:4] and piece[6:40] == packet[6:40]
        assert struct.unpack("!I", piece[44:48])[0] == (sequence + index * mss) & 0xFFFFFFFF
        segment_flags = piece[53]
        assert bool(segment_flags & TCP_CWR) == bool(flags & TCP_CWR and index == 0)
        assert bool(segment_flags & TCP_FIN) == bool(flags & TCP_FIN and last)
        assert bool(segment_flags & TCP_PSH) == bool(flags & TCP_PSH and last)
        assert piece[60:header_bytes] == options
        stream += piece[header_bytes:]
    assert position == end
    assert stream == payload


@given(payload=st.binary(min_size=1, max_size=5000), size=st.integers(1, 1232))
def test_udp_segments_are_valid_datagrams(payload: bytes, size: int) -> None:
    packet = ipv6(17, struct.pack("!HHHH", 3544, 40000, 8 + len(payload), 0) + payload)
    partial = with_partial_checksum(packet, 46)
    out = memoryview(bytearray(len(payload) // size * 60 + 2 * len(packet) + 100))
    count, _, end = segment(memoryview(partial), GSO_UDP_L4, size, out)
    stream = b""
    position = 0
    for index in range(count):
        length = end - position if index == count - 1 else 48 + size
        piece = bytes(out[position : position + length])
        position += length
        assert transport_valid(piece)
        assert struct.unpack("!H", piece[44:46])[0] == len(piece) - 40
        assert piece[46:48] != b"\0\0"  # zero means "no checksum", forbidden over IPv6
        stream += piece[48:]
    assert stream == payload


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        ipv6(6, b"\0" * 10),  # TCP header truncated
        ipv6(58, b"\0" * 100),  # not TCP
        tcp_packet(b"", sequence=0, flags=TCP_ACK),  # nothing to segment
    ],
)
def test_segment_refuses_what_it_cannot_cut(packet: bytes) -> None:
    with pytest.raises(OffloadError):
        segment(memoryview(packet), GSO_TCPV6, 1000, memoryview(bytearray(4096)))


@pytest.mark.parametrize("cutter", [segment, python_segment])
@pytest.mark.parametrize("words", [0, 1, 2, 3, 4])
def test_segment_refuses_a_tcp_data_offset_under_five_words(
    cutter: Callable[..., tuple[int, int, int]], words: int
) -> None:
    """With a data offset of 2-4 words the checksum field (offset 16) lies past the header:
    writing it overran the segments. Both twins refuse such a packet the same way."""
    packet = bytearray(tcp_packet(bytes(64), sequence=0, flags=TCP_ACK))
    packet[40 + 12] = words << 4
    out = bytearray(b"\xaa" * 8192)
    with pytest.raises(OffloadError):
        cutter(memoryview(bytes(packet)), GSO_TCPV6, 8, memoryview(out))
    assert out == b"\xaa" * 8192


def test_segment_refuses_a_short_output_buffer() -> None:
    packet = tcp_packet(bytes(5000), sequence=0, flags=TCP_ACK)
    with pytest.raises(OffloadError):
        segment(memoryview(packet), GSO_TCPV6, 1000, memoryview(bytearray(1000)))


COALESCERS = pytest.mark.parametrize("coalesce", [coalesce_segments, python_coalesce_segments])


def cut(packet: bytes, mss: int) -> list[bytes]:
    out = memoryview(bytearray(len(packet) * 3 + 4096))
    _, size, end = segment(memoryview(packet), GSO_TCPV6, mss, out)
    return [bytes(out[start : min(start + size, end)]) for start in range(0, end, size)]


def coalesced(
    coalesce: Callable[[bytes, int, memoryview], tuple[int, int]], datagrams: list[bytes]
) -> tuple[int, bytes, bytes]:
    """(count, header, packet) of joining one read's datagrams (all the first's size but the
    last); when only the first is taken, it comes back as it is with a plain header."""
    out = memoryview(bytearray(COALESCED_BYTES))
    count, length = coalesce(b"".join(datagrams), len(datagrams[0]), out)
    if count == 1:
        assert length == 0
        return 1, bytes(10), datagrams[0]
    return count, bytes(out[:10]), bytes(out[10:length])


@COALESCERS
@given(
    payload=st.binary(min_size=1, max_size=20000),
    mss=st.integers(min_value=100, max_value=1220),
    sequence=st.integers(min_value=0, max_value=0xFFFFFFFF),
    push=st.booleans(),
)
def test_coalescing_segments_gives_back_the_super_packet(
    coalesce: Callable[[bytes, int, memoryview], tuple[int, int]],
    payload: bytes,
    mss: int,
    sequence: int,
    push: bool,
) -> None:
    flags = TCP_ACK | (TCP_PSH if push else 0)
    options = bytes([1, 1, 8, 10]) + bytes(range(8))
    original = tcp_packet(payload, sequence=sequence, flags=flags, options=options)
    pieces = cut(original, mss)
    count, header, got = coalesced(coalesce, pieces)
    if len(pieces) == 1:
        assert header == bytes(10) and got == pieces[0]
        return
    assert count == len(pieces)  # at most 20000 / 100 = 200 > 64: see the next test
    flags_, gso_type, header_bytes, gso_size, csum_start, csum_offset = struct.unpack(
        "<BBHHHH", header
    )
    assert (flags_, gso_type, gso_size, csum_start, csum_offset) == (1, GSO_TCPV6, mss, 40, 16)
    assert header_bytes == 72
    assert got[:56] == original[:56] and got[58:] == original[58:]
    partial = with_partial_checksum(original, 56)
    assert got[56:58] == partial[56:58]


@COALESCERS
def test_coalescing_refuses_what_linux_would_not_join(
    coalesce: Callable[[bytes, int, memoryview], tuple[int, int]],
) -> None:
    options = bytes([1, 1, 8, 10]) + bytes(range(8))

    def piece(
        sequence: int, *, flags: int = TCP_ACK, size: int = 1000, opts: bytes = options
    ) -> bytes:
        return cut(tcp_packet(bytes(size), sequence=sequence, flags=flags, options=opts), 1000)[0]

    first = piece(1000)
    assert coalesced(coalesce, [first, piece(3000)])[0] == 1  # a gap in the sequence
    changed = piece(2000, opts=bytes([1, 1, 8, 10]) + bytes(8))
    assert coalesced(coalesce, [first, changed])[0] == 1
    assert coalesced(coalesce, [first, piece(2000, flags=TCP_ACK | TCP_FIN)])[0] == 1
    damaged = bytearray(piece(2000))
    damaged[-1] ^= 1
    assert coalesced(coalesce, [first, bytes(damaged)])[0] == 1
    assert coalesced(coalesce, [bytes(damaged), piece(3000)])[0] == 1
    assert coalesced(coalesce, [piece(1000, flags=TCP_ACK | TCP_PSH), piece(2000)])[0] == 1
    # A shorter datagram can only be the last of a read, and is taken.
    assert coalesced(coalesce, [first, piece(2000), piece(3000, size=10)])[0] == 3
    count, _, got = coalesced(coalesce, [first, piece(2000, flags=TCP_ACK | TCP_PSH)])
    assert count == 2 and got[53] == TCP_ACK | TCP_PSH  # PSH ends it, and is kept
    no_checksum = ipv6(17, struct.pack("!HHHH", 1, 2, 108, 0) + bytes(100))
    assert coalesced(coalesce, [no_checksum, no_checksum])[0] == 1


@COALESCERS
@given(
    payload=st.binary(min_size=1, max_size=20000), size=st.integers(min_value=16, max_value=1232)
)
def test_coalescing_udp_datagrams_gives_back_the_super_packet(
    coalesce: Callable[[bytes, int, memoryview], tuple[int, int]], payload: bytes, size: int
) -> None:
    original = ipv6(17, struct.pack("!HHHH", 5201, 40000, 8 + len(payload), 0) + payload)
    out = memoryview(bytearray(len(original) * 3 + 4096))
    _, step, end = segment(memoryview(original), GSO_UDP_L4, size, out)
    datagrams = [bytes(out[start : min(start + step, end)]) for start in range(0, end, step)]
    count, header, got = coalesced(coalesce, datagrams)
    assert count == min(len(datagrams), MAX_COALESCED)
    if count == 1:
        assert header == bytes(10) and got == datagrams[0]
        return
    assert struct.unpack("<BBHHHH", header) == (1, GSO_UDP_L4, 48, size, 40, 6)
    joined = b"".join(datagram[48:] for datagram in datagrams[:count])
    assert got[48:] == joined
    assert struct.unpack("!H", got[4:6])[0] == struct.unpack("!H", got[44:46])[0] == 8 + len(joined)
    partial = with_partial_checksum(got, 46)
    assert got[46:48] == partial[46:48]


@COALESCERS
def test_coalescing_refuses_bad_arguments(
    coalesce: Callable[[bytes, int, memoryview], tuple[int, int]],
) -> None:
    with pytest.raises(OffloadError):
        coalesce(bytes(100), 0, memoryview(bytearray(COALESCED_BYTES)))
    with pytest.raises(OffloadError):
        coalesce(bytes(100), 50, memoryview(bytearray(1000)))


def mutations(packets: list[bytes]) -> st.SearchStrategy[tuple[bytes, int]]:
    """One read's worth of datagrams built from `packets`, then bytes flipped at random."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[bytes, int]:
        chosen = draw(st.lists(st.sampled_from(packets), min_size=1, max_size=70))
        segment_size = len(chosen[0])
        data = bytearray(b"".join(p[:segment_size].ljust(segment_size, b"\0") for p in chosen))
        data = data[: draw(st.integers(1, len(data)))]
        for _ in range(draw(st.integers(0, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data), segment_size

    return build()


def _twin_packets() -> list[bytes]:
    options = bytes([1, 1, 8, 10]) + bytes(range(8))
    stream = tcp_packet(bytes(range(256)) * 20, sequence=7, flags=TCP_ACK, options=options)
    udp = ipv6(17, struct.pack("!HHHH", 5201, 40000, 8 + 3000, 0) + bytes(3000))
    out = memoryview(bytearray(20000))
    _, step, end = segment(memoryview(udp), GSO_UDP_L4, 600, out)
    return cut(stream, 600) + [bytes(out[i : min(i + step, end)]) for i in range(0, end, step)]


@given(mutations(_twin_packets()))
def test_the_c_and_python_coalescers_agree(read: tuple[bytes, int]) -> None:
    require_accelerators()
    data, segment_size = read
    outs = [memoryview(bytearray(b"\xaa" * COALESCED_BYTES)) for _ in range(2)]
    results = [
        join(data, segment_size, out)
        for join, out in zip((coalesce_segments, python_coalesce_segments), outs, strict=True)
    ]
    assert results[0] == results[1]
    end = results[0][1]
    assert outs[0][:end] == outs[1][:end]
    if results[0][0] > 1:  # nothing written past the super-packet (with one, nothing to read)
        for name, out in zip(("C", "Python"), outs, strict=True):
            assert out[end:] == b"\xaa" * (COALESCED_BYTES - end), (name, results[0])


@given(
    mutations(_twin_packets()),
    st.sampled_from([GSO_TCPV6, GSO_UDP_L4, GSO_TCPV6 | GSO_ECN, 0]),
    st.integers(0, 1300),
)
def test_the_c_and_python_segmenters_agree(
    read: tuple[bytes, int], gso_type: int, gso_size: int
) -> None:
    require_accelerators()
    packet = read[0]
    room = len(packet) * 2 + 4096
    outs = [memoryview(bytearray(b"\xaa" * room)) for _ in range(2)]
    results: list[object] = []
    for cutter, out in zip((segment, python_segment), outs, strict=True):
        try:
            results.append(cutter(memoryview(packet), gso_type, gso_size, out))
        except OffloadError as error:
            results.append(str(error))
    assert results[0] == results[1]
    end = results[0][2] if isinstance(results[0], tuple) else 0
    assert outs[0][:end] == outs[1][:end]
    for out in outs:  # nothing written past the segments (or at all, when refused)
        assert out[end:] == b"\xaa" * (room - end)
