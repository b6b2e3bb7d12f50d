"""The peer table: RFC 4380 rate limits, validity, bounded queues and bounded size."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from teredo.peers import BUBBLE_BUDGET, PING_BUDGET, Peer, PeerTable


def key(i: int) -> bytes:
    return (0x20010000 << 96 | i).to_bytes(16, "big")


def test_new_entries_are_backdated_and_untrusted() -> None:
    peer = Peer(now=100.0)
    assert not peer.trusted and not peer.is_valid(100.0)
    assert peer.last_tx == 70.0 and peer.last_rx == 70.0
    assert peer.may_send_bubble(100.0)  # RFC 4380 §5.2.6: the first bubble goes at once


def test_validity_is_30_seconds_after_last_reception() -> None:
    peer = Peer(now=0.0)
    peer.trust(("192.0.2.1", 4096), now=10.0)
    assert peer.is_valid(39.9)
    assert not peer.is_valid(40.0)


def test_bubble_spacing_and_budget() -> None:
    peer = Peer(now=0.0)
    now = 0.0
    sent = []
    while now < 299.0:
        if peer.may_send_bubble(now):
            peer.note_bubble(now)
            sent.append(now)
        now += 0.5
    assert len(sent) == BUBBLE_BUDGET  # at most 4 per 300 s without a direct response
    assert all(b - a >= 2.0 for a, b in itertools.pairwise(sent))
    assert peer.may_send_bubble(300.0)  # a new window
    peer.trust(("192.0.2.1", 1), now=301.0)
    assert peer.bubbles == 0


def test_ping_budget() -> None:
    peer = Peer(now=0.0)
    now, sent = 0.0, 0
    for _ in range(40):
        if peer.may_ping(now):
            peer.note_ping(b"nonce", now)
            sent += 1
        now += 0.5
    assert sent == PING_BUDGET
    assert peer.setup_exhausted(now)


def test_table_is_bounded_and_evicts_untrusted_first() -> None:
    table = PeerTable(max_peers=3)
    trusted = table.create(key(1), now=0.0)
    trusted.trust(("192.0.2.1", 1), now=0.0)
    table.create(key(2), now=0.0)
    table.create(key(3), now=0.0)
    table.create(key(4), now=1.0)
    assert len(table) == 3
    assert key(1) in table and key(2) not in table
    assert table.evicted == 1


def test_queue_limits_per_peer_and_total() -> None:
    table = PeerTable(max_peers=10, max_queue_bytes=1280, max_total_queue_bytes=2000)
    a = table.create(key(1), 0.0)
    b = table.create(key(2), 0.0)
    assert table.enqueue(a, bytes(1000))
    assert not table.enqueue(a, bytes(300))  # per-peer limit
    assert table.enqueue(b, bytes(1000))
    assert not table.enqueue(b, bytes(100)) or table.total_queued_bytes <= 2000
    assert table.queue_drops >= 1
    assert table.take_queue(a) == [bytes(1000)]
    assert a.queue is None and table.total_queued_bytes == b.queued_bytes
    table.remove(key(2))
    assert table.total_queued_bytes == 0


def test_sweep_expires_idle_entries_and_keeps_active_ones() -> None:
    table = PeerTable(max_peers=100, idle_timeout=30.0)
    for i in range(10):
        table.create(key(i), now=0.0)
    active = table.get(key(0))
    assert active is not None
    active.trust(("192.0.2.1", 1), now=50.0)
    removed = table.sweep(now=60.0, budget=100)
    assert len(removed) == 9 and len(table) == 1
    assert table.expired == 9


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 1500)), max_size=300))
def test_flood_of_new_sources_stays_bounded(events: list[tuple[int, int]]) -> None:
    table = PeerTable(max_peers=50, max_queue_bytes=1280, max_total_queue_bytes=8000)
    now = 0.0
    for address, size in events:
        now += 0.01
        peer = table.create(key(address), now)
        table.enqueue(peer, bytes(size))
        assert len(table) <= 50
        assert table.total_queued_bytes <= 8000
        assert table.total_queued_bytes == sum(p.queued_bytes for _, p in table.items())
