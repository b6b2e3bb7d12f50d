"""Network namespaces, veths, addresses, routes, sysctls and nftables, through pyroute2.

Nothing here touches the host's own namespace: each veth is created inside one lab namespace
with its peer placed directly in the other. Netlink sockets are opened, and sysctls written, by
the calling thread after it has entered the namespace (setns), and it returns to its own
namespace right after. Nothing forks: pyroute2's own netns helpers fork a child that inherits
our signal handlers, and a Ctrl-C landing in that child would run our clean-up code twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_interface
from pathlib import Path
from typing import Any, Final

from teredo.core.errors import UserError
from teredo.lab.topology import Address, Network

logger = logging.getLogger(__name__)

NETNS_DIR: Final = Path("/run/netns")
IFF_UP: Final = 0x1
IFF_RUNNING: Final = 0x40
IFF_LOWER_UP: Final = 0x10000
IFA_F_TENTATIVE: Final = 0x40
RT_SCOPE_LINK: Final = 253
# <sched.h> and <sys/mount.h>
CLONE_NEWNET: Final = 0x40000000
MS_BIND: Final = 4096
MS_REC: Final = 16384
MS_SHARED: Final = 1 << 20
MNT_DETACH: Final = 2

_libc = ctypes.CDLL(None, use_errno=True)


def namespace_path(name: str) -> Path:
    return NETNS_DIR / name


def namespace_exists(name: str) -> bool:
    return namespace_path(name).exists()


def list_namespaces() -> list[str]:
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def create_namespace(name: str) -> None:
    """Create a named namespace as `ip netns add` does, without forking.

    The calling thread unshares a fresh network namespace, bind-mounts it on /run/netns/NAME
    and returns to its own namespace.
    """
    if namespace_exists(name):
        raise UserError(f"network namespace {name} already exists; choose another --name")
    _share_netns_dir()
    path = namespace_path(name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    try:
        with _home_kept():
            _check(_libc.unshare(CLONE_NEWNET), "unshare a network namespace")
            _check(
                _libc.mount(b"/proc/thread-self/ns/net", bytes(path), b"none", MS_BIND, None),
                f"bind-mount the namespace on {path}",
            )
    except BaseException:
        _libc.umount2(bytes(path), MNT_DETACH)
        path.unlink(missing_ok=True)
        raise
    with iproute(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def remove_namespace(name: str) -> None:
    """Remove a named namespace as `ip netns del` does (its veths go with it)."""
    path = namespace_path(name)
    if path.exists():
        _libc.umount2(bytes(path), MNT_DETACH)
        path.unlink(missing_ok=True)


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, so mounts propagate."""
    NETNS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = bytes(NETNS_DIR)
    if _libc.mount(b"", target, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(target, target, b"none", MS_BIND | MS_REC, None), f"bind-mount {NETNS_DIR}")
    _check(_libc.mount(b"", target, b"none", MS_SHARED | MS_REC, None), f"share {NETNS_DIR}")


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"could not {what}: {os.strerror(error)}")


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "enter a network namespace")


