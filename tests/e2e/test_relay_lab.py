"""`teredo relay` in the lab, with Miredo clients and with ours, and the host-specific relay on the
native host.

Three labs with OUR relay (module scope each, torn down even when a test fails):

- "cone": Miredo clients behind a port-restricted (cli1) and a full-cone (cli2) NAT, Miredo's
  server, so only the relay is ours;
- "symmetric": Miredo clients behind a symmetric (cli1) and an address-restricted (cli2) NAT,
  our server: behind the symmetric NAT the relay must accept the client's direct bubble from a
  port that differs from its Teredo address (bubble cookie / RFC 6081 nonce), as Miredo's relay
  does;
- "ours": this project in every role, clients behind a port-restricted and a symmetric NAT.

Both directions are pinged: the client's echo test goes natively through the server and comes
back through the relay; the native host's packets reach the relay, which sets the client up with
bubbles through the client's server.

The host-specific relay runs on the native host ("v6", which has public IPv4) after the router's
2001::/32 route toward the lab's relay is removed: the host then reaches the Teredo clients
directly over IPv4/UDP with no relay at all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labsupport import built_lab, daemon_status, teredo_of
from teredo.lab.lab import Lab
from teredo.lab.topology import NATIVE_IPV4, NATIVE_IPV6, RELAY_IPV4, RELAY_PORT
from testsupport import require_kernel_data_path

pytestmark = [pytest.mark.root, pytest.mark.lab]

HSR_PORT = 3546
HsrLab = tuple[Lab, str, "subprocess.Popen[bytes]"]


@pytest.fixture(scope="module")
def cone_lab() -> Iterator[Lab]:
    with built_lab(
        "trc",
        nat1="port-restricted",
        nat2="fullcone",
        server="miredo",
        relay="ours",
        client1="miredo",
        client2="miredo",
    ) as lab:
        yield lab


@pytest.fixture(scope="module")
def symmetric_lab() -> Iterator[Lab]:
    with built_lab(
        "trs",
        nat1="symmetric",
        nat2="restricted",
        server="ours",
        relay="ours",
        client1="miredo",
        client2="miredo",
    ) as lab:
        yield lab


def status(lab: Lab, node: str = "relay", socket_path: str | None = None) -> dict[str, Any]:
    return daemon_status(lab, node, socket_path)


@pytest.mark.parametrize("client", ["cli1", "cli2"])
def test_cone_nats_client_to_native_and_back(cone_lab: Lab, client: str) -> None:
    result = cone_lab.ping(client, NATIVE_IPV6)
    assert result.ok, result.output
    result = cone_lab.ping("v6", teredo_of(cone_lab, client))
    assert result.ok, result.output


@pytest.mark.parametrize("client", ["cli1", "cli2"])
def test_native_first_then_client(symmetric_lab: Lab, client: str) -> None:
    """Native -> client first (relay case 3 through our server), then client -> native."""
    result = symmetric_lab.ping("v6", teredo_of(symmetric_lab, client))
    assert result.ok, result.output
    result = symmetric_lab.ping(client, NATIVE_IPV6)
    assert result.ok, result.output


def test_symmetric_nat_is_accepted_by_cookie_or_nonce(symmetric_lab: Lab) -> None:
    assert symmetric_lab.ping("v6", teredo_of(symmetric_lab, "cli1")).ok
    document = status(symmetric_lab)
    assert document["counters"]["mismatched_mapping_accepted"] >= 1
    assert document["drops"].get("mapping_mismatch", 0) == 0


def test_status_document(cone_lab: Lab) -> None:
    assert cone_lab.ping("v6", teredo_of(cone_lab, "cli2"), count=2).ok
    document = status(cone_lab)
    assert document["role"] == "relay"
    assert document["bind"] == f"{RELAY_IPV4}:{RELAY_PORT}"
    assert document["interface"] == "teredo"
    assert document["ipv6_forwarding"] is True
    assert document["trusted_peers"] >= 1
    assert document["peers"] >= document["trusted_peers"]
    assert document["queued_bytes"] >= 0
    counters = document["counters"]
    # The established peer's packets take the kernel's path when it runs, else the daemon's.
    assert counters["fast_tx"] + counters.get("kernel_encapsulated", 0) >= 1
    assert counters["fast_rx"] + counters.get("kernel_decapsulated", 0) >= 1
    assert counters["bubbles_sent"] >= 2


def test_established_peers_take_the_kernel_path(cone_lab: Lab) -> None:
    """With the kernel data path built (CI builds it), the relay forwards an established
    peer's packets in the kernel both ways; the first packets set the peer up in user space."""
    require_kernel_data_path()
    target = teredo_of(cone_lab, "cli2")
    assert cone_lab.ping("v6", target, count=5, interval=0.05).ok
    document = status(cone_lab)
    assert document["data_path"].startswith("the kernel (eBPF)"), document["data_path"]
    counters = document["counters"]
    assert counters["kernel_encapsulated"] >= 3, counters
    assert counters["kernel_decapsulated"] >= 3, counters


