"""Teredo addresses: encode and decode (RFC 4380 §4, RFC 5991 §3.1).

A Teredo address is, in network order::

    | prefix (32) | server IPv4 (32) | flags (16) | ~mapped port (16) | ~mapped IPv4 (32) |

The mapped port and address are stored bit-inverted so that NATs rewriting IPv4 addresses found
in payloads leave them alone. Only the cone bit (0x8000) of the flags ever had a meaning; RFC 5991
turns twelve of the other bits (mask 0x3CFF) into random bits and asks receivers to ignore all
flag bits but C (and even C is advisory). Receivers therefore extract the mapping the same way
whatever the flags are (RFC 4380 §4: receivers ignore the reserved bits).

The stdlib's `IPv6Address.teredo` is deliberately not used: it drops the flags and the port.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from teredo.core.errors import ParseError

TYPE_CHECKING = False  # typing's flag without importing typing (ms a one-shot command pays)
if TYPE_CHECKING:
    from typing import Final, TypeAlias

TEREDO_PORT: Final = 3544  # RFC 4380 §2.7: servers listen on UDP 3544
TEREDO_PREFIX: Final = IPv6Network("2001::/32")  # RFC 4380 §2.6, IANA
# The 6bone prefix pre-RFC Teredo used (Windows XP before its update); 2001::/32 replaced it.
LEGACY_TEREDO_PREFIX: Final = IPv6Network("3ffe:831f::/32")
TEREDO_PREFIX32: Final = 0x20010000  # the first 32 bits of TEREDO_PREFIX
DISCOVERY_GROUP: Final = IPv4Address("224.0.0.253")  # RFC 4380 §2.17: local client discovery
DEFAULT_MTU: Final = 1280  # RFC 4380 §5.1.2

FLAG_CONE: Final = 0x8000  # RFC 4380 §4: C bit
FLAG_RESERVED: Final = 0x4000  # RFC 5991 §3.1: z bit, zero when constructed
FLAG_UNIVERSAL: Final = 0x0200  # RFC 4380 §4: U bit, should be 0
FLAG_GROUP: Final = 0x0100  # RFC 4380 §4: G bit, should be 0
RANDOM_FLAGS_MASK: Final = 0x3CFF  # RFC 5991 §3.1: 12 random bits (Random1 0x3C00, Random2 0x00FF)

PORT_MASK: Final = 0xFFFF  # RFC 4380 §4: obfuscation of the mapped port
IPV4_MASK: Final = 0xFFFFFFFF  # RFC 4380 §4: obfuscation of the mapped IPv4 address

LINK_LOCAL_PREFIX: Final = 0xFE80 << 112
# RFC 4380 §5.2.1 leaves the client's RS source open: any link-local address whose C bit matches
# the probe phase. These are the values implementations use; a server must accept all of them.
CLIENT_LINK_LOCAL: Final = IPv6Address("fe80::ffff:ffff:ffff")  # Miredo, C=0 (ours too)
CLIENT_LINK_LOCAL_CONE: Final = IPv6Address("fe80::8000:ffff:ffff:ffff")  # C=1 probe (4380 only)
WINDOWS_LINK_LOCAL: Final = IPv6Address("fe80::ffff:ffff:fffe")
WINDOWS_LINK_LOCAL_CONE: Final = IPv6Address("fe80::8000:ffff:ffff:fffe")


Endpoint: TypeAlias = tuple[str, int]
"""An IPv4 transport endpoint, ``(dotted_quad, port)``: the one type for mappings, datagram
sources and destinations, in the core and at the edge.

