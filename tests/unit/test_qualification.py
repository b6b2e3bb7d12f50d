"""Qualification and maintenance (RFC 4380 §5.2.1, §5.2.5; RFC 5991 §3.2; RFC 6081 §5.1.1, §5.2).

Driven over tests/fakenet.py with this project's server core, behind each NAT kind, on a fake
clock; spoofed RAs are built by hand.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest

from fakenet import FULLCONE, PORT_RESTRICTED, RESTRICTED, SYMMETRIC, FakeNetwork, Nat, ServerNode
from teredo.core.address import (
    CLIENT_LINK_LOCAL,
    TEREDO_PORT,
    Endpoint,
    encode_teredo_address,
    endpoint,
    parse_teredo_address,
    server_link_local,
)
from teredo.core.errors import LocalProtocolError
from teredo.core.qualification import (
    AddressChanged,
    NatBehaviour,
    NatBehaviourDetected,
    Offline,
    QualificationState,
    Qualified,
    Qualifier,
    QualifierEvent,
    ServerPair,
)
from teredo.core.server import ServerSettings, TeredoServer
from teredo.core.wire import (
    Authentication,
    OriginIndication,
    PrefixInformation,
    RouterAdvertisement,
    TeredoPacket,
    encode_router_advertisement,
    encode_teredo_packet,
    parse_teredo_packet,
)


def ep(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return (host, int(port))


class Clocked:
    """The fake network plus its clock."""

    def __init__(self) -> None:
        self.net = FakeNetwork()
        self.now = 0.0

    def run(self, seconds: float) -> None:
        self.now = self.net.advance(self.now, self.now + seconds)

    def run_until(self, condition: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
        end = self.now + timeout
        while self.now < end and not condition():
            self.run(step)
        return condition()

    @property
    def loss(self) -> Callable[[Endpoint], bool] | None:
        return None

    @loss.setter
    def loss(self, predicate: Callable[[Endpoint], bool] | None) -> None:
        """Drop datagrams whose destination matches (as an Endpoint)."""
        if predicate is None:
            self.net.drop = None
        else:
            self.net.drop = lambda hop: predicate(hop.destination)


class QualifierNode:
    """The Qualifier on the fake network (Endpoint <-> (ip, port) at the edge)."""

    def __init__(self, core: Qualifier, address: Endpoint) -> None:
        self.core = core
        self.address = address

    def collect(self, now: float) -> list[tuple[bytes, tuple[str, int], str | None]]:
        return [(d, e, None) for d, e in self.core.datagrams_to_send()]

    def deliver(
        self, payload: bytes, source: tuple[str, int], destination: tuple[str, int], now: float
    ) -> None:
        self.core.receive_datagram(payload, source, now)


PRIMARY = IPv4Address("198.51.100.2")
SECONDARY = IPv4Address("198.51.100.3")
SERVER = ServerPair(PRIMARY, SECONDARY)
LOCAL = ep("10.1.0.2:5000")
MAPPED = ep("203.0.113.2:40000")
GOOD_PREFIX = IPv6Address(int(IPv6Address("2001::")) | int(PRIMARY) << 64)


def counting_random() -> Callable[[int], bytes]:
    """Deterministic, distinct 'random' bytes (a CSPRNG in production)."""
    counter = itertools.count(1)

    def random_bytes(n: int) -> bytes:
        return next(counter).to_bytes(8, "big")[-n:].rjust(n, b"\x00")

    return random_bytes


def make_qualifier(**kwargs: object) -> Qualifier:
    kwargs.setdefault("local", LOCAL)
    return Qualifier([SERVER], counting_random(), **kwargs)  # type: ignore[arg-type]


def events(q: Qualifier) -> list[QualifierEvent]:
    out = []
    while (event := q.next_event()) is not None:
        out.append(event)
    return out


def network(kind: str | None, *, port_preserving: bool = True) -> tuple[Clocked, Nat | None]:
    clock = Clocked()
    ServerNode(TeredoServer(ServerSettings(PRIMARY, SECONDARY)), clock.net)
    nat = None if kind is None else Nat("203.0.113.2", kind, port_preserving=port_preserving)
    return clock, nat


def attach(clock: Clocked, q: Qualifier, local: Endpoint, nat: Nat | None) -> None:
    clock.net.attach(QualifierNode(q, local), nat)


def qualify_behind(
    kind: str | None, *, port_preserving: bool = True, **kwargs: object
) -> tuple[Clocked, Qualifier, list[QualifierEvent]]:
    net, nat = network(kind, port_preserving=port_preserving)
    local = LOCAL if kind is not None else ep("203.0.113.50:5000")
    kwargs.setdefault("local", local)
    q = make_qualifier(**kwargs)
    attach(net, q, local, nat)
    q.start(net.now)
    net.run(20.0)
    return net, q, events(q)


# -- qualification behind each NAT ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (FULLCONE, NatBehaviour.RESTRICTED),  # RFC 5991: cone is not detectable
        (RESTRICTED, NatBehaviour.RESTRICTED),
        (PORT_RESTRICTED, NatBehaviour.RESTRICTED),
        (SYMMETRIC, NatBehaviour.SYMMETRIC),
        (None, NatBehaviour.NONE),
    ],
)
def test_qualifies_behind_each_nat(kind: str | None, expected: NatBehaviour) -> None:
    _, q, evs = qualify_behind(kind, port_preserving=False)
    assert q.state is QualificationState.QUALIFIED
    qualified = [e for e in evs if isinstance(e, Qualified)]
    assert len(qualified) == 1
    event = qualified[0]
    assert event.address == q.address and event.mtu == 1280
    decoded = parse_teredo_address(event.address)
    assert decoded.server == PRIMARY
    assert decoded.mapped == q.mapped
    # RFC 5991 §3.1: C=0, z=0, U=G=0; only the random bits may be set.
    assert decoded.flags & ~0x3CFF == 0
    assert decoded.mapped_address == (
        IPv4Address("203.0.113.2") if kind is not None else IPv4Address("203.0.113.50")
    )
    assert q.nat is expected
    assert [e.nat for e in evs if isinstance(e, NatBehaviourDetected)] == [expected]
    assert event.rtt == 0.0  # the fake network delivers instantly


def test_symmetric_nat_keeps_the_primary_mapping() -> None:
    """RFC 6081 §5.2 (symmetric NAT support): qualify anyway, with the primary's mapping."""
    _, q, evs = qualify_behind(SYMMETRIC, port_preserving=False)
    assert q.secondary_mapping is not None and q.mapped is not None
    assert q.secondary_mapping != q.mapped
    assert q.address is not None and parse_teredo_address(q.address).mapped == q.mapped
    nat_event = next(e for e in evs if isinstance(e, NatBehaviourDetected))
    assert nat_event.primary_mapping == q.mapped
    assert nat_event.secondary_mapping == q.secondary_mapping


