"""The peer table: RFC 4380 rate limits, validity, bounded queues and bounded size."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teredo.core.peers import (
    BUBBLE_BUDGET,
    NEVER,
    PEER_VALIDITY,
    PING_BUDGET,
    Peer,
    PeerTable,
    Probation,
)


def key(i: int) -> bytes:
    return (0x20010000 << 96 | i).to_bytes(16, "big")


def is_cold(peer: Peer) -> bool:
    """Whether the peer's mapping is packed in an int (cold) rather than a hot tuple."""
    return type(peer.link) is int


def test_new_entries_are_backdated_and_untrusted() -> None:
    peer = Peer(now=100.0)
    assert not peer.trusted and not peer.is_valid(100.0)
    # RFC 4380 §5.2.3: last reception and transmission at least 30 s in the past.
    assert peer.last_rx == 70.0 and peer.last_tx <= 70.0
    assert peer.may_send_bubble(100.0)  # RFC 4380 §5.2.6: the first bubble goes at once
    assert peer.setup is None  # nothing to remember yet


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


def test_table_is_bounded_and_evicts_unproven_entries_first() -> None:
    table = PeerTable(max_peers=3)
    established = table.create(key(1), now=0.0)
    established.trust(("192.0.2.1", 1), now=0.0)
    established.last_rx = 0.5  # heard from again: it has proven itself
    table.create(key(2), now=0.0)
    table.create(key(3), now=0.0)
    table.create(key(4), now=1.0)
    assert len(table) == 3
    assert key(1) in table and key(2) not in table
    assert table.evicted == 1


def test_a_flood_of_new_entries_churns_among_itself() -> None:
    """Entries seen once (trusted or not) are evicted oldest first; an established peer and
    recent entries heard from again stay, and every eviction examines a bounded number."""
    removed: list[bytes] = []
    table = PeerTable(max_peers=100, on_remove=lambda address, _: removed.append(address))
    established = table.create(key(0), now=0.0)
    table.trust(key(0), established, ("192.0.2.1", 1), now=0.0)
    for n in range(1, 5000):
        now = n / 1000
        entry = table.create(key(n), now)
        table.trust(key(n), entry, ("192.0.2.2", n), now)  # one packet each, like a flood
        if n % 50 == 0:  # the legitimate peer keeps talking (rx case 1, as the engine does)
            talking = table.get(key(0))
            assert talking is not None and table.is_mapped_at(key(0), talking, ("192.0.2.1", 1))
            talking.rx = now
    assert key(0) in table and len(table) == 100
    assert table.evicted == len(removed) == 4900
    assert key(0) not in removed and removed[:3] == [key(1), key(2), key(3)]


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


def test_sweep_slices_go_round_the_table_once_per_round() -> None:
    table = PeerTable(max_peers=100, idle_timeout=30.0)
    for i in range(10):
        table.trust(key(i), table.create(key(i), now=0.0), ("192.0.2.1", 1), now=0.0)
    assert table.sweep(now=1.0, budget=4) == []
    table.remove(key(5))  # under the hand's next slice: skipped
    fresh = table.create(key(10), now=1.0)  # after the round's snapshot: next round
    table.trust(key(10), fresh, ("192.0.2.1", 1), now=44.0)
    removed = table.sweep(now=45.0, budget=5)
    assert [address for address, _ in removed] == [key(i) for i in (4, 6, 7, 8, 9)]
    removed = table.sweep(now=45.0, budget=5)
    assert [address for address, _ in removed] == [key(i) for i in (0, 1, 2, 3)]
    assert key(10) in table and len(table) == 1


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


# -- memory layout: setup state on demand, hot and cold mappings (module docstring) ----------


def test_setup_state_exists_only_while_it_matters() -> None:
    peer = Peer(now=0.0)
    peer.nonce_received = None  # writing an initial value creates nothing
    peer.pings = 0
    assert peer.setup is None and peer.last_tx == NEVER and peer.queue is None
    peer.note_bubble(1.0)
    assert peer.setup is not None and peer.bubbles == 1 and peer.last_tx == 1.0
    peer.trust(("192.0.2.1", 4096), now=1.5)
    assert peer.bubbles == 0  # a direct response resets the count (RFC 4380 §5.2.6)
    peer.settle(now=20.0)
    assert peer.setup is not None  # the last bubble is recent: its spacing and nonce count
    peer.settle(now=1.0 + PEER_VALIDITY)
    assert peer.setup is None
    assert peer.may_send_bubble(40.0) and peer.last_tx == NEVER


