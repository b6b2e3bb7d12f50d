"""`teredo client` and `teredo probe` in the lab, against Miredo and our own roles; root only.

Labs (module scope each, always torn down):

- "prc": OUR client behind a port-restricted NAT (cli1), Miredo's client behind a full-cone NAT
  (cli2), Miredo's server and relay: ours qualifies, pings the native host and the Miredo client,
  and both ping it back (each direction from a fresh start of the initiating path).
- "fcn": the same with the NATs swapped: OUR client behind the full-cone NAT.
- "own": OUR server and relay and two of OUR clients, behind an address-restricted NAT (cli1) and
  a symmetric NAT (cli2): RFC 6081 Symmetric NAT Support makes Teredo<->Teredo work in both
  directions here, where two Miredo clients manage only one (tests/e2e/test_lab_matrix.py).

Also: the status document, SIGHUP, the hook script (Miredo's variables), SIGTERM clean-up and
`teredo probe` behind each NAT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labsupport import built_lab, daemon_status, teredo_of
from teredo.core.address import parse_teredo_address
from teredo.lab.lab import Lab
from teredo.lab.topology import NATIVE_IPV6, SERVER_IPV4

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def prc_lab() -> Iterator[Lab]:
    with built_lab(
        "tcp", nat1="port-restricted", nat2="fullcone",
        server="miredo", relay="miredo", client1="ours", client2="miredo",
    ) as lab:  # fmt: skip
        yield lab


@pytest.fixture(scope="module")
def fcn_lab() -> Iterator[Lab]:
    with built_lab(
        "tcf", nat1="fullcone", nat2="port-restricted",
        server="miredo", relay="miredo", client1="ours", client2="miredo",
    ) as lab:  # fmt: skip
        yield lab


@pytest.fixture(scope="module")
def own_lab() -> Iterator[Lab]:
    with built_lab(
        "tco", nat1="restricted", nat2="symmetric",
        server="ours", relay="ours", client1="ours", client2="ours",
    ) as lab:  # fmt: skip
        yield lab


def both_ways(lab: Lab) -> None:
    """Ours (cli1) <-> native and <-> the other client, each direction from a fresh path."""
    ours, other = teredo_of(lab, "cli1"), teredo_of(lab, "cli2")
    result = lab.ping("cli1", NATIVE_IPV6)
    assert result.ok, result.output
    result = lab.ping("cli1", other)
    assert result.ok, result.output
    # The other directions with no peer state anywhere: restart both clients (new mappings).
    lab.restart_roles(["client1", "client2"])
    ours, other = teredo_of(lab, "cli1"), teredo_of(lab, "cli2")
    result = lab.ping("v6", ours)
    assert result.ok, result.output
    result = lab.ping("cli2", ours)
    assert result.ok, result.output


def test_port_restricted_with_miredo_everywhere(prc_lab: Lab) -> None:
    address = teredo_of(prc_lab, "cli1")
    decoded = parse_teredo_address(address)
    assert decoded.server == SERVER_IPV4 and not decoded.cone
    both_ways(prc_lab)


def test_full_cone_with_miredo_everywhere(fcn_lab: Lab) -> None:
    both_ways(fcn_lab)


def test_our_server_relay_and_clients_with_a_symmetric_nat(own_lab: Lab) -> None:
    restricted, symmetric = teredo_of(own_lab, "cli1"), teredo_of(own_lab, "cli2")
    for node in ("cli1", "cli2"):
        result = own_lab.ping(node, NATIVE_IPV6)
        assert result.ok, result.output
    result = own_lab.ping("cli1", symmetric)
    assert result.ok, result.output
    own_lab.restart_roles(["client1", "client2"])
    restricted = teredo_of(own_lab, "cli1")
    result = own_lab.ping("cli2", restricted)  # the symmetric side initiates (Miredo fails)
    assert result.ok, result.output
    assert daemon_status(own_lab, "cli2")["nat"] == "symmetric"
    assert daemon_status(own_lab, "cli1")["nat"] == "restricted"


def test_status_document(prc_lab: Lab) -> None:
    prc_lab.ping("cli1", NATIVE_IPV6)
    document = daemon_status(prc_lab, "cli1")
    assert document["role"] == "client" and document["state"] == "qualified"
    assert document["address"] == str(teredo_of(prc_lab, "cli1"))
    assert document["server"] == str(SERVER_IPV4)
    assert document["nat"] == "restricted"
    assert document["mtu"] == 1280
    assert document["rs_to_address_ms"] > 0
    assert document["counters"]["echo_tests_succeeded"] >= 1
    assert any(p["address"] == str(NATIVE_IPV6) for p in document["peer_list"])
    assert isinstance(document["drops"], dict)


def test_interface_looks_like_miredos(prc_lab: Lab) -> None:
    addresses = prc_lab.exec("cli1", ["ip", "-6", "addr", "show", "dev", "teredo"]).stdout
    assert "fe80::ffff:ffff:ffff/64" in addresses
    assert f"{teredo_of(prc_lab, 'cli1')}/32" in addresses
    routes = prc_lab.exec("cli1", ["ip", "-6", "route", "show", "dev", "teredo"]).stdout
    assert "2001::/32" in routes
    assert "default" in routes and "metric 1029" in routes
    link = prc_lab.exec("cli1", ["ip", "link", "show", "teredo"]).stdout
    assert "mtu 1280" in link


def test_sighup_keeps_the_client_working(prc_lab: Lab) -> None:
    record = prc_lab._require_state().roles["client1"]
    assert record.pid is not None
    address = teredo_of(prc_lab, "cli1")
    os.kill(record.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert teredo_of(prc_lab, "cli1") == address
    result = prc_lab.ping("cli1", NATIVE_IPV6)
    assert result.ok, result.output
    log = Path(record.log).read_text()
    assert "reloaded" in log


@pytest.mark.parametrize(
    ("node", "nat", "cone"),
    [("cli1", "restricted", False), ("cli2", "cone", True)],
)
def test_probe_behind_each_nat(prc_lab: Lab, node: str, nat: str, cone: bool) -> None:
    result = prc_lab.exec(
        node,
        [sys.executable, "-m", "teredo", "probe", str(SERVER_IPV4), "--json", "--timeout", "6"],
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["nat"] == nat and document["cone"] is cone
    assert parse_teredo_address(document["teredo_address"]).server == SERVER_IPV4
    assert document["mapped_address"] in ("203.0.113.2", "203.0.113.18")


def test_probe_reports_a_symmetric_nat(own_lab: Lab) -> None:
    result = own_lab.exec(
        "cli2",
        [sys.executable, "-m", "teredo", "probe", str(SERVER_IPV4), "--json", "--timeout", "6"],
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["nat"] == "symmetric"


def test_probe_without_a_server_fails_in_one_sentence(prc_lab: Lab) -> None:
    result = prc_lab.exec(
        "cli1",
        [sys.executable, "-m", "teredo", "probe", "198.51.100.9", "--timeout", "1"],
        timeout=30,
    )
    assert result.returncode == 1
    assert "no answer from the Teredo server 198.51.100.9" in result.stderr
    assert "Traceback" not in result.stderr


HOOK = """#!/bin/sh
env | grep -E '^(STATE|OLD_STATE|IFACE|IFINDEX|ADDRESS|LLADDRESS|MTU|OLD_ADDRESS|OLD_MTU|PATH)=' \\
    | sort > {out}.$STATE
