"""Interface configuration over netlink (pyroute2): link, MTU, IPv6 addresses, routes, sysctls.

Every operation is a coroutine: pyroute2 0.9's synchronous `IPRoute` runs its own event loop and
cannot be used inside a running one, so these use `AsyncIPRoute` and are awaited from the
daemon's loop (outside a loop, wrap them in `asyncio.run`). They act on the network namespace of
the calling process, take the interface by name or index, and raise `UserError` with one
sentence on failure (no such interface, permission denied, ...).

Adding something that is already there is not an error (the add returns False); neither is
removing something that is already gone (the remove returns False).

What a role adds, it must remove on exit: use `InterfaceConfigurator`, which remembers each
change and undoes them in reverse order. Its two recipes mirror what Miredo configures, so a
host looks the same whichever implementation runs:

- client (Miredo's client-hook): flush the interface, link up with the MTU, add
  `fe80::ffff:ffff:ffff/64` and `ADDRESS/32` (the /32 brings the kernel's `2001::/32` prefix
  route with it) and `default dev IFACE metric 1029`, so Teredo is the last-resort route
  (Linux's own default routes use metric 1024). Where Miredo's hook fails silently (the
  kernel refuses a second default route of the same metric: a second client on this host),
  the client takes the next free metric, so it takes over when the first client's route
  goes, and logs a warning that says so;
- relay (observed from Miredo's relay): link up with the MTU, `fe80::ffff:ffff:ffff/64` and a
  route for the Teredo prefix (`2001::/32 dev IFACE`, kernel default metric 1024).

Miredo's optional source-routing table (`table teredo`) is not reproduced.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Any, Final

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from teredo.core.address import CLIENT_LINK_LOCAL, DEFAULT_MTU, TEREDO_PREFIX
from teredo.core.errors import UserError

log = logging.getLogger(__name__)

Interface = str | int
"""An interface by name ("teredo") or index."""

CLIENT_ROUTE_METRIC: Final = 1029  # Miredo client-hook: after Linux's default 1024, last resort
CLIENT_ROUTE_METRICS: Final = 16  # a second client's default route takes 1030, ... up to 1044
DEFAULT_ROUTE: Final = IPv6Network("::/0")
CLIENT_LINK_LOCAL_INTERFACE: Final = IPv6Interface(f"{CLIENT_LINK_LOCAL}/64")
TEREDO_ADDRESS_PREFIXLEN: Final = 32  # the client's address is on-link for the whole prefix

RT_TABLE_MAIN: Final = 254
RTN_LOCAL: Final = 2  # route type of a host's own address
ADDRESS_READY_TIMEOUT: Final = 2.0  # seconds configure_client waits for the kernel (see below)
ADDRESS_READY_POLL: Final = 0.005
IFF_MULTICAST: Final = 0x1000
# Without it an added address stays "tentative" (packets to it dropped) until the kernel's DAD
# work runs, even on a NOARP link where no DAD happens: a race right after configuration.
IFA_F_NODAD: Final = 0x02

_GONE: Final = frozenset({errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL, errno.ENODEV})


# --- one-shot operations ----------------------------------------------------------------------


async def interface_index(interface: Interface) -> int:
    """The index of `interface`; `UserError` when there is no such interface."""
    async with _session() as ipr:
        return await _index(ipr, interface)


async def set_link_up(interface: Interface, *, mtu: int | None = None) -> None:
    """Bring the link up (and set its MTU), with multicast off as on Miredo's tunnel.

    A point-to-point tunnel has no use for multicast; with the flag off the kernel sends no MLD
    reports into the TUN device for the core to discard.
    """
    async with _session() as ipr:
        await _set_up(ipr, await _index(ipr, interface), _name(interface), mtu)


async def set_link_down(interface: Interface) -> None:
    """Take the link down; a missing interface counts as down."""
    async with _session() as ipr:
        index = await _index_or_none(ipr, interface)
        if index is not None:
            await _link_set(ipr, index, _name(interface), "take the link down", state="down")


async def set_mtu(interface: Interface, mtu: int) -> None:
    """Set the link MTU (1280 for Teredo unless configured otherwise, RFC 4380 §5.1.2)."""
    async with _session() as ipr:
        index = await _index(ipr, interface)
        await _link_set(ipr, index, _name(interface), f"set the MTU to {mtu}", mtu=mtu)


async def add_address(interface: Interface, address: IPv6Interface) -> bool:
    """Add an IPv6 address with its prefix length; False when it was already there.

    The address is usable at once (`nodad`): a tunnel has no neighbours to detect.
    """
    async with _session() as ipr:
        return await _address(ipr, "add", await _index(ipr, interface), _name(interface), address)


async def remove_address(interface: Interface, address: IPv6Interface) -> bool:
    """Remove an IPv6 address; False when it (or the interface) was already gone."""
    async with _session() as ipr:
        index = await _index_or_none(ipr, interface)
        if index is None:
            return False
        return await _address(ipr, "del", index, _name(interface), address)


async def add_route(
    interface: Interface, destination: IPv6Network, *, metric: int | None = None
) -> bool:
    """Route `destination` through the interface (metric None: the kernel's 1024).

    False when the same route was already there.
    """
    async with _session() as ipr:
        index = await _index(ipr, interface)
        return await _route(ipr, "add", index, _name(interface), destination, metric)


async def remove_route(
    interface: Interface, destination: IPv6Network, *, metric: int | None = None
) -> bool:
    """Remove a route through the interface (metric None: whatever its metric).

    False when it (or the interface) was already gone.
    """
    async with _session() as ipr:
        index = await _index_or_none(ipr, interface)
        if index is None:
            return False
        return await _route(ipr, "del", index, _name(interface), destination, metric)


async def default_route_device(metric: int) -> str | None:
    """The interface of the main table's IPv6 default route with this metric, or None."""
    async with _session() as ipr:
        async for message in await ipr.route("dump", family=socket.AF_INET6):
            if (
                message["dst_len"] == 0
                and message.get("RTA_TABLE") == RT_TABLE_MAIN
                and message.get("RTA_PRIORITY") == metric
                and message.get("RTA_OIF")
            ):
                try:
                    return socket.if_indextoname(message.get("RTA_OIF"))
                except OSError:
                    return str(message.get("RTA_OIF"))
    return None


async def wait_until_local(address: IPv6Address, timeout: float = ADDRESS_READY_TIMEOUT) -> bool:
    """Wait until the kernel accepts packets for `address` as its own; False on timeout.

    The netlink acknowledgement of an added address comes before the kernel installs the
    address's local route, which its address-configuration work queue does a moment later
    (longer under load). Packets for the address arriving in between are dropped
    (Ip6InAddrErrors). Polls `ip route get ADDRESS` until it says `local`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with _session() as ipr:
        while True:
            try:
                answer = await ipr.route("get", dst=str(address), family=socket.AF_INET6)
                if answer and answer[0]["type"] == RTN_LOCAL:
                    return True
            except NetlinkError:  # no route at all yet
                pass
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(ADDRESS_READY_POLL)


async def flush_interface(interface: Interface) -> None:
    """Remove every IPv6 route (main table) and IPv6 address of the interface.

    What Miredo's client-hook does first (`ip -6 route flush dev`, `ip -6 address flush dev`).
    """
    async with _session() as ipr:
        index = await _index(ipr, interface)
        await _flush(ipr, index, _name(interface))


# --- sysctls ----------------------------------------------------------------------------------


def read_sysctl(name: str) -> str:
    """Read a sysctl of this network namespace, e.g. "net.ipv6.conf.all.forwarding".

    (A dotted interface name like "eth0.100" must be written with slashes around it instead:
    "net/ipv6/conf/eth0.100/forwarding".)
    """
    path = "/proc/sys/" + (name if "/" in name else name.replace(".", "/"))
    try:
        with open(path, encoding="ascii") as file:
            return file.read().strip()
    except FileNotFoundError:
        raise UserError(f"sysctl {name} does not exist on this system (no {path})") from None
    except OSError as error:
        raise UserError(f"cannot read sysctl {name}: {error.strerror}") from None


def ipv6_forwarding_enabled() -> bool:
    """Whether net.ipv6.conf.all.forwarding is on; a relay forwards nothing without it."""
    try:
        return read_sysctl("net.ipv6.conf.all.forwarding") != "0"
    except UserError:  # IPv6 disabled in this kernel
        return False


# --- the configurator -------------------------------------------------------------------------


class InterfaceConfigurator:
    """Configure one interface and remember every change so that `undo()` reverts it.

    Use one per TUN device, from the daemon's event loop::

        iface = InterfaceConfigurator(tun.name)
        try:
            await iface.configure_client(address, mtu)   # again on each address change
            ...
        finally:
            await iface.undo()                           # never raises

    The methods raise `UserError` like the module functions. Things that were already present
    are not recorded, so `undo()` never removes what someone else configured.
    """

    def __init__(self, interface: Interface) -> None:
        self.interface = interface
        self._link_up = False
        self._addresses: list[IPv6Interface] = []
        self._routes: list[tuple[IPv6Network, int | None]] = []

    @property
    def addresses(self) -> tuple[IPv6Interface, ...]:
        """The addresses this configurator added and has not removed."""
        return tuple(self._addresses)

    @property
    def routes(self) -> tuple[tuple[IPv6Network, int | None], ...]:
        """The (destination, metric) routes this configurator added and has not removed."""
        return tuple(self._routes)

    async def set_up(self, mtu: int | None = None) -> None:
        """Bring the link up (multicast off) with `mtu`; `undo()` takes it down again."""
        await set_link_up(self.interface, mtu=mtu)
        self._link_up = True

    async def add_address(self, address: IPv6Interface) -> None:
        if await add_address(self.interface, address):
            self._addresses.append(address)

    async def add_route(self, destination: IPv6Network, metric: int | None = None) -> None:
        if await add_route(self.interface, destination, metric=metric):
            self._routes.append((destination, metric))

    async def flush(self) -> None:
        """Remove every IPv6 address and route of the interface, ours or not."""
        await flush_interface(self.interface)
        self._addresses.clear()
        self._routes.clear()

    async def configure_client(self, address: IPv6Address, mtu: int = DEFAULT_MTU) -> None:
        """Give a qualified client its Teredo address, as Miredo's client-hook does.

        Flush, link up with `mtu`, `fe80::ffff:ffff:ffff/64`, `address/32`, and the default
        route with metric 1029; then wait (`wait_until_local`) until the kernel accepts packets
        for the address, so that the first packets after qualification are not lost. Call it
        again when the address changes; call `undo()` when the client goes offline.
        """
        await self.flush()
        await self.set_up(mtu)
        await self.add_address(CLIENT_LINK_LOCAL_INTERFACE)
        await self.add_address(IPv6Interface(f"{address}/{TEREDO_ADDRESS_PREFIXLEN}"))
        await self.add_default_route()
        if not await wait_until_local(address):
            log.warning(
                "the kernel has not activated %s yet; the first packets may be lost", address
            )

    async def add_default_route(self) -> None:
        """The client's last-resort default route: metric 1029, as Miredo's client-hook adds.

        The kernel refuses a second IPv6 default route of one metric through another interface
        (EEXIST), which left a second client on this host (another InterfaceName) silently
        without any. It takes the next free metric instead, so IPv6 keeps going through the
        first client while its route exists, then through this one; a warning says so.
        """
        taken: list[tuple[str, int]] = []  # (interface, metric) of the routes in the way
        for metric in range(CLIENT_ROUTE_METRIC, CLIENT_ROUTE_METRIC + CLIENT_ROUTE_METRICS):
            if await add_route(self.interface, DEFAULT_ROUTE, metric=metric):
                self._routes.append((DEFAULT_ROUTE, metric))
                break
            holder = await default_route_device(metric)
            if holder in (None, _name(self.interface)):  # ours already (or gone meanwhile)
                return
            taken.append((holder, metric))
        else:
            log.warning(
                "%s gets no default route: default routes with metrics %d to %d exist already "
                "(%s); route destinations through %s yourself, or stop another Teredo client",
                self.interface, CLIENT_ROUTE_METRIC, metric,
                ", ".join(f"{device} (metric {taken_metric})" for device, taken_metric in taken),
                self.interface,
            )  # fmt: skip
            return
        if taken:
            log.warning(
                "a default route with metric %d goes through %s already (another Teredo "
                "client?), so %s's default route has metric %d: IPv6 goes through %s only "
                "when that route is gone; to use %s now, route destinations through it or stop "
                "the other client",
                CLIENT_ROUTE_METRIC, taken[0][0], self.interface, metric,
                self.interface, self.interface,
            )  # fmt: skip

    async def configure_relay(
        self, prefix: IPv6Network = TEREDO_PREFIX, mtu: int = DEFAULT_MTU
    ) -> None:
        """Set up a relay's tunnel as Miredo does: link up, `fe80::ffff:ffff:ffff/64`, prefix route.

        The kernel then sends every packet for a Teredo address (`prefix`) into the TUN device.
        Check `ipv6_forwarding_enabled()` too: without forwarding nothing reaches it.
        """
        await self.set_up(mtu)
        await self.add_address(CLIENT_LINK_LOCAL_INTERFACE)
        await self.add_route(prefix)

    async def undo(self) -> None:
        """Revert every recorded change, newest first. Never raises; failures are logged."""
        for destination, metric in reversed(self._routes):
            await _quietly(remove_route(self.interface, destination, metric=metric))
        self._routes.clear()
        for address in reversed(self._addresses):
            await _quietly(remove_address(self.interface, address))
        self._addresses.clear()
        if self._link_up:
            await _quietly(set_link_down(self.interface))
            self._link_up = False


# --- internals --------------------------------------------------------------------------------


async def _quietly(operation: Awaitable[object]) -> None:
    try:
        await operation
    except UserError as error:
        log.warning("cleanup: %s", error)


@asynccontextmanager
async def _session() -> AsyncIterator[Any]:
    """One netlink connection; socket-level failures (not NetlinkError) become a UserError."""
    ipr = AsyncIPRoute()
    try:
        yield ipr
    except OSError as error:
        raise UserError(f"netlink request failed: {error.strerror or error}") from None
    finally:
        ipr.close()


def _name(interface: Interface) -> str:
    return interface if isinstance(interface, str) else f"interface #{interface}"


async def _index_or_none(ipr: Any, interface: Interface) -> int | None:
    if isinstance(interface, int):
        return interface
    found = await ipr.link_lookup(ifname=interface)
    return int(found[0]) if found else None


async def _index(ipr: Any, interface: Interface) -> int:
    index = await _index_or_none(ipr, interface)
    if index is None:
        raise UserError(
            f"interface {interface} does not exist; check InterfaceName and that the "
            "daemon's TUN device is still open"
        )
    return index


def _failure(action: str, name: str, error: NetlinkError) -> UserError:
    code = error.code
    if code in (errno.EPERM, errno.EACCES):
        return UserError(
            f"cannot {action} on {name}: permission denied; run as root or keep CAP_NET_ADMIN"
        )
    if code == errno.ENODEV:
        return UserError(f"cannot {action}: interface {name} no longer exists")
    return UserError(f"cannot {action} on {name}: {os.strerror(code)}")


async def _link_set(ipr: Any, index: int, name: str, action: str, **fields: Any) -> None:
    try:
        await ipr.link("set", index=index, **fields)
    except NetlinkError as error:
        if fields.get("state") == "down" and error.code in _GONE:
            return
        raise _failure(action, name, error) from None


async def _set_up(ipr: Any, index: int, name: str, mtu: int | None) -> None:
    if mtu is not None:
        await _link_set(ipr, index, name, f"set the MTU to {mtu}", mtu=mtu)
    await _link_set(ipr, index, name, "turn multicast off", flags=0, change=IFF_MULTICAST)
    await _link_set(ipr, index, name, "bring the link up", state="up")


async def _address(ipr: Any, command: str, index: int, name: str, address: IPv6Interface) -> bool:
    flags = {"flags": IFA_F_NODAD} if command == "add" else {}
    try:
        await ipr.addr(
            command,
            index=index,
            family=socket.AF_INET6,
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
            **flags,
        )
    except NetlinkError as error:
        if command == "add" and error.code == errno.EEXIST:
            return False
        if command == "del" and error.code in _GONE:
            return False
        verb = "add address" if command == "add" else "remove address"
        raise _failure(f"{verb} {address}", name, error) from None
    log.info("%s %s %s", "added" if command == "add" else "removed", address, name)
    return True


async def _route(
    ipr: Any,
    command: str,
    index: int,
    name: str,
    destination: IPv6Network,
    metric: int | None,
) -> bool:
    spec: dict[str, Any] = {"dst": str(destination), "oif": index, "family": socket.AF_INET6}
    if metric is not None:
        spec["priority"] = metric
    try:
        await ipr.route(command, **spec)
    except NetlinkError as error:
        if command == "add" and error.code == errno.EEXIST:
            return False
        if command == "del" and error.code in _GONE:
            return False
        verb = "add route" if command == "add" else "remove route"
        raise _failure(f"{verb} {destination}", name, error) from None
    log.info(
        "%s route %s dev %s%s",
        "added" if command == "add" else "removed",
        destination,
        name,
        f" metric {metric}" if metric is not None else "",
    )
    return True


async def _flush(ipr: Any, index: int, name: str) -> None:
    routes = []
    async for message in await ipr.route("dump", family=socket.AF_INET6, oif=index):
        if message.get("RTA_TABLE") == RT_TABLE_MAIN and message.get("RTA_OIF") == index:
            network = IPv6Network(f"{message.get('RTA_DST') or '::'}/{message['dst_len']}")
            routes.append((network, message.get("RTA_PRIORITY")))
    for network, metric in routes:
        await _route(ipr, "del", index, name, network, metric)
    addresses = []
    async for message in await ipr.addr("dump", family=socket.AF_INET6, index=index):
        if message["index"] == index:
            addresses.append(IPv6Interface(f"{message.get('IFA_ADDRESS')}/{message['prefixlen']}"))
    for address in addresses:
        await _address(ipr, "del", index, name, address)
