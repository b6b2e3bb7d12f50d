"""teredo.adapters.notify: systemd's notification protocol on real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from teredo.adapters.notify import Notifier, one_line


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A service manager's notify socket, bound to a path."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_ready_status_stopping_on_a_path(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    notifier = Notifier(path)
    assert notifier.ready("qualified, address 2001:0:c633:6402::1\non teredo")
    assert fields(sock.recv(4096)) == {
        "READY": "1",
        "STATUS": "qualified, address 2001:0:c633:6402::1 on teredo",
    }
    assert notifier.status("offline")
    assert fields(sock.recv(4096)) == {"STATUS": "offline"}
    assert notifier.stopping()
    assert fields(sock.recv(4096)) == {"STOPPING": "1"}
    notifier.close()


def test_reloading_carries_the_monotonic_time(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier(path).reloading()
    got = fields(sock.recv(4096))
    assert got["RELOADING"] == "1"
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(got["MONOTONIC_USEC"]) <= after


def test_abstract_socket_names() -> None:
    name = f"teredo-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier("@" + name).watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_environment_is_read_and_cleared(manager: tuple[socket.socket, str]) -> None:
    _, path = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environment(env)
    assert notifier.enabled and notifier.address == path
    assert notifier.watchdog_interval == 1.5  # half of WatchdogSec
    assert env == {}  # a hook script started later does not notify in our name
    other = Notifier.from_environment({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None and not other.enabled  # another process's watchdog


def test_without_a_manager_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog()


def test_a_vanished_manager_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert not notifier.status("a")
    assert not notifier.status("b")
    assert sum("cannot notify" in r.getMessage() for r in caplog.records) == 1


def test_one_line() -> None:
    assert one_line(" a\nb\r\n c ") == "a b c"
