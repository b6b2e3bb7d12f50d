"""Anycast relays in the lab: two relay sites announce 2001::/32 to the router by eBGP with BFD
(BIRD 2), by health; the native host keeps reaching a Teredo client whatever happens to the
preferred site, and traffic returns to it once it is repaired.

One lab with this project in every role (`teredo lab up --relays 2`), shared by the tests in
order. Each failover test breaks relay1 while the native host pings client1 every 10 ms
(`teredo.lab.failover`) and checks behaviour only: the router moved to relay2, replies came
again without any action on the client, and after the repair the router prefers relay1 again
and no ping was lost on the way back. Timing is the benchmark's (benchmarks/failover.py).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from ipaddress import IPv6Address

import pytest

from labsupport import LAB_TOOLS, built_lab, daemon_status
from teredo.lab.failover import Event, run_event, wait_preferred
from teredo.lab.lab import Lab
from testsupport import require_root

pytestmark = [pytest.mark.root, pytest.mark.lab]

WAIT = 10.0  # seconds for the routing to follow a change of health


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root(*LAB_TOOLS, "bird", "birdc", "bpftool")
    with built_lab("tac", relays=2) as lab:
        yield lab


@pytest.fixture(scope="module")
def client(lab: Lab) -> IPv6Address:
    address = lab.teredo_address("cli1")
    assert address is not None
    return address


def _prefix_routes(lab: Lab, node: str) -> list[dict[str, object]]:
    result = lab.exec(node, ["ip", "-j", "-6", "route", "show", "2001::/32"], check=True)
    routes: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return routes


def test_router_learns_the_prefix_by_bgp_and_prefers_relay1(lab: Lab) -> None:
    status = lab.status()["bgp"]
    assert status["preferred_relay"] == "relay1"
    sessions = {(s["node"], s["peer"]): s["established"] for s in status["sessions"]}
    assert sessions == {
        ("inet", "relay1"): True,
        ("inet", "relay2"): True,
        ("relay1", "inet"): True,
        ("relay2", "inet"): True,
    }
    (route,) = _prefix_routes(lab, "inet")
    assert route["protocol"] == "bird" and route["dev"] == "relay1"
    health = daemon_status(lab, "relay1")["health"]
    assert health["healthy"] and health["announced"] and health["reasons"] == []
    assert [r["metric"] for r in _prefix_routes(lab, "relay1")] == [1024]


def test_a_killed_relay_leaves_nothing_that_announces_or_forwards(lab: Lab) -> None:
    lab.signal_role("relay2", signal.SIGKILL)
    try:
        deadline = time.monotonic() + WAIT
        while _prefix_routes(lab, "relay2") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _prefix_routes(lab, "relay2") == []
        links = lab.exec("relay2", ["ip", "-j", "link", "show"], check=True).stdout
        assert "teredo" not in [link["ifname"] for link in json.loads(links)]
        # The kernel data path's TC programs belonged to the process (tcx links): gone too.
        net = json.loads(lab.exec("relay2", ["bpftool", "-j", "net", "show"], check=True).stdout)
        assert not [entry for item in net for entry in item.get("tc", [])]
        record = lab.state.roles["bgp-inet"] if lab.state else None
        assert record is not None and record.control_socket is not None
        while time.monotonic() < deadline:
            routes = lab.exec("inet", ["birdc", "-s", record.control_socket, "show", "route"])
            if "relay2" not in routes.stdout:
                break
            time.sleep(0.05)
        assert "relay2" not in routes.stdout
    finally:
        lab.restart_role("relay2")
    assert wait_preferred(lab, lambda p: p == "relay1", WAIT) == "relay1"


@pytest.mark.parametrize("event", list(Event))
def test_failover_and_return_without_client_action(
    lab: Lab, client: IPv6Address, event: Event
) -> None:
    result = run_event(lab, event, client)
    assert result.served_by == "relay2"
    assert result.away.ended, "the pings did not resume through relay2"
    if event is Event.SIGTERM:
        assert result.away.lost == 0, "a draining relay lost packets"
    assert result.returned_to == "relay1"
    # Nothing lost on the way back; at most the pings in flight when the stream stopped
    # went unanswered.
    assert result.back.lost == 0, "packets were lost on the way back to relay1"
    assert result.back.unanswered <= 2, "the pings stopped on the way back to relay1"


def test_draining_for_maintenance_moves_traffic_and_back(lab: Lab) -> None:
    lab.signal_role("relay1", signal.SIGUSR2)
    try:
        assert wait_preferred(lab, lambda p: p == "relay2", WAIT) == "relay2"
        health = daemon_status(lab, "relay1")["health"]
        assert health["reasons"] == ["draining"] and not health["announced"]
        assert [r["metric"] for r in _prefix_routes(lab, "relay1")] == [65535]
        assert lab.ping("v6", lab.teredo_address("cli1") or "").ok
    finally:
        lab.signal_role("relay1", signal.SIGUSR2)
    assert wait_preferred(lab, lambda p: p == "relay1", WAIT) == "relay1"
    assert daemon_status(lab, "relay1")["health"]["healthy"]
