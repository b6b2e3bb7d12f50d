"""The lab's generator node (no root): topology, rulesets, counters parsing, extra config."""

from __future__ import annotations

import argparse
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from teredo.core.config import RelayConfig, parse_config
from teredo.core.errors import UsageError
from teredo.lab import arguments, roles
from teredo.lab.generator import (
    SINK_PORT,
    TEREDO_DATA_UDP_LENGTH,
    generator_ruleset,
    parse_counters,
    sink_ruleset,
)
from teredo.lab.lab import Lab
from teredo.lab.netns import parse_net_dev
from teredo.lab.topology import (
    FAKE_CLIENTS,
    GENERATOR_IPV4,
    NODES,
    PLAIN_TABLE,
    RELAY_IPV6,
    build_topology,
    resolve_node,
)


def test_without_the_option_the_lab_is_unchanged() -> None:
    topology = build_topology()
    assert tuple(node.name for node in topology.nodes) == NODES
    assert all(not node.rules for node in topology.nodes)
    assert all(route.table is None for node in topology.nodes for route in node.routes)
    assert not any(i.wire_segments for node in topology.nodes for i in node.interfaces)
    assert Lab("x1").namespaces == [f"x1-{node}" for node in NODES]


def test_generator_node_owns_the_fake_clients_and_the_plain_path() -> None:
    topology = build_topology(generator=True)
    assert tuple(node.name for node in topology.nodes) == (*NODES, "gen")
    gen = topology.node("gen")
    assert gen.kind == "generator"
    assert ("net.ipv4.ip_forward", "1") not in gen.sysctls  # it forwards nothing
    addresses = [a.ip for i in gen.interfaces for a in i.addresses]
    assert GENERATOR_IPV4 in addresses and IPv6Address("2001:db8:4::2") in addresses
    inet = topology.node("inet")
    assert any(r.destination == FAKE_CLIENTS and r.gateway == GENERATOR_IPV4 for r in inet.routes)
    plain = [r for r in inet.routes if r.table == PLAIN_TABLE]
    assert [(str(r.destination), r.gateway) for r in plain] == [("::/0", RELAY_IPV6)]
    rules = {(rule.iif, str(rule.destination), rule.table) for rule in inet.rules}
    assert rules == {
        ("gen", "2001:db8:2::/64", PLAIN_TABLE),  # gen -> native host, through the relay node
        ("v6", "2001:db8:4::/64", PLAIN_TABLE),  # and back
    }
    # Where the benchmarks count, packets arrive as a wire would carry them, not as super-packets.
    segmented = {(n.name, i.name) for n in topology.nodes for i in n.interfaces if i.wire_segments}
    assert segmented == {("inet", "v6"), ("inet", "gen")}
    # Every interface is one end of one veth, in the lab with the generator too.
    interfaces = {(n.name, i.name) for n in topology.nodes for i in n.interfaces}
    ends = {(link.node_a, link.ifname_a) for link in topology.links}
    ends |= {(link.node_b, link.ifname_b) for link in topology.links}
    assert interfaces == ends
    # 100.64.0.0/10 counts as global unicast for RFC 4380 §5.2.4 (and for Miredo).
    from teredo.core.address import is_global_ipv4

    assert is_global_ipv4(IPv4Address("100.64.0.1"))


def test_generator_lab_names_its_node() -> None:
    assert resolve_node("generator") == "gen"
    assert Lab("x1", generator=True).namespace("gen") == "x1-gen"
    assert "x1-gen" in Lab("x1", generator=True).namespaces
    with pytest.raises(UsageError, match="no node 'gen'"):
        Lab("x1").namespace("gen")
    assert "x1-gen" in Lab("x1").possible_namespaces  # a teardown still looks for it


def test_lab_up_takes_the_generator_option() -> None:
    parser = argparse.ArgumentParser()
    arguments.add_lab_arguments(parser)
    assert parser.parse_args(["up", "--generator"]).generator
    assert not parser.parse_args(["up"]).generator


def test_rulesets_count_and_drop_what_the_benchmarks_send() -> None:
    gen = generator_ruleset()
    assert 'hook ingress device "eth0"' in gen
    assert f"udp length {TEREDO_DATA_UDP_LENGTH} " in gen and TEREDO_DATA_UDP_LENGTH == 120
    assert "meta protocol ip counter name ipv4 drop" in gen  # no routing, hence no ICMP
    assert f"meta protocol ip6 udp dport {SINK_PORT} counter name plain drop" in gen
    assert "arp" not in gen  # ARP and neighbour discovery pass
    sink = sink_ruleset()
    assert f"udp dport {SINK_PORT} counter name sink drop" in sink
    for text in (gen, sink):
        assert text.count("{") == text.count("}")


# /proc/net/dev as the kernel prints it (lines joined to fit here).
NET_DEV = "\n".join(
    [
        "Inter-|   Receive                                                |  Transmit",
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
        "drop fifo colls carrier compressed",
        "    lo:       0       0    0    0    0     0          0         0        0       0    0 "
        "   0    0     0       0          0",
        "  eth0: 2786814   21007    0    3    0     0          0         0  2660814   20007    0 "
        "   1    0     0       0          0",
    ]
)


def test_parse_net_dev() -> None:
    counters = parse_net_dev(NET_DEV)
    assert set(counters) == {"lo", "eth0"}
    eth0 = counters["eth0"]
    assert (eth0["rx_bytes"], eth0["rx_packets"], eth0["rx_dropped"]) == (2786814, 21007, 3)
    assert (eth0["tx_packets"], eth0["tx_dropped"]) == (20007, 1)


def test_parse_counters() -> None:
    text = (
        '{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "netdev", '
        '"name": "teredo_data", "table": "teredo_lab_gen", "handle": 2, "packets": 5000, '
        '"bytes": 700000}}, {"counter": {"name": "sink", "packets": 7, "bytes": 1}}]}'
    )
    assert parse_counters(text) == {"teredo_data": 5000, "sink": 7}
    assert parse_counters("") == {}


def test_extra_configuration_goes_to_our_daemons_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("teredo.lab.roles.shutil.which", lambda program: f"/usr/sbin/{program}")
    ours = roles.role_launch("relay", roles.Impl.OURS, tmp_path, ["MaxPeers 1100000"])
    config = parse_config(ours.config_text, source="relay.conf")
    assert isinstance(config, RelayConfig) and config.max_peers == 1100000
    miredo = roles.role_launch("relay", roles.Impl.MIREDO, tmp_path, ["MaxPeers 1100000"])
    assert "MaxPeers" not in miredo.config_text
    with pytest.raises(UsageError, match="no role"):
        Lab("x1", ours_config={"relai": ["MaxPeers 1"]})