"""


def test_hook_script_and_sigterm_cleanup(prc_lab: Lab, tmp_path: Path) -> None:
    """A second client in cli1 (interface teredo2) with a HookScript and local discovery;
    SIGTERM undoes it all."""
    directory = prc_lab.directory
    hook = directory / "hook.sh"
    out = directory / "hook.out"
    hook.write_text(HOOK.format(out=out))
    hook.chmod(0o755)
    config = directory / "second.conf"
    socket_path = directory / "second.sock"
    config.write_text(
        f"ServerAddress {SERVER_IPV4}\nInterfaceName teredo2\nBindPort 4000\n"
        f"HookScript {hook}\nControlSocket {socket_path}\nLocalDiscovery yes\n"
    )
    log_path = directory / "second.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", prc_lab.namespace("cli1"), sys.executable, "-m", "teredo",
             "client", "-f", "-c", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        for _ in range(100):
            up_file = Path(f"{out}.up")  # the shell creates it before `sort` writes it
            if up_file.exists() and "\nSTATE=" in up_file.read_text():
                break
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.1)
        up = dict(line.split("=", 1) for line in Path(f"{out}.up").read_text().split())
        assert up["STATE"] == "up" and up["OLD_STATE"] == "down"
        assert up["IFACE"] == "teredo2" and up["LLADDRESS"] == "fe80::ffff:ffff:ffff"
        assert up["MTU"] == "1280" and int(up["IFINDEX"]) > 0
        assert parse_teredo_address(up["ADDRESS"]).mapped_port == 4000
        assert "configured on teredo2" in log_path.read_text()
        status = prc_lab.exec(
            "cli1",
            [sys.executable, "-m", "teredo", "status", "--json", "--socket", str(socket_path)],
            timeout=20,
        )
        document = json.loads(status.stdout)
        assert document["local_discovery"] is True
        assert document["counters"]["discovery_sent"] >= 1  # to 224.0.0.253 on the LAN
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, log_path.read_text()
    down = dict(line.split("=", 1) for line in Path(f"{out}.destroy").read_text().split())
    assert down["STATE"] == "destroy" and down["OLD_ADDRESS"] == up["ADDRESS"]
    gone = prc_lab.exec("cli1", ["ip", "link", "show", "teredo2"])
    assert gone.returncode != 0  # the interface is gone with the process
    # After the privilege drop the socket file may stay (root-owned directory); nobody answers.
    status = prc_lab.exec(
        "cli1", [sys.executable, "-m", "teredo", "status", "--socket", str(socket_path)]
    )
    assert status.returncode != 0