It is the tuple that `recvfrom` returns and `sendto` takes, so the data path never converts
(building an `IPv4Address` costs more than the rest of a packet's path). `endpoint` builds one
from an `IPv4Address`; `show_endpoint` writes it as ``host:port``; `ipv4_value` parses the host
where arithmetic on the address is needed.
"""


def endpoint(address: IPv4Address | int | str, port: int) -> Endpoint:
    """The endpoint for an IPv4 address (an `IPv4Address`, its integer value or text) and a port."""
    return (str(IPv4Address(address)), port)


def show_endpoint(endpoint: Endpoint) -> str:
    """``host:port``, for messages and status documents."""
    return f"{endpoint[0]}:{endpoint[1]}"


def ipv4_value(host: str) -> int:
    """A dotted quad as an integer; -1 when it is not one (never raises: input may come from
    anywhere). Four `int()` calls, not an `IPv4Address`: this is on the packet path."""
    parts = host.split(".")
    if len(parts) != 4:
        return -1
    value = 0
    for part in parts:
        if not part.isdigit() or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            return -1
        octet = int(part)
        if octet > 255:
            return -1
        value = value << 8 | octet
    return value


class TeredoAddress:
    """The fields of a Teredo IPv6 address (mapped values already de-obfuscated): immutable,
    compared and hashed by value. Written out rather than a dataclass, whose import (with
    `inspect`) would double the start-up of `teredo decode`."""

    __slots__ = ("flags", "mapped_address", "mapped_port", "prefix", "server")
    __match_args__ = ("prefix", "server", "flags", "mapped_address", "mapped_port")

    prefix: IPv6Network
    server: IPv4Address
    flags: int
    mapped_address: IPv4Address
    mapped_port: int

    def __init__(
        self,
        prefix: IPv6Network,
        server: IPv4Address,
        flags: int,
        mapped_address: IPv4Address,
        mapped_port: int,
    ) -> None:
        for name, value in zip(
            self.__match_args__, (prefix, server, flags, mapped_address, mapped_port), strict=True
        ):
            object.__setattr__(self, name, value)

    def _fields(self) -> tuple[IPv6Network, IPv4Address, int, IPv4Address, int]:
        return (self.prefix, self.server, self.flags, self.mapped_address, self.mapped_port)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TeredoAddress is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"TeredoAddress is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TeredoAddress):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value!r}"
            for name, value in zip(self.__match_args__, self._fields(), strict=True)
        )
        return f"TeredoAddress({fields})"

    @property
    def cone(self) -> bool:
        return bool(self.flags & FLAG_CONE)

    @property
    def random_bits(self) -> int:
        """The RFC 5991 random bits, in place under mask 0x3CFF."""
        return self.flags & RANDOM_FLAGS_MASK

    @property
    def mapped(self) -> Endpoint:
        return endpoint(self.mapped_address, self.mapped_port)

    @property
    def ipv6(self) -> IPv6Address:
        return encode_teredo_address(
            self.server, self.mapped_address, self.mapped_port, self.flags, self.prefix
        )


def encode_teredo_address(
    server: IPv4Address,
    mapped_address: IPv4Address,
    mapped_port: int,
    flags: int = 0,
    prefix: IPv6Network = TEREDO_PREFIX,
) -> IPv6Address:
    """Build a Teredo address (RFC 4380 §4)."""
    if not 0 <= mapped_port <= 0xFFFF:
        raise ValueError(f"port {mapped_port} is not between 0 and 65535")
    if not 0 <= flags <= 0xFFFF:
        raise ValueError(f"flags {flags} do not fit in 16 bits")
    if prefix.prefixlen != 32:
        raise ValueError(f"a Teredo prefix is a /32, not /{prefix.prefixlen}")
    value = (
        int(prefix.network_address)
        | int(server) << 64
        | flags << 48
        | (mapped_port ^ PORT_MASK) << 32
        | (int(mapped_address) ^ IPV4_MASK)
    )
    return IPv6Address(value)


def parse_teredo_address(
    address: IPv6Address | bytes | str,
    prefixes: tuple[IPv6Network, ...] = (TEREDO_PREFIX, LEGACY_TEREDO_PREFIX),
) -> TeredoAddress:
    """Decode a Teredo address; raise ParseError when it is not one under `prefixes`."""
    if isinstance(address, str):
        try:
            address = IPv6Address(address)
        except ValueError:
            raise ParseError(f"{address!r} is not an IPv6 address") from None
    if isinstance(address, bytes):
        if len(address) != 16:
            raise ParseError(f"an IPv6 address is 16 bytes, not {len(address)}")
        value = int.from_bytes(address, "big")
    else:
        value = int(address)
    for prefix in prefixes:
        if value >> 96 == int(prefix.network_address) >> 96:
            break
    else:
        raise ParseError(
            f"{IPv6Address(value)} is not a Teredo address (not in "
            + " or ".join(str(p) for p in prefixes)
            + ")"
        )
    return TeredoAddress(
        prefix=prefix,
        server=IPv4Address((value >> 64) & IPV4_MASK),
        flags=(value >> 48) & 0xFFFF,
        mapped_address=IPv4Address((value & IPV4_MASK) ^ IPV4_MASK),
        mapped_port=((value >> 32) & PORT_MASK) ^ PORT_MASK,
    )


# One helper per field of a 16-byte Teredo address (RFC 4380 §4), for the packet paths: no
# prefix check (the caller did it) and no objects beyond the result.


def teredo_server(address: bytes) -> Endpoint:
    """The server embedded in a Teredo address (bits 32-63), at UDP 3544 (RFC 4380 §5.2.6)."""
    return (f"{address[4]}.{address[5]}.{address[6]}.{address[7]}", TEREDO_PORT)


def teredo_flags(address: bytes) -> int:
    """The 16-bit flags field of a Teredo address (bits 64-79)."""
    return (address[8] << 8) | address[9]


def teredo_mapping(address: bytes) -> Endpoint:
    """The mapping embedded in a Teredo address: its IPv4 address and port, de-obfuscated."""
    return (
        f"{address[12] ^ 255}.{address[13] ^ 255}.{address[14] ^ 255}.{address[15] ^ 255}",
        ((address[10] << 8) | address[11]) ^ PORT_MASK,
    )


def teredo_mapped_ipv4(address: bytes) -> int:
    """The mapped IPv4 address of a Teredo address as an integer (for the global-unicast check)."""
    return int.from_bytes(address[12:16], "big") ^ IPV4_MASK


def teredo_mapped_port(address: bytes) -> int:
    """The mapped UDP port of a Teredo address."""
    return ((address[10] << 8) | address[11]) ^ PORT_MASK


def teredo_server_ipv4(address: bytes) -> int:
    """The server IPv4 address of a Teredo address as an integer."""
    return int.from_bytes(address[4:8], "big")


def link_local_address(flags: int, port: int, ipv4: IPv4Address) -> IPv6Address:
    """A Teredo link-local address: fe80::/64 + a node identifier (RFC 4380 §4)."""
    return IPv6Address(
        LINK_LOCAL_PREFIX | flags << 48 | (port ^ PORT_MASK) << 32 | (int(ipv4) ^ IPV4_MASK)
    )


def server_link_local(server: IPv4Address) -> IPv6Address:
    """The server's link-local address, the RA source (RFC 4380 §5.3.2): C=1, port 3544."""
    return link_local_address(FLAG_CONE, TEREDO_PORT, server)


def is_cone_link_local(address: IPv6Address) -> bool:
    """Whether the C bit of a link-local RS source is set (RFC 4380 §5.3.2)."""
    return bool((int(address) >> 48) & FLAG_CONE)


def random_flags(random_bytes: Callable[[int], bytes]) -> int:
    """Client flags per RFC 5991 §3.1: C=0, z=0, U=G=0, twelve random bits from `random_bytes`.

    `random_bytes` must be a cryptographically strong source (e.g. `os.urandom`); it is passed
    in so that the core stays deterministic under test.
    """
    return int.from_bytes(random_bytes(2), "big") & RANDOM_FLAGS_MASK


# RFC 4380 §5.2.4: addresses that are not global unicast, as (network, mask) integers.
_NON_GLOBAL_IPV4: Final = tuple(
    (int(IPv4Address(net)), (IPV4_MASK << (32 - length)) & IPV4_MASK)
    for net, length in (
        ("0.0.0.0", 8),
        ("10.0.0.0", 8),
        ("127.0.0.0", 8),
        ("169.254.0.0", 16),
        ("172.16.0.0", 12),
        ("192.168.0.0", 16),
        ("192.88.99.0", 24),
        ("224.0.0.0", 4),
        ("255.255.255.255", 32),
    )
)


# The first octets that decide alone (0/8, 10/8, 127/8, 224/4), and those that need the table.
_NON_GLOBAL_FIRST_OCTETS: Final = frozenset({0, 10, 127, *range(224, 240)})
_MIXED_FIRST_OCTETS: Final = frozenset({169, 172, 192, 255})


def is_global_ipv4(address: IPv4Address | int) -> bool:
    """Global unicast per RFC 4380 §5.2.4 (TEST-NET and 240/4 count as global there).

    Directed broadcast addresses of attached subnets are not checked: only the host knows its
    subnets, and the core does no I/O. Negative values (`ipv4_value` of a non-address) are not
    global.
    """
    value = int(address)
    if value < 0:
        return False
    first = value >> 24
    if first in _NON_GLOBAL_FIRST_OCTETS:
        return False
    if first not in _MIXED_FIRST_OCTETS:
        return True
    return all(value & mask != network for network, mask in _NON_GLOBAL_IPV4)