def test_setup_state_is_kept_for_queues_local_peers_and_untrusted_peers() -> None:
    table = PeerTable()
    queued = table.create(key(1), now=0.0)
    table.enqueue(queued, b"packet")
    table.trust(key(1), queued, ("192.0.2.1", 1), now=0.0)
    local = table.create(key(2), now=0.0)
    local.local = ("10.0.0.2", 3544)
    local.local_seen = 0.0
    table.trust(key(2), local, ("192.0.2.2", 1), now=0.0)
    untrusted = table.create(key(3), now=0.0)
    untrusted.note_bubble(0.0)
    for peer in (queued, local, untrusted):
        peer.settle(now=1000.0)
        assert peer.setup is not None
    assert table.take_queue(queued) == [b"packet"]
    queued.settle(now=1000.0)
    assert queued.setup is None


def test_a_peer_answered_after_our_bubble_sheds_its_setup_in_the_sweep() -> None:
    table = PeerTable(idle_timeout=600.0)
    peer = table.create(key(1), now=0.0)
    peer.note_bubble(0.0)
    peer.nonce_sent = b"1234"
    table.trust(key(1), peer, ("192.0.2.1", 1), now=0.5)
    assert peer.setup is not None and peer.nonce_sent == b"1234"
    peer.last_rx = 40.0
    assert table.sweep(now=40.0) == []
    assert peer.setup is None and peer.nonce_sent is None and peer.is_valid(40.0)


def test_hot_mappings_are_bounded_and_cold_ones_keep_every_value() -> None:
    table = PeerTable(max_peers=100, hot_mappings=2)
    for i in range(5):
        table.trust(
            key(i), table.create(key(i), now=float(i)), (f"192.0.2.{i}", 1000 + i), i + 0.25
        )
    entries = [table._peers[key(i)] for i in range(5)]
    # Two hot; the three that cooled had no setup state: frozen at once, as the sweep would.
    assert [type(e) is Peer and type(e.link) is tuple for e in entries] == [False] * 3 + [True] * 2
    assert all(isinstance(e, int) for e in entries[:3])
    for i in range(5):
        peer = table.get(key(i))
        assert peer is not None and peer.trusted and peer.mapped == (f"192.0.2.{i}", 1000 + i)
        assert peer.last_rx == i + 0.25 and peer.is_valid(i + 30.0)
    cold = table.get(key(0))
    assert cold is not None and is_cold(cold)
    assert not table.is_mapped_at(key(0), cold, ("192.0.2.0", 999))
    assert is_cold(cold)  # a mismatch does not warm it
    assert table.is_mapped_at(key(0), cold, ("192.0.2.0", 1000))
    assert cold.link == ("192.0.2.0", 1000) and cold.rx == 0.25
    links = [getattr(table._peers[key(i)], "link", None) for i in range(5)]
    assert [i for i, link in enumerate(links) if type(link) is tuple] == [0, 4]  # 3 cooled
    peer = table.get(key(1))
    assert peer is not None and table.sockaddr(key(1), peer) == ("192.0.2.1", 1001)
    assert peer.link == ("192.0.2.1", 1001)
    cold = table.get(key(4))
    assert cold is not None and is_cold(cold)
    cold.last_rx = 99.0  # a cold peer's time is written in place
    assert cold.last_rx == 99.0 and cold.mapped == ("192.0.2.4", 1004)
    assert table.get(key(4)) is cold


def test_a_peer_with_setup_state_cools_but_does_not_freeze() -> None:
    """Whoever keeps a peer across calls (the retry timers) keeps one with setup state: it
    cools in place, the same object the table holds."""
    table = PeerTable(max_peers=100, hot_mappings=1)
    waiting = table.create(key(0), now=0.0)
    table.enqueue(waiting, b"packet")
    table.trust(key(0), waiting, ("192.0.2.1", 1), now=0.0)
    table.trust(key(1), table.create(key(1), now=0.0), ("192.0.2.2", 2), now=0.0)
    assert is_cold(waiting) and table.get(key(0)) is waiting
    assert waiting.mapped == ("192.0.2.1", 1) and waiting.last_rx == 0.0


def test_a_new_mapping_while_hot_is_the_one_kept_when_cooling() -> None:
    table = PeerTable(max_peers=100, hot_mappings=2)
    moving = table.create(key(0), now=0.0)
    table.trust(key(0), moving, ("192.0.2.1", 1), now=0.0)
    table.trust(key(0), moving, ("192.0.2.1", 1), now=0.5)  # the same mapping: one place
    table.trust(key(0), moving, ("198.51.100.1", 2), now=1.0)  # NAT rebinding: a second place
    for i in (1, 2):
        table.trust(key(i), table.create(key(i), now=1.0), ("192.0.2.9", i), now=1.0)
    cooled = table.get(key(0))
    assert cooled is not None and is_cold(cooled)
    assert cooled.mapped == ("198.51.100.1", 2) and cooled.last_rx == 1.0


