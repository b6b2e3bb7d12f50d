"""The kernel data path's decisions in Python: the twin of `datapath.bpf.c`.

Theory of operation
-------------------
Per-packet Python cannot keep up with many peers sending single datagrams; the kernel can, for
the packets whose fate is already settled. `datapath.bpf.c` holds two TC programs that do, in
the kernel, what the engine's fast paths (`teredo.core.peering.PeeringEngine.accept_from_teredo` and
`forward_to_teredo`) do in user space, for *established* peers only: trusted (their mapping is
proven, RFC 4380 §5.2.3), nothing queued, no setup under way. The daemon mirrors those peers
into the `peers` map (`teredo.adapters.bpf`); everything else is passed unchanged to the
daemon's socket or TUN queue, where the Python paths decide as before. So the kernel never
decides anything the engine would decide differently: it only decides sooner.

A relay's map also *learns*: a datagram from a source with no entry, whose Teredo address
embeds the very address and port it came from (global unless AllowPrivateAddresses), is what
the engine would trust and deliver anyway (RFC 4380 §5.2.3 rx case 3, §5.4.2), so the program
enters it in the map itself and takes it. A public relay's peers are mostly of that kind, and
then cost the daemon nothing per packet and nothing in memory but the map's entry; the daemon
adopts such a peer when one of its packets reaches user space (`PeerTable.adopt`), and
removes it once idle (`PeerTable.sweep_learned`). A full map learns nothing: new sources go
to the engine, with its own bounds (`rx_peers_full`). Clients never learn (RFC 6081 peers may
be reached at another mapping than they are heard from).

**Decapsulation** (`teredo_decap`, ingress of the IPv4 interfaces). Taken when all hold, in this
order (each failure after the first line is counted under the reason in brackets):

1. an Ethernet frame of IPv4/UDP to the daemon's bound port and address (any address when bound
   to 0.0.0.0); anything else is none of our business and passes uncounted;
2. addressed to this host at layer 2 and not to a multicast or broadcast IPv4 address
   [`rx_not_unicast`]: local discovery (RFC 4380 §5.2.8) stays in user space;
3. not a GRO super-packet [`rx_gso`] (it holds many datagrams; a daemon that lets the kernel
   decapsulate should not ask for UDP_GRO);
4. IPv4 without options and not a fragment [`rx_fragment_or_options`];
5. exact lengths: no Ethernet padding, the UDP length is the rest of the IP packet
   [`rx_bad_length`];
6. the UDP payload is exactly one IPv6 packet: version 6, 40 + payload length = UDP payload
   length, payload length > 0 [`rx_not_plain_ipv6`]. So no RFC 6081 trailers, no origin
   indication or authentication header (RFC 4380 §5.1.1), no bubble (RFC 4380 §2.8); those
   are the engine's (`accept_from_teredo` refuses the same);
7. its IPv6 source is a trusted entry of `peers` [`rx_unknown_peer`] whose mapping is the
   outer source address and port [`rx_mapping_mismatch`] (RFC 4380 §5.2.3 rx case 1, §5.4.2);
   or, with `learn` on, a source with no entry whose Teredo address (in the prefix) embeds
   the outer source address and port, global unless `allow_private` [`rx_unknown_peer`]
   (rx case 3);
8. its destination is served [`rx_not_served`]: for a relay anything but a Teredo, multicast,
   link-local, loopback or unspecified address (`teredo.core.relay`); for a client its own address,
   for a host-specific relay the host's addresses (the `local_addresses` map);
9. at most `MAX_SUMMED_BYTES` of UDP [`rx_too_big`] (jumbo datagrams stay in user space);
10. the IPv4 header checksum verifies [`rx_bad_checksum`]. The UDP checksum is not checked:
    the inner IPv6 packet carries its own, end to end (TCP, UDP and ICMPv6 checksums are
    mandatory in IPv6 and cover its addresses, RFC 8200 §8.1), and a datagram that a local
    socket sent over a veth carries only a partial one, which the stack trusts and this
    program could not complete.

Then a source without an entry is learned: entered as trusted at the outer source, heard from
now, if the map has room [`rx_peers_full`; counted in `rx_learned` when it had]. Then the
peer's `last_rx` becomes now (`bpf_ktime_get_ns`, CLOCK_MONOTONIC: the clock of
`time.monotonic()`), the outer headers go (`bpf_skb_adjust_room` with
`BPF_F_ADJ_ROOM_DECAP_L3_IPV6`, so the packet is IPv6 from then on) and the packet is
redirected to the ingress of the TUN interface: routing, firewalling and local delivery happen
as if the daemon had written it. The outer IPv4 headers are not seen by netfilter's INPUT
chain (TC ingress comes first): filter the Teredo port before the peers are trusted, or on
the inner IPv6 packets.

**Encapsulation** (`teredo_encap`, egress of the TUN interface). Taken when all hold:

1. an IPv6 packet (skb protocol and version 6, at least 40 bytes) [`tx_not_ipv6`];
2. not a GSO super-packet [`tx_gso`]: user space cuts those in runs already. (Encapsulating
   them with the UDP-tunnel flags of `bpf_skb_adjust_room` was tried: see the loader's
   docstring for why it is not done);
3. its destination is a trusted entry of `peers` [`tx_unknown_peer`] heard from less than
   30 s ago (RFC 4380 §5.2.4) [`tx_stale_peer`];
4. for a client, its source is the client's own address [`tx_foreign_source`]: peers would
   refuse anything else (RFC 4380 §5.2.3 anti-spoofing), and the client's full path drops it;
5. at most `MAX_SUMMED_BYTES` [`tx_too_big`];
6. its TCP or UDP checksum is complete [`tx_checksum_incomplete`]. The stack leaves it
   *partial* (CHECKSUM_PARTIAL: only the pseudo-header sum in the field) for the device to
   finish: always for TCP from a local socket (Linux TCP always does), and for UDP when the TUN
   device was opened with offloads; user space finishes it (`teredo.core.offload`). Encapsulated
   as it stands, a partial checksum would be finished by a network card, but not across a veth
   to a Teredo peer on the same host, whose socket would read it unfinished. A partial
   checksum does not verify, so verifying tells the two apart without reading kernel-internal
   state; a corrupt one (it does not verify either) gets the same treatment as in user space,
   which sends it as it is. Behind a hop-by-hop, routing or destination options header the
   program does not look, and passes. So the kernel encapsulates what a relay forwards from
   native hosts (its checksums are complete) and local UDP or ICMPv6 on a TUN device without
   offloads; local TCP goes to user space;
7. the routing table has a route to the peer's IPv4 mapping [`tx_no_route`]: an output
   `bpf_fib_lookup` from the daemon's address, which also checks the route's MTU (a packet
   too big for it is the daemon's to send, fragmented: DF is off), through an interface whose
   neighbour entry is resolved [`tx_no_neighbour`] (the daemon's own send resolves it, and the
   next packet is taken). The lookup refuses to work on an interface without IPv4 forwarding
   (BPF_FIB_LKUP_RET_FWD_DISABLED), as on most clients: then the packet goes to
   `bpf_redirect_neigh` on the configured IPv4 interface, whose route and neighbour the kernel
   resolves itself (queueing while it asks), after `bpf_check_mtu`.

Then an IPv4 header (DF off, RFC 4380 §5.1.2; TTL 64; a random identification, since a
router may fragment it) and a UDP header from the daemon's bound address and port (bound to
0.0.0.0: the route's preferred source, or the interface's address) to the peer's mapping,
with its checksum, are prepended, then an Ethernet header: the route's MAC addresses for a
`bpf_redirect` to the route's interface, or a blank one that `bpf_redirect_neigh` replaces
(it will not take a packet without one, as from an L3 device like the TUN).

The engine's fast paths differ from the programs only where the programs pass more: the
outer checks of decapsulation are what the kernel's IP and UDP layers check before the daemon
reads anything; `forward_to_teredo` does not look at the version, the source (client) or the
checksums, and `accept_from_teredo` also refuses a peer that has packets queued (such a peer
is not established, so it is not in the map). The tests hold the three against each other:
the kernel programs (through BPF_PROG_TEST_RUN) against these twins, the twins against the
engine.

Map layouts (shared with `datapath.bpf.c`, in native byte order unless said):

- `peers`: hash, no preallocation; key the 16-byte IPv6 address; value `PEER_VALUE`:
  IPv4 address (network order), UDP port (network order), flags (`PEER_TRUSTED`), last
  reception in CLOCK_MONOTONIC nanoseconds (u64).
- `local_addresses`: hash of 16-byte addresses (value one byte): what a client or a
  host-specific relay serves.
- `settings`: an array of one `SETTINGS` record: bound IPv4 (network order, 0 = any), bound
  port (network order), role, `tun_l2_bytes` (0; 14 only to test-run the encapsulation, whose
  test input starts with an Ethernet header), the Teredo /32, the TUN ifindex, an IPv4
  interface for the routing lookup, the outer source when bound to any (used when the lookup
  is refused), the validity in nanoseconds, `learn` and `allow_private` (a byte each).
- `counters`: per-CPU u64, indexed as `COUNTER_NAMES`.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Network
from typing import Final, NamedTuple

from teredo.core.address import TEREDO_PREFIX, Endpoint, is_global_ipv4, teredo_mapping
from teredo.core.peers import PEER_VALIDITY
from teredo.core.record import record  # a dataclass without dataclasses' start-up cost
from teredo.core.wire import internet_checksum

__all__ = [
    "COUNTER_NAMES",
    "MAX_SUMMED_BYTES",
    "PEER_TRUSTED",
    "PEER_VALUE",
    "SETTINGS",
    "DataPathSettings",
    "PeerEntry",
    "Role",
    "Verdict",
    "encapsulate",
    "python_decap_verdict",
    "python_encap_verdict",
]

ETH_BYTES: Final = 14
IPV4_BYTES: Final = 20
UDP_BYTES: Final = 8
IPV6_BYTES: Final = 40
OUTER_BYTES: Final = IPV4_BYTES + UDP_BYTES
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
OUTER_TTL: Final = 64
MAX_UDP_PAYLOAD: Final = 65507
MAX_SUMMED_BYTES: Final = 4096  # larger packets are left to user space
_OPTIONS_BEFORE_UPPER: Final = frozenset((0, 43, 60))  # hop-by-hop, routing, destination opts

PEER_TRUSTED: Final = 1
PEER_VALUE: Final = struct.Struct("=4s2sHQ")
SETTINGS: Final = struct.Struct("=4s2sBB4sII4sQBB6x")

COUNTER_NAMES: Final = (
    "decapsulated",
    "encapsulated",
    "rx_not_unicast",
    "rx_gso",
    "rx_fragment_or_options",
    "rx_bad_length",
    "rx_bad_checksum",
    "rx_not_plain_ipv6",
    "rx_unknown_peer",
    "rx_mapping_mismatch",
    "rx_not_served",
    "rx_too_big",
    "rx_failed",
    "rx_learned",
    "rx_peers_full",
    "tx_not_ipv6",
    "tx_gso",
    "tx_unknown_peer",
    "tx_stale_peer",
    "tx_foreign_source",
    "tx_checksum_incomplete",
    "tx_too_big",
    "tx_no_route",
    "tx_no_neighbour",
    "tx_failed",
)


class Role(IntEnum):
    """Whose rules the programs apply (`role` in `SETTINGS`)."""

    RELAY = 0
    HOST_SPECIFIC_RELAY = 1
    CLIENT = 2


@record
class DataPathSettings:
    """The `settings` record: the daemon's socket, its role, its TUN interface.

    `local` is the socket's bound ``(dotted_quad, port)``; "0.0.0.0" takes any local address.
    `fib_ifindex` is the IPv4 interface for the routing lookup, and the one packets leave by
    when the lookup is refused (IPv4 forwarding off). `source` is the outer source address
    then, when bound to any. `tun_l2_bytes` is 0 but to test-run the encapsulation.
    """

    role: Role
    local: Endpoint
    prefix: IPv6Network = TEREDO_PREFIX
    tun_ifindex: int = 0
    fib_ifindex: int = 0
    validity: float = PEER_VALIDITY
    tun_l2_bytes: int = 0
    source: str = "0.0.0.0"
    learn: bool = False  # a relay's: trust self-consistent new sources in the kernel
    allow_private: bool = False  # AllowPrivateAddresses: learn non-global mappings too

    @property
    def validity_ns(self) -> int:
        return round(self.validity * 1e9)

    def pack(self) -> bytes:
        return SETTINGS.pack(
            IPv4Address(self.local[0]).packed,
            self.local[1].to_bytes(2, "big"),
            int(self.role),
            self.tun_l2_bytes,
            self.prefix.network_address.packed[:4],
            self.tun_ifindex,
            self.fib_ifindex,
            IPv4Address(self.source).packed,
            self.validity_ns,
            self.learn,
            self.allow_private,
        )


class PeerEntry(NamedTuple):
    """A `peers` value: the mapping, the last reception (CLOCK_MONOTONIC ns), the flags."""

    mapping: Endpoint
    last_rx_ns: int
    flags: int = PEER_TRUSTED

    def pack(self) -> bytes:
        return PEER_VALUE.pack(
            IPv4Address(self.mapping[0]).packed,
            self.mapping[1].to_bytes(2, "big"),
            self.flags,
            self.last_rx_ns & 0xFFFFFFFFFFFFFFFF,
        )

    @classmethod
    def unpack(cls, value: bytes) -> PeerEntry:
        ipv4, port, flags, last_rx = PEER_VALUE.unpack(value)
        return cls((str(IPv4Address(ipv4)), int.from_bytes(port, "big")), last_rx, flags)


class Verdict(NamedTuple):
    """A program's decision: `taken` (decapsulated or encapsulated) or passed to user space.

    `reason` is the counter it adds to (None: passed uncounted, not for the daemon). For a
    decapsulation `packet` is the inner IPv6 packet, and `mapping` the entry the program
    learned for its source (also counted in `rx_learned`), if it learned one; for an
    encapsulation `mapping` is where it goes.
    """

    taken: bool
    reason: str | None
    packet: bytes | None = None
    mapping: Endpoint | None = None


def _passed(reason: str | None) -> Verdict:
    return Verdict(False, reason)


def _serves(
    destination: bytes, settings: DataPathSettings, local_addresses: Collection[bytes]
) -> bool:
    """`serves` in datapath.bpf.c: `teredo.core.relay` and `teredo.core.client` `_serves`."""
    if settings.role != Role.RELAY:
        return destination in local_addresses
    first = destination[0]
    if first == 0xFF or (first == 0xFE and destination[1] & 0xC0 == 0x80):
        return False
    if destination[:15] == bytes(15) and destination[15] <= 1:
        return False
    return destination[:4] != settings.prefix.network_address.packed[:4]


def _learnable(inner: bytes, source: Endpoint, settings: DataPathSettings) -> bool:
    """`learnable` in datapath.bpf.c: the engine's rx case 3 for a source it has no entry for
    (`PeeringEngine.receive_datagram`; RFC 4380 §5.2.3, §5.4.2)."""
    if not settings.learn or inner[8:12] != settings.prefix.network_address.packed[:4]:
        return False
    if teredo_mapping(inner[8:24]) != source:
        return False
    return settings.allow_private or is_global_ipv4(IPv4Address(source[0]))


def python_decap_verdict(
    frame: bytes,
    settings: DataPathSettings,
    peers: Mapping[bytes, PeerEntry],
    local_addresses: Collection[bytes] = (),
    *,
    interface_mac: bytes = bytes(6),
    max_peers: int = 1 << 26,
) -> Verdict:
    """What `teredo_decap` decides for an Ethernet `frame` received by an interface whose MAC
    address is `interface_mac` (see the module docstring for the rules, in the same order).

    A decapsulated packet is returned without its Ethernet header (the program leaves it with
    type IPv6, and the redirection to the TUN device removes it). `max_peers` is the map's
    size: a full map learns nothing.
    """
    size = len(frame)
    if size < ETH_BYTES + IPV4_BYTES + UDP_BYTES:
        return _passed(None)
    local_ip = IPv4Address(settings.local[0]).packed
    if (
        frame[12:14] != ETH_P_IP.to_bytes(2, "big")
        or frame[23] != PROTO_UDP
        or int.from_bytes(frame[36:38], "big") != settings.local[1]
        or (local_ip != bytes(4) and frame[30:34] != local_ip)
    ):
        return _passed(None)
    destination_mac = frame[0:6]
    if destination_mac[0] & 1 or destination_mac != interface_mac or frame[30] >= 0xE0:
        return _passed("rx_not_unicast")
    if frame[14] >> 4 != 4 or frame[14] & 0x0F != 5 or int.from_bytes(frame[20:22]) & 0x3FFF:
        return _passed("rx_fragment_or_options")
    ip_length = int.from_bytes(frame[16:18], "big")
    udp_length = int.from_bytes(frame[38:40], "big")
    if ip_length + ETH_BYTES != size or udp_length + IPV4_BYTES != ip_length:
        return _passed("rx_bad_length")
    payload = udp_length - UDP_BYTES
    if payload <= IPV6_BYTES:
        return _passed("rx_not_plain_ipv6")
    inner = frame[ETH_BYTES + OUTER_BYTES :]
    if inner[0] >> 4 != 6 or IPV6_BYTES + int.from_bytes(inner[4:6], "big") != payload:
        return _passed("rx_not_plain_ipv6")
    peer = peers.get(inner[8:24])
    source = (str(IPv4Address(frame[26:30])), int.from_bytes(frame[34:36], "big"))
    if peer is not None:
        if not peer.flags & PEER_TRUSTED:
            return _passed("rx_unknown_peer")
        if peer.mapping != source:
            return _passed("rx_mapping_mismatch")
    elif not _learnable(inner, source, settings):
        return _passed("rx_unknown_peer")
    if not _serves(inner[24:40], settings, local_addresses):
        return _passed("rx_not_served")
    if udp_length > MAX_SUMMED_BYTES:
        return _passed("rx_too_big")
    if internet_checksum(frame[ETH_BYTES : ETH_BYTES + IPV4_BYTES]) != 0:
        return _passed("rx_bad_checksum")
    if peer is None:
        if len(peers) >= max_peers:
            return _passed("rx_peers_full")
        return Verdict(True, "decapsulated", inner, source)
    return Verdict(True, "decapsulated", inner)


def _wrap_signed(value: int) -> int:
    """A u64 difference read as s64, as the program compares times."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >> 63 else value


