"""Which RFC 6081 extensions the client uses, and which ones served each peer.

RFC 6081 §3 makes every extension optional (each SHOULD be implemented); Windows can turn each
off, and so can the configuration (`teredo.core.config`: ``UPnP``, ``Hairpinning``,
``ServerLoadReduction``, ``PortPreserving``, ``SequentialPorts``). `Extensions` is that choice;
`PeerExtension` names what an extension did for one peer, for the status document's aggregate
counts (`teredo status`: how many peers each extension serves; never one metric per peer).

The trailers they send are built here from `teredo.core.trailers`' codecs.
"""

from __future__ import annotations

from enum import IntFlag

from teredo.core.address import Endpoint
from teredo.core.record import record  # a frozen dataclass without dataclasses' start-up cost
from teredo.core.trailers import (
    ALTERNATE_ADDRESS_MAX_ENTRIES,
    AlternateAddressTrailer,
    DiscoveryType,
    NeighborDiscoveryTrailer,
    encode_trailer,
    encode_trailers,
)

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

SOLICITATION_SPACING: Final = 2.0  # RFC 6081 §5.7.2: the solicitation retransmission timer
SOLICITATIONS: Final = 3  # RFC 6081 §5.7.3: then an indirect bubble


@record
class Extensions:
    """The RFC 6081 extensions a client may use; all on by default (RFC 6081 §3: SHOULD).

    The Symmetric NAT Support extension (§5.2, nonce trailers) is always on: the others build
    on it, and it costs a peer that does not know it nothing (§4.1: it skips the trailer)."""

    upnp: bool = True  # §3.2/§5.3, and the UPnP mapping the hairpinning extension offers
    hairpinning: bool = True  # §3.5/§5.6
    server_load_reduction: bool = True  # §3.6/§5.7
    # §3.3/§5.4 and §3.4/§5.5: a second UDP port per peer being set up, the "random port"
    # (`teredo.core.random_port`), behind a port-preserving or another symmetric NAT.
    port_preserving: bool = True
    sequential_ports: bool = True


class PeerExtension(IntFlag):
    """What an RFC 6081 extension did for a peer (a peer may have several)."""

    SYMMETRIC_NAT = 1  # §5.2: the peer's mapping was proven by our nonce, not its address
    UPNP = 2  # §5.3: a symmetric peer reached at the mapping in its address
    HAIRPINNING = 4  # §5.6: the peer is reached at an alternate (local) address
    SERVER_LOAD_REDUCTION = 8  # §5.7: an idle peer revalidated without its server
    PORT_PRESERVING = 16  # §5.4: the peer reached from a random port our NAT kept
    SEQUENTIAL_PORTS = 32  # §5.5: the peer reached at the port our echo test predicted


# The status document's names for each, `peers_<name>` (`teredo.core.status`).
PEER_EXTENSION_NAMES: Final = {
    PeerExtension.SYMMETRIC_NAT: "symmetric_nat",
    PeerExtension.UPNP: "upnp",
    PeerExtension.HAIRPINNING: "hairpinning",
    PeerExtension.SERVER_LOAD_REDUCTION: "server_load_reduction",
    PeerExtension.PORT_PRESERVING: "port_preserving",
    PeerExtension.SEQUENTIAL_PORTS: "sequential_ports",
}


def alternate_address_trailer(entries: list[Endpoint]) -> bytes:
    """An Alternate Address trailer (RFC 6081 §4.3) with the first four of `entries`."""
    chosen = tuple(dict.fromkeys(entries))[:ALTERNATE_ADDRESS_MAX_ENTRIES]
    return encode_trailers([encode_trailer(AlternateAddressTrailer(chosen))])


def discovery_trailer(kind: DiscoveryType) -> bytes:
    """A Neighbor Discovery Option trailer (RFC 6081 §4.4)."""
    return encode_trailers([encode_trailer(NeighborDiscoveryTrailer(kind))])


__all__ = [
    "PEER_EXTENSION_NAMES",
    "SOLICITATIONS",
    "SOLICITATION_SPACING",
    "Extensions",
    "PeerExtension",
    "alternate_address_trailer",
    "discovery_trailer",
]
