"""The setup budget: how much setup traffic a client or relay may send, whatever arrives.

Theory of operation
-------------------
Everything a Teredo node sends that is not a peer's own data costs the network something and
can be triggered by a stranger: bubbles (RFC 4380 §5.2.6), echo tests (§5.2.9), ICMPv6 errors
(RFC 4443 §2.4). The per-peer limits of RFC 4380 §5.2.6 (no bubble within 2 s, 4 per 300 s)
bound what one peer costs, not what a million new peers cost: a flood of packets toward new
Teredo destinations made every packet cost a direct and an indirect bubble, repeated.
`SetupBudget` adds the bounds a node needs on the open Internet:

* **one rate for the whole node** (`rate` packets per second, `2 * rate` at once): a flood of
  new destinations or sources makes at most that many setup packets, so that beyond the rate a
  flood gets far less than one packet out per packet in;
* **a pace per Teredo server** for what goes through it (indirect bubbles, echo tests):
  `server_rate` per second, below the per-source limit of a server (ours allows 100 per second
  to one IPv4 address, RFC 4380 §7.4.1), so that a flood toward one server's clients never
  makes that server refuse *us*, which would cut off its legitimate clients too;
* **priority for demand that repeats**: a setup attempt toward a destination that already has
  packets waiting (or was a trusted peer before) may spend the reserve, half of each bucket; a
  first contact may not. A flood touches each of its destinations about once, a real flow
  sends again (a ping a second later, a TCP retransmission), so under a flood first contacts
  share what is above the reserve and a real flow's second packet finds the reserve there.

Each bucket is a token bucket (`TokenBucket`); the per-server ones live in a bounded table
(`KeyedBuckets`, least recently used evicted, O(1)): an evicted server's bucket starts full
again, so a flood over more servers than the table holds fails open per server, never closed,
and the node-wide rate still bounds it. Time is passed in; nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict

from teredo.core.record import record  # a dataclass without dataclasses' start-up cost

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

SETUP_RATE: Final = 1000.0  # setup packets per second for the whole node (our choice)
SERVER_RATE: Final = 50.0  # per Teredo server: half of what our server allows one address
MAX_SERVERS: Final = 4096  # per-server buckets kept, least recently used evicted
RESERVE: Final = 0.5  # the share of each bucket only repeated demand may spend


class TokenBucket:
    """`rate` tokens per second, at most `burst`; a spend may not go below `floor`."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def level(self, now: float) -> float:
        """The tokens available at `now` (refilled since the last spend)."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def spend(self, amount: float, now: float, floor: float = 0.0) -> bool:
        """Take `amount` tokens if that leaves at least `floor`."""
        if self.level(now) - amount < floor:
            return False
        self.tokens -= amount
        return True


class KeyedBuckets:
    """Token buckets by key (an IPv4 address as an int) in a table of at most `size` keys."""

    __slots__ = ("_buckets", "burst", "rate", "size")

    def __init__(self, rate: float, burst: float, size: int) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        self._buckets: OrderedDict[int, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: int, now: float) -> TokenBucket:
        """The bucket of `key`, created full (evicting the least recently used) if absent."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.size:
                buckets.popitem(last=False)
            bucket = buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            buckets.move_to_end(key)
        return bucket


@record
class BudgetSettings:
    """The setup budget's rates (packets per second); 0 switches a limit off."""

    rate: float = SETUP_RATE
    server_rate: float = SERVER_RATE


class SetupBudget:
    """May the node send `packets` setup packets now? See the module docstring."""

    __slots__ = ("_node", "_servers", "refused", "settings")

    def __init__(self, settings: BudgetSettings, now: float) -> None:
        self.settings = settings
        self._node = TokenBucket(settings.rate, 2 * settings.rate, now)
        self._servers = KeyedBuckets(settings.server_rate, 2 * settings.server_rate, MAX_SERVERS)
        self.refused = 0

    def reconfigure(self, settings: BudgetSettings) -> None:
        self.settings = settings
        self._node.rate, self._node.burst = settings.rate, 2 * settings.rate
        self._servers.rate, self._servers.burst = settings.server_rate, 2 * settings.server_rate

    def allow(self, packets: int, now: float, *, server: int | None, repeated: bool) -> bool:
        """Spend `packets` from the node's bucket (and one from `server`'s, for the packet that
        goes through that server), or nothing if either lacks them. `repeated`: the attempt
        answers repeated demand and may spend the reserve."""
        settings = self.settings
        node = self._node if settings.rate > 0 else None
        pace = (
            self._servers.get(server, now)
            if server is not None and settings.server_rate > 0
            else None
        )
        if node is not None:
            floor = 0.0 if repeated else node.burst * RESERVE
            if node.level(now) - packets < floor:
                self.refused += 1
                return False
        if pace is not None and not pace.spend(1, now, 0.0 if repeated else pace.burst * RESERVE):
            self.refused += 1
            return False
        if node is not None:
            node.tokens -= packets
        return True
