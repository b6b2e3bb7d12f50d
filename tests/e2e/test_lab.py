"""The lab itself, driven through `teredo lab` as a person would, with Miredo in every role.

One lab with the default NATs (client 1 behind a port-restricted NAT, client 2 behind a full-cone
NAT) is brought up by `teredo lab up` in a child process and used from other processes
(`status`, `exec`, and the Python API attached to it): both clients qualify, every
native<->Teredo and Teredo<->Teredo path works in both directions, and `teredo lab down` leaves
nothing behind: no namespace with the lab's prefix, no process it started, no link in the
host's namespace, no state. Meanwhile other labs are built next to it to show that a failed
`up` and an interrupted `demo` tear themselves down without touching the lab that is up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Final

import pytest

from teredo.core.address import parse_teredo_address
from teredo.core.errors import EXIT_BROKEN_PIPE
from teredo.lab.lab import Lab
from teredo.lab.state import STATE_ROOT
from teredo.lab.topology import NATIVE_IPV6, NODES, SERVER_IPV4
from testsupport import require_root

pytestmark = [pytest.mark.root, pytest.mark.lab]

LAB_TOOLS: Final = ("ip", "nft", "miredo", "miredo-server", "ping")
MIREDO_EVERYWHERE: Final = [
    option
    for role in ("server", "relay", "client1", "client2")
    for option in (f"--{role}", "miredo")
]
# Interface names the lab gives its veth ends and tunnels: none may ever appear in the host.
LAB_INTERFACES: Final = {"srv", "relay", "v6", "nat1", "nat2", "wan", "lan", "teredo"}


def teredo_lab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "teredo", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def host_links() -> set[str]:
    output = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in output.splitlines()}


def lab_namespaces(name: str) -> list[str]:
    output = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(line.split()[0] for line in output.splitlines() if line.startswith(f"{name}-"))


def lab_processes(name: str) -> list[str]:
    """Command lines of live processes that mention the lab's state directory."""
    marker = f"{STATE_ROOT}/{name}/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def assert_nothing_left(name: str, links_before: set[str]) -> None:
    assert lab_namespaces(name) == [], f"namespaces of lab {name} left behind"
    assert lab_processes(name) == [], f"processes of lab {name} left behind"
    assert not (STATE_ROOT / name / "state.json").exists()
    leaked = (host_links() - links_before) & LAB_INTERFACES
    assert not leaked, f"links {leaked} appeared in the host's namespace"


@pytest.fixture(scope="module")
def links_before() -> set[str]:
    require_root(*LAB_TOOLS)
    return host_links()


@pytest.fixture(scope="module")
def cli_lab(links_before: set[str]) -> Iterator[str]:
    """The name of a lab brought up with `teredo lab up` (Miredo everywhere)."""
    name = f"c{os.getpid() % 100000}"
    try:
        result = teredo_lab("up", "--name", name, *MIREDO_EVERYWHERE)
        assert result.returncode == 0, result.stdout + result.stderr
        yield name
    finally:
        Lab(name).down()  # a no-op once test_down_leaves_nothing has run


@pytest.fixture(scope="module")
def status(cli_lab: str) -> dict[str, Any]:
    result = teredo_lab("status", "--json", "--name", cli_lab)
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def test_up_builds_eight_namespaces_and_nothing_in_the_host(
    cli_lab: str, links_before: set[str]
) -> None:
    assert lab_namespaces(cli_lab) == sorted(f"{cli_lab}-{node}" for node in NODES)
    assert (STATE_ROOT / cli_lab / "state.json").exists()
    leaked = (host_links() - links_before) & LAB_INTERFACES
    assert not leaked, f"links {leaked} appeared in the host's namespace"


def test_status_shows_roles_and_decoded_addresses(status: dict[str, Any]) -> None:
    assert status["phase"] == "up"
    assert status["nat"] == {"nat1": "port-restricted", "nat2": "fullcone"}
    roles = {role["role"]: role for role in status["roles"]}
    assert set(roles) == {"server", "relay", "client1", "client2"}
    for role in roles.values():
        assert role["impl"] == "miredo"
        assert role["alive"], f"{role['role']} is not running; read {role['log']}"
    nat_wan = {node["node"]: node["addresses"][0] for node in status["nodes"] if "nat" in node}
    for client, nat in (("client1", "nat1"), ("client2", "nat2")):
        teredo = roles[client]["teredo"]
        assert teredo is not None, f"{client} has no Teredo address"
        decoded = parse_teredo_address(teredo["address"])
        assert teredo["server"] == str(decoded.server) == str(SERVER_IPV4)
        assert teredo["mapped_address"] == str(decoded.mapped_address)
        assert teredo["mapped_port"] == decoded.mapped_port
        # Behind a NAT the mapped address is the NAT's public address.
        assert IPv4Address(teredo["mapped_address"]) == IPv4Address(nat_wan[nat].split("/")[0])


def test_status_text(cli_lab: str) -> None:
    result = teredo_lab("status", "--name", cli_lab)
    assert result.returncode == 0, result.stderr
    for word in ("client1", "client2", "port-restricted", "fullcone", "miredo", "2001:0:"):
        assert word in result.stdout