# From the native host (public IPv4): datagrams claiming Teredo sources they do not own.
SPOOFER = r"""
import socket, sys
from ipaddress import IPv4Address, IPv6Address
from teredo.core.address import encode_teredo_address
from teredo.core.wire import encode_bubble, encode_echo
relay = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
native = IPv6Address("2001:db8:2::2")
for i in range(200):
    fake = encode_teredo_address(IPv4Address("198.51.100.2"), IPv4Address("203.0.113.99"), 1000 + i)
    s.sendto(encode_echo(fake, native, 1, i, b"spoof"), relay)
    s.sendto(encode_bubble(fake, IPv6Address("fe80::1234")), relay)
s.sendto(encode_echo(native, native, 1, 1, b"not teredo"), relay)
s.sendto(b"\x60" + bytes(7), relay)
"""


def test_spoofed_sources_are_dropped_and_leave_no_state(cone_lab: Lab) -> None:
    before = status(cone_lab)
    result = cone_lab.exec(
        "v6", [sys.executable, "-c", SPOOFER, str(RELAY_IPV4), str(RELAY_PORT)], timeout=30
    )
    assert result.returncode == 0, result.stderr
    for _ in range(50):
        after = status(cone_lab)
        if after["drops"].get("mapping_mismatch", 0) >= 200 + before["drops"].get(
            "mapping_mismatch", 0
        ):
            break
        time.sleep(0.1)
    drops, old = after["drops"], before["drops"]
    assert drops["mapping_mismatch"] - old.get("mapping_mismatch", 0) == 200
    assert drops["unverified_bubble"] - old.get("unverified_bubble", 0) == 200
    assert drops["non_teredo_source"] - old.get("non_teredo_source", 0) == 1
    assert drops["malformed"] - old.get("malformed", 0) == 1
    assert after["peers"] == before["peers"]  # no state for spoofers
    assert cone_lab.ping("cli1", NATIVE_IPV6, count=2).ok  # legitimate traffic still flows


def kernel_settings(pid: int) -> bytes:
    """The `settings` record of the kernel data path that process `pid` holds (bpftool)."""
    for entry in Path(f"/proc/{pid}/fdinfo").iterdir():
        found = re.search(r"^map_id:\s*(\d+)", entry.read_text(), re.MULTILINE)
        if found is None:
            continue
        run = ["bpftool", "-j", "map", "show", "id", found.group(1)]
        shown = json.loads(subprocess.run(run, capture_output=True, check=True).stdout)
        if shown.get("name") != "settings":
            continue
        run = ["bpftool", "-j", "map", "dump", "id", found.group(1)]
        dumped = json.loads(subprocess.run(run, capture_output=True, check=True).stdout)
        return bytes(int(byte, 16) for byte in dumped[0]["value"])
    raise AssertionError(f"process {pid} holds no settings map")


def test_sighup_reload_keeps_relaying(cone_lab: Lab) -> None:
    pid = status(cone_lab)["pid"]
    config = cone_lab.directory / "relay.conf"
    text = config.read_text()
    config.write_text(text + "MaxPeers 4096\nInterfaceMTU 1400\nAllowPrivateAddresses yes\n")
    try:
        os.kill(pid, signal.SIGHUP)
        for _ in range(50):
            if status(cone_lab)["max_peers"] == 4096:
                break
            time.sleep(0.1)
        assert status(cone_lab)["max_peers"] == 4096
        if "the kernel (eBPF)" in status(cone_lab)["data_path"]:  # its map learns by the rule
            settings = kernel_settings(pid)
            assert settings[32:34] == b"\x01\x01", settings.hex()  # learn, allow_private
        for _ in range(50):  # the MTU is set through netlink with the kept CAP_NET_ADMIN
            link = cone_lab.exec("relay", ["ip", "link", "show", "teredo"], check=True).stdout
            if "mtu 1400" in link:
                break
            time.sleep(0.1)
        assert "mtu 1400" in link
        assert cone_lab.ping("v6", teredo_of(cone_lab, "cli1"), count=2).ok
    finally:
        config.write_text(text)


# ---------------------------------------------------------------------------------------------
# Our client through our relay


@pytest.fixture(scope="module")
def ours_lab() -> Iterator[Lab]:
    with built_lab(
        "tro",
        nat1="port-restricted",
        nat2="symmetric",
        server="ours",
        relay="ours",
        client1="ours",
        client2="ours",
    ) as lab:
        yield lab


