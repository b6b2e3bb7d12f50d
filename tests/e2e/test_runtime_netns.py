"""The adapters (TUN, netlink, UDP) against the real kernel, in a network namespace of its own.

Each test gets a fresh, uniquely named namespace; the test thread enters it (setns) for the
duration of the test, so TUN devices, netlink sockets, sysctls and UDP sockets opened by the
adapters land there. The namespace is always left and deleted, even when the test fails.
Configuration is verified with pyroute2 directly, not with the module under test.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

import pytest

from teredo.adapters import netlink
from teredo.adapters.netlink import InterfaceConfigurator
from teredo.adapters.tun import TunDevice, open_tun
from teredo.adapters.udp import join_multicast, open_udp_socket
from teredo.core.address import DISCOVERY_GROUP
from teredo.core.errors import UserError
from teredo.core.wire import encode_echo, is_echo, parse_echo
from testsupport import require_root

pytestmark = pytest.mark.root

# The often quoted example address (not from an RFC): server 65.54.227.120, mapped
# 192.0.2.45:40000, cone.
CLIENT_ADDRESS = IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2")
OTHER_ADDRESS = IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd3")
NATIVE_HOST = IPv6Address("2001:db8:2::2")
IFF_UP = 0x1
IFF_MULTICAST = 0x1000
RT_TABLE_MAIN = 254
IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40
WAIT = 5.0  # seconds to wait for the kernel to hand a packet over; not a timing assertion


@pytest.fixture
def namespace() -> Iterator[str]:
    require_root()
    from pyroute2 import netns

    name = f"teredo-rt-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        netns.pushns(name)
        try:
            yield name
        finally:
            netns.popns()
    finally:
        netns.remove(name)


@pytest.fixture
def tun(namespace: str) -> Iterator[TunDevice]:
    device = open_tun("teredo")
    try:
        yield device
    finally:
        device.close()


def link(name: str) -> dict[str, Any]:
    """flags, mtu of an interface, or {} when it does not exist (pyroute2, not our module)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return {}
        message = ipr.link("get", index=found[0])[0]
        return {"flags": message["flags"], "mtu": message.get("IFLA_MTU")}


def addresses(name: str) -> set[IPv6Interface]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        return {
            IPv6Interface(f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}")
            for m in ipr.addr("dump", family=socket.AF_INET6, index=index)
        }


def address_flags(name: str, address: IPv6Interface) -> int:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        for m in ipr.addr("dump", family=socket.AF_INET6, index=index):
            if m.get("IFA_ADDRESS") == str(address.ip):
                return int(m.get("IFA_FLAGS") or m["flags"])
    raise AssertionError(f"{address} not on {name}")


