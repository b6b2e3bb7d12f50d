"""The status documents the roles' cores report (`teredo status`, the control socket), typed.

Each core gives a JSON-able snapshot of its state, counters and drops by reason; the daemons
(`teredo.programs`) add what only they know (interface, bind address, I/O counters) and the
control socket sends the whole as JSON. Counters and drops are ``{name: count}`` with names in
snake_case, stable across versions (tools read them).
"""

from __future__ import annotations

from typing import TypedDict


class EngineStatus(TypedDict):
    """What the peering engine shared by clients and relays reports."""

    peers: int
    trusted_peers: int
    max_peers: int
    queued_bytes: int
    evicted_peers: int
    expired_peers: int
    learned_peers: int  # only in the kernel's map (learned or handed over): at its last sweep pass
    learned_expired: int
    counters: dict[str, int]
    drops: dict[str, int]


class RelayEngineStatus(EngineStatus):
    """A relay's core: the engine's figures and the role."""

    role: str


class HostSpecificRelayStatus(RelayEngineStatus):
    """A host-specific relay's core: also the host's addresses, the only ones it serves."""

    host_addresses: list[str]


class ClientExtensionStatus(TypedDict):
    """RFC 6081 in a client's status, as `netsh interface teredo show state` shows it
    (teredo.core.extensions)."""

    client_state: str  # offline, probe, qualified (in use) or dormant (no peer for 30 s)
    nat_behaviours: list[str]  # upnp, port-preserving, sequential
    local_mapping: str | None  # the service socket's endpoint, as the host sees it
    upnp_mapped: str | None  # the port mapped on the NAT's UPnP gateway (RFC 6081 §5.3)
    extensions: dict[str, bool]  # which extensions are turned on
    peers_symmetric_nat: int  # peers each extension serves (RFC 6081 §5.2-§5.7)
    peers_upnp: int
    peers_hairpinning: int
    peers_server_load_reduction: int
    peers_port_preserving: int
    peers_sequential_ports: int
    random_ports: int  # RFC 6081 §5.4/§5.5: random ports open now (bounded)


class ClientEngineStatus(EngineStatus, ClientExtensionStatus):
    """A client's core: the engine's figures and the qualification state (RFC 4380 §5.2)."""

    role: str
    state: str
    address: str | None
    server: str
    secondary_server: str | None
    mapped: str | None
    nat: str
    port_preserving: bool | None
    mtu: int | None
    rtt_ms: float | None
    local_discovery: bool


class ServerCoreStatus(TypedDict):
    """A server's core: its counters and drops by reason (RFC 4380 §5.3)."""

    counters: dict[str, int]
    drops: dict[str, int]
    rate_limit_sources_tracked: int  # sources with a bucket in the limiter, limited or not
