"""Teredo relay and host-specific relay (RFC 4380 §5.4, §7.3): the relay's policy.

Theory of operation
-------------------
A relay is the shared peering engine (`teredo.core.peering.PeeringEngine`) with the relay's
policy, which lives here (the hooks at the end of `TeredoRelay`):

* **From the native side** (packets the kernel routes into the Teredo interface): only Teredo
  destinations are encapsulated (RFC 4380 §5.4.1); anything else is a routing error, dropped
  with a rate-limited ICMPv6 "no route" back to the sender. The embedded IPv4 and server must be
  global unicast (§5.4.1, §5.2.4). A trusted, valid peer gets the packet at its mapping;
  otherwise the packet is queued (at most `MaxQueueBytes` per peer) and bubbles go out: an
  indirect bubble via the peer's server (relay case 3) with an RFC 6081 nonce trailer, and a
  direct bubble to the embedded mapping (RFC 4380 §5.4.1 MAY, SHOULD behind a restricted NAT),
  repeated every 2 s, 4 at most; then the queue is dropped and ICMPv6 "address unreachable"
  goes to the sender.

* **From the Teredo side**: only Teredo sources (§5.4.2). The outer source must equal the
  mapping embedded in the source address or the mapping a trusted entry learned
  (anti-spoofing, §5.4.2), except for a bubble that answers one of ours: its IPv6 destination is
  our link-local cookie for its source (the source of our bubbles, see `teredo.core.peering`)
  or it carries our nonce trailer (RFC 6081 §5.2.4.4). That exception is how clients behind
  symmetric NATs reach native IPv6, as with Miredo. Bubbles are consumed; multicast is dropped;
  anything else unverified is dropped and counted by reason; other packets are forwarded
  natively when the relay serves their destination: for a relay anything that is neither
  Teredo, multicast, link-local, loopback nor unspecified.

* **Host-specific relay** (RFC 4380 §5.4's relay "for the host's own traffic"): the same engine
  on a dual-stack host with an unnumbered Teredo interface and a 2001::/32 route that is not
  advertised. It serves exactly the host's own addresses, which the relay daemon keeps up to
  date with `set_host_addresses`, and is never a client.

Peer states (data in `teredo.core.peers`): absent -> untrusted (queue + bubbles, retried every
2 s)
-> trusted (mapping proven) -> stale after 30 s without reception (bubbles again, the entry is
kept) -> expired by the sweep after `idle_timeout` (30 s, Miredo's relay value) without use, or
evicted least-recently-used when the table is full (`MaxPeers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from ipaddress import IPv6Address
from typing import Final

from teredo.core.address import (
    Endpoint,
    is_global_ipv4,
    teredo_mapped_ipv4,
    teredo_mapped_port,
    teredo_mapping,
)
from teredo.core.config import RelayConfig
from teredo.core.peering import PeeringEngine, PeeringSettings
from teredo.core.peers import PEER_VALIDITY, Peer
from teredo.core.status import HostSpecificRelayStatus, RelayEngineStatus
from teredo.core.wire import IPV6_HEADER_LENGTH, TeredoPacket, UnreachableCode

RELAY_IDLE_TIMEOUT: Final = PEER_VALIDITY  # Miredo's value: unused relay entries expire in 30 s
_BARE_BUBBLE: Final = bytes((0, 0, 59))  # payload length 0, next header 59 (no next header)


def relay_settings(config: RelayConfig) -> PeeringSettings:
    """The engine settings for a relay configuration."""
    return PeeringSettings(
        prefix=config.prefix,
        allow_private=config.allow_private_addresses,
        max_peers=config.max_peers,
        idle_timeout=RELAY_IDLE_TIMEOUT,
        max_queue_bytes=config.max_queue_bytes,
    )


def _is_unicast_beyond_link(address: bytes) -> bool:
    """Not multicast, link-local (fe80::/10), loopback or unspecified."""
    first = address[0]
    if first == 0xFF or (first == 0xFE and address[1] & 0xC0 == 0x80):
        return False
    return not (first == 0 and address[:15] == bytes(15) and address[15] <= 1)


class TeredoRelay(PeeringEngine):
    """A Teredo relay, or with `host_specific` a host-specific relay.

    `host_addresses` (host-specific only) are the host's own IPv6 addresses: the only
    destinations it forwards to and, since only the host's own packets are routed into its
    interface (its route is not advertised), the only sources it carries.
    """

    def __init__(
        self,
        settings: PeeringSettings,
        *,
        random_bytes: Callable[[int], bytes],
        secret: bytes,
        now: float,
        host_specific: bool = False,
        host_addresses: Iterable[IPv6Address | bytes] = (),
    ) -> None:
        super().__init__(settings, random_bytes=random_bytes, secret=secret, now=now)
        self.host_specific = host_specific
        self._host_addresses: frozenset[bytes] = frozenset()
        self.set_host_addresses(host_addresses)

    @classmethod
    def from_config(
        cls,
        config: RelayConfig,
        *,
        random_bytes: Callable[[int], bytes],
        secret: bytes,
        now: float,
        host_addresses: Iterable[IPv6Address | bytes] = (),
    ) -> TeredoRelay:
        return cls(
            relay_settings(config),
            random_bytes=random_bytes,
            secret=secret,
            now=now,
            host_specific=config.host_specific,
            host_addresses=host_addresses,
        )

    @property
    def host_addresses(self) -> frozenset[bytes]:
        return self._host_addresses

    def set_host_addresses(self, addresses: Iterable[IPv6Address | bytes]) -> None:
        """The host's own IPv6 addresses: what a host-specific relay serves."""
        self._host_addresses = frozenset(
            a.packed if isinstance(a, IPv6Address) else bytes(a) for a in addresses
        )

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, source: Endpoint, now: float
    ) -> None:
        """As the engine's, with a shortcut for what a flood of strangers sends most: a bare
        bubble (RFC 4380 §2.8) from an unknown, self-consistent Teredo source that does not
        answer one of ours (not addressed to a link-local cookie). The full path would consume
        it without an entry all the same; this decides it without parsing or building objects.
        """
        if (
            len(data) == IPV6_HEADER_LENGTH
            and data[4:7] == _BARE_BUBBLE
            and data[0] >> 4 == 6
            and data[24] != 0xFE  # fe80::/10 and fec0::/10: maybe one of our cookies
        ):
            src = bytes(data[8:24])
            if (
                src not in self.peers
                and self.is_teredo(src)
                and teredo_mapped_port(src) == source[1]
                and teredo_mapping(src)[0] == source[0]
                and (not self._check_global or is_global_ipv4(teredo_mapped_ipv4(src)))
            ):
                self.count("bubbles_received")
                return
        super().receive_datagram(data, source, now)

    def status(self) -> RelayEngineStatus | HostSpecificRelayStatus:
        if self.host_specific:
            served = sorted(str(IPv6Address(a)) for a in self._host_addresses)
            return {**self.engine_status(), "role": "host-specific relay", "host_addresses": served}
        return {**self.engine_status(), "role": "relay"}

    # -----------------------------------------------------------------------------------------
    # The relay's policy (the engine's hooks)

    def _serves(self, destination: bytes) -> bool:
        if self.host_specific:
            return destination in self._host_addresses
        return _is_unicast_beyond_link(destination) and not self.is_teredo(destination)

    def _on_unverified(self, packet: TeredoPacket, source: Endpoint, now: float) -> None:
        """Nothing unproven reaches the native side (RFC 4380 §5.4.2): drop it, by reason."""
        self.drop_unverified(packet)

    def _on_native_destination(self, packet: bytes, destination: bytes, now: float) -> None:
        """A relay encapsulates only toward Teredo addresses (RFC 4380 §5.4.1): anything else
        is a routing mistake, refused with a rate-limited ICMPv6 "no route" to the sender."""
        self.drop("non_teredo_destination")
        self.send_unreachable(packet, UnreachableCode.NO_ROUTE, now)

    def _retry_native(self, address: bytes, peer: Peer, now: float) -> None:
        """A relay never sets up a native peer; an entry left from a reconfigured prefix gives
        up at its first retry."""
        if peer.queue:
            self.fail_setup(address, peer, now)

    def _bubble_source(self, destination: bytes) -> bytes:
        """A relay's bubbles come from its link-local cookie for the destination (see
        `teredo.core.peering.bubble_cookie`): the client's direct answer then proves itself."""
        return self.cookie(destination)
