"""Anycast failover in a lab with two relay sites: break the preferred relay, watch the pings.

The native host pings a Teredo client every `INTERVAL` seconds while the router sends the
Teredo prefix to relay1 (preferred by BGP). One `Event` breaks relay1; `run_event` measures the
longest time without a reply and the packets lost while the router moves to relay2, then
repairs relay1 and measures the return. Clients take no action: relay2 sets its peer up by the
usual bubbles, and the client checks the new relay by its echo test (RFC 4380 §5.2.9, §5.4).

Events:

- ``kill``: kill -9 of relay1's daemon (its interface and route vanish with it); back: a new
  daemon.
- ``site-down``: relay1's link to the router goes down inside relay1's namespace (the router
  loses carrier); back: link up with its addresses.
- ``silent``: relay1's node drops every packet on its link while the link stays up, as a hung
  host or a dead switch behind the port: only BFD notices; back: the filter removed.
- ``sigterm``: SIGTERM to relay1's daemon: it withdraws, drains for DrainTime, then exits;
  back: a new daemon.
- ``ipv4-gone``: relay1's IPv4 address disappears while its daemon, its link and its BGP
  session stay: the relay can no longer reach any client. A relay that judges its health
  withdraws; one that only lives keeps attracting the traffic it drops (the router then never
  moves within `LEAVE_TIMEOUT`). Back: the address and routes restored.

`BEFORE` is longer than a client's spacing between two echo tests toward one native peer
(2 s, RFC 4380 §5.2.9): a client that has just checked relay1 waits that long before it may
check relay2, which is not what the failover measures.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv6Address
from typing import Final

from teredo.core.errors import UserError
from teredo.lab import netns
from teredo.lab.lab import Lab
from teredo.lab.pingstream import Outage, PingStream
from teredo.lab.topology import RELAY_SITES

INTERVAL: Final = 0.01  # seconds between pings
BEFORE: Final = 2.5  # seconds of pings before the event (see the module doc)
AFTER: Final = 3.0  # seconds of pings once the router has moved
LEAVE_TIMEOUT: Final = 5.0  # seconds for the router to leave the broken site
RETURN_TIMEOUT: Final = 20.0  # seconds for it to come back (a BGP session reconnects first)
PREFERRED: Final = RELAY_SITES[0]
SILENT_TABLE: Final = "teredo_lab_silent"
SILENT_RULESET: Final = f"""table netdev {SILENT_TABLE} {{
    chain ingress {{ type filter hook ingress device "eth0" priority -500; policy drop; }}
    chain egress {{ type filter hook egress device "eth0" priority -500; policy drop; }}
}}
"""


class Event(StrEnum):
    KILL = "kill"
    SITE_DOWN = "site-down"
    SILENT = "silent"
    SIGTERM = "sigterm"
    IPV4_GONE = "ipv4-gone"


EVENT_TEXT: Final = {
    Event.KILL: "kill -9 of the relay's daemon",
    Event.SITE_DOWN: "the relay site's link down",
    Event.SILENT: "the relay site silent, link up (BFD)",
    Event.SIGTERM: "SIGTERM to the relay's daemon",
    Event.IPV4_GONE: "the relay's IPv4 address gone, BGP up",
}


@dataclass(frozen=True, slots=True)
class Failover:
    """One event and the return after it."""

    event: Event
    away: Outage  # while the router moved from relay1 to relay2
    back: Outage  # while it moved back to relay1
    served_by: str | None  # the relay the router preferred after the event
    returned_to: str | None  # ... and after the repair


def break_site(lab: Lab, event: Event, site: str = PREFERRED) -> None:
    if event is Event.KILL:
        lab.signal_role(site, signal.SIGKILL)
    elif event is Event.SIGTERM:
        lab.signal_role(site, signal.SIGTERM)
    elif event is Event.SITE_DOWN:
        lab.site_down(site)
    elif event is Event.IPV4_GONE:
        address = lab.topology.node(site).interfaces[0].addresses[0]
        lab.exec(site, ["ip", "address", "del", str(address), "dev", "eth0"], check=True)
    else:
        netns.load_nftables(lab.namespace(site), SILENT_RULESET)


def repair_site(lab: Lab, event: Event, site: str = PREFERRED) -> None:
    if event in (Event.KILL, Event.SIGTERM):
        lab.restart_role(site)
    elif event in (Event.SITE_DOWN, Event.IPV4_GONE):
        lab.site_up(site)
    else:
        lab.exec(site, ["nft", "delete", "table", "netdev", SILENT_TABLE], check=True)


def wait_preferred(lab: Lab, wanted: Callable[[str | None], bool], timeout: float) -> str | None:
    """The relay the router prefers once `wanted` says yes, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        preferred = lab.preferred_relay()
        if wanted(preferred) or time.monotonic() > deadline:
            return preferred
        time.sleep(0.05)


def _measured(lab: Lab, client: IPv6Address, action: Callable[[], None]) -> Outage:
    """What the pings saw while `action` ran between them."""
    stream = PingStream(lab.namespace("v6"), str(client), INTERVAL)
    try:
        time.sleep(BEFORE)
        action()
        time.sleep(AFTER)
    finally:
        outage = stream.stop()
    return outage


def steady(lab: Lab, client: IPv6Address) -> Outage:
    """The same pings with nothing broken: the longest gap the machine's own jitter makes."""
    return _measured(lab, client, lambda: None)


def run_event(lab: Lab, event: Event, client: IPv6Address) -> Failover:
    """Break relay1 by `event` while pinging `client`, then repair it; what the pings saw."""
    if wait_preferred(lab, lambda p: p == PREFERRED, RETURN_TIMEOUT) != PREFERRED:
        raise UserError(f"the router does not prefer {PREFERRED}; read teredo lab status")
    moved: list[str | None] = []

    def away() -> None:
        break_site(lab, event)
        moved.append(wait_preferred(lab, lambda p: p != PREFERRED, LEAVE_TIMEOUT))

    outage = _measured(lab, client, away)
    returned: list[str | None] = []

    def back() -> None:
        repair_site(lab, event)
        returned.append(wait_preferred(lab, lambda p: p == PREFERRED, RETURN_TIMEOUT))

    back_outage = _measured(lab, client, back)
    return Failover(
        event=event,
        away=outage,
        back=back_outage,
        served_by=moved[0],
        returned_to=returned[0],
    )
