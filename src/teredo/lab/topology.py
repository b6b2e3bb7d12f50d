"""The lab's topology as data: nodes, links, addresses, routes and sysctls (no I/O here).

Every lab uses the same addresses: labs are told apart by their namespace names
(`<prefix>-<node>`), and addresses in one network namespace never meet those of another.

::

                               v6  2001:db8:2::2, 198.51.100.34  (native IPv6 host)
                                |
    srv ------------------- inet (router: IPv4 + IPv6 forwarding, 2001::/32 -> relay)
    198.51.100.2 + .3      /    \\                 \\
    2001:db8:1::2       nat1     nat2              relay 198.51.100.18, 2001:db8:3::2
    (Teredo server)  203.0.113.2  203.0.113.18     (Teredo relay, UDP 3545)
                        |           |
                      cli1         cli2        behind each NAT: 10.<n>.0.2/24, or with
                    10.1.0.2     10.2.0.2      NAT kind "none" the public 203.0.113.66 / .82

The public side uses the documentation ranges 198.51.100.0/24 and 203.0.113.0/24 (Miredo
refuses private and 172.16/12 mapped addresses, and the host itself may sit in 192.0.2.0/24, so
that range is avoided: docs/lab-notes.md) and 2001:db8::/32 for native IPv6.

With `generator=True` a ninth node joins, for benchmarks (`teredo.lab.generator` has its
rulesets)::

    gen 198.51.100.50, 2001:db8:4::2 (traffic generator) ---- inet
        the router sends the fake-client range 100.64.0.0/10 to gen, and IPv6 between gen
        and the native host through the relay's node ("the plain path", table PLAIN_TABLE)

gen stands for any number of Teredo clients with public mappings in 100.64.0.0/10 (RFC 6598
shared space: global unicast for RFC 4380 §5.2.4 and for Miredo), and receives, counts and
drops whatever is sent to them. The router cuts super-packets into wire-size packets on its
links to gen and to the native host, where benchmarks count what arrives. Without the option
the lab is exactly the eight nodes above.

With `relays=2` (`teredo lab up --relays 2`) the relay's node becomes two relay sites, each
announcing the Teredo prefix to the router by eBGP (BIRD, `teredo.lab.bgp`); the router's route
to 2001::/32 comes from BGP instead of being static::

    inet (AS 64500) --- relay1 198.51.100.18, 2001:db8:3::2 (AS 64501, preferred)
                    \\-- relay2 198.51.100.82, 2001:db8:5::2 (AS 64502, prepends its AS path)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Final


class NatKind(StrEnum):
    """The NAT behaviours a NAT box can have (RFC 4787 terms in the comments)."""

    # Endpoint-independent mapping and filtering: anyone may send to the mapped port.
    FULLCONE = "fullcone"
    # Endpoint-independent mapping, address-dependent filtering.
    RESTRICTED = "restricted"
    # Endpoint-independent mapping, address-and-port-dependent filtering.
    PORT_RESTRICTED = "port-restricted"
    # Address-and-port-dependent mapping (a new random port per destination): RFC 6081
    # Figure 1's "port-symmetric" NAT.
    SYMMETRIC = "symmetric"
    # Address-and-port-dependent mapping that keeps the client's port when no mapping uses it
    # yet (RFC 6081 §3.3): the first destination of a local port sees that port, later ones a
    # random port.
    SYMMETRIC_PRESERVING = "symmetric-preserving"
    # Address-and-port-dependent mapping, ports handed out in sequence (RFC 6081 §3.4).
    SYMMETRIC_SEQUENTIAL = "symmetric-sequential"
    # Address-dependent mapping: one port per destination address, whatever the remote port.
    ADDRESS_SYMMETRIC = "address-symmetric"
    # Port-restricted and symmetric NATs with a UPnP Internet Gateway Device on the box
    # (miniupnpd, teredo.lab.upnp): RFC 6081 §3.2.
    UPNP_PORT_RESTRICTED = "upnp-port-restricted"
    UPNP_SYMMETRIC = "upnp-symmetric"
    # No NAT at all: the client has a public IPv4 address behind a plain router.
    NONE = "none"

    @property
    def upnp(self) -> bool:
        """Whether the box runs a UPnP IGD (miniupnpd) next to its NAT."""
        return self in (NatKind.UPNP_PORT_RESTRICTED, NatKind.UPNP_SYMMETRIC)


DEFAULT_NAT1: Final = NatKind.PORT_RESTRICTED
DEFAULT_NAT2: Final = NatKind.FULLCONE

# The eight nodes, one network namespace each, in the order they are built.
NODES: Final = ("inet", "srv", "relay", "v6", "nat1", "cli1", "nat2", "cli2")

# Nodes a lab has only when asked for (`Lab(generator=True)`, `teredo lab up --generator`).
GENERATOR_NODE: Final = "gen"
# The relay sites of a lab with two relays (`Lab(relays=2)`): they replace the node "relay".
RELAY_SITES: Final = ("relay1", "relay2")
OPTIONAL_NODES: Final = (GENERATOR_NODE, *RELAY_SITES)
EVERY_NODE: Final = NODES + OPTIONAL_NODES

# Friendlier names accepted wherever a node is named (`teredo lab exec client1 ...`).
NODE_ALIASES: Final = {
    "router": "inet",
    "server": "srv",
    "native": "v6",
    "host": "v6",
    "client1": "cli1",
    "client2": "cli2",
    "generator": "gen",
}

SERVER_IPV4: Final = IPv4Address("198.51.100.2")
SERVER_IPV4_2: Final = IPv4Address("198.51.100.3")  # primary + 1, Miredo's default secondary
SERVER_IPV6: Final = IPv6Address("2001:db8:1::2")
RELAY_IPV4: Final = IPv4Address("198.51.100.18")
RELAY_IPV6: Final = IPv6Address("2001:db8:3::2")
RELAY_PORT: Final = 3545  # fixed so captures tell relay traffic (3545) from server traffic (3544)
NATIVE_IPV6: Final = IPv6Address("2001:db8:2::2")
NATIVE_IPV4: Final = IPv4Address("198.51.100.34")
TEREDO_PREFIX: Final = IPv6Network("2001::/32")
TEREDO_INTERFACE: Final = "teredo"
# Each relay's node: its IPv4 and IPv6 addresses and the router's on the link between them.
RELAY_ADDRESSES: Final = {
    "relay": (RELAY_IPV4, RELAY_IPV6, IPv4Address("198.51.100.17"), IPv6Address("2001:db8:3::1")),
    "relay1": (RELAY_IPV4, RELAY_IPV6, IPv4Address("198.51.100.17"), IPv6Address("2001:db8:3::1")),
    "relay2": (
        IPv4Address("198.51.100.82"),
        IPv6Address("2001:db8:5::2"),
        IPv4Address("198.51.100.81"),
        IPv6Address("2001:db8:5::1"),
    ),
}
RELAY_PREFIXLEN: Final = (28, 64)
# The NAT boxes' public side (a /28 per site), and that of boxes with a UPnP IGD.
NAT_PUBLIC: Final = "203.0.113"
UPNP_PUBLIC: Final = "203.0.114"
GENERATOR_IPV4: Final = IPv4Address("198.51.100.50")
GENERATOR_IPV6: Final = IPv6Address("2001:db8:4::2")
# The generator's fake Teredo clients live here (RFC 6598 shared address space).
FAKE_CLIENTS: Final = IPv4Network("100.64.0.0/10")
# The router's routing table for "the plain path": native IPv6 between gen and the native
# host detours through the relay's node, so that plain forwarding crosses the same hops as
# Teredo traffic does (gen -> inet -> relay -> inet -> v6) and can be compared with it.
PLAIN_TABLE: Final = 64

# Sysctls every lab namespace gets before its interfaces exist: without duplicate address
# detection the first native packet does not wait ~1 s for an address to become usable.
COMMON_SYSCTLS: Final = (
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
)
IPV4_FORWARDING: Final = ("net.ipv4.ip_forward", "1")
IPV6_FORWARDING: Final = ("net.ipv6.conf.all.forwarding", "1")

Address = IPv4Interface | IPv6Interface
Network = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    addresses: tuple[Address, ...]
    # Cut GSO super-packets (a relay's UDP_SEGMENT sends, TUN writes with a virtio-net header)
    # into wire-size packets before they leave, as a link without segmentation offload does,
    # so that a receiver counts packets as a real network would carry them.
    wire_segments: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    destination: Network
    gateway: IPv4Address | IPv6Address
    table: int | None = None  # None: the main table


@dataclass(frozen=True, slots=True)
class Rule:
    """A policy-routing rule: packets arriving on `iif` for `destination` use `table`."""

    iif: str
    destination: Network
    table: int


@dataclass(frozen=True, slots=True)
class Link:
    """A veth pair whose two ends are created directly inside two lab namespaces."""

    node_a: str
    ifname_a: str
    node_b: str
    ifname_b: str


@dataclass(frozen=True, slots=True)
class Site:
    """One NAT box and the client behind it."""

    nat_node: str
    client_node: str
    kind: NatKind
    wan: IPv4Interface  # the NAT's public address
    lan: IPv4Interface  # the NAT's inside address (the client's gateway)
    client: IPv4Interface  # the client's address
    lan_ifname: str = "lan"  # the NAT box's interface toward the client

    @property
    def lan_network(self) -> IPv4Network:
        return self.lan.network


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    kind: str  # router | server | relay | host | nat | client | generator
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...]
    sysctls: tuple[tuple[str, str], ...]
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    sites: tuple[Site, ...]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def site(self, nat_node: str) -> Site:
        """The (first) site of a NAT box."""
        for site in self.sites:
            if site.nat_node == nat_node:
                return site
        raise KeyError(nat_node)

    def box_sites(self, nat_node: str) -> tuple[Site, ...]:
        """Every site behind one NAT box: two with `same_nat`, else one."""
        return tuple(site for site in self.sites if site.nat_node == nat_node)

    @property
    def same_nat(self) -> bool:
        return self.sites[0].nat_node == self.sites[1].nat_node


def _v4(text: str) -> IPv4Interface:
    return IPv4Interface(text)


def _v6(text: str) -> IPv6Interface:
    return IPv6Interface(text)


def _site(index: int, kind: NatKind) -> Site:
    # Site n: the NAT's public /28 is 203.0.113.16(n-1)/28; behind it 10.n.0.0/24, or with no
    # NAT a public /28 at 203.0.113.(64 + 16(n-1)) routed to the NAT box by the router. A box
    # with a UPnP IGD sits in 203.0.114.16(n-1)/28 instead: miniupnpd refuses to forward ports
    # on an address of the documentation ranges (docs/lab-notes.md).
    base = 16 * (index - 1)
    public = UPNP_PUBLIC if kind.upnp else NAT_PUBLIC
    if kind is NatKind.NONE:
        inside = 64 + base
        lan, client = _v4(f"203.0.113.{inside + 1}/28"), _v4(f"203.0.113.{inside + 2}/28")
    else:
        lan, client = _v4(f"10.{index}.0.1/24"), _v4(f"10.{index}.0.2/24")
    return Site(
        nat_node=f"nat{index}",
        client_node=f"cli{index}",
        kind=kind,
        wan=_v4(f"{public}.{base + 2}/28"),
        lan=lan,
        client=client,
    )


def _same_nat_site(first: Site) -> Site:
    """Client 2 behind NAT box 1 (`same_nat`): its own /24 on a second inside interface of
    the box, so that traffic between the two clients crosses the box, as it does through a
    home router's switch; with NAT kind "none" the next public /28, routed to the box too."""
    if first.kind is NatKind.NONE:
        lan, client = _v4("203.0.113.81/28"), _v4("203.0.113.82/28")
    else:
        lan, client = _v4("10.1.1.1/24"), _v4("10.1.1.2/24")
    return Site(first.nat_node, "cli2", first.kind, first.wan, lan, client, "lan2")


