"""The Teredo server: a stateless, sans-I/O state machine (RFC 4380 §5.3, RFC 5991 §3.2).

Theory of operation
-------------------

A Teredo server owns two consecutive IPv4 addresses, *primary* and *secondary*, and listens on
UDP 3544 on both (RFC 4380 §5.2, §5.3). It does two things and keeps no per-client state:

1. **Router Solicitation -> Router Advertisement** (RFC 4380 §5.3.2). A client's RS, sent from a
   link-local address to ff02::2, is answered with an RA whose single prefix information option
   carries ``<Prefix>:<primary IPv4>::/64`` and whose origin indication carries the outer source
   the RS arrived from: that is how a client learns its NAT mapping and its Teredo address. The
   RA's IPv6 source is the server link-local address (C=1, port 3544, primary IPv4), its
   destination the RS's source, and the nonce of the RS's authentication header is echoed in a
   nonce-only header (RFC 4380 §5.2.2). If the C bit of the RS source is set, the RA goes out from
   the *other* server address than the one the RS arrived on, otherwise from the same one
   (RFC 4380 §5.3.2; RFC 5991 §3.2 forbids ignoring the bit).
   With a key file (secure qualification, RFC 4380 §5.2.2, `teredo.core.secure_qualification`)
   an RS signed with a client identifier is answered only if the identifier is listed and the
   HMAC-SHA1 value matches, and its RA carries the identifier and the value our copy of the
   secret gives over nonce, confirmation 0, origin indication and RA. `require_authentication`
   (``RequireAuthentication yes``) refuses every other RS; then the batch fast path (which
   answers nonce-only RSs from a template) is not used at all.
2. **Forwarding of bubbles and ICMPv6** (RFC 4380 §5.3.1). Indirect bubbles and echo replies for
   the server's own clients are encapsulated toward the mapping embedded in the client's address,
   sent from primary:3544 with an origin indication naming the real sender; the clients' direct
   IPv6 connectivity tests (ICMPv6 echo requests to native hosts, RFC 4380 §5.2.9) are emitted as
   native IPv6.

Every datagram goes through the seven acceptance checks of RFC 4380 §5.3.1 in order: well
formed (rule 1); a bubble or ICMPv6 (rule 2); a global unicast IPv4 source (rule 3); then accepted
as an RS (rule 4), as traffic from a Teredo source whose embedded mapping equals the outer source
(rule 5), or as traffic from a non-Teredo source to one of this server's clients (rule 6);
anything else is discarded (rule 7). Before those, Miredo's hardening, which we share: datagrams
from our own addresses' port 3544 are dropped (loops), and a forwarded packet that is not a
bubble may carry at most MAX_FORWARDED_PAYLOAD bytes of IPv6 payload, so that the server is no
open relay.

There are no timers. The only state is a bounded table of token buckets keyed by IPv4 /32 (see
`SourceRateLimiter`): every answer (RA) and every forwarded packet spends one token of the outer
source's bucket, and a forward to a Teredo client also one of the destination's. This caps what
one host can make the server emit and what one victim can be sent by reflection (RFC 4380 §7.4.1),
while the table itself never grows beyond its limit whatever arrives.

What a spoofed flood can make the server send (reflection, RFC 4380 §7.4.1)
---------------------------------------------------------------------------

- At most one datagram out per datagram in, never more: an RS gets one RA, an accepted packet
  is forwarded once, everything else is dropped.
- Bytes per byte: the smallest RS the server answers is 48 bytes of UDP payload (an IPv6 header
  and the 8-byte RS) and gets 104 bytes (origin indication and RA); with a nonce, 61 gets 117.
  So at most 2.2 bytes of UDP payload per byte, 1.74 counting the IPv4 and UDP headers (132 for
  76). A forward adds at most the 8-byte origin indication to what it carries.
- Per IPv4 address, at most RATE_LIMIT (the ``RateLimit`` directive, default 100) answers and
  forwards per second after a burst of twice as many, whoever asks for them, as long as the
  address's bucket stays in the table. The table fails open: a flood from more than
  RATE_LIMIT_MAX_SOURCES (65 536) other addresses between two uses of an address evicts its
  bucket, and it starts again with a full burst. So a flood of F datagrams per second from
  spoofed sources can add at most ``2 * RateLimit * F / 65536`` per second to the victim's share
  (at F = 600 000, a flood of 53 MB per second: about 1 800 more RAs, 210 kB of payload).

Input from the network never raises: each discarded datagram is counted under a named reason in
`drops` (reasons listed in DROP_REASONS) and logged at debug level.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Final, NamedTuple, Protocol

from teredo.core.address import (
    _NON_GLOBAL_IPV4,  # the networks is_global_ipv4 excludes, for the C fast path's plan
    DEFAULT_MTU,
    IPV4_MASK,
    PORT_MASK,
    TEREDO_PORT,
    TEREDO_PREFIX,
    Endpoint,
    endpoint,
    ipv4_value,
    is_cone_link_local,
    is_global_ipv4,
    server_link_local,
)
from teredo.core.errors import LocalProtocolError, ParseError
from teredo.core.secure_qualification import ClientKey, is_authenticated, sign, verify
from teredo.core.wire import (
    ALL_ROUTERS,
    IPV6_HEADER_LENGTH,
    Authentication,
    ICMPv6Type,
    NextHeader,
    OriginIndication,
    PrefixInformation,
    RouterAdvertisement,
    encode_router_advertisement,
    is_router_solicitation,
    ones_complement_sum,
    parse_teredo_packet,
    push_authentication,
    push_origin_indication,
)

logger = logging.getLogger(__name__)

# Miredo's hardening, which we share: a forwarded IPv6 packet that is not a bubble may carry at
# most this many bytes of IPv6 payload. Echo tests and echo replies fit; bulk traffic does not,
# so the server cannot be used as an open relay. A deliberate RFC 4380 deviation shared with
# Miredo (which says Microsoft servers do the same). Our own client's echo test must fit in it.
MAX_FORWARDED_PAYLOAD: Final = 88

# RFC 6081 §4 trailers are forwarded unchanged: RFC 6081 does not revise the server's rules, but
# its bubbles only work when their trailers reach the peer (Miredo, too, forwards everything after
# the Teredo headers). The known trailer types fit in 44 bytes together (nonce 6, alternate
# address <= 28, ND option 6, random port 4); this cap leaves room for future types without
# letting a "bubble" carry kilobytes.
MAX_FORWARDED_TRAILERS: Final = 128

# Rate limits (RFC 4380 §7.3.5, §7.4.1: a server's main threats are brute-force DoS and
# reflection). One token bucket per IPv4 /32; a whole carrier-grade NAT shares one address, hence
# generous defaults (a client sends an RS every 30 s and an echo test per new native peer). The
# module documentation gives the bound they put on reflection; ``RateLimit N`` sets the rate to
# N and the burst to 2 N (teredo.programs.server_daemon), 0 turns the limit off.
RATE_LIMIT_PER_SECOND: Final = 100.0
RATE_LIMIT_BURST: Final = 2 * RATE_LIMIT_PER_SECOND
RATE_LIMIT_MAX_SOURCES: Final = 65536  # bounded table: least recently used entry evicted

# RFC 4291 §2.4: global unicast is 2000::/3; the server never forwards anything else natively
# (RFC 4380 §5.3.1: MUST NOT forward to a destination that is not of global scope).
GLOBAL_UNICAST_IPV6: Final = IPv6Network("2000::/3")

DROP_REASONS: Final[dict[str, str]] = {
    "loop": "from one of our own addresses' port 3544, or toward one (as Miredo)",
    "malformed": "not a well-formed Teredo IPv6 packet (RFC 4380 §5.3.1 rule 1)",
    "origin_indication": "carried an origin indication, which only servers insert",
    "not_bubble_or_icmpv6": "neither a bubble nor ICMPv6 (rule 2)",
    "not_global_source": "outer IPv4 source is not global unicast (rule 3)",
    "bad_router_solicitation": "to ff02::2 from link-local but not a valid RS (rule 4)",
    "spoofed_source": "Teredo IPv6 source does not match the outer IPv4 source and port (rule 5)",
    "not_our_client": "non-Teredo source, destination not one of our clients (rules 6, 7)",
    "local_not_rs": "for ff02::2 or our link-local address but not an RS (as Miredo)",
    "destination_not_global": "IPv6 destination is not global unicast (RFC 4380 §5.3.1)",
    "destination_ipv4_not_global": "Teredo destination embeds a non-global IPv4 or port 0",
    "bubble_to_native": "a bubble toward a native IPv6 host (nothing to forward)",
    "hop_limit_exceeded": "native forward with hop limit <= 1",
    "oversize": f"non-bubble with more than {MAX_FORWARDED_PAYLOAD} bytes of payload (as Miredo)",
    "oversize_trailers": f"more than {MAX_FORWARDED_TRAILERS} bytes of RFC 6081 trailers",
    "rate_limited": "the source's or destination's token bucket is empty",
    "authentication_required": "an RS without a client key while RequireAuthentication is on",
    "unknown_client": "an RS signed with a client identifier the key file does not list",
    "authentication_failed": "an RS whose authentication value is wrong (RFC 4380 §5.2.2)",
}


class OutgoingDatagram(NamedTuple):
    """A UDP datagram to send from `source`:3544 to `destination`."""

    data: bytes
    destination: Endpoint
    source: IPv4Address


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the core needs from the configuration (miredo-server.conf plus our additions)."""

    primary: IPv4Address
    secondary: IPv4Address
    prefix: IPv6Network = TEREDO_PREFIX  # Prefix: the /32 the client /64 is built under
    mtu: int = DEFAULT_MTU  # InterfaceMTU: advertised in the RA's MTU option (RFC 4380 §5.1.2)
    allow_private: bool = False  # AllowPrivateAddresses: labs only, relaxes IPv4 global checks
    rate_per_second: float | None = RATE_LIMIT_PER_SECOND  # None disables rate limiting
    rate_burst: float = RATE_LIMIT_BURST
    rate_max_sources: int = RATE_LIMIT_MAX_SOURCES
    # RequireAuthentication: answer only RSs signed with a client key (RFC 4380 §5.2.2); the
    # keys themselves are given by `TeredoServer.set_client_keys`.
    require_authentication: bool = False

    def __post_init__(self) -> None:
        if self.primary == self.secondary:
            raise ValueError("the primary and secondary server addresses must differ")
        if self.prefix.prefixlen != 32:
            raise ValueError(f"a Teredo prefix is a /32, not /{self.prefix.prefixlen}")
        if not 1280 <= self.mtu <= 65535:
            raise ValueError(f"MTU {self.mtu} is not between 1280 and 65535")
        if self.rate_max_sources < 1 or self.rate_burst < 1:
            raise ValueError("rate limit burst and table size must be at least 1")