def test_port_preserving_symmetric_nat_looks_restricted() -> None:
    """The caveat documented in qualification.py: the same mapping for both server addresses."""
    _, q, _ = qualify_behind(SYMMETRIC, port_preserving=True)
    # Our fake symmetric NAT preserves only the first mapping's port: still told apart.
    assert q.nat is NatBehaviour.SYMMETRIC
    assert q.port_preserving is True


def test_port_preserving_is_reported() -> None:
    _, q, _ = qualify_behind(PORT_RESTRICTED, port_preserving=True)
    assert q.port_preserving is True
    _, q, _ = qualify_behind(PORT_RESTRICTED, port_preserving=False)
    assert q.port_preserving is False


def test_cone_probe_detects_a_full_cone_nat() -> None:
    """Probe only: an RS with C=1 is answered from the other address; only full cone passes it."""
    _, q, _ = qualify_behind(FULLCONE, probe_cone=True)
    assert q.nat is NatBehaviour.CONE and q.cone_answered
    _, q, _ = qualify_behind(PORT_RESTRICTED, probe_cone=True)
    assert q.nat is NatBehaviour.RESTRICTED and not q.cone_answered
    assert not q.nat_check_pending  # gave up after N attempts


def test_rs_is_nonce_only_from_the_miredo_link_local() -> None:
    q = make_qualifier()
    q.start(0.0)
    out = q.datagrams_to_send()
    assert [d for _, d in out] == [
        endpoint(PRIMARY, TEREDO_PORT),
        endpoint(SECONDARY, TEREDO_PORT),
    ]
    nonces = set()
    for data, _ in out:
        packet = parse_teredo_packet(data)
        assert packet.authentication is not None and packet.origin is None
        assert packet.authentication.client_id == b"" and packet.authentication.auth_value == b""
        assert packet.ipv6[8:24] == CLIENT_LINK_LOCAL.packed
        nonces.add(packet.authentication.nonce)
        assert len(data) == 61  # auth 13 + IPv6 40 + RS 8, as in the 103-byte Windows frame
    assert len(nonces) == 2


