"""teredo.adapters.daemon: logging set-up, the locked pid file, signals on the asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from teredo.adapters.daemon import (
    PidFile,
    catch_shutdown,
    install_signal_handlers,
    level_for_verbosity,
    setup_logging,
    wait_for_shutdown,
)
from teredo.core.errors import UsageError, UserError


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger("teredo")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], root.level, root.propagate = saved


def test_verbosity_levels() -> None:
    assert level_for_verbosity(-1) == logging.WARNING
    assert level_for_verbosity(0) == logging.INFO
    assert level_for_verbosity(1) == logging.DEBUG
    assert level_for_verbosity(3) == logging.DEBUG


def test_stderr_logging_replaces_its_own_handler(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(0)
    setup_logging(1)  # again, e.g. on reload: still one handler
    root = logging.getLogger("teredo")
    assert [h.get_name() for h in root.handlers].count("teredo-runtime") == 1
    assert root.level == logging.DEBUG
    logging.getLogger("teredo.adapters.test").debug("hello %s", "world")
    assert "DEBUG   teredo.adapters.test: hello world" in capsys.readouterr().err


def test_json_logging_is_one_object_per_line(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """LogFormat json: time, level, role, message and the event's fields, one line each."""
    setup_logging(0, log_format="json", role="client")
    logger = logging.getLogger("teredo.programs.client_daemon")
    logger.info("address %s configured", "2001:0::1", extra={"address": "2001:0::1", "mtu": 1280})
    logger.warning('a "quoted"\nmessage')
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "address 2001:0::1 configured"
    assert (first["level"], first["role"], first["pid"]) == ("info", "client", os.getpid())
    assert (first["address"], first["mtu"]) == ("2001:0::1", 1280)
    assert first["logger"] == "teredo.programs.client_daemon"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["message"] == 'a "quoted"\nmessage' and second["level"] == "warning"
    assert "args" not in first and "msg" not in first