class RateLimiter(Protocol):
    """What the server needs of a per-source limiter: `SourceRateLimiter`, or its C twin
    `teredo._accel.RateLimiter` (chosen by `teredo.adapters.accel`)."""

    rate: float
    burst: float

    @property
    def max_entries(self) -> int: ...

    def allow(self, key: int, now: float, /) -> bool: ...

    def __len__(self) -> int: ...


class SourceRateLimiter:
    """Token buckets keyed by an IPv4 address (as int), in a table of bounded size.

    Each key may spend `burst` tokens at once and earns `rate` tokens per second. The table is
    kept in least-recently-used order (an OrderedDict: `move_to_end` on every use and
    `popitem(last=False)` to evict are O(1), whatever the number of sources); when it is full
    the least recently used entry is evicted. Evicting forgets a bucket, so an attacker cycling
    through more than `max_entries` spoofed sources only gets fresh buckets for them: the limit
    fails open for those sources, never closed for others, and memory stays bounded.

    The C module has a twin, `teredo._accel.RateLimiter(rate, burst, max_entries, seed=None)`,
    with the same decisions: a fixed-size hash table (keyed with a random seed, so that spoofed
    sources cannot be chosen to collide) with an LRU list, for the server's batch fast path.
    `max_entries` is fixed at construction in both.
    """

    __slots__ = ("_buckets", "_max_entries", "burst", "rate")

    def __init__(self, rate: float, burst: float, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.rate = rate
        self.burst = burst
        self._max_entries = max_entries
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()

    @property
    def max_entries(self) -> int:
        return self._max_entries

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: int, now: float, /) -> bool:
        """Spend one token of `key`'s bucket if it has one."""
        buckets = self._buckets
        entry = buckets.get(key)
        if entry is None:
            tokens = self.burst
            if len(buckets) >= self._max_entries:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            tokens = min(self.burst, entry[0] + max(0.0, now - entry[1]) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        buckets[key] = (tokens, now)
        return allowed


# ---------------------------------------------------------------------------------------------
# The batch fast path: Router Solicitations answered from a template (RFC 4380 §5.3.2)
#
# Under a flood of RSs the per-datagram path above costs tens of microseconds of Python per
# answer. The server daemon therefore receives a batch of datagrams at a time into one buffer
# (`ServerBatch`: up to BATCH_SIZE slots of SLOT_BYTES, one RECORD each) and hands it to
# `TeredoServer.receive_batch`, which gives the whole batch to an *answer function*: the C
# `teredo._accel.answer_solicitations` or its twin `python_answer_solicitations` below (same
# arguments, same decisions, byte-identical answers; `teredo.adapters.accel` chooses). For each
# datagram it decides, in the order of `_receive`'s checks:
#
# - LOOP: from our own address's port 3544 (the first check of all);
# - SLOW: anything but an RS of the common shape, handed to `receive_datagram` in its turn (so
#   that every datagram meets the shared limiter in arrival order, whichever path takes it); the
#   shape is an optional nonce-only authentication header (RFC 4380 §5.1.1: indicator 1,
#   client id and authentication value empty), then IPv6 from fe80::/10 to ff02::2 with next
#   header 58 and an 8-byte payload, and nothing after it (RFC 4380 §5.2.1: the RS of Miredo
#   and Windows clients);
# - NOT_GLOBAL_SOURCE (rule 3, unless AllowPrivateAddresses), BAD_ROUTER_SOLICITATION (rule 4:
#   hop limit 255, ICMPv6 type 133 code 0, valid checksum) and RATE_LIMITED (the source's
#   bucket in the one limiter both paths share), each counted under its DROP_REASONS name;
# - ANSWERED: the RA written into the output buffer from the plan's template (built by
#   `solicitation_plan` for the settings), changing only the nonce (echoed, confirmation 0,
#   RFC 4380 §5.2.2), the origin indication (the RS's outer source, §5.3.2), the IPv6
#   destination (the RS's source) and the ICMPv6 checksum (from the template's partial sum),
#   with the socket to send it from: the one it arrived on, or the other when the RS's source
#   has C=1 (§5.3.2; RFC 5991 §3.2).
#
# The answers are exactly what `_answer_router_solicitation` would have sent, and the counters
# and drops end up the same (tests/unit/test_server_batch.py checks both paths against each
# other, and the C function against its twin).

BATCH_SIZE: Final = 64  # datagrams per recvmmsg and per sendmmsg (at most MAX_BATCH)
MAX_BATCH: Final = 256  # the largest count the answer and batch I/O functions accept
SLOT_BYTES: Final = 65536  # a receive slot holds any UDP payload over IPv4 (at most 65507)
ANSWER_SLOT_BYTES: Final = 128  # an answer slot holds the largest RA (117 bytes)
RECORD: Final = struct.Struct("=IIHH")
"""One datagram of a batch: IPv4 address (host order), length, port, tag. A received datagram's
tag is the answer function's `Verdict`; an answer's is the socket to send it from (0: primary,
1: secondary)."""

AUTH_BYTES: Final = 13  # a nonce-only authentication header (RFC 4380 §5.1.1)
ORIGIN_BYTES: Final = 8  # an origin indication (RFC 4380 §5.1.1)
RS_BYTES: Final = IPV6_HEADER_LENGTH + 8  # an RS without options (RFC 4861 §4.1)
_NONCE_ONLY: Final = b"\x00\x01\x00\x00"  # indicator, client id length 0, auth length 0
_NETWORK: Final = struct.Struct("=II")  # a (network, mask) pair of the plan, host order
_PSEUDO_RS: Final = 8 + NextHeader.ICMPV6  # an RS's pseudo-header length and next header


class Verdict(IntEnum):
    """What the answer function decided for one datagram (the tag of its RECORD)."""

    SLOW = 0  # for receive_datagram
    ANSWERED = 1
    LOOP = 2
    NOT_GLOBAL_SOURCE = 3
    BAD_ROUTER_SOLICITATION = 4
    RATE_LIMITED = 5


class SolicitationPlan(NamedTuple):
    """What the answer function needs of the settings, computed once per configuration."""

    template: bytes  # the RA with a nonce-only header and an origin indication, see below
    checksum_base: int  # folded sum of what the RA's checksum covers, but its destination
    primary: int
    secondary: int
    allow_private: bool
    non_global: bytes  # _NETWORK pairs: the IPv4 networks that are not global (rule 3)


AnswerResult = tuple[int, int, int, int, int, int, int]
"""(answers, of which cone, loop, not_global_source, bad_router_solicitation, rate_limited,
SLOW datagrams handed to `slow`)."""

AnswerFunction = Callable[
    [
        bytearray | memoryview,  # data: received datagrams, one per slot
        int,  # slot: bytes per receive slot
        bytearray | memoryview,  # records: one RECORD per datagram, tags written here
        int,  # count
        SolicitationPlan,
        RateLimiter | None,
        float,  # now
        int,  # local: the socket the batch arrived on, 0 primary, 1 secondary
        bytearray | memoryview,  # out: answers, one per answer slot
        int,  # out_slot
        bytearray | memoryview,  # out_records: one RECORD per answer
        Callable[[int], object],  # slow: called with the index of each SLOW datagram
    ],
    AnswerResult,
]


def solicitation_plan(settings: ServerSettings) -> SolicitationPlan:
    """The RA template and the rest of the answer function's plan for `settings`.

    The template is what `_answer_router_solicitation` sends for an RS with a nonce, with the
    nonce, the origin indication, the IPv6 destination and the ICMPv6 checksum zero: a nonce-only
    authentication header (13 bytes), an origin indication (8), then the RA (RFC 4380 §5.3.2:
    from the server's link-local address, one prefix information option for the client /64, an
    MTU option). Without a nonce the answer is the template without its first 13 bytes.
    """
    primary = settings.primary
    client_prefix = IPv6Address(int(settings.prefix.network_address) | int(primary) << 64)
    ra = encode_router_advertisement(
        RouterAdvertisement(
            source=server_link_local(primary),
            destination=IPv6Address(0),
            prefixes=(PrefixInformation(client_prefix),),
            mtu=settings.mtu,
        )
    )
    ra = ra[: IPV6_HEADER_LENGTH + 2] + bytes(2) + ra[IPV6_HEADER_LENGTH + 4 :]
    message = ra[IPV6_HEADER_LENGTH:]
    pseudo = struct.pack("!I3xB", len(message), NextHeader.ICMPV6)
    template = _NONCE_ONLY + bytes(AUTH_BYTES - len(_NONCE_ONLY)) + bytes(ORIGIN_BYTES) + ra
    return SolicitationPlan(
        template=template,
        checksum_base=ones_complement_sum(ra[8:24] + pseudo + message),
        primary=int(primary),
        secondary=int(settings.secondary),
        allow_private=settings.allow_private,
        non_global=b"".join(_NETWORK.pack(network, mask) for network, mask in _NON_GLOBAL_IPV4),
    )


def python_answer_solicitations(
    data: bytearray | memoryview,
    slot: int,
    records: bytearray | memoryview,
    count: int,
    plan: SolicitationPlan,
    limiter: RateLimiter | None,
    now: float,
    local: int,
    out: bytearray | memoryview,
    out_slot: int,
    out_records: bytearray | memoryview,
    slow: Callable[[int], object],
) -> AnswerResult:
    """Decide for each of the `count` datagrams of a batch, answering the common RSs.

    Datagram i is `data[i * slot:][:length]`, its source and length in `records[i]` (RECORD);
    its `Verdict` is written into that record's tag (see the section comment above). Answer k is
    written to `out[k * out_slot:]`, its destination, length and socket in `out_records[k]`.
    `slow(i)` is called for each SLOW datagram when its turn comes, so that the datagrams spend
    from the limiter in the order they arrived whichever path takes them; an exception it raises
    stops the batch and propagates. Raises ValueError when the buffers cannot hold `count`
    datagrams or answers, or a record is longer than its slot. The C twin
    `teredo._accel.answer_solicitations` decides the same and writes the same bytes; it calls its
    own `RateLimiter` directly and any other limiter through `allow`.
    """
    template, base, primary, secondary, allow_private, non_global = plan
    if (
        len(template) < AUTH_BYTES + ORIGIN_BYTES + IPV6_HEADER_LENGTH + 4
        or len(template) > out_slot
        or len(non_global) % _NETWORK.size
    ):
        raise ValueError("not a solicitation plan")
    if (
        slot <= 0
        or out_slot <= 0
        or not 0 <= count <= MAX_BATCH
        or count > len(data) // slot
        or count > len(records) // RECORD.size
        or count > len(out) // out_slot
        or count > len(out_records) // RECORD.size
    ):
        raise ValueError("batch buffers too small for the count")
    if local not in (0, 1):
        raise ValueError("local must be 0 (primary) or 1 (secondary)")
    networks = list(_NETWORK.iter_unpack(non_global))
    if len(networks) > 32:
        raise ValueError("too many non-global networks")
    entries = [RECORD.unpack_from(records, i * RECORD.size) for i in range(count)]
    if any(entry[1] > slot for entry in entries):
        raise ValueError("a datagram is longer than its slot")
    answers = cone = handed = 0
    drops = [0] * len(Verdict)
    for i, (address, length, port, _) in enumerate(entries):
        start = i * slot
        verdict = Verdict.SLOW
        rs = b""
        auth = False
        if address in (primary, secondary) and port == TEREDO_PORT:
            verdict = Verdict.LOOP
        else:
            if length == AUTH_BYTES + RS_BYTES and bytes(data[start : start + 4]) == _NONCE_ONLY:
                rs = bytes(data[start + AUTH_BYTES : start + AUTH_BYTES + RS_BYTES])
                auth = True
            elif length == RS_BYTES:
                rs = bytes(data[start : start + RS_BYTES])
            if (
                rs
                and rs[0] >> 4 == 6
                and rs[4:7] == b"\x00\x08\x3a"
                and rs[8] == 0xFE
                and rs[9] & 0xC0 == 0x80
                and rs[24:40] == ALL_ROUTERS.packed
            ):
                if not allow_private and any(address & m == n for n, m in networks):
                    verdict = Verdict.NOT_GLOBAL_SOURCE
                elif (
                    rs[7] != 255
                    or rs[40] != ICMPv6Type.ROUTER_SOLICITATION
                    or rs[41] != 0
                    or not _sums_to_zero(rs)
                ):
                    verdict = Verdict.BAD_ROUTER_SOLICITATION
                elif limiter is not None and not limiter.allow(address, now):
                    verdict = Verdict.RATE_LIMITED
                else:
                    verdict = Verdict.ANSWERED
        RECORD.pack_into(records, i * RECORD.size, address, length, port, verdict)
        if verdict == Verdict.SLOW:
            slow(i)
            handed += 1
            continue
        if verdict != Verdict.ANSWERED:
            drops[verdict] += 1
            continue
        answer = bytearray(template if auth else template[AUTH_BYTES:])
        if auth:
            answer[4:12] = data[start + 4 : start + 12]
        origin = AUTH_BYTES if auth else 0
        answer[origin + 2 : origin + ORIGIN_BYTES] = struct.pack(
            "!HI", port ^ PORT_MASK, address ^ IPV4_MASK
        )
        ra = origin + ORIGIN_BYTES
        answer[ra + 24 : ra + 40] = rs[8:24]
        folded = (base + int.from_bytes(rs[8:24], "big")) % 0xFFFF or 0xFFFF
        answer[ra + IPV6_HEADER_LENGTH + 2 : ra + IPV6_HEADER_LENGTH + 4] = (
            0xFFFF - folded
        ).to_bytes(2, "big")
        cone_bit = rs[16] >> 7
        position = answers * out_slot
        out[position : position + len(answer)] = answer
        socket = local ^ cone_bit
        RECORD.pack_into(out_records, answers * RECORD.size, address, len(answer), port, socket)
        answers += 1
        cone += cone_bit
    return (
        answers,
        cone,
        drops[Verdict.LOOP],
        drops[Verdict.NOT_GLOBAL_SOURCE],
        drops[Verdict.BAD_ROUTER_SOLICITATION],
        drops[Verdict.RATE_LIMITED],
        handed,
    )


def _sums_to_zero(rs: bytes) -> bool:
    """Whether an RS's ICMPv6 checksum is valid: the one's complement sum of its pseudo-header
    and message is 0xFFFF (RFC 4443 §2.3), i.e. their value is 0 modulo 0xFFFF (wire.py)."""
    value = int.from_bytes(rs[8:40], "big") + _PSEUDO_RS + int.from_bytes(rs[40:48], "big")
    return value % 0xFFFF == 0


class ServerBatch:
    """The buffers of one batch: received datagrams and their records, answers and theirs."""

    __slots__ = ("data", "out", "out_records", "records", "size", "view")

    def __init__(
        self,
        size: int = BATCH_SIZE,
        allocate: Callable[[int], bytearray | memoryview] = bytearray,
    ) -> None:
        """`allocate(n)` makes the n-byte receive buffer (the daemon's allocates its pages only
        when datagrams land there: `teredo.adapters.buffers.lazy_buffer`)."""
        if not 1 <= size <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} datagrams")
        self.size = size
        self.data: bytearray | memoryview = allocate(size * SLOT_BYTES)
        self.view = memoryview(self.data)
        self.records = bytearray(size * RECORD.size)
        self.out = bytearray(size * ANSWER_SLOT_BYTES)
        self.out_records = bytearray(size * RECORD.size)

    def answer(self, index: int) -> tuple[bytes, Endpoint, int]:
        """Answer `index` as (payload, destination, socket): for tests and logs."""
        address, length, port, socket = RECORD.unpack_from(self.out_records, index * RECORD.size)
        start = index * ANSWER_SLOT_BYTES
        return bytes(self.out[start : start + length]), endpoint(address, port), socket


