"""`teredo probe SERVER [--json] [--timeout S] [--port N]`: qualify without root or a TUN device.

A plain UDP socket talks to the server's primary and secondary addresses with the client's own
qualification logic (`teredo.core.qualification.Qualifier`, with the cone test that a real client
must not run), then prints what a client on this host would get: the mapped address and port,
the NAT behaviour, the Teredo address, the MTU and the round-trip time. Nothing is configured.

It also reports the NAT's behaviours that RFC 6081's extensions use, as far as two server
addresses show them: port preserving (the mapped port is the local port, §3.3), sequential
(behind a symmetric NAT, the secondary address's mapped port follows the primary's by a small
positive delta, §3.4), and a UPnP Internet Gateway Device on the LAN (one SSDP search sent
before qualifying, answers awaited at most UPNP_WAIT seconds, §3.2).

When the server does not answer within `--timeout` seconds, the probe exits with status 1 and
one sentence saying so; an unresolvable name or a bad port is a usage error (status 2).
"""

from __future__ import annotations

import _socket
import json
import os
import selectors
import time
from ipaddress import IPv4Address
from typing import Any, Final

from teredo.adapters.resolver import local_address_toward
from teredo.adapters.resolver import resolve_ipv4 as resolve_ipv4  # re-exported
from teredo.adapters.ssdp import Gateway, GatewaySearch
from teredo.adapters.udp import open_udp_socket
from teredo.core.address import TEREDO_PORT, Endpoint, endpoint, parse_teredo_address
from teredo.core.errors import UsageError, UserError
from teredo.core.qualification import (
    QUALIFICATION_ATTEMPTS,
    QUALIFICATION_TIMEOUT,
    NatBehaviour,
    QualificationState,
    Qualifier,
    ServerPair,
)

NAT_EXPLANATIONS: Final = {
    NatBehaviour.NONE: "no NAT: the server sees this host's own address and port",
    NatBehaviour.CONE: (
        "full cone: one mapping for every destination, and anyone may send to it "
        "(the server's other address reached us unasked)"
    ),
    NatBehaviour.RESTRICTED: (
        "restricted or port-restricted cone: the same mapping toward both server addresses; "
        "inbound traffic only from where we sent (a port-preserving symmetric NAT looks the "
        "same from here)"
    ),
    NatBehaviour.SYMMETRIC: (
        "symmetric: a different mapping per destination; Teredo works with native IPv6 and "
        "with peers behind cone or address-restricted NATs (RFC 6081), not with peers behind "
        "port-restricted or symmetric NATs"
    ),
    NatBehaviour.UNKNOWN: "unknown: the secondary server address did not answer in time",
}


# How long a UPnP IGD may take to answer the SSDP search (its MX is 1 s).
UPNP_WAIT: Final = 1.0
# Largest step between the mappings toward the two server addresses still called sequential:
# a sequential NAT gives the next port (1), or a few more when other flows took some meanwhile.
SEQUENTIAL_DELTA_MAX: Final = 16


def probe(server_name: str, timeout: float = 12.0, port: int = 0) -> dict[str, Any]:
    """Qualify against `server_name`; return the result document. UserError when silent."""
    if not 0 <= port <= 0xFFFF:
        raise UsageError(f"--port {port} is not between 0 and 65535")
    if timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    primary = resolve_ipv4(server_name)
    server = ServerPair.of(primary)
    udp = open_udp_socket("0.0.0.0", port, address_setting="the local address",
                          port_setting="--port")  # fmt: skip
    search = GatewaySearch()
    search.start()
    try:
        local_ip = local_address_toward(primary) or IPv4Address("0.0.0.0")
        local = endpoint(local_ip, udp.local[1])
        qualifier = Qualifier(
            [server],
            os.urandom,
            timeout=min(QUALIFICATION_TIMEOUT, timeout / QUALIFICATION_ATTEMPTS),
            probe_cone=True,
            local=local,
        )
        _run(qualifier, udp.sock, timeout)
    finally:
        udp.close()
        gateway = search.finish(UPNP_WAIT)
    if qualifier.state is not QualificationState.QUALIFIED or qualifier.address is None:
        raise UserError(
            f"no answer from the Teredo server {primary} (UDP port {TEREDO_PORT}) within "
            f"{timeout:g} s; check the address and that outgoing UDP to port {TEREDO_PORT} is "
            "allowed"
        )
    return _document(qualifier, server, local, gateway)


def port_delta(qualifier: Qualifier) -> int | None:
    """The secondary address's mapped port minus the primary's, when both are known."""
    if qualifier.mapped is None or qualifier.secondary_mapping is None:
        return None
    return qualifier.secondary_mapping[1] - qualifier.mapped[1]


