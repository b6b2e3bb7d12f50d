"""Test support shared by all tests (`from testsupport import ...`).

Root/namespace tests skip only outside CI; in CI a skip is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


def require_root(*tools: str) -> None:
    """Skip (outside CI) or fail (in CI) unless we are root and the given tools exist."""
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root")
    if not os.path.exists("/dev/net/tun"):
        problems.append("needs /dev/net/tun")
    problems += [f"needs {tool}" for tool in tools if shutil.which(tool) is None]
    if problems:
        reason = ", ".join(problems)
        if IN_CI:
            pytest.fail(f"in CI this test must run, but it {reason}")
        pytest.skip(reason)


def require_accelerators() -> None:
    """Skip (outside CI) or fail (in CI) unless the optional C module was built: CI installs a
    compiler, so there a missing module is a broken build, not a machine without one."""
    from teredo.adapters import accel

    if accel.ACCELERATED:
        return
    reason = "needs the C accelerator (build it with gcc and python3-dev: bash scripts/setup)"
    if IN_CI:
        pytest.fail(f"in CI this test must run, but it {reason}")
    pytest.skip(reason)


def require_kernel_data_path() -> None:
    """Skip (outside CI) or fail (in CI) unless the kernel data path's object was built: CI
    installs clang and libbpf-dev, so there a missing object is a broken build."""
    from teredo.adapters.bpf import OBJECT_PATH

    if os.path.exists(OBJECT_PATH):
        return
    name = os.path.basename(OBJECT_PATH)
    reason = f"needs the kernel data path built ({name}: clang and libbpf-dev)"
    if IN_CI:
        pytest.fail(f"in CI this test must run, but it {reason}")
    pytest.skip(reason)


def require_tool(tool: str, package: str) -> str:
    """The path of `tool`; skip (outside CI) or fail (in CI) when it is not installed."""
    path = shutil.which(tool)
    if path is not None:
        return path
    reason = f"needs {tool} (Debian package {package}: bash scripts/setup installs it)"
    if IN_CI:
        pytest.fail(f"in CI this test must run, but it {reason}")
    pytest.skip(reason)


class NotifyListener:
    """A service manager's end of systemd's notify protocol: a real AF_UNIX datagram socket
    at `path` (give it to a daemon as NOTIFY_SOCKET), keeping every message it receives."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.messages: list[dict[str, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.path)
        os.chmod(self.path, 0o777)  # as systemd's: any user may write

    def wait_for(
        self, name: str, value: str | None = None, timeout: float = 30.0
    ) -> dict[str, str]:
        """The next message (after those already returned) with `name` (= `value`); fails
        the test after `timeout` seconds without it (a deadline: the watchdog's WATCHDOG=1,
        every half second, must not keep a wait for something else alive)."""
        deadline = time.monotonic() + timeout
        while True:
            self._socket.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                data = self._socket.recv(4096)
            except (TimeoutError, BlockingIOError):  # BlockingIOError: the deadline passed
                pytest.fail(f"no {name}={value or '...'} notification; got {self.messages}")
            message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append(message)
            if name in message and (value is None or message[name] == value):
                return message

    def close(self) -> None:
        self._socket.close()


def imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported once it ran `code`."""
    script = f"import sys\n{code}\nprint(*sorted(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())
