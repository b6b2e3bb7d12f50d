"""Interface configuration over netlink: link, MTU, IPv6 addresses, routes; sysctls and the
host's IPv6 addresses from /proc.

The messages are `teredo.adapters.rtnetlink`'s (the standard library only: pyroute2 cost a
daemon 150 ms of start-up and 15 MiB). The operations are coroutines, awaited from the
daemon's loop (outside a loop, wrap them in `asyncio.run`), although the kernel answers each
request at once: only `wait_until_local` waits. `InterfaceConfigurator.configure_client_now` is
the client's configuration without a loop: the client's launch gives it its address before it
imports asyncio (`teredo.programs.client_start`), and asyncio is imported here only to wait.
They act on the network namespace of the calling process, take the interface by name or index,
and raise `UserError` with one sentence on failure (no such interface, permission denied, ...).

Adding something that is already there is not an error (the add returns False); neither is
removing something that is already gone (the remove returns False).

What a role adds, it must remove on exit: use `InterfaceConfigurator`, which remembers each
change and undoes them in reverse order. Its two recipes mirror what Miredo configures, so a
host looks the same whichever implementation runs:

- client (Miredo's client-hook): flush the interface, link up with the MTU, add
  `fe80::ffff:ffff:ffff/64`, `ADDRESS/32` and its prefix route (`2001::/32`, metric 256, as
  the kernel would add it with the address) and `default dev IFACE metric 1029`, so Teredo is
  the last-resort route (Linux's own default routes use metric 1024). Both routes go
  `via fe80::1` (`TUNNEL_NEXT_HOP`, see the relay below), so the address is added with
  IFA_F_NOPREFIXROUTE: a client talking to more than a thousand destinations (peers of a
  file-sharing program, say) keeps one neighbour entry. Where Miredo's hook fails silently (the
  kernel refuses a second default route of the same metric: a second client on this host),
  the client takes the next free metric, so it takes over when the first client's route
  goes, and logs a warning that says so;
- relay (observed from Miredo's relay): link up with the MTU, `fe80::ffff:ffff:ffff/64` and a
  route for the Teredo prefix. Miredo's is `2001::/32 dev IFACE`; ours is
  `2001::/32 via fe80::1 dev IFACE` (`TUNNEL_NEXT_HOP`): the kernel keeps a neighbour entry
  per next hop even on a device without a link layer, so a prefix route without one made an
  entry per Teredo destination, and a relay forwarding to more of them than the neighbour
  table holds (`gc_thresh3`, 1024 by default) created one and collected another for each
  packet (~4 µs of a 0.5 µs packet at 100 000 peers). The next hop is never resolved (the
  TUN device has no link layer): the packet goes into the tunnel as before.

Miredo's optional source-routing table (`table teredo`) is not reproduced.
"""

from __future__ import annotations

import _socket  # socket.py without its enums and selectors, which cost a launch ~1.5 ms
import errno
import os
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network, IPv6Address, IPv6Interface, IPv6Network

from teredo.adapters.rtnetlink import IFF_UP, RT_TABLE_MAIN, Rtnetlink, RtnetlinkError
from teredo.core.address import CLIENT_LINK_LOCAL, DEFAULT_MTU, TEREDO_PREFIX
from teredo.core.errors import UserError
from teredo.core.logger import get_logger
from teredo.core.record import record  # a dataclass without dataclasses' start-up cost

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

log = get_logger(__name__)  # imports logging when it logs (teredo.core.logger)

Interface = str | int
"""An interface by name ("teredo") or index."""

CLIENT_ROUTE_METRIC: Final = 1029  # Miredo client-hook: after Linux's default 1024, last resort
CLIENT_ROUTE_METRICS: Final = 16  # a second client's default route takes 1030, ... up to 1044
DEFAULT_ROUTE: Final = IPv6Network("::/0")
CLIENT_LINK_LOCAL_INTERFACE: Final = IPv6Interface(f"{CLIENT_LINK_LOCAL}/64")
# The next hop of the tunnel's routes (a relay's prefix route, a client's prefix and default
# routes; see the module doc): any link-local address that is not the interface's own; one
# next hop, one neighbour entry, whatever the number of destinations.
TUNNEL_NEXT_HOP: Final = IPv6Address("fe80::1")
TEREDO_ADDRESS_PREFIXLEN: Final = 32  # the client's address is on-link for the whole prefix

