"""`get_logger`: a module's logger that imports `logging` on first use, and may hold records.

Importing logging costs a start ~9 ms (re, traceback, linecache, tokenize, string,
threading), and the client's launch configures its address before it needs logging
(`teredo.programs.client_start`). The modules on that path take this handle instead of
``logging.getLogger(__name__)``: it imports logging and hands each call to the real logger
the first time it logs. Between `hold(clock, exception)` and `release()` (the client's start,
before logging is set up) the calls are kept instead, with their time, and `release()` gives
them to their real loggers in order, as if they had been logged then. The clock (`time.time`)
and the exception being handled (`sys.exc_info`) come from the program: the core reads
neither itself. Outside that window nothing is held, so a test, a one-shot command or the
relay logs through it as through `logging`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's flag without importing typing (ms a start pays)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from logging import Logger
    from typing import Any, Final

    Held = tuple[str, int, object, tuple[Any, ...], Any, Mapping[str, object] | None, float]
    Stamps = tuple[Callable[[], float], Callable[[], Any]]  # (time.time, sys.exc_info)

DEBUG: Final = 10  # logging's levels, without importing logging
INFO: Final = 20
WARNING: Final = 30
ERROR: Final = 40
MAX_HELD: Final = 512  # records kept while held at most; a start logs a few dozen

_held: list[Held] | None = None
_stamps: Stamps | None = None


def get_logger(name: str) -> LazyLogger:
    """The handle of logger `name` (``logging.getLogger(name)`` once it logs)."""
    return LazyLogger(name)


def hold(clock: Callable[[], float], exception: Callable[[], Any]) -> None:
    """Keep what the handles log from now on until `release()`, with the time `clock()` gives
    (`time.time`) and, for `exception()`, the exception being handled (`sys.exc_info`)."""
    global _held, _stamps
    if _held is None:
        _held, _stamps = [], (clock, exception)


def release() -> None:
    """Stop holding, and log what was held through the real loggers (configured by now), each
    record with the time it was logged."""
    global _held
    held, _held = _held, None
    if not held:
        return
    import logging

    for name, level, message, args, exc_info, extra, created in held:
        logger = logging.getLogger(name)
        if not logger.isEnabledFor(level):
            continue
        record = logger.makeRecord(name, level, "(held)", 0, message, args, exc_info, extra=extra)
        record.created = created
        record.msecs = (created - int(created)) * 1000
        logger.handle(record)


class LazyLogger:
    """What the modules on the launch path call of a `logging.Logger`."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: Logger | None = None

    def debug(self, message: object, *args: Any, **options: Any) -> None:
        self._log(DEBUG, message, args, options)

    def info(self, message: object, *args: Any, **options: Any) -> None:
        self._log(INFO, message, args, options)

    def warning(self, message: object, *args: Any, **options: Any) -> None:
        self._log(WARNING, message, args, options)

    def error(self, message: object, *args: Any, **options: Any) -> None:
        self._log(ERROR, message, args, options)

    def exception(self, message: object, *args: Any, **options: Any) -> None:
        options.setdefault("exc_info", True)
        self._log(ERROR, message, args, options)

    def log(self, level: int, message: object, *args: Any, **options: Any) -> None:
        self._log(level, message, args, options)

    def isEnabledFor(self, level: int) -> bool:
        """While held, everything is (the real logger filters at release)."""
        return _held is not None or self._real().isEnabledFor(level)

    def _log(self, level: int, message: object, args: tuple[Any, ...], options: Any) -> None:
        if _held is None:
            options.setdefault("stacklevel", 3)  # the caller's line, not this module's
            self._real().log(level, message, *args, **options)
        elif len(_held) < MAX_HELD and _stamps is not None:
            clock, exception = _stamps
            exc_info = options.get("exc_info")
            if exc_info is True:
                exc_info = exception()
            _held.append((self.name, level, message, args, exc_info, options.get("extra"), clock()))

    def _real(self) -> Logger:
        logger = self._logger
        if logger is None:
            import logging

            logger = self._logger = logging.getLogger(self.name)
        return logger