def router_side(site: Site) -> IPv4Interface:
    """The router's address on the link to a site's NAT box."""
    return IPv4Interface((IPv4Address(int(site.wan.ip) - 1), site.wan.network.prefixlen))


def relay_nodes(relays: int) -> tuple[str, ...]:
    """The relay nodes of a lab with `relays` relays (1: "relay"; 2: "relay1", "relay2")."""
    return ("relay",) if relays == 1 else RELAY_SITES[:relays]


def build_topology(
    nat1: NatKind = DEFAULT_NAT1,
    nat2: NatKind = DEFAULT_NAT2,
    *,
    generator: bool = False,
    relays: int = 1,
    same_nat: bool = False,
) -> Topology:
    """The whole lab for the given NAT kinds, with the generator node when asked for, and one
    relay (its route static) or two relay sites (their routes from BGP). With `same_nat` both
    clients sit behind NAT box 1 (of kind `nat1`) and there is no nat2."""
    if relays not in (1, len(RELAY_SITES)):
        raise ValueError(f"a lab has 1 or {len(RELAY_SITES)} relays, not {relays}")
    first = _site(1, nat1)
    sites = (first, _same_nat_site(first) if same_nat else _site(2, nat2))
    default4 = IPv4Network("0.0.0.0/0")
    default6 = IPv6Network("::/0")
    v4_len, v6_len = RELAY_PREFIXLEN
    inet_ifaces = [Interface("srv", (_v4("198.51.100.1/28"), _v6("2001:db8:1::1/64")))]
    inet_ifaces += [
        Interface(
            relay,
            (
                _v4(f"{RELAY_ADDRESSES[relay][2]}/{v4_len}"),
                _v6(f"{RELAY_ADDRESSES[relay][3]}/{v6_len}"),
            ),
        )
        for relay in relay_nodes(relays)
    ]
    inet_ifaces.append(
        Interface("v6", (_v4("198.51.100.33/28"), _v6("2001:db8:2::1/64")), wire_segments=generator)
    )
    # One relay: a static route. Relay sites: BGP installs it (teredo.lab.bgp).
    inet_routes = [Route(TEREDO_PREFIX, RELAY_IPV6)] if relays == 1 else []
    nodes: list[Node] = []
    links = [Link("inet", "srv", "srv", "eth0")]
    links += [Link("inet", relay, relay, "eth0") for relay in relay_nodes(relays)]
    links.append(Link("inet", "v6", "v6", "eth0"))
    site_nodes: list[Node] = []
    for site in sites:
        if site.kind is NatKind.NONE:
            inet_routes.append(Route(site.lan_network, site.wan.ip))
        links.append(Link(site.nat_node, site.lan_ifname, site.client_node, "eth0"))
        box = [s for s in sites if s.nat_node == site.nat_node]
        if site is box[0]:  # one box, however many clients behind it
            inet_ifaces.append(Interface(site.nat_node, (router_side(site),)))
            links.append(Link("inet", site.nat_node, site.nat_node, "wan"))
            site_nodes.append(
                Node(
                    site.nat_node,
                    "nat",
                    (
                        Interface("wan", (site.wan,)),
                        *(Interface(s.lan_ifname, (s.lan,)) for s in box),
                    ),
                    (Route(default4, router_side(site).ip),),
                    (*COMMON_SYSCTLS, IPV4_FORWARDING),
                )
            )
        site_nodes.append(
            Node(
                site.client_node,
                "client",
                (Interface("eth0", (site.client,)),),
                (Route(default4, site.lan.ip),),
                COMMON_SYSCTLS,
            )
        )
    inet_rules: list[Rule] = []
    if generator:
        native_net = IPv6Network("2001:db8:2::/64")
        generator_net = IPv6Network("2001:db8:4::/64")
        inet_ifaces.append(
            Interface(
                GENERATOR_NODE,
                (_v4("198.51.100.49/28"), _v6("2001:db8:4::1/64")),
                wire_segments=True,
            )
        )
        links.append(Link("inet", GENERATOR_NODE, GENERATOR_NODE, "eth0"))
        inet_routes.append(Route(FAKE_CLIENTS, GENERATOR_IPV4))
        inet_routes.append(Route(default6, RELAY_IPV6, table=PLAIN_TABLE))
        inet_rules += [
            Rule(GENERATOR_NODE, native_net, PLAIN_TABLE),
            Rule("v6", generator_net, PLAIN_TABLE),
        ]
        nodes.append(
            Node(
                GENERATOR_NODE,
                "generator",
                (Interface("eth0", (_v4(f"{GENERATOR_IPV4}/28"), _v6(f"{GENERATOR_IPV6}/64"))),),
                (
                    Route(default4, IPv4Address("198.51.100.49")),
                    Route(default6, _v6("2001:db8:4::1").ip),
                ),
                # No forwarding: what arrives for the fake clients is counted, then dropped
                # by its ingress ruleset before routing, so no ICMP error goes back.
                COMMON_SYSCTLS,
            )
        )
    nodes.append(
        Node(
            "inet",
            "router",
            tuple(inet_ifaces),
            tuple(inet_routes),
            (*COMMON_SYSCTLS, IPV4_FORWARDING, IPV6_FORWARDING),
            tuple(inet_rules),
        )
    )
    nodes.append(
        Node(
            "srv",
            "server",
            (
                Interface(
                    "eth0",
                    (
                        _v4(f"{SERVER_IPV4}/28"),
                        _v4(f"{SERVER_IPV4_2}/28"),
                        _v6(f"{SERVER_IPV6}/64"),
                    ),
                ),
            ),
            (
                Route(default4, IPv4Address("198.51.100.1")),
                Route(default6, _v6("2001:db8:1::1").ip),
            ),
            COMMON_SYSCTLS,
        )
    )
    for relay in relay_nodes(relays):
        ipv4, ipv6, router4, router6 = RELAY_ADDRESSES[relay]
        nodes.append(
            Node(
                relay,
                "relay",
                (Interface("eth0", (_v4(f"{ipv4}/{v4_len}"), _v6(f"{ipv6}/{v6_len}"))),),
                (Route(default4, router4), Route(default6, router6)),
                # A relay forwards between its Teredo interface and native IPv6: without IPv6
                # forwarding every relayed packet is dropped silently, both ways
                # (docs/lab-notes.md).
                (*COMMON_SYSCTLS, IPV6_FORWARDING),
            )
        )
    nodes.append(
        Node(
            "v6",
            "host",
            (Interface("eth0", (_v4(f"{NATIVE_IPV4}/28"), _v6(f"{NATIVE_IPV6}/64"))),),
            (
                Route(default4, IPv4Address("198.51.100.33")),
                Route(default6, _v6("2001:db8:2::1").ip),
            ),
            COMMON_SYSCTLS,
        )
    )
    nodes.extend(site_nodes)
    order = {name: i for i, name in enumerate(EVERY_NODE)}
    nodes.sort(key=lambda node: order[node.name])
    return Topology(tuple(nodes), tuple(links), sites)


def resolve_node(name: str) -> str:
    """A node name from a node name or alias; KeyError when it names no node."""
    name = NODE_ALIASES.get(name, name)
    if name not in EVERY_NODE:
        raise KeyError(name)
    return name