RTN_LOCAL: Final = 2  # route type of a host's own address
ADDRESS_READY_TIMEOUT: Final = 2.0  # seconds configure_client waits for the kernel (see below)
ADDRESS_READY_POLL: Final = 0.005
IFF_MULTICAST: Final = 0x1000
# Without it an added address stays "tentative" (packets to it dropped) until the kernel's DAD
# work runs, even on a NOARP link where no DAD happens: a race right after configuration.
IFA_F_NODAD: Final = 0x02
IFA_F_NOPREFIXROUTE: Final = 0x200  # the prefix route is ours to add (with a next hop)
PREFIX_ROUTE_METRIC: Final = 256  # the kernel's own, for a prefix route that comes with an address

IF_INET6: Final = "/proc/net/if_inet6"  # the host's IPv6 addresses, one per line
SCOPE_GLOBAL: Final = 0x00
_GONE: Final = frozenset({errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL, errno.ENODEV})


# --- one-shot operations ----------------------------------------------------------------------


async def interface_index(interface: Interface) -> int:
    """The index of `interface`; `UserError` when there is no such interface."""
    return _index(interface)


def interface_index_now(interface: Interface) -> int:
    """`interface_index` without an event loop."""
    return _index(interface)


async def set_link_up(interface: Interface, *, mtu: int | None = None) -> None:
    """Bring the link up (and set its MTU), with multicast off as on Miredo's tunnel.

    A point-to-point tunnel has no use for multicast; with the flag off the kernel sends no MLD
    reports into the TUN device for the core to discard.
    """
    index = _index(interface)
    with _session() as nl:
        _set_up(nl, index, _name(interface), mtu)


async def set_link_down(interface: Interface) -> None:
    """Take the link down; a missing interface counts as down."""
    index = _index_or_none(interface)
    if index is not None:
        with _session() as nl:
            _link_set(nl, index, _name(interface), "take the link down", change=IFF_UP)


async def set_mtu(interface: Interface, mtu: int) -> None:
    """Set the link MTU (1280 for Teredo unless configured otherwise, RFC 4380 §5.1.2)."""
    index = _index(interface)
    with _session() as nl:
        _link_set(nl, index, _name(interface), f"set the MTU to {mtu}", mtu=mtu)


async def add_address(interface: Interface, address: IPv6Interface) -> bool:
    """Add an IPv6 address with its prefix length; False when it was already there.

    The address is usable at once (`nodad`): a tunnel has no neighbours to detect.
    """
    index = _index(interface)
    with _session() as nl:
        return _address(nl, "add", index, _name(interface), address)


async def remove_address(interface: Interface, address: IPv6Interface) -> bool:
    """Remove an IPv6 address; False when it (or the interface) was already gone."""
    index = _index_or_none(interface)
    if index is None:
        return False
    with _session() as nl:
        return _address(nl, "del", index, _name(interface), address)


async def add_route(
    interface: Interface,
    destination: IPv6Network,
    *,
    metric: int | None = None,
    via: IPv6Address | None = None,
) -> bool:
    """Route `destination` through the interface (metric None: the kernel's 1024), to the
    next hop `via` when given.

    False when the same route was already there.
    """
    index = _index(interface)
    with _session() as nl:
        return _route(nl, "add", index, _name(interface), destination, metric, via)


async def remove_route(
    interface: Interface, destination: IPv6Network, *, metric: int | None = None
) -> bool:
    """Remove a route through the interface (metric None: whatever its metric).

    False when it (or the interface) was already gone.
    """
    index = _index_or_none(interface)
    if index is None:
        return False
    with _session() as nl:
        return _route(nl, "del", index, _name(interface), destination, metric)


async def default_route_device(metric: int) -> str | None:
    """The interface of the main table's IPv6 default route with this metric, or None."""
    return _default_route_device(metric)


