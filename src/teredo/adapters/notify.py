"""The service manager's notification protocol (systemd's sd_notify(3)), with the stdlib only.

A service started with ``Type=notify`` finds ``$NOTIFY_SOCKET``: a path, or an abstract socket
name starting with ``@``. Each notification is one datagram of ``NAME=value`` lines sent to it:
``READY=1`` once the service really works, ``STATUS=...`` a line for ``systemctl status``,
``RELOADING=1`` with ``MONOTONIC_USEC`` (the CLOCK_MONOTONIC time in microseconds) when a
reload starts and ``READY=1`` again when it is done, ``STOPPING=1`` when shutting down, and
``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` microseconds when the unit sets
``WatchdogSec``. ``$WATCHDOG_PID``, when set, names the process the watchdog is for.

Without ``$NOTIFY_SOCKET`` every method does nothing, so a daemon calls them unconditionally.
The socket is connected when the notifier is made, before the daemon drops root (writing to a
path socket needs permission, checked then). A failure to send is logged once and never stops
the daemon: the service manager's absence is no reason to stop serving.
"""

from __future__ import annotations

import _socket  # socket.py without its enums and selectors, which cost a launch ~1.5 ms
import os
import time
from collections.abc import MutableMapping

from teredo.core.logger import get_logger

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

log = get_logger(__name__)  # imports logging when it logs (teredo.core.logger)

NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC: Final = "WATCHDOG_USEC"
WATCHDOG_PID: Final = "WATCHDOG_PID"


class Notifier:
    """Notifications to the service manager at `address` (None: no service manager)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket: _socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier the environment asks for. The variables are removed from it so that
        the processes a daemon starts (a hook script) do not notify in its name."""
        env = os.environ if environ is None else environ
        address = env.pop(NOTIFY_SOCKET, None) or None
        usec_text = env.pop(WATCHDOG_USEC, None)
        pid_text = env.pop(WATCHDOG_PID, None)
        watchdog: int | None = None
        for_us = pid_text is None or pid_text == str(os.getpid())
        if usec_text is not None and usec_text.isdigit() and int(usec_text) > 0 and for_us:
            watchdog = int(usec_text)
        notifier = cls(address, watchdog)
        try:
            notifier.connect()
        except OSError as error:
            log.warning("cannot reach the service manager at %s: %s", address, error)
            notifier._failed = True
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` (half the manager's limit), or None."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def notify(self, **fields: str) -> bool:
        """Send ``NAME=value`` lines (``notify(READY="1", STATUS="...")``); True if sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{name}={value}" for name, value in fields.items())
        try:
            self.connect()
            assert self._socket is not None
            self._socket.send(message.encode("utf-8", "replace"))
        except OSError as error:
            if not self._failed:
                log.warning("cannot notify the service manager at %s: %s", self.address, error)
                self._failed = True
            return False
        return True

    def connect(self) -> None:
        """Connect to the manager's socket now: the permission to write to it is checked here,
        so a daemon connects before it drops root (`from_environment` does)."""
        if self.address is None or self._socket is not None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        self._socket = sock

    def ready(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify(READY="1")
        return self.notify(READY="1", STATUS=one_line(status))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=one_line(text))

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING="1", MONOTONIC_USEC=str(usec))

    def stopping(self) -> bool:
        return self.notify(STOPPING="1")

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG="1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def one_line(text: str) -> str:
    """A STATUS value: one line (a newline would start another field)."""
    return " ".join(text.split())