def test_secondary_silent_still_qualifies_with_nat_unknown() -> None:
    net, nat = network(PORT_RESTRICTED)
    net.loss = lambda d: d[0] == str(SECONDARY)
    q = make_qualifier()
    attach(net, q, LOCAL, nat)
    q.start(0.0)
    net.run(30.0)
    assert q.state is QualificationState.QUALIFIED
    assert q.nat is NatBehaviour.UNKNOWN
    assert q.counters["rs_sent_secondary"] == 3
    assert q.counters["secondary_silent"] == 1


# -- retries, off-line, backoff, failover ---------------------------------------------------


def test_retries_then_offline_then_backoff() -> None:
    q = make_qualifier(detect_nat=False)
    now = 0.0
    q.start(now)
    sent = [now]
    q.datagrams_to_send()
    offline_at: list[float] = []
    starts: list[float] = []
    while now < 400.0:
        deadline = q.get_timer()
        assert deadline is not None and deadline > now
        now = deadline
        before = q.state
        q.handle_timer(now)
        if q.datagrams_to_send():
            sent.append(now)
            if before is QualificationState.OFFLINE:
                starts.append(now)
        for event in events(q):
            if isinstance(event, Offline):
                offline_at.append(now)
                assert event.old is None and event.retry_at > now
    # T = 4 s, N = 3 (RFC 4380 §5.2.1): 3 RSes, off-line 4 s after the last.
    assert sent[:3] == [0.0, 4.0, 8.0]
    assert offline_at[0] == 12.0
    # Capped exponential backoff: 2, 4, 8, 16, 32, 60, 60 ...; never Miredo's fixed 100 s.
    gaps = [start - off for off, start in zip(offline_at, starts, strict=False)]
    assert gaps[:7] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_late_server_is_found_quickly() -> None:
    net, nat = network(PORT_RESTRICTED)
    net.loss = lambda d: net.now < 20.0  # the server starts at t = 20 s
    q = make_qualifier()
    attach(net, q, LOCAL, nat)
    q.start(0.0)
    assert net.run_until(lambda: q.state is QualificationState.QUALIFIED, timeout=60.0)
    assert net.now < 40.0  # Miredo would wait 3 * 4 s + 100 s


def test_failover_to_the_next_server() -> None:
    primary, secondary = IPv4Address("198.51.100.66"), IPv4Address("198.51.100.67")
    other = ServerPair(primary, secondary)
    net = Clocked()
    ServerNode(TeredoServer(ServerSettings(primary, secondary)), net.net)
    nat = Nat("203.0.113.2", PORT_RESTRICTED)
    q = Qualifier([SERVER, other], counting_random(), local=LOCAL)
    attach(net, q, LOCAL, nat)
    q.start(0.0)
    net.run(30.0)
    evs = events(q)
    offline = [e for e in evs if isinstance(e, Offline)]
    assert offline and offline[0].next_server == other
    qualified = [e for e in evs if isinstance(e, Qualified)]
    assert qualified and qualified[0].server == other
    assert q.address is not None and parse_teredo_address(q.address).server == other.primary


def test_set_servers_requalifies_only_when_the_server_changes() -> None:
    net, q, _ = qualify_behind(PORT_RESTRICTED)
    q.set_servers([SERVER], net.now)
    same_server = q.state
    q.set_servers([ServerPair(IPv4Address("198.51.100.66"))], net.now)
    assert same_server is QualificationState.QUALIFIED
    assert q.state is QualificationState.QUALIFYING
    with pytest.raises(LocalProtocolError):
        q.set_servers([], net.now)


# -- maintenance ----------------------------------------------------------------------------


def test_refresh_interval_is_randomised_between_75_and_100_percent() -> None:
    q = Qualifier([SERVER], os.urandom, local=LOCAL, detect_nat=False)
    now = 0.0
    q.start(now)
    sends: list[float] = []
    while len(sends) < 200:
        for rs, destination in q.datagrams_to_send():
            assert destination == SERVER_EP
            sends.append(now)
            q.receive_datagram(ra_for(rs), SERVER_EP, now)
        deadline = q.get_timer()
        assert deadline is not None
        now = deadline
        q.handle_timer(now)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert all(22.5 <= g <= 30.0 for g in gaps)
    assert max(gaps) - min(gaps) > 3.0  # actually random
    assert q.counters["refreshes"] >= len(sends) - 1


