"""One asyncio timer that follows a sans-I/O core's `get_timer()` deadline.

Every core exposes `get_timer() -> float | None`, an absolute deadline on the clock its daemon
feeds it (`loop.time()`), and `handle_timer(now)`. The adapter keeps a single `TimerHandle`
armed at that deadline::

    timer = Timer(on_timer)                  # on_timer(now) calls core.handle_timer(now) ...

    def after_core_activity() -> None:       # after every datagram, packet or timer
        flush_outputs()
        timer.set(core.get_timer())

Re-arming to the deadline already armed costs nothing, so calling `set` after every packet is
fine on the data path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Timer:
    """A single re-armable timer calling `callback(now)` at the deadline given to `set`.

    `now` is `loop.time()` when the callback runs, never earlier than the deadline (asyncio may
    run a handle up to its clock resolution early; a core fed an earlier `now` would find
    nothing due and ask for the same deadline again).
    """

    __slots__ = ("_callback", "_deadline", "_handle", "_loop")

    def __init__(
        self,
        callback: Callable[[float], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._callback = callback
        self._loop = loop or asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        """The armed deadline, or None when disarmed (or already fired)."""
        return self._deadline

    def set(self, deadline: float | None) -> None:
        """Arm the timer at `deadline` (loop clock), replacing any other; None disarms it."""
        if deadline == self._deadline:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._deadline = deadline
        if deadline is not None:
            self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        self.set(None)

    def _fire(self) -> None:
        deadline = self._deadline
        self._handle = None
        self._deadline = None
        now = self._loop.time()
        if deadline is not None and now < deadline:
            now = deadline
        self._callback(now)
