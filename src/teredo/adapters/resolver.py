"""Names and routes: a hostname's IPv4 address, and the source address toward a destination.

What the client daemon and `teredo checkconf` need of the resolver, without the probe's
modules (its qualification loop, SSDP search and report): they start faster and the client
holds less.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

from teredo.core.address import TEREDO_PORT
from teredo.core.errors import NameResolutionError


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
