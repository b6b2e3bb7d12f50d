"""Find a UPnP Internet Gateway Device on the LAN: one SSDP M-SEARCH, a bounded wait.

UPnP Device Architecture 1.1 §1.3.2: a control point multicasts an `M-SEARCH * HTTP/1.1`
request to 239.255.255.250:1900 and devices answer it by unicast with `HTTP/1.1 200 OK` and a
LOCATION header (the URL of their description). We search for the IGD device type (RFC 6081
§3.2's UPnP-enabled NAT is an IGD) and only report who answered: mapping ports is the client's
job. Answers that are not an SSDP response are dropped and counted.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field
from typing import Final

SSDP_GROUP: Final = ("239.255.255.250", 1900)
IGD_TYPE: Final = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
REPEATS: Final = 2  # UDP may lose one; devices answer each


@dataclass(frozen=True, slots=True)
class Gateway:
    address: str  # who answered
    location: str  # its description URL
    server: str | None  # its SERVER header (OS, UPnP version, product)


def search_request(mx: int = 1) -> bytes:
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_GROUP[0]}:{SSDP_GROUP[1]}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {IGD_TYPE}\r\n"
        "\r\n"
    ).encode()


def parse_response(data: bytes) -> dict[str, str] | None:
    """The headers of an SSDP search response (names lower-cased), or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    status = lines[0].split()
    if len(status) < 2 or not status[0].startswith("HTTP/") or status[1] != "200":
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers if "location" in headers else None


@dataclass(slots=True)
class GatewaySearch:
    """An M-SEARCH in flight: `start` sends it, `finish` collects the answers until a deadline,
    so that a caller can do other work (a qualification) meanwhile."""

    sock: socket.socket | None = None
    sent_at: float = 0.0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)

    def start(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as error:
            self.errors.append(error.strerror or str(error))
            return
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
            sock.bind(("0.0.0.0", 0))
            for _ in range(REPEATS):
                sock.sendto(search_request(), SSDP_GROUP)
        except OSError as error:  # no route for multicast: no gateway to find
            self.errors.append(error.strerror or str(error))
            sock.close()
            return
        sock.setblocking(False)
        self.sock = sock
        self.sent_at = time.monotonic()

    def finish(self, wait: float) -> Gateway | None:
        """The first IGD that answered within `wait` seconds of the search, or None."""
        sock = self.sock
        if sock is None:
            return None
        deadline = self.sent_at + wait
        try:
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                try:
                    data, source = sock.recvfrom(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    continue  # a queued ICMP error
                headers = parse_response(data)
                if headers is None:
                    self.dropped += 1
                    continue
                return Gateway(source[0], headers["location"], headers.get("server"))
            return None
        finally:
            sock.close()
            self.sock = None
