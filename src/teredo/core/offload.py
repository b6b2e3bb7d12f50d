"""The kernel's offloads done by hand: virtio-net headers, checksums, segmentation, coalescing.

Theory of operation
-------------------
A TUN device opened with a virtio-net header (`IFF_VNET_HDR`) and offloads switched on
(`TUNSETOFFLOAD`: checksum, TCP and UDP segmentation) lets the kernel hand the tunnel one
*super-packet* of up to 64 KiB instead of ~50 MTU-sized packets, and take one back. Each read
and write then starts with a 10-byte header (`VNET_HEADER`):

    flags u8 | gso_type u8 | hdr_len u16 | gso_size u16 | csum_start u16 | csum_offset u16

(little-endian on the machines we run on; `<linux/virtio_net.h>`). Reading, the tunnel must do
what a network card would have done before the packets go out on the wire, inside UDP:

- `NEEDS_CSUM`: the transport checksum at `csum_start + csum_offset` holds only the sum of the
  IPv6 pseudo-header; `complete_checksum` sums from `csum_start` to the end and stores it.
- `GSO_TCPV6` / `GSO_UDP_L4`: one IPv6 header, one TCP (or UDP) header, then a payload to cut
  into `gso_size` pieces. `segment` writes the finished MTU-sized IPv6 packets back to back
  into a buffer, each with its own length, sequence number, flags and checksum (RFC 9293 §3.1;
  the rules of Linux's own TCP segmentation: FIN and PSH only on the last segment, CWR only on
  the first). Every segment has the same size except maybe the last, which is exactly what UDP
  segmentation offload (`UDP_SEGMENT`) sends in one system call.

Writing, the reverse: `coalesce_segments` joins the datagrams one read of a `UDP_GRO` socket
returns (up to 64 of one UDP flow, back to back) into one super-packet with a `GSO_TCPV6` or
`GSO_UDP_L4` header when they carry consecutive segments of one TCP or UDP flow, so the kernel
takes them in one write.

Checksums are the costly part: ~50 per super-packet. The optional C module `teredo._accel`
does `ones_complement_sum`, `segment` and `coalesce_segments` ~20 times faster (a sum of 1280
bytes in ~0.1 us, a 64-datagram batch in a few us). This module holds their pure-Python twins
`python_*`, which give the same results (the tests check both on the same input); which of the
two runs is chosen at the edge, by `teredo.adapters.accel`. The sum uses the fact that
a sum of 16-bit words in one's complement arithmetic is the number they form modulo 0xFFFF
(because 2**16 = 1 mod 0xFFFF), `int.from_bytes(...) % 0xFFFF`, ~3 us for 1280 bytes.

Everything here is pure: buffers in, buffers out. The adapters and programs
(`teredo.adapters.tun`, `teredo.programs.datapath`) do the reads, writes and sends.
"""

from __future__ import annotations

import struct

from teredo.core.wire import ones_complement_sum as python_ones_complement_sum

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

VNET_HEADER: Final = struct.Struct("<BBHHHH")
VNET_HEADER_BYTES: Final = VNET_HEADER.size  # 10: struct virtio_net_hdr
PLAIN_HEADER: Final = bytes(VNET_HEADER_BYTES)  # no checksum to do, no segmentation

# virtio_net_hdr.flags
NEEDS_CSUM: Final = 0x01
DATA_VALID: Final = 0x02

# virtio_net_hdr.gso_type
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3  # IPv4 UDP fragmentation offload, never asked for
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5  # UDP segmentation (USO), kernels >= 6.2
GSO_ECN: Final = 0x80

IPV6_HEADER_BYTES: Final = 40
NEXT_HEADER_TCP: Final = 6
NEXT_HEADER_UDP: Final = 17
TCP_FIN: Final = 0x01
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10
TCP_CWR: Final = 0x80
TCP_CHECKSUM_OFFSET: Final = 16
TCP_MIN_HEADER_BYTES: Final = 20  # RFC 9293 §3.1: data offset of at least 5 words
UDP_CHECKSUM_OFFSET: Final = 6


class OffloadError(ValueError):
    """A super-packet we cannot segment (malformed, or a layout the tunnel does not handle)."""


def complete_checksum(packet: bytearray | memoryview, csum_start: int, csum_offset: int) -> None:
    """Finish a partial transport checksum in place (`NEEDS_CSUM`).

    The field holds the pseudo-header sum; the result is the complement of the sum of
    everything from `csum_start` on. Raises `OffloadError` when the offsets do not fit.
    """
    field = csum_start + csum_offset
    if field + 2 > len(packet) or csum_start < IPV6_HEADER_BYTES:
        raise OffloadError("checksum offsets outside the packet")
    checksum = ~python_ones_complement_sum(packet[csum_start:]) & 0xFFFF
    packet[field : field + 2] = (checksum or 0xFFFF).to_bytes(2, "big")