def _default_route_device(metric: int) -> str | None:
    with _session() as nl:
        routes = nl.routes()
    for route in routes:
        if (
            route.prefixlen == 0
            and route.table == RT_TABLE_MAIN
            and route.metric == metric
            and route.output_index
        ):
            try:
                return _socket.if_indextoname(route.output_index)
            except OSError:
                return str(route.output_index)
    return None


async def wait_until_local(address: IPv6Address, timeout: float = ADDRESS_READY_TIMEOUT) -> bool:
    """Wait until the kernel accepts packets for `address` as its own; False on timeout.

    The netlink acknowledgement of an added address comes before the kernel installs the
    address's local route, which its address-configuration work queue does a moment later
    (longer under load). Packets for the address arriving in between are dropped
    (Ip6InAddrErrors). Polls `ip route get ADDRESS` until it says `local`.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with _session() as nl:
        while not _is_local(nl, address):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(ADDRESS_READY_POLL)
    return True


def wait_until_local_now(address: IPv6Address, timeout: float = ADDRESS_READY_TIMEOUT) -> bool:
    """`wait_until_local` without an event loop: sleeps between the polls."""
    import time

    deadline = time.monotonic() + timeout
    with _session() as nl:
        while not _is_local(nl, address):
            if time.monotonic() >= deadline:
                return False
            time.sleep(ADDRESS_READY_POLL)
    return True


def _is_local(nl: Rtnetlink, address: IPv6Address) -> bool:
    try:
        route = nl.get_route(address)
    except RtnetlinkError:  # no route at all yet
        return False
    return route is not None and route.type == RTN_LOCAL


async def flush_interface(interface: Interface) -> None:
    """Remove every IPv6 route (main table) and IPv6 address of the interface.

    What Miredo's client-hook does first (`ip -6 route flush dev`, `ip -6 address flush dev`).
    """
    index = _index(interface)
    with _session() as nl:
        _flush(nl, index, _name(interface))


async def ipv4_networks() -> tuple[IPv4Network, ...]:
    """The IPv4 subnets of this host's interfaces."""
    return ipv4_networks_now()


def ipv4_networks_now() -> tuple[IPv4Network, ...]:
    """`ipv4_networks` without an event loop."""
    with _session() as nl:
        return tuple(
            IPv4Network(f"{entry.address}/{entry.prefixlen}", strict=False)
            for entry in nl.addresses(_socket.AF_INET)
        )


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


@record
class HostAddress:
    """One line of /proc/net/if_inet6: an IPv6 address of this host and where it is."""

    address: IPv6Address
    scope: int  # 0x00 global, 0x20 link, ...
    flags: int  # IFA_F_* (tentative, DAD failed, ...)
    interface: str


def read_host_addresses(path: str = IF_INET6) -> list[HostAddress] | None:
    """Every IPv6 address of this host, from /proc (no netlink socket needed); None when the
    file cannot be read (IPv6 disabled). Lines that do not parse are skipped."""
    try:
        with open(path, encoding="ascii") as file:  # not pathlib: a daemon's footprint
            lines = file.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        try:
            address = IPv6Address(bytes.fromhex(fields[0]))
            found.append(HostAddress(address, int(fields[3], 16), int(fields[4], 16), fields[5]))
        except ValueError:
            continue
    return found


