"""The setup budget: node-wide rate, per-server pace, priority for repeated demand, and what a
flood of new destinations can make a relay send."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from teredo.core.address import encode_teredo_address
from teredo.core.budget import BudgetSettings, KeyedBuckets, SetupBudget, TokenBucket
from teredo.core.peering import PeeringSettings
from teredo.core.relay import TeredoRelay
from teredo.core.wire import encode_echo

NATIVE = IPv6Address("2001:db8:2::2")
ATTACKER = IPv6Address("2001:db8:66::6")
SERVER = IPv4Address("198.51.100.2")


def counting_random() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def relay(rate: float = 1000.0, server_rate: float = 50.0) -> TeredoRelay:
    settings = PeeringSettings(
        max_peers=65536,
        budget=BudgetSettings(rate=rate, server_rate=server_rate),
    )
    return TeredoRelay(settings, random_bytes=counting_random(), secret=b"k" * 32, now=0.0)


def destination(n: int, server: IPv4Address = SERVER) -> IPv6Address:
    mapped = IPv4Address(int(IPv4Address("100.64.0.0")) + n // 60000)
    return encode_teredo_address(server, mapped, 1024 + n % 60000)


def test_token_bucket_refills_and_keeps_a_floor() -> None:
    bucket = TokenBucket(rate=10.0, burst=20.0, now=0.0)
    assert bucket.spend(15, 0.0) and not bucket.spend(6, 0.0)
    assert bucket.spend(5, 0.0) and not bucket.spend(1, 0.0)
    assert bucket.spend(10, 1.0)  # refilled at 10 per second
    assert not bucket.spend(1, 2.0, floor=10.0) and bucket.spend(1, 2.0)


def test_keyed_buckets_are_bounded_and_lru() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=2.0, size=3)
    for key in range(3):
        assert buckets.get(key, 0.0).spend(2, 0.0)
    buckets.get(0, 0.0)  # used: 1 is now the least recently used
    buckets.get(99, 0.0)
    assert len(buckets) == 3
    assert not buckets.get(0, 0.0).spend(1, 0.0)  # kept, still empty
    assert buckets.get(1, 0.0).spend(2, 0.0)  # evicted: a fresh, full bucket (fails open)


def test_repeated_demand_may_spend_the_reserve() -> None:
    budget = SetupBudget(BudgetSettings(rate=10.0, server_rate=0.0), now=0.0)
    firsts = sum(budget.allow(1, 0.0, server=None, repeated=False) for _ in range(100))
    assert firsts == 10  # the burst is 20; first contacts stop at the reserve, half of it
    assert sum(budget.allow(1, 0.0, server=None, repeated=True) for _ in range(100)) == 10


def test_a_flood_of_new_destinations_gets_a_bounded_share() -> None:
    """10 kpps toward 200 000 new Teredo destinations behind one server, for 5 s: at most the
    budget leaves the relay (far below one packet per packet), the server is paced below its
    per-source limit, and a destination asked for again (a ping each second) gets its bubbles."""
    engine = relay()
    wanted = destination(999_999)
    sent: list[tuple[bytes, tuple[str, int]]] = []
    for step in range(50_000):
        now = step / 10_000
        packet = encode_echo(ATTACKER, destination(step), 1, 1, b"x" * 16)
        engine.send_ipv6(packet, now)
        if step % 10_000 == 5_000:  # the legitimate flow: one ping a second
            engine.send_ipv6(encode_echo(NATIVE, wanted, 7, step, b"ping"), now)
        if step % 100 == 0:
            engine.handle_timer(now)
        sent += engine.datagrams_to_send()
    assert len(sent) < 0.2 * 50_000
    through_server = [d for d, to in sent if to == (str(SERVER), 3544)]
    assert len(through_server) <= 2 * 50 + 50 * 5  # burst + rate x seconds
    to_wanted = [d for d, to in sent if d[24:40] == wanted.packed]
    assert to_wanted, "the repeated destination was never bubbled"
    assert engine.drops["setup_budget_exhausted"] > 0
