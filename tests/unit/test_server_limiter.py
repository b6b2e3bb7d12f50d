"""The server's per-source rate limiter: `SourceRateLimiter` and its C twin agree.

Both keep one token bucket per IPv4 address in a table of bounded size, least recently used
first out, in constant time per packet (RFC 4380 §7.4.1: the bound on reflection). The C one is
tested against the Python one on sequences of keys and times (skipped without the C module
outside CI).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.adapters import accel
from teredo.core.server import RateLimiter, SourceRateLimiter
from testsupport import require_accelerators

C_LIMITER = accel.new_rate_limiter

LIMITERS = pytest.mark.parametrize("new_limiter", [SourceRateLimiter, C_LIMITER])


@LIMITERS
def test_limiter_semantics(new_limiter: Callable[[float, float, int], RateLimiter]) -> None:
    limiter = new_limiter(1.0, 2.0, 3)
    assert (limiter.rate, limiter.burst, limiter.max_entries, len(limiter)) == (1.0, 2.0, 3, 0)
    assert [limiter.allow(1, 0.0) for _ in range(3)] == [True, True, False]  # burst 2
    assert limiter.allow(1, 1.0)  # one token a second
    assert not limiter.allow(1, 1.5)
    assert not limiter.allow(1, 0.5)  # a clock going backwards earns nothing...
    assert limiter.allow(1, 1.5)  # ...and the bucket's time is the last one given
    for key in (2, 3, 4):  # a full table forgets the least recently used: key 1
        assert limiter.allow(key, 2.0)
    assert len(limiter) == 3
    assert limiter.allow(1, 2.0) and limiter.allow(1, 2.0)  # a fresh bucket: fails open
    assert not limiter.allow(1, 2.0)
    limiter.rate, limiter.burst = 10.0, 5.0
    assert (limiter.rate, limiter.burst) == (10.0, 5.0)
    assert limiter.allow(1, 2.1)


@LIMITERS
def test_limiter_keeps_recently_used_sources_under_a_flood(
    new_limiter: Callable[[float, float, int], RateLimiter],
) -> None:
    """A source seen between floods keeps its (empty) bucket: the flood only evicts the least
    recently used, so it cannot reset a victim that keeps being used."""
    limiter = new_limiter(1.0, 1.0, 1000)
    victim = 0xC0000201
    assert limiter.allow(victim, 0.0)
    for round_ in range(20):
        for key in range(900):  # fewer new keys than the table holds, between two uses
            limiter.allow(0x64400000 + round_ * 900 + key, 0.0)
        assert not limiter.allow(victim, 0.0)
    assert len(limiter) == 1000


def test_the_c_limiter_refuses_bad_arguments() -> None:
    require_accelerators()
    with pytest.raises(ValueError):
        C_LIMITER(1.0, 1.0, 0)
    with pytest.raises(ValueError):
        C_LIMITER(1.0, 1.0, 1 << 25)
    with pytest.raises(ValueError):
        accel.new_rate_limiter(1.0, 1.0, 4).allow(1 << 32, 0.0)
    from teredo import _accel

    with pytest.raises(ValueError, match="16 bytes"):
        _accel.RateLimiter(1.0, 1.0, 4, b"short")


@st.composite
def limiter_runs(draw: st.DrawFn) -> tuple[int, list[tuple[int, float]]]:
    size = draw(st.integers(1, 8))
    keys = st.one_of(
        st.integers(0, 12),
        st.integers(0, 2**32 - 1),
        st.integers(0, 12).map(lambda k: k << 24),  # equal low bits
    )
    steps = st.sampled_from([0.0, 0.0, 0.1, 0.5, 3.0, -0.2])
    return size, draw(st.lists(st.tuples(keys, steps), max_size=300))


@settings(max_examples=300, deadline=None)
@given(run=limiter_runs(), seed=st.binary(min_size=16, max_size=16))
def test_the_c_and_python_limiters_agree(
    run: tuple[int, list[tuple[int, float]]], seed: bytes
) -> None:
    require_accelerators()
    from teredo import _accel

    size, calls = run
    limiters: list[RateLimiter] = [
        _accel.RateLimiter(2.0, 3.0, size, seed),
        SourceRateLimiter(2.0, 3.0, size),
    ]
    now = 0.0
    for key, step in calls:
        now += step
        decisions = [limiter.allow(key, now) for limiter in limiters]
        assert decisions[0] == decisions[1]
        assert len(limiters[0]) == len(limiters[1])


def test_the_c_limiter_survives_many_keys_with_colliding_hashes() -> None:
    """The index stays consistent through evictions (backward-shift deletion) whatever the
    seed: with a zero multiplier every key hashes to one slot."""
    require_accelerators()
    from teredo import _accel

    rng = random.Random(7)
    for seed in (bytes(16), bytes(range(16))):
        fast, reference = _accel.RateLimiter(1.0, 2.0, 64, seed), SourceRateLimiter(1.0, 2.0, 64)
        for step in range(20000):
            key = rng.randrange(200)
            assert fast.allow(key, step * 0.01) == reference.allow(key, step * 0.01)
        assert len(fast) == len(reference) == 64
