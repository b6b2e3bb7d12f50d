"""Peering: the rules toward Teredo peers that a client and a relay share (RFC 4380 §5.2, §5.4).

Theory of operation
-------------------
A Teredo client and a Teredo relay (and a host-specific relay) talk to Teredo peers with the same
rules: "the relay's peer list is identical to a client's" (RFC 4380 §5.4). `PeeringEngine` holds
those rules once; a role (`teredo.core.relay.TeredoRelay`, `teredo.core.client.TeredoClient`)
subclasses it and decides, in the policy hooks below, what the RFC leaves to the role.

Two directions, each with a lean fast path and a full path:

* **Transmission** (an IPv6 packet from the local stack, i.e. the TUN device; RFC 4380 §5.2.4
  and §5.4.1). A trusted, valid peer gets the packet at its mapping: that is the fast path,
  `forward_to_teredo`. Otherwise `send_ipv6`: a Teredo destination (relay case 3, client case 5)
  is checked for a global unicast embedded IPv4 and server (§5.2.4, §5.4.1), the packet is
  queued (bounded per peer and for the table), and two bubbles go out within the §5.2.6 rate
  limits: a *direct* bubble to the embedded mapping and an *indirect* bubble to the peer's server
  at UDP 3544 carrying an RFC 6081 nonce trailer (RFC 6081 §5.2.4.1). The bubbles are repeated
  every 2 s up to the budget of 4; when it is spent the queue is dropped and ICMPv6 destination
  unreachable (code 3, address unreachable, RFC 4443 §3.1) goes back to the local stack, at most
  10 per second. A non-Teredo destination goes to the role (`_on_native_destination`).

* **Reception** (a UDP datagram from a peer; §5.2.3, §5.4.2). The IPv6 source is accepted when
  (1) a trusted entry's learned mapping equals the outer source -- the fast path,
  `accept_from_teredo`; or (2) it is a Teredo address whose embedded mapping equals the outer
  source (rx case 3 of §5.2.3; the relay's anti-spoofing check of §5.4.2); or (3) the packet is a
  bubble that proves it answers one of our bubbles: its IPv6 destination is our cookie for its
  source (below), or its RFC 6081 nonce trailer equals the one we sent (RFC 6081 §5.2.4.4). In
  cases (2) and (3) the peer becomes trusted with the outer source as its mapping -- case (3) is
  how clients behind symmetric NATs, whose outer port differs from the embedded one, still work
  -- and its queue is flushed there. Bubbles are consumed; other packets are delivered to the
  local stack when the role serves their destination (`_serves`). Anything unproven goes to the
  role (`_on_unverified`).

Bubble cookies: the source of a relay's bubbles is ``fe80::<cookie>``, where the cookie is a
64-bit BLAKE2b of the peer's Teredo address keyed by the secret (a MAC, RFC 7693; one call into
the standard library's own BLAKE2, no OpenSSL), with the U/G bits (0x0200/0x0100 of the
interface identifier's first 16 bits) cleared. A client answers a bubble relayed by its
server with a direct bubble addressed to that link-local source (RFC 4380 §5.2.3, RFC 5991
§3.2), so a direct bubble whose destination is our cookie for its source proves it came from a
host that received our bubble: no per-peer state is needed to check it and a spoofer cannot
guess it. The secret is injected (the daemon draws it at start).

Timers: one deadline, `get_timer()`: the earliest bubble retry (a heap, entries invalidated
lazily) or the next sweep. Every `SWEEP_INTERVAL` the peer table's idle entries are swept
(`PeerTable.sweep`) a slice at a time, so the whole table is visited every ~15 s; with a
mirror that learns peers (a relay's kernel path), its entries too (`PeerTable.sweep_learned`).

``last_tx`` of a peer is the time of the last *setup* transmission (bubble); the data path does
not touch it, so a bubble can follow at once when a busy trusted peer goes stale, and the fast
path writes one attribute less.

Data types: mappings and datagram sources are `Endpoint` tuples, ``(dotted_quad, port)``, as
`recvfrom` returns and `sendto` takes; IPv6 addresses are 16-byte ``bytes`` (peer table keys).

Policy hooks (every role implements them): `_serves`, `_on_unverified`,
`_on_native_destination`, `_retry_native`, `_bubble_source`; optional: `_on_datagram` (a first
look at every parsed datagram), `_on_removed`. Roles use the primitives `emit`, `deliver`,
`accept`, `count`, `drop`, `drop_unverified`, `queue_packet`, `trust_peer`, `send_bubbles`,
`send_indirect_bubble`, `send_direct_bubble`, `send_unreachable`, `schedule_retry`,
`fail_setup`.
"""