def test_refresh_is_skipped_while_the_server_is_heard() -> None:
    q = make_qualifier(detect_nat=False)
    now = 0.0
    q.start(now)
    (rs, _), *_ = q.datagrams_to_send()
    q.receive_datagram(ra_for(rs), endpoint(PRIMARY, TEREDO_PORT), 0.01)
    events(q)
    deadline = q.get_timer()
    assert deadline is not None and 0.01 + 22.5 <= deadline <= 0.01 + 30.0
    # Contact from the server (e.g. a relayed bubble) every 10 s: no RS ever goes out.
    now = 0.01
    for _ in range(30):
        now += 10.0
        q.note_server_contact(now)
        while (t := q.get_timer()) is not None and t <= now:
            q.handle_timer(t)
        assert q.datagrams_to_send() == []
    assert q.counters["refreshes"] == 0


def test_mapping_change_gives_a_new_address_and_event() -> None:
    net, nat = network(PORT_RESTRICTED)
    q = make_qualifier()
    attach(net, q, LOCAL, nat)
    q.start(0.0)
    net.run(1.0)
    first = q.address
    assert first is not None
    events(q)
    assert nat is not None
    nat.reset()
    net.run(31.0)
    evs = events(q)
    changed = [e for e in evs if isinstance(e, AddressChanged)]
    assert len(changed) == 1
    assert changed[0].old == first and changed[0].address == q.address != first
    assert parse_teredo_address(changed[0].address).mapped == q.mapped
    assert q.state is QualificationState.QUALIFIED
    # The NAT is measured again for the new mapping.
    assert any(isinstance(e, NatBehaviourDetected) for e in evs)


def test_server_lost_during_maintenance_goes_offline_then_requalifies() -> None:
    net, nat = network(PORT_RESTRICTED)
    q = make_qualifier()
    attach(net, q, LOCAL, nat)
    q.start(0.0)
    net.run(1.0)
    address = q.address
    events(q)
    net.loss = lambda d: True
    assert net.run_until(lambda: q.state is QualificationState.OFFLINE, timeout=45.0)
    evs = events(q)
    offline = [e for e in evs if isinstance(e, Offline)]
    assert len(offline) == 1 and offline[0].old == address
    assert "stopped answering" in offline[0].reason
    assert q.state is QualificationState.OFFLINE and q.address is None
    net.loss = None
    assert net.run_until(lambda: q.state is QualificationState.QUALIFIED, timeout=10.0)
    again = [e for e in events(q) if isinstance(e, Qualified)]
    # Same server, same mapping: the same address comes back.
    assert again and again[0].address == address


def test_stop_clears_timers() -> None:
    q = make_qualifier()
    q.start(0.0)
    q.stop()
    assert q.get_timer() is None and q.state is QualificationState.IDLE


# -- RA validation (RFC 4380 §5.2.1, §5.2.2; Miredo's source and MTU checks) -----------------


def ra_for(
    rs: bytes,
    *,
    mapped: Endpoint = MAPPED,
    nonce: bytes | None = None,
    origin: bool = True,
    destination: IPv6Address = CLIENT_LINK_LOCAL,
    prefixes: tuple[PrefixInformation, ...] | None = None,
    mtu: int | None = 1280,
    confirmation: int = 0,
    hop_limit_ok: bool = True,
) -> bytes:
    request = parse_teredo_packet(rs)
    assert request.authentication is not None
    if prefixes is None:
        prefixes = (
            PrefixInformation(IPv6Address(int(IPv6Address("2001::")) | int(PRIMARY) << 64)),
        )
    packet = encode_router_advertisement(
        RouterAdvertisement(server_link_local(PRIMARY), destination, prefixes, mtu=mtu)
    )
    if not hop_limit_ok:
        packet = packet[:7] + b"\x40" + packet[8:]
    return encode_teredo_packet(
        TeredoPacket(
            ipv6=packet,
            authentication=Authentication(
                nonce if nonce is not None else request.authentication.nonce, confirmation
            ),
            origin=OriginIndication(IPv4Address(mapped[0]), mapped[1]) if origin else None,
        )
    )


SERVER_EP = endpoint(PRIMARY, TEREDO_PORT)


def started() -> tuple[Qualifier, bytes]:
    q = make_qualifier(detect_nat=False)
    q.start(0.0)
    (rs, _), *_ = q.datagrams_to_send()
    return q, rs


def test_valid_ra_qualifies_with_its_mtu() -> None:
    q, rs = started()
    q.receive_datagram(ra_for(rs, mtu=1400), SERVER_EP, 0.1)
    assert q.state is QualificationState.QUALIFIED and q.mtu == 1400
    expected = encode_teredo_address(PRIMARY, IPv4Address("203.0.113.2"), 40000, q.flags)
    assert q.address == expected


