"""The Teredo client: qualification, maintenance and the client's rules toward peers.

Theory of operation
-------------------
`TeredoClient` is the peering engine it shares with the relay
(`teredo.core.peering.PeeringEngine`: peer list, bubbles, queues, trust, RFC 6081 nonces, fast
paths) plus what only a client does. It composes a `teredo.core.qualification.Qualifier` for
everything about its server and adds the client rules:

States (the qualifier's, RFC 4380 §5.2.1): IDLE -> QUALIFYING -> QUALIFIED <-> OFFLINE; see
`teredo.core.qualification` for the RS/RA exchange, the NAT check, the refresh timer, the backoff
and failover. While not qualified the client has no address: it drops everything but RAs
(RFC 4380 §5.2.1) and every packet from the stack.

Reception (RFC 4380 §5.2.3), before the engine's generic rules:

- From the server (either address, port 3544): any valid packet counts as an interaction with
  the server and postpones the refresh (§5.2.3). RAs go to the qualifier. A packet carrying an
  origin indication is an indirect bubble (or a relayed packet): the client answers with a
  *direct* bubble to the origin, from its own address to the packet's source. RFC 4380 §5.2.3
  literally asks for a connectivity test there; the direct bubble is what Miredo and every RFC
  6081 example do, and RFC 5991 §3.2 takes for granted that peers reply to indirect bubbles. The
  bubble carries the RFC 6081 nonce of the indirect bubble if it had one (RFC 6081 §5.2.4.2,
  §5.2.4.3). That answer is what makes the sender's bubbles (client case 5, relay case 3)
  succeed. It is spaced 2 s per peer (§5.2.6).
- Generic rules (engine): trusted mapping; Teredo source whose embedded mapping is the outer
  source (rx case 3, with the global-unicast check of CVE-2006-6264); a bubble carrying our
  RFC 6081 nonce (symmetric NAT peers).
- Then the client's unverified cases (`_on_unverified`): an ICMPv6 echo reply whose data is the
  nonce of our direct IPv6 connectivity test trusts that relay for that native peer (rx case 2;
  the *only* way a relay's mapping is trusted, RFC 4380 §5.2.9, §7.2.2) and releases the queue;
  a packet from a local peer's local endpoint (rx case 5); a packet from a native source through
  an unknown relay (rx case 6): held (bounded) while an echo test via the server checks that
  relay (Miredo does the same; CVE-2006-6266 bounded by the ping budget); link-local sources are
  refused, as Miredo does, so that no forged RA or neighbor discovery message reaches the stack.

Transmission (RFC 4380 §5.2.4): trusted peers by the engine's fast path; Teredo destinations by
the engine (queue + direct and indirect bubbles, retried every 2 s, 4 at most); native
destinations by the direct IPv6 connectivity test (`_on_native_destination`, §5.2.9): a random
64-bit nonce in an ICMPv6 echo request sent through our own server, repeated every 2 s, 4 at most
(§5.2.4 case 2); the relay whose echo reply carries the nonce becomes the peer's mapping.
Local peers (case 3) also get a unicast bubble to their local endpoint and a discovery bubble.

RFC 6081 extensions (switches in `client_settings.extensions`, `teredo.core.extensions`):

- Hairpinning (§5.6): our indirect bubbles to a peer not yet reached carry an Alternate Address
  trailer (our local endpoint, and the UPnP mapping unless it is the one in our address); a
  peer's trailer is answered with direct bubbles to each endpoint, with its nonce, and packets
  from those endpoints are accepted as from the mapping in its address (both named through its
  server). So two clients behind one NAT meet on their LAN whether or not the NAT hairpins.
- Server load reduction (§5.7): a packet for a trusted peer no longer valid (silent 30 s) sends
  a direct bubble with a TeredoDiscoverySolicitation to its mapping, every 2 s, 3 at most; the
  advertisement that answers releases the queue; then, only, the usual direct and indirect
  bubbles (through its server). A solicitation from a peer is answered with an advertisement.
- UPnP (§5.3): the daemon maps our port on the NAT's gateway and hands the mapping over
  (`set_upnp_mapping`); it is zeroed when it is the qualified mapping (single NAT, §5.3.3).
  Then, behind a symmetric NAT, a peer proven at another mapping than its address names (a
  symmetric peer) is sent to at the mapping in its address (`_choose_target`, used by the
  queue's flush, the fast path and `send_ipv6`), received from at the learned one, and kept out
  of the kernel's peer map (`PeerTable.unmirrored`).
- Port-preserving (§5.4) and sequential (§5.5) symmetric NATs: behind a symmetric NAT, a peer
  not reached gets a random port of ours (`send_indirect_bubble`; behind a NAT that did not
  keep our port, after the echo test that predicts its mapping), announced in a Random Port
  trailer; the peer's announced port gets direct bubbles. A peer proven on the random port is
  sent to from it (`_routes`, the fast path and the kernel's peer map left out); one proven on
  the service port closes it. The daemon opens and closes the sockets
  (`random_port_changes`, `random_port_datagrams`, `receive_on_random_port`); at most
  MAX_RANDOM_PORTS at once, one not answered on within 30 s is closed.
- Status (`status`): the client state as netsh names it, the NAT's special behaviours, the local
  mapping, and how many peers each extension served (`_peer_extensions`, bounded by the table).

Local client discovery (RFC 4380 §5.2.8, optional, `local_discovery`): discovery bubbles
(our address -> ff02::1, hop limit 1) to 224.0.0.253:3544 every 200-300 s and right after
qualifying; received ones (`receive_discovery`, from the client daemon's multicast socket) are
accepted only from a local subnet with a well-formed Teredo source whose mapped IPv4 is ours
(same NAT, Miredo's DiscoveryNetmask /32), recorded as *local*, not trusted, and answered with a
unicast bubble (§5.2.8). Peers behind the same NAT otherwise meet through the NAT if it
hairpins: our bubbles go to their public mapping like any other.

Timers: the engine's (bubble and echo retries, peer sweep), the qualifier's (RS retries, refresh,
backoff) and the discovery period; `get_timer()` is the earliest.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Container, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from teredo.core.address import (
    CLIENT_LINK_LOCAL,
    DISCOVERY_GROUP,
    TEREDO_PORT,
    Endpoint,
    endpoint,
    is_global_ipv4,
    parse_teredo_address,
    show_endpoint,
    teredo_mapping,
    teredo_server_ipv4,
)
from teredo.core.errors import LocalProtocolError, ParseError
from teredo.core.extensions import (
    PEER_EXTENSION_NAMES,
    SOLICITATION_SPACING,
    SOLICITATIONS,
    Extensions,
    PeerExtension,
    alternate_address_trailer,
    discovery_trailer,
)
from teredo.core.logger import get_logger
from teredo.core.peering import PeeringEngine, PeeringSettings, retry_time
from teredo.core.peers import BUBBLE_SPACING, BUBBLE_WINDOW, PING_BUDGET, PING_SPACING, Peer
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
from teredo.core.random_port import (
    DATA_RECENT,
    ECHO_TEST_NONCE_LENGTH,
    ECHO_TESTS,
    MAX_RANDOM_PORTS,
    MAX_REFRESH_BUBBLES,
    PEER_REFRESH_INTERVAL,
    PLAIN_PEER_WAIT,
    RandomPortPeer,
    choose_port,
    echo_solicitation,
    predicted_port,
    random_port_trailer,
)
from teredo.core.record import record  # a frozen dataclass without dataclasses' start-up cost
from teredo.core.secure_qualification import ClientKey
from teredo.core.trailers import (
    DiscoveryType,
    NeighborDiscoveryTrailer,
    RandomPortTrailer,
    TrailerType,
    alternate_addresses,
    decode_trailer,
    nonce_trailer_bytes,
    trailer_nonce,
)
from teredo.core.wire import (
    ALL_NODES,
    IPV6_HEADER_LENGTH,
    ICMPv6Type,
    NextHeader,
    TeredoPacket,
    UnreachableCode,
    encode_bubble,
    encode_echo,
    is_bubble,
    parse_teredo_packet,
)

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Any, Final

    from teredo.core.status import (  # TypedDicts: types only (~1 ms to build)
        ClientEngineStatus,
        ClientExtensionStatus,
    )

log = get_logger(__name__)  # imports logging when it logs (teredo.core.logger)

CLIENT_IDLE_TIMEOUT: Final = 600.0  # Miredo's value: a client's unused entries live 600 s
ECHO_NONCE_LENGTH: Final = 8  # RFC 4380 §5.2.9: at least 64 bits
DISCOVERY_PERIOD: Final = (200.0, 300.0)  # RFC 4380 §5.2.8: uniform 200-300 s
DISCOVERY_ANNOUNCE_SPACING: Final = 5.0  # our own discovery bubble at most this often on demand
MAX_INBOUND_HELD_BYTES: Final = 256 * 1024  # rx case 6: packets held during echo tests, total
MAX_REPLY_ENTRIES: Final = 4096  # peers whose last bubble answer time we remember
_RANDOM_FRACTION_BYTES: Final = 4


@record
class ClientSettings:
    """What the client core needs from the configuration (see `client_settings`)."""

    servers: tuple[ServerPair, ...]
    tunnel: PeeringSettings = PeeringSettings(idle_timeout=CLIENT_IDLE_TIMEOUT)  # frozen: shared
    refresh_interval: float = 30.0
    local_discovery: bool = False
    key: ClientKey | None = None  # secure qualification (RFC 4380 §5.2.2)
    extensions: Extensions = Extensions()  # RFC 6081 §3


ClientEvent = QualifierEvent


class TeredoClient(PeeringEngine):
    """A Teredo client (sans-I/O). See the module docstring.

    Driving it: the engine's contract (`receive_datagram`, `send_ipv6`, `handle_timer`,
    `get_timer`, `datagrams_to_send`, `packets_to_deliver`, fast paths) plus `start(now)`,
    `next_event()`, `receive_discovery(data, source, now)` for datagrams that arrived on
    224.0.0.253, and `status()`.

    `local` is the service socket's endpoint as the host sees it (its address toward the server
    when bound to 0.0.0.0): it tells "no NAT" and port preservation apart. `local_networks` are
    the IPv4 subnets of the host's interfaces, for the local discovery filter (RFC 4380 §5.2.8).
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        random_bytes: Callable[[int], bytes],
        secret: bytes,
        now: float,
        local: Endpoint | None = None,
        local_networks: Sequence[IPv4Network] = (),
    ) -> None:
        super().__init__(settings.tunnel, random_bytes=random_bytes, secret=secret, now=now)
        self.client_settings = settings
        self.local = local
        self.local_networks = tuple(local_networks)
        self.qualifier = Qualifier(
            settings.servers,
            random_bytes,
            refresh_interval=settings.refresh_interval,
            local=local,
            prefixes=(settings.tunnel.prefix,),
            key=settings.key,
        )
        self.address: IPv6Address | None = None
        self._address_bytes: bytes | None = None
        self._server_ips: frozenset[str] = frozenset()
        self._server: Endpoint = ("0.0.0.0", TEREDO_PORT)
        self._server_ipv4 = 0
        self.required_source = b""  # nothing leaves before an address is configured
        self._events: deque[ClientEvent] = deque()
        self._last_reply: dict[bytes, float] = {}
        # rx case 6: packets from native sources held during their echo test, oldest first.
        self._held: OrderedDict[bytes, list[tuple[bytes, Endpoint]]] = OrderedDict()
        self._held_bytes = 0
        self._discovery_at: float | None = None
        self._last_announce = now - DISCOVERY_ANNOUNCE_SPACING
        # RFC 6081 extensions. Each dict is keyed by peer address and emptied with the entry
        # (`_on_removed`), so the peer table bounds them.
        self.upnp_mapping: Endpoint | None = None  # RFC 6081 §5.3.3, from the daemon's IGD
        self._alternates: dict[bytes, tuple[Endpoint, ...]] = {}  # §5.6: announced by peers
        self._soliciting: dict[bytes, int] = {}  # §5.7: solicitations sent so far
        self._peer_extensions: dict[bytes, PeerExtension] = {}
        # §5.3.4.2-3: symmetric peers sent to at the mapping in their address, received from
        # at their learned one; never in the kernel's peer map, which has one mapping a peer.
        self._embedded_targets: dict[bytes, Endpoint] = {}
        # §5.4/§5.5: the random port state of peers (`teredo.core.random_port`), the ports open
        # (port -> peer, at most MAX_RANDOM_PORTS), the peers reached through one and the
        # mappings sent to from one (mapping -> port). Neither kind of peer is in the kernel's
        # peer map: it sends from the service port only.
        self._random: dict[bytes, RandomPortPeer] = {}
        self._open_ports: dict[int, bytes] = {}
        self._via_random: dict[bytes, Endpoint] = {}
        self._routes: dict[Endpoint, int] = {}
        self._port_changes: list[tuple[int, bool]] = []
        self._random_datagrams: list[tuple[bytes, Endpoint, int]] = []
        self._arrived_on = 0  # the random port the datagram being handled came to (0: ours)
        self._bubbling = b""  # the peer whose indirect bubble is being built
        self._peer_refresh_at = now + PEER_REFRESH_INTERVAL  # §5.4.3
        self.peers.unmirrored = _Either(self._embedded_targets, self._via_random)
        self._note_server()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def state(self) -> QualificationState:
        return self.qualifier.state

    def start(self, now: float) -> None:
        """Start qualifying (the first RS goes out at once)."""
        self.qualifier.start(now)
        self._pump(now)

    def stop(self) -> None:
        """Shutting down: forget timers; the daemon withdraws the address."""
        self.qualifier.stop()
        self._set_address(None)
        self._discovery_at = None

    def reconfigure_client(self, settings: ClientSettings, now: float) -> None:
        """Apply a reloaded configuration (SIGHUP)."""
        self.client_settings = settings
        self.reconfigure(settings.tunnel)
        self.qualifier.refresh_interval = settings.refresh_interval
        self.qualifier.key = settings.key
        self.qualifier.set_servers(settings.servers, now)
        if not settings.local_discovery:
            self._discovery_at = None
        elif self.address is not None and self._discovery_at is None:
            self._schedule_discovery(now)
        self._pump(now)

    def next_event(self) -> ClientEvent | None:
        """Qualified, AddressChanged, NatBehaviourDetected, Offline (in order)."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        deadlines = [
            super().get_timer(),
            self.qualifier.get_timer(),
            self._discovery_at,
            self._random_timer(),
        ]
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        deadline = self.qualifier.get_timer()
        if deadline is not None and now >= deadline:
            self.qualifier.handle_timer(now)
        if self._discovery_at is not None and now >= self._discovery_at:
            self._send_discovery(now)
            self._schedule_discovery(now)
        self._random_timers(now)
        self._pump(now)

    def status(self, now: float | None = None) -> ClientEngineStatus:
        """The status document's client part (engine counters and drops included); `now` tells
        a dormant client (no peer heard from for 30 s) from a busy one."""
        engine = self.engine_status()
        q = self.qualifier
        drops = engine["drops"]
        for reason, count in q.drops.items():
            drops[reason] = drops.get(reason, 0) + count
        engine["counters"].update(q.counters)
        return {
            **engine,
            "role": "client",
            "state": q.state.value,
            "address": str(self.address) if self.address is not None else None,
            "server": str(q.server.primary),
            "secondary_server": str(q.server.secondary) if q.server.secondary else None,
            "mapped": show_endpoint(q.mapped) if q.mapped is not None and self.address else None,
            "nat": q.nat.value,
            "port_preserving": q.port_preserving,
            "mtu": q.mtu,
            "rtt_ms": round(q.rtt * 1000, 3) if q.rtt is not None else None,
            "local_discovery": self.client_settings.local_discovery,
            **self._extension_status(now),
        }

    def peer_extensions(self, address: bytes) -> list[str]:
        """The RFC 6081 extensions that served the peer `address` (status peer list)."""
        flags = self._peer_extensions.get(address, PeerExtension(0))
        return [name for flag, name in PEER_EXTENSION_NAMES.items() if flags & flag]

    def _extension_status(self, now: float | None) -> ClientExtensionStatus:
        """RFC 6081 in the status document, as `netsh interface teredo show state` shows it:
        the client's state, the NAT's special behaviours, the local mapping, and how many peers
        each extension serves (counts only)."""
        q = self.qualifier
        state = q.state
        if state is QualificationState.QUALIFYING:
            client_state = "probe"
        elif state is QualificationState.QUALIFIED:
            # Qualified and in use, or qualified with no peer heard from for 30 s.
            active = now is None or any(peer.is_valid(now) for _, peer in self.peers.items())
            client_state = "qualified" if active else "dormant"
        else:
            client_state = "offline"
        extensions = self.client_settings.extensions
        symmetric = q.nat is NatBehaviour.SYMMETRIC
        behaviours = []
        if self.upnp_mapping is not None:
            behaviours.append("upnp")
        if symmetric and q.port_preserving:
            behaviours.append("port-preserving")
        elif symmetric and q.port_preserving is False:
            behaviours.append("sequential")  # what RFC 6081 §5.5 assumes of the others
        counts = dict.fromkeys(PEER_EXTENSION_NAMES.values(), 0)
        for flags in self._peer_extensions.values():
            for flag, name in PEER_EXTENSION_NAMES.items():
                if flags & flag:
                    counts[name] += 1
        return {
            "client_state": client_state,
            "nat_behaviours": behaviours,
            "local_mapping": show_endpoint(self.local) if self.local is not None else None,
            "upnp_mapped": show_endpoint(self.upnp_mapping) if self.upnp_mapping else None,
            "extensions": {
                "symmetric_nat": True,
                "upnp": extensions.upnp,
                "hairpinning": extensions.hairpinning,
                "server_load_reduction": extensions.server_load_reduction,
                "port_preserving": extensions.port_preserving,
                "sequential_ports": extensions.sequential_ports,
            },
            "peers_symmetric_nat": counts["symmetric_nat"],
            "peers_upnp": counts["upnp"],
            "peers_hairpinning": counts["hairpinning"],
            "peers_server_load_reduction": counts["server_load_reduction"],
            "peers_port_preserving": counts["port_preserving"],
            "peers_sequential_ports": counts["sequential_ports"],
            "random_ports": len(self._open_ports),
        }

    # -- inputs ---------------------------------------------------------------------------------

    def send_ipv6(self, packet: bytes | bytearray | memoryview, now: float) -> None:
        if self._address_bytes is None:
            self.drop("not_qualified")
            return
        if self._embedded_targets and len(packet) >= IPV6_HEADER_LENGTH:
            target = self.forward_to_teredo(packet, now)  # RFC 6081 §5.3.4.3
            if target is not None:
                self.count("sent")
                self.emit(bytes(packet), target)
                return
        if self._via_random and len(packet) >= IPV6_HEADER_LENGTH:
            state = self._random.get(bytes(packet[24:40]))
            if state is not None:
                state.last_data = now  # RFC 6081 §5.4.4.1
        super().send_ipv6(packet, now)  # refuses other sources than ours (`required_source`)

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, source: Endpoint, now: float
    ) -> None:
        if self._via_random:
            self._primary_reached(data, source, now)
        super().receive_datagram(data, source, now)
        self._pump(now)

    def receive_discovery(
        self, data: bytes | bytearray | memoryview, source: Endpoint, now: float
    ) -> None:
        """A datagram that arrived on 224.0.0.253 (RFC 4380 §5.2.8)."""
        if not self.client_settings.local_discovery:
            self.drop("discovery_disabled")
            return
        if self._address_bytes is None or self.qualifier.mapped is None:
            self.drop("not_qualified")
            return
        try:
            packet = parse_teredo_packet(bytes(data))
        except ParseError:
            self.drop("malformed")
            return
        ipv6 = packet.ipv6
        src = ipv6[8:24]
        if (
            packet.origin is not None
            or packet.authentication is not None
            or ipv6[6] != NextHeader.NO_NEXT_HEADER
            or len(ipv6) != IPV6_HEADER_LENGTH
            or ipv6[24:40] != ALL_NODES.packed
        ):
            self.drop("bad_discovery_bubble")
            return
        if src == self._address_bytes:
            return  # our own (multicast loop)
        try:
            teredo = parse_teredo_address(src, (self.settings.prefix,))
        except ParseError:
            self.drop("discovery_not_teredo")
            return
        if not self._on_local_subnet(source[0]):
            self.drop("discovery_not_local")
            return
        if str(teredo.mapped_address) != self.qualifier.mapped[0]:
            self.drop("discovery_other_nat")  # Miredo's DiscoveryNetmask 255.255.255.255
            return
        peer = self.peers.get(src)
        known = peer is not None and peer.local == source
        if peer is None:
            peer = self.peers.create(src, now)
            peer.last_rx = now  # RFC 4380 §5.2.8: heard from now, but not trusted
            self.count("peers_created")
        peer.local = source
        peer.local_seen = now
        self.count("discovery_received")
        self._reply_bubble(self._address_bytes, src, [source], now, None)
        if not known and now - self._last_announce >= DISCOVERY_ANNOUNCE_SPACING:
            self._send_discovery(now)  # so that it learns our local endpoint too
        self._pump(now)

    # -- engine hooks ---------------------------------------------------------------------------

    def _serves(self, destination: bytes) -> bool:
        return destination == self._address_bytes

    def _bubble_source(self, destination: bytes) -> bytes:
        # A client's bubbles come from its Teredo address (RFC 4380 §5.2.6).
        return self._address_bytes or CLIENT_LINK_LOCAL.packed

    def _on_datagram(self, packet: TeredoPacket, source: Endpoint, now: float) -> bool:
        if source[1] == TEREDO_PORT and source[0] in self._server_ips:
            ipv6 = packet.ipv6
            if Qualifier.is_router_advertisement(ipv6):
                self.qualifier.receive_router_advertisement(packet, source, now)
                return True
            self.qualifier.note_server_contact(now)
            if packet.origin is not None:
                self._from_server(packet, now)
                return True
        if self._address_bytes is None:
            self.drop("not_qualified")  # no address yet: nothing but RAs (RFC 4380 §5.2.1)
            return True
        return False

    def _on_unverified(self, packet: TeredoPacket, source: Endpoint, now: float) -> None:
        ipv6 = packet.ipv6
        src = ipv6[8:24]
        if src[0] == 0xFE and src[1] & 0xC0 == 0x80:
            # As Miredo does: no forged RA or neighbor discovery may reach the stack.
            self.drop("link_local_source")
            return
        if self.is_teredo(src):
            peer = self.peers.get(src)
            if peer is not None and peer.local is not None and peer.local == source:
                # rx case 5: a local peer at its local endpoint (RFC 4380 §5.2.3, §5.2.8).
                self.trust_peer(src, source, now)
                self.accept(ipv6)
                return
            if peer is not None and source in self._alternates.get(src, ()):
                # RFC 6081 §5.6: an endpoint the peer announced in the Alternate Address trailer
                # of an indirect bubble its server relayed: as good a proof as the mapping in
                # its address (rx case 3), and the one path between two clients behind one NAT
                # that does not hairpin.
                self.trust_peer(src, source, now)
                self._note_extension(src, PeerExtension.HAIRPINNING)
                self.count("alternate_address_accepted")
                self.accept(ipv6)
                return
            state = self._random.get(src) if self._random else None
            if (
                peer is not None
                and state is not None
                and state.peer_port
                and source == (teredo_mapping(src)[0], state.peer_port)
            ):
                # RFC 6081 §5.4: the peer's random port at the IPv4 address in its Teredo
                # address, which its indirect bubble named through its server: as good a
                # proof as the mapping in its address (rx case 3), as for an alternate address
                # above. Its first packets may come before any bubble with our nonce.
                self.trust_peer(src, source, now)
                self.count("random_port_accepted")
                self.accept(ipv6)
                return
            self.drop_unverified(packet)
            return
        if ipv6[24:40] != self._address_bytes:
            self.drop("destination_not_served")
            return
        peer = self.peers.get(src)
        if peer is not None and peer.ping_nonce is not None and self._is_our_echo_reply(ipv6, peer):
            # rx case 2 (RFC 4380 §5.2.3, §5.2.9): the relay that carried our nonce back.
            if not self._global_source(source):
                return
            self.count("echo_tests_succeeded")
            self.trust_peer(src, source, now)
            self._release_held(src, source)
            return
        self._hold_and_verify(src, ipv6, source, now)

    def _on_native_destination(self, packet: bytes, destination: bytes, now: float) -> None:
        """Transmission case 2 (RFC 4380 §5.2.4): queue, and test where replies come from."""
        peer = self.peers.get(destination)
        if peer is None:
            peer = self.peers.create(destination, now)
            self.count("peers_created")
        self._renew_ping_budget(peer, now)
        if peer.pings >= PING_BUDGET and not peer.may_ping(now):
            self.drop("peer_unreachable")
            self.send_unreachable(packet, UnreachableCode.ADDRESS_UNREACHABLE, now)
            return
        self.queue_packet(destination, peer, packet)
        if peer.may_ping(now):
            self._send_echo_test(destination, peer, now)
            self.schedule_retry(destination, peer, now + PING_SPACING)

    def _retry_native(self, address: bytes, peer: Peer, now: float) -> None:
        """The echo test toward a native peer (RFC 4380 §5.2.9): try again, or give up and drop
        what waited for it, the packets to send (queue) and those received (held)."""
        if not peer.queue and address not in self._held:
            return
        if peer.may_ping(now):
            self._send_echo_test(address, peer, now)
            self.schedule_retry(address, peer, now + PING_SPACING)
        elif peer.pings >= PING_BUDGET:
            self.count("echo_tests_failed")
            if peer.queue:
                self.fail_setup(address, peer, now)
            for _ in self._drop_held(address):
                self.drop("unverified_relay")
        else:
            self.schedule_retry(address, peer, retry_time(peer.last_ping + PING_SPACING, now))

    def _send_to_teredo(self, packet: bytes, dst: bytes, peer: Peer | None, now: float) -> None:
        if (
            peer is not None
            and self.client_settings.local_discovery
            and peer.local is not None
            and peer.is_local(now)
            and self._address_bytes is not None
        ):
            # Transmission case 3 (RFC 4380 §5.2.4): a unicast bubble to its local endpoint
            # and a discovery bubble, besides the usual setup below.
            self._reply_bubble(self._address_bytes, dst, [peer.local], now, None)
            if now - self._last_announce >= BUBBLE_SPACING:
                self._send_discovery(now)
        if (
            peer is not None
            and self.client_settings.extensions.server_load_reduction
            and peer.trusted
            and dst not in self._soliciting
            and self._address_bytes is not None
        ):
            # RFC 6081 §5.7.4.1: a peer silent for 30 s is asked directly first, with a
            # solicitation; its server hears of it only if 3 go unanswered (`_retry`).
            if self.queue_packet(dst, peer, packet):
                self._soliciting[dst] = 1
                self._solicit(dst, peer, now)
                self.schedule_retry(dst, peer, now + SOLICITATION_SPACING)
            return
        if dst in self._soliciting and peer is not None:
            self.queue_packet(dst, peer, packet)  # a solicitation is under way
            return
        super()._send_to_teredo(packet, dst, peer, now)

    def _retry(self, address: bytes, peer: Peer, now: float) -> None:
        sent = self._soliciting.get(address)
        if sent is None:
            super()._retry(address, peer, now)
            return
        if peer.is_valid(now) or not peer.queue:
            del self._soliciting[address]
            return
        if sent < SOLICITATIONS:
            # RFC 6081 §5.7.3: the solicitation again, 2 s later, 3 in all.
            self._soliciting[address] = sent + 1
            self._solicit(address, peer, now)
            self.schedule_retry(address, peer, now + SOLICITATION_SPACING)
            return
        # Unanswered: re-establish from scratch, through the server (RFC 6081 §5.7.3).
        del self._soliciting[address]
        self.count("solicitations_unanswered")
        if not self.send_bubbles(address, peer, now):
            super()._retry(address, peer, now)

    def _solicit(self, address: bytes, peer: Peer, now: float) -> None:
        """A direct bubble with a TeredoDiscoverySolicitation to the peer's mapping (RFC 6081
        §5.7.4.1), within the setup budget."""
        mapped = self._embedded_targets.get(address, peer.mapped)  # (RFC 6081 §5.3.4.2)
        if mapped is None or self._address_bytes is None:
            return
        if not self.budget.allow(1, now, server=None, repeated=True):
            self.drop("setup_budget_exhausted")
            return
        bubble = encode_bubble(self._address_bytes, address) + discovery_trailer(
            DiscoveryType.SOLICITATION
        )
        self.emit(bubble, mapped)
        self.count("solicitations_sent")

    def _on_bubble_trailers(
        self, address: bytes, peer: Peer, packet: TeredoPacket, source: Endpoint, now: float
    ) -> None:
        """RFC 6081 §5.7.4.2: answer a solicitation with an advertisement; an advertisement
        ends our solicitation (the direct bubble already revalidated the peer)."""
        if not self.client_settings.extensions.server_load_reduction:
            return
        for trailer in packet.trailers:
            if trailer.type != TrailerType.NEIGHBOR_DISCOVERY:
                continue
            try:
                option = decode_trailer(trailer)
            except ParseError:
                self.drop("malformed_trailer")
                return
            assert isinstance(option, NeighborDiscoveryTrailer)
            if option.discovery == DiscoveryType.ADVERTISEMENT:
                if self._soliciting.pop(address, None) is not None:
                    self.count("advertisements_received")
                    self._note_extension(address, PeerExtension.SERVER_LOAD_REDUCTION)
                return
            if self._address_bytes is None:
                return
            if not self.budget.allow(1, now, server=None, repeated=True):
                self.drop("setup_budget_exhausted")
                return
            bubble = encode_bubble(self._address_bytes, address) + discovery_trailer(
                DiscoveryType.ADVERTISEMENT
            )
            self.emit(bubble, source)
            self.count("advertisements_sent")
            return

    def _indirect_trailers(self, peer: Peer, now: float) -> bytes:
        """RFC 6081 §5.6.4.1: while a peer is not reached, our indirect bubbles say where else
        we can be reached: our local endpoint, and the NAT's UPnP mapping when it is not the one
        in our address (a second NAT). The nonce trailer is already there (§5.6 needs it)."""
        trailers = b""
        if self._random:
            state = self._random.get(self._bubbling, None)
            if state is not None and state.predicted:
                # RFC 6081 §5.4.4.2, §5.5.4.2: the mapped port we predict for our random port.
                trailers = random_port_trailer(state.predicted)
        if not self.client_settings.extensions.hairpinning or peer.is_valid(now):
            return trailers
        entries = [e for e in (self.local, self.upnp_mapped) if e is not None and _unicast(e)]
        if not entries:
            return trailers
        self.count("alternate_addresses_sent")
        return alternate_address_trailer(entries) + trailers

    def _may_learn(self, address: bytes, source: Endpoint) -> bool:
        """A bubble carrying our nonce may teach a non-global mapping when it comes from an
        endpoint the peer announced, or from our own LAN (RFC 6081 §5.6: two clients behind
        one NAT, each at its local endpoint); any other mapping must be global (RFC 4380
        §5.2.3)."""
        if source in self._alternates.get(address, ()):
            return True
        if (
            self.client_settings.extensions.hairpinning
            and self.local is not None
            and not is_global_ipv4(IPv4Address(source[0]))
            and self._on_local_subnet(source[0])
        ):
            return True
        return super()._may_learn(address, source)

    @property
    def upnp_mapped(self) -> Endpoint | None:
        """The UPnP mapping, zeroed when it is the one the server saw: then the client is
        behind a single NAT and its address already names it (RFC 6081 §5.3.3, §5.6.3)."""
        mapping = self.upnp_mapping
        if mapping is None or (self.address is not None and mapping == self.qualifier.mapped):
            return None
        return mapping

    def _upnp_rule_applies(self) -> bool:
        """RFC 6081 §5.3.4.2: Symmetric NAT, UPnP-enabled NAT, and the UPnP mapping zeroed
        (a single NAT: the mapping in our address is the UPnP one, open to every peer)."""
        return (
            self.client_settings.extensions.upnp
            and self.upnp_mapping is not None
            and self.upnp_mapped is None
            and self.qualifier.nat is NatBehaviour.SYMMETRIC
        )

    def forward_to_teredo(
        self, packet: bytes | bytearray | memoryview, now: float
    ) -> Endpoint | None:
        destination = super().forward_to_teredo(packet, now)
        if destination is not None and (self._embedded_targets or self._routes):
            if destination in self._routes:
                return None  # RFC 6081 §5.4: it leaves from the peer's random port (`send_ipv6`)
            return self._embedded_targets.get(bytes(packet[24:40]), destination)
        return destination

    def _flush(self, address: bytes, peer: Peer, mapping: Endpoint) -> None:
        self._choose_target(address, mapping)
        super()._flush(address, peer, self._embedded_targets.get(address, mapping))

    def _choose_target(self, address: bytes, mapping: Endpoint) -> None:
        embedded = teredo_mapping(address)
        if (
            mapping != embedded
            and self._upnp_rule_applies()
            and is_global_ipv4(IPv4Address(mapping[0]))
            and mapping not in self._alternates.get(address, ())
        ):
            # RFC 6081 §5.3.4.2-3: a symmetric peer, and we sit behind one UPnP-enabled
            # symmetric NAT: its learned mapping takes only what comes from the endpoint it
            # sent to, so bubbles and data go to the mapping in its address, betting that its
            # NAT maps that port by UPnP too, as ours does. It is still received from at the
            # learned one (the peer's symmetric NAT).
            self._embedded_targets[address] = embedded
            self.peers.withdraw(address)

    def set_upnp_mapping(self, mapping: Endpoint | None) -> None:
        """The daemon mapped (or unmapped) our port on the NAT's IGD (RFC 6081 §5.3.3)."""
        self.upnp_mapping = mapping

    def _note_extension(self, address: bytes, extension: PeerExtension) -> None:
        if self.peers.get(address) is not None:
            self._peer_extensions[address] = (
                self._peer_extensions.get(address, PeerExtension(0)) | extension
            )

    def _on_mapping_learned(self, address: bytes, peer: Peer, now: float) -> None:
        """Our direct bubble to the learned mapping at once (RFC 6081 §6.1, packet 7).

        The RFC's exchange sends it only when the symmetric peer's next indirect bubble comes,
        2 s later (RFC 4380 §5.2.6), and our reply to that bubble falls under the same 2 s
        spacing: a little jitter and the peer, whose NAT lets in only this path, waits another
        round. Sent now, the peer trusts us as soon as it proved its mapping; it is one bubble
        per mapping learned, within the setup budget."""
        mapped = peer.mapped
        if self._address_bytes is None or mapped is None:
            return
        self._choose_target(address, mapped)
        if mapped in self._alternates.get(address, ()) or not is_global_ipv4(
            IPv4Address(mapped[0])
        ):
            self._note_extension(address, PeerExtension.HAIRPINNING)
        elif address in self._embedded_targets:
            mapped = self._embedded_targets[address]  # (`_flush` chose it)
            self._note_extension(address, PeerExtension.UPNP)
        else:
            self._note_extension(address, PeerExtension.SYMMETRIC_NAT)
        if not self.budget.allow(1, now, server=None, repeated=True):
            self.drop("setup_budget_exhausted")
            return
        if peer.nonce_received is not None:
            # Without the peer's nonce this bubble may not convince it (it proves nothing it
            # asked for): its indirect bubble, when it comes, is answered at once then.
            self._last_reply[address] = now
        self.send_direct_bubble(
            self._address_bytes, address, mapped, now, nonce=peer.nonce_received
        )

    def _on_removed(self, address: bytes, peer: Peer) -> None:
        state = self._random.pop(address, None)
        if state is not None:
            self._close_random(address, state)
        self._drop_held(address)  # expired or evicted: its held packets can never be released
        self._embedded_targets.pop(address, None)
        self._alternates.pop(address, None)
        self._soliciting.pop(address, None)
        self._peer_extensions.pop(address, None)

    # -- RFC 6081 §5.4/§5.5: the random port ----------------------------------------------------

    def random_port_changes(self) -> list[tuple[int, bool]]:
        """The random ports to open (True) or close (False), in order, since the last call: the
        daemon binds each on the service socket's address (`random_port_failed` if it cannot)."""
        out = self._port_changes
        self._port_changes = []
        return out

    def random_port_datagrams(self) -> list[tuple[bytes, Endpoint, int]]:
        """UDP payloads to send from a random port: ``(payload, destination, local_port)``.
        Call it after `datagrams_to_send`, which moves there what goes to a peer reached through
        a random port."""
        out = self._random_datagrams
        self._random_datagrams = []
        return out

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        out = super().datagrams_to_send()
        routes = self._routes
        if routes:
            kept = []
            moved = self._random_datagrams
            for payload, destination in out:
                port = routes.get(destination)
                if port is None:
                    kept.append((payload, destination))
                else:
                    moved.append((payload, destination, port))
            out = kept
        return out

    def receive_on_random_port(
        self, data: bytes | bytearray | memoryview, source: Endpoint, port: int, now: float
    ) -> None:
        """A datagram that came to our random port `port`: the echo test's RAs (RFC 6081
        §5.5.4.4), or the peer's packets (§5.4.4.5). Never raises for bad input."""
        address = self._open_ports.get(port)
        if address is None:
            self.drop("random_port_closed")
            return
        if source[1] == TEREDO_PORT and source[0] in self._server_ips:
            self._echo_answer(bytes(data), source, address, now)
        elif len(data) < IPV6_HEADER_LENGTH or data[0] >> 4 != 6 or data[8:24] != address:
            # Only the peer it was opened for sends plain IPv6 here.
            self.drop("random_port_stranger")
        else:
            self._arrived_on = port
            try:
                super().receive_datagram(data, source, now)
            finally:
                self._arrived_on = 0
        self._pump(now)

    def random_port_failed(self, port: int, now: float) -> None:
        """The daemon could not bind `port` (in use): the peer's setup goes on without it."""
        address = self._open_ports.get(port)
        if address is not None:
            self.count("random_port_bind_failures")
            self._close_random(address, self._random[address])

    def _random_mode(self) -> str | None:
        """ "preserving" (RFC 6081 §5.4), "sequential" (§5.5, what §3.4 assumes of a symmetric NAT
        that is not port-preserving), or None: no random ports (not behind a symmetric NAT, the
        switch is off, or the UPnP extension serves: §5.3 maps our port for every peer)."""
        q = self.qualifier
        if (
            q.nat is not NatBehaviour.SYMMETRIC
            or self._address_bytes is None
            or self.upnp_mapping is not None
        ):
            return None
        extensions = self.client_settings.extensions
        if q.port_preserving:
            return "preserving" if extensions.port_preserving else None
        if extensions.sequential_ports and q.server.secondary is not None:
            return "sequential"
        return None

    def send_indirect_bubble(self, source: bytes, address: bytes, peer: Peer, now: float) -> None:
        """RFC 6081 §5.4.4.2/§5.5.4.1: behind a symmetric NAT, an indirect bubble to a peer not
        reached opens a random port first (sequential: and waits for the echo test that
        predicts its mapping); it carries the Random Port trailer (`_indirect_trailers`), and
        direct bubbles go to the peer's random port (`_bubble_to_peer_random_port`)."""
        mode = self._random_mode() if not peer.is_valid(now) else None
        state = self._random.get(address)
        if mode is not None:
            if state is None:
                state = self._random[address] = RandomPortPeer()
            if (
                not state.port
                and now >= state.retry_after
                and self._open_random(address, state, now)
                and mode == "preserving"
            ):
                state.predicted = state.port  # the NAT keeps a free port (§5.4.4.2)
            if state.port and not state.predicted and mode == "sequential":
                if state.failover_at is None:
                    self._start_echo_test(address, state, now)
                if state.failover_at is not None:
                    state.waiting_indirect = True  # sent with the prediction (§5.5.4.4)
                    return
        self._bubbling = address
        try:
            super().send_indirect_bubble(source, address, peer, now)
        finally:
            self._bubbling = b""
        if state is None:
            return
        state.rounds += 1
        if state.peer_port:
            self._bubble_to_peer_random_port(source, address, now, peer.nonce_received)
        elif state.port and state.heard_plain:
            if state.rounds > 1:
                self._bubble_to_plain_peer(source, address, peer, state, now)
            else:
                self._schedule_plain_bubble(state, now)

    def _schedule_plain_bubble(self, state: RandomPortPeer, now: float) -> None:
        """Our random port's first bubble to a peer that announces none, PLAIN_PEER_WAIT after
        we announced ours (`_bubble_to_plain_peer`)."""
        if state.port and state.plain_bubble_at is None and not state.peer_port:
            state.plain_bubble_at = now + PLAIN_PEER_WAIT

    def _bubble_to_plain_peer(
        self, source: bytes, address: bytes, peer: Peer, state: RandomPortPeer, now: float
    ) -> None:
        """The peer's indirect bubbles carry no Random Port trailer (a port-restricted NAT,
        say): its NAT lets in only the mapping it sent to, so our random port opens a mapping
        toward the one in its address, to which it sends once it knows our random port. With
        its nonce, the peer accepts this bubble's mapping and answers it at once (RFC 6081
        §5.2.4.4). Not at once: a peer behind a cone or address-restricted NAT answers our
        service port within a round trip, and would otherwise learn two mappings of ours."""
        if not self.budget.allow(1, now, server=None, repeated=True):
            self.drop("setup_budget_exhausted")
            return
        bubble = self._random_bubble(source, address, peer.nonce_received, state)
        self._send_from(bubble, teredo_mapping(address), state.port)

    def _bubble_to_peer_random_port(
        self, source: bytes, address: bytes, now: float, nonce: bytes | None
    ) -> None:
        """RFC 6081 §5.4.4.3: a direct bubble to the peer's random port, at the IPv4 address
        in its Teredo address, from our random port if we have one (else from our service
        port: a peer behind a symmetric NAT is reached there by a client behind a
        port-restricted one), with the Random Port trailer when we announce one."""
        state = self._random.get(address)
        if state is None or not state.peer_port:
            return
        if not self.budget.allow(1, now, server=None, repeated=True):
            self.drop("setup_budget_exhausted")
            return
        to = (teredo_mapping(address)[0], state.peer_port)
        self._send_from(self._random_bubble(source, address, nonce, state), to, state.port)

    def _random_bubble(
        self, source: bytes, address: bytes, nonce: bytes | None, state: RandomPortPeer
    ) -> bytes:
        bubble = encode_bubble(source, address)
        if nonce is not None:
            bubble += nonce_trailer_bytes(nonce)
        if state.port and state.predicted:
            bubble += random_port_trailer(state.predicted)
        return bubble

    def _send_from(self, payload: bytes, to: Endpoint, port: int) -> None:
        """Send `payload` from our random port `port` (0: the service port)."""
        if port:
            self._random_datagrams.append((payload, to, port))
        else:
            self.emit(payload, to)
        self.count("bubbles_sent")

    def _note_peer_random_port(
        self, address: bytes, peer: Peer, packet: TeredoPacket, now: float
    ) -> None:
        """RFC 6081 §5.4.4.4: the Random Port trailer of a peer's indirect bubble."""
        announced = 0
        for trailer in packet.trailers:
            if trailer.type in (TrailerType.RANDOM_PORT, TrailerType.RANDOM_PORT_IANA):
                try:
                    option = decode_trailer(trailer)
                except ParseError:
                    self.drop("malformed_trailer")
                    return
                assert isinstance(option, RandomPortTrailer)
                announced = option.port
                break
        state = self._random.get(address)
        if not announced:
            if state is None and self._random_mode() is not None:
                state = self._random[address] = RandomPortPeer()
            if state is not None:
                state.heard_plain = True
                if not peer.is_valid(now):
                    self._schedule_plain_bubble(state, now)
            return
        if state is None:
            state = self._random[address] = RandomPortPeer()
        if not state.peer_port:
            state.peer_port = announced
        elif (
            announced != state.peer_port
            and now - max(peer.last_rx, state.last_data, peer.last_tx) >= DATA_RECENT
        ):
            # The peer chose another random port and we have not talked for 30 s: use it, and
            # a new port of ours too (§5.4.4.4: SHOULD).
            state.peer_port = announced
            if state.port and address not in self._via_random:
                self._close_random(address, state)

    def _open_random(self, address: bytes, state: RandomPortPeer, now: float) -> bool:
        """Choose a random port for `address` and ask the daemon to open it, within
        MAX_RANDOM_PORTS (a refusal is counted and the setup goes on without one)."""
        if len(self._open_ports) >= MAX_RANDOM_PORTS:
            self.count("random_ports_refused")
            return False
        avoid = set(self._open_ports)
        if self.local is not None:
            avoid.add(self.local[1])
        port = choose_port(bytes(self._random_bytes(2)), avoid)
        if port is None:
            self.count("random_ports_refused")
            return False
        self._open_ports[port] = address
        state.port = port
        state.predicted = 0
        state.opened_at = now
        state.rounds = 0
        state.direct_primary = state.direct_random = False
        self._port_changes.append((port, True))
        self.count("random_ports_opened")
        return True

    def _close_random(self, address: bytes, state: RandomPortPeer) -> None:
        """Stop listening on the peer's random port (RFC 6081 §5.4.4.4-§5.4.4.5); what it
        sent through it leaves from our service port again."""
        port = state.port
        if port:
            if self._open_ports.get(port) == address:
                del self._open_ports[port]
            self._port_changes.append((port, False))
        state.port = state.predicted = 0
        state.plain_bubble_at = None
        state.direct_random = False
        state.waiting_indirect = False
        state.reset_echo_test()
        mapping = self._via_random.pop(address, None)
        if mapping is not None:
            self._routes.pop(mapping, None)
            peer = self.peers.get(address)
            if peer is not None:
                self.peers.publish(address, peer)

    def trust_peer(self, address: bytes, mapping: Endpoint, now: float) -> Peer:
        """RFC 6081 §5.4.4.5: a peer proven on our random port is sent to from it from now on
        (and hears from it at once, with its nonce, so that it learns that mapping of ours);
        one proven on our service port no longer needs the random port."""
        state = self._random.get(address) if self._random else None
        answer = 0
        if state is not None and state.port:
            arrived = self._arrived_on
            if arrived == state.port:
                state.direct_random = True
                old = self._via_random.get(address)
                if old != mapping:
                    if old is not None:
                        self._routes.pop(old, None)
                    self._via_random[address] = mapping
                    self._routes[mapping] = arrived
                    self.peers.withdraw(address)
                    answer = arrived
            elif arrived == 0 and address not in self._via_random:
                state.direct_primary = True
                self._close_random(address, state)
        peer = super().trust_peer(address, mapping, now)
        if state is not None and state.peer_port and mapping[1] == state.peer_port:
            # Reached at the port its Random Port trailer named (RFC 6081 §5.4.4.3), a
            # mapping of a symmetric NAT (§5.2).
            self._note_extension(
                address, PeerExtension.PORT_PRESERVING | PeerExtension.SYMMETRIC_NAT
            )
        if answer and state is not None and self._address_bytes is not None:
            self._note_extension(
                address,
                PeerExtension.SEQUENTIAL_PORTS
                if state.predicted != state.port
                else PeerExtension.PORT_PRESERVING,
            )
            if self.budget.allow(1, now, server=None, repeated=True):
                bubble = self._random_bubble(
                    self._address_bytes, address, peer.nonce_received, state
                )
                self._send_from(bubble, mapping, answer)
        return peer

    def _primary_reached(
        self, data: bytes | bytearray | memoryview, source: Endpoint, now: float
    ) -> None:
        """RFC 6081 §5.4.4.5, third case: a direct bubble on our service port from a peer we
        reach through a random port: the service port works, the random one goes, and the
        peer hears from the service port (with its nonce) to learn that mapping."""
        if (
            len(data) < IPV6_HEADER_LENGTH
            or data[0] >> 4 != 6
            or data[6] != NextHeader.NO_NEXT_HEADER
        ):
            return
        address = bytes(data[8:24])
        if self._via_random.get(address) != source:
            return
        state = self._random[address]
        state.direct_primary = True
        self._close_random(address, state)
        peer = self.peers.get(address)
        if peer is not None and self._address_bytes is not None:
            self.send_direct_bubble(
                self._address_bytes, address, source, now, nonce=peer.nonce_received
            )

    def fail_setup(self, address: bytes, peer: Peer, now: float) -> None:
        super().fail_setup(address, peer, now)
        state = self._random.get(address)
        if state is not None and state.port and address not in self._via_random:
            self._close_random(address, state)  # a port for a peer that never answered

    def _start_echo_test(self, address: bytes, state: RandomPortPeer, now: float) -> None:
        """RFC 6081 §5.5.4.1.1: from the random port, an RS to the server's first address, a
        direct bubble to the peer, an RS to its second address, one after the other (the NAT
        maps them in that order); the failover timer is 1 s, then 2 s.

        The bubble carries no nonce: it only makes the mapping whose port we predict, and a
        peer behind a cone NAT, which accepts it, must not learn from it a mapping of ours we
        may give up (our service port reaches it, §5.4.4.5)."""
        secondary = self.qualifier.server.secondary
        if secondary is None or self._address_bytes is None:
            return
        if not self.budget.allow(3, now, server=self._server_ipv4, repeated=True):
            self.drop("setup_budget_exhausted")
            return
        key = self.client_settings.key
        state.echo_nonce1 = bytes(self._random_bytes(ECHO_TEST_NONCE_LENGTH))
        state.echo_nonce2 = bytes(self._random_bytes(ECHO_TEST_NONCE_LENGTH))
        state.echo_lower = state.echo_upper = 0
        state.echo_retries += 1
        state.failover_at = now + state.echo_retries
        to = teredo_mapping(address)
        if state.peer_port:
            to = (to[0], state.peer_port)
        port = state.port
        self._random_datagrams.append(
            (echo_solicitation(state.echo_nonce1, key), self._server, port)
        )
        self._random_datagrams.append((encode_bubble(self._address_bytes, address), to, port))
        self._random_datagrams.append(
            (echo_solicitation(state.echo_nonce2, key), endpoint(secondary, TEREDO_PORT), port)
        )
        self.count("port_echo_tests_sent")

    def _echo_answer(self, data: bytes, source: Endpoint, address: bytes, now: float) -> None:
        """RFC 6081 §5.5.4.4: an RA answering an echo test's RS; with both, the prediction is
        the midpoint, and the indirect bubble that waited for it leaves."""
        try:
            packet = parse_teredo_packet(data)
        except ParseError:
            self.drop("malformed")
            return
        auth, origin = packet.authentication, packet.origin
        state = self._random[address]
        if auth is None or origin is None or not Qualifier.is_router_advertisement(packet.ipv6):
            self.drop("random_port_stranger")
            return
        server = self.qualifier.server
        if auth.nonce == state.echo_nonce1 and source[0] == str(server.primary):
            state.echo_lower = state.echo_lower or origin.endpoint[1]
        elif auth.nonce == state.echo_nonce2 and source[0] == str(server.secondary):
            state.echo_upper = state.echo_upper or origin.endpoint[1]
        else:
            self.drop("ra_bad_nonce")
            return
        if not (state.echo_lower and state.echo_upper) or state.predicted:
            return
        state.predicted = predicted_port(state.echo_lower, state.echo_upper)
        state.failover_at = None
        self.count("port_echo_tests_answered")
        peer = self.peers.get(address)
        if state.waiting_indirect and peer is not None and self._address_bytes is not None:
            state.waiting_indirect = False
            if not peer.is_valid(now):
                self.send_indirect_bubble(self._address_bytes, address, peer, now)

    def _random_timer(self) -> float | None:
        """The Peer Refresh Timer's deadline (RFC 6081 §5.4.2), or an earlier echo test
        failover (§5.5.2), while a random port is open."""
        if not self._open_ports:
            return None
        deadline = self._peer_refresh_at
        for address in self._open_ports.values():
            state = self._random[address]
            for at in (state.failover_at, state.plain_bubble_at):
                if at is not None and at < deadline:
                    deadline = at
        return deadline

    def _random_timers(self, now: float) -> None:
        if not self._open_ports:
            self._peer_refresh_at = max(self._peer_refresh_at, now + PEER_REFRESH_INTERVAL)
            return
        for address in list(self._open_ports.values()):
            state = self._random.get(address)
            if state is None:
                continue
            if state.failover_at is not None and now >= state.failover_at:
                state.failover_at = None
                self._echo_failover(address, state, now)
            if state.plain_bubble_at is not None and now >= state.plain_bubble_at:
                state.plain_bubble_at = None
                peer = self.peers.get(address)
                if (
                    peer is not None
                    and not peer.is_valid(now)
                    and state.port
                    and not state.peer_port
                    and self._address_bytes is not None
                ):
                    self._bubble_to_plain_peer(self._address_bytes, address, peer, state, now)
        if now >= self._peer_refresh_at:
            self._peer_refresh_at = now + PEER_REFRESH_INTERVAL
            self._refresh_random_ports(now)

    def _echo_failover(self, address: bytes, state: RandomPortPeer, now: float) -> None:
        """RFC 6081 §5.5.2.2: no prediction in time: a second echo test, then the indirect
        bubble without a Random Port trailer. The second test uses a new random port: from
        the first one, the NAT's mappings toward both server addresses exist already and
        would give the same ports again."""
        peer = self.peers.get(address)
        retries = state.echo_retries
        self._close_random(address, state)
        if peer is None or peer.is_valid(now) or self._address_bytes is None:
            return
        if retries < ECHO_TESTS and self._open_random(address, state, now):
            state.echo_retries = retries
            state.waiting_indirect = True
            self._start_echo_test(address, state, now)
            if state.failover_at is not None:
                return
        self.count("port_echo_tests_failed")
        state.retry_after = now + PEER_REFRESH_INTERVAL  # §5.5.2.1: tried again after that
        if state.port:
            self._close_random(address, state)
        if self.budget.allow(1, now, server=teredo_server_ipv4(address), repeated=True):
            PeeringEngine.send_indirect_bubble(self, self._address_bytes, address, peer, now)

    def _refresh_random_ports(self, now: float) -> None:
        """RFC 6081 §5.4.2.1: a direct bubble from the random port to each peer reached through
        it and sent no data for 30 s, 20 at most in a row; a port whose peer never answered
        on it within that time is given back (our bound on strangers' setups)."""
        for address in list(self._open_ports.values()):
            state = self._random[address]
            mapping = self._via_random.get(address)
            if mapping is None:
                if now - state.opened_at >= PEER_REFRESH_INTERVAL and state.failover_at is None:
                    self.count("random_ports_expired")
                    self._close_random(address, state)
                continue
            if now - state.last_data < DATA_RECENT:
                state.refresh_count = 0
            elif state.refresh_count < MAX_REFRESH_BUBBLES and self._address_bytes is not None:
                state.refresh_count += 1
                self._send_from(encode_bubble(self._address_bytes, address), mapping, state.port)

    # -- the server's packets -------------------------------------------------------------------

    def _from_server(self, packet: TeredoPacket, now: float) -> None:
        """A packet relayed by our server (origin indication): answer with a direct bubble."""
        assert packet.origin is not None
        ipv6 = packet.ipv6
        src, dst = ipv6[8:24], ipv6[24:40]
        if self._address_bytes is None:
            self.drop("not_qualified")
            return
        if dst != self._address_bytes:
            self.drop("destination_not_served")
            return
        origin = packet.origin
        to = origin.endpoint
        if not self._global_source(to):
            return
        nonce = trailer_nonce(packet.trailers)
        bubble = is_bubble(ipv6)
        self.count("indirect_bubbles_received" if bubble else "relayed_packets_received")
        if not self.is_teredo(src):
            # A relay's bubble (its source is its link-local cookie for us): answer it.
            self._reply_bubble(dst, src, [to], now, nonce)
        else:
            peer = self.peers.get(src)
            if peer is None:
                peer = self.peers.create(src, now)
                self.count("peers_created")
            # RFC 6081 §5.2.4.3: remember the peer's nonce (or forget an old one).
            peer.nonce_received = nonce
            if bubble:
                self._note_peer_random_port(src, peer, packet, now)  # RFC 6081 §5.4.4.4
            targets = [to]
            if peer.mapped is not None and peer.mapped != to:
                targets.append(peer.mapped)  # a mapping learned from a symmetric NAT peer
            if bubble and self.client_settings.extensions.hairpinning:
                alternates = self._alternate_addresses(packet)
                if alternates is None:
                    self.drop("malformed_alternate_address")  # RFC 6081 §5.6.4.2: SHOULD
                    return
                if alternates:
                    # RFC 6081 §5.6.4.2: a direct bubble to each, with the peer's nonce. They
                    # are usually private: the global-unicast rule is for mappings learned
                    # from the wire, not for endpoints a peer names through its server.
                    self._alternates[src] = alternates
                    targets += [a for a in alternates if a not in targets]
            if self._reply_bubble(dst, src, targets, now, nonce):
                self._bubble_to_peer_random_port(dst, src, now, nonce)  # RFC 6081 §5.4.4.3
            if (
                not peer.is_valid(now)
                and peer.may_send_bubble(now)
                and self.budget.allow(
                    1, now, server=teredo_server_ipv4(src), repeated=peer.repeated_demand()
                )
            ):
                # RFC 6081 §6.1 packet 4: our own indirect bubble, with a fresh nonce, so that
                # a peer behind a symmetric NAT can answer with a direct bubble we accept.
                self.send_indirect_bubble(dst, src, peer, now)
        if not bubble:
            # Only bubbles and small ICMPv6 come this way; their sender retries directly.
            self.drop("relayed_packet")

    def _alternate_addresses(self, packet: TeredoPacket) -> tuple[Endpoint, ...] | None:
        """The endpoints of the packet's Alternate Address trailer (RFC 6081 §4.3), () when
        there is none, None when it is malformed."""
        for trailer in packet.trailers:
            if trailer.type == TrailerType.ALTERNATE_ADDRESS:
                try:
                    return alternate_addresses(trailer)
                except ParseError:
                    return None
        return ()

    def _reply_bubble(
        self,
        source: bytes,
        destination: bytes,
        targets: list[Endpoint],
        now: float,
        nonce: bytes | None,
    ) -> bool:
        """Direct bubbles answering a peer, at most once per 2 s per peer (RFC 4380 §5.2.6),
        within the setup budget (a peer asking again has priority); True when they left."""
        last = self._last_reply.get(destination)
        if last is not None and now - last < BUBBLE_SPACING:
            self.drop("bubble_reply_rate_limited")
            return False
        if len(self._last_reply) >= MAX_REPLY_ENTRIES:
            self._last_reply.clear()  # bounded; forgetting only relaxes the spacing
        self._last_reply[destination] = now
        if not self.budget.allow(len(targets), now, server=None, repeated=last is not None):
            self.drop("setup_budget_exhausted")
            return False
        for to in targets:
            self.send_direct_bubble(source, destination, to, now, nonce=nonce)
        return True

    # -- the direct IPv6 connectivity test ------------------------------------------------------

    def _send_echo_test(self, destination: bytes, peer: Peer, now: float) -> None:
        """An echo request with a random nonce via our own server (RFC 4380 §5.2.9), within
        the setup budget; a deferred test counts against the peer's budget of 4."""
        assert self.address is not None
        repeated = peer.repeated_demand() or len(self._held.get(destination, ())) > 1
        if not self.budget.allow(1, now, server=self._server_ipv4, repeated=repeated):
            self.drop("setup_budget_exhausted")
            peer.note_ping(None, now)
            return
        nonce = peer.ping_nonce
        if nonce is None:  # one nonce per test: a late reply to an earlier try still counts
            nonce = bytes(self._random_bytes(ECHO_NONCE_LENGTH))
        identifier = int.from_bytes(nonce[:2], "big")
        echo = encode_echo(self.address, IPv6Address(destination), identifier, peer.pings, nonce)
        peer.note_ping(nonce, now)
        self.emit(echo, self._server)
        self.count("echo_tests_sent")

    def _is_our_echo_reply(self, ipv6: bytes, peer: Peer) -> bool:
        if len(ipv6) < IPV6_HEADER_LENGTH + 8 + ECHO_NONCE_LENGTH:
            return False
        if ipv6[6] != NextHeader.ICMPV6 or ipv6[IPV6_HEADER_LENGTH] != ICMPv6Type.ECHO_REPLY:
            return False
        data = ipv6[IPV6_HEADER_LENGTH + 8 : IPV6_HEADER_LENGTH + ((ipv6[4] << 8) | ipv6[5])]
        return data == peer.ping_nonce

    def _renew_ping_budget(self, peer: Peer, now: float) -> None:
        """A failed test may be retried after 300 s (as the bubble budget, RFC 4380 §5.2.6)."""
        if peer.pings >= PING_BUDGET and now - peer.last_ping >= BUBBLE_WINDOW:
            peer.pings = 0
            peer.ping_nonce = None

    def _hold_and_verify(self, src: bytes, ipv6: bytes, source: Endpoint, now: float) -> None:
        """rx case 6: a native source via an unverified relay. Hold the packet, ping via the
        server; the relay that returns our nonce is trusted and the held packets from it are
        delivered (RFC 4380 §5.2.3, §5.2.9)."""
        peer = self.peers.get(src)
        if peer is None:
            peer = self.peers.create(src, now)
            self.count("peers_created")
        self._renew_ping_budget(peer, now)
        if not peer.may_ping(now) and peer.pings >= PING_BUDGET:
            self.drop("unverified_relay")
            return
        self._hold(src, ipv6, source)
        if peer.may_ping(now):
            self._send_echo_test(src, peer, now)
            self.schedule_retry(src, peer, now + PING_SPACING)  # gives up after the last one

    def _hold(self, src: bytes, ipv6: bytes, source: Endpoint) -> None:
        """Hold `ipv6` from native `src`, within the per-peer limit; past the total limit the
        oldest peers' held packets make room (a flood of new native sources churns among
        itself, as new peer entries do, and the newest peer is not refused)."""
        size = len(ipv6)
        held = self._held.get(src, [])
        if sum(len(p) for p, _ in held) + size > self.settings.max_queue_bytes:
            self.drop("held_queue_full")
            return
        while self._held_bytes + size > MAX_INBOUND_HELD_BYTES and self._held:
            oldest = next(iter(self._held))
            for _ in self._drop_held(oldest):
                self.drop("held_evicted")
        if size > MAX_INBOUND_HELD_BYTES:
            self.drop("held_queue_full")
            return
        self._held.setdefault(src, []).append((ipv6, source))
        self._held_bytes += size
        self.count("held_for_echo_test")

    def _release_held(self, src: bytes, mapping: Endpoint) -> None:
        held = self._held.pop(src, [])
        for ipv6, source in held:
            self._held_bytes -= len(ipv6)
            if source == mapping:
                self.accept(ipv6)
            else:
                self.drop("held_from_other_relay")

    def _drop_held(self, src: bytes) -> list[tuple[bytes, Endpoint]]:
        held = self._held.pop(src, [])
        for ipv6, _ in held:
            self._held_bytes -= len(ipv6)
        return held

    # -- local discovery ------------------------------------------------------------------------

    def _send_discovery(self, now: float) -> None:
        if self.address is None:
            return
        self._last_announce = now
        bubble = encode_bubble(self.address, ALL_NODES, hop_limit=1)
        self.emit(bubble, endpoint(DISCOVERY_GROUP, TEREDO_PORT))
        self.count("discovery_sent")

    def _schedule_discovery(self, now: float) -> None:
        low, high = DISCOVERY_PERIOD
        fraction = int.from_bytes(self._random_bytes(_RANDOM_FRACTION_BYTES), "big") / 2**32
        self._discovery_at = now + low + (high - low) * fraction

    def _on_local_subnet(self, address: str) -> bool:
        if not self.local_networks:
            # The daemon gave no subnets: accept only when the source is not global (a LAN).
            try:
                return not is_global_ipv4(IPv4Address(address))
            except ValueError:
                return False
        try:
            ip = IPv4Address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.local_networks)

    # -- qualifier glue -------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Move the qualifier's datagrams out and apply its events before the daemon sees them."""
        q = self.qualifier
        for data, destination in q.datagrams_to_send():
            self.emit(data, destination)
        while (event := q.next_event()) is not None:
            self._apply(event, now)
            self._events.append(event)

    def _apply(self, event: QualifierEvent, now: float) -> None:
        if isinstance(event, Qualified):
            self._note_server()
            self._set_address(event.address)
            self._after_new_address(now)
        elif isinstance(event, AddressChanged):
            self._set_address(event.address)
            self._after_new_address(now)
        elif isinstance(event, Offline):
            self._set_address(None)
            self._discovery_at = None
            self._note_server(event.next_server)
        elif isinstance(event, NatBehaviourDetected):
            pass
        else:  # pragma: no cover - exhaustive
            raise LocalProtocolError(f"unknown qualifier event {event!r}")

    def _after_new_address(self, now: float) -> None:
        if self.client_settings.local_discovery:
            self._send_discovery(now)
            self._schedule_discovery(now)

    def _set_address(self, address: IPv6Address | None) -> None:
        if address != self.address:
            # Random ports were opened for the old address's peers (RFC 6081 §5.4): give them
            # back; setups with the new address open new ones.
            for peer_address, state in list(self._random.items()):
                if state.port:
                    self._close_random(peer_address, state)
        self.address = address
        self._address_bytes = address.packed if address is not None else None
        self.required_source = self._address_bytes or b""
        if address is not None:
            self.error_source = address

    def _note_server(self, server: ServerPair | None = None) -> None:
        server = server or self.qualifier.server
        self._server_ips = frozenset(
            str(a) for a in (server.primary, server.secondary) if a is not None
        )
        self._server = endpoint(server.primary, TEREDO_PORT)
        self._server_ipv4 = int(server.primary)