from __future__ import annotations

import heapq
from _blake2 import blake2b  # hashlib's BLAKE2b; hashlib would load its five other hashes
from _operator import _compare_digest as compare_digest  # hmac's, without OpenSSL (~2 ms)
from abc import ABC, abstractmethod
from collections.abc import Callable
from ipaddress import IPv6Address, IPv6Network

from teredo.core.address import (
    TEREDO_PREFIX,
    Endpoint,
    ipv4_value,
    is_global_ipv4,
    teredo_mapped_ipv4,
    teredo_mapped_port,
    teredo_mapping,
    teredo_server,
    teredo_server_ipv4,
)
from teredo.core.budget import BudgetSettings, SetupBudget
from teredo.core.errors import ParseError
from teredo.core.logger import get_logger
from teredo.core.peers import (
    BUBBLE_SPACING,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_TOTAL_QUEUE_BYTES,
    NEVER,
    PEER_VALIDITY,
    SWEEP_ROUND,
    Peer,
    PeerTable,
)
from teredo.core.record import record, replace  # frozen dataclasses without dataclasses' cost
from teredo.core.trailers import (
    NONCE_TRAILER_LENGTH,
    misplaced,
    nonce_trailer_bytes,
    trailer_nonce,
)
from teredo.core.wire import (
    IPV6_HEADER_LENGTH,
    ICMPv6Type,
    NextHeader,
    TeredoPacket,
    UnreachableCode,
    encode_bubble,
    encode_icmpv6_error,
    is_bubble,
    parse_teredo_packet,
)

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

    from teredo.core.status import EngineStatus  # TypedDicts: types only (~1 ms to build)

log = get_logger(__name__)  # imports logging when it logs (teredo.core.logger)

__all__ = [
    "ICMP_ERROR_BURST",
    "ICMP_ERROR_RATE",
    "SWEEP_INTERVAL",
    "PeeringEngine",
    "PeeringSettings",
    "bubble_cookie",
    "retry_time",
]

ICMP_ERROR_RATE: Final = 10.0  # Miredo's figure: at most 10 ICMPv6 errors per second
ICMP_ERROR_BURST: Final = 10.0
SWEEP_INTERVAL: Final = 1.0  # seconds between slices of the idle sweep
SWEEP_PERIOD: Final = SWEEP_ROUND  # the whole table is visited about this often
SWEEP_MIN_BUDGET: Final = 256
# Entries of the kernel's map per slice at least: its first pass, whose size is unknown, takes
# about a minute at a million entries, at ~1 µs of Python each.
LEARNED_SWEEP_MIN_BUDGET: Final = 16384
RETRY_GRANULARITY: Final = 0.01  # seconds: the earliest a retry that cannot run yet comes back
RETRY_SLACK: Final = 64  # retry-heap entries beyond 2 * max_peers before it is compacted
DEFAULT_ERROR_SOURCE: Final = IPv6Address("fe80::ffff:ffff:ffff")  # Miredo's relay/client LL
_LINK_LOCAL_PREFIX: Final = bytes((0xFE, 0x80)) + bytes(6)


@record
class PeeringSettings:
    """What the engine needs from the configuration.

    `allow_private` relaxes every global-unicast IPv4 check (RFC 4380 §5.2.4): for test beds on
    private addresses only (``AllowPrivateAddresses``). `idle_timeout` is how long an unused
    entry lives (Miredo's values: 30 s in a relay, 600 s in a client). `budget` bounds the
    setup traffic of the whole node (`teredo.core.budget`).
    """

    prefix: IPv6Network = TEREDO_PREFIX
    allow_private: bool = False
    max_peers: int = 1024
    idle_timeout: float = PEER_VALIDITY
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    max_total_queue_bytes: int = DEFAULT_MAX_TOTAL_QUEUE_BYTES
    icmp_error_rate: float = ICMP_ERROR_RATE
    budget: BudgetSettings = BudgetSettings()  # frozen: one instance serves as every default


def retry_time(deadline: float, now: float) -> float:
    """`deadline`, but strictly after `now`: `last_tx + 2.0` can round to a time that is not
    2 s after `last_tx` (0.26 + 2.0 - 0.26 < 2.0), and a retry due now that cannot run yet
    would come back at once, for ever."""
    return max(deadline, now + RETRY_GRANULARITY)


def bubble_cookie(secret: bytes, peer: bytes) -> bytes:
    """The link-local bubble source for `peer`: fe80::/64 + 64 bits of BLAKE2b keyed by `secret`.

    The U and G bits (0x0200 and 0x0100 of the interface identifier's first 16 bits, RFC 4291
    appendix A) are cleared so the identifier reads as a local, individual one.
    """
    digest = blake2b(peer, digest_size=8, key=secret).digest()
    return _LINK_LOCAL_PREFIX + bytes((digest[0] & 0xFC,)) + digest[1:8]


