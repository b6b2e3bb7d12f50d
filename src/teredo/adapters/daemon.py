"""The common daemon frame: logging, pid file, signals on the asyncio loop.

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
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Final, Literal

from teredo.core.errors import UsageError, UserError

log = logging.getLogger(__name__)

SYSLOG_SOCKET: Final = "/dev/log"
SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL: Final = signal.SIGHUP
IGNORED_SIGNALS: Final = (signal.SIGUSR1, signal.SIGUSR2)  # miredo(8): "Do nothing"
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


# --- pid file ---------------------------------------------------------------------------------


class PidFile:
    """A pid file held with an exclusive lock for the life of the daemon.

    Created atomically: the pid is written to a private temporary file, which is locked and
    then hard-linked to `path`, so a reader never sees an empty or half-written file and only
    one of two daemons started together can win. The lock, not the file's existence, says a
    daemon is running: a file left by a crash is found unlocked and replaced. A second
    instance gets a `UserError` naming the running pid. On release the file is removed; a
    daemon that dropped root cannot remove it from a directory it may not write (a root-owned
    /run), and then empties it instead, which readers take as "no pid". Use as a context
    manager, or `acquire()`/`release()`.
    """

    ATTEMPTS: Final = 5  # stale files replaced by a concurrent starter before giving up

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> PidFile:
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            os.unlink(temporary)  # left by a process that had our pid: it is not running
            return self.acquire()
        except OSError as error:
            raise self._error(error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows this file yet
            os.write(fd, f"{os.getpid()}\n".encode())
            for _ in range(self.ATTEMPTS):
                try:
                    os.link(temporary, self.path)
                    break
                except FileExistsError:
                    self._remove_if_stale()
            else:
                raise UserError(
                    f"cannot create pid file {self.path}: other processes keep replacing it; "
                    "stop them or use another pid file"
                )
        except OSError as error:
            os.close(fd)
            raise self._error(error) from None
        except BaseException:
            os.close(fd)
            raise
        finally:
            _unlink_quietly(temporary)
        self._fd = fd
        return self

    def _remove_if_stale(self) -> None:
        """Remove the existing file at `path` if no daemon holds it; `UserError` if one does."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # removed meanwhile: try to link again
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                raise UserError(
                    f"another instance is already running (pid {other}, pid file {self.path}); "
                    "stop it or give this one another pid file with -p"
                ) from None
            # Ours now; remove it only if it is still the file at `path` (not a newer one).
            if _same_file(fd, self.path):
                os.unlink(self.path)
        finally:
            os.close(fd)

    def _error(self, error: OSError) -> UserError:
        if isinstance(error, FileNotFoundError):
            fix = f"create {os.path.dirname(self.path) or '.'} or choose another pid file with -p"
        else:
            fix = "run as root or choose another pid file with -p"
        return UserError(f"cannot create pid file {self.path}: {error.strerror}; {fix}")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                os.unlink(self.path)
        except OSError as error:  # not ours to remove after a privilege drop: empty it
            log.debug("cannot remove pid file %s (%s): emptying it", self.path, error.strerror)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
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


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# --- detaching --------------------------------------------------------------------------------


class StartReport:
    """How a detached daemon tells the command that started it how its start went.

    One line on a pipe: ``0`` (started), ``0 NOTE`` (started, with a sentence to show, such as
    a retry in progress), or ``CODE MESSAGE`` (failed with that exit status). In the
    foreground there is no pipe and nothing is sent. Only the first report counts.
    """

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd

    @property
    def pending(self) -> bool:
        return self._fd is not None

    def started(self, note: str | None = None) -> None:
        self._send(f"0 {note}" if note else "0")

    def failed(self, message: str, exit_code: int = 1) -> None:
        self._send(f"{exit_code or 1} {message}")

    def _send(self, line: str) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, " ".join(line.split()).encode("utf-8", "replace") + b"\n")
        except OSError:
            pass  # the command that waited is gone: nobody to tell
        finally:
            os.close(fd)


def detach() -> StartReport:
    """Become a daemon: fork twice with a new session between, chdir /, umask 022, stdin,
    stdout and stderr on /dev/null. Returns, in the daemon, the `StartReport` to use.

    The original process waits for that report and exits with it: 0 once the daemon says it
    started (showing its note on stderr, if any), or the daemon's exit status after printing
    its one-sentence error; if the daemon dies without a word, 1 and a pointer to the log.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    first = os.fork()
    if first > 0:  # the command line: wait for the daemon's word
        os.close(write_end)
        status = _wait_for_report(read_end)
        os.waitpid(first, 0)
        sys.stderr.flush()
        os._exit(status)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)  # the session leader goes: the daemon can never regain a terminal
    os.chdir("/")
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    os.set_inheritable(write_end, False)
    return StartReport(write_end)


def _wait_for_report(fd: int) -> int:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
        if b"\n" in chunk:
            break
    os.close(fd)
    line = b"".join(chunks).decode("utf-8", "replace").strip()
    code_text, _, message = line.partition(" ")
    if not code_text.isdigit():
        print(
            "teredo: the daemon stopped during start-up; see the system log, or run it with -f "
            "to see its messages",
            file=sys.stderr,
        )
        return 1
    if message:
        print(f"teredo: {message}", file=sys.stderr)
    return int(code_text)


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

    before = {number: signal.getsignal(number) for number in IGNORED_SIGNALS}
    for number in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(number, on_shutdown, number)
    loop.add_signal_handler(RELOAD_SIGNAL, reload)
    for number in IGNORED_SIGNALS:
        meaning = (on_signal or {}).get(number)
        if meaning is not None:
            loop.add_signal_handler(number, meaning)
        else:
            loop.add_signal_handler(number, ignore, number)

    def remove() -> None:
        for number in (*SHUTDOWN_SIGNALS, RELOAD_SIGNAL, *IGNORED_SIGNALS):
            loop.remove_signal_handler(number)
        for number, handler in before.items():  # a daemon's SIG_IGN (`ignore_signals`)
            if handler is not None:
                signal.signal(number, handler)

    return remove


def ignore_signals() -> None:
    """Ignore SIGUSR1 and SIGUSR2 before the loop's handlers exist (their default kills)."""
    for number in IGNORED_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


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
