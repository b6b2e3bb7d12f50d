"""teredo.adapters.daemon: logging set-up, the locked pid file, signals on the asyncio loop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
from collections.abc import Iterator

import pytest

from teredo.adapters.daemon import (
    PidFile,
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
    with pytest.raises(UserError, match=r"cannot open pid file /nonexistent/x\.pid"):
        PidFile("/nonexistent/x.pid").acquire()


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