@pytest.mark.parametrize("client", ["cli1", "cli2"])
def test_our_client_through_our_relay(ours_lab: Lab, client: str) -> None:
    result = ours_lab.ping(client, NATIVE_IPV6)
    assert result.ok, result.output
    result = ours_lab.ping("v6", teredo_of(ours_lab, client))
    assert result.ok, result.output


def test_an_established_peer_at_rest_lives_on_in_the_kernel_map_alone(ours_lab: Lab) -> None:
    """A peer our relay set up itself (the native host spoke first: bubbles through the
    server) is handed over to the kernel's map once at rest, ~30-45 s later: the daemon's
    table drops it, the map keeps forwarding its packets, and nothing is lost meanwhile."""
    require_kernel_data_path()
    address = teredo_of(ours_lab, "cli1")
    assert ours_lab.ping("v6", address, count=2, interval=0.2).ok
    deadline = time.monotonic() + 75
    handed = 0
    while time.monotonic() < deadline and not handed:
        result = ours_lab.ping("v6", address, count=2, interval=0.5)
        assert result.ok, result.output
        handed = status(ours_lab)["counters"].get("peers_handed_to_kernel", 0)
    document = status(ours_lab)
    assert handed >= 1, document["counters"]
    before = document["counters"]["kernel_encapsulated"]
    result = ours_lab.ping("v6", address, count=5, interval=0.2)
    assert result.ok and result.received == 5, result.output
    after = status(ours_lab)["counters"]["kernel_encapsulated"]
    assert after - before >= 5  # the kernel carried them, the daemon holding no entry


# ---------------------------------------------------------------------------------------------
# Host-specific relay on the native host


@pytest.fixture(scope="module")
def hsr_lab() -> Iterator[HsrLab]:
    with built_lab(
        "trh",
        nat1="port-restricted",
        nat2="symmetric",
        server="ours",
        relay="miredo",
        client1="miredo",
        client2="miredo",
    ) as lab:
        # No relay on the path: the router forgets the 2001::/32 route to the lab's relay.
        lab.exec("inet", ["ip", "-6", "route", "del", "2001::/32"], check=True)
        socket_path = str(lab.directory / "hsr.sock")
        config = lab.directory / "hsr.conf"
        config.write_text(
            "RelayType host-specific\n"
            "InterfaceName teredo\n"
            f"BindAddress {NATIVE_IPV4}\n"
            f"BindPort {HSR_PORT}\n"
            f"ControlSocket {socket_path}\n"
        )
        log = open(lab.directory / "hsr.log", "ab")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            ["ip", "netns", "exec", lab.namespace("v6"), sys.executable, "-m", "teredo", "relay",
             "-f", "-c", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            for _ in range(100):
                if os.path.exists(socket_path):
                    break
                assert process.poll() is None, (lab.directory / "hsr.log").read_text()
                time.sleep(0.1)
            yield lab, socket_path, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


@pytest.mark.parametrize("client", ["cli1", "cli2"])
def test_host_specific_relay_reaches_clients_without_a_relay(hsr_lab: HsrLab, client: str) -> None:
    lab, _, _ = hsr_lab
    result = lab.ping("v6", teredo_of(lab, client))
    assert result.ok, result.output
    result = lab.ping(client, NATIVE_IPV6)
    assert result.ok, result.output


def test_host_specific_relay_status_and_route(hsr_lab: HsrLab) -> None:
    lab, socket_path, _ = hsr_lab
    assert lab.ping("v6", teredo_of(lab, "cli1"), count=2).ok
    document = status(lab, "v6", socket_path)
    assert document["role"] == "host-specific relay"
    assert document["host_addresses"] == [str(NATIVE_IPV6)]
    assert "ipv6_forwarding" not in document
    assert document["trusted_peers"] >= 1
    route = lab.exec("v6", ["ip", "-6", "route", "show", "2001::/32"], check=True).stdout
    assert "dev teredo" in route
    # Unnumbered: no Teredo (or other global) address on the interface.
    addresses = lab.exec("v6", ["ip", "-6", "addr", "show", "dev", "teredo"], check=True).stdout
    assert "scope global" not in addresses


def test_relay_sigterm_removes_its_interface(hsr_lab: HsrLab) -> None:
    """Last in the module: stop the host-specific relay and check it cleaned up."""
    lab, socket_path, process = hsr_lab
    assert status(lab, "v6", socket_path)["pid"] == process.pid
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    links = lab.exec("v6", ["ip", "link", "show"], check=True).stdout
    assert "teredo" not in links
    route = lab.exec("v6", ["ip", "-6", "route", "show", "2001::/32"], check=True).stdout
    assert route.strip() == ""