def routes(name: str) -> set[tuple[IPv6Network, int]]:
    """(destination, metric) of the main-table IPv6 routes through the interface."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        return {
            (IPv6Network(f"{m.get('RTA_DST') or '::'}/{m['dst_len']}"), m.get("RTA_PRIORITY"))
            for m in ipr.route("dump", family=socket.AF_INET6)
            if m.get("RTA_OIF") == index and m.get("RTA_TABLE") == RT_TABLE_MAIN
        }


def run(coroutine_function: Callable[[], Any]) -> Any:
    return asyncio.run(coroutine_function())


def receive(tun: TunDevice, wanted: Callable[[bytes], bool]) -> bytes:
    """The first packet from the TUN device that `wanted` accepts (others are skipped)."""
    deadline = time.monotonic() + WAIT
    found: list[bytes] = []
    while not found and time.monotonic() < deadline:
        select.select([tun.fileno()], [], [], 0.2)
        tun.drain(lambda view: found.extend([bytes(view)] if wanted(bytes(view)) else []))
    assert found, "the kernel did not route the packet into the TUN device"
    return found[0]


def test_client_configuration_mirrors_miredo_and_is_undone(tun: TunDevice) -> None:
    configurator = InterfaceConfigurator(tun.name)
    run(lambda: configurator.configure_client(CLIENT_ADDRESS, 1280))

    state = link("teredo")
    assert state["flags"] & IFF_UP and not state["flags"] & IFF_MULTICAST
    assert state["mtu"] == 1280
    ours = {IPv6Interface("fe80::ffff:ffff:ffff/64"), IPv6Interface(f"{CLIENT_ADDRESS}/32")}
    assert ours <= addresses("teredo")
    flags = address_flags("teredo", IPv6Interface(f"{CLIENT_ADDRESS}/32"))
    assert flags & IFA_F_NODAD and not flags & IFA_F_TENTATIVE  # usable at once
    table = routes("teredo")
    assert (IPv6Network("::/0"), 1029) in table
    assert (IPv6Network("2001::/32"), 256) in table  # the /32's, as the kernel would add it
    assert configurator.addresses == (
        IPv6Interface("fe80::ffff:ffff:ffff/64"),
        IPv6Interface(f"{CLIENT_ADDRESS}/32"),
    )
    assert configurator.routes == ((IPv6Network("2001::/32"), 256), (IPv6Network("::/0"), 1029))

    # The address changes: configuring again replaces everything.
    run(lambda: configurator.configure_client(OTHER_ADDRESS, 1400))
    assert IPv6Interface(f"{CLIENT_ADDRESS}/32") not in addresses("teredo")
    assert IPv6Interface(f"{OTHER_ADDRESS}/32") in addresses("teredo")
    assert [r for r in routes("teredo") if r[0].prefixlen == 0] == [(IPv6Network("::/0"), 1029)]
    assert link("teredo")["mtu"] == 1400

    run(configurator.undo)
    assert not link("teredo")["flags"] & IFF_UP
    assert addresses("teredo").isdisjoint(
        {IPv6Interface("fe80::ffff:ffff:ffff/64"), IPv6Interface(f"{OTHER_ADDRESS}/32")}
    )
    assert (IPv6Network("::/0"), 1029) not in routes("teredo")
    assert not configurator.addresses and not configurator.routes

    tun.close()
    assert link("teredo") == {}, "the TUN interface goes away with its descriptor"
    run(configurator.undo)  # undo after the interface vanished: still quiet


def test_a_second_client_takes_over_the_default_route_when_the_first_goes(
    tun: TunDevice, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel refuses a second default route of metric 1029: a second client (another
    InterfaceName) once got none and said nothing. It gets the next metric and a warning."""
    first = InterfaceConfigurator(tun.name)
    run(lambda: first.configure_client(CLIENT_ADDRESS, 1280))
    other = open_tun("teredo2")
    try:
        second = InterfaceConfigurator(other.name)
        with caplog.at_level(logging.WARNING, logger="teredo.adapters.netlink"):
            run(lambda: second.configure_client(OTHER_ADDRESS, 1280))
        assert (IPv6Network("::/0"), 1030) in routes("teredo2")
        assert second.routes == ((IPv6Network("::/0"), 1030),)
        assert [record.getMessage() for record in caplog.records] == [
            "a default route with metric 1029 goes through teredo already (another Teredo "
            "client?), so teredo2's default route has metric 1030: IPv6 goes through teredo2 "
            "only when that route is gone; to use teredo2 now, route destinations through it "
            "or stop the other client"
        ]
        # The first client stops: the second one's route is the default now, and stays its own.
        run(first.undo)
        assert (IPv6Network("::/0"), 1030) in routes("teredo2")
        run(second.undo)
        assert not any(network.prefixlen == 0 for network, _ in routes("teredo2"))
    finally:
        other.close()


def test_relay_configuration_and_forwarding_sysctl(tun: TunDevice) -> None:
    configurator = InterfaceConfigurator("teredo")
    run(lambda: configurator.configure_relay())
    assert (IPv6Network("2001::/32"), 1024) in routes("teredo")
    assert IPv6Interface("fe80::ffff:ffff:ffff/64") in addresses("teredo")

    assert netlink.read_sysctl("net.ipv6.conf.all.forwarding") == "0"  # a fresh namespace
    assert netlink.ipv6_forwarding_enabled() is False
    with open("/proc/sys/net/ipv6/conf/all/forwarding", "w") as file:
        file.write("1")
    assert netlink.ipv6_forwarding_enabled() is True

    run(configurator.undo)
    assert (IPv6Network("2001::/32"), 1024) not in routes("teredo")


