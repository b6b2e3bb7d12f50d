"""`teredo probe SERVER [--json] [--timeout S] [--port N]`: qualify without root or a TUN device.

A plain UDP socket talks to the server's primary and secondary addresses with the client's own
qualification logic (`teredo.core.qualification.Qualifier`, with the cone test that a real client
must not run), then prints what a client on this host would get: the mapped address and port,
the NAT behaviour, the Teredo address, the MTU and the round-trip time. Nothing is configured.

When the server does not answer within `--timeout` seconds, the probe exits with status 1 and
one sentence saying so; an unresolvable name or a bad port is a usage error (status 2).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import time
from ipaddress import IPv4Address
from typing import Any, Final

from teredo.adapters.udp import open_udp_socket
from teredo.core.address import TEREDO_PORT, Endpoint, endpoint, parse_teredo_address
from teredo.core.errors import NameResolutionError, UsageError, UserError
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


def resolve_ipv4(name: str, what: str = "Teredo server") -> IPv4Address:
    """An IPv4 literal, or the first IPv4 address of a hostname; `NameResolutionError`
    otherwise, `temporary` when the resolver could not get an answer (EAI_AGAIN)."""
    text = name.strip()
    try:
        return IPv4Address(text)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(text, TEREDO_PORT, socket.AF_INET, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else str(error)
        temporary = isinstance(error, socket.gaierror) and error.errno == socket.EAI_AGAIN
        raise NameResolutionError(
            f"cannot resolve the {what} {name!r}: {reason}", temporary=temporary
        ) from None
    return IPv4Address(infos[0][4][0])


def local_address_toward(destination: IPv4Address) -> IPv4Address | None:
    """The source address the kernel would use toward `destination` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((str(destination), TEREDO_PORT))
            return IPv4Address(sock.getsockname()[0])
        except OSError:
            return None


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
    if qualifier.state is not QualificationState.QUALIFIED or qualifier.address is None:
        raise UserError(
            f"no answer from the Teredo server {primary} (UDP port {TEREDO_PORT}) within "
            f"{timeout:g} s; check the address and that outgoing UDP to port {TEREDO_PORT} is "
            "allowed"
        )
    return _document(qualifier, server, local)


def _run(qualifier: Qualifier, sock: socket.socket, timeout: float) -> None:
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


def _document(qualifier: Qualifier, server: ServerPair, local: Endpoint) -> dict[str, Any]:
    assert qualifier.address is not None and qualifier.mapped is not None
    decoded = parse_teredo_address(qualifier.address)
    secondary = qualifier.secondary_mapping
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
        ("Teredo address", document["teredo_address"]),
        ("MTU", str(document["mtu"])),
        ("RTT", f"{document['rtt_ms']:.1f} ms"),
    ]
    return "\n".join(f"{label:<15} {value}" for label, value in rows)


def run_probe(server: str, as_json: bool = False, timeout: float = 12.0, port: int = 0) -> int:
    """The `teredo probe` command."""
    document = probe(server, timeout=timeout, port=port)
    print(json.dumps(document) if as_json else render(document))
    return 0