def python_encap_verdict(
    packet: bytes,
    settings: DataPathSettings,
    peers: Mapping[bytes, PeerEntry],
    local_addresses: Collection[bytes] = (),
    *,
    now_ns: int,
    protocol: int = ETH_P_IPV6,
) -> Verdict:
    """What `teredo_encap` decides for `packet` (from its IPv6 header on) routed into the TUN
    interface with skb protocol `protocol` at `now_ns`, when the route to the peer exists and
    its neighbour is resolved (the routing table is not part of the twin)."""
    size = len(packet)
    if protocol != ETH_P_IPV6 or size < IPV6_BYTES or packet[0] >> 4 != 6:
        return _passed("tx_not_ipv6")
    peer = peers.get(packet[24:40])
    if peer is None or not peer.flags & PEER_TRUSTED:
        return _passed("tx_unknown_peer")
    if _wrap_signed(now_ns - peer.last_rx_ns) >= settings.validity_ns:
        return _passed("tx_stale_peer")
    if settings.role == Role.CLIENT and packet[8:24] not in local_addresses:
        return _passed("tx_foreign_source")
    if size > MAX_UDP_PAYLOAD or size > MAX_SUMMED_BYTES:
        return _passed("tx_too_big")
    next_header = packet[6]
    if next_header in (PROTO_TCP, PROTO_UDP):
        upper = packet[IPV6_BYTES:]
        pseudo = packet[8:40] + struct.pack("!I3xB", len(upper), next_header)
        if internet_checksum(pseudo + upper) != 0:
            return _passed("tx_checksum_incomplete")
    elif next_header in _OPTIONS_BEFORE_UPPER:
        return _passed("tx_checksum_incomplete")
    return Verdict(True, "encapsulated", mapping=peer.mapping)


def encapsulate(packet: bytes, source: Endpoint, mapping: Endpoint, identification: int) -> bytes:
    """The IPv4 and UDP headers `teredo_encap` puts in front of `packet` (without Ethernet):
    DF off, TTL 64, the UDP checksum computed."""
    total = OUTER_BYTES + len(packet)
    source_ip, destination_ip = IPv4Address(source[0]).packed, IPv4Address(mapping[0]).packed
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, identification, 0, OUTER_TTL, PROTO_UDP, 0,
        source_ip, destination_ip,
    )  # fmt: skip
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    udp = struct.pack("!HHHH", source[1], mapping[1], UDP_BYTES + len(packet), 0)
    pseudo = source_ip + destination_ip + struct.pack("!xBH", PROTO_UDP, len(udp) + len(packet))
    check = internet_checksum(pseudo + udp + packet) or 0xFFFF
    return header + udp[:6] + check.to_bytes(2, "big") + packet