def _unicast(entry: Endpoint) -> bool:
    """Whether `entry` may be announced in an Alternate Address trailer (RFC 6081 §4.3)."""
    try:
        first = int(IPv4Address(entry[0])) >> 24
    except ValueError:
        return False
    return first not in (0, 127) and first < 224 and 0 < entry[1] <= 0xFFFF


class _Either:
    """Membership in either of two containers (the peer table's `unmirrored`)."""

    __slots__ = ("first", "second")

    def __init__(self, first: Container[bytes], second: Container[bytes]) -> None:
        self.first = first
        self.second = second

    def __contains__(self, item: object) -> bool:
        return item in self.first or item in self.second


def summarize_peer(
    address: bytes, peer: Peer, now: float, extensions: Sequence[str] = ()
) -> dict[str, Any]:
    """One peer for the status document, with the RFC 6081 extensions that served it."""
    return {
        "address": str(IPv6Address(address)),
        "trusted": peer.trusted,
        "valid": peer.is_valid(now),
        "mapped": f"{peer.mapped[0]}:{peer.mapped[1]}" if peer.mapped else None,
        "local": f"{peer.local[0]}:{peer.local[1]}" if peer.local else None,
        "idle": round(now - max(peer.last_rx, peer.last_tx), 1),
        "queued_bytes": peer.queued_bytes,
        "extensions": list(extensions),
    }


__all__ = [
    "CLIENT_IDLE_TIMEOUT",
    "ClientEvent",
    "ClientSettings",
    "TeredoClient",
    "summarize_peer",
]
