"""The peer list of clients and relays (RFC 4380 §5.2, §5.2.4, §5.2.6, §5.4.1).

Theory of operation
-------------------
A peer is keyed by its 16-byte IPv6 address. It is *trusted* once a packet proved that its
mapping (the IPv4 endpoint packets for it must go to) is real: a direct bubble or packet whose
outer source equals the mapping embedded in its Teredo address, an echo reply carrying our nonce,
or (RFC 6081) a bubble carrying our nonce. A trusted peer is *valid* for sending while it was
heard from less than 30 s ago (600 s for a local peer: RFC 4380 §5.2.4 says 30 s for every
peer, yet its transmission case 3 counts a peer as local for 600 s; Miredo uses 600 s too); an
invalid one goes through setup again (bubbles or an echo test) but keeps its entry.

Setup traffic is rate limited per peer: no bubble within 2 s of the last transmission, no more
than 4 bubbles per 300 s without a direct answer (RFC 4380 §5.2.6), and at most 4 echo tests at
least 2 s apart (§5.2.9, CVE-2006-6266). Packets waiting for a peer's setup are queued with a byte
limit per peer and a limit for the whole table (RFC 4380 §5.4.1, §7.3.3), so whatever arrives,
memory stays bounded: `max_peers` entries, each with at most `max_queue_bytes` queued.

The table is bounded, and admission is what keeps it useful under a flood: inserting into a
full table evicts, in O(1), an entry that has not proven itself rather than an established peer.
A new entry starts on *probation* (a FIFO of the newest entries, at most `PROBATION_LIMIT`):
eviction takes the oldest probation entry not heard from since it was created; an entry heard
from since leaves probation for good. So entries from a flood of new sources or destinations,
each seen once, compete only among themselves (like the A1 queue of 2Q or SIEVE's new
objects), and a busy peer is never the one to go. Use is not tracked by reordering on every
packet (that would cost on the data path); beyond probation, eviction and the idle sweep share
one CLOCK hand going round the entries in insertion order, which gives a second chance to an
entry used within the idle timeout. The roles add the other half: nothing that will be dropped
creates an entry (`teredo.core.peering`).

Memory layout
-------------
A relay may hold a million peers (at most ~200 bytes each is the goal), nearly all *established*:
trusted, heard from recently, nothing queued, no setup under way. In CPython every object has a
header and every number is an object of its own (a float 24 bytes, an int 28 to 40), so the
layout is cut to the established peer:

* `Peer` has three slots (56 bytes with the GC header): `link`, `rx` and `setup`.
* `setup` is a `PeerSetup` (bubble and echo-test counts and times, the RFC 6081 nonces, the
  local endpoint, the queue), created by the first setup action and dropped by `Peer.settle`
  (called by `PeerTable.trust` and the sweep) once it no longer constrains anything: the peer is
  trusted, nothing is queued, no echo test or local endpoint is pending, and the last setup
  transmission is older than 30 s and than the last reception (a direct response resets the
  budgets, RFC 4380 §5.2.6; the nonces of that exchange are forgotten with it). Read through the
  `Peer`, an absent setup's fields have their initial values; its times read as `NEVER`.
* `link` holds the mapping in one of three forms. None: untrusted. *Hot*: the ``(ip, port)``
  tuple that `recvfrom` returns and `sendto` takes, so the fast paths compare and send without
  a conversion; `rx` is then the last reception time. *Cold*: one int,
  ``time_bits << 48 | ipv4 << 16 | port``, holding the mapping and the exact last reception time
  (the float's 64 bits) in 40 bytes instead of the ~140 of a tuple, its string and its port plus
  the 24 of a float; `rx` is then `NEVER`. `Peer.mapped` and `Peer.last_rx` read both forms.
* The table bounds the hot peers: a peer turns hot when trusted through `PeerTable.trust`, or
  when a full path needs its sockaddr (`PeerTable.sockaddr`, `PeerTable.is_mapped_at`), and
  takes a place in a ring of `HOT_MAPPINGS` places (at most `max_peers`); the peer whose place it
  takes turns cold. A cold peer's next packet takes the full path once (about a microsecond of
  conversions), then the fast path again. Both forms hold the same values, so turning hot or cold
  changes no decision.

* At rest -- trusted, cold, no setup state -- a peer is *frozen*: the table holds its cold link
  (the int) directly instead of a `Peer` around it. A peer without setup state freezes as it
  turns cold (its place in the hot ring taken), any other when the sweep finds it at rest.
  `PeerTable.get` thaws it back into a `Peer` when anyone asks for it. Nothing but the table
  holds a frozen peer, so no second `Peer` for the same address can exist; so a caller holds a
  `Peer` only while it handles one packet, and asks the table again for the next (one that
  keeps a peer across calls, as the retry timers do, holds one with setup state, which does
  not freeze as it cools, and checks that the table's entry is still the same object).

An established peer at 1 M peers thus costs its dict slot (42 bytes), its 16-byte key (49), its
cold link (40) and its share of the hot ring (2): ~150 bytes instead of ~490; thawed, a `Peer`
more (56) (`benchmarks/peer_table.py`). After churn, some more: CPython resizes a dict that
saw deletions to three times its entries (84 bytes a slot at 1 M), and the CLOCK hand's round
takes 8. Probation (`Probation`) is a ring of at most `PROBATION_LIMIT` places of 16 bytes (the
entry's key, shared with the dict, and its creation time in an array): 1 MiB at most, where a
queue of (key, `Peer`, time) tuples cost 96 bytes an entry, 60 a peer at 100 000 peers.

Peers only the mirror holds
---------------------------
A relay's kernel data path *learns* (`teredo.bpf.datapath`): it trusts a source the table has
no entry for when its Teredo address embeds the address and port it came from, exactly as the
engine would (RFC 4380 §5.2.3 rx case 3, §5.4.2), and forwards its packets without the daemon
ever seeing one. Such a peer costs the daemon nothing: the map's entry (~90 bytes of kernel
memory) is all there is. The table meets it in two places:

* `adopt`: when a packet for it reaches the engine anyway (one the kernel passes: a
  super-packet, a large one), the engine asks the mirror before setting the peer up; a learned
  peer still valid (heard from within 30 s) enters the table trusted at the learned mapping,
  heard from when the mirror last heard from it, so the packet leaves at once as it would have
  from the kernel.
* `sweep_learned`: the idle sweep's twin for the mirror, a pass over the map every
  `SWEEP_ROUND` or so, in slices: an entry the table does not hold and the mirror has not
  heard from for `idle_timeout` is removed. `learned` is how many the last pass found.

And the table hands its own established peers over to such a mirror once they are at rest
(trusted, no setup state, found so by the sweep): the mirror's entry holds all
there is of such a peer (its mapping, its last reception), so the table drops its own
(`_hand_over`) and the peer costs the map's entry alone, however it was set up (the relay's
bubbles, or the kernel's learning). A peer the mirror does not hold (a full map) stays.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Container, Iterator
from itertools import islice

from teredo.core.address import Endpoint
from teredo.core.typenames import Any, Generic, Protocol, TypeVar, cast, overload  # no typing

TYPE_CHECKING = False  # typing's flag without importing typing (ms a start pays)
if TYPE_CHECKING:
    from typing import Final

Link = Endpoint | int | None

PEER_VALIDITY: Final = 30.0  # RFC 4380 §5.2.4: valid if last reception < 30 s ago
LOCAL_PEER_VALIDITY: Final = 600.0  # RFC 4380 §5.2.4 case 3, as Miredo (module docstring)
BACKDATE: Final = 30.0  # RFC 4380 §5.2.3/§5.2.6: new entries start 30 s in the past
BUBBLE_SPACING: Final = 2.0  # RFC 4380 §5.2.6: no bubble within 2 s of the last transmission
BUBBLE_BUDGET: Final = 4  # RFC 4380 §5.2.6: at most 4 bubbles ...
BUBBLE_WINDOW: Final = 300.0  # ... per 300 s without a direct response
PING_SPACING: Final = 2.0  # RFC 4380 §5.2.9: 2 s timeout ...
PING_BUDGET: Final = 4  # ... repeated up to 3 times
DEFAULT_MAX_QUEUE_BYTES: Final = 1280  # per peer, as Miredo
DEFAULT_MAX_TOTAL_QUEUE_BYTES: Final = 4 * 1024 * 1024
EVICTION_SCAN: Final = 64  # entries examined for a second chance before evicting the oldest
PROBATION_LIMIT: Final = 65536  # newest entries tracked for eviction first (see `create`)
SWEEP_ROUND: Final = 15.0  # seconds: the sweep visits every entry about this often
HOT_MAPPINGS: Final = 16384  # our choice: peers in the fast form (a sockaddr tuple), at most
NEVER: Final = float("-inf")  # the time of something that did not happen

_COLD: Final = struct.Struct("<H4Bd")  # a cold link: port, IPv4 octets last first, last_rx
_COLD_SIZE: Final = _COLD.size
_OCTETS: Final = tuple(str(value) for value in range(256))
_OCTET_VALUES: Final = {text: value for value, text in enumerate(_OCTETS)}

_T = TypeVar("_T")


def _freeze(sockaddr: Endpoint, rx: float) -> int | None:
    """The cold link for a ``(dotted_quad, port)`` mapping last heard from at `rx`; None when
    the mapping is not an IPv4 sockaddr (never from the network)."""
    try:
        a, b, c, d = sockaddr[0].split(".")
        octets = _OCTET_VALUES
        packed = _COLD.pack(sockaddr[1], octets[d], octets[c], octets[b], octets[a], rx)
    except (AttributeError, KeyError, TypeError, ValueError, struct.error):
        return None
    return int.from_bytes(packed, "little")


def _frozen_peer(link: int) -> Peer:
    """The `Peer` a frozen entry stands for: trusted at the cold `link`, no setup state."""
    peer = Peer.__new__(Peer)
    peer.link = link
    peer.rx = NEVER
    peer.setup = None
    return peer


def _thaw(link: int) -> tuple[Endpoint, float]:
    """The mapping and last reception time held by a cold link."""
    port, d, c, b, a, rx = _COLD.unpack(link.to_bytes(_COLD_SIZE, "little"))
    octets = _OCTETS
    return (f"{octets[a]}.{octets[b]}.{octets[c]}.{octets[d]}", port), rx


class PeerSetup:
    """The state of a peer's setup (bubbles, echo tests, local discovery, queue).

    Present only while it matters (see the module docstring); read it through `Peer`.
    """

    __slots__ = (
        "bubble_window",
        "bubbles",
        "demand",
        "last_ping",
        "last_tx",
        "local",
        "local_seen",
        "nonce_received",
        "nonce_sent",
        "ping_nonce",
        "pings",
        "queue",
        "queued_bytes",
        "retry_at",
    )

    def __init__(self) -> None:
        self.bubbles = 0
        self.bubble_window = NEVER
        self.last_tx = NEVER  # the last bubble (the data path does not count, see peering.py)
        self.pings = 0
        self.last_ping = NEVER
        self.ping_nonce: bytes | None = None
        self.local: Endpoint | None = None  # local discovery (RFC 4380 §5.2.8)
        self.local_seen = NEVER
        self.queue: list[bytes] | None = None
        self.queued_bytes = 0
        self.demand = 0  # packets that asked for this setup (repeated demand has priority)
        self.retry_at = NEVER  # the pending setup retry, if any (one per peer)
        self.nonce_sent: bytes | None = None  # RFC 6081 §5.2: our last indirect bubble's nonce
        self.nonce_received: bytes | None = None  # RFC 6081 §5.2: the peer's


class _SetupField(Generic[_T]):
    """A `Peer` attribute kept in its `PeerSetup`: reads `default` while there is none, and
    writing anything but the default creates one."""

    __slots__ = ("default", "name")

    def __init__(self, default: _T) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, peer: None, owner: type[Any]) -> _SetupField[_T]: ...

    @overload
    def __get__(self, peer: Peer, owner: type[Any]) -> _T: ...

    def __get__(self, peer: Peer | None, owner: type[Any]) -> _T | _SetupField[_T]:
        if peer is None:
            return self
        setup = peer.setup
        if setup is None:
            return self.default
        return cast(_T, getattr(setup, self.name))

    def __set__(self, peer: Peer, value: _T) -> None:
        setup = peer.setup
        if setup is None:
            if value is self.default or value == self.default:
                return
            setup = peer.setup = PeerSetup()
        setattr(setup, self.name, value)


class Peer:
    """One peer entry: three slots, see the module docstring.

    The data path reads `link` and `rx` directly: a tuple `link` is the sockaddr to send to
    and compare with, and then `rx` is the last reception time. Everything else goes through
    the properties.
    """

    __slots__ = ("link", "rx", "setup")

    bubbles = _SetupField(0)
    bubble_window = _SetupField(NEVER)
    last_tx = _SetupField(NEVER)
    pings = _SetupField(0)
    last_ping = _SetupField(NEVER)
    ping_nonce = _SetupField[bytes | None](None)
    local = _SetupField[Endpoint | None](None)
    local_seen = _SetupField(NEVER)
    queue = _SetupField[list[bytes] | None](None)
    queued_bytes = _SetupField(0)
    demand = _SetupField(0)
    retry_at = _SetupField(NEVER)
    nonce_sent = _SetupField[bytes | None](None)
    nonce_received = _SetupField[bytes | None](None)

    def __init__(self, now: float) -> None:
        self.link: Link = None
        self.rx = now - BACKDATE  # the last reception time, unless `link` is cold
        self.setup: PeerSetup | None = None

    def __repr__(self) -> str:
        state = "trusted" if self.link is not None else "untrusted"
        return f"<Peer {state} mapped={self.mapped} queued={self.queued_bytes}>"

    @property
    def trusted(self) -> bool:
        return self.link is not None

    @property
    def mapped(self) -> Endpoint | None:
        """The proven mapping as a ``(dotted_quad, port)`` pair, None while untrusted."""
        link = self.link
        if isinstance(link, int):
            return _thaw(link)[0]
        return link

    @property
    def last_rx(self) -> float:
        """When the peer was last heard from (RFC 4380 §5.2.3 "last reception date")."""
        link = self.link
        if isinstance(link, int):
            return _thaw(link)[1]
        return self.rx

    @last_rx.setter
    def last_rx(self, now: float) -> None:
        link = self.link
        if isinstance(link, int):
            cold = _freeze(_thaw(link)[0], now)
            assert cold is not None  # it was frozen before
            self.link = cold
        else:
            self.rx = now

    def is_valid(self, now: float) -> bool:
        """Trusted and heard from recently enough to send to directly (RFC 4380 §5.2.4)."""
        link = self.link
        if type(link) is tuple:
            return now - self.rx < PEER_VALIDITY
        return link is not None and now - self.last_rx < PEER_VALIDITY

    def is_local(self, now: float) -> bool:
        setup = self.setup
        return (
            setup is not None
            and setup.local is not None
            and now - setup.local_seen < LOCAL_PEER_VALIDITY
        )

    def trust(self, mapped: Endpoint, now: float) -> None:
        """A direct packet proved `mapped` (RFC 4380 §5.2.3): trust it, reset the bubble count.

        The mapping is stored cold; `PeerTable.trust` stores it hot, within the table's bound.
        """
        link = _freeze(mapped, now)
        if link is None:  # not an IPv4 sockaddr (never from the network): keep it as it is
            self._trusted(mapped, now)
        else:
            self._trusted(link, NEVER)

    def _trusted(self, link: Endpoint | int, rx: float) -> None:
        self.link = link
        self.rx = rx
        setup = self.setup
        if setup is not None:
            setup.bubbles = 0
            setup.pings = 0
            setup.ping_nonce = None

    def _setup(self) -> PeerSetup:
        setup = self.setup
        if setup is None:
            setup = self.setup = PeerSetup()
        return setup

    def may_send_bubble(self, now: float) -> bool:
        """RFC 4380 §5.2.6 rate limits for bubbles to this peer."""
        setup = self.setup
        if setup is None:
            return True
        if now - setup.bubble_window >= BUBBLE_WINDOW:
            setup.bubbles = 0
            setup.bubble_window = now
        return now - setup.last_tx >= BUBBLE_SPACING and setup.bubbles < BUBBLE_BUDGET

    def note_bubble(self, now: float, *, sent: bool = True) -> None:
        """Count a bubble attempt against the §5.2.6 budget; `sent=False` for one the setup
        budget deferred (`teredo.core.budget`): it counts, but sets no spacing, so that the
        next packet of repeated demand may try again at once."""
        setup = self._setup()
        if setup.bubbles == 0:
            setup.bubble_window = now
        setup.bubbles += 1
        if sent:
            setup.last_tx = now

    def may_ping(self, now: float) -> bool:
        """At most PING_BUDGET echo tests, PING_SPACING apart (RFC 4380 §5.2.9)."""
        setup = self.setup
        if setup is None:
            return True
        return setup.pings < PING_BUDGET and now - setup.last_ping >= PING_SPACING

    def note_ping(self, nonce: bytes | None, now: float) -> None:
        """Count an echo test against its budget; `nonce` None for one the setup budget
        deferred (counted, no spacing, the previous nonce kept)."""
        setup = self._setup()
        setup.pings += 1
        if nonce is not None:
            setup.last_ping = now
            setup.ping_nonce = nonce

    def repeated_demand(self) -> bool:
        """Whether setting this peer up answers repeated demand: more than one packet asked
        for it, or it was a trusted peer before (priority in `teredo.core.budget`)."""
        setup = self.setup
        return self.link is not None or (setup is not None and setup.demand > 1)

    def setup_exhausted(self, now: float) -> bool:
        """Both budgets are spent and the last attempt timed out: the peer is unreachable."""
        setup = self.setup
        if setup is None:
            return False
        spent_pings = setup.pings >= PING_BUDGET and now - setup.last_ping >= PING_SPACING
        spent_bubbles = setup.bubbles >= BUBBLE_BUDGET and now - setup.last_tx >= BUBBLE_SPACING
        return spent_pings or spent_bubbles

    def settle(self, now: float) -> None:
        """Drop the setup state once it constrains nothing any more (see the module docstring).

        Then every rule decides as for a fresh state: the spacing has long passed, and the
        budgets count only transmissions without a direct response since.
        """
        setup = self.setup
        if (
            setup is None
            or self.link is None
            or setup.queue is not None
            or setup.local is not None
            or setup.ping_nonce is not None
        ):
            return
        last = max(setup.last_tx, setup.last_ping)
        if last <= self.last_rx and now - last >= PEER_VALIDITY:
            self.setup = None


class PeerMirror(Protocol):
    """A copy of the established peers kept elsewhere: the kernel data path's peer map
    (`teredo.adapters.bpf.KernelDataPath`), which forwards their packets without the daemon and
    records when it last heard from each. The table keeps it in step (`PeerTable.publish`)."""

    def set_peer(self, address: bytes, mapping: Endpoint, last_rx: float) -> bool: ...

    def remove_peer(self, address: bytes) -> bool: ...

    def last_rx(self, address: bytes) -> float | None: ...

    def learned_peer(self, address: bytes) -> tuple[Endpoint, float] | None:
        """The trusted mapping and last reception time the mirror holds for `address`."""
        ...

    def last_rx_batch(self) -> Iterator[tuple[bytes, float]]:
        """Every entry's address and last reception time, in some order."""
        ...