def host_addresses(exclude_interface: str | None = None, path: str = IF_INET6) -> list[IPv6Address]:
    """The host's global-scope IPv6 addresses (not those of `exclude_interface`)."""
    return [
        entry.address
        for entry in read_host_addresses(path) or []
        if entry.interface != exclude_interface
        and entry.scope == SCOPE_GLOBAL
        and not entry.address.is_multicast
    ]


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
    are not recorded, so `undo()` never removes what someone else configured. Every route it
    adds goes into the tunnel via `TUNNEL_NEXT_HOP` (see the module doc).
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
        self._set_up(mtu)

    async def add_address(self, address: IPv6Interface) -> None:
        self._add_address(address)

    async def add_route(self, destination: IPv6Network, metric: int | None = None) -> None:
        """Route `destination` into the tunnel (via `TUNNEL_NEXT_HOP`, as every route here)."""
        self._add_route(destination, metric)

    async def flush(self) -> None:
        """Remove every IPv6 address and route of the interface, ours or not."""
        self._flush()

    async def configure_client(self, address: IPv6Address, mtu: int = DEFAULT_MTU) -> None:
        """Give a qualified client its Teredo address, as Miredo's client-hook does.

        Flush, link up with `mtu`, `fe80::ffff:ffff:ffff/64`, `address/32`, and the default
        route with metric 1029; then wait (`wait_until_local`) until the kernel accepts packets
        for the address, so that the first packets after qualification are not lost. Call it
        again when the address changes; call `undo()` when the client goes offline.
        """
        self._configure_client(address, mtu)
        if not await wait_until_local(address):
            _not_active_yet(address)

    def configure_client_now(self, address: IPv6Address, mtu: int = DEFAULT_MTU) -> None:
        """`configure_client` without an event loop (the client's launch, before asyncio)."""
        self._configure_client(address, mtu)
        if not wait_until_local_now(address):
            _not_active_yet(address)

    def _configure_client(self, address: IPv6Address, mtu: int) -> None:
        self._flush()
        self._set_up(mtu)
        self._add_address(CLIENT_LINK_LOCAL_INTERFACE)
        teredo = IPv6Interface(f"{address}/{TEREDO_ADDRESS_PREFIXLEN}")
        self._add_address(teredo, IFA_F_NODAD | IFA_F_NOPREFIXROUTE)
        self._add_route(teredo.network, PREFIX_ROUTE_METRIC)
        self._add_default_route()

    # The kernel answers each request at once: the steps are synchronous, and the coroutines
    # above are for the daemons' loops.

    def _set_up(self, mtu: int | None) -> None:
        index = _index(self.interface)
        with _session() as nl:
            _set_up(nl, index, _name(self.interface), mtu)
        self._link_up = True

    def _add_address(self, address: IPv6Interface, flags: int = IFA_F_NODAD) -> None:
        index = _index(self.interface)
        with _session() as nl:
            if _address(nl, "add", index, _name(self.interface), address, flags):
                self._addresses.append(address)

    def _add_route(self, destination: IPv6Network, metric: int | None) -> bool:
        index = _index(self.interface)
        with _session() as nl:
            name = _name(self.interface)
            added = _route(nl, "add", index, name, destination, metric, TUNNEL_NEXT_HOP)
        if added:
            self._routes.append((destination, metric))
        return added

    def _flush(self) -> None:
        index = _index(self.interface)
        with _session() as nl:
            _flush(nl, index, _name(self.interface))
        self._addresses.clear()
        self._routes.clear()

    async def add_default_route(self) -> None:
        """The client's last-resort default route: metric 1029, as Miredo's client-hook adds.

        The kernel refuses a second IPv6 default route of one metric through another interface
        (EEXIST), which left a second client on this host (another InterfaceName) silently
        without any. It takes the next free metric instead, so IPv6 keeps going through the
        first client while its route exists, then through this one; a warning says so.
        """
        self._add_default_route()

    def _add_default_route(self) -> None:
        taken: list[tuple[str, int]] = []  # (interface, metric) of the routes in the way
        for metric in range(CLIENT_ROUTE_METRIC, CLIENT_ROUTE_METRIC + CLIENT_ROUTE_METRICS):
            if self._add_route(DEFAULT_ROUTE, metric):
                break
            holder = _default_route_device(metric)
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


def _not_active_yet(address: IPv6Address) -> None:
    log.warning("the kernel has not activated %s yet; the first packets may be lost", address)


async def _quietly(operation: Awaitable[object]) -> None:
    try:
        await operation
    except UserError as error:
        log.warning("cleanup: %s", error)


@contextmanager
def _session() -> Iterator[Rtnetlink]:
    """One netlink socket; a failure the operation did not word itself becomes a UserError."""
    try:
        with Rtnetlink() as nl:
            yield nl
    except OSError as error:
        raise UserError(f"netlink request failed: {error.strerror or error}") from None


def _name(interface: Interface) -> str:
    return interface if isinstance(interface, str) else f"interface #{interface}"


def _index_or_none(interface: Interface) -> int | None:
    if isinstance(interface, int):
        return interface
    try:
        return _socket.if_nametoindex(interface)
    except OSError:  # ENODEV, or a name longer than an interface's
        return None


