"""Names and routes: a hostname's IPv4 address, and the source address toward a destination.

What the client daemon and `teredo checkconf` need of the resolver, without the probe's
modules (its qualification loop, SSDP search and report): they start faster and the client
holds less.
"""

from __future__ import annotations

import _socket  # socket.py without its enums and selectors, which cost a launch ~1.5 ms
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
        infos = _socket.getaddrinfo(text, TEREDO_PORT, _socket.AF_INET, _socket.SOCK_DGRAM)
    except (_socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, _socket.gaierror) else str(error)
        temporary = isinstance(error, _socket.gaierror) and error.errno == _socket.EAI_AGAIN
        raise NameResolutionError(
            f"cannot resolve the {what} {name!r}: {reason}", temporary=temporary
        ) from None
    return IPv4Address(infos[0][4][0])


def local_address_toward(destination: IPv4Address) -> IPv4Address | None:
    """The source address the kernel would use toward `destination` (no packet is sent)."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)  # no context manager in _socket
    try:
        sock.connect((str(destination), TEREDO_PORT))
        return IPv4Address(sock.getsockname()[0])
    except OSError:
        return None
    finally:
        sock.close()
