"""A fake IPv4/UDP network for core tests: routes datagrams between sans-I/O cores through NATs.

Import it from any test as `from fakenet import ...` (pytest has `pythonpath = ["tests"]`).

Nodes are adapters around cores. A node has one IPv4 endpoint (its *private* address when it sits
behind a `Nat`) and implements `collect(now)` (what the core wants to send, as
``(payload, destination, source_ip_or_None)``) and `deliver(payload, source, destination, now)`.
`EngineNode` wraps anything with the peering engine's contract (`datagrams_to_send()`, and
`receive_datagram(data, (ip, port), now)`), `ServerNode` wraps `teredo.core.server.TeredoServer`.
Other roles add their own small adapter.

`FakeNetwork.run(now)` moves datagrams until nothing is left to move (bounded), applying each
NAT's mapping and filtering rules, an optional `drop` predicate (loss), and recording every hop
in `log` so tests can assert what went where.

Time: `FakeNetwork.advance(now, until)` is the clock-driven loop: it settles the network, then
fires the earliest timer of any node whose core has `get_timer()`/`handle_timer(now)`, and so on
until `until`; tests never sleep.
Also: `Nat(..., port_preserving=True)` keeps the inside port when free (Linux masquerade);
ports are otherwise allocated in sequence (RFC 6081 §3.4's sequential port-symmetric NAT), or at
random with `random_ports=True` (the figure's plain symmetric NAT); `add_port_mapping` is a UPnP
gateway's (RFC 6081 §3.2);
`hairpin=False` refuses datagrams from the LAN to the NAT's own public address, `Nat.reset()`
forgets all mappings (a NAT reboot: new ports); datagrams between two nodes behind the same NAT
go directly (the LAN), and datagrams to 224.0.0.253 reach every other node of the LAN (local
discovery, RFC 4380 §5.2.8), delivered with that destination. A small native IPv6 Internet:
`add_native_host(address)` (answers pings), the server's native packets and a relay's decapsulated
packets are routed to it, and IPv6 for 2001::/32 from a native host goes to the node set with
`set_teredo_relay` (its core's `send_ipv6`). `ClientNode` adapts the client core.

NAT behaviours (RFC 4787 terms):

- ``fullcone``: endpoint-independent mapping and filtering;
- ``restricted``: endpoint-independent mapping, address-dependent filtering;
- ``port-restricted``: endpoint-independent mapping, address-and-port-dependent filtering;
- ``symmetric``: address-and-port-dependent mapping (a new port per remote endpoint) and
  filtering.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Protocol

from teredo.core.address import DISCOVERY_GROUP as ADDRESS_DISCOVERY_GROUP
from teredo.core.address import Endpoint

DISCOVERY_GROUP = str(ADDRESS_DISCOVERY_GROUP)  # RFC 4380 §2.17: local client discovery

FULLCONE = "fullcone"
RESTRICTED = "restricted"
PORT_RESTRICTED = "port-restricted"
SYMMETRIC = "symmetric"
NAT_KINDS = (FULLCONE, RESTRICTED, PORT_RESTRICTED, SYMMETRIC)


class Node(Protocol):
    address: Endpoint

    def collect(self, now: float) -> list[tuple[bytes, Endpoint, str | None]]: ...

    def deliver(
        self, payload: bytes, source: Endpoint, destination: Endpoint, now: float
    ) -> None: ...


class Nat:
    """One NAT box with public IPv4 `public_ip`. Ports are allocated from `first_port` up."""

    def __init__(
        self,
        public_ip: str,
        kind: str,
        first_port: int = 40000,
        *,
        port_preserving: bool = False,
        hairpin: bool = True,
        random_ports: bool = False,
    ) -> None:
        if kind not in NAT_KINDS:
            raise ValueError(f"unknown NAT kind {kind!r}")
        self.public_ip = public_ip
        self.kind = kind
        self.port_preserving = port_preserving
        self.hairpin = hairpin
        self._random = random.Random(public_ip) if random_ports else None
        # UPnP IGD mappings: public port -> private endpoint, open to every remote.
        self._upnp: dict[int, Endpoint] = {}
        # (private, remote) -> UPnP port: remotes that came in through one, answered from it
        # (conntrack reverses the DNAT for the reply direction).
        self._upnp_flows: dict[tuple[Endpoint, Endpoint], int] = {}
        self._upnp_no_replies: set[int] = set()
        self._next_port = first_port
        self._used: set[int] = set()
        # mapping key -> public port; key is the private endpoint (EIM) or (private, remote).
        self._mappings: dict[Any, int] = {}
        self._reverse: dict[int, Endpoint] = {}
        # public port -> remote endpoints / addresses the inside has sent to (filtering).
        self._permits: dict[int, set[Any]] = {}

    def outbound(self, private: Endpoint, remote: Endpoint) -> Endpoint:
        """Translate an outgoing datagram's source; opens the filter for `remote`."""
        upnp_port = self._upnp_flows.get((private, remote))
        if upnp_port is not None:
            return (self.public_ip, upnp_port)
        key: Any = (private, remote) if self.kind == SYMMETRIC else private
        port = self._mappings.get(key)
        if port is None:
            port = self._allocate(private[1])
            self._mappings[key] = port
            self._reverse[port] = private
            self._permits[port] = set()
        self._permits[port].add(remote if self.kind in (PORT_RESTRICTED, SYMMETRIC) else remote[0])
        return (self.public_ip, port)

    def inbound(self, public_port: int, remote: Endpoint) -> Endpoint | None:
        """The private endpoint an incoming datagram reaches, or None when filtered."""
        upnp = self._upnp.get(public_port)
        if upnp is not None:
            if public_port not in self._upnp_no_replies:
                self._upnp_flows[(upnp, remote)] = public_port
            return upnp  # a port mapped by UPnP takes anything (RFC 6081 §3.2)
        private = self._reverse.get(public_port)
        if private is None:
            return None
        if self.kind == FULLCONE:
            return private
        permits = self._permits[public_port]
        key: Any = remote if self.kind in (PORT_RESTRICTED, SYMMETRIC) else remote[0]
        return private if key in permits else None

    def _allocate(self, inside_port: int) -> int:
        if self.port_preserving and inside_port not in self._used:
            port = inside_port
        elif self._random is not None:
            port = self._random.randrange(1024, 65536)
            while port in self._used or port in self._upnp:
                port = self._random.randrange(1024, 65536)
        else:
            while self._next_port in self._used:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        self._used.add(port)
        return port

    def add_port_mapping(
        self, private: Endpoint, external_port: int, *, replies: bool = True
    ) -> Endpoint:
        """A UPnP IGD's AddPortMapping (RFC 6081 §5.3.3): datagrams to `external_port` reach
        `private` from anywhere. As Linux's masquerade with a DNAT rule, it does not make the
        inside's outgoing datagrams leave from that port (a port-preserving NAT happens to),
        except its replies to a remote that came in through it (conntrack reverses the DNAT);
        `replies=False` is RFC 6081 §3.2's model, where nothing leaves from it."""
        self._upnp[external_port] = private
        if not replies:
            self._upnp_no_replies.add(external_port)
        return (self.public_ip, external_port)

    def delete_port_mapping(self, external_port: int) -> None:
        self._upnp.pop(external_port, None)

    def reset(self) -> None:
        """Forget every mapping (a NAT reboot); their ports are never reused."""
        self._mappings.clear()
        self._reverse.clear()
        self._permits.clear()

    def mapping_of(self, private: Endpoint) -> Endpoint | None:
        """The public endpoint of an endpoint-independent mapping, if one exists."""
        port = self._mappings.get(private)
        return None if port is None else (self.public_ip, port)


