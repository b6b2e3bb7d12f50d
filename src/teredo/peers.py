"""The peer list of clients and relays (RFC 4380 §5.2, §5.2.4, §5.2.6, §5.4.1).

Theory of operation
-------------------
A peer is keyed by its 16-byte IPv6 address. It is *trusted* once a packet proved that its
mapping (the IPv4 endpoint packets for it must go to) is real: a direct bubble or packet whose
outer source equals the mapping embedded in its Teredo address, an echo reply carrying our nonce,
or (RFC 6081) a bubble carrying our nonce. A trusted peer is *valid* for sending while it was
heard from less than 30 s ago (600 s for a local peer, requirements G6); an invalid one goes
through setup again (bubbles or an echo test) but keeps its entry.

Setup traffic is rate limited per peer: no bubble within 2 s of the last transmission, no more
than 4 bubbles per 300 s without a direct answer (RFC 4380 §5.2.6), and at most 4 echo tests at
least 2 s apart (§5.2.9, CVE-2006-6266). Packets waiting for a peer's setup are queued with a byte
limit per peer and a limit for the whole table (RFC 4380 §5.4.1, §7.3.3), so whatever arrives,
memory stays bounded: `max_peers` entries, each with at most `max_queue_bytes` queued.

The table is bounded: inserting into a full table evicts the least recently used entry. Use is
not tracked by reordering on every packet (that would cost on the data path); instead eviction
and the idle sweep give entries a second chance (CLOCK): an entry at the front of the insertion
order that was used within the idle timeout is moved to the back rather than dropped.

Mappings are stored as `(ip_string, port)` tuples, exactly what `recvfrom` returns and `sendto`
takes, so the data path compares and sends without conversions.
"""

from __future__ import annotations

from typing import Final

SockAddr = tuple[str, int]

PEER_VALIDITY: Final = 30.0  # RFC 4380 §5.2.4: valid if last reception < 30 s ago
LOCAL_PEER_VALIDITY: Final = 600.0  # RFC 4380 §5.2.4 case 3 (requirements G6)
BACKDATE: Final = 30.0  # RFC 4380 §5.2.3/§5.2.6: new entries start 30 s in the past
BUBBLE_SPACING: Final = 2.0  # RFC 4380 §5.2.6: no bubble within 2 s of the last transmission
BUBBLE_BUDGET: Final = 4  # RFC 4380 §5.2.6: at most 4 bubbles ...
BUBBLE_WINDOW: Final = 300.0  # ... per 300 s without a direct response
PING_SPACING: Final = 2.0  # RFC 4380 §5.2.9: 2 s timeout ...
PING_BUDGET: Final = 4  # ... repeated up to 3 times
DEFAULT_MAX_QUEUE_BYTES: Final = 1280  # per peer, as Miredo
DEFAULT_MAX_TOTAL_QUEUE_BYTES: Final = 4 * 1024 * 1024
EVICTION_SCAN: Final = 64  # entries examined for a second chance before evicting the oldest


class Peer:
    """One peer entry. Plain slots: it lives on the data path and there may be many."""

    __slots__ = (
        "bubble_window",
        "bubbles",
        "last_ping",
        "last_rx",
        "last_tx",
        "local",
        "local_seen",
        "mapped",
        "nonce_received",
        "nonce_sent",
        "ping_nonce",
        "pings",
        "queue",
        "queued_bytes",
        "trusted",
    )

    def __init__(self, now: float) -> None:
        self.mapped: SockAddr | None = None
        self.trusted = False
        self.last_rx = now - BACKDATE
        self.last_tx = now - BACKDATE
        self.bubbles = 0
        self.bubble_window = now
        self.pings = 0
        self.last_ping = now - BACKDATE
        self.ping_nonce: bytes | None = None
        self.local: SockAddr | None = None  # local discovery (RFC 4380 §5.2.8)
        self.local_seen = now - LOCAL_PEER_VALIDITY
        self.queue: list[bytes] | None = None
        self.queued_bytes = 0
        self.nonce_sent: bytes | None = None  # RFC 6081 §5.2: our last indirect bubble's nonce
        self.nonce_received: bytes | None = None  # RFC 6081 §5.2: the peer's

    def __repr__(self) -> str:
        state = "trusted" if self.trusted else "untrusted"
        return f"<Peer {state} mapped={self.mapped} queued={self.queued_bytes}>"

    def is_valid(self, now: float) -> bool:
        """Trusted and heard from recently enough to send to directly (RFC 4380 §5.2.4)."""
        return self.trusted and now - self.last_rx < PEER_VALIDITY

    def is_local(self, now: float) -> bool:
        return self.local is not None and now - self.local_seen < LOCAL_PEER_VALIDITY

    def trust(self, mapped: SockAddr, now: float) -> None:
        """A direct packet proved `mapped` (RFC 4380 §5.2.3): trust it, reset the bubble count."""
        self.mapped = mapped
        self.trusted = True
        self.last_rx = now
        self.bubbles = 0
        self.pings = 0
        self.ping_nonce = None

    def may_send_bubble(self, now: float) -> bool:
        """RFC 4380 §5.2.6 rate limits for bubbles to this peer."""
        if now - self.bubble_window >= BUBBLE_WINDOW:
            self.bubbles = 0
            self.bubble_window = now
        return now - self.last_tx >= BUBBLE_SPACING and self.bubbles < BUBBLE_BUDGET

    def note_bubble(self, now: float) -> None:
        if self.bubbles == 0:
            self.bubble_window = now
        self.bubbles += 1
        self.last_tx = now

    def may_ping(self, now: float) -> bool:
        """At most PING_BUDGET echo tests, PING_SPACING apart (RFC 4380 §5.2.9)."""
        return self.pings < PING_BUDGET and now - self.last_ping >= PING_SPACING

    def note_ping(self, nonce: bytes, now: float) -> None:
        self.pings += 1
        self.last_ping = now
        self.ping_nonce = nonce

    def setup_exhausted(self, now: float) -> bool:
        """Both budgets are spent and the last attempt timed out: the peer is unreachable."""
        spent_pings = self.pings >= PING_BUDGET and now - self.last_ping >= PING_SPACING
        spent_bubbles = self.bubbles >= BUBBLE_BUDGET and now - self.last_tx >= BUBBLE_SPACING
        return spent_pings or spent_bubbles


