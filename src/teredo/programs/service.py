"""Running a role as a service: Miredo's command line, detaching, the pid file, systemd.

`teredo client|relay|server [-f] [-p PIDFILE] [-u USER] [-c FILE] [SERVER|ADDRESS]` comes here
(`run_service`), as ``miredo`` and ``miredo-server`` take them:

1. the role: ``teredo server`` is a server; ``teredo client`` and ``teredo relay`` run what the
   file's ``RelayType`` says, as ``miredo`` does, and the subcommand only picks the role of a
   file without ``RelayType`` (`tunnel_role`);
2. the configuration (a `UsageError`, exit 2, is printed before anything starts), ``-u``
   overriding ``User``;
3. without ``-f``: detach (`teredo.adapters.daemon.detach`) and log to syslog; the command
   returns once the daemon reports it started (0) or failed (its sentence and exit status);
4. the pid file with ``-p`` (none by default: the units run ``-f`` and systemd knows the pid);
5. the daemon's `serve(loaded, service)` coroutine. It reports its life through `Service`:
   `started` once its sockets and interface are up, `ready` once it really works (the client:
   qualified and its interface configured; relay and server: at once), `status` lines,
   reloads and stopping; `Service` passes these to the command waiting for a detached start
   and to systemd (``Type=notify``, `teredo.adapters.notify`), and feeds systemd's watchdog
   from the event loop.

A failure that may go away by itself while starting (a server name that does not resolve yet,
a bind address not yet on the host: `TransientError`) is retried with backoff by `retry`, with
a warning per attempt; only usage and configuration errors exit 2, runtime failures exit 1.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

from teredo.adapters.notify import Notifier
from teredo.adapters.process import StartReport
from teredo.core import logger
from teredo.core.config import DEFAULT_CONFIG_PATH, Config
from teredo.core.errors import TransientError, UserError
from teredo.core.record import record  # a dataclass without dataclasses' start-up cost
from teredo.programs.loading import (
    Loaded,
    read_config_text,
    role_for,
    start_logging,
    with_command_line,
)

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    import asyncio
    from typing import Final, Literal, TypeVar

    from teredo.programs.client_start import ClientStart

    Kind = Literal["client", "relay", "server"]
    T = TypeVar("T")

# asyncio and logging are imported once the client's launch has its address (client_start).
log = logger.get_logger(__name__)

RETRY_DELAYS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)  # seconds; then every 60 s


@record
class ServiceOptions:
    """Miredo's daemon options: ``-f``, ``-p PIDFILE``, ``-u USER``."""

    foreground: bool = True
    pidfile: str | None = None
    user: str | None = None


class Service:
    """What a running daemon says about its life, to whoever listens."""

    def __init__(self, notifier: Notifier | None = None, report: StartReport | None = None):
        self.notifier = notifier or Notifier(None)
        self.report = report or StartReport()
        self.is_ready = False
        self._watchdog: asyncio.Task[None] | None = None

    def started(self, status: str) -> None:
        """Set up (sockets, interface, privileges dropped): a detached start has succeeded."""
        _collect_garbage_again()
        self.report.started()
        self.notifier.status(status)

    def ready(self, status: str) -> None:
        """Really working: READY=1 (once) with its STATUS line."""
        _collect_garbage_again()
        self.report.started()
        if self.is_ready:
            self.notifier.status(status)
        else:
            self.is_ready = True
            self.notifier.ready(status)

    def status(self, text: str) -> None:
        self.notifier.status(text)

    def waiting(self, sentence: str) -> None:
        """A retry in progress while starting: say so, and let a detached start return."""
        _collect_garbage_again()  # the retries may last
        self.report.started(f"{sentence}; retrying in the background")
        self.notifier.status(sentence)

    def failed(self, error: UserError) -> None:
        self.report.failed(str(error), error.exit_code)
        self.notifier.status(f"failed: {error}")

    def reloading(self, reload: Callable[[], None]) -> Callable[[], None]:
        """`reload` wrapped in RELOADING=1 ... READY=1 (MONOTONIC_USEC with the first)."""

        def wrapped() -> None:
            self.notifier.reloading()
            try:
                reload()
            finally:
                self.notifier.ready()

        return wrapped

    def stopping(self) -> None:
        self.notifier.stopping()
        self.notifier.status("stopping")

    def start_watchdog(self) -> None:
        """WATCHDOG=1 from the event loop at half systemd's WatchdogSec, while it turns."""
        interval = self.notifier.watchdog_interval
        if interval is None or self._watchdog is not None:
            return
        import asyncio

        async def feed() -> None:
            while True:
                self.notifier.watchdog()
                await asyncio.sleep(interval)

        self._watchdog = asyncio.get_running_loop().create_task(feed())

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.notifier.close()