@dataclass
class Hop:
    """One datagram on the wire (after NAT on the sending side)."""

    payload: bytes
    source: Endpoint  # as seen on the public network
    destination: Endpoint
    delivered: bool
    why: str = ""


@dataclass
class FakeNetwork:
    """Routes datagrams between nodes by IPv4 endpoint, through their NATs."""

    drop: Callable[[Hop], bool] | None = None
    log: list[Hop] = field(default_factory=list)
    _nodes: dict[Endpoint, Node] = field(default_factory=dict)
    _by_ip: dict[str, list[Node]] = field(default_factory=dict)
    _nat_of: dict[int, Nat] = field(default_factory=dict)  # id(node) -> its NAT
    _nats: dict[str, Nat] = field(default_factory=dict)  # public ip -> NAT
    _native_hosts: dict[bytes, NativeHost] = field(default_factory=dict)
    ipv6_unroutable: list[bytes] = field(default_factory=list)

    def attach(self, node: Node, nat: Nat | None = None) -> Node:
        """Put `node` on the network, behind `nat` (its `address` is then private)."""
        self._nodes[node.address] = node
        self._by_ip.setdefault(node.address[0], []).append(node)
        if nat is not None:
            self._nat_of[id(node)] = nat
            self._nats[nat.public_ip] = nat
        if isinstance(node, ClientNode):
            node.network = self
        return node

    def detach(self, node: Node) -> None:
        """Take `node` off the network (a closed socket)."""
        if self._nodes.get(node.address) is node:
            del self._nodes[node.address]
        same_ip = self._by_ip.get(node.address[0], [])
        if node in same_ip:
            same_ip.remove(node)
        self._nat_of.pop(id(node), None)

    def nat_of(self, node: Node) -> Nat | None:
        return self._nat_of.get(id(node))

    def run(self, now: float, max_rounds: int = 100) -> int:
        """Deliver datagrams until none are left; return how many were moved."""
        moved = 0
        for _ in range(max_rounds):
            batch = []
            for node in list(self._nodes.values()):
                for payload, destination, source_ip in node.collect(now):
                    batch.append((node, payload, destination, source_ip))
            if not batch:
                return moved
            for node, payload, destination, source_ip in batch:
                self._route(node, payload, destination, source_ip, now)
                moved += 1
        raise AssertionError("the network did not settle: a datagram loop?")

    def _route(
        self, node: Node, payload: bytes, destination: Endpoint, source_ip: str | None, now: float
    ) -> None:
        source = (source_ip or node.address[0], node.address[1])
        nat = self._nat_of.get(id(node))
        if nat is not None:
            if destination[0] == DISCOVERY_GROUP:
                self._multicast(node, nat, payload, destination, now)
                return
            neighbour = self._nodes.get(destination)
            if neighbour is not None and self._nat_of.get(id(neighbour)) is nat:
                # Same LAN: no translation (local client discovery, RFC 4380 §5.2.8).
                self.log.append(Hop(payload, source, destination, delivered=True, why="lan"))
                neighbour.deliver(payload, source, destination, now)
                return
            source = nat.outbound(node.address, destination)
            if destination[0] == nat.public_ip and not nat.hairpin:
                self.log.append(Hop(payload, source, destination, False, "no hairpinning"))
                return
        hop = Hop(payload, source, destination, delivered=False)
        self.log.append(hop)
        if self.drop is not None and self.drop(hop):
            hop.why = "lost"
            return
        target_nat = self._nats.get(destination[0])
        target = destination
        if target_nat is not None:
            inside = target_nat.inbound(destination[1], source)
            if inside is None:
                hop.why = "filtered by NAT"
                return
            target = inside
        receiver = self._nodes.get(target)
        if receiver is None or (target_nat is None and id(receiver) in self._nat_of):
            # A private endpoint is reachable only from its own LAN (above), not across NATs.
            hop.why = "no such host"
            return
        hop.delivered = True
        receiver.deliver(payload, source, destination, now)

    def _multicast(
        self, node: Node, nat: Nat, payload: bytes, destination: Endpoint, now: float
    ) -> None:
        """224.0.0.253 reaches the other nodes of the sender's LAN (TTL 1, loop off)."""
        for other in list(self._nodes.values()):
            if other is not node and self._nat_of.get(id(other)) is nat:
                self.log.append(Hop(payload, node.address, destination, True, "multicast"))
                other.deliver(payload, node.address, destination, now)

    # -- the clock ---------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest deadline of any node's core (`get_timer()`), if any."""
        deadlines = []
        for node in list(self._nodes.values()):
            get_timer = getattr(getattr(node, "core", None), "get_timer", None)
            if get_timer is not None:
                deadline = get_timer()
                if deadline is not None:
                    deadlines.append(deadline)
        return min(deadlines) if deadlines else None

    def advance(self, now: float, until: float, max_steps: int = 1_000_000) -> float:
        """Settle the network, fire due timers in time order, up to `until`; return `until`.

        Delivery is instantaneous: a datagram arrives at the time it is sent.
        """
        self.run(now)
        for _ in range(max_steps):
            deadline = self.next_timer()
            if deadline is None or deadline > until:
                return until
            now = max(now, deadline)
            for node in list(self._nodes.values()):
                core = getattr(node, "core", None)
                if core is None:
                    continue
                get_timer = getattr(core, "get_timer", None)
                if get_timer is not None:
                    due = get_timer()
                    if due is not None and due <= now:
                        core.handle_timer(now)
            self.run(now)
        raise AssertionError("timers did not settle: a core keeps re-arming a past deadline")

    # -- native IPv6 -------------------------------------------------------------------------

    def add_native_host(self, address: str, answer_pings: bool = True) -> NativeHost:
        host = NativeHost(self, IPv6Address(address), answer_pings)
        self._native_hosts[host.address.packed] = host
        return host

    def set_teredo_relay(self, node: Any) -> None:
        """Native IPv6 for 2001::/32 goes to `node.core.send_ipv6`; what the relay's core
        delivers goes out natively."""
        self._teredo_relay = node

    def route_ipv6(self, packet: bytes, now: float) -> bool:
        """Route a native IPv6 packet: a native host, or 2001::/32 to the Teredo relay."""
        destination = bytes(packet[24:40])
        host = self._native_hosts.get(destination)
        if host is not None:
            host.receive(packet, now)
            return True
        relay = getattr(self, "_teredo_relay", None)
        if relay is not None and destination[:4] == b"\x20\x01\x00\x00":
            relay.core.send_ipv6(packet, now)
            return True
        self.ipv6_unroutable.append(packet)
        return False

    def sent(
        self, source: Endpoint | None = None, destination: Endpoint | None = None
    ) -> list[Hop]:
        """Hops from/to the given public endpoints (None matches any)."""
        return [
            hop
            for hop in self.log
            if (source is None or hop.source == source)
            and (destination is None or hop.destination == destination)
        ]


