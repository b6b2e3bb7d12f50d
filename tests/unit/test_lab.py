"""The lab's pure parts (no root): topology, NAT rulesets, role configs, state, ping parsing."""

from __future__ import annotations

import argparse
import shutil
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest

from teredo.core.config import ClientConfig, RelayConfig, ServerConfig, parse_config
from teredo.core.errors import UsageError
from teredo.lab import arguments, roles, upnp
from teredo.lab.lab import describe_teredo, parse_ping, teredo_json
from teredo.lab.matrix import figure_cell
from teredo.lab.nat import nat_ruleset
from teredo.lab.state import DEFAULT_NAME, DEMO_NAME, LabState, RoleRecord, check_name
from teredo.lab.topology import (
    NODES,
    RELAY_IPV4,
    SERVER_IPV4,
    SERVER_IPV4_2,
    TEREDO_PREFIX,
    NatKind,
    build_topology,
    resolve_node,
)

PAIRS = [(a, b) for a in NatKind for b in NatKind]


@pytest.mark.parametrize("nat1,nat2", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_topology_is_complete_and_consistent(nat1: NatKind, nat2: NatKind) -> None:
    topology = build_topology(nat1, nat2)
    assert tuple(node.name for node in topology.nodes) == NODES
    interfaces = {(n.name, i.name) for n in topology.nodes for i in n.interfaces}
    ends = {(link.node_a, link.ifname_a) for link in topology.links}
    ends |= {(link.node_b, link.ifname_b) for link in topology.links}
    assert interfaces == ends  # every interface is one end of exactly one veth
    for node in topology.nodes:
        assert ("net.ipv6.conf.default.accept_dad", "0") in node.sysctls
        for route in node.routes:  # each gateway is on one of the node's own subnets
            networks = [a.network for i in node.interfaces for a in i.addresses]
            assert any(route.gateway in network for network in networks), (node.name, route)
    inet = topology.node("inet")
    assert any(r.destination == TEREDO_PREFIX for r in inet.routes)
    for site in topology.sites:
        assert site.client.ip in site.lan_network
        routed = any(r.destination == site.lan_network for r in inet.routes)
        if site.kind is NatKind.NONE:
            assert site.client.ip in IPv4Network("203.0.113.0/24") and routed
        else:
            assert site.client.ip.is_private and not routed


def test_server_has_two_consecutive_addresses_and_native_ipv6() -> None:
    server = build_topology().node("srv")
    addresses = [a.ip for i in server.interfaces for a in i.addresses]
    assert SERVER_IPV4 in addresses and SERVER_IPV4_2 in addresses
    assert int(SERVER_IPV4_2) == int(SERVER_IPV4) + 1
    assert any(isinstance(a, IPv6Address) and a.is_global is False for a in addresses)  # 2001:db8


def test_public_side_avoids_ranges_miredo_refuses() -> None:
    for a, b in PAIRS:
        for site in build_topology(a, b).sites:
            # miniupnpd refuses documentation ranges: UPnP boxes get 203.0.114.0/24, which
            # Miredo accepts as well.
            public = "203.0.114.0/24" if site.kind.upnp else "203.0.113.0/24"
            assert site.wan.ip in IPv4Network(public)
    assert SERVER_IPV4 in IPv4Network("198.51.100.0/24")
    assert RELAY_IPV4 in IPv4Network("198.51.100.0/24")


def test_nodes_and_aliases() -> None:
    assert resolve_node("client1") == "cli1"
    assert resolve_node("native") == "v6"
    assert resolve_node("srv") == "srv"
    with pytest.raises(KeyError):
        resolve_node("nope")


def test_argument_copies_match_the_lab() -> None:
    assert tuple(kind.value for kind in NatKind) == arguments.NAT_KINDS
    assert arguments.IMPL_CHOICES == roles.IMPL_CHOICES
    assert (arguments.DEFAULT_NAME, arguments.DEMO_NAME) == (DEFAULT_NAME, DEMO_NAME)


def test_lab_arguments_parse() -> None:
    parser = argparse.ArgumentParser()
    arguments.add_lab_arguments(parser)
    args = parser.parse_args(["up", "--nat1", "symmetric", "--server", "miredo", "--name", "x1"])
    assert (args.nat1, args.nat2, args.server, args.relay) == (
        "symmetric",
        "fullcone",
        "miredo",
        "auto",
    )
    args = parser.parse_args(["exec", "cli1", "ping", "-6", "-c", "1", "2001:db8:2::2"])
    assert (args.name, args.node, args.cmd) == (
        "tl",
        "cli1",
        ["ping", "-6", "-c", "1", "2001:db8:2::2"],
    )
    assert parser.parse_args(["demo"]).name == "tldemo"
    assert parser.parse_args(["status", "--json"]).json


def _ruleset(kind: NatKind) -> str | None:
    site = build_topology(kind, kind).sites[0]
    return nat_ruleset(kind, site.lan_network, site.wan.ip, site.client.ip)


def test_nat_rulesets() -> None:
    assert _ruleset(NatKind.NONE) is None
    rules = {kind: _ruleset(kind) or "" for kind in NatKind if kind is not NatKind.NONE}
    for kind, text in rules.items():
        assert 'oifname "wan" ip saddr 10.1.0.0/24 masquerade' in text, kind
        assert 'iifname "wan" drop' in text, kind  # unsolicited inbound dies without ICMP
    assert "fully-random" in rules[NatKind.SYMMETRIC]
    assert "fully-random" not in rules[NatKind.PORT_RESTRICTED]
    assert "udp dport @mapped dnat to 10.1.0.2" in rules[NatKind.FULLCONE]
    assert "ip saddr . udp dport @peers dnat to 10.1.0.2" in rules[NatKind.RESTRICTED]
    assert "dnat to" not in rules[NatKind.PORT_RESTRICTED] + rules[NatKind.SYMMETRIC]
    for text in rules.values():
        assert text.count("{") == text.count("}")


@pytest.mark.parametrize("role", list(roles.ROLES))
@pytest.mark.parametrize("impl", list(roles.Impl))
def test_role_configs_parse_without_warnings(
    role: str, impl: roles.Impl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda program: f"/usr/sbin/{program}")
    launch = roles.role_launch(role, impl, tmp_path)
    config = parse_config(launch.config_text, source=str(launch.config_path))
    assert config.warnings == ()
    expected = {"server": ServerConfig, "relay": RelayConfig, "client": ClientConfig}[launch.kind]
    assert isinstance(config, expected)
    if impl is roles.Impl.OURS:
        assert config.control_socket == str(tmp_path / f"{launch.node}.sock")
        program = roles.teredo_program()  # the installed script, else python -m teredo
        assert launch.argv[: len(program) + 2] == (*program, launch.kind, "-f")
        assert launch.pid_path is None
    else:
        assert "ControlSocket" not in launch.config_text  # Miredo would call it superfluous
        assert launch.argv[1:3] == ("-f", "-p") and launch.pid_path is not None
    if isinstance(config, ServerConfig):
        assert (config.server_bind_address, config.server_bind_address2) == (
            SERVER_IPV4,
            SERVER_IPV4_2,
        )


def test_auto_follows_the_implemented_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(roles.OURS_IMPLEMENTED, "relay", True)
    monkeypatch.setitem(roles.OURS_IMPLEMENTED, "client", False)
    assert roles.resolve_impl("relay", "auto") is roles.Impl.OURS
    assert roles.resolve_impl("client1", "auto") is roles.Impl.MIREDO
    assert roles.resolve_impl("client1", "ours") is roles.Impl.OURS
    assert roles.resolve_impl("relay", "miredo") is roles.Impl.MIREDO


def test_names() -> None:
    assert check_name("tl") == "tl"
    assert check_name("e1a2b3c4d5") == "e1a2b3c4d5"
    for bad in ("", "1ab", "-x", "Ab", "a_b", "abcdefghijk", "a/b"):
        with pytest.raises(UsageError):
            check_name(bad)


def test_state_round_trips_through_json() -> None:
    state = LabState("tl", "symmetric", "none", {"cli1": "tl-cli1"}, phase="up", owner_pid=7)
    state.roles["client1"] = RoleRecord(
        "client1", "cli1", "client", "miredo", ["miredo", "-f"], "/c", "/l", pid=5, starttime=9
    )
    assert LabState.from_json(state.to_json()) == state


PING_OK = """PING 2001:db8:2::2(2001:db8:2::2) 56 data bytes
64 bytes from 2001:db8:2::2: icmp_seq=2 ttl=62 time=0.310 ms

--- 2001:db8:2::2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 905ms
rtt min/avg/max/mdev = 0.252/0.312/0.374/0.049 ms
"""
PING_LOST = """--- 2001:0:c633:6402::1 ping statistics ---
4 packets transmitted, 0 received, 100% packet loss, time 923ms
"""


def test_parse_ping() -> None:
    result = parse_ping("cli1", "2001:db8:2::2", PING_OK)
    assert (result.transmitted, result.received, result.rtt_avg_ms, result.ok) == (
        4,
        3,
        0.312,
        True,
    )
    lost = parse_ping("cli1", "2001:0:c633:6402::1", PING_LOST)
    assert (lost.received, lost.rtt_avg_ms, lost.ok) == (0, None, False)
    assert not parse_ping("cli1", "x", "ping: connect: Network is unreachable").ok


def test_teredo_address_decoding() -> None:
    # The often quoted example address: server 65.54.227.120, mapped 192.0.2.45:40000, cone.
    address = IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2")
    assert describe_teredo(address) == "server 65.54.227.120, mapped 192.0.2.45:40000, cone"
    decoded = teredo_json(address)
    assert decoded["mapped_port"] == 40000 and decoded["cone"] is True
    assert IPv4Address(decoded["server"]) == IPv4Address("65.54.227.120")
    assert describe_teredo(IPv6Address("2001:db8::1")) == "not a Teredo address"


def test_rfc6081_nat_rulesets() -> None:
    rules = {kind: _ruleset(kind) or "" for kind in NatKind if kind is not NatKind.NONE}
    preserving = rules[NatKind.SYMMETRIC_PRESERVING]
    assert "udp sport @used masquerade fully-random" in preserving
    assert "update @used { udp sport }" in preserving
    assert "numgen inc mod 1024 map { 0 : 20000, 1 : 20001," in rules[NatKind.SYMMETRIC_SEQUENTIAL]
    hashed = rules[NatKind.ADDRESS_SYMMETRIC]
    assert "jhash ip daddr . udp sport mod 8192 map { 0 : 22528," in hashed
    assert "fully-random" in rules[NatKind.UPNP_SYMMETRIC]
    for kind, text in rules.items():  # miniupnpd's chains on the UPnP boxes only
        assert ("chain prerouting_miniupnpd" in text) is kind.upnp, kind
        assert ("dnat to" in text) is (kind in (NatKind.FULLCONE, NatKind.RESTRICTED)), kind


def test_miniupnpd_config_maps_only_lan_hosts() -> None:
    text = upnp.miniupnpd_config("tl", "nat1", [("lan", IPv4Network("10.1.0.0/24"))], "/x/leases")
    assert "ext_ifname=wan\nlistening_ip=lan" in text
    assert "secure_mode=yes" in text and "enable_natpmp=no" in text
    assert "allow 1024-65535 10.1.0.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535" in text
    assert f"upnp_nat_chain={upnp.PREROUTING_CHAIN}" in text
    assert text == upnp.miniupnpd_config(
        "tl", "nat1", [("lan", IPv4Network("10.1.0.0/24"))], "/x/leases"
    )


def test_figure_1_is_read_as_initiator_then_responder() -> None:
    assert figure_cell(NatKind.PORT_RESTRICTED, NatKind.SYMMETRIC_PRESERVING) == "SNS+PP"
    assert figure_cell(NatKind.SYMMETRIC_SEQUENTIAL, NatKind.PORT_RESTRICTED) == "SNS+SS"
    assert figure_cell(NatKind.UPNP_SYMMETRIC, NatKind.PORT_RESTRICTED) == "No"
    assert figure_cell(NatKind.PORT_RESTRICTED, NatKind.UPNP_SYMMETRIC) == "No"
    assert figure_cell(NatKind.UPNP_SYMMETRIC, NatKind.UPNP_PORT_RESTRICTED) == "SNS+UPnP"
    assert figure_cell(NatKind.NONE, NatKind.ADDRESS_SYMMETRIC) == "SNS"  # none counts as cone
    assert figure_cell(NatKind.RESTRICTED, NatKind.ADDRESS_SYMMETRIC) == "No"
