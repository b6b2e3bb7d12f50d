"""A relay's health: whether it may attract traffic, and why not (no I/O here).

A relay serves 2001::/32 (or its `Prefix`) for whoever routes it there (RFC 4380 §5.4); relays
that announce that prefix from many sites (anycast) must stop announcing it the moment they
cannot do the job, or the native traffic routed to them is black-holed. "Alive" is not enough:
a relay is healthy only while

- its UDP socket is open and still bound to an address the host has (the Teredo side),
- the host has a usable global IPv6 address on a link that is up (the native side),
- it is neither draining (maintenance, `teredo drain`) nor stopping (SIGTERM).

The daemon gathers those facts (`HealthFacts`) and applies the verdict to the kernel's route
for the prefix (`teredo.programs.relay_health`); a BGP engine exports that route only while it
is marked healthy, so a relay that dies takes its route, and its announcement, with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Unhealthy(StrEnum):
    """Why a relay does not announce its prefix (stable names: tools read them)."""

    UDP_SOCKET = "udp_socket_unusable"
    NATIVE_IPV6 = "no_native_ipv6"
    DRAINING = "draining"
    STOPPING = "stopping"


REASON_TEXT: dict[Unhealthy, str] = {
    Unhealthy.UDP_SOCKET: "the UDP socket is closed or its address is gone",
    Unhealthy.NATIVE_IPV6: "no usable global IPv6 address on a link that is up",
    Unhealthy.DRAINING: "draining for maintenance (teredo drain)",
    Unhealthy.STOPPING: "stopping (SIGTERM)",
}


@dataclass(frozen=True, slots=True)
class HealthFacts:
    """What the daemon observed; each field True when that part works."""

    udp_socket: bool
    native_ipv6: bool
    draining: bool = False
    stopping: bool = False


@dataclass(frozen=True, slots=True)
class Health:
    """The verdict: healthy when no reason stands against it."""

    reasons: tuple[Unhealthy, ...]

    @property
    def healthy(self) -> bool:
        return not self.reasons

    def explain(self) -> str:
        """One line for a person: "healthy", or every reason, most fundamental first."""
        if self.healthy:
            return "healthy"
        return "; ".join(REASON_TEXT[reason] for reason in self.reasons)


def judge(facts: HealthFacts) -> Health:
    """The relay's health from what the daemon observed."""
    reasons = []
    if facts.stopping:
        reasons.append(Unhealthy.STOPPING)
    if facts.draining:
        reasons.append(Unhealthy.DRAINING)
    if not facts.udp_socket:
        reasons.append(Unhealthy.UDP_SOCKET)
    if not facts.native_ipv6:
        reasons.append(Unhealthy.NATIVE_IPV6)
    return Health(tuple(reasons))
