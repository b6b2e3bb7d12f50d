"""A relay's health, applied to the route a BGP engine announces (see `teredo.core.health`).

The relay's route for its prefix (2001::/32 by default) on its Teredo interface carries the
relay's health in its metric:

- `ANNOUNCED_METRIC` (1024, the kernel's default) while the relay is healthy;
- `WITHDRAWN_METRIC` (65535) while it is not: the kernel still forwards through it, so packets
  the Internet has not yet rerouted are relayed, but a BGP engine that exports only the
  announced metric (docs/anycast-bird.conf: BIRD's `protocol kernel` with `learn`) withdraws
  the prefix.

A relay that dies (kill -9, a crash) takes its TUN interface, and with it the route, along:
nothing in the packet path needs a health checker to notice. `RelayHealthWatcher.check`
observes the facts every `HEALTH_INTERVAL` seconds and swaps the route when the verdict
changes; a SIGTERM marks the relay stopping, withdraws, waits `DrainTime` seconds while still
relaying, then exits; SIGUSR2 turns draining for maintenance on and off.

The swap is make-before-break when withdrawing (the new route first, so forwarding never
stops) and break-before-make when announcing (the withdrawn route first, so that an engine that
keeps one learned route per prefix ends with the announced one).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Network
from typing import Any, Final

from teredo.adapters.netlink import IF_INET6, SCOPE_GLOBAL, TUNNEL_NEXT_HOP, read_host_addresses
from teredo.core.errors import UserError
from teredo.core.health import Health, HealthFacts, judge

log = logging.getLogger(__name__)

ANNOUNCED_METRIC: Final = 1024  # the kernel's default IPv6 route metric
WITHDRAWN_METRIC: Final = 65535
HEALTH_INTERVAL: Final = 0.5  # seconds between checks
SYS_CLASS_NET: Final = "/sys/class/net"
_UNUSABLE_FLAGS: Final = 0x08 | 0x40  # IFA_F_DADFAILED, IFA_F_TENTATIVE
_LINK_USABLE: Final = ("up", "unknown")  # operstate of a link that carries packets


def native_ipv6_usable(
    exclude_interface: str, if_inet6: str = IF_INET6, sys_class_net: str = SYS_CLASS_NET
) -> bool:
    """True when the host has a usable global IPv6 address on a link that is up (not the
    relay's own interface)."""
    for entry in read_host_addresses(if_inet6) or []:  # none: IPv6 disabled
        if (
            entry.interface == exclude_interface
            or entry.scope != SCOPE_GLOBAL
            or entry.address.is_multicast
            or entry.flags & _UNUSABLE_FLAGS
        ):
            continue
        try:
            with open(f"{sys_class_net}/{entry.interface}/operstate") as file:
                state = file.read().strip()
        except OSError:
            state = "unknown"  # no sysfs for this namespace: trust the address
        if state in _LINK_USABLE:
            return True
    return False


def udp_socket_usable(fileno: int, bound: IPv4Address) -> bool:
    """True while the socket is open and the address it is bound to is still the host's."""
    if fileno < 0:
        return False
    if bound == IPv4Address(0):
        return True
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((str(bound), 0))
    except OSError as error:
        return error.errno != errno.EADDRNOTAVAIL
    finally:
        probe.close()
    return True


@dataclass(slots=True)
class RelayHealthWatcher:
    """Observes the relay's health and keeps its route's metric in step (see the module doc).

    `udp_usable` and `native_usable` observe the two sides (`udp_socket_usable`,
    `native_ipv6_usable`); `add_route` and `remove_route` are `teredo.adapters.netlink`'s
    functions of the same names."""

    interface: str
    prefix: IPv6Network
    udp_usable: Callable[[], bool]
    native_usable: Callable[[], bool]
    add_route: Callable[..., Any]
    remove_route: Callable[..., Any]
    drain_time: float
    draining: bool = False
    stopping: bool = False
    announced: bool = False  # the route carries ANNOUNCED_METRIC
    health: Health = field(default_factory=lambda: Health(()))
    _task: asyncio.Task[None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one swap at a time

    def facts(self) -> HealthFacts:
        return HealthFacts(
            udp_socket=self.udp_usable(),
            native_ipv6=self.native_usable(),
            draining=self.draining,
            stopping=self.stopping,
        )

    async def check(self) -> Health:
        """Judge the facts now and announce or withdraw the route accordingly."""
        async with self._lock:
            return await self._check()

    async def _check(self) -> Health:
        health = judge(self.facts())
        if health != self.health:
            log.info("health: %s", health.explain())
        self.health = health
        try:
            if health.healthy and not self.announced:
                await self._swap(WITHDRAWN_METRIC, ANNOUNCED_METRIC)
                self.announced = True
                log.info("announcing %s (route metric %d)", self.prefix, ANNOUNCED_METRIC)
            elif not health.healthy and self.announced:
                await self._swap(ANNOUNCED_METRIC, WITHDRAWN_METRIC)
                self.announced = False
                log.warning(
                    "withdrew %s (route metric %d): %s",
                    self.prefix,
                    WITHDRAWN_METRIC,
                    health.explain(),
                )
        except UserError as error:  # the interface is going away; the next check retries
            log.error("%s", error)
        return health

    async def _swap(self, old: int, new: int) -> None:
        if new == WITHDRAWN_METRIC:  # make before break: forwarding never stops
            await self.add_route(self.interface, self.prefix, metric=new, via=TUNNEL_NEXT_HOP)
            await self.remove_route(self.interface, self.prefix, metric=old)
        else:  # break before make: one learned route per prefix ends announced
            await self.remove_route(self.interface, self.prefix, metric=old)
            await self.add_route(self.interface, self.prefix, metric=new, via=TUNNEL_NEXT_HOP)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check now and every HEALTH_INTERVAL (the daemon routes SIGUSR2 to `toggle_drain`)."""
        self._task = loop.create_task(self._run())

    def toggle_drain(self) -> None:
        self.draining = not self.draining
        log.info("SIGUSR2: %s", "draining for maintenance" if self.draining else "draining ended")
        asyncio.get_running_loop().create_task(self.check())

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(HEALTH_INTERVAL)

    def cancel(self) -> None:
        """Stop checking; the route stays as it is."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        """SIGTERM: withdraw, keep relaying for `drain_time` seconds so that routing moves
        elsewhere first, then return (the caller removes the interface)."""
        async with self._lock:  # never cancel a check halfway through a swap
            self.cancel()
        self.stopping = True
        was_announced = self.announced
        await self.check()
        if was_announced and self.drain_time > 0:
            log.info("draining for %g s before exiting (DrainTime)", self.drain_time)
            await asyncio.sleep(self.drain_time)

    def status(self) -> dict[str, Any]:
        return {
            "healthy": self.health.healthy,
            "announced": self.announced,
            "why": self.health.explain(),
            "reasons": [reason.value for reason in self.health.reasons],
            "drain_time": self.drain_time,
        }