def test_json_logging_carries_the_traceback(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(0, log_format="json", role="relay")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("teredo.x").exception("failed")
    event = json.loads(capsys.readouterr().err)
    assert event["message"] == "failed" and "RuntimeError: boom" in event["exception"]


def test_syslog_logging(restore_logging: None) -> None:
    path = f"/tmp/trd-{os.getpid()}.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslogd:
        syslogd.bind(path)
        try:
            setup_logging(0, syslog_facility="local0", ident="teredo-relay", syslog_socket=path)
            logging.getLogger("teredo.relay").warning("no IPv6 forwarding")
            syslogd.settimeout(5)
            message = syslogd.recv(1000)
        finally:
            os.unlink(path)
    # <132> = local0 (16) * 8 + warning (4)
    assert (
        message
        == f"<132>teredo-relay[{os.getpid()}]: WARNING teredo.relay: no IPv6 forwarding\0".encode()
    )


def test_syslog_errors(restore_logging: None) -> None:
    with pytest.raises(UsageError, match="unknown SyslogFacility 'nope'"):
        setup_logging(0, syslog_facility="nope")
    with pytest.raises(UserError, match="/nonexistent/log does not exist"):
        setup_logging(0, syslog_facility="daemon", syslog_socket="/nonexistent/log")


def test_pid_file_is_locked_and_taken_over_when_stale(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "teredo.pid")
    with open(path, "w") as stale:
        stale.write("99999999\n")  # left by a crash: nobody holds the lock
    with PidFile(path):
        with open(path) as file:
            assert file.read() == f"{os.getpid()}\n"
        with pytest.raises(UserError) as caught:
            PidFile(path).acquire()
        assert f"already running (pid {os.getpid()}, pid file {path})" in str(caught.value)
    assert not os.path.exists(path)


def test_pid_file_in_a_missing_directory() -> None:
    with pytest.raises(UserError, match=r"cannot create pid file /nonexistent/x\.pid: .*; create"):
        PidFile("/nonexistent/x.pid").acquire()


def test_pid_file_is_never_seen_half_written(tmp_path: Path) -> None:
    """The file appears at its path with the pid in it (linked from a complete temporary), and
    no temporary file is left next to it."""
    path = tmp_path / "teredo.pid"
    with PidFile(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["teredo.pid"]
    assert list(tmp_path.iterdir()) == []


def test_pid_file_one_winner_among_concurrent_starters(tmp_path: Path) -> None:
    """Several processes start at once on one pid file (a stale one is there): exactly one
    holds it, the others refuse naming it."""
    path = tmp_path / "teredo.pid"
    path.write_text("99999999\n")
    code = (
        "import sys\n"
        "from teredo.adapters.daemon import PidFile\n"
        "from teredo.core.errors import UserError\n"
        "sys.stdin.readline()\n"
        "held = None\n"
        "try:\n"
        f"    held = PidFile({str(path)!r}).acquire()\n"
        "except UserError as error:\n"
        "    print('refused', error, flush=True)\n"
        "else:\n"
        "    print('holds', flush=True)\n"
        "sys.stdin.readline()\n"
        "if held is not None:\n"
        "    held.release()\n"
    )
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    try:
        for starter in starters:  # all of them waiting: go
            assert starter.stdin is not None
            starter.stdin.write("go\n")
            starter.stdin.flush()
        answers = []
        for starter in starters:
            assert starter.stdout is not None
            answers.append(starter.stdout.readline())
    finally:
        for starter in starters:
            assert starter.stdin is not None
            starter.stdin.close()
            starter.wait()
    assert sum(answer == "holds\n" for answer in answers) == 1, answers
    refusals = [answer for answer in answers if answer.startswith("refused")]
    assert len(refusals) == 5
    assert all("another instance is already running" in answer for answer in refusals), answers
    assert not path.exists()  # the holder removed it on exit


def test_pid_file_emptied_when_it_cannot_be_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a privilege drop the daemon may not write the pid file's directory: it empties the
    file instead, which says "no pid" to whoever reads it."""
    path = tmp_path / "teredo.pid"
    pid_file = PidFile(str(path)).acquire()

    def refuse(name: str) -> None:
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(os, "unlink", refuse)
    pid_file.release()
    monkeypatch.undo()
    assert path.read_text() == ""
    with PidFile(str(path)):  # unlocked: taken over
        assert path.read_text() == f"{os.getpid()}\n"


def test_syslog_missing_points_at_the_foreground_option(restore_logging: None) -> None:
    with pytest.raises(UserError) as caught:
        setup_logging(0, syslog_facility="daemon", syslog_socket="/nonexistent/log")
    assert str(caught.value) == (
        "cannot log to syslog: /nonexistent/log does not exist; start a syslog daemon or run in "
        "the foreground with -f to log to stderr"
    )


def test_signals_are_caught_from_the_call_on_before_anything_else_runs() -> None:
    """A daemon catches SIGTERM before it says it is ready: the handler must be in place when
    `catch_shutdown` returns, not when its task first runs (a SIGTERM right after READY=1
    killed a server without its clean-up), and go when the task ends or is cancelled."""

    async def main() -> tuple[signal.Signals, object]:
        signals = catch_shutdown()
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # no await yet
        os.kill(os.getpid(), signal.SIGTERM)
        number = await signals
        await asyncio.sleep(0)  # the done callbacks
        restored = signal.getsignal(signal.SIGTERM)
        cancelled = catch_shutdown()
        cancelled.cancel()  # a start that failed: the handlers go with the task
        with contextlib.suppress(asyncio.CancelledError):
            await cancelled
        await asyncio.sleep(0)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        return number, restored

    assert asyncio.run(main()) == (signal.SIGTERM, signal.SIG_DFL)


def test_sigusr1_and_sigusr2_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """Miredo does nothing on SIGUSR1 and SIGUSR2 (miredo(8)); their default would kill us."""

    async def main() -> signal.Signals:
        waiter = asyncio.create_task(wait_for_shutdown())
        await asyncio.sleep(0)
        for number in (signal.SIGUSR1, signal.SIGUSR2):
            os.kill(os.getpid(), number)
        while sum("received: ignored" in r.getMessage() for r in caplog.records) < 2:
            await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGTERM)
        return await waiter

    with caplog.at_level(logging.INFO, logger="teredo"):
        assert asyncio.run(main()) == signal.SIGTERM
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("SIGUSR1 received: ignored") for m in messages)
    assert any(m.startswith("SIGUSR2 received: ignored") for m in messages)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # as before the handlers


_DETACHING = """
import os, sys
from teredo.adapters.daemon import detach
report = detach()
with open(sys.argv[1], "w") as out:
    print(os.getpid(), os.getsid(0), os.getcwd(), os.readlink("/proc/self/fd/0"),
          os.readlink("/proc/self/fd/2"), file=out)
if sys.argv[2] == "started":
    report.started()
elif sys.argv[2] == "note":
    report.started("waiting for the network")
elif sys.argv[2] == "failed":
    report.failed("cannot bind UDP 192.0.2.1:3544: it is not an address of this host", 1)
"""


@pytest.mark.parametrize(
    ("outcome", "status", "stderr"),
    [
        ("started", 0, ""),
        ("note", 0, "teredo: waiting for the network\n"),
        (
            "failed",
            1,
            "teredo: cannot bind UDP 192.0.2.1:3544: it is not an address of this host\n",
        ),
        ("silent", 1, "teredo: the daemon stopped during start-up; see the system log"),
    ],
)
def test_detach(tmp_path: Path, outcome: str, status: int, stderr: str) -> None:
    """Double fork, new session, / as working directory, stdio on /dev/null; the command exits
    with what the daemon reported (or 1 with a pointer to the log if it said nothing)."""
    out = tmp_path / "daemon.txt"
    done = subprocess.run(
        [sys.executable, "-c", _DETACHING, str(out), outcome],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == status, done.stderr
    assert done.stderr.startswith(stderr) and done.stderr.count("\n") == (1 if stderr else 0)
    pid, sid, cwd, stdin, stderr_target = out.read_text().split()
    assert int(sid) not in (os.getsid(0), int(pid))  # a session of its own, not its leader
    assert cwd == "/" and stdin == stderr_target == "/dev/null"


def test_signals_reload_then_shutdown() -> None:
    reloads: list[str] = []

    def reload() -> None:
        reloads.append("reload")
        if len(reloads) == 1:
            raise UserError("bad config")  # logged; the daemon keeps running

    async def main() -> signal.Signals:
        waiter = asyncio.create_task(wait_for_shutdown(on_reload=reload))
        await asyncio.sleep(0)  # the waiter installs its handlers
        for count in (1, 2):
            os.kill(os.getpid(), signal.SIGHUP)
            while len(reloads) < count:
                await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGTERM)
        return await waiter

    assert asyncio.run(main()) == signal.SIGTERM
    assert reloads == ["reload", "reload"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers removed


def test_install_signal_handlers_returns_a_remover() -> None:
    async def main() -> list[signal.Signals]:
        got: list[signal.Signals] = []
        stop = asyncio.Event()

        def on_shutdown(number: signal.Signals) -> None:
            got.append(number)
            stop.set()

        remove = install_signal_handlers(on_shutdown)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            await stop.wait()
        finally:
            remove()
        return got

    assert asyncio.run(main()) == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