def is_sequential(nat: NatBehaviour, delta: int | None) -> bool:
    """A symmetric NAT whose second mapping came a small positive step after the first."""
    return nat is NatBehaviour.SYMMETRIC and delta is not None and 0 < delta <= SEQUENTIAL_DELTA_MAX


def _run(qualifier: Qualifier, sock: _socket.socket, timeout: float) -> None:
    clock = time.monotonic
    start = clock()
    deadline = start + timeout
    qualifier.start(start)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    try:
        while True:
            for data, destination in qualifier.datagrams_to_send():
                try:
                    sock.sendto(data, destination)
                except OSError as error:
                    raise UserError(
                        f"cannot send to the Teredo server {destination[0]}: "
                        f"{error.strerror}; check this host's IPv4 connectivity"
                    ) from None
            while qualifier.next_event() is not None:
                pass
            now = clock()
            if qualifier.state is QualificationState.QUALIFIED and not qualifier.nat_check_pending:
                return
            if qualifier.state is QualificationState.OFFLINE or now >= deadline:
                return
            timer = qualifier.get_timer()
            wake = deadline if timer is None else min(deadline, timer)
            if selector.select(max(0.0, wake - now)):
                while True:
                    try:
                        data, source = sock.recvfrom(65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        continue  # a queued ICMP error (port unreachable): keep waiting
                    qualifier.receive_datagram(data, source, clock())
            now = clock()
            if (timer := qualifier.get_timer()) is not None and now >= timer:
                qualifier.handle_timer(now)
    finally:
        selector.close()


def _document(
    qualifier: Qualifier, server: ServerPair, local: Endpoint, gateway: Gateway | None
) -> dict[str, Any]:
    assert qualifier.address is not None and qualifier.mapped is not None
    decoded = parse_teredo_address(qualifier.address)
    secondary = qualifier.secondary_mapping
    delta = port_delta(qualifier)
    return {
        "server": str(server.primary),
        "secondary_server": str(server.secondary) if server.secondary else None,
        "local_address": local[0],
        "local_port": local[1],
        "mapped_address": qualifier.mapped[0],
        "mapped_port": qualifier.mapped[1],
        "secondary_mapped_address": secondary[0] if secondary else None,
        "secondary_mapped_port": secondary[1] if secondary else None,
        "nat": qualifier.nat.value,
        "cone": qualifier.cone_answered,
        "port_preserving": qualifier.port_preserving,
        "port_delta": delta,
        "sequential": is_sequential(qualifier.nat, delta),
        "upnp": gateway is not None,
        "upnp_gateway": gateway.address if gateway else None,
        "upnp_location": gateway.location if gateway else None,
        "upnp_server": gateway.server if gateway else None,
        "teredo_address": str(qualifier.address),
        "prefix": str(qualifier.prefix),
        "flags": decoded.flags,
        "mtu": qualifier.mtu,
        "rtt_ms": round((qualifier.rtt or 0.0) * 1000, 3),
    }


def render(document: dict[str, Any]) -> str:
    nat = NatBehaviour(document["nat"])
    rows = [
        ("server", f"{document['server']} (secondary {document['secondary_server']})"),
        ("local", f"{document['local_address']}:{document['local_port']}"),
        ("mapped", f"{document['mapped_address']}:{document['mapped_port']}"),
    ]
    if document["secondary_mapped_address"] is not None:
        rows.append(
            (
                "mapped (2nd)",
                f"{document['secondary_mapped_address']}:{document['secondary_mapped_port']}",
            )
        )
    rows += [
        ("NAT", NAT_EXPLANATIONS[nat]),
        ("port preserved", "yes" if document["port_preserving"] else "no"),
        ("sequential", _sequential_text(document)),
        ("UPnP IGD", _upnp_text(document)),
        ("Teredo address", document["teredo_address"]),
        ("MTU", str(document["mtu"])),
        ("RTT", f"{document['rtt_ms']:.1f} ms"),
    ]
    return "\n".join(f"{label:<15} {value}" for label, value in rows)


def _sequential_text(document: dict[str, Any]) -> str:
    if document["sequential"]:
        return f"yes (the second mapping's port is {document['port_delta']:+d})"
    if document["nat"] == NatBehaviour.SYMMETRIC.value and document["port_delta"] is not None:
        return f"no (the second mapping's port is {document['port_delta']:+d})"
    return "no"


def _upnp_text(document: dict[str, Any]) -> str:
    if not document["upnp"]:
        return f"none answered within {UPNP_WAIT:g} s"
    server = f", {document['upnp_server']}" if document["upnp_server"] else ""
    return f"{document['upnp_gateway']} ({document['upnp_location']}{server})"


def run_probe(server: str, as_json: bool = False, timeout: float = 12.0, port: int = 0) -> int:
    """The `teredo probe` command."""
    document = probe(server, timeout=timeout, port=port)
    print(json.dumps(document) if as_json else render(document))
    return 0