class EngineNode:
    """A node around a core with `datagrams_to_send()` and `receive_datagram(data, src, now)`,
    both using ``(ip, port)`` tuples (the peering engine, the relay, the client)."""

    def __init__(self, core: Any, address: Endpoint) -> None:
        self.core = core
        self.address = address

    def collect(self, now: float) -> list[tuple[bytes, Endpoint, str | None]]:
        return [(payload, dest, None) for payload, dest in self.core.datagrams_to_send()]

    def deliver(self, payload: bytes, source: Endpoint, destination: Endpoint, now: float) -> None:
        self.core.receive_datagram(payload, source, now)


class ServerNode:
    """A `teredo.core.server.TeredoServer` on both of its addresses at UDP 3544.

    Native IPv6 packets the server emits (echo tests) collect in `native`.
    """

    def __init__(self, server: Any, network: FakeNetwork) -> None:
        self.server = server
        self.network = network
        settings = server.settings
        self.address = (str(settings.primary), 3544)
        self.native: list[bytes] = []
        network.attach(self)
        # The secondary address reaches the same node.
        secondary = _Alias(self, (str(settings.secondary), 3544))
        network.attach(secondary)

    def collect(self, now: float) -> list[tuple[bytes, Endpoint, str | None]]:
        native = self.server.native_packets_to_send()
        self.native += native
        for packet in native:
            self.network.route_ipv6(packet, now)
        return [(d.data, d.destination, str(d.source)) for d in self.server.datagrams_to_send()]

    def deliver(self, payload: bytes, source: Endpoint, destination: Endpoint, now: float) -> None:
        self.server.receive_datagram(payload, source, IPv4Address(destination[0]), now)


