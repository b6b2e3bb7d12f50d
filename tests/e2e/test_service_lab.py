"""teredo as a service in the lab: Miredo's `-f -p PIDFILE -c FILE` and systemd's notify
protocol, observed on a real NOTIFY_SOCKET by the test (root only).

One lab: our server, Miredo's relay and clients. The test runs a second client of ours in
cli1 (interface teredo2), as a unit would run it, and a host-specific relay of ours in v6.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from labsupport import built_lab
from teredo.core.address import parse_teredo_address
from teredo.lab.lab import Lab
from teredo.lab.topology import NATIVE_IPV4, SERVER_IPV4
from testsupport import NotifyListener

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with built_lab(
        "tsv", nat1="port-restricted", nat2="fullcone",
        server="ours", relay="miredo", client1="miredo", client2="miredo",
    ) as lab:  # fmt: skip
        yield lab


def start(
    lab: Lab, node: str, argv: list[str], listener: NotifyListener, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NOTIFY_SOCKET=listener.path, WATCHDOG_USEC="1000000")
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", lab.namespace(node), sys.executable, "-m", "teredo", *argv],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def test_client_as_a_service(lab: Lab) -> None:
    """`teredo client -f -p PIDFILE -c FILE` as `miredo -f -p PIDFILE -c FILE`: the pid file
    holds its pid and stops a second instance; systemd hears READY=1 only once the client is
    qualified and its interface configured, STATUS lines, WATCHDOG=1, RELOADING=1 then READY=1
    on SIGHUP, and STOPPING=1; SIGUSR1 is logged and ignored; the pid file goes at exit."""
    directory = lab.directory / "service"
    directory.mkdir()
    run_dir = directory / "run"  # like /run/teredo: the daemon's user may remove its files
    run_dir.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(run_dir, nobody.pw_uid, nobody.pw_gid)
    pid_file = run_dir / "client.pid"
    config = directory / "client.conf"
    config.write_text(
        f"ServerAddress {SERVER_IPV4}\nInterfaceName teredo2\nBindPort 4001\n"
        f"ControlSocket {directory / 'client.sock'}\n"
    )
    log = directory / "client.log"
    listener = NotifyListener(directory / "notify")
    process = start(lab, "cli1", ["client", "-f", "-p", str(pid_file), "-c", str(config)],
                    listener, log)  # fmt: skip
    try:
        # The launch qualifies and configures the address before the daemon says a word
        # (teredo.programs.client_start): READY=1 may be its first message, with its STATUS.
        ready = listener.wait_for("READY", "1")
        for before in listener.messages[:-1]:
            assert any(word in before.get("STATUS", "qualifying") for word in
                       ("qualifying", "resolving")), before  # fmt: skip
        words = ready["STATUS"].split()
        assert words[0] == "qualified," and "teredo2," in words
        address = words[words.index("address") + 1]
        assert parse_teredo_address(address).mapped_port == 4001
        assert "NAT" in words
        shown = lab.exec("cli1", ["ip", "-6", "addr", "show", "dev", "teredo2"], check=True)
        assert address in shown.stdout  # READY came after the interface was configured
        assert pid_file.read_text() == f"{process.pid}\n"

        second = lab.exec(
            "cli1",
            [sys.executable, "-m", "teredo", "client", "-f", "-p", str(pid_file), "-c",
             str(config)],
            timeout=30,
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stderr == (
            f"teredo: another instance is already running (pid {process.pid}, pid file "
            f"{pid_file}); stop it or give this one another pid file with -p\n"
        )

        listener.wait_for("WATCHDOG", "1")
        process.send_signal(signal.SIGUSR1)
        process.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        listener.wait_for("READY", "1")
        assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", "1")
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        stop(process)
        listener.close()
    text = log.read_text()
    assert "SIGUSR1 received: ignored" in text
    assert not pid_file.exists()


def test_relay_is_ready_once_its_interface_is_up(lab: Lab) -> None:
    """A (host-specific) relay: READY=1 once its socket is bound and its interface up. Started
    as `teredo client`: the file's RelayType decides, as with miredo."""
    directory = lab.directory / "relay-service"
    directory.mkdir()
    config = directory / "relay.conf"
    config.write_text(
        "RelayType host-specific\nInterfaceName teredo\n"
        f"BindAddress {NATIVE_IPV4}\nBindPort 3547\nControlSocket {directory / 'relay.sock'}\n"
    )
    log = directory / "relay.log"
    listener = NotifyListener(directory / "notify")
    process = start(lab, "v6", ["client", "-f", "-c", str(config)], listener, log)
    try:
        ready = listener.wait_for("READY", "1")
        assert ready["STATUS"].startswith(
            f"relaying: host-specific relay on UDP {NATIVE_IPV4}:3547, interface teredo"
        )
        link = lab.exec("v6", ["ip", "link", "show", "teredo"], check=True).stdout
        assert "UP" in link
        process.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", "1")
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        stop(process)
        listener.close()
    assert "the file's RelayType makes this a relay: running one" in log.read_text()


def test_client_waits_for_its_bind_address_at_boot(lab: Lab) -> None:
    """At boot the client may start before its BindAddress is configured: it retries with
    backoff (a warning each time, the reason in STATUS) and qualifies once it is there."""
    directory = lab.directory / "boot"
    directory.mkdir()
    config = directory / "client.conf"
    config.write_text(
        f"ServerAddress {SERVER_IPV4}\nInterfaceName teredo3\nBindAddress 10.1.0.77\n"
        f"BindPort 4003\nControlSocket {directory / 'client.sock'}\n"
    )
    log = directory / "client.log"
    listener = NotifyListener(directory / "notify")
    process = start(lab, "cli1", ["client", "-f", "-c", str(config)], listener, log)
    try:
        waiting = listener.wait_for("STATUS")
        while "10.1.0.77" not in waiting["STATUS"]:
            waiting = listener.wait_for("STATUS")
        assert "not an address of this host" in waiting["STATUS"]
        assert process.poll() is None, log.read_text()
        lab.exec("cli1", ["ip", "addr", "add", "10.1.0.77/24", "dev", "eth0"], check=True)
        ready = listener.wait_for("READY", "1")
        assert ready["STATUS"].startswith("qualified,")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        stop(process)
        listener.close()
        lab.exec("cli1", ["ip", "addr", "del", "10.1.0.77/24", "dev", "eth0"])
    warnings = [line for line in log.read_text().splitlines() if "WARNING" in line]
    assert warnings and "(attempt 1); retrying in 1 s" in warnings[0]
