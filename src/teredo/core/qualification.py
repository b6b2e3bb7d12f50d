"""A Teredo client's relationship with its server: qualification and maintenance.

Theory of operation
-------------------
The `Qualifier` is the part of a client that talks to Teredo servers, with no I/O: router
solicitations (RS) out, router advertisements (RA) in, the time passed in as `now`, randomness
injected. The client (`teredo.core.client`) and the probe (`teredo probe`) both drive it.

States (RFC 4380 §5.2.1 "Initial", "Starting", "Qualified", "Off-line")::

    IDLE --start--> QUALIFYING --RA--> QUALIFIED --refresh fails--> OFFLINE --backoff--> QUALIFYING
                        |                  ^  \\--server changed--> QUALIFYING
                        +--N timeouts------+---------------------> OFFLINE

- QUALIFYING: an RS (C=0, RFC 5991 §3.2 skips the cone phase) goes to the primary server address
  every T = 4 s, at most N = 3 times (RFC 4380 §5.2.1). Each RS carries a fresh random 8-byte
  nonce in a nonce-only authentication header (RFC 4380 §5.2.2; sent always, not only for secure
  qualification, as Miredo does); the RA must echo one of the nonces of the current round. With
  a client key (secure qualification, RFC 4380 §5.2.2, `teredo.core.secure_qualification`) the
  RS also carries our identifier and its HMAC-SHA1 value, and an RA counts only when it carries
  the value our secret gives for it. The
  first valid RA qualifies the client at once: the address is the RA's /64 prefix + random flags
  (RFC 5991 §3.1) + the mapping in the RA's origin indication (RFC 4380 §5.2.1).
- NAT behaviour (RFC 4380 §5.2.1, RFC 6081 §5.2): an RS also goes to the *secondary* server
  address, in parallel with the primary one so that it never delays the address. Same mapping
  from both: the NAT maps endpoint-independently ("restricted": address- or port-restricted,
  Teredo treats both alike). A different mapping: "symmetric"; RFC 6081 §5.2 (Symmetric NAT
  Support) keeps the address built from the primary server's answer instead of giving up as RFC
  4380 would. What is *not* reliable, and therefore not claimed: RFC 5991 drops the cone probe, so
  a client cannot tell a full-cone NAT from a restricted one (only `teredo probe` tries, with an
  RS whose C bit asks the server to answer from its other address); a port-preserving symmetric
  NAT (Linux masquerade when the port is free) gives the same mapping to both server addresses
  and so looks "restricted"; and address- vs port-restricted filtering is indistinguishable with
  one server port. Whether the mapped port equals our local port is reported separately
  (RFC 6081 §5.4.3, "port-preserving").
- QUALIFIED: maintenance (RFC 4380 §5.2.5, RFC 6081 §5.1.1). A refresh RS goes out when nothing
  came from the server for a randomised 75-100 % of the refresh interval (default 30 s); any
  valid packet from the server's address and port 3544 counts as contact (`note_server_contact`).
  The refresh RS is retried like a qualification RS. Its RA must still carry our mapping; if the
  mapping changed, the old address is invalid and a new one (new random bits, RFC 5991 §3.1)
  replaces it (RFC 4380 §5.2.5): an `AddressChanged` event.
- OFFLINE: N unanswered RSes. The address is withdrawn (`Offline` event) and qualification
  restarts after a capped exponential backoff (2 s, 4 s ... 60 s; not Miredo's fixed 100 s, so a
  client started before its server qualifies soon after the server comes up), with the next
  server of the configured list (failover, which RFC 4380 §7.3.5 counts on against attacks on a
  server).

Events: `Qualified`, `AddressChanged`, `NatBehaviourDetected`, `Offline`.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from enum import Enum
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from teredo.core.address import (
    CLIENT_LINK_LOCAL,
    CLIENT_LINK_LOCAL_CONE,
    DEFAULT_MTU,
    TEREDO_PORT,
    TEREDO_PREFIX,
    Endpoint,
    encode_teredo_address,
    endpoint,
    random_flags,
    show_endpoint,
)
from teredo.core.errors import LocalProtocolError, ParseError
from teredo.core.logger import get_logger
from teredo.core.record import record  # a frozen dataclass without dataclasses' start-up cost
from teredo.core.secure_qualification import ClientKey, is_authenticated, sign, verify
from teredo.core.wire import (
    Authentication,
    ICMPv6Type,
    NextHeader,
    TeredoPacket,
    encode_router_solicitation,
    encode_teredo_packet,
    parse_router_advertisement,
    parse_teredo_packet,
    push_origin_indication,
)

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

log = get_logger(__name__)  # imports logging when it logs (teredo.core.logger)

QUALIFICATION_TIMEOUT: Final = 4.0  # RFC 4380 §5.2.1: T, the RFC 2461 default
QUALIFICATION_ATTEMPTS: Final = 3  # RFC 4380 §5.2.1: N
REFRESH_INTERVAL: Final = 30.0  # RFC 4380 §2.15, RFC 6081 §5.1.1: MUST default to 30 s
REFRESH_RANGE: Final = (0.75, 1.0)  # RFC 4380 §5.2: randomised 75-100 % of the interval
REFRESH_RANGE_LIMITS: Final = (0.5, 1.5)  # RFC 6081 §5.1.1: any range within 50-150 %
BACKOFF_MIN: Final = 2.0  # our choice: retry soon when the server starts late ...
BACKOFF_MAX: Final = 60.0  # ... but never hammer it (Miredo waits a fixed 100 s)
MIN_MTU: Final = 1280  # RFC 8200 §5; RFC 4380 §5.1.2
MAX_MTU: Final = 65535  # the MTU option's meaningful maximum for IPv6 over UDP/IPv4
RS_NONCE_LENGTH: Final = 8  # RFC 4380 §5.1.1
PROBE_RANDOM_BYTES: Final = 4  # bytes drawn for one uniform random fraction
CONE_GRACE: Final = 0.5  # probe: how long after the primary's RA the cone RA may still come ...
CONE_GRACE_RTTS: Final = 3.0  # ... or this many round-trip times, whichever is longer


class QualificationState(Enum):
    IDLE = "idle"
    QUALIFYING = "qualifying"
    QUALIFIED = "qualified"
    OFFLINE = "offline"


TRANSITIONS: Final = {
    QualificationState.IDLE: {QualificationState.QUALIFYING},
    QualificationState.QUALIFYING: {
        QualificationState.QUALIFYING,
        QualificationState.QUALIFIED,
        QualificationState.OFFLINE,
        QualificationState.IDLE,
    },
    QualificationState.QUALIFIED: {
        QualificationState.QUALIFYING,
        QualificationState.OFFLINE,
        QualificationState.IDLE,
    },
    QualificationState.OFFLINE: {QualificationState.QUALIFYING, QualificationState.IDLE},
}


class NatBehaviour(Enum):
    """What qualification could learn about the NAT in front of us (see the module docstring)."""

    UNKNOWN = "unknown"  # not measured (yet), or the secondary address did not answer
    NONE = "none"  # the mapped endpoint is our own: no NAT
    CONE = "cone"  # endpoint-independent mapping and filtering (probe only)
    RESTRICTED = "restricted"  # same mapping from both server addresses
    SYMMETRIC = "symmetric"  # a different mapping per destination (RFC 6081 §5.2)


class Purpose(Enum):
    PRIMARY = "primary"  # qualification and refresh: the RA that gives the address
    SECONDARY = "secondary"  # the same RS to the secondary address: NAT behaviour
    CONE = "cone"  # probe only: RS with C=1, answered from the other server address


@record
class ServerPair:
    """A Teredo server: its primary address and the secondary one (RFC 4380 §5.2)."""

    primary: IPv4Address
    secondary: IPv4Address | None = None

    @classmethod
    def of(cls, primary: IPv4Address, secondary: IPv4Address | None = None) -> ServerPair:
        """Miredo's convention when no secondary is given: primary + 1 (RFC 4380 does not say)."""
        if secondary is None and int(primary) < 0xFFFFFFFF:
            secondary = primary + 1
        return cls(primary, secondary)

    def __str__(self) -> str:
        return f"{self.primary}" + (f" (secondary {self.secondary})" if self.secondary else "")