def test_a_mapping_that_is_not_ipv4_stays_as_given() -> None:
    peer = Peer(now=0.0)
    peer.trust(("relay.example", 3544), now=1.0)
    assert peer.link == ("relay.example", 3544) and peer.last_rx == 1.0


@given(
    st.ip_addresses(v=4),
    st.integers(0, 0xFFFF),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_cold_links_round_trip(address: object, port: int, now: float) -> None:
    peer = Peer(now=0.0)
    peer.trust((str(address), port), now)
    assert is_cold(peer)
    assert peer.mapped == (str(address), port) and peer.last_rx == now
    table = PeerTable()
    assert table.sockaddr(key(0), peer) == (str(address), port) and peer.rx == now


def test_peers_at_rest_freeze_and_thaw_with_every_value() -> None:
    """The sweep freezes an established peer at rest (its cold link, no `Peer`); `get` thaws
    it with the same mapping and reception time, and nothing is lost or counted twice."""
    table = PeerTable(max_peers=10, hot_mappings=1)
    for i in range(3):
        table.trust(key(i), table.create(key(i), now=1.0), ("192.0.2.1", 100 + i), now=1.0 + i)
    table.sweep(now=5.0, budget=10)
    frozen = [value for value in table._peers.values() if isinstance(value, int)]
    assert len(frozen) == 2  # the third is still hot
    assert table.trusted_count() == 3 and len(table.items()) == 3
    peer = table.get(key(0))
    assert peer is not None and peer.mapped == ("192.0.2.1", 100) and peer.last_rx == 1.0
    assert table.get(key(0)) is peer  # thawed for good
    assert peer.is_valid(5.0) and not peer.is_valid(31.0)
    table.sweep(now=40.0, budget=10)  # idle now: frozen or not, they expire
    assert len(table) == 0 and table.expired == 3


def test_probation_is_a_ring_of_the_newest_entries() -> None:
    probation = Probation(3)
    for i in range(2):
        probation.append(bytes([i]), float(i))
    assert probation.popleft() == (b"\x00", 0.0)
    for i in range(2, 6):  # 1, 2, 3, then 4 and 5 push out the oldest
        probation.append(bytes([i]), float(i))
    assert len(probation) == 3
    assert [probation.popleft() for _ in range(3)] == [
        (b"\x03", 3.0),
        (b"\x04", 4.0),
        (b"\x05", 5.0),
    ]
    with pytest.raises(IndexError):
        probation.popleft()
    probation.append(b"\x06", 6.0)  # places are reused, never more than the capacity
    assert probation.popleft() == (b"\x06", 6.0)
    assert len(probation._addresses) == 3


def test_cooling_skips_an_entry_removed_or_frozen_since() -> None:
    table = PeerTable(max_peers=10, hot_mappings=1)
    table.trust(key(0), table.create(key(0), now=0.0), ("192.0.2.1", 1), now=0.0)
    table.remove(key(0))  # its place in the ring stays, naming nobody now
    table.trust(key(1), table.create(key(1), now=0.0), ("192.0.2.2", 2), now=0.0)
    table.trust(key(2), table.create(key(2), now=0.0), ("192.0.2.3", 3), now=0.0)
    assert key(0) not in table and isinstance(table._peers[key(1)], int)
    peer = table.get(key(2))
    assert peer is not None and not is_cold(peer)


def test_cooling_leaves_the_peer_turning_hot_and_mappings_that_are_not_ipv4() -> None:
    table = PeerTable(max_peers=10, hot_mappings=1)
    peer = table.create(key(0), now=0.0)
    table.trust(key(0), peer, ("192.0.2.1", 1), now=0.0)
    peer.trust(("192.0.2.1", 2), now=1.0)  # `Peer.trust` keeps it cold, in the ring still
    assert table.sockaddr(key(0), peer) == ("192.0.2.1", 2)  # its own place: nothing cools
    assert table.get(key(0)) is peer and not is_cold(peer)
    named = table.create(key(1), now=0.0)
    table.trust(key(1), named, ("relay.example", 3544), now=0.0)
    table.trust(key(2), table.create(key(2), now=0.0), ("192.0.2.3", 3), now=0.0)
    assert table.get(key(1)) is named and named.link == ("relay.example", 3544)