class _Alias:
    """A second address of a node: receives for it, sends nothing of its own."""

    def __init__(self, node: Any, address: Endpoint) -> None:
        self.node = node
        self.address = address

    def collect(self, now: float) -> list[tuple[bytes, Endpoint, str | None]]:
        return []

    def deliver(self, payload: bytes, source: Endpoint, destination: Endpoint, now: float) -> None:
        self.node.deliver(payload, source, destination, now)


class ClientNode:
    """A Teredo client core (`teredo.core.client.TeredoClient`) at `address`, with timers.

    Datagrams that arrived on 224.0.0.253 go to `receive_discovery`; the IPv6 packets the core
    hands to its host stack collect in `delivered`. The random ports the core opens (RFC 6081
    §5.4, §5.5) are `RandomPortNode`s on the same host, behind the same NAT; `opened` lists
    every port it ever opened.
    """

    def __init__(self, core: Any, address: Endpoint) -> None:
        self.core = core
        self.address = address
        self.delivered: list[bytes] = []
        self.network: FakeNetwork | None = None
        self.ports: dict[int, RandomPortNode] = {}
        self.opened: list[int] = []

    def collect(self, now: float) -> list[tuple[bytes, Endpoint, str | None]]:
        take = getattr(self.core, "packets_to_deliver", None)
        if take is not None:
            self.delivered += take()
        out: list[tuple[bytes, Endpoint, str | None]] = [
            (payload, (dest[0], dest[1]), None) for payload, dest in self.core.datagrams_to_send()
        ]
        changes = getattr(self.core, "random_port_changes", None)
        if changes is not None and self.network is not None:
            for port, opened in changes():
                if opened:
                    node = RandomPortNode(self, (self.address[0], port))
                    self.network.attach(node, self.network.nat_of(self))
                    self.ports[port] = node
                    self.opened.append(port)
                else:
                    closed = self.ports.pop(port, None)
                    if closed is not None:
                        self.network.detach(closed)
            for payload, destination, port in self.core.random_port_datagrams():
                sender = self.ports.get(port)
                if sender is not None:
                    sender.outbox.append((payload, destination))
        return out

    def deliver(self, payload: bytes, source: Endpoint, destination: Endpoint, now: float) -> None:
        if destination[0] == DISCOVERY_GROUP:
            self.core.receive_discovery(payload, source, now)
        else:
            self.core.receive_datagram(payload, source, now)