@record
class Qualified:
    """The client has an address (again). `solicited_at` is when the answered RS went out."""

    address: IPv6Address
    mapped: Endpoint
    mtu: int
    server: ServerPair
    solicited_at: float
    rtt: float


@record
class AddressChanged:
    """A refresh RA carried a new mapping (or MTU): `old` is no longer valid."""

    old: IPv6Address
    address: IPv6Address
    mapped: Endpoint
    mtu: int


@record
class NatBehaviourDetected:
    nat: NatBehaviour
    primary_mapping: Endpoint
    secondary_mapping: Endpoint | None
    port_preserving: bool | None


@record
class Offline:
    """The server stopped answering (or never did): the address, if any, is withdrawn."""

    reason: str
    old: IPv6Address | None
    retry_at: float
    next_server: ServerPair


QualifierEvent = Qualified | AddressChanged | NatBehaviourDetected | Offline


@record
class _Solicitation:
    purpose: Purpose
    destination: Endpoint
    source: IPv6Address
    sent_at: float


class Qualifier:
    """Qualification and maintenance against a list of servers (see the module docstring).

    `random_bytes` must be a cryptographically strong source (`os.urandom`): it makes the RS
    nonces and the address's random bits (RFC 5991 §3.1, §4). `local` is our bound endpoint when
    known, for the "no NAT" and port-preserving reports. `probe_cone` adds the RFC 4380 cone
    test (for `teredo probe` only: RFC 5991 §3.2 has clients skip it, so that their address does
    not tell a scanner their NAT type). `key` turns on secure qualification (RFC 4380 §5.2.2):
    every RS is signed with it, and only RAs signed with it are accepted.
    """

    def __init__(
        self,
        servers: Sequence[ServerPair],
        random_bytes: Callable[[int], bytes],
        *,
        refresh_interval: float = REFRESH_INTERVAL,
        refresh_range: tuple[float, float] = REFRESH_RANGE,
        timeout: float = QUALIFICATION_TIMEOUT,
        attempts: int = QUALIFICATION_ATTEMPTS,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        detect_nat: bool = True,
        probe_cone: bool = False,
        local: Endpoint | None = None,
        prefixes: Sequence[IPv6Network] = (TEREDO_PREFIX,),
        key: ClientKey | None = None,
    ) -> None:
        if not servers:
            raise LocalProtocolError("a Teredo client needs at least one server")
        low, high = refresh_range
        if not REFRESH_RANGE_LIMITS[0] <= low <= high <= REFRESH_RANGE_LIMITS[1]:
            raise LocalProtocolError("the refresh range must lie within 50-150 % (RFC 6081)")
        if refresh_interval <= 0 or timeout <= 0 or attempts < 1:
            raise LocalProtocolError("refresh interval, timeout and attempts must be positive")
        self.servers: tuple[ServerPair, ...] = tuple(servers)
        self.random_bytes = random_bytes
        self.refresh_interval = refresh_interval
        self.refresh_range = refresh_range
        self.timeout = timeout
        self.attempts = attempts
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.detect_nat = detect_nat
        self.probe_cone = probe_cone
        self.local = local
        self.prefixes = tuple(prefixes)
        self.key = key  # secure qualification (RFC 4380 §5.2.2); None: nonce-only RSs

        self.state = QualificationState.IDLE
        self.server_index = 0
        self.address: IPv6Address | None = None
        self.flags = 0
        self.prefix: IPv6Network | None = None
        self.mapped: Endpoint | None = None
        self.mtu = DEFAULT_MTU
        self.rtt: float | None = None
        self.nat = NatBehaviour.UNKNOWN
        self.secondary_mapping: Endpoint | None = None
        self.cone_answered = False
        self.port_preserving: bool | None = None
        self.last_server_contact: float | None = None
        self.qualified_at: float | None = None
        self.backoff = backoff_min
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()

        self._pending: dict[bytes, _Solicitation] = {}
        self._round_sent = 0  # primary RSes sent in the current round
        self._secondary_sent = 0
        self._cone_sent = 0
        self._retransmit_at: float | None = None
        self._nat_check_at: float | None = None
        self._cone_done = True
        self._refresh_at: float | None = None
        self._refresh_delay = refresh_interval
        self._restart_at: float | None = None
        self._outgoing: list[tuple[bytes, Endpoint]] = []
        self._events: deque[QualifierEvent] = deque()

    # -- the contract ---------------------------------------------------------------------------

    @property
    def server(self) -> ServerPair:
        return self.servers[self.server_index]

    @property
    def nat_check_pending(self) -> bool:
        """Whether an answer to the secondary (or cone) RS may still come (the probe waits)."""
        return self._nat_check_at is not None

    def start(self, now: float) -> None:
        """Begin qualifying with the current server."""
        self._begin_round(now)

    def stop(self) -> None:
        """Forget everything in flight; the client or probe is shutting down."""
        self._pending.clear()
        self._retransmit_at = self._refresh_at = self._restart_at = self._nat_check_at = None
        if self.state is not QualificationState.IDLE:
            self._set_state(QualificationState.IDLE)

    def set_servers(self, servers: Sequence[ServerPair], now: float) -> None:
        """New server list (configuration reload): re-qualify if the current server changed."""
        if not servers:
            raise LocalProtocolError("a Teredo client needs at least one server")
        current = self.server if self.state is not QualificationState.IDLE else None
        self.servers = tuple(servers)
        if current in self.servers:
            self.server_index = self.servers.index(current)
            return
        self.server_index = 0
        if self.state is not QualificationState.IDLE:
            log.info("server changed to %s: qualifying again", self.server)
            self._begin_round(now)

    def is_server(self, source: Endpoint) -> bool:
        """Whether `source` is the current server (either address) at port 3544."""
        if source[1] != TEREDO_PORT:
            return False
        server = self.server
        return source[0] in (str(server.primary), str(server.secondary))

    def note_server_contact(self, now: float) -> None:
        """A valid packet came from the server (RFC 4380 §5.2.3): postpone the refresh."""
        self.last_server_contact = now

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> None:
        """A datagram on the qualifying socket (the probe's only input; the client pre-sorts)."""
        if not self.is_server(source):
            self._drop("not_from_server", "datagram from %s, not from the server", source)
            return
        try:
            packet = parse_teredo_packet(data)
        except ParseError as error:
            self._drop("malformed", "malformed datagram from %s: %s", source, error)
            return
        if self.is_router_advertisement(packet.ipv6):
            self.receive_router_advertisement(packet, source, now)
        else:
            self.note_server_contact(now)

    def receive_router_advertisement(
        self, packet: TeredoPacket, source: Endpoint, now: float
    ) -> None:
        """Handle a Teredo packet whose IPv6 part is an RA (see `is_router_advertisement`).

        Every check RFC 4380 §5.2.1 and §5.2.2 ask for is made here (an origin indication, a
        valid RA, our RS's source as its destination, exactly one prefix, the Teredo prefix of
        our server, our nonce), plus Miredo's: an authentication header is required, the RA
        comes from the address our RS went to at port 3544, the prefix is a /64 and the MTU
        lies within 1280-65535. A failed check drops the packet under a named reason. Never
        raises for bad input.
        """
        solicitation = self._check_ra_envelope(packet, source)
        if solicitation is None:
            return
        try:
            ra = parse_router_advertisement(packet.ipv6)
        except ParseError as error:
            self._drop("ra_invalid", "RA from %s is not a valid ND message: %s", source, error)
            return
        if ra.destination != solicitation.source:
            self._drop("ra_wrong_destination", "RA from %s to %s, not to our RS source %s",
                       source, ra.destination, solicitation.source)  # fmt: skip
            return
        if len(ra.prefixes) != 1:
            self._drop("ra_prefix_count", "RA from %s has %d prefixes, not exactly one",
                       source, len(ra.prefixes))  # fmt: skip
            return
        pio = ra.prefixes[0]
        prefix = self._check_prefix(pio.prefix, pio.prefix_length)
        if prefix is None:
            self._drop("ra_bad_prefix", "RA from %s advertises %s/%d, not a Teredo /64 of %s",
                       source, pio.prefix, pio.prefix_length, self.server.primary)  # fmt: skip
            return
        mtu = DEFAULT_MTU if ra.mtu is None else ra.mtu
        if not MIN_MTU <= mtu <= MAX_MTU:
            self._drop("ra_bad_mtu", "RA from %s advertises MTU %d (outside %d-%d)",
                       source, mtu, MIN_MTU, MAX_MTU)  # fmt: skip
            return
        assert packet.origin is not None and packet.authentication is not None
        del self._pending[packet.authentication.nonce]
        self.counters["ra_accepted"] += 1
        self.note_server_contact(now)
        mapped = packet.origin.endpoint
        handler = self._RA_HANDLERS[solicitation.purpose]
        handler(self, solicitation, prefix, mapped, mtu, now)

    @staticmethod
    def is_router_advertisement(ipv6: bytes) -> bool:
        """A cheap test: ICMPv6 type 134 directly after the IPv6 header."""
        return (
            len(ipv6) > 40
            and ipv6[6] == NextHeader.ICMPV6
            and (ipv6[40] == ICMPv6Type.ROUTER_ADVERTISEMENT)
        )

    def get_timer(self) -> float | None:
        deadlines = [
            t
            for t in (self._retransmit_at, self._nat_check_at, self._refresh_at, self._restart_at)
            if t is not None
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        if self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            self._begin_round(now)
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._retransmit(now)
        if self._nat_check_at is not None and now >= self._nat_check_at:
            self._retry_nat_checks(now)
        if self._refresh_at is not None and now >= self._refresh_at:
            self._maybe_refresh(now)

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> QualifierEvent | None:
        return self._events.popleft() if self._events else None

    # -- rounds of solicitations ----------------------------------------------------------------

    def _begin_round(self, now: float) -> None:
        """A new qualification round with the current server (first RS at once)."""
        self._set_state(QualificationState.QUALIFYING)
        self._pending.clear()
        self._round_sent = 0
        self._refresh_at = self._restart_at = None
        self._send_primary(now)
        self._restart_nat_check(now)

    def _send_primary(self, now: float) -> None:
        self._solicit(Purpose.PRIMARY, endpoint(self.server.primary, TEREDO_PORT), now)
        self._round_sent += 1
        self._retransmit_at = now + self.timeout

    def _restart_nat_check(self, now: float) -> None:
        """Measure the NAT (again): at qualification, and when the mapping changed.

        With `probe_cone` the cone test goes first: an RS with C=1 to the primary, answered
        from the secondary address (RFC 4380 §5.3.2), which only a full-cone NAT lets through
        *as long as nothing was sent to the secondary address yet*. So the secondary RS waits
        until the cone RA came, or until a grace period after the primary's RA (the server
        answers both at once) passed without it.
        """
        self._forget(Purpose.SECONDARY)
        self._forget(Purpose.CONE)
        self.secondary_mapping = None
        self.cone_answered = False
        self.nat = NatBehaviour.UNKNOWN
        self._secondary_sent = self._cone_sent = 0
        self._nat_check_at = None
        self._cone_done = not self.probe_cone
        if self._cone_done:
            self._send_secondary(now)
        else:
            self._send_cone(now)

    def _send_cone(self, now: float) -> None:
        self._solicit(Purpose.CONE, endpoint(self.server.primary, TEREDO_PORT), now)
        self._cone_sent += 1
        self._nat_check_at = now + self.timeout

    def _send_secondary(self, now: float) -> bool:
        secondary = self.server.secondary
        if (
            not self.detect_nat
            or secondary is None
            or self.secondary_mapping is not None
            or self._secondary_sent >= self.attempts
        ):
            self._nat_check_at = None
            return False
        self._solicit(Purpose.SECONDARY, endpoint(secondary, TEREDO_PORT), now)
        self._secondary_sent += 1
        self._nat_check_at = now + self.timeout
        return True

    def _solicit(self, purpose: Purpose, destination: Endpoint, now: float) -> None:
        nonce = bytes(self.random_bytes(RS_NONCE_LENGTH))
        source = CLIENT_LINK_LOCAL_CONE if purpose is Purpose.CONE else CLIENT_LINK_LOCAL
        ipv6 = encode_router_solicitation(source)
        if self.key is None:
            authentication = Authentication(nonce=nonce)  # nonce-only (RFC 4380 §5.2.2)
        else:
            # Secure qualification (RFC 4380 §5.2.2): identifier and HMAC-SHA1 over nonce,
            # confirmation 0 and the RS (an RS has no origin indication).
            authentication = sign(self.key, nonce, ipv6)
        packet = TeredoPacket(ipv6=ipv6, authentication=authentication)
        self._pending[nonce] = _Solicitation(purpose, destination, source, now)
        self._outgoing.append((encode_teredo_packet(packet), destination))
        self.counters[f"rs_sent_{purpose.value}"] += 1

    def _retransmit(self, now: float) -> None:
        """T elapsed without an RA for the primary RS: again, or off-line after N."""
        self._retransmit_at = None
        if self._round_sent < self.attempts:
            self._send_primary(now)
        else:
            self._go_offline(now)

    def _retry_nat_checks(self, now: float) -> None:
        self._nat_check_at = None
        if not self._cone_done:
            if self.state is QualificationState.QUALIFIED:
                # The grace period after the primary's RA passed: not a full-cone NAT.
                self._cone_done = True
                self._forget(Purpose.CONE)
                self._send_secondary(now)
            elif self._cone_sent < self.attempts:
                self._send_cone(now)
            return
        if self._send_secondary(now):
            return
        # Every attempt timed out: stop waiting.
        self._forget(Purpose.SECONDARY)
        if self.detect_nat and self.server.secondary is not None and self.secondary_mapping is None:
            log.warning(
                "the secondary server address %s did not answer: NAT behaviour unknown "
                "(check ServerAddress2)",
                self.server.secondary,
            )
            self.counters["secondary_silent"] += 1
        self._classify()

    def _maybe_refresh(self, now: float) -> None:
        """Maintenance (RFC 4380 §5.2.5): an RS only when the server has been silent."""
        self._refresh_at = None
        last = self.last_server_contact if self.last_server_contact is not None else now
        if now - last < self._refresh_delay:
            self._refresh_at = last + self._refresh_delay
            return
        self.counters["refreshes"] += 1
        self._round_sent = 0
        self._forget(Purpose.PRIMARY)
        self._send_primary(now)

    def _schedule_refresh(self, now: float) -> None:
        low, high = self.refresh_range
        fraction = int.from_bytes(self.random_bytes(PROBE_RANDOM_BYTES), "big") / 2**32
        self._refresh_delay = self.refresh_interval * (low + (high - low) * fraction)
        self._refresh_at = now + self._refresh_delay

    def _go_offline(self, now: float) -> None:
        server = self.server
        old = self.address
        was = self.state
        self._pending.clear()
        self._retransmit_at = self._refresh_at = self._nat_check_at = None
        self.address = None
        self.server_index = (self.server_index + 1) % len(self.servers)
        delay = self.backoff
        self.backoff = min(self.backoff * 2, self.backoff_max)
        self._restart_at = now + delay
        if was is QualificationState.QUALIFIED:
            reason = f"the Teredo server {server.primary} stopped answering"
        else:
            reason = f"no answer from the Teredo server {server.primary} (UDP port {TEREDO_PORT})"
        self._set_state(QualificationState.OFFLINE)
        log.warning("%s; trying %s again in %.0f s", reason, self.server, delay)
        self._events.append(Offline(reason, old, self._restart_at, self.server))

    # -- RA handling ----------------------------------------------------------------------------

    def _check_ra_envelope(self, packet: TeredoPacket, source: Endpoint) -> _Solicitation | None:
        """Origin indication, authentication, nonce and outer source (RFC 4380 §5.2.1, §5.2.2)."""
        if packet.origin is None:
            self._drop("ra_no_origin", "RA from %s without an origin indication", source)
            return None
        auth = packet.authentication
        if auth is None:
            self._drop("ra_no_authentication", "RA from %s without a nonce", source)
            return None
        solicitation = self._pending.get(auth.nonce)
        if solicitation is None:
            self._drop("ra_bad_nonce", "RA from %s does not answer any RS of ours", source)
            return None
        if auth.confirmation != 0:
            self._drop("ra_confirmation", "RA from %s asks for a new key (confirmation %d)",
                       source, auth.confirmation)  # fmt: skip
            return None
        if self.key is not None:
            # Secure qualification (RFC 4380 §5.2.2): our identifier, and the value our secret
            # gives over nonce, confirmation, origin indication and RA; else MUST discard.
            if not is_authenticated(auth):
                self._drop("ra_not_authenticated", "RA from %s is not signed, though our "
                           "RSs are (does the server know our key?)", source)  # fmt: skip
                return None
            origin = push_origin_indication(packet.origin)
            if auth.client_id != self.key.identifier or not verify(
                auth, self.key.secret, packet.ipv6, origin
            ):
                self._drop("ra_authentication_failed", "RA from %s fails authentication (is "
                           "SharedSecret the one in the server's key file?)", source)  # fmt: skip
                return None
        elif auth.client_id or auth.auth_value:
            # We sent a nonce-only header; a server adding a value we cannot check is suspicious.
            self._drop("ra_unexpected_authentication", "RA from %s carries authentication data",
                       source)  # fmt: skip
            return None
        if not self._expected_source(solicitation, source):
            self._drop("ra_wrong_source", "RA from %s but our RS went to %s",
                       source, solicitation.destination)  # fmt: skip
            return None
        return solicitation

    def _expected_source(self, solicitation: _Solicitation, source: Endpoint) -> bool:
        if source[1] != TEREDO_PORT:
            return False
        if solicitation.purpose is Purpose.CONE:
            # RFC 4380 §5.3.2: the answer to C=1 comes from the *other* server address.
            return source[0] == str(self.server.secondary)
        return source[0] == solicitation.destination[0]

    def _check_prefix(self, prefix: IPv6Address, length: int) -> IPv6Network | None:
        """RFC 4380 §5.2.1: the Teredo prefix + our server's primary IPv4; a /64, as Miredo asks."""
        if length != 64:
            return None
        value = int(prefix)
        if value & 0xFFFFFFFFFFFFFFFF:
            return None
        if (value >> 64) & 0xFFFFFFFF != int(self.server.primary):
            return None
        for teredo in self.prefixes:
            if value >> 96 == int(teredo.network_address) >> 96:
                return IPv6Network((value, 64))
        return None

    def _ra_primary(
        self, solicitation: _Solicitation, prefix: IPv6Network, mapped: Endpoint, mtu: int,
        now: float,
    ) -> None:  # fmt: skip
        self._retransmit_at = None
        self._forget(Purpose.PRIMARY)
        self.rtt = now - solicitation.sent_at
        if self.local is not None:
            self.port_preserving = mapped[1] == self.local[1]
        self.backoff = self.backoff_min
        keep_flags = prefix == self.prefix and mapped == self.mapped
        if self.state is QualificationState.QUALIFIED:
            if not keep_flags or mtu != self.mtu:
                old = self.address
                self._new_address(prefix, mapped, mtu, keep_flags)
                assert old is not None and self.address is not None
                log.info(
                    "mapping is now %s: address %s replaces %s",
                    show_endpoint(mapped), self.address, old,
                )  # fmt: skip
                self._events.append(AddressChanged(old, self.address, mapped, mtu))
                if not keep_flags:
                    self._restart_nat_check(now)
        else:
            # Re-qualifying with the same server and mapping keeps the address (and its bits).
            self._new_address(prefix, mapped, mtu, keep_flags)
            assert self.address is not None
            self._set_state(QualificationState.QUALIFIED)
            self.qualified_at = now
            log.info(
                "qualified with %s: address %s (mapped %s, MTU %d, RTT %.1f ms)",
                self.server, self.address, show_endpoint(mapped), mtu, self.rtt * 1000,
            )  # fmt: skip
            self._events.append(
                Qualified(self.address, mapped, mtu, self.server, solicitation.sent_at, self.rtt)
            )
            if not self._cone_done:
                self._nat_check_at = now + max(CONE_GRACE_RTTS * self.rtt, CONE_GRACE)
            self._classify()
        self._schedule_refresh(now)

    def _ra_secondary(
        self, solicitation: _Solicitation, prefix: IPv6Network, mapped: Endpoint, mtu: int,
        now: float,
    ) -> None:  # fmt: skip
        self.secondary_mapping = mapped
        self._forget(Purpose.SECONDARY)
        self._nat_check_at = None
        self._classify()

    def _ra_cone(
        self, solicitation: _Solicitation, prefix: IPv6Network, mapped: Endpoint, mtu: int,
        now: float,
    ) -> None:  # fmt: skip
        self.cone_answered = True
        self._cone_done = True
        self._forget(Purpose.CONE)
        self._send_secondary(now)
        self._classify()

    _RA_HANDLERS: Final = {
        Purpose.PRIMARY: _ra_primary,
        Purpose.SECONDARY: _ra_secondary,
        Purpose.CONE: _ra_cone,
    }

    def _classify(self) -> None:
        """Decide the NAT behaviour once the primary mapping and a comparison are known."""
        mapped = self.mapped
        if mapped is None or self.state is not QualificationState.QUALIFIED:
            return  # a secondary answer arrived first: wait for the primary's
        if self.local is not None and mapped == self.local:
            nat = NatBehaviour.NONE
        elif self.secondary_mapping is not None and self.secondary_mapping != mapped:
            nat = NatBehaviour.SYMMETRIC
        elif self.cone_answered:
            nat = NatBehaviour.CONE
        elif self.secondary_mapping is not None:
            nat = NatBehaviour.RESTRICTED
        else:
            return
        if nat is self.nat:
            return
        self.nat = nat
        if nat is NatBehaviour.SYMMETRIC:
            log.warning(
                "symmetric NAT: the secondary server address saw %s, the primary %s; keeping the "
                "primary's address (RFC 6081 Symmetric NAT Support); Teredo peers behind "
                "port-restricted or symmetric NATs are reachable only if this NAT keeps ports "
                "or hands them out in sequence (RFC 6081 §5.4, §5.5), or maps ours by UPnP",
                show_endpoint(self.secondary_mapping) if self.secondary_mapping else "nothing",
                show_endpoint(mapped),
            )  # fmt: skip
        else:
            log.info("NAT behaviour: %s (mapped %s)", nat.value, show_endpoint(mapped))
        self._events.append(
            NatBehaviourDetected(nat, mapped, self.secondary_mapping, self.port_preserving)
        )

    def _new_address(
        self, prefix: IPv6Network, mapped: Endpoint, mtu: int, keep_flags: bool
    ) -> None:
        """Prefix + flags + mapping (RFC 4380 §5.2.1; RFC 5991 §3.1 random bits)."""
        if not keep_flags:
            self.flags = random_flags(self.random_bytes)
        self.prefix, self.mapped, self.mtu = prefix, mapped, mtu
        server = IPv4Address((int(prefix.network_address) >> 64) & 0xFFFFFFFF)
        teredo32 = IPv6Network((int(prefix.network_address) >> 96 << 96, 32))
        self.address = encode_teredo_address(
            server, IPv4Address(mapped[0]), mapped[1], self.flags, teredo32
        )

    def _forget(self, purpose: Purpose) -> None:
        for nonce in [n for n, s in self._pending.items() if s.purpose is purpose]:
            del self._pending[nonce]

    # -- helpers ---------------------------------------------------------------------------------

    def _set_state(self, state: QualificationState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise LocalProtocolError(f"no transition from {self.state.value} to {state.value}")
        if state is not self.state:
            log.debug("qualification: %s -> %s", self.state.value, state.value)
        self.state = state

    def _drop(self, reason: str, message: str, *args: object) -> None:
        self.drops[reason] += 1
        shown = (show_endpoint(a) if isinstance(a, tuple) else a for a in args)  # endpoints
        log.debug("dropped: " + message, *shown)