class PeeringEngine(ABC):
    """The peer-facing Teredo engine (sans-I/O) that roles subclass. See the module docstring.

    Driving it (the same contract as every role)::

        engine.receive_datagram(data, source, now)   # a UDP datagram from a peer
        engine.send_ipv6(packet, now)                # an IPv6 packet from the local stack
        engine.handle_timer(now)                     # when get_timer() is reached
        engine.datagrams_to_send()  -> [(payload, Endpoint)]
        engine.packets_to_deliver() -> [ipv6_packet]  (to the local stack / TUN)

    and, on the data path, first::

        engine.forward_to_teredo(packet, now) -> Endpoint | None   # None: use send_ipv6
        engine.accept_from_teredo(data, source, now) -> bool       # False: receive_datagram

    `random_bytes(n)` must be a CSPRNG (os.urandom in the daemons); `secret` keys the bubble
    cookies (at least 16 random bytes).
    """

    def __init__(
        self,
        settings: PeeringSettings,
        *,
        random_bytes: Callable[[int], bytes],
        secret: bytes,
        now: float,
    ) -> None:
        self.settings = settings
        self.peers = PeerTable(
            max_peers=settings.max_peers,
            idle_timeout=settings.idle_timeout,
            max_queue_bytes=settings.max_queue_bytes,
            max_total_queue_bytes=settings.max_total_queue_bytes,
            on_remove=self._on_removed,
        )
        self.budget = SetupBudget(settings.budget, now)
        self._random_bytes = random_bytes
        self._secret = secret
        self._prefix32 = settings.prefix.network_address.packed[:4]
        self._check_global = not settings.allow_private
        # The only IPv6 source the local stack may send from (the client's address); None: any.
        self.required_source: bytes | None = None
        # Source of the ICMPv6 errors sent to the local stack (set by the role or its daemon).
        self.error_source: IPv6Address = DEFAULT_ERROR_SOURCE
        self._datagrams: list[tuple[bytes, Endpoint]] = []
        self._packets: list[bytes] = []
        self._retries: list[tuple[float, int, bytes, Peer]] = []
        self._retry_seq = 0
        self._next_sweep = now + SWEEP_INTERVAL
        self._icmp_tokens = ICMP_ERROR_BURST
        self._icmp_stamp = now
        self.counters: dict[str, int] = {}
        self.drops: dict[str, int] = {}
        # Fast-path counters are plain attributes: cheaper than dict updates per packet.
        self.fast_rx = 0
        self.fast_tx = 0

    def reconfigure(self, settings: PeeringSettings) -> None:
        """Apply new settings (SIGHUP). Peers and counters are kept; a smaller `max_peers`
        takes effect as entries expire or are evicted."""
        self.settings = settings
        table = self.peers
        table.max_peers = settings.max_peers
        table.idle_timeout = settings.idle_timeout
        table.max_queue_bytes = settings.max_queue_bytes
        table.max_total_queue_bytes = settings.max_total_queue_bytes
        self.budget.reconfigure(settings.budget)
        self._prefix32 = settings.prefix.network_address.packed[:4]
        self._check_global = not settings.allow_private

    # -----------------------------------------------------------------------------------------
    # Outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        """UDP payloads and their destinations produced since the last call."""
        out = self._datagrams
        self._datagrams = []
        return out

    def packets_to_deliver(self) -> list[bytes]:
        """IPv6 packets for the local stack (TUN) produced since the last call."""
        out = self._packets
        self._packets = []
        return out

    def get_timer(self) -> float | None:
        """The absolute deadline (on the `now` clock) at which `handle_timer` must be called."""
        if self._retries:
            return min(self._retries[0][0], self._next_sweep)
        return self._next_sweep

    def handle_timer(self, now: float) -> None:
        """Run bubble retries that are due and a slice of the idle sweep."""
        retries = self._retries
        while retries and retries[0][0] <= now:
            deadline, _, address, peer = heapq.heappop(retries)
            if peer.retry_at == deadline and self.peers.get(address) is peer:
                peer.retry_at = NEVER
                self._retry(address, peer, now)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            table = self.peers
            budget = max(SWEEP_MIN_BUDGET, int(len(table) * SWEEP_INTERVAL / SWEEP_PERIOD) + 1)
            table.sweep(now, budget)
            if table.learning:
                share = SWEEP_INTERVAL / SWEEP_PERIOD
                table.sweep_learned(
                    now, max(LEARNED_SWEEP_MIN_BUDGET, table.learned_sweep_budget(share))
                )

    def engine_status(self) -> EngineStatus:
        """A JSON-able snapshot: peer counts, queued bytes, counters and drops by reason."""
        table = self.peers
        trusted = table.trusted_count()
        counters = dict(self.counters)
        counters["fast_rx"] = self.fast_rx
        counters["fast_tx"] = self.fast_tx
        if table.learning:
            counters["peers_handed_to_kernel"] = table.handed_over
        return {
            "peers": len(table),
            "trusted_peers": trusted,
            "max_peers": table.max_peers,
            "queued_bytes": table.total_queued_bytes,
            "evicted_peers": table.evicted,
            "expired_peers": table.expired,
            "learned_peers": table.learned,
            "learned_expired": table.learned_expired,
            "counters": counters,
            "drops": dict(self.drops),
        }

    # -----------------------------------------------------------------------------------------
    # Fast paths (the data plane): no events, no parsing objects.

    def forward_to_teredo(
        self, packet: bytes | bytearray | memoryview, now: float
    ) -> Endpoint | None:
        """Where to send `packet` (an IPv6 packet from the stack) if its destination is a
        trusted, valid peer and its source one we may send from; None means "not that simple":
        call `send_ipv6`, which decides the same way and does the rest.

        The caller sends `packet` unchanged (it is the whole UDP payload) to the result.
        """
        if len(packet) < IPV6_HEADER_LENGTH:
            return None
        peer = self.peers.get(bytes(packet[24:40]))
        if peer is None:
            return None
        link = peer.link  # a tuple when trusted and hot (peers.py); then `rx` is last_rx
        if type(link) is not tuple or now - peer.rx >= PEER_VALIDITY:
            return None
        required = self.required_source
        if required is not None and packet[8:24] != required:
            return None
        self.fast_tx += 1
        return link

    def accept_from_teredo(
        self, data: bytes | bytearray | memoryview, source: Endpoint, now: float
    ) -> bool:
        """True when `data` (a UDP payload from `source`) is a plain IPv6 packet from a trusted
        peer at its learned mapping, for a destination we serve, and not a bubble: the caller
        then writes `data` unchanged to the local stack. False: call `receive_datagram`.
        """
        size = len(data)
        if size <= IPV6_HEADER_LENGTH or data[0] >> 4 != 6:
            return False
        if IPV6_HEADER_LENGTH + ((data[4] << 8) | data[5]) != size:
            return False  # trailers, truncation or a bubble with trailers: the full path
        peer = self.peers.get(bytes(data[8:24]))
        if peer is None or peer.link != source:  # only a hot, trusted peer's link is a tuple
            return False
        setup = peer.setup
        if setup is not None and setup.queue is not None:
            return False
        if not self._serves(bytes(data[24:40])):
            return False
        peer.rx = now
        self.fast_rx += 1
        return True

    # -----------------------------------------------------------------------------------------
    # Full paths

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, source: Endpoint, now: float
    ) -> None:
        """A UDP datagram from `source`. Never raises for bad input: drops are counted."""
        try:
            packet = parse_teredo_packet(bytes(data))
        except ParseError:
            self.drop("malformed")
            return
        if packet.trailers or packet.malformed_trailers:
            packet = self._usable_trailers(packet)
        if self._on_datagram(packet, source, now):
            return
        if packet.origin is not None:
            self.drop("unexpected_origin_indication")  # only a server sends those
            return
        if packet.authentication is not None:
            self.drop("unexpected_authentication")  # only RS/RA carry one
            return
        ipv6 = packet.ipv6
        src = ipv6[8:24]
        if src[0] == 0xFF:
            self.drop("multicast_source")
            return
        bubble = is_bubble(ipv6)
        if not bubble and not self._serves(ipv6[24:40]):
            # Before any state: nothing that will be dropped creates or refreshes an entry.
            self.drop("destination_not_served")
            return
        peers = self.peers
        peer = peers.get(src)
        if peer is not None and peers.is_mapped_at(src, peer, source):
            peer.rx = now  # rx case 1 (the peer is hot now: `rx` is its last_rx)
            if peer.queue:  # a stale peer was being set up again: it answered
                self._flush(src, peer, source)
        elif self.is_teredo(src) and teredo_mapping(src) == source:
            # rx case 3 (RFC 4380 §5.2.3) / relay anti-spoofing (§5.4.2): mapping proven.
            if self._check_global and not is_global_ipv4(teredo_mapped_ipv4(src)):
                self._global_source(source)  # counts and logs the refusal
                return
            if bubble and peer is None and not self._answers_our_bubble(packet, peer):
                # An unsolicited bubble from a stranger: consumed, and no entry for it. RFC 4380
                # §5.4.2 would create one, but nothing needs it (the peer's data will create
                # it), and one UDP socket could claim 2^48 such sources to fill the table.
                self.count("bubbles_received")
                return
            peer = self.trust_peer(src, source, now)
        elif bubble and self.is_teredo(src) and self._answers_our_bubble(packet, peer):
            # RFC 6081 §5.2.4.4, or our cookie: a reply to our bubble from a mismatched mapping
            # (symmetric NAT); the outer source is the mapping to use.
            if not self._may_learn(src, source):
                return
            self.count("mismatched_mapping_accepted")
            peer = self.trust_peer(src, source, now)
            self._on_mapping_learned(src, peer, now)
        else:
            self._on_unverified(packet, source, now)
            return
        if bubble and packet.trailers:
            self._on_bubble_trailers(src, peer, packet, source, now)
        self.accept(ipv6)

    def send_ipv6(self, packet: bytes | bytearray | memoryview, now: float) -> None:
        """An IPv6 packet from the local stack for a Teredo peer (RFC 4380 §5.2.4, §5.4.1)."""
        packet = bytes(packet)
        size = len(packet)
        if size < IPV6_HEADER_LENGTH or packet[0] >> 4 != 6:
            self.drop("malformed_from_stack")
            return
        if IPV6_HEADER_LENGTH + ((packet[4] << 8) | packet[5]) > size:
            self.drop("malformed_from_stack")
            return
        dst = packet[24:40]
        if dst[0] == 0xFF:
            self.drop("multicast_destination")  # Teredo carries no multicast (RFC 4380 §5.2.4)
            return
        required = self.required_source
        if required is not None and packet[8:24] != required:
            # Peers would refuse it (anti-spoofing, RFC 4380 §5.2.3): set up no state for it.
            self.drop("foreign_source")
            return
        peer = self.peers.get(dst)
        if peer is None and self.peers.learning:
            peer = self.peers.adopt(dst, now)  # learned by the kernel's path, still valid?
            if peer is not None:
                self.count("peers_adopted")
        if peer is not None and not peer.is_valid(now) and not peer.queue:
            self.peers.refresh(dst, peer)  # the kernel's path may have heard from it meanwhile
        if peer is not None and peer.is_valid(now):
            self.count("sent")
            mapped = self.peers.sockaddr(dst, peer)  # the mapping, hot for the fast path
            assert mapped is not None
            self._datagrams.append((packet, mapped))
            return
        if not self.is_teredo(dst):
            self._on_native_destination(packet, dst, now)
            return
        self._send_to_teredo(packet, dst, peer, now)

    # -----------------------------------------------------------------------------------------
    # Transmission to a Teredo destination without a valid trusted entry

    def _send_to_teredo(self, packet: bytes, dst: bytes, peer: Peer | None, now: float) -> None:
        if self._check_global:
            # RFC 4380 §5.2.4 / §5.4.1: the embedded IPv4 must be global unicast; as Miredo, a
            # non-global or zero server address is refused too.
            if not is_global_ipv4(teredo_mapped_ipv4(dst)):
                self.drop("non_global_destination")
                log.debug(
                    "dropped a packet for %s: its mapped IPv4 is not global unicast "
                    "(AllowPrivateAddresses relaxes this in a lab)",
                    _show(dst),
                )
                return
            server = teredo_server_ipv4(dst)
            if not server or not is_global_ipv4(server):
                self.drop("non_global_server")
                log.debug("dropped a packet for %s: its server is not global unicast", _show(dst))
                return
        if teredo_mapped_port(dst) == 0:
            self.drop("non_global_destination")
            return
        if peer is None:
            peer = self.peers.create(dst, now)
            self.count("peers_created")
        elif peer.setup_exhausted(now) and not peer.may_send_bubble(now):
            # The bubble budget (4 per 300 s) is spent and the last one went unanswered.
            self.drop("peer_unreachable")
            self.send_unreachable(packet, UnreachableCode.ADDRESS_UNREACHABLE, now)
            return
        self.queue_packet(dst, peer, packet)
        self.send_bubbles(dst, peer, now)

    def _retry(self, address: bytes, peer: Peer, now: float) -> None:
        """A retry deadline passed for `peer`: bubble again, or give up (RFC 4380 §5.4.1)."""
        if peer.is_valid(now):
            return
        if not self.is_teredo(address):
            self._retry_native(address, peer, now)
            return
        if not peer.queue:
            return
        if self.send_bubbles(address, peer, now):
            return
        if peer.setup_exhausted(now):
            self.fail_setup(address, peer, now)
        else:
            self.schedule_retry(address, peer, retry_time(peer.last_tx + BUBBLE_SPACING, now))

    def fail_setup(self, address: bytes, peer: Peer, now: float) -> None:
        """Setup of `peer` failed: drop its queue and tell the local stack (RFC 4443 §3.1)."""
        queue = self.peers.take_queue(peer)
        self.count("setup_failures")
        if queue:
            self.drops["peer_unreachable"] = self.drops.get("peer_unreachable", 0) + len(queue)
            for packet in queue:
                self.send_unreachable(packet, UnreachableCode.ADDRESS_UNREACHABLE, now)
        log.debug("no answer from %s: dropped %d queued packets", _show(address), len(queue))

    # -----------------------------------------------------------------------------------------
    # Primitives for roles

    def is_teredo(self, address: bytes) -> bool:
        """Whether a 16-byte address is under the configured Teredo prefix."""
        return address[:4] == self._prefix32

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def drop(self, reason: str, amount: int = 1) -> None:
        """Count a dropped packet (or `amount` of them, or of a packet's parts) under a named
        reason."""
        self.drops[reason] = self.drops.get(reason, 0) + amount

    def emit(self, payload: bytes, destination: Endpoint) -> None:
        """Queue a UDP payload for `destination`."""
        self._datagrams.append((payload, destination))

    def deliver(self, packet: bytes) -> None:
        """Queue an IPv6 packet for the local stack."""
        self._packets.append(packet)

    def accept(self, ipv6: bytes) -> None:
        """An IPv6 packet from a verified source: bubbles are consumed, never delivered (RFC 4380
        §5.2.3); the rest reaches the local stack when the role serves its destination."""
        if is_bubble(ipv6):
            self.count("bubbles_received")
        elif self._serves(ipv6[24:40]):
            self.count("received")
            self._packets.append(ipv6)
        else:
            self.drop("destination_not_served")

    def drop_unverified(self, packet: TeredoPacket) -> None:
        """Count an unverified packet under the reason that explains it best."""
        src = packet.ipv6[8:24]
        if not self.is_teredo(src):
            self.drop("non_teredo_source")
        elif is_bubble(packet.ipv6):
            self.drop("unverified_bubble")
        else:
            self.drop("mapping_mismatch")

    def queue_packet(self, address: bytes, peer: Peer, packet: bytes) -> bool:
        """Queue `packet` until `peer` is trusted; False (and counted) when the queue is full.
        Either way the packet is demand for the peer's setup (`Peer.repeated_demand`)."""
        peer.demand += 1
        if self.peers.enqueue(peer, packet, address):
            return True
        self.drop("queue_full")
        return False

    def trust_peer(self, address: bytes, mapping: Endpoint, now: float) -> Peer:
        """Mark `address` trusted at `mapping` (creating the entry) and flush its queue there."""
        peers = self.peers
        peer = peers.get(address)
        if peer is None:
            peer = peers.create(address, now)
            self.count("peers_created")
        was = peer.trusted
        peers.trust(address, peer, mapping, now)
        if peer.queue:
            self._flush(address, peer, mapping)
        else:
            peers.publish(address, peer)
        if not was:
            self.count("peers_trusted")
        return peer

    def _flush(self, address: bytes, peer: Peer, mapping: Endpoint) -> None:
        """Send what waited for `peer` to `mapping`; the peer is established now."""
        queue = self.peers.take_queue(peer)
        self._datagrams.extend((packet, mapping) for packet in queue)
        self.count("sent_from_queue", len(queue))
        self.peers.publish(address, peer)

    def send_bubbles(self, address: bytes, peer: Peer, now: float) -> bool:
        """Direct and indirect bubbles toward Teredo `address`, if the §5.2.6 limits allow.

        The direct bubble goes to the embedded mapping (RFC 4380 §5.4.1 MAY, and SHOULD behind a
        non-cone NAT; and to a mapping learned from a symmetric-NAT peer, if any), the indirect
        one through the peer's server (`send_indirect_bubble`). Returns True when bubbles went
        out or the setup budget deferred them (a retry is scheduled 2 s later either way).
        """
        if not peer.may_send_bubble(now):
            return False
        mapping = teredo_mapping(address)
        direct = (
            [mapping]
            if not self._check_global or is_global_ipv4(teredo_mapped_ipv4(address))
            else []
        )
        learned = peer.mapped
        if learned is not None and learned != mapping:
            direct.append(learned)
        if not self.budget.allow(
            len(direct) + 1,
            now,
            server=teredo_server_ipv4(address),
            repeated=peer.repeated_demand(),
        ):
            # Deferred: counted against the peer's budget, tried again in 2 s or at its next
            # packet (then as repeated demand, which has priority).
            self.drop("setup_budget_exhausted")
            peer.note_bubble(now, sent=False)
            self.schedule_retry(address, peer, now + BUBBLE_SPACING)
            return True
        source = self._bubble_source(address)
        bubble = encode_bubble(source, address)
        for to in direct:
            self._send_direct(bubble, to, peer)
        self.send_indirect_bubble(source, address, peer, now)
        self.schedule_retry(address, peer, now + BUBBLE_SPACING)
        return True

    def send_indirect_bubble(self, source: bytes, address: bytes, peer: Peer, now: float) -> None:
        """An indirect bubble `source` -> `address` through the peer's server, with a fresh
        RFC 6081 nonce trailer (RFC 6081 §5.2.4.1), counted against the peer's bubble budget."""
        peer.note_bubble(now)
        nonce = self._random_bytes(NONCE_TRAILER_LENGTH)
        peer.nonce_sent = nonce
        bubble = encode_bubble(source, address) + nonce_trailer_bytes(nonce)
        self._datagrams.append(
            (bubble + self._indirect_trailers(peer, now), teredo_server(address))
        )
        self.count("bubbles_sent")

    def _send_direct(self, bubble: bytes, mapping: Endpoint, peer: Peer) -> None:
        if peer.nonce_received is not None:  # RFC 6081 §5.2.4.3: echo the peer's nonce
            bubble = bubble + nonce_trailer_bytes(peer.nonce_received)
        self._datagrams.append((bubble, mapping))
        self.count("bubbles_sent")

    def send_direct_bubble(
        self,
        source: bytes,
        destination: bytes,
        to: Endpoint,
        now: float,
        nonce: bytes | None = None,
        peer: Peer | None = None,
    ) -> bool:
        """A direct bubble `source` -> `destination` to `to` (e.g. a client's answer to an
        indirect bubble, RFC 4380 §5.2.3), within `peer`'s rate limits when a peer is given.
        `nonce` adds an RFC 6081 nonce trailer."""
        if peer is not None:
            if not peer.may_send_bubble(now):
                self.drop("bubble_rate_limited")
                return False
            peer.note_bubble(now)
        bubble = encode_bubble(source, destination)
        if nonce is not None:
            bubble += nonce_trailer_bytes(nonce)
        self._datagrams.append((bubble, to))
        self.count("bubbles_sent")
        return True

    def schedule_retry(self, address: bytes, peer: Peer, deadline: float) -> None:
        """Call `_retry(address, peer, now)` at `deadline` (if the entry is still there), unless
        an earlier retry is pending: one per peer, so the heap stays within the table's size."""
        pending = peer.retry_at
        if pending != NEVER and pending <= deadline:
            return
        peer.retry_at = deadline
        self._retry_seq += 1
        retries = self._retries
        heapq.heappush(retries, (deadline, self._retry_seq, address, peer))
        if len(retries) > 2 * self.peers.max_peers + RETRY_SLACK:
            # Entries of evicted peers linger until their deadline: under a flood of new
            # destinations, drop them now so the heap stays proportional to the table.
            lookup = self.peers.get
            retries[:] = [
                entry
                for entry in retries
                if entry[3].retry_at == entry[0] and lookup(entry[2]) is entry[3]
            ]
            heapq.heapify(retries)

    def send_unreachable(self, packet: bytes, code: int, now: float) -> None:
        """ICMPv6 destination unreachable about `packet` to the local stack, rate limited.

        Never about an ICMPv6 error or a packet from an unspecified or multicast source
        (RFC 4443 §2.4 (e)).
        """
        if len(packet) < IPV6_HEADER_LENGTH:
            return
        if packet[8] == 0xFF or packet[8:24] == bytes(16):
            return
        if (
            packet[6] == NextHeader.ICMPV6
            and len(packet) > IPV6_HEADER_LENGTH
            and packet[IPV6_HEADER_LENGTH] < 128
        ):
            return
        tokens = min(
            ICMP_ERROR_BURST,
            self._icmp_tokens + (now - self._icmp_stamp) * self.settings.icmp_error_rate,
        )
        self._icmp_stamp = now
        if tokens < 1.0:
            self._icmp_tokens = tokens
            self.drop("icmp_error_rate_limited")
            return
        if not self.budget.allow(1, now, server=None, repeated=False):
            self._icmp_tokens = tokens
            self.drop("setup_budget_exhausted")
            return
        self._icmp_tokens = tokens - 1.0
        self._packets.append(
            encode_icmpv6_error(self.error_source, ICMPv6Type.DESTINATION_UNREACHABLE, code, packet)
        )
        self.count("icmp_errors_sent")

    def cookie(self, peer: bytes) -> bytes:
        """Our link-local bubble source for `peer` (see `bubble_cookie`)."""
        return bubble_cookie(self._secret, peer)

    # -----------------------------------------------------------------------------------------
    # Policy hooks: each role decides

    @abstractmethod
    def _serves(self, destination: bytes) -> bool:
        """Whether a packet from a Teredo peer for `destination` may reach the local stack."""

    @abstractmethod
    def _on_unverified(self, packet: TeredoPacket, source: Endpoint, now: float) -> None:
        """A packet whose source the shared rules could not verify."""

    @abstractmethod
    def _on_native_destination(self, packet: bytes, destination: bytes, now: float) -> None:
        """A packet from the stack for a destination outside the Teredo prefix."""

    @abstractmethod
    def _retry_native(self, address: bytes, peer: Peer, now: float) -> None:
        """A retry deadline passed for a peer outside the Teredo prefix."""

    @abstractmethod
    def _bubble_source(self, destination: bytes) -> bytes:
        """The IPv6 source of our bubbles to `destination`."""

    def _on_datagram(self, packet: TeredoPacket, source: Endpoint, now: float) -> bool:
        """First look at every parsed datagram; True when the role handled it (the client takes
        its server's packets here). Default: not handled."""
        return False

    def _on_removed(self, address: bytes, peer: Peer) -> None:  # noqa: B027 (optional hook)
        """The table dropped an entry by itself (expired or evicted). Default: nothing to do."""

    def _on_mapping_learned(  # noqa: B027 (optional hook)
        self, address: bytes, peer: Peer, now: float
    ) -> None:
        """A bubble answering ours proved a mapping other than the one in `address` (a peer
        behind a symmetric NAT, RFC 6081 §5.2.4.4); `peer.mapped` is it now. Default: nothing
        to do."""

    # -----------------------------------------------------------------------------------------
    # Helpers

    def _indirect_trailers(self, peer: Peer, now: float) -> bytes:
        """More RFC 6081 trailers for an indirect bubble to `peer`, after the nonce. Default:
        none (the client adds its Alternate Address trailer, RFC 6081 §5.6)."""
        return b""

    def _may_learn(self, address: bytes, source: Endpoint) -> bool:
        """Whether a bubble answering ours from `source` may make it `address`'s mapping.
        Default: only a global unicast one (RFC 4380 §5.2.3, CVE-2006-6264)."""
        return self._global_source(source)

    def _on_bubble_trailers(  # noqa: B027 (optional hook)
        self, address: bytes, peer: Peer, packet: TeredoPacket, source: Endpoint, now: float
    ) -> None:
        """An accepted direct bubble from `address` carried trailers (the client answers an
        RFC 6081 §5.7 solicitation). Default: nothing to do."""

    def _answers_our_bubble(self, packet: TeredoPacket, peer: Peer | None) -> bool:
        ipv6 = packet.ipv6
        src, dst = ipv6[8:24], ipv6[24:40]
        if dst[:8] == _LINK_LOCAL_PREFIX and compare_digest(dst, self.cookie(src)):
            return True
        if peer is not None and peer.nonce_sent is not None and packet.trailers:
            nonce = trailer_nonce(packet.trailers)
            return nonce is not None and compare_digest(nonce, peer.nonce_sent)
        return False

    def _usable_trailers(self, packet: TeredoPacket) -> TeredoPacket:
        """`packet` without the trailers that may not be where they are (RFC 6081 §4.2-§4.5,
        `teredo.core.trailers.misplaced`), each counted, and with a malformed trailer counted
        (processing stopped there, RFC 6081 §5.1.2)."""
        if packet.malformed_trailers:
            self.drop("malformed_trailer")
        bubble = is_bubble(packet.ipv6)
        indirect = packet.origin is not None
        kept = tuple(
            t for t in packet.trailers if not misplaced(t, bubble=bubble, indirect=indirect)
        )
        if len(kept) != len(packet.trailers):
            self.drop("misplaced_trailer", len(packet.trailers) - len(kept))
        return replace(packet, trailers=kept, malformed_trailers=False)

    def _global_source(self, source: Endpoint) -> bool:
        """Never learn a mapping that is not global unicast (RFC 4380 §5.2.3, CVE-2006-6264)."""
        if self._check_global and not is_global_ipv4(ipv4_value(source[0])):
            self.drop("non_global_mapping")
            log.debug(
                "refused mapping %s:%d: not global unicast (AllowPrivateAddresses relaxes this)",
                source[0],
                source[1],
            )
            return False
        return True


def _show(address: bytes) -> str:
    return str(IPv6Address(address))