class TeredoServer:
    """A Teredo server's protocol logic. Feed datagrams with the time; drain the outputs."""

    def __init__(
        self,
        settings: ServerSettings,
        new_limiter: Callable[[float, float, int], RateLimiter] = SourceRateLimiter,
    ) -> None:
        """`new_limiter(rate, burst, max_entries)` makes the per-source limiter that every path
        spends from (`SourceRateLimiter`, or the C twin the C answer function needs)."""
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self._datagrams: list[OutgoingDatagram] = []
        self._native: list[bytes] = []
        self._new_limiter = new_limiter
        self._limiter: RateLimiter | None = None
        self._client_keys: dict[bytes, bytes] | None = None
        self.settings = settings
        self._apply(settings)

    # -- configuration -------------------------------------------------------------------------

    def _apply(self, settings: ServerSettings) -> None:
        self.settings = settings
        primary = settings.primary
        self._primary_int = int(primary)
        self._own = {int(settings.primary), int(settings.secondary)}
        self._link_local = server_link_local(primary)
        self._local_destinations = {
            ALL_ROUTERS.packed,
            self._link_local.packed,
            server_link_local(settings.secondary).packed,
        }
        self._prefix32 = int(settings.prefix.network_address) >> 96
        self._teredo_prefixes = {self._prefix32, int(TEREDO_PREFIX.network_address) >> 96}
        self._client_prefix = IPv6Address(int(settings.prefix.network_address) | int(primary) << 64)
        self._plan = solicitation_plan(settings)
        if settings.rate_per_second is None:
            self._limiter = None
        elif self._limiter is None or self._limiter.max_entries != settings.rate_max_sources:
            # A new table size starts a new table (both limiters fix their size at creation).
            self._limiter = self._new_limiter(
                settings.rate_per_second, settings.rate_burst, settings.rate_max_sources
            )
        else:
            self._limiter.rate = settings.rate_per_second
            self._limiter.burst = settings.rate_burst

    def set_client_keys(self, keys: Mapping[bytes, bytes] | None) -> None:
        """The clients' keys for secure qualification, identifier -> secret (RFC 4380 §5.2.2),
        replacing the previous ones (the key file, at start and on SIGHUP). None (no key
        file) turns secure qualification off: a signed RS is then answered as a nonce-only
        one, as before, and the client decides whether that is enough."""
        self._client_keys = None if keys is None else dict(keys)

    @property
    def client_key_count(self) -> int:
        return 0 if self._client_keys is None else len(self._client_keys)

    def reconfigure(self, settings: ServerSettings) -> None:
        """Apply new settings (SIGHUP); counters and rate-limit state are kept.

        The addresses are bound by the server daemon; it decides whether they may change.
        """
        self._apply(settings)

    @property
    def link_local(self) -> IPv6Address:
        """The server's link-local address, source of its RAs (RFC 4380 §5.3.2)."""
        return self._link_local

    @property
    def client_prefix(self) -> IPv6Network:
        """The /64 advertised to clients (RFC 4380 §5.3.2)."""
        return IPv6Network((self._client_prefix, 64))

    @property
    def rate_limit_entries(self) -> int:
        return len(self._limiter) if self._limiter is not None else 0

    @property
    def limiter(self) -> RateLimiter | None:
        """The per-source limiter every path spends from; None when rate limiting is off."""
        return self._limiter

    @property
    def plan(self) -> SolicitationPlan:
        """The answer function's plan for the current settings (`solicitation_plan`)."""
        return self._plan

    # -- the contract --------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[OutgoingDatagram]:
        """UDP datagrams produced since the last call, each with the local address to use."""
        out, self._datagrams = self._datagrams, []
        return out

    def native_packets_to_send(self) -> list[bytes]:
        """Native IPv6 packets (header included) to emit, e.g. clients' echo tests."""
        out, self._native = self._native, []
        return out

    @property
    def has_output(self) -> bool:
        """Whether datagrams or native packets wait to be taken (a cheap test per batch)."""
        return bool(self._datagrams or self._native)

    def get_timer(self) -> float | None:
        """The server has no timers (same contract as the other roles)."""
        return None

    def handle_timer(self, now: float) -> None:
        """Nothing to do: the server keeps no per-client state that expires."""

    def receive_datagram(
        self, data: bytes, source: Endpoint, local: IPv4Address, now: float
    ) -> None:
        """Process one UDP datagram that arrived on `local`:3544 from `source`.

        Never raises for anything `data` or `source` contain; `local` must be one of the two
        server addresses (a bug in the caller otherwise).
        """
        local_int = int(local)
        if local_int not in self._own:
            raise LocalProtocolError(f"{local} is not one of this server's addresses")
        self.counters["received"] += 1
        reason = self._receive(data, source, local, now)
        if reason is not None:
            self.drops[reason] += 1
            logger.debug("dropped datagram from %s: %s", source, reason)

    def receive_batch(
        self,
        batch: ServerBatch,
        count: int,
        local: IPv4Address,
        now: float,
        answer: AnswerFunction = python_answer_solicitations,
    ) -> int:
        """Process the first `count` datagrams of `batch`, which arrived on `local`:3544.

        `answer` (the C `answer_solicitations` or its twin) answers the common RSs into the
        batch's output buffers and counts its drops; every other datagram goes through
        `receive_datagram` in its turn, whose outputs wait in `datagrams_to_send` as usual: the
        outcome is that of `receive_datagram` for each datagram in order. Returns how many
        answers `batch` holds: answer k's destination, length and socket (0 primary, 1
        secondary) are in `batch.out_records[k]` (RECORD), its bytes at `k * ANSWER_SLOT_BYTES`
        in `batch.out`.
        """
        local_int = int(local)
        if local_int not in self._own:
            raise LocalProtocolError(f"{local} is not one of this server's addresses")
        view, records = batch.view, batch.records

        def slow(index: int) -> None:
            address, length, port, _ = RECORD.unpack_from(records, index * RECORD.size)
            start = index * SLOT_BYTES
            self.receive_datagram(
                bytes(view[start : start + length]), endpoint(address, port), local, now
            )

        if self.settings.require_authentication:
            # The answer functions answer plain and nonce-only RSs, which this server must
            # refuse: every datagram takes the full path, where RSs are checked (§5.2.2).
            for index in range(count):
                slow(index)
            return 0

        answers, cone, loop, not_global, bad, limited, handed = answer(
            batch.data,
            SLOT_BYTES,
            records,
            count,
            self._plan,
            self._limiter,
            now,
            0 if local_int == self._primary_int else 1,
            batch.out,
            ANSWER_SLOT_BYTES,
            batch.out_records,
            slow,
        )
        counters, drops = self.counters, self.drops
        if count > handed:  # receive_datagram counted the others
            counters["received"] += count - handed
        if answers:
            counters["router_solicitations"] += answers
            counters["router_advertisements"] += answers
        if cone:
            counters["router_advertisements_cone"] += cone
        if limited:
            counters["router_solicitations"] += limited
        if answers < count - handed:  # some were dropped in the answer function
            for reason, dropped in (
                ("loop", loop),
                ("not_global_source", not_global),
                ("bad_router_solicitation", bad),
                ("rate_limited", limited),
            ):
                if dropped:
                    drops[reason] += dropped
            logger.debug(
                "dropped in the batch path: %d loop, %d not global, %d bad RS, %d rate limited",
                loop,
                not_global,
                bad,
                limited,
            )
        return answers

    # -- processing ----------------------------------------------------------------------------

    def _receive(self, data: bytes, source: Endpoint, local: IPv4Address, now: float) -> str | None:
        """Return a drop reason, or None when the datagram was handled."""
        source_int = ipv4_value(source[0])
        # As Miredo: a datagram from our own address and port would make a loop.
        if source_int in self._own and source[1] == TEREDO_PORT:
            return "loop"
        # Rule 1: a well-formed Teredo IPv6 packet.
        try:
            packet = parse_teredo_packet(data)
        except ParseError:
            return "malformed"
        if packet.origin is not None:
            return "origin_indication"
        ipv6 = packet.ipv6
        next_header = ipv6[6]
        bubble = next_header == NextHeader.NO_NEXT_HEADER and len(ipv6) == IPV6_HEADER_LENGTH
        # Rule 2: only bubbles and ICMPv6 (a server never carries data, RFC 4380 §3.4).
        if not bubble and next_header != NextHeader.ICMPV6:
            return "not_bubble_or_icmpv6"
        # Rule 3: the IPv4 source must be global unicast.
        if not self.settings.allow_private and not is_global_ipv4(source_int):
            return "not_global_source"
        ipv6_source = ipv6[8:24]
        ipv6_destination = ipv6[24:40]
        # Rule 4: an RS from a link-local source to ff02::2.
        link_local_source = ipv6_source[0] == 0xFE and ipv6_source[1] & 0xC0 == 0x80
        if link_local_source and ipv6_destination == ALL_ROUTERS.packed:
            if not is_router_solicitation(ipv6):
                return "bad_router_solicitation"
            return self._answer_router_solicitation(
                ipv6, packet.authentication, source_int, source, local, now
            )
        source_is_teredo = int.from_bytes(ipv6_source[:4], "big") in self._teredo_prefixes
        destination_is_teredo = int.from_bytes(ipv6_destination[:4], "big") in self._teredo_prefixes
        ours = destination_is_teredo and int.from_bytes(ipv6_destination[4:8], "big") == (
            self._primary_int
        )
        if source_is_teredo:
            # Rule 5: the embedded mapping must be the outer source (anti-spoofing).
            mapped = int.from_bytes(ipv6_source[12:16], "big") ^ IPV4_MASK
            port = int.from_bytes(ipv6_source[10:12], "big") ^ PORT_MASK
            if mapped != source_int or port != source[1]:
                return "spoofed_source"
        elif not ours:
            # Rules 6 and 7: a non-Teredo source may only reach this server's clients.
            if ipv6_destination in self._local_destinations:
                return "local_not_rs"
            return "not_our_client"
        return self._forward(
            data, packet.authentication, ipv6, bubble, ours, source_int, source, now
        )

    def _forward(
        self,
        data: bytes,
        authentication: Authentication | None,
        ipv6: bytes,
        bubble: bool,
        ours: bool,
        source_int: int,
        source: Endpoint,
        now: float,
    ) -> str | None:
        """Route an accepted packet toward its destination (RFC 4380 §5.3.1, after the rules)."""
        destination = ipv6[24:40]
        if destination in self._local_destinations:
            return "local_not_rs"  # RFC 4380 §5.3.1 would answer echo requests; Miredo drops them
        if IPv6Address(destination) not in GLOBAL_UNICAST_IPV6:
            return "destination_not_global"
        if not bubble and len(ipv6) - IPV6_HEADER_LENGTH > MAX_FORWARDED_PAYLOAD:
            return "oversize"
        if int.from_bytes(destination[:4], "big") in self._teredo_prefixes:
            mapped = int.from_bytes(destination[12:16], "big") ^ IPV4_MASK
            port = int.from_bytes(destination[10:12], "big") ^ PORT_MASK
            if mapped in self._own:
                return "loop"
            if port == 0 or (not self.settings.allow_private and not is_global_ipv4(mapped)):
                return "destination_ipv4_not_global"
            # Everything after the Teredo headers, RFC 6081 trailers included, goes through.
            offset = 0 if authentication is None else len(push_authentication(authentication))
            rest = data[offset:]
            if len(rest) - len(ipv6) > MAX_FORWARDED_TRAILERS:
                return "oversize_trailers"
            if not self._spend(source_int, now) or not self._spend(mapped, now):
                return "rate_limited"
            if ours:
                # RFC 4380 §5.3.1: tell our client where the packet really came from.
                rest = (
                    push_origin_indication(OriginIndication(IPv4Address(source_int), source[1]))
                    + rest
                )
                self.counters["origin_indications"] += 1
            target = endpoint(mapped, port)
            self._datagrams.append(OutgoingDatagram(rest, target, self.settings.primary))
            self.counters["forwarded_teredo"] += 1
            return None
        # RFC 4380 §5.3.1: a native destination is routed natively (the clients' direct
        # connectivity test, §5.2.9).
        if bubble:
            return "bubble_to_native"
        hop_limit = ipv6[7]
        if hop_limit <= 1:
            return "hop_limit_exceeded"
        if not self._spend(source_int, now):
            return "rate_limited"
        # The server routes from the Teredo link onto the native one: decrement the hop limit
        # (not covered by the ICMPv6 checksum).
        self._native.append(ipv6[:7] + bytes((hop_limit - 1,)) + ipv6[8:])
        self.counters["forwarded_native"] += 1
        return None

    def _answer_router_solicitation(
        self,
        rs: bytes,
        authentication: Authentication | None,
        source_int: int,
        source: Endpoint,
        local: IPv4Address,
        now: float,
    ) -> str | None:
        """Answer an RS with an RA (RFC 4380 §5.3.2), signed when the RS was (§5.2.2)."""
        self.counters["router_solicitations"] += 1
        key = None
        keys = self._client_keys
        if keys is not None and is_authenticated(authentication):
            assert authentication is not None
            secret = keys.get(authentication.client_id)
            if secret is None:
                return "unknown_client"
            # RFC 4380 §5.2.2: recompute the value; a mismatch MUST be discarded. An RS has no
            # origin indication (only a server inserts one), so none is covered.
            if not verify(authentication, secret, rs):
                return "authentication_failed"
            key = ClientKey(authentication.client_id, secret)
        elif self.settings.require_authentication:
            return "authentication_required"
        # RFC 4380 §5.3.2: the RA's destination (the RS's source) must be global unicast; rule 3
        # checked it already.
        if not self._spend(source_int, now):
            return "rate_limited"
        rs_source = IPv6Address(rs[8:24])
        ra = encode_router_advertisement(
            RouterAdvertisement(
                source=self._link_local,
                destination=rs_source,
                prefixes=(PrefixInformation(self._client_prefix),),
                mtu=self.settings.mtu,
            )
        )
        origin = push_origin_indication(OriginIndication(IPv4Address(source_int), source[1]))
        parts = []
        if key is not None:
            # Secure qualification (RFC 4380 §5.2.2): the client's identifier, its nonce,
            # confirmation 0 (our keys do not expire) and HMAC-SHA1 over nonce, confirmation,
            # origin indication and RA.
            assert authentication is not None
            parts.append(push_authentication(sign(key, authentication.nonce, ra, origin)))
            self.counters["router_advertisements_authenticated"] += 1
        elif authentication is not None:
            # No secure qualification: echo the nonce in a nonce-only header, confirmation 0
            # (RFC 4380 §5.2.2: the server repeats the client's nonce).
            parts.append(push_authentication(Authentication(nonce=authentication.nonce)))
        parts.append(origin)
        parts.append(ra)
        # RFC 4380 §5.3.2, RFC 5991 §3.2: C=1 -> answer from the other address (lets the client
        # tell a cone NAT).
        if is_cone_link_local(rs_source):
            primary, secondary = self.settings.primary, self.settings.secondary
            sender = secondary if local == primary else primary
            self.counters["router_advertisements_cone"] += 1
        else:
            sender = local
        self._datagrams.append(OutgoingDatagram(b"".join(parts), source, sender))
        self.counters["router_advertisements"] += 1
        return None

    def _spend(self, key: int, now: float) -> bool:
        return self._limiter is None or self._limiter.allow(key, now)