def python_segment(
    packet: bytes | bytearray | memoryview, gso_type: int, gso_size: int, out: memoryview
) -> tuple[int, int, int]:
    """Cut an IPv6 TCP or UDP super-packet into `out`, back to back: (count, size, end).

    `size` is the size of every segment but the last, which may be shorter; `end` is where
    the last one ends in `out`. Only a transport
    header right after the IPv6 header is handled (Linux does not offload other layouts to a
    TUN device). Raises `OffloadError` for anything else, or when `out` is too small.
    """
    if len(packet) < IPV6_HEADER_BYTES or gso_size <= 0:
        raise OffloadError("super-packet too short")
    next_header = packet[6]
    kind = gso_type & ~GSO_ECN
    if kind == GSO_TCPV6 and next_header == NEXT_HEADER_TCP:
        if len(packet) < IPV6_HEADER_BYTES + 20:
            raise OffloadError("TCP header truncated")
        header_bytes = IPV6_HEADER_BYTES + (packet[IPV6_HEADER_BYTES + 12] >> 4) * 4
        if header_bytes < IPV6_HEADER_BYTES + TCP_MIN_HEADER_BYTES:
            # A data offset under 5 words (RFC 9293 §3.1): the checksum field would lie past
            # the header, in the payload or beyond the packet.
            raise OffloadError("TCP header shorter than 20 bytes")
        checksum_field = IPV6_HEADER_BYTES + TCP_CHECKSUM_OFFSET
        tcp = True
    elif kind == GSO_UDP_L4 and next_header == NEXT_HEADER_UDP:
        header_bytes = IPV6_HEADER_BYTES + 8
        checksum_field = IPV6_HEADER_BYTES + UDP_CHECKSUM_OFFSET
        tcp = False
    else:
        raise OffloadError("unsupported super-packet layout")
    total = len(packet)
    payload_bytes = total - header_bytes
    if payload_bytes <= 0 or header_bytes - IPV6_HEADER_BYTES < 8:
        raise OffloadError("super-packet without payload")
    count = -(-payload_bytes // gso_size)
    size = header_bytes + gso_size
    if count * header_bytes + payload_bytes > len(out):
        raise OffloadError("segment buffer too small")
    # The pseudo-header (RFC 8200 §8.1): addresses and next header are shared by all segments.
    addresses = int.from_bytes(packet[8:40], "big") % 0xFFFF + next_header
    header = bytearray(packet[:header_bytes])
    header[checksum_field : checksum_field + 2] = b"\0\0"
    sequence = int.from_bytes(header[44:48], "big") if tcp else 0
    flags = header[IPV6_HEADER_BYTES + 13] if tcp else 0
    transport = IPV6_HEADER_BYTES
    checksum_of = python_ones_complement_sum
    position = 0
    start = header_bytes
    for index in range(count):
        piece = min(gso_size, total - start)
        upper = header_bytes - IPV6_HEADER_BYTES + piece
        end = position + header_bytes + piece
        segment_view = out[position:end]
        header[4:6] = upper.to_bytes(2, "big")
        if tcp:
            header[44:48] = ((sequence + index * gso_size) & 0xFFFFFFFF).to_bytes(4, "big")
            segment_flags = flags
            if index:
                segment_flags &= ~TCP_CWR
            if index != count - 1:
                segment_flags &= ~(TCP_FIN | TCP_PSH)
            header[IPV6_HEADER_BYTES + 13] = segment_flags
        else:
            header[44:46] = upper.to_bytes(2, "big")
        segment_view[:header_bytes] = header
        segment_view[header_bytes:] = packet[start : start + piece]
        summed = addresses + upper + checksum_of(segment_view[transport:])
        checksum = 0xFFFF - summed % 0xFFFF
        segment_view[checksum_field : checksum_field + 2] = checksum.to_bytes(2, "big")
        position = end
        start += piece
    return count, size, position


MAX_COALESCED: Final = 64  # segments per super-packet (the kernel's UDP_MAX_SEGMENTS)
# Room for any super-packet `coalesce_segments` writes: its header and the largest IPv6 packet.
COALESCED_BYTES: Final = VNET_HEADER_BYTES + IPV6_HEADER_BYTES + 65535


def _joinable(packet: memoryview) -> tuple[int, bytes, int, int] | None:
    """(header bytes, key, TCP flags, sequence number) of an IPv6 TCP or UDP packet that may
    join a super-packet, or None: see `coalesce_segments` for the rules."""
    total = len(packet)
    if total < IPV6_HEADER_BYTES + 8 or packet[0] >> 4 != 6:
        return None
    if IPV6_HEADER_BYTES + ((packet[4] << 8) | packet[5]) != total:
        return None
    next_header = packet[6]
    flags = sequence = 0
    if next_header == NEXT_HEADER_TCP:
        if total < IPV6_HEADER_BYTES + 20:
            return None
        header_bytes = IPV6_HEADER_BYTES + (packet[52] >> 4) * 4
        flags = packet[53]
        if header_bytes < 60 or flags & ~(TCP_ACK | TCP_PSH) or not flags:
            return None
        # Everything but payload length, sequence number, flags and checksum must match.
        key = b"".join(
            (packet[0:4], packet[6:44], packet[48:53], packet[54:56], packet[58:header_bytes])
        )
        sequence = int.from_bytes(packet[44:48], "big")
    elif next_header == NEXT_HEADER_UDP:
        header_bytes = IPV6_HEADER_BYTES + 8
        if packet[46] == packet[47] == 0:
            return None  # no checksum: not allowed over IPv6 (RFC 8200 §8.1)
        key = b"".join((packet[0:4], packet[6:44]))
    else:
        return None
    if total <= header_bytes:
        return None
    upper = total - IPV6_HEADER_BYTES
    summed = python_ones_complement_sum(packet[8:40]) + upper + next_header
    if (summed + python_ones_complement_sum(packet[IPV6_HEADER_BYTES:])) % 0xFFFF:
        return None  # damaged: the kernel must see it alone, and drop it
    return header_bytes, key, flags, sequence


def python_coalesce_segments(
    data: bytes | bytearray | memoryview, segment: int, out: bytearray | memoryview
) -> tuple[int, int]:
    """Join the datagrams at the start of `data` into one super-packet: (count, length).

    `data` holds datagrams of `segment` bytes back to back, the last maybe shorter: what one
    read of a `UDP_GRO` socket returns. Taken are the first and every following one that Linux's
    own GRO would join to it: IPv6 without extension headers, then

    - TCP: same addresses, ports, traffic class, flow label, hop limit, acknowledgment, window
      and options, consecutive sequence numbers, no flag but ACK (PSH ends a super-packet);
    - UDP: same addresses, ports, traffic class, flow label and hop limit;

    every payload the size of the first but the last (a shorter one ends it), at most
    `MAX_COALESCED`, and a valid checksum, so that a damaged packet still reaches the kernel
    alone and is dropped there. When `count` > 1, `out[:length]` is the virtio-net header and
    the super-packet, ready for one write. When `count` is 1, nothing in `out` is to be read
    (the C twin may have begun copying into it): the first datagram goes alone, as it is.
    Raises `OffloadError` when `out` is too small for any super-packet or `segment` is not
    positive.
    """
    if segment <= 0:
        raise OffloadError("segment size must be positive")
    if len(out) < COALESCED_BYTES:
        raise OffloadError("coalescing buffer too small")
    view = memoryview(data)
    total_bytes = len(view)
    if total_bytes <= segment:
        return 1, 0
    first = _joinable(view[:segment])
    if first is None:
        return 1, 0
    header_bytes, key, flags, sequence = first
    size = segment - header_bytes
    if flags & TCP_PSH:
        return 1, 0
    start = VNET_HEADER_BYTES
    out[start : start + segment] = view[:segment]
    length, count = segment, 1
    following = (sequence + size) & 0xFFFFFFFF
    for position in range(segment, total_bytes, segment):
        if count >= MAX_COALESCED:
            break
        packet = view[position : position + segment]
        joinable = _joinable(packet)
        if joinable is None:
            break
        packet_header_bytes, packet_key, packet_flags, packet_sequence = joinable
        payload = len(packet) - packet_header_bytes
        if (
            packet_key != key
            or payload > size
            or length + payload > IPV6_HEADER_BYTES + 65535
            or (flags and packet_sequence != following)
        ):
            break
        out[start + length : start + length + payload] = packet[packet_header_bytes:]
        length += payload
        count += 1
        following = (packet_sequence + payload) & 0xFFFFFFFF
        if packet_flags & TCP_PSH:
            out[start + IPV6_HEADER_BYTES + 13] |= TCP_PSH
            break
        if payload < size:
            break
    if count == 1:
        return 1, 0
    packet = memoryview(out)[start : start + length]
    upper = length - IPV6_HEADER_BYTES
    packet[4:6] = upper.to_bytes(2, "big")
    next_header = packet[6]
    if flags:
        gso_type, field = GSO_TCPV6, IPV6_HEADER_BYTES + TCP_CHECKSUM_OFFSET
    else:
        gso_type, field = GSO_UDP_L4, IPV6_HEADER_BYTES + UDP_CHECKSUM_OFFSET
        packet[44:46] = upper.to_bytes(2, "big")
    # NEEDS_CSUM: the field holds the pseudo-header sum; the kernel sums the rest.
    pseudo = (python_ones_complement_sum(packet[8:40]) + upper + next_header) % 0xFFFF
    packet[field : field + 2] = pseudo.to_bytes(2, "big")
    VNET_HEADER.pack_into(
        out,
        0,
        NEEDS_CSUM,
        gso_type,
        header_bytes,
        size,
        IPV6_HEADER_BYTES,
        field - IPV6_HEADER_BYTES,
    )
    return count, start + length