def test_missing_mtu_option_means_1280() -> None:
    q, rs = started()
    q.receive_datagram(ra_for(rs, mtu=None), SERVER_EP, 0.1)
    assert q.state is QualificationState.QUALIFIED and q.mtu == 1280


other_prefix = PrefixInformation(
    IPv6Address(int(IPv6Address("2001::")) | int(IPv4Address("198.51.100.99")) << 64)
)
good_prefix = PrefixInformation(IPv6Address(int(IPv6Address("2001::")) | int(PRIMARY) << 64))


@pytest.mark.parametrize(
    ("kwargs", "source", "reason"),
    [
        ({"nonce": b"\x99" * 8}, SERVER_EP, "ra_bad_nonce"),
        ({}, endpoint(PRIMARY, 3545), "not_from_server"),
        ({}, ("198.51.100.9", TEREDO_PORT), "not_from_server"),
        ({}, endpoint(SECONDARY, TEREDO_PORT), "ra_wrong_source"),  # our RS went to primary
        ({"origin": False}, SERVER_EP, "ra_no_origin"),
        ({"destination": IPv6Address("fe80::1")}, SERVER_EP, "ra_wrong_destination"),
        ({"prefixes": ()}, SERVER_EP, "ra_prefix_count"),
        ({"prefixes": (good_prefix, good_prefix)}, SERVER_EP, "ra_prefix_count"),
        ({"prefixes": (other_prefix,)}, SERVER_EP, "ra_bad_prefix"),
        (
            {"prefixes": (PrefixInformation(IPv6Address("2002:c633:6402::")),)},
            SERVER_EP,
            "ra_bad_prefix",
        ),
        (
            {"prefixes": (PrefixInformation(good_prefix.prefix, prefix_length=48),)},
            SERVER_EP,
            "ra_bad_prefix",
        ),
        ({"mtu": 1279}, SERVER_EP, "ra_bad_mtu"),
        ({"mtu": 65536}, SERVER_EP, "ra_bad_mtu"),
        ({"confirmation": 1}, SERVER_EP, "ra_confirmation"),
        ({"hop_limit_ok": False}, SERVER_EP, "ra_invalid"),
    ],
)
def test_spoofed_or_invalid_ras_are_dropped(
    kwargs: dict[str, object], source: Endpoint, reason: str
) -> None:
    q, rs = started()
    q.receive_datagram(ra_for(rs, **kwargs), source, 0.1)  # type: ignore[arg-type]
    assert q.state is QualificationState.QUALIFYING
    assert q.address is None
    assert q.drops[reason] == 1, q.drops
    assert events(q) == []


def test_ra_without_authentication_is_dropped() -> None:
    q, rs = started()
    data = ra_for(rs)
    packet = parse_teredo_packet(data)
    stripped = encode_teredo_packet(TeredoPacket(ipv6=packet.ipv6, origin=packet.origin))
    q.receive_datagram(stripped, SERVER_EP, 0.1)
    assert q.drops["ra_no_authentication"] == 1 and q.address is None


def test_replayed_ra_is_dropped() -> None:
    q, rs = started()
    ra = ra_for(rs)
    q.receive_datagram(ra, SERVER_EP, 0.1)
    assert q.state is QualificationState.QUALIFIED
    q.receive_datagram(ra_for(rs, mapped=ep("203.0.113.66:1")), SERVER_EP, 0.2)
    assert q.drops["ra_bad_nonce"] == 1
    assert q.mapped == ("203.0.113.2", 40000)


@pytest.mark.parametrize("cut", range(0, 117, 7))
def test_truncated_ras_never_raise(cut: int) -> None:
    q, rs = started()
    q.receive_datagram(ra_for(rs)[:cut], SERVER_EP, 0.1)
    assert q.address is None


def test_prefix_outside_the_teredo_prefix_is_refused_unless_allowed() -> None:
    legacy = PrefixInformation(IPv6Address(int(IPv6Address("3ffe:831f::")) | int(PRIMARY) << 64))
    q, rs = started()
    q.receive_datagram(ra_for(rs, prefixes=(legacy,)), SERVER_EP, 0.1)
    assert q.drops["ra_bad_prefix"] == 1
    q = make_qualifier(detect_nat=False, prefixes=(IPv6Network("3ffe:831f::/32"),))
    q.start(0.0)
    (rs, _), *_ = q.datagrams_to_send()
    q.receive_datagram(ra_for(rs, prefixes=(legacy,)), SERVER_EP, 0.1)
    assert q.address is not None and str(q.address).startswith("3ffe:831f:")