@contextlib.contextmanager
def _home_kept() -> Iterator[None]:
    """Whatever the block does to the thread's namespace, return to the current one."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        yield
    finally:
        try:
            _setns(home)
        finally:
            os.close(home)


@contextlib.contextmanager
def entered(namespace: str) -> Iterator[None]:
    """Run the calling thread inside `namespace` for the duration of the block."""
    target = os.open(namespace_path(namespace), os.O_RDONLY)
    try:
        with _home_kept():
            _setns(target)
            yield
    finally:
        os.close(target)


@contextlib.contextmanager
def iproute(namespace: str) -> Iterator[Any]:
    """An IPRoute (netlink) socket opened inside `namespace` (it stays bound to it)."""
    from pyroute2 import IPRoute

    with entered(namespace):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def write_sysctls(namespace: str, items: Iterable[tuple[str, str]]) -> None:
    """Write sysctls through /proc/sys, which shows the namespace of the thread opening it."""
    with entered(namespace):
        for key, value in items:
            path = Path("/proc/sys") / key.replace(".", "/")
            path.write_text(value + "\n")


def read_sysctl(namespace: str, key: str) -> str:
    with entered(namespace):
        return (Path("/proc/sys") / key.replace(".", "/")).read_text().strip()


def create_veth(namespace_a: str, ifname_a: str, namespace_b: str, ifname_b: str) -> None:
    """A veth pair created in `namespace_a` with its peer placed directly in `namespace_b`."""
    peer_namespace = os.open(namespace_path(namespace_b), os.O_RDONLY)
    try:
        with iproute(namespace_a) as ipr:
            ipr.link(
                "add",
                ifname=ifname_a,
                kind="veth",
                peer={"ifname": ifname_b, "net_ns_fd": peer_namespace},
            )
    finally:
        os.close(peer_namespace)


def configure_interface(
    namespace: str, ifname: str, addresses: Iterable[Address], wire_segments: bool = False
) -> None:
    """Addresses, then up; with `wire_segments` the kernel segments GSO packets before they
    leave (gso_max_segs 1), as on a link without segmentation offload."""
    with iproute(namespace) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        if wire_segments:
            ipr.link("set", index=index, gso_max_segs=1)
        for address in addresses:
            ipr.addr(
                "add",
                index=index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                family=socket.AF_INET if address.version == 4 else socket.AF_INET6,
            )
        ipr.link("set", index=index, state="up")


def set_link_down(namespace: str, ifname: str) -> None:
    """Take an interface down (IPv6 forgets its addresses and routes: `restore_interface`)."""
    with iproute(namespace) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="down")


def restore_interface(
    namespace: str,
    ifname: str,
    addresses: Iterable[Address],
    routes: Iterable[tuple[Network, IPv4Address | IPv6Address]],
) -> None:
    """Bring an interface up again with the addresses and routes it lost, keeping those it
    kept."""
    from pyroute2 import NetlinkError

    with iproute(namespace) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, state="up")
        for address in addresses:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            with contextlib.suppress(NetlinkError):  # still there
                ipr.addr(
                    "add",
                    index=index,
                    address=str(address.ip),
                    prefixlen=address.network.prefixlen,
                    family=family,
                )
        for destination, gateway in routes:
            family = socket.AF_INET if destination.version == 4 else socket.AF_INET6
            with contextlib.suppress(NetlinkError):  # still there
                ipr.route("add", dst=str(destination), gateway=str(gateway), family=family)


def add_route(
    namespace: str,
    destination: Network,
    gateway: IPv4Address | IPv6Address,
    table: int | None = None,
) -> None:
    extra = {} if table is None else {"table": table}
    with iproute(namespace) as ipr:
        ipr.route(
            "add",
            dst=str(destination),
            gateway=str(gateway),
            family=socket.AF_INET if destination.version == 4 else socket.AF_INET6,
            **extra,
        )


def add_rule(namespace: str, iif: str, destination: Network, table: int) -> None:
    """A policy-routing rule: packets arriving on `iif` for `destination` look up `table`."""
    with iproute(namespace) as ipr:
        ipr.rule(
            "add",
            iifname=iif,
            dst=str(destination.network_address),
            dst_len=destination.prefixlen,
            table=table,
            family=socket.AF_INET if destination.version == 4 else socket.AF_INET6,
        )


def interface_counters(namespace: str) -> dict[str, dict[str, int]]:
    """Every interface's kernel counters in `namespace` (/proc/net/dev, read from inside)."""
    with entered(namespace):
        text = Path("/proc/thread-self/net/dev").read_text()
    return parse_net_dev(text)


