"""The common daemon frame: logging, signals on the asyncio loop (the pid file and detaching
are `teredo.adapters.process`'s, re-exported here).

A role daemon (`teredo.programs`: server_daemon, client_daemon, relay_daemon) is a coroutine
that `teredo.programs.service.run_service` runs once logging, detaching and the pid file are
done::

    async def serve(loaded, service) -> int:
        try:
            udp = await retry(lambda: open_udp_socket(...), service)  # UserError: one sentence
            ...                                         # TUN, interface, control socket
            drop_privileges(config.user, keep=(...))    # teredo.adapters.privileges
            signals = catch_shutdown(on_reload=service.reloading(daemon.reload))
            service.ready("...")                        # systemd READY=1 and STATUS=
            await signals
            service.stopping()                          # SIGTERM/SIGINT ended it
        finally:
            ...                                         # undo the interface, close sockets
        return 0

Without ``-f`` a daemon detaches first (`detach`: Miredo's behaviour) and tells the waiting
command line how its start went through a `StartReport`; ``-p FILE`` holds a `PidFile`.
SIGUSR1 and SIGUSR2 are logged and ignored, as Miredo does (miredo(8): "Do nothing").

The timer adapter for the core's `get_timer()` is `teredo.adapters.timer.Timer`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Final, Literal

from teredo.adapters.process import IGNORED_SIGNALS
from teredo.adapters.process import PidFile as PidFile  # re-exported, as the next three
from teredo.adapters.process import StartReport as StartReport
from teredo.adapters.process import detach as detach
from teredo.adapters.process import ignore_signals as ignore_signals
from teredo.core.errors import UsageError, UserError

log = logging.getLogger(__name__)

SYSLOG_SOCKET: Final = "/dev/log"
SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL: Final = signal.SIGHUP
STDERR_HINT: Final = "run in the foreground with -f to log to stderr"

_STDERR_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_SYSLOG_FORMAT: Final = "%(levelname)s %(name)s: %(message)s"
# What every LogRecord has; anything else on a record came from `extra=` and is an event field.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """``LogFormat json``: one JSON object per line, for log shippers.

    Keys: ``time`` (UTC, RFC 3339 with milliseconds), ``level``, ``role``, ``logger``,
    ``message`` (the %-formatted text), ``pid``, the event's own fields (what the call passed in
    ``extra=``), and ``exception`` (the traceback text) when there is one.
    """

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        event: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "role": self.role,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in event:
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, ensure_ascii=False)


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
    log_format: Literal["text", "json"] = "text",
    role: str = "teredo",
    stderr_hint: str = STDERR_HINT,
) -> None:
    """Send the `teredo` loggers to stderr, or to syslog with `syslog_facility` when given.

    `syslog_facility` takes Miredo's `SyslogFacility` names (daemon, user, local0..local7...);
    messages then go to `syslog_socket` tagged `ident[pid]`. Without a syslog daemon this is one
    `UserError` sentence ending with `stderr_hint`, how to log to stderr instead. `log_format`
    "json" writes each message as one JSON object (`JsonFormatter`, naming `role`) instead of text.
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
                f"or {stderr_hint}"
            )
        handler = SysLogHandler(syslog_socket, facility=facility)
        handler.ident = f"{ident}[{os.getpid()}]: "
        handler.setFormatter(logging.Formatter(_SYSLOG_FORMAT))
    if log_format == "json":
        handler.setFormatter(JsonFormatter(role))
    handler.set_name("teredo-runtime")
    root = logging.getLogger("teredo")
    for old in [h for h in root.handlers if h.get_name() == "teredo-runtime"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    logging.getLogger("pyroute2").setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)


# --- signals ----------------------------------------------------------------------------------


def install_signal_handlers(
    on_shutdown: Callable[[signal.Signals], None],
    on_reload: Callable[[], None] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    on_signal: Mapping[signal.Signals, Callable[[], None]] | None = None,
) -> Callable[[], None]:
    """Route SIGTERM/SIGINT to `on_shutdown(signal)` and SIGHUP to `on_reload()` on the loop.

    The callbacks run on the event loop, not in a signal handler, so they may touch the core.
    An exception from `on_reload` (say a `UserError` for a bad configuration) is logged and
    the daemon keeps running. Without `on_reload`, SIGHUP is logged and ignored. SIGUSR1 and
    SIGUSR2 are logged and ignored (miredo(8)). Returns a function that restores the default
    handlers (SIGUSR1 and SIGUSR2 go back to what they were: ignored in a daemon).
    `on_signal` gives one of those a meaning in this daemon (the relay's SIGUSR2: draining).
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

    def ignore(number: signal.Signals) -> None:
        log.info("%s received: ignored (it has no meaning for teredo, as for Miredo)", number.name)

    ignored = [signal.Signals(number) for number in IGNORED_SIGNALS]
    before = {number: signal.getsignal(number) for number in ignored}
    for number in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(number, on_shutdown, number)
    loop.add_signal_handler(RELOAD_SIGNAL, reload)
    for number in ignored:
        meaning = (on_signal or {}).get(number)
        if meaning is not None:
            loop.add_signal_handler(number, meaning)
        else:
            loop.add_signal_handler(number, ignore, number)

    def remove() -> None:
        for number in (*SHUTDOWN_SIGNALS, RELOAD_SIGNAL, *ignored):
            loop.remove_signal_handler(number)
        for number, handler in before.items():  # a daemon's SIG_IGN (`ignore_signals`)
            if handler is not None:
                signal.signal(number, handler)

    return remove


def catch_shutdown(
    on_reload: Callable[[], None] | None = None,
    on_signal: Mapping[signal.Signals, Callable[[], None]] | None = None,
) -> asyncio.Task[signal.Signals]:
    """Handle the signals from now on -- SIGTERM and SIGINT end the returned task with the
    signal; SIGHUP, and `on_signal`'s SIGUSR1 or SIGUSR2, are handled meanwhile.

    The handlers are in place when this returns, before anything else runs: a daemon calls it
    before it says it is ready (READY=1, its log line), so that a SIGTERM sent right after
    finds them. They are removed when the task ends (or is cancelled, as when the start
    fails), so a second Ctrl-C during the clean-up that follows interrupts it
    (KeyboardInterrupt) instead of being swallowed.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def shutdown(number: signal.Signals) -> None:
        if not received.done():
            received.set_result(number)

    remove = install_signal_handlers(shutdown, on_reload, loop, on_signal)

    async def wait() -> signal.Signals:
        number = await received
        log.info("%s: shutting down", number.name)
        return number

    task = loop.create_task(wait())
    task.add_done_callback(lambda _: remove())
    return task


async def wait_for_shutdown(
    on_reload: Callable[[], None] | None = None,
    on_signal: Mapping[signal.Signals, Callable[[], None]] | None = None,
) -> signal.Signals:
    """Wait until SIGTERM or SIGINT arrives (handling SIGHUP, and `on_signal`'s SIGUSR1 or
    SIGUSR2, meanwhile); return the signal. `catch_shutdown`, awaited at once."""
    return await catch_shutdown(on_reload, on_signal)
