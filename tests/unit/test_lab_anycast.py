"""The lab's relay sites as data: topology, BIRD configurations, birdc output, ping streams
(no root: nothing is built here; tests/e2e/test_anycast_lab.py builds them)."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest

from teredo.core.errors import UsageError
from teredo.lab import bgp
from teredo.lab.pingstream import Outage, Reply, parse_replies
from teredo.lab.roles import config_text, roles_for
from teredo.lab.topology import TEREDO_PREFIX, build_topology

PROTOCOLS = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     20:43:23.480
kernel1    Kernel     master6    up     20:43:23.480
bfd1       BFD        ---        up     20:43:23.480
relay1     BGP        ---        up     20:43:23.535  Established
relay2     BGP        ---        start  20:43:29.101  Active        Socket: Connection refused
"""
ROUTE = """BIRD 2.0.12 ready.
Table master6:
2001::/32            unicast [relay1 20:43:23.582] * (100) [AS64501i]
\tvia 2001:db8:3::2 on relay1
                     unicast [relay2 20:43:23.592] (100) [AS64502i]
\tvia 2001:db8:5::2 on relay2
"""
PINGS = """PING 2001:0:c633:6402::1 (2001:0:c633:6402::1) 56 data bytes
[1000.000] 64 bytes from 2001:0:c633:6402::1: icmp_seq=1 ttl=62 time=0.1 ms
[1000.010] 64 bytes from 2001:0:c633:6402::1: icmp_seq=2 ttl=62 time=0.1 ms
[1000.350] 64 bytes from 2001:0:c633:6402::1: icmp_seq=6 ttl=62 time=0.1 ms
[1000.360] 64 bytes from 2001:0:c633:6402::1: icmp_seq=7 ttl=62 time=0.1 ms

--- 2001:0:c633:6402::1 ping statistics ---
8 packets transmitted, 4 received, 50% packet loss, time 70ms
"""


def test_two_relay_sites_replace_the_relay_and_the_static_route() -> None:
    one = build_topology()
    two = build_topology(relays=2)
    assert "relay" in [n.name for n in one.nodes]
    names = [n.name for n in two.nodes]
    assert "relay" not in names and {"relay1", "relay2"} <= set(names)
    assert [r.destination for r in one.node("inet").routes][:1] == [TEREDO_PREFIX]
    assert TEREDO_PREFIX not in [r.destination for r in two.node("inet").routes]
    assert [i.name for i in two.node("inet").interfaces][:3] == ["srv", "relay1", "relay2"]
    with pytest.raises(ValueError):
        build_topology(relays=3)


def test_each_relay_site_binds_its_own_address() -> None:
    assert list(roles_for(2)) == ["server", "relay1", "relay2", "client1", "client2"]
    assert list(roles_for(1)) == ["server", "relay", "client1", "client2"]
    from teredo.lab.roles import Impl

    assert "BindAddress 198.51.100.82" in config_text("relay", Impl.OURS, "relay2", None)
    assert "BindAddress 198.51.100.18" in config_text("relay", Impl.OURS, "relay1", None)


def test_bird_configurations() -> None:
    router = bgp.bird_config("inet", 2)
    assert "protocol bgp relay1" in router and "protocol bgp relay2" in router
    assert router.count("bfd on;") == 2 and "multiplier 3" in router
    assert "export all" in router  # the best route goes into the router's kernel
    first, second = bgp.relay_config("relay1"), bgp.relay_config("relay2")
    assert "prepend" not in first and second.count("bgp_path.prepend(64502)") == bgp.PREPEND
    for config in (first, second):
        assert "learn;" in config and "bfd on;" in config
        assert f"if net = {TEREDO_PREFIX}" in config


def test_birdc_output_parsing() -> None:
    sessions = bgp.parse_protocols("inet", PROTOCOLS)
    assert [(s.peer, s.state, s.established) for s in sessions] == [
        ("relay1", "up", True),
        ("relay2", "start", False),
    ]
    uplink = bgp.parse_protocols("relay1", "uplink BGP --- up 1:00 Established\n")
    assert uplink[0].peer == "inet"
    assert bgp.parse_best_route(ROUTE) == "relay1"
    assert bgp.parse_best_route("BIRD 2.0.12 ready.\nNetwork not found\n") is None


def test_an_outage_is_read_from_the_replies() -> None:
    replies = parse_replies(PINGS)
    assert [r.seq for r in replies] == [1, 2, 6, 7]
    outage = Outage.of(replies, transmitted=8, stopped=1000.37)
    assert outage.lost == 3 and outage.unanswered == 4
    assert outage.longest_gap == pytest.approx(0.34) and outage.ended
    never = Outage.of(replies[:2], transmitted=50, stopped=1002.0)
    assert never.longest_gap == pytest.approx(1.99) and not never.ended
    assert Outage.of([], 5, 0.0) == Outage(0, 0, 5, 0.0, False)


def test_sequence_numbers_wrap() -> None:
    text = "[1.0] 64 bytes from x: icmp_seq=65535 ttl=1\n[1.1] 64 bytes from x: icmp_seq=0 ttl=1\n"
    assert [r.seq for r in parse_replies(text)] == [65535, 65536]
    assert Outage.of([Reply(65535, 1.0), Reply(65536, 1.1)], 2, 1.1).lost == 0


def test_a_lab_has_one_or_two_relays() -> None:
    from teredo.lab.lab import Lab

    with pytest.raises(UsageError):
        Lab("tanycast", relays=3)
    assert IPv6Address("2001:db8:5::2") in [
        a.ip for i in build_topology(relays=2).node("relay2").interfaces for a in i.addresses
    ]
