"""The daemon's process frame before its event loop: detaching, the pid file, ignored signals.

Apart from `teredo.adapters.daemon` (logging, signals on the asyncio loop) because a daemon
uses these before it imports asyncio or logging: the client configures its address first
(`teredo.programs.client_start`), and each of those imports costs its launch milliseconds.
`teredo.adapters.daemon` re-exports them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from types import TracebackType

from teredo.core.errors import UserError
from teredo.core.logger import get_logger

TYPE_CHECKING = False  # typing's flag without importing typing (ms a start pays)
if TYPE_CHECKING:
    import signal as _signal  # the same functions, typed (typeshed has no _signal)
    from typing import Final
else:
    import _signal  # signal.py without its enums, which cost a launch ~0.5 ms

log = get_logger(__name__)  # imports logging when it logs (teredo.core.logger)

# miredo(8): "Do nothing". Numbers (_signal has no enum); teredo.adapters.daemon names them.
IGNORED_SIGNALS: Final[tuple[int, ...]] = (_signal.SIGUSR1, _signal.SIGUSR2)


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


def ignore_signals() -> None:
    """Ignore SIGUSR1 and SIGUSR2 before the loop's handlers exist (their default kills)."""
    for number in IGNORED_SIGNALS:
        _signal.signal(number, _signal.SIG_IGN)


__all__ = ["IGNORED_SIGNALS", "PidFile", "StartReport", "detach", "ignore_signals"]