class RandomPortNode:
    """A client's random port (RFC 6081 §5.4): a second socket of its host."""

    def __init__(self, client: ClientNode, address: Endpoint) -> None:
        self.client = client
        self.address = address
        self.outbox: list[tuple[bytes, Endpoint]] = []

    def collect(self, now: float) -> list[tuple[bytes, Endpoint, str | None]]:
        out, self.outbox = self.outbox, []
        return [(payload, destination, None) for payload, destination in out]

    def deliver(self, payload: bytes, source: Endpoint, destination: Endpoint, now: float) -> None:
        self.client.core.receive_on_random_port(payload, source, self.address[1], now)


class RelayNode(EngineNode):
    """A relay core: what it delivers goes out on the native IPv6 network."""

    def __init__(self, core: Any, address: Endpoint, network: FakeNetwork) -> None:
        super().__init__(core, address)
        self.network = network
        network.set_teredo_relay(self)

    def collect(self, now: float) -> list[tuple[bytes, Endpoint, str | None]]:
        for packet in self.core.packets_to_deliver():
            self.network.route_ipv6(packet, now)
        return super().collect(now)


class NativeHost:
    """A native IPv6 host: records what reaches it, answers ICMPv6 echo requests."""

    def __init__(self, network: FakeNetwork, address: IPv6Address, answer_pings: bool) -> None:
        self.network = network
        self.address = address
        self.answer_pings = answer_pings
        self.received: list[bytes] = []

    def receive(self, packet: bytes, now: float) -> None:
        from teredo.core.wire import encode_echo, is_echo, parse_echo

        self.received.append(bytes(packet))
        if not (self.answer_pings and is_echo(bytes(packet))):
            return
        echo = parse_echo(bytes(packet))
        if echo.is_request:
            reply = encode_echo(
                self.address, echo.source, echo.identifier, echo.sequence, echo.data, False
            )
            self.network.route_ipv6(reply, now)

    def send(self, packet: bytes, now: float) -> bool:
        return self.network.route_ipv6(packet, now)