def into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """`teredo lab ARGS | head -0`: stdout is a pipe whose reader is already gone."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [sys.executable, "-m", "teredo", "lab", *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(writer)


def test_status_into_a_closed_pipe_ends_quietly(cli_lab: str) -> None:
    """`teredo lab status | head -1` once ended with a BrokenPipeError traceback."""
    result = into_closed_pipe("status", "--name", cli_lab)
    assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, "")


def test_up_into_a_closed_pipe_finishes_its_work(links_before: set[str]) -> None:
    """A lab command whose reader goes away does its work all the same (stopping halfway
    would leave namespaces behind), then exits as SIGPIPE would have."""
    name = f"p{os.getpid() % 100000}"
    try:
        result = into_closed_pipe("up", "--name", name, *MIREDO_EVERYWHERE)
        assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, "")
        assert lab_namespaces(name) == sorted(f"{name}-{node}" for node in NODES)
        result = into_closed_pipe("down", "--name", name)
        assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, "")
        assert_nothing_left(name, links_before)
    finally:
        Lab(name).down()


def test_exec_runs_in_the_node_and_passes_the_exit_status(cli_lab: str) -> None:
    result = teredo_lab("exec", "--name", cli_lab, "cli1", "ip", "-6", "addr", "show", "teredo")
    assert result.returncode == 0, result.stderr
    assert "inet6 2001:0:" in result.stdout
    assert teredo_lab("exec", "--name", cli_lab, "client2", "false").returncode == 1


def test_every_path_works_both_ways(cli_lab: str) -> None:
    lab = Lab.attach(cli_lab)  # the Python API, attached to the lab another process built
    addresses: dict[str, IPv6Address] = {"v6": NATIVE_IPV6}
    for node in ("cli1", "cli2"):
        address = lab.teredo_address(node)
        assert address is not None, f"{node} has no Teredo address"
        addresses[node] = address
    paths = [
        ("v6", "cli1"),
        ("cli1", "v6"),
        ("v6", "cli2"),
        ("cli2", "v6"),
        ("cli1", "cli2"),
        ("cli2", "cli1"),
    ]
    results = {(a, b): lab.ping(a, addresses[b]) for a, b in paths}
    failed = [f"{a}->{b}" for (a, b), result in results.items() if not result.ok]
    assert not failed, f"paths failing with Miredo everywhere: {failed}"


def test_same_name_is_refused_and_leaves_the_lab_alone(cli_lab: str) -> None:
    result = teredo_lab("up", "--name", cli_lab, *MIREDO_EVERYWHERE)
    assert result.returncode == 2
    assert "already" in result.stderr and "Traceback" not in result.stderr
    assert len(lab_namespaces(cli_lab)) == len(NODES)
    assert all(role["alive"] for role in Lab.attach(cli_lab).status()["roles"])


def test_failed_up_tears_itself_down_and_names_the_log(
    cli_lab: str, links_before: set[str]
) -> None:
    name = f"f{os.getpid() % 100000}"
    # No role can be ready after 0 s: the very first readiness check fails.
    result = teredo_lab("up", "--name", name, "--timeout", "0", *MIREDO_EVERYWHERE)
    try:
        assert result.returncode == 1
        message = result.stderr.strip()
        assert message.startswith("teredo: ") and "\n" not in message, message
        assert f"read {STATE_ROOT}/{name}/" in message and message.endswith(".log")
        assert_nothing_left(name, links_before)
        assert Path(message.rsplit(" ", 1)[1]).exists(), "the log named is kept"
    finally:
        Lab(name).down()
    assert len(lab_namespaces(cli_lab)) == len(NODES)  # the other lab is untouched


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_demo_tears_down(
    cli_lab: str, links_before: set[str], signum: signal.Signals
) -> None:
    name = f"i{os.getpid() % 100000}{signum.value}"
    demo = subprocess.Popen(
        [sys.executable, "-m", "teredo", "lab", "demo", "--name", name, *MIREDO_EVERYWHERE],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Wait until the demo is pinging (its lab is up), then interrupt it.
        state_file = STATE_ROOT / name / "state.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and demo.poll() is None:
            if state_file.exists() and '"phase": "up"' in state_file.read_text():
                break
            time.sleep(0.05)
        assert demo.poll() is None, "the demo ended before it could be interrupted"
        demo.send_signal(signum)
        output, _ = demo.communicate(timeout=60)
        assert demo.returncode == 130, output
        assert "torn down" in output
        assert_nothing_left(name, links_before)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        Lab(name).down()
    assert len(lab_namespaces(cli_lab)) == len(NODES)


def test_down_leaves_nothing(cli_lab: str, links_before: set[str]) -> None:
    """Last in this module: `teredo lab down` from yet another process cleans up everything."""
    assert lab_processes(cli_lab), "the lab's roles should be running before down"
    result = teredo_lab("down", "--name", cli_lab)
    assert result.returncode == 0, result.stderr
    assert_nothing_left(cli_lab, links_before)
    assert not (STATE_ROOT / cli_lab).exists()
    again = teredo_lab("down", "--name", cli_lab)
    assert again.returncode == 1 and "no lab named" in again.stderr
