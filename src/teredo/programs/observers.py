"""The ways to watch a running daemon, started with one call: its control socket (`teredo
status`, ``ControlSocket``, ``ControlSocketGroup``) and its Prometheus endpoint
(``MetricsAddress``).

Every daemon calls `start_observers(config, daemon.status, started=...)` once its sockets are
open and before it drops privileges (a metrics port below 1024 and the socket's directory need
root), and `await observers.close()` on its way out. Both read the same status document
(`complete_status`: version, pid and uptime filled in), so `teredo status` and the metrics never
disagree. The metrics module is imported only when ``MetricsAddress`` is set.

SIGHUP does not move them: a new ``ControlSocket``, ``ControlSocketGroup`` or ``MetricsAddress``
takes effect at the next restart, and the reload says so (`teredo.programs.loading`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from teredo.adapters.control import ControlServer, complete_status, start_control_server
from teredo.core.config import Config

if TYPE_CHECKING:
    from teredo.adapters.metrics import MetricsServer


class Observers:
    """A daemon's control socket and metrics endpoint, either of which may be off."""

    def __init__(self, get_status: Callable[[], Mapping[str, Any]], started: float) -> None:
        self._get_status = get_status
        self._started = started
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None

    def status(self) -> dict[str, Any]:
        """The status document as `teredo status` gets it."""
        return complete_status(self._get_status(), self._started)

    async def close(self) -> None:
        """Stop both; the control socket's file is removed."""
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None
        if self.control is not None:
            await self.control.close()
            self.control = None


async def start_observers(
    config: Config,
    get_status: Callable[[], Mapping[str, Any]],
    *,
    started: float | None = None,
) -> Observers:
    """Start what `config` asks for: the control socket unless ``ControlSocket none``, the
    metrics endpoint when ``MetricsAddress`` is set. `UserError` when either cannot start."""
    observers = Observers(get_status, time.monotonic() if started is None else started)
    try:
        if config.control_socket is not None:
            observers.control = await start_control_server(
                config.control_socket,
                get_status,
                started=observers._started,
                group=config.control_socket_group,
                owner=config.user,
            )
        if config.metrics_address is not None:
            from teredo.adapters.metrics import start_metrics_server

            observers.metrics = await start_metrics_server(config.metrics_address, observers.status)
    except BaseException:
        await observers.close()
        raise
    return observers