_NET_DEV_FIELDS: Final = (
    "rx_bytes",
    "rx_packets",
    "rx_errors",
    "rx_dropped",
    "rx_fifo",
    "rx_frame",
    "rx_compressed",
    "rx_multicast",
    "tx_bytes",
    "tx_packets",
    "tx_errors",
    "tx_dropped",
    "tx_fifo",
    "tx_colls",
    "tx_carrier",
    "tx_compressed",
)


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/dev as {interface: {"rx_packets": ..., "tx_packets": ..., ...}}."""
    counters = {}
    for line in text.splitlines()[2:]:
        name, _, values = line.partition(":")
        numbers = values.split()
        if len(numbers) >= len(_NET_DEV_FIELDS):
            counters[name.strip()] = dict(zip(_NET_DEV_FIELDS, map(int, numbers), strict=False))
    return counters


def load_nftables(namespace: str, ruleset: str) -> None:
    """Load a ruleset with `nft -f -` inside the namespace."""
    if shutil.which("nft") is None or shutil.which("ip") is None:
        raise UserError("the lab needs nft and ip; install the nftables and iproute2 packages")
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "-f", "-"],
        input=ruleset,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise UserError(
            f"nft refused the NAT ruleset in {namespace}: {result.stderr.strip()}; "
            "check that nftables is installed and the kernel has nf_tables and NAT support"
        )


def interface_state(namespace: str, ifname: str) -> tuple[bool, list[Address]] | None:
    """(is up, addresses) of an interface in `namespace`, or None when it does not exist
    (also when it went away while being read: a restarting client removes its TUN device)."""
    from pyroute2 import NetlinkError

    with iproute(namespace) as ipr:
        indexes = ipr.link_lookup(ifname=ifname)
        if not indexes:
            return None
        index = indexes[0]
        try:
            link = ipr.get_links(index)[0]
            messages = list(ipr.get_addr(index=index))
        except NetlinkError as error:
            if error.code == errno.ENODEV:
                return None
            raise
        up = bool(link["flags"] & IFF_UP)
        addresses: list[Address] = []
        for message in messages:
            addresses.append(
                ip_interface(f"{message.get_attr('IFA_ADDRESS')}/{message['prefixlen']}")
            )
        return up, addresses


def unsettled_interfaces(namespace: str) -> list[str]:
    """Interfaces of `namespace` whose carrier or IPv6 link-local address is not ready yet.

    The kernel reports a veth's carrier through linkwatch, which may hold the event for up to
    a second, and only then gives the interface its link-local address. Until that address is
    usable, neighbour solicitations for packets whose source is not local (forwarded by a
    router, or sent by a Teredo server on behalf of a client) are not sent, and the first such
    packet waits a whole retransmission second.
    """
    unsettled = []
    with iproute(namespace) as ipr:
        ready = set()
        for message in ipr.get_addr(family=socket.AF_INET6):
            flags = message.get_attr("IFA_FLAGS", message["flags"])
            if message["scope"] == RT_SCOPE_LINK and not flags & IFA_F_TENTATIVE:
                ready.add(message["index"])
        for link in ipr.get_links():
            if link.get_attr("IFLA_IFNAME") == "lo":
                continue
            running = link["flags"] & IFF_RUNNING and link["flags"] & IFF_LOWER_UP
            if not running or link["index"] not in ready:
                unsettled.append(link.get_attr("IFLA_IFNAME"))
    return unsettled


def global_addresses_in(
    namespace: str, ifname: str, network: IPv6Network
) -> list[IPv6Address] | None:
    """Addresses of `ifname` inside `network`, or None when the interface does not exist."""
    state = interface_state(namespace, ifname)
    if state is None:
        return None
    return [a.ip for a in state[1] if isinstance(a.ip, IPv6Address) and a.ip in network]


def namespace_inode(name: str) -> tuple[int, int] | None:
    try:
        info = os.stat(namespace_path(name))
    except OSError:
        return None
    return info.st_dev, info.st_ino


def process_namespace_inode(pid: int) -> tuple[int, int] | None:
    try:
        info = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return info.st_dev, info.st_ino


def processes_in(names: Iterable[str]) -> dict[int, str]:
    """PIDs of the processes living in any of the named namespaces -> namespace name."""
    inodes = {}
    for name in names:
        inode = namespace_inode(name)
        if inode is not None:
            inodes[inode] = name
    found: dict[int, str] = {}
    if not inodes:
        return found
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            inode = process_namespace_inode(int(entry.name))
            if inode in inodes:
                found[int(entry.name)] = inodes[inode]
    return found