class Probation:
    """The newest entries of the table, oldest first, with their creation times: a ring of
    at most `capacity` places, an address (the table's own key object) and a float in an
    array each, 16 bytes a place. Its places are taken as entries come, never given back, so
    a table that never fills costs what it used."""

    __slots__ = ("_addresses", "_capacity", "_count", "_created", "_head")

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._addresses: list[bytes] = []
        self._created = array("d")
        self._head = 0  # the oldest entry's place
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, address: bytes, created: float) -> None:
        """Add the newest entry; when full, the oldest leaves to make room."""
        capacity = self._capacity
        if self._count == capacity:
            place = self._head
            self._head = (place + 1) % capacity
        else:
            place = (self._head + self._count) % capacity
            self._count += 1
        if place == len(self._addresses):  # (only while the ring has not grown to capacity)
            self._addresses.append(address)
            self._created.append(created)
        else:
            self._addresses[place] = address
            self._created[place] = created

    def popleft(self) -> tuple[bytes, float]:
        """Take the oldest entry out: its address and creation time."""
        if not self._count:
            raise IndexError("probation is empty")
        place = self._head
        self._head = (place + 1) % self._capacity
        self._count -= 1
        return self._addresses[place], self._created[place]


class PeerTable:
    """A bounded map from 16-byte IPv6 addresses to `Peer`, with bounded queues and a bounded
    number of hot peers (see the module docstring).

    With a `mirror`, the table also keeps its *established* peers (trusted, nothing queued)
    there, and reads back when the mirror heard from them: a peer whose packets all take the
    kernel's path is as alive here as one whose packets reach the daemon.
    """

    def __init__(
        self,
        max_peers: int = 1024,
        idle_timeout: float = PEER_VALIDITY,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_total_queue_bytes: int = DEFAULT_MAX_TOTAL_QUEUE_BYTES,
        hot_mappings: int = HOT_MAPPINGS,
        on_remove: Callable[[bytes, Peer], None] | None = None,
    ) -> None:
        """`on_remove(address, peer)` is called for every entry the table drops by itself
        (expired by the sweep or evicted to make room), after its queue was dropped."""
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        self.max_peers = max_peers
        self.idle_timeout = idle_timeout
        self.max_queue_bytes = max_queue_bytes
        self.max_total_queue_bytes = max_total_queue_bytes
        self.hot_mappings = max(1, hot_mappings)
        self.total_queued_bytes = 0
        self.evicted = 0
        self.expired = 0
        self.queue_drops = 0
        # An entry is a `Peer`, or, frozen, the cold link of an established peer at rest
        # (trusted, no setup state): one int instead of a `Peer` around it (module docstring).
        self._peers: dict[bytes, Peer | int] = {}
        self._hot: list[bytes] = []  # a ring: the peers that turned hot, the oldest at _hot_hand
        self._hot_hand = 0
        self._round: list[bytes] = []  # the CLOCK hand's round: addresses in insertion order
        self._hand = 0
        # Probation: the newest entries, oldest first, with their creation time (see `create`).
        self._probation = Probation(min(self.max_peers, PROBATION_LIMIT))
        self.on_remove = on_remove
        self.mirror: PeerMirror | None = None
        # Peers the mirror must not hold: sent to at another mapping than they are received
        # from (the client's RFC 6081 §5.3.4.3 rule); the mirror has one mapping per peer.
        self.unmirrored: Container[bytes] = ()
        # Whether the mirror learns peers by itself (a relay's kernel path): see the docstring.
        self.learning = False
        self.learned = 0  # entries only the mirror held, at the end of the last pass
        self.learned_expired = 0
        self.handed_over = 0
        self._learned_walk: Iterator[tuple[bytes, float]] | None = None
        self._walk_seen = 0  # entries the current pass has visited
        self._walk_learned = 0  # ... of which only the mirror holds, and kept
        self._last_walk = 0  # entries the last complete pass visited

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, address: bytes) -> bool:
        return address in self._peers

    def items(self) -> list[tuple[bytes, Peer]]:
        """Every entry; a frozen one as a `Peer` made for the occasion (changing it changes
        nothing in the table)."""
        return [
            (address, _frozen_peer(value) if isinstance(value, int) else value)
            for address, value in self._peers.items()
        ]

    def trusted_count(self) -> int:
        return sum(
            1 for value in self._peers.values() if isinstance(value, int) or value.link is not None
        )

    def get(self, address: bytes) -> Peer | None:
        """The entry of `address`; a frozen one thaws into a `Peer` for good (the sweep
        freezes it again once it is at rest)."""
        value = self._peers.get(address)
        if isinstance(value, int):
            value = self._peers[address] = _frozen_peer(value)
        return value

    def create(self, address: bytes, now: float) -> Peer:
        """A new untrusted entry (RFC 4380 §5.2.3 initial values), evicting if full.

        The entry starts on probation: until it is heard from after `now`, it is among the
        first to be evicted, so a flood of new sources or destinations (each seen once) churns
        through the probation entries and never evicts an established peer (`_evict_one`).
        """
        existing = self.get(address)
        if existing is not None:
            return existing
        peers = self._peers
        if len(peers) >= self.max_peers:
            self._evict_one(now)
        peer = Peer(now)
        peers[address] = peer
        # When probation is full its oldest entry leaves it: the CLOCK hand judges it now.
        self._probation.append(address, now)
        return peer

    def remove(self, address: bytes) -> Peer | None:
        peer = self.get(address)
        if peer is not None:
            del self._peers[address]
            self._drop_queue(peer)
        return peer

    # -----------------------------------------------------------------------------------------
    # Mappings: hot and cold

    def trust(self, address: bytes, peer: Peer, mapped: Endpoint, now: float) -> None:
        """`Peer.trust` for the entry of `address`, keeping the mapping hot: the data path is
        about to use it."""
        was_hot = type(peer.link) is tuple
        peer.link = mapped
        peer.rx = now
        if peer.setup is not None:
            peer._trusted(mapped, now)  # the counts it resets
            peer.settle(now)
        if not was_hot:
            self._turn_hot(address)

    def sockaddr(self, address: bytes, peer: Peer) -> Endpoint | None:
        """The mapping to send to of `peer`, the entry of `address` (None while untrusted),
        turning the peer hot."""
        link = peer.link
        if type(link) is tuple or link is None:
            return link
        assert isinstance(link, int)
        sockaddr, peer.rx = _thaw(link)
        peer.link = sockaddr
        self._turn_hot(address)
        return sockaddr

    def is_mapped_at(self, address: bytes, peer: Peer, source: Endpoint) -> bool:
        """Whether `peer`, the entry of `address`, is trusted at exactly `source` (turning it
        hot if so)."""
        link = peer.link
        if type(link) is tuple:
            return link == source
        if link is None:
            return False
        assert isinstance(link, int)
        mapped, rx = _thaw(link)
        if mapped != source:
            return False
        peer.rx = rx
        peer.link = source
        self._turn_hot(address)
        return True

    def _turn_hot(self, address: bytes) -> None:
        """The entry of `address` now holds a sockaddr tuple: give it a place in the ring,
        cooling the oldest. A cooled peer without setup state is at rest: it is frozen at once
        (the table holds its cold link, not a `Peer` around it), as the sweep would."""
        ring = self._hot
        hand = self._hot_hand
        if hand >= len(ring):  # the ring is growing, or the hand went round
            if hand < min(self.hot_mappings, self.max_peers):
                ring.append(address)
                self._hot_hand = hand + 1
                return
            hand = 0
        oldest_address = ring[hand]
        ring[hand] = address
        self._hot_hand = hand + 1
        if oldest_address == address:
            return
        oldest = self._peers.get(oldest_address)
        if type(oldest) is not Peer:
            return  # removed since, or frozen already
        link = oldest.link
        if type(link) is tuple:
            cold = _freeze(link, oldest.rx)
            if cold is None:
                return
            if oldest.setup is None:
                self._peers[oldest_address] = cold
            else:
                oldest.link = cold
                oldest.rx = NEVER

    # -----------------------------------------------------------------------------------------
    # Queues

    def enqueue(self, peer: Peer, packet: bytes, address: bytes | None = None) -> bool:
        """Queue `packet` for `peer` until its setup completes; False (and counted) if full.

        A trusted peer (at `address`) that starts queueing is no longer established: the
        mirror forgets it, so that its packets reach the engine, which flushes the queue first.
        """
        size = len(packet)
        setup = peer.setup
        if address is not None and peer.link is not None and (setup is None or not setup.queue):
            self.withdraw(address)
        queued = 0 if setup is None else setup.queued_bytes
        if (
            queued + size > self.max_queue_bytes
            or self.total_queued_bytes + size > self.max_total_queue_bytes
        ):
            self.queue_drops += 1
            return False
        if setup is None:
            setup = peer.setup = PeerSetup()
        if setup.queue is None:
            setup.queue = [packet]
        else:
            setup.queue.append(packet)
        setup.queued_bytes += size
        self.total_queued_bytes += size
        return True

    def take_queue(self, peer: Peer) -> list[bytes]:
        """Remove and return the packets queued for `peer`."""
        queue = peer.queue or []
        self._drop_queue(peer)
        return queue

    # -----------------------------------------------------------------------------------------
    # Expiry and eviction

    def sweep(self, now: float, budget: int = 1024) -> list[tuple[bytes, Peer]]:
        """Examine up to `budget` entries at the CLOCK hand; remove the idle ones (`on_remove`
        is told) and return them. Kept entries whose setup state is at rest lose it
        (`Peer.settle`).

        Call it from a periodic timer: the whole table is visited in len/budget calls.
        """
        peers = self._peers
        removed = []
        mirror = self.mirror
        for _ in range(min(budget, len(peers))):
            address, peer = self._advance()
            if mirror is not None and peer.link is not None:
                self._sync(address, peer, now)
            if self._idle(peer, now):
                self._remove(address, peer)
                removed.append((address, peer))
                self.expired += 1
            else:
                if peer.setup is not None:
                    peer.settle(now)
                at_rest = peer.setup is None and peer.link is not None
                if at_rest and self.learning and self._hand_over(address, peer):
                    continue
                if peer.setup is None and type(peer.link) is int:
                    peers[address] = peer.link  # at rest: frozen
        return removed

    def _sync(self, address: bytes, peer: Peer, now: float) -> None:
        """The sweep's visit to a trusted peer, with a mirror: a peer heard from here since the
        last round is told to the mirror (whose own time may be older: the packets it forwards
        need a valid peer); one that looks idle here is asked about there first."""
        last = peer.last_rx
        if now - last < SWEEP_ROUND:
            if not peer.queue:
                self.publish(address, peer)
        elif now - last >= self.idle_timeout:
            self.refresh(address, peer)

    def _advance(self) -> tuple[bytes, Peer]:
        """The entry under the CLOCK hand, which moves on (the table must not be empty).

        The hand walks a snapshot of the addresses in insertion order, taken when the last one
        ran out: popping from the front of the dict and re-inserting at the back would leave
        deleted slots at its front, which every ``next(iter(dict))`` steps over again
        (quadratic at a million entries), and would make CPython resize the dict.
        """
        peers = self._peers
        while True:
            hand = self._hand
            if hand >= len(self._round):
                self._round = list(peers)
                hand = 0
            address = self._round[hand]
            self._hand = hand + 1
            peer = self.get(address)
            if peer is not None:  # else removed since the snapshot
                return address, peer

    def _idle(self, peer: Peer, now: float) -> bool:
        last = peer.last_rx
        setup = peer.setup
        if setup is not None:
            if setup.queue:
                return False
            last = max(last, setup.last_tx, setup.last_ping)
            if setup.local is not None:
                last = max(last, setup.local_seen)
        return now - last >= self.idle_timeout

    def _evict_one(self, now: float) -> None:
        """Make room for one entry, in O(1): bounded scans, no walk over the table.

        First probation, oldest first: an entry not heard from since it was created is evicted;
        one heard from since has proven itself and leaves probation (kept). New and unproven
        entries thus compete among themselves: a flood of new sources or destinations cannot
        push out an established peer while its own entries are there to evict. Only when
        probation holds none (every recent entry proved itself) does the CLOCK hand choose:
        an untrusted or idle entry, else, after `EVICTION_SCAN` second chances, the next one.
        """
        peers = self._peers
        probation = self._probation
        for _ in range(min(len(probation), EVICTION_SCAN)):
            address, created = probation.popleft()
            peer = self.get(address)
            if peer is None:
                continue  # removed since
            # (Removed and created again since: that newer entry is unproven too, unless it was
            # heard from since this one's creation.)
            if self.mirror is not None:
                self.refresh(address, peer)  # its packets may all have taken the kernel's path
            if peer.last_rx <= created:
                self._remove(address, peer)
                self.evicted += 1
                return
        for _ in range(min(len(peers), EVICTION_SCAN)):
            address, peer = self._advance()
            if peer.link is None or self._idle(peer, now):
                break
        else:
            address, peer = self._advance()
        self._remove(address, peer)
        self.evicted += 1

    def _remove(self, address: bytes, peer: Peer) -> None:
        del self._peers[address]
        self._drop_queue(peer)
        if peer.link is not None:
            self.withdraw(address)
        if self.on_remove is not None:
            self.on_remove(address, peer)

    # -----------------------------------------------------------------------------------------
    # The mirror (see `PeerMirror`)

    def publish(self, address: bytes, peer: Peer) -> None:
        """Put `peer` in the mirror if it is established: trusted, nothing queued."""
        mirror = self.mirror
        if mirror is None or address in self.unmirrored:
            return
        mapped = peer.mapped
        if mapped is not None and not peer.queue:
            mirror.set_peer(address, mapped, peer.last_rx)

    def withdraw(self, address: bytes) -> None:
        """Take `address` out of the mirror (nothing happens if it was not there)."""
        if self.mirror is not None:
            self.mirror.remove_peer(address)

    def refresh(self, address: bytes, peer: Peer) -> None:
        """Learn from the mirror when it last heard from `peer`, if that is later than here."""
        mirror = self.mirror
        if mirror is None or peer.link is None:
            return
        heard = mirror.last_rx(address)
        if heard is not None and heard > peer.last_rx:
            peer.last_rx = heard

    # -----------------------------------------------------------------------------------------
    # Peers the mirror learned (see "Peers only the mirror holds" in the module docstring)

    def adopt(self, address: bytes, now: float) -> Peer | None:
        """The entry of a peer only the mirror holds, if it is still valid: created here,
        trusted at the mirror's mapping, heard from when the mirror last heard from it. None
        when the mirror does not learn or has no such peer, or heard from it 30 s ago or more
        (then the caller sets the peer up as any other, RFC 4380 §5.2.4)."""
        mirror = self.mirror
        if mirror is None or not self.learning:
            return None
        learned = mirror.learned_peer(address)
        if learned is None:
            return None
        mapped, heard = learned
        if now - heard >= PEER_VALIDITY:
            return None
        peer = self.create(address, now)
        self.trust(address, peer, mapped, now)
        peer.rx = heard  # hot: `rx` is the last reception
        return peer

    def sweep_learned(self, now: float, budget: int) -> None:
        """Visit up to `budget` entries of the mirror, continuing the current pass over it:
        remove those the table does not hold and the mirror has not heard from for
        `idle_timeout`. At the end of a pass, `learned` is how many such entries it kept."""
        mirror = self.mirror
        if mirror is None or not self.learning:
            return
        walk = self._learned_walk
        if walk is None:
            walk = self._learned_walk = mirror.last_rx_batch()
            self._walk_seen = self._walk_learned = 0
        peers = self._peers
        idle = self.idle_timeout
        visited = 0
        for address, heard in islice(walk, budget):
            visited += 1
            if address in peers:
                continue
            if now - heard >= idle:
                mirror.remove_peer(address)
                self.learned_expired += 1
            else:
                self._walk_learned += 1
        self._walk_seen += visited
        if visited < budget:  # the pass is over
            self.learned = self._walk_learned
            self._last_walk = self._walk_seen
            self._learned_walk = None

    def _hand_over(self, address: bytes, peer: Peer) -> bool:
        """Leave an established peer at rest to a mirror that learns (see the module
        docstring): the mirror's entry, which it keeps heard from and expires as its own, is
        then all there is of it; `adopt` brings it back. False when the mirror does not hold
        it at this mapping (say it was full): the table keeps it."""
        mirror = self.mirror
        assert mirror is not None
        held = mirror.learned_peer(address)
        mapped = peer.mapped
        if held is None or held[0] != mapped or mapped is None:
            return False
        if peer.last_rx > held[1]:  # heard from here since: the mirror must know
            mirror.set_peer(address, mapped, peer.last_rx)
        del self._peers[address]
        self.handed_over += 1
        return True

    def learned_sweep_budget(self, share: float) -> int:
        """Entries for one slice of `sweep_learned`: `share` of what the last pass visited."""
        return int(self._last_walk * share) + 1

    def _drop_queue(self, peer: Peer) -> None:
        setup = peer.setup
        if setup is not None:
            self.total_queued_bytes -= setup.queued_bytes
            setup.queue = None
            setup.queued_bytes = 0