def _index(interface: Interface) -> int:
    index = _index_or_none(interface)
    if index is None:
        raise UserError(
            f"interface {interface} does not exist; check InterfaceName and that the "
            "daemon's TUN device is still open"
        )
    return index


def _failure(action: str, name: str, error: OSError) -> UserError:
    code = error.errno
    if code in (errno.EPERM, errno.EACCES):
        return UserError(
            f"cannot {action} on {name}: permission denied; run as root or keep CAP_NET_ADMIN"
        )
    if code == errno.ENODEV:
        return UserError(f"cannot {action}: interface {name} no longer exists")
    return UserError(f"cannot {action} on {name}: {os.strerror(code or errno.EIO)}")


def _link_set(
    nl: Rtnetlink,
    index: int,
    name: str,
    action: str,
    *,
    flags: int = 0,
    change: int = 0,
    mtu: int | None = None,
) -> None:
    """One RTM_NEWLINK: the `change` flags set to `flags` (as in ifinfomsg), and `mtu`."""
    try:
        nl.set_link(index, flags=flags, change=change, mtu=mtu)
    except RtnetlinkError as error:
        if change == IFF_UP and not flags and error.errno in _GONE:
            return  # taking down a link that is gone
        raise _failure(action, name, error) from None


def _set_up(nl: Rtnetlink, index: int, name: str, mtu: int | None) -> None:
    if mtu is not None:
        _link_set(nl, index, name, f"set the MTU to {mtu}", mtu=mtu)
    _link_set(nl, index, name, "turn multicast off", flags=0, change=IFF_MULTICAST)
    _link_set(nl, index, name, "bring the link up", flags=IFF_UP, change=IFF_UP)


def _address(
    nl: Rtnetlink,
    command: str,
    index: int,
    name: str,
    address: IPv6Interface,
    flags: int = IFA_F_NODAD,
) -> bool:
    prefixlen = address.network.prefixlen
    try:
        if command == "add":
            nl.add_address(index, address.ip, prefixlen, flags)
        else:
            nl.remove_address(index, address.ip, prefixlen)
    except RtnetlinkError as error:
        if command == "add" and error.errno == errno.EEXIST:
            return False
        if command == "del" and error.errno in _GONE:
            return False
        verb = "add address" if command == "add" else "remove address"
        raise _failure(f"{verb} {address}", name, error) from None
    log.info("%s %s %s", "added" if command == "add" else "removed", address, name)
    return True


def _route(
    nl: Rtnetlink,
    command: str,
    index: int,
    name: str,
    destination: IPv6Network,
    metric: int | None,
    via: IPv6Address | None = None,
) -> bool:
    address, prefixlen = destination.network_address, destination.prefixlen
    try:
        if command == "add":
            nl.add_route(address, prefixlen, index, metric, via)
        else:
            nl.remove_route(address, prefixlen, index, metric)
    except RtnetlinkError as error:
        if command == "add" and error.errno == errno.EEXIST:
            return False
        if command == "del" and error.errno in _GONE:
            return False
        verb = "add route" if command == "add" else "remove route"
        raise _failure(f"{verb} {destination}", name, error) from None
    log.info(
        "%s route %s%s dev %s%s",
        "added" if command == "add" else "removed",
        destination,
        f" via {via}" if via is not None else "",
        name,
        f" metric {metric}" if metric is not None else "",
    )
    return True


def _flush(nl: Rtnetlink, index: int, name: str) -> None:
    try:
        routes = [
            (IPv6Network(f"{route.destination or '::'}/{route.prefixlen}"), route.metric)
            for route in nl.routes()
            if route.table == RT_TABLE_MAIN and route.output_index == index
        ]
    except RtnetlinkError as error:
        raise _failure("list the routes", name, error) from None
    for network, metric in routes:
        _route(nl, "del", index, name, network, metric)
    try:
        addresses = [
            IPv6Interface(f"{entry.address}/{entry.prefixlen}")
            for entry in nl.addresses(_socket.AF_INET6)
            if entry.index == index
        ]
    except RtnetlinkError as error:
        raise _failure("list the addresses", name, error) from None
    for address in addresses:
        _address(nl, "del", index, name, address)
