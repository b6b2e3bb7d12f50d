"""`teredo relay` under floods from strangers in the lab: the invariants, never the timing.

The generator `benchmarks/flood.c` runs in the lab's generator node (fake Teredo clients in
100.64.0.0/10) or on the native host. Two floods against our relay, each bounded in count:

- bubbles from 40 000 new, self-consistent Teredo sources (RFC 4380 §2.8), while client 1 talks
  to the native host through the relay: nothing is created for them (an unsolicited bubble is
  consumed), client 1's peer is neither evicted nor set up again, and it stays reachable;
- packets from the native host toward 40 000 new Teredo destinations behind the lab's server,
  with a peer table of 4096: the table stays within its bound, the relay sends far less than
  one packet per packet received (the setup budget), and a client that restarts during the
  flood (a new address, a new peer for the relay) is reachable through it.

And one against the relay's kernel data path, which learns new sources it can trust by itself
(`teredo.bpf.datapath`): data from 40 000 new self-consistent Teredo sources fills its map up
to MaxPeers and no further; the rest reach the daemon, whose table stays within its bound;
client 1 keeps talking and a client that restarts during the flood gets through.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labsupport import built_lab, compiled_flood, daemon_status, teredo_of
from teredo.lab.generator import SINK_PORT
from teredo.lab.lab import Lab, PingResult
from teredo.lab.topology import NATIVE_IPV6, RELAY_IPV4, RELAY_PORT, SERVER_IPV4

pytestmark = [pytest.mark.root, pytest.mark.lab]

STRANGERS = 40_000
RATE = 8_000  # packets per second: enough to churn a 4096-entry table, light for the CI machine
MAX_PEERS = 4096


@pytest.fixture(scope="module")
def flood_binary() -> Iterator[Path]:
    with compiled_flood() as binary:
        yield binary


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with built_lab(
        "tq",
        generator=True,
        server="ours",
        relay="ours",
        client1="ours",
        client2="ours",
        ours_config={"relay": [f"MaxPeers {MAX_PEERS}"]},
    ) as lab:
        yield lab


def relay_status(lab: Lab) -> dict[str, Any]:
    return daemon_status(lab, "relay")


def flood(lab: Lab, binary: Path, node: str, args: list[str]) -> str:
    count = ["-c", str(STRANGERS), "-r", str(RATE), "-t", "60"]
    argv = ["ip", "netns", "exec", lab.namespace(node), str(binary), *args, *count]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


def client1_pinging(lab: Lab) -> subprocess.Popen[str]:
    """client 1 pinging the native host through the relay every 50 ms for 8 s."""
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.namespace("cli1"), "ping", "-6", "-n", "-i", "0.05",
         "-w", "8", str(NATIVE_IPV6)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def new_client_during(lab: Lab, binary: Path, node: str, args: list[str]) -> PingResult:
    """Flood from `node` (bounded as `flood`) and meanwhile restart client 2 (a new address:
    a peer the relay has never seen) and ping it from the native host; that ping's result."""
    count = ["-c", str(STRANGERS), "-r", str(RATE), "-t", "60"]
    flooding = subprocess.Popen(
        ["ip", "netns", "exec", lab.namespace(node), str(binary), *args, *count],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        lab.restart_role("client2")
        return lab.ping("v6", teredo_of(lab, "cli2"), count=20, interval=0.2, wait=2)
    finally:
        flooding.communicate(timeout=120)


def interface_packets(lab: Lab, node: str, direction: str) -> int:
    path = f"/sys/class/net/eth0/statistics/{direction}_packets"
    result = lab.exec(node, ["cat", path], check=True)
    return int(result.stdout)


def test_a_bubble_flood_creates_nothing_and_spares_the_established_peer(
    lab: Lab, flood_binary: Path
) -> None:
    assert lab.ping("cli1", NATIVE_IPV6, count=3, interval=0.2).ok
    before = relay_status(lab)
    pinger = client1_pinging(lab)
    flood(lab, flood_binary, "gen", [
        "-m", "bubble", "-n", str(STRANGERS), "-S", str(SERVER_IPV4),
        "-R", f"{RELAY_IPV4}:{RELAY_PORT}", "-d", str(NATIVE_IPV6),
    ])  # fmt: skip
    output, _ = pinger.communicate(timeout=30)
    after = relay_status(lab)
    received = after["counters"].get("bubbles_received", 0) - before["counters"].get(
        "bubbles_received", 0
    )
    assert received >= STRANGERS // 2, after["counters"]  # they reached the relay
    assert after["peers"] <= before["peers"] + 2, (before["peers"], after["peers"])
    assert after["evicted_peers"] == before["evicted_peers"]
    created = after["counters"].get("peers_created", 0) - before["counters"].get("peers_created", 0)
    assert created <= 2  # client 1's peer was not set up again
    assert " 0 received" not in output and "bytes from" in output, output
    assert lab.ping("cli1", NATIVE_IPV6, count=3, interval=0.2).ok


def test_a_new_destination_flood_is_bounded_and_a_new_client_gets_through(
    lab: Lab, flood_binary: Path
) -> None:
    sent_before = interface_packets(lab, "relay", "tx")
    received_before = interface_packets(lab, "relay", "rx")
    reached = new_client_during(lab, flood_binary, "v6", [
        "-m", "native", "-n", str(STRANGERS), "-S", str(SERVER_IPV4), "-s", str(NATIVE_IPV6),
        "-p", str(SINK_PORT),
    ])  # fmt: skip
    sent = interface_packets(lab, "relay", "tx") - sent_before
    received = interface_packets(lab, "relay", "rx") - received_before
    document = relay_status(lab)
    assert reached.ok, reached.output
    assert document["peers"] <= MAX_PEERS
    assert document["evicted_peers"] > 0  # the flood did fill the table
    # Everything the relay sent (bubbles, ICMPv6 errors, the pings' replies and client 2's
    # traffic) against everything it received (the flood and the rest).
    assert sent <= 0.5 * received, (sent, received)


def test_a_flood_of_new_sources_fills_the_kernel_map_to_its_bound_and_spares_the_users(
    lab: Lab, flood_binary: Path
) -> None:
    assert lab.ping("cli1", NATIVE_IPV6, count=3, interval=0.2).ok
    pinger = client1_pinging(lab)
    reached = new_client_during(lab, flood_binary, "gen", [
        "-m", "teredo", "-n", str(STRANGERS), "-S", str(SERVER_IPV4),
        "-R", f"{RELAY_IPV4}:{RELAY_PORT}", "-d", str(NATIVE_IPV6), "-p", str(SINK_PORT),
    ])  # fmt: skip
    output, _ = pinger.communicate(timeout=30)
    document = relay_status(lab)
    counters = document["counters"]
    assert reached.ok, reached.output
    assert " 0 received" not in output and "bytes from" in output, output
    assert counters["kernel_rx_learned"] > 0, counters  # the kernel took the new sources
    assert counters["kernel_rx_peers_full"] > 0, counters  # ... up to its bound, then passed
    assert document["peers"] <= MAX_PEERS
    assert lab.ping("cli1", NATIVE_IPV6, count=3, interval=0.2).ok