class PeerTable:
    """A bounded map from 16-byte IPv6 addresses to `Peer`, with bounded queues."""

    def __init__(
        self,
        max_peers: int = 1024,
        idle_timeout: float = PEER_VALIDITY,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_total_queue_bytes: int = DEFAULT_MAX_TOTAL_QUEUE_BYTES,
    ) -> None:
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        self.max_peers = max_peers
        self.idle_timeout = idle_timeout
        self.max_queue_bytes = max_queue_bytes
        self.max_total_queue_bytes = max_total_queue_bytes
        self.total_queued_bytes = 0
        self.evicted = 0
        self.expired = 0
        self.queue_drops = 0
        self._peers: dict[bytes, Peer] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, address: bytes) -> bool:
        return address in self._peers

    def items(self) -> list[tuple[bytes, Peer]]:
        return list(self._peers.items())

    def get(self, address: bytes) -> Peer | None:
        return self._peers.get(address)

    def create(self, address: bytes, now: float) -> Peer:
        """A new untrusted entry (RFC 4380 §5.2.3 initial values), evicting if full."""
        peers = self._peers
        existing = peers.get(address)
        if existing is not None:
            return existing
        if len(peers) >= self.max_peers:
            self._evict_one(now)
        peer = Peer(now)
        peers[address] = peer
        return peer

    def remove(self, address: bytes) -> Peer | None:
        peer = self._peers.pop(address, None)
        if peer is not None:
            self._drop_queue(peer)
        return peer

    def enqueue(self, peer: Peer, packet: bytes) -> bool:
        """Queue `packet` for `peer` until its setup completes; False (and counted) if full."""
        size = len(packet)
        if (
            peer.queued_bytes + size > self.max_queue_bytes
            or self.total_queued_bytes + size > self.max_total_queue_bytes
        ):
            self.queue_drops += 1
            return False
        if peer.queue is None:
            peer.queue = [packet]
        else:
            peer.queue.append(packet)
        peer.queued_bytes += size
        self.total_queued_bytes += size
        return True

    def take_queue(self, peer: Peer) -> list[bytes]:
        """Remove and return the packets queued for `peer`."""
        queue = peer.queue or []
        self._drop_queue(peer)
        return queue

    def discard_queue(self, peer: Peer) -> int:
        """Drop the queue (setup failed); return how many packets were dropped."""
        count = len(peer.queue) if peer.queue else 0
        self._drop_queue(peer)
        return count

    def sweep(self, now: float, budget: int = 1024) -> list[tuple[bytes, Peer]]:
        """Examine up to `budget` entries from the oldest; remove the idle ones and return them.

        Call it from a periodic timer: the whole table is visited in len/budget calls.
        """
        peers = self._peers
        removed = []
        for _ in range(min(budget, len(peers))):
            address = next(iter(peers))
            peer = peers.pop(address)
            if self._idle(peer, now):
                self._drop_queue(peer)
                removed.append((address, peer))
                self.expired += 1
            else:
                peers[address] = peer  # second chance: to the back
        return removed

    def _idle(self, peer: Peer, now: float) -> bool:
        last = max(peer.last_rx, peer.last_tx, peer.last_ping)
        if peer.local is not None:
            last = max(last, peer.local_seen)
        return now - last >= self.idle_timeout and not peer.queue

    def _evict_one(self, now: float) -> None:
        peers = self._peers
        # Second chance for trusted, recently used entries; a bounded scan keeps inserts O(1).
        for _ in range(min(len(peers), EVICTION_SCAN)):
            address = next(iter(peers))
            peer = peers.pop(address)
            if self._idle(peer, now) or not peer.trusted:
                break
            peers[address] = peer
        else:
            address = next(iter(peers))
            peer = peers.pop(address)
        self._drop_queue(peer)
        self.evicted += 1

    def _drop_queue(self, peer: Peer) -> None:
        self.total_queued_bytes -= peer.queued_bytes
        peer.queue = None
        peer.queued_bytes = 0