def _collect_garbage_again() -> None:
    """Turn the cyclic garbage collector back on: `teredo.cli` turns it off while a daemon
    imports and sets up, where it ran ~45 times for objects that live on. Those (modules,
    classes, the configuration) are frozen first: the collector does not scan them again, and
    its first run does not fall on the moment the daemon becomes ready (a full collection of
    every object made at start, ~10 ms before the signal handlers are in place)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


async def retry(
    attempt: Callable[[], T],
    service: Service,
    *,
    sleep: Callable[[float], Awaitable[object]] | None = None,
) -> T:
    """`attempt()`, again after 1, 2, 4 ... 60 s (`sleep`: asyncio's) while it raises
    `TransientError`, with a warning each time; any other error ends the start."""
    if sleep is None:
        import asyncio

        sleep = asyncio.sleep
    failures = 0
    while True:
        try:
            return attempt()
        except TransientError as error:
            delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
            failures += 1
            log.warning("%s (attempt %d); retrying in %g s", error, failures, delay)
            service.waiting(str(error))
            await sleep(delay)


def tunnel_role(kind: Kind, config_path: str | None) -> Kind:
    """The role `teredo client` or `teredo relay` runs: the file's RelayType when it has one
    (as miredo), else the subcommand's (`teredo.programs.loading.role_for`)."""
    path = config_path or DEFAULT_CONFIG_PATH
    if kind == "server" or (config_path is None and not os.path.exists(path)):
        return kind
    return role_for(kind, read_config_text(path), path)


def _load(kind: Kind, config_path: str | None, argument: str | None) -> Loaded[Config]:
    loaded: Loaded[Config]
    if kind == "client":  # not from client_daemon: the launch comes before the event loop
        from teredo.programs.client_start import load_client_config

        loaded = load_client_config(config_path, argument)  # type: ignore[assignment]
        return loaded
    from teredo.adapters.openssl import import_without_openssl

    import_without_openssl()  # the event loop, without `ssl`: the daemon modules import it
    if kind == "relay":
        from teredo.programs.relay_daemon import load_relay_config

        loaded = load_relay_config(config_path)  # type: ignore[assignment]
    else:
        from teredo.programs.server_daemon import load_server_config

        loaded = load_server_config(config_path, argument)  # type: ignore[assignment]
    return loaded


def _serve_function(kind: Kind) -> Callable[[Loaded[Config], Service], Awaitable[int]]:
    serve: Callable[[Loaded[Config], Service], Awaitable[int]]
    if kind == "client":
        from teredo.programs.client_daemon import serve as serve_client

        serve = serve_client  # type: ignore[assignment]
    elif kind == "relay":
        from teredo.programs.relay_daemon import serve as serve_relay

        serve = serve_relay  # type: ignore[assignment]
    else:
        from teredo.programs.server_daemon import serve as serve_server

        serve = serve_server  # type: ignore[assignment]
    return serve


def run_service(
    kind: Kind,
    config_path: str | None,
    argument: str | None = None,
    options: ServiceOptions | None = None,
) -> int:
    """`teredo client|relay|server [-f] [-p PIDFILE] [-u USER] [-c FILE] [ARGUMENT]`: run
    until SIGTERM/SIGINT; the exit status (a `UserError` propagates to the CLI)."""
    from teredo.adapters.process import detach, ignore_signals

    options = options or ServiceOptions()
    role = tunnel_role(kind, config_path)
    loaded = with_command_line(
        _load(role, config_path, argument), user=options.user, detached=not options.foreground
    )
    if loaded.log_facility is not None:
        start_logging(loaded, warnings=False)  # can it log there? say so before detaching
    ignore_signals()
    report = StartReport() if options.foreground else detach()
    service = Service(Notifier.from_environment(), report)
    try:
        with _pid_file(options.pidfile):
            with _logging_after(loaded):
                for warning in loaded.config.warnings:
                    log.warning("%s", warning)
                if role != kind:
                    log.info(
                        "the file's RelayType makes this a %s: running one (as miredo does)", role
                    )
                if role == "relay" and argument is not None:
                    log.info(
                        "the server %s on the command line is ignored by a relay (as miredo)",
                        argument,
                    )
                start = _launch(role, loaded)
            import asyncio

            status = asyncio.run(_serve(role, loaded, service, start))
        service.report.failed("the daemon stopped during start-up", status or 1)
        return status
    except UserError as error:
        if not options.foreground:  # the CLI's sentence goes to /dev/null: syslog gets it
            log.error("%s", error)
        service.failed(error)
        raise
    except Exception:  # a bug: detached, its traceback would go to /dev/null
        if not options.foreground:
            log.exception("the daemon stopped on an unexpected error")
        raise
    finally:
        service.close()


@contextlib.contextmanager
def _logging_after(loaded: Loaded[Config]) -> Iterator[None]:
    """Hold what is logged meanwhile (`teredo.core.logger`), then import the event loop
    without `ssl` (logging's set-up module imports it: `teredo.adapters.openssl`), set logging
    up (again in a detached daemon: its syslog tag has its own pid) and log it, failure or not."""
    from teredo.adapters.openssl import import_without_openssl

    logger.hold(time.time, sys.exc_info)
    try:
        yield
    finally:
        try:
            import_without_openssl()
            start_logging(loaded, warnings=False)
        finally:
            logger.release()


def _launch(role: Kind, loaded: Loaded[Config]) -> ClientStart | None:
    """The client's launch before the event loop (`teredo.programs.client_start`)."""
    if role != "client":
        return None
    from teredo.programs.client_start import launch_client

    return launch_client(loaded)  # type: ignore[arg-type]


async def _serve(
    role: Kind, loaded: Loaded[Config], service: Service, start: ClientStart | None = None
) -> int:
    service.start_watchdog()
    try:
        if start is not None:
            from teredo.programs.client_daemon import serve as serve_client

            return await serve_client(loaded, service, start)  # type: ignore[arg-type]
        return await _serve_function(role)(loaded, service)
    finally:
        service.close()


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    from teredo.adapters.daemon import PidFile

    with PidFile(path):
        yield