@pytest.mark.parametrize("role", ["relay", "client"])
def test_the_tunnel_routes_make_one_neighbour_entry_for_all_destinations(
    tun: TunDevice, role: str
) -> None:
    """The tunnel's routes have a next hop, so packets to 3000 Teredo addresses (and, from a
    client, 3000 native ones) leave one neighbour entry on the tunnel, not one each (which the
    kernel collected again, per packet, past its table's bound: teredo.adapters.netlink)."""
    import subprocess

    configurator = InterfaceConfigurator("teredo")
    if role == "relay":
        run(lambda: configurator.configure_relay())
    else:
        run(lambda: configurator.configure_client(CLIENT_ADDRESS))
    shown = subprocess.run(
        ["ip", "-6", "route", "show", "dev", "teredo"], capture_output=True, text=True, check=True
    ).stdout
    assert "2001::/32 via fe80::1 " in shown
    if role == "client":
        assert "default via fe80::1 " in shown
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        for peer in range(3000):
            sock.sendto(b"x", (f"2001:0:c633:6402::{peer + 1:x}", 9))
            if role == "client":
                sock.sendto(b"x", (f"2001:db8:77::{peer + 1:x}", 9))
    entries = subprocess.run(
        ["ip", "-6", "neigh", "show", "nud", "all", "dev", "teredo"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert len(entries) <= 2, entries  # fe80::1 (and a multicast one, if any)


def test_packets_through_the_tun_device(tun: TunDevice) -> None:
    """An echo request written into the TUN device comes back as the kernel's reply."""
    run(lambda: InterfaceConfigurator(tun.name).configure_client(CLIENT_ADDRESS))
    request = encode_echo(NATIVE_HOST, CLIENT_ADDRESS, 0x7E7E, 1, b"teredo runtime")
    assert tun.write(request) is True

    def is_our_reply(packet: bytes) -> bool:
        if not is_echo(packet):
            return False
        echo = parse_echo(packet)
        return not echo.is_request and echo.identifier == 0x7E7E

    echo = parse_echo(receive(tun, is_our_reply))
    assert (echo.source, echo.destination) == (CLIENT_ADDRESS, NATIVE_HOST)
    assert (echo.sequence, echo.data) == (1, b"teredo runtime")

    assert tun.write(b"\x00not an ip packet") is False  # the kernel says EINVAL: counted
    assert tun.counters()["write_errors"] == 1


def test_operations_are_idempotent_and_leave_foreign_configuration(tun: TunDevice) -> None:
    foreign = IPv6Interface("2001:db8:f::1/64")

    async def steps() -> None:
        await netlink.set_link_up("teredo")
        assert await netlink.add_address("teredo", foreign) is True
        assert await netlink.add_address(tun.index, foreign) is False  # already there
        configurator = InterfaceConfigurator("teredo")
        await configurator.add_address(foreign)  # present before: not recorded
        await configurator.add_route(IPv6Network("2001:db8:9::/48"), metric=5)
        await configurator.undo()
        assert await netlink.remove_route("teredo", IPv6Network("2001:db8:9::/48")) is False

    run(steps)
    assert foreign in addresses("teredo")


def test_errors_are_one_sentence(tun: TunDevice) -> None:
    with pytest.raises(UserError) as caught:
        run(lambda: netlink.set_mtu("nosuchif", 1280))
    assert str(caught.value) == (
        "interface nosuchif does not exist; check InterfaceName and that the daemon's TUN "
        "device is still open"
    )
    with pytest.raises(UserError, match="cannot set the MTU to 10 on teredo: Invalid argument"):
        run(lambda: netlink.set_mtu("teredo", 10))  # below IPv4's 68
    assert run(lambda: netlink.remove_address("nosuchif", IPv6Interface("2001:db8::1/64"))) is False
    with pytest.raises(UserError, match="already in use"):
        open_tun("teredo")  # the fixture holds it, without multi-queue


def test_multi_queue(namespace: str) -> None:
    first = open_tun("teredo-mq", multi_queue=True)
    try:
        second = open_tun("teredo-mq", multi_queue=True)
        try:
            assert first.name == second.name == "teredo-mq"
            assert first.fileno() != second.fileno()
        finally:
            second.close()
        assert link("teredo-mq") != {}, "one queue left: the interface stays"
    finally:
        first.close()
    assert link("teredo-mq") == {}


def test_discovery_multicast_with_pktinfo(namespace: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:  # loopback with multicast: the one link of a fresh namespace
        index = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=index, state="up")
        ipr.link("set", index=index, flags=IFF_MULTICAST, change=IFF_MULTICAST)

    receiver = open_udp_socket(DISCOVERY_GROUP, 3544, pktinfo=True, reuse_address=True)
    sender = open_udp_socket("127.0.0.1", 0)
    try:
        join_multicast(receiver, "127.0.0.1")
        sock = receiver.sock
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
        sender.sock.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
        )
        assert sender.send(b"unicast", ("127.0.0.1", 3544)) is True
        assert sender.send(b"discovery bubble", (str(DISCOVERY_GROUP), 3544)) is True
        got: list[tuple[bytes, tuple[str, int], str]] = []
        deadline = time.monotonic() + WAIT
        while not got and time.monotonic() < deadline:
            select.select([receiver.fileno()], [], [], 0.2)
            receiver.drain_pktinfo(
                lambda view, source, dest: got.append((bytes(view), source, dest))
            )
    finally:
        receiver.close()
        sender.close()
    # Bound to the group, the receiver never sees the unicast datagram.
    assert got == [(b"discovery bubble", sender.local, "224.0.0.253")]


def test_rtnetlink_against_the_kernel(tun: TunDevice) -> None:
    """The stdlib rtnetlink socket: the kernel's errnos, and dumps that agree with pyroute2's."""
    from pyroute2 import IPRoute

    from teredo.adapters.rtnetlink import IFF_UP, Rtnetlink, RtnetlinkError

    prefix = IPv6Address("2001:db8:7::")
    with Rtnetlink() as nl:
        nl.set_link(tun.index, flags=IFF_UP, change=IFF_UP, mtu=1400)
        assert link("teredo")["mtu"] == 1400
        assert link("teredo")["flags"] & IFF_UP
        nl.add_address(tun.index, CLIENT_ADDRESS, 32, 0x02)
        with pytest.raises(RtnetlinkError) as caught:
            nl.add_address(tun.index, CLIENT_ADDRESS, 32, 0x02)
        assert caught.value.errno == errno.EEXIST
        nl.add_route(prefix, 48, tun.index, 7)
        with pytest.raises(RtnetlinkError) as caught:
            nl.add_route(prefix, 48, tun.index, 7)
        assert caught.value.errno == errno.EEXIST
        assert (IPv6Network("2001:db8:7::/48"), 7) in routes("teredo")

        mine = {
            (route.destination, route.prefixlen, route.metric)
            for route in nl.routes()
            if route.output_index == tun.index and route.table == RT_TABLE_MAIN
        }
        with IPRoute() as ipr:
            theirs = {
                (
                    IPv6Address(m.get("RTA_DST") or "::") if m["dst_len"] else None,
                    m["dst_len"],
                    m.get("RTA_PRIORITY"),
                )
                for m in ipr.route("dump", family=socket.AF_INET6)
                if m.get("RTA_OIF") == tun.index and m.get("RTA_TABLE") == RT_TABLE_MAIN
            }
        assert mine == theirs
        assert (prefix, 48, 7) in mine
        assert {
            IPv6Interface(f"{entry.address}/{entry.prefixlen}")
            for entry in nl.addresses(socket.AF_INET6)
            if entry.index == tun.index
        } == addresses("teredo")

        assert run(lambda: netlink.wait_until_local(CLIENT_ADDRESS, timeout=WAIT)) is True
        local = nl.get_route(CLIENT_ADDRESS)
        assert local is not None
        assert local.type == 2  # RTN_LOCAL, what wait_until_local waited for

        nl.remove_route(prefix, 48, tun.index, None)  # any metric
        with pytest.raises(RtnetlinkError) as caught:
            nl.remove_route(prefix, 48, tun.index, None)
        assert caught.value.errno == errno.ESRCH
        nl.remove_address(tun.index, CLIENT_ADDRESS, 32)
        with pytest.raises(RtnetlinkError) as caught:
            nl.remove_address(tun.index, CLIENT_ADDRESS, 32)
        assert caught.value.errno == errno.EADDRNOTAVAIL
        with pytest.raises(RtnetlinkError) as caught:
            nl.set_link(99999, flags=IFF_UP, change=IFF_UP)
        assert caught.value.errno == errno.ENODEV


def test_ipv4_networks(namespace: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=index, state="up")
        ipr.addr("add", index=index, address="192.0.2.9", prefixlen=24)
    networks = run(netlink.ipv4_networks)
    assert IPv4Network("192.0.2.0/24") in networks
    assert IPv4Network("127.0.0.0/8") in networks
