"""A relay's health (teredo.core.health) and how the daemon applies it to its route
(teredo.programs.relay_health), with fake route functions and files."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from teredo.adapters.netlink import TUNNEL_NEXT_HOP
from teredo.core.health import HealthFacts, Unhealthy, judge
from teredo.lab import bgp
from teredo.programs.relay_health import (
    ANNOUNCED_METRIC,
    WITHDRAWN_METRIC,
    RelayHealthWatcher,
    native_ipv6_usable,
    udp_socket_usable,
)

PREFIX = IPv6Network("2001::/32")
# /proc/net/if_inet6: address, ifindex, prefix length, scope, flags, name
GLOBAL_ETH0 = "20010db8000300000000000000000002 02 40 00 80     eth0\n"
LINK_LOCAL = "fe80000000000000000000000000abcd 02 40 20 80     eth0\n"
TENTATIVE = "20010db8000300000000000000000003 02 40 00 40     eth0\n"
ON_TEREDO = "20010000000000000000000000000001 05 20 00 80   teredo\n"


def test_healthy_only_when_nothing_stands_against_it() -> None:
    assert judge(HealthFacts(udp_socket=True, native_ipv6=True)).healthy
    health = judge(HealthFacts(udp_socket=False, native_ipv6=False, draining=True, stopping=True))
    assert not health.healthy
    assert health.reasons == (
        Unhealthy.STOPPING,
        Unhealthy.DRAINING,
        Unhealthy.UDP_SOCKET,
        Unhealthy.NATIVE_IPV6,
    )
    assert "stopping" in health.explain() and "UDP socket" in health.explain()
    assert judge(HealthFacts(udp_socket=True, native_ipv6=True)).explain() == "healthy"


def _sysfs(tmp_path: Path, states: dict[str, str]) -> str:
    for name, state in states.items():
        (tmp_path / "net" / name).mkdir(parents=True)
        (tmp_path / "net" / name / "operstate").write_text(state + "\n")
    return str(tmp_path / "net")


def test_native_side_needs_a_usable_global_address_on_a_link_that_is_up(tmp_path: Path) -> None:
    sysfs = _sysfs(tmp_path, {"eth0": "up", "teredo": "unknown"})
    inet6 = tmp_path / "if_inet6"
    inet6.write_text(GLOBAL_ETH0 + LINK_LOCAL)
    assert native_ipv6_usable("teredo", str(inet6), sysfs)
    inet6.write_text(LINK_LOCAL + TENTATIVE + ON_TEREDO)  # nothing usable outside teredo
    assert not native_ipv6_usable("teredo", str(inet6), sysfs)
    assert not native_ipv6_usable("teredo", str(tmp_path / "missing"), sysfs)


def test_native_side_is_down_with_its_link(tmp_path: Path) -> None:
    sysfs = _sysfs(tmp_path, {"eth0": "down"})
    inet6 = tmp_path / "if_inet6"
    inet6.write_text(GLOBAL_ETH0)
    assert not native_ipv6_usable("teredo", str(inet6), sysfs)


def test_udp_socket_needs_to_be_open_and_its_address_present() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert udp_socket_usable(sock.fileno(), IPv4Address("127.0.0.1"))
    assert udp_socket_usable(3, IPv4Address(0))
    assert not udp_socket_usable(-1, IPv4Address(0))
    # TEST-NET-1 is on no interface of a test machine.
    assert not udp_socket_usable(3, IPv4Address("192.0.2.201"))


class Routes:
    """Fake netlink route functions recording what was done, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.present: set[int] = {WITHDRAWN_METRIC}

    async def add_route(
        self, interface: str, prefix: IPv6Network, *, metric: int, via: IPv6Address
    ) -> bool:
        assert via == TUNNEL_NEXT_HOP  # one neighbour entry for all peers (adapters.netlink)
        self.calls.append(("add", metric))
        self.present.add(metric)
        return True

    async def remove_route(self, interface: str, prefix: IPv6Network, *, metric: int) -> bool:
        self.calls.append(("del", metric))
        self.present.discard(metric)
        return True


def _watcher(routes: Routes, facts: dict[str, bool], drain_time: float = 0.0) -> Any:
    return RelayHealthWatcher(
        interface="teredo",
        prefix=PREFIX,
        udp_usable=lambda: facts["udp"],
        native_usable=lambda: facts["native"],
        add_route=routes.add_route,
        remove_route=routes.remove_route,
        drain_time=drain_time,
    )


def test_route_metric_follows_health() -> None:
    routes = Routes()
    facts = {"udp": True, "native": True}
    watcher = _watcher(routes, facts)

    async def scenario() -> None:
        await watcher.check()
        assert routes.present == {ANNOUNCED_METRIC} and watcher.announced
        # Announcing: the withdrawn route goes first (break before make).
        assert routes.calls == [("del", WITHDRAWN_METRIC), ("add", ANNOUNCED_METRIC)]
        routes.calls.clear()
        facts["native"] = False
        health = await watcher.check()
        assert not health.healthy and not watcher.announced
        assert routes.present == {WITHDRAWN_METRIC}
        # Withdrawing: the new route first, so forwarding never stops (make before break).
        assert routes.calls == [("add", WITHDRAWN_METRIC), ("del", ANNOUNCED_METRIC)]
        facts["native"] = True
        await watcher.check()
        assert routes.present == {ANNOUNCED_METRIC}
        status = watcher.status()
        assert status["healthy"] and status["announced"] and status["reasons"] == []

    asyncio.run(scenario())


def test_stop_withdraws_then_drains(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = Routes()
    facts = {"udp": True, "native": True}
    watcher = _watcher(routes, facts, drain_time=5.0)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def scenario() -> None:
        watcher.start(asyncio.get_running_loop())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert watcher.announced
        monkeypatch.setattr(asyncio, "sleep", sleep)
        await watcher.stop()
        assert not watcher.announced and routes.present == {WITHDRAWN_METRIC}
        assert watcher.status()["reasons"] == ["stopping"]
        assert slept == [5.0]

    asyncio.run(scenario())


def test_lab_bird_filters_on_the_daemons_withdrawn_metric() -> None:
    assert bgp.WITHDRAWN_METRIC == WITHDRAWN_METRIC
    assert f"krt_metric != {WITHDRAWN_METRIC}" in bgp.relay_config("relay1")
