"""The common daemon frame: logging, pid file, signals on the asyncio loop.

A role daemon (`teredo.programs`: server_daemon, client_daemon, relay_daemon) looks like this::

    def run_relay(config_path: str | None) -> int:
        loaded = load_relay_config(config_path)         # parse; UsageError on mistakes
        setup_logging(0, syslog_facility=loaded.syslog) # stderr, or syslog (SyslogFacility)
        return asyncio.run(_serve(loaded))

    async def _serve(loaded) -> int:
        try:
            udp = open_udp_socket(...)                  # UserError -> one sentence
            ...                                         # TUN, interface, control socket
            drop_privileges(config.user, keep=(...))    # teredo.adapters.privileges
            await wait_for_shutdown(on_reload=daemon.reload)  # SIGTERM/SIGINT end it
        finally:
            ...                                         # undo the interface, close sockets
        return 0

The daemons run in the foreground and write no pid file: `PidFile` (a pid file held with a
lock) is here for when one does, and no command-line option asks for it yet.

The timer adapter for the core's `get_timer()` is `teredo.adapters.timer.Timer`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Final

from teredo.core.errors import UsageError, UserError

log = logging.getLogger(__name__)

SYSLOG_SOCKET: Final = "/dev/log"
SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL: Final = signal.SIGHUP

_STDERR_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_SYSLOG_FORMAT: Final = "%(levelname)s %(name)s: %(message)s"


# --- logging ----------------------------------------------------------------------------------


def level_for_verbosity(verbosity: int) -> int:
    """The log level for a count of `-v` flags: -1 (quiet) WARNING, 0 INFO, 1+ DEBUG."""
    if verbosity < 0:
        return logging.WARNING
    return logging.INFO if verbosity == 0 else logging.DEBUG


def setup_logging(
    verbosity: int = 0,
    *,
    syslog_facility: str | None = None,
    ident: str = "teredo",
    syslog_socket: str = SYSLOG_SOCKET,
) -> None:
    """Send the `teredo` loggers to stderr, or to syslog with `syslog_facility` when given.

    `syslog_facility` takes Miredo's `SyslogFacility` names (daemon, user, local0..local7...);
    messages then go to `syslog_socket` tagged `ident[pid]`.
    Safe to call again (on reload, in tests): it replaces the handler it installed before.
    pyroute2's own chatter is shown only from verbosity 2.
    """
    level = level_for_verbosity(verbosity)
    handler: logging.Handler
    if syslog_facility is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
    else:
        from logging.handlers import SysLogHandler  # syslog only: it brings pickle and queue

        facility = SysLogHandler.facility_names.get(syslog_facility.lower())
        if facility is None:
            names = ", ".join(sorted(SysLogHandler.facility_names))
            raise UsageError(f"unknown SyslogFacility {syslog_facility!r}; use one of {names}")
        # SysLogHandler ignores a missing /dev/log and then loses every message: check first.
        if not os.path.exists(syslog_socket):
            raise UserError(
                f"cannot log to syslog: {syslog_socket} does not exist; start a syslog daemon "
                "or log to stderr"
            )
        handler = SysLogHandler(syslog_socket, facility=facility)
        handler.ident = f"{ident}[{os.getpid()}]: "
        handler.setFormatter(logging.Formatter(_SYSLOG_FORMAT))
    handler.set_name("teredo-runtime")
    root = logging.getLogger("teredo")
    for old in [h for h in root.handlers if h.get_name() == "teredo-runtime"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("pyroute2").setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)


# --- pid file ---------------------------------------------------------------------------------


class PidFile:
    """A pid file held with an exclusive lock for the life of the daemon.

    The lock, not the file's existence, says a daemon is running: a file left by a crash (or
    not removable after a privilege drop) is harmlessly taken over. A second instance gets a
    `UserError` naming the running pid. Use as a context manager, or `acquire()`/`release()`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> PidFile:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise UserError(
                f"cannot open pid file {self.path}: {error.strerror}; run as root or choose "
                "another pid file path"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"another instance is already running (pid {other}, pid file {self.path}); "
                "stop it or use another pid file"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError as error:  # gone already, or not ours to remove after a privilege drop
            log.debug("cannot remove pid file %s: %s", self.path, error)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> PidFile:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


# --- signals ----------------------------------------------------------------------------------


def install_signal_handlers(
    on_shutdown: Callable[[signal.Signals], None],
    on_reload: Callable[[], None] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[], None]:
    """Route SIGTERM/SIGINT to `on_shutdown(signal)` and SIGHUP to `on_reload()` on the loop.

    The callbacks run on the event loop, not in a signal handler, so they may touch the core.
    An exception from `on_reload` (say a `UserError` for a bad configuration) is logged and
    the daemon keeps running. Without `on_reload`, SIGHUP is logged and ignored. Returns a
    function that restores the default handlers.
    """
    loop = loop or asyncio.get_running_loop()

    def reload() -> None:
        if on_reload is None:
            log.info("SIGHUP ignored: nothing to reload")
            return
        log.info("SIGHUP: reloading")
        try:
            on_reload()
        except UserError as error:
            log.error("reload failed, keeping the running configuration: %s", error)
        except Exception:
            log.exception("reload failed, keeping the running configuration")

    for number in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(number, on_shutdown, number)
    loop.add_signal_handler(RELOAD_SIGNAL, reload)

    def remove() -> None:
        for number in (*SHUTDOWN_SIGNALS, RELOAD_SIGNAL):
            loop.remove_signal_handler(number)

    return remove


async def wait_for_shutdown(on_reload: Callable[[], None] | None = None) -> signal.Signals:
    """Wait until SIGTERM or SIGINT arrives (handling SIGHUP meanwhile); return the signal.

    The signal handlers are removed on return, so a second Ctrl-C during the clean-up that
    follows interrupts it (KeyboardInterrupt) instead of being swallowed.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def shutdown(number: signal.Signals) -> None:
        if not received.done():
            received.set_result(number)

    remove = install_signal_handlers(shutdown, on_reload, loop)
    try:
        number = await received
    finally:
        remove()
    log.info("%s: shutting down", number.name)
    return number
