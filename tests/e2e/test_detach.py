"""`teredo server` without -f: it detaches and logs to syslog, as miredo-server does (root).

The daemon runs in a mount namespace of its own whose /dev is a tmpfs with /dev/null and, bound
to a socket the test listens on, /dev/log: the test is the syslog daemon, and nothing on the
host's /dev changes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport import require_root

pytestmark = [pytest.mark.root]

TEREDO = str(Path(sys.executable).parent / "teredo")


class Syslog:
    """A syslog daemon's datagram socket, collecting what arrives."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.lines: list[str] = []

    def wait_for(self, fragment: str, timeout: float = 30.0) -> str:
        self.sock.settimeout(timeout)
        while True:
            for line in self.lines:
                if fragment in line:
                    return line
            try:
                self.lines.append(self.sock.recv(8192).decode(errors="replace"))
            except TimeoutError:
                pytest.fail(f"no syslog line with {fragment!r}; got {self.lines}")


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[Syslog]:
    require_root("unshare", "mount")
    log = Syslog(tmp_path / "log")
    yield log
    log.sock.close()


def detached(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`teredo ARGV` (no -f) in a mount namespace whose /dev/log is the test's socket."""
    script = (
        "mount -t tmpfs -o mode=755 tmpfs /dev && mknod -m 666 /dev/null c 1 3 && "
        f'touch /dev/log && mount --bind {tmp_path / "log"} /dev/log && exec "$@"'
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", TEREDO,
         *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def wait_until_gone(pid: int) -> None:
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"process {pid} did not exit")


def test_server_detaches_logs_to_syslog_and_holds_its_pid_file(
    tmp_path: Path, syslog: Syslog
) -> None:
    """The command returns 0 once the daemon is serving; the pid file names the daemon (not
    the command); its log lines go to syslog, facility daemon, tagged teredo[PID]; SIGTERM
    stops it and the pid file goes."""
    base = random.randrange(1, 250)
    # The daemon's user may write it, as /run/teredo, and reach it (pytest's tmp_path is 0700).
    run_dir = Path(tempfile.mkdtemp(prefix="teredo-detach-"))
    run_dir.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    os.chown(run_dir, nobody.pw_uid, nobody.pw_gid)
    pid_file = run_dir / "server.pid"
    config = tmp_path / "server.conf"
    config.write_text(
        f"ServerBindAddress 127.84.{base}.1\nAllowPrivateAddresses yes\n"
        f"ControlSocket {run_dir / 'server.sock'}\n"
    )
    done = detached(tmp_path, "server", "-p", str(pid_file), "-c", str(config))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    pid = int(pid_file.read_text())
    try:
        line = syslog.wait_for("Teredo server on")
        # <30>: facility daemon (3) * 8 + info (6), Miredo's default facility
        assert re.match(rf"<30>teredo\[{pid}\]: INFO teredo\.programs\.server_daemon: ", line)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert os.getsid(pid) != pid and os.getsid(pid) != os.getsid(0)
        os.kill(pid, signal.SIGTERM)
        syslog.wait_for("SIGTERM: shutting down")
        wait_until_gone(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not pid_file.exists()
    shutil.rmtree(run_dir)


def test_a_failure_after_detaching_is_reported_by_the_command(
    tmp_path: Path, syslog: Syslog
) -> None:
    """The daemon fails once detached (its port is taken): the command prints the daemon's
    one sentence and exits with its status, and syslog has it too."""
    base = random.randrange(1, 250)
    config = tmp_path / "server.conf"
    config.write_text(
        f"ServerBindAddress 127.85.{base}.1\nAllowPrivateAddresses yes\n"
        f"ControlSocket {tmp_path / 'server.sock'}\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((f"127.85.{base}.2", 3544))
        done = detached(tmp_path, "server", "-c", str(config))
    sentence = (
        f"cannot bind UDP 127.85.{base}.2:3544: the port is already in use (another teredo or "
        "miredo?); stop that program"
    )
    assert (done.returncode, done.stderr) == (1, f"teredo: {sentence}\n")
    assert sentence in syslog.wait_for("cannot bind")
