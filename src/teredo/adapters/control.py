"""The control socket: how `teredo status` asks a running daemon for its state.

Protocol: a client connects to the daemon's AF_UNIX stream socket (configuration directive
`ControlSocket`, default `teredo.core.config.default_control_socket`: one per instance,
/run/teredo/client-IFNAME.sock, relay-IFNAME.sock, server.sock),
sends one JSON line such as `{"command": "status"}` and reads one JSON document back; then the
daemon closes the connection.
A failed request is answered with `{"error": "one sentence"}`.

The status document is shared by every role and open to role-specific keys::

    {
      "role": "client",            # client | server | relay | ...
      "version": "0.1.0",          # filled in by the control server when missing
      "pid": 4242,                 # idem
      "uptime": 3723.4,            # seconds, idem (measured from `started`)
      "state": "qualified",        # the core's state, free text
      "counters": {"name": int},   # traffic counters
      "drops": {"reason": int},    # dropped input, by named reason
      "address": "2001:0:...",     # optional: decoded in the human rendering
      "peers": [...] or {...},     # optional: summarised in the human rendering
      ...                          # anything else: rendered generically
    }

Values may be `ipaddress` objects or Enums: they are encoded as strings (Enum: its value).

Daemon side: `server = await start_control_server(path, get_status, commands={"peers": ...})`,
then `await server.close()` on exit (it removes the socket file). CLI side:
`query_control_socket` (`teredo status` is `teredo.programs.status`).

Who may ask: the socket is mode 0660, owned by root and by the group ``ControlSocketGroup``
(`group`) when set, so that monitoring runs as a member of that group, not as root. Who may
remove it: the daemon drops privileges after it listens, and unlinking needs write permission
on the directory; so the directory is handed to the daemon's ``User`` (`owner`) when the daemon
created it or it is /run/teredo, and the dropped daemon removes its own socket at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import grp
import json
import logging
import os
import pwd
import socket
import stat
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from teredo import __version__
from teredo.core.config import CONTROL_SOCKET_DIR
from teredo.core.errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_SUFFIX: Final = ".sock"
SOCKET_MODE: Final = 0o660  # owner and group (e.g. an admin group) may ask; others may not
REQUEST_TIMEOUT: Final = 5.0  # seconds a client may take to send its request line
CLIENT_TIMEOUT: Final = 5.0  # seconds `teredo status` waits for the daemon
MAX_LINE_BYTES: Final = 64 * 1024

StatusGetter = Callable[[], Mapping[str, Any]]
"""Returns the status document (see the module docstring); called on the event loop."""

Command = Callable[[], object]
"""An extra control command: returns any JSON-encodable value."""


# --- daemon side ------------------------------------------------------------------------------


class ControlServer:
    """A running control socket server. Close it with `await server.close()` (or `async with`)."""

    def __init__(
        self,
        path: str,
        get_status: StatusGetter,
        commands: Mapping[str, Command],
        started: float,
    ) -> None:
        self.path = path
        self._get_status = get_status
        self._commands: dict[str, Command] = {"status": self.status, **commands}
        self._started = started
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None

    def status(self) -> dict[str, Any]:
        """The status document with the common keys (version, pid, uptime) filled in."""
        return complete_status(self._get_status(), self._started)

    def answer(self, request: bytes) -> object:
        """The reply to one request line (exposed for tests)."""
        try:
            message = json.loads(request)
        except ValueError:
            return {"error": 'the request is not JSON; send {"command": "status"}'}
        command = message.get("command") if isinstance(message, dict) else None
        handler = self._commands.get(command) if isinstance(command, str) else None
        if handler is None:
            known = ", ".join(sorted(self._commands))
            return {"error": f"unknown command {command!r}; known commands: {known}"}
        try:
            return handler()
        except Exception:
            log.exception("control command %r failed", command)
            return {"error": f"internal error while answering {command!r}; see the daemon's log"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            if line.strip():
                writer.write(encode_document(self.answer(line)))
                await writer.drain()
        except (TimeoutError, ConnectionError, ValueError) as error:
            # ValueError: a line longer than MAX_LINE_BYTES.
            log.debug("control connection dropped: %r", error)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop answering and remove the socket file (if it is still ours)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except PermissionError:
            # After a privilege drop the directory is not ours to write; the next start
            # removes the stale socket.
            log.debug("cannot remove %s after dropping privileges", self.path)

    async def __aenter__(self) -> ControlServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def complete_status(document: Mapping[str, Any], started: float) -> dict[str, Any]:
    """`document` with the keys every role shares filled in: version, pid, uptime (seconds since
    `started`, on the `time.monotonic()` clock)."""
    complete = dict(document)
    complete.setdefault("version", __version__)
    complete.setdefault("pid", os.getpid())
    complete.setdefault("uptime", round(time.monotonic() - started, 1))
    return complete


async def start_control_server(
    path: str,
    get_status: StatusGetter,
    *,
    commands: Mapping[str, Command] | None = None,
    started: float | None = None,
    mode: int = SOCKET_MODE,
    group: str | None = None,
    owner: str | None = None,
) -> ControlServer:
    """Listen on the AF_UNIX socket `path` and answer control requests on the running loop.

    `get_status()` builds the status document for `{"command": "status"}`; `commands` adds
    more (e.g. `{"peers": core_peer_list}`). `started` is the daemon's start on the
    `time.monotonic()` clock (default: now), for the uptime. The parent directory is created
    (mode 0755) when missing; a stale socket left by a daemon that died is replaced; the socket
    is created with `mode` (default 0660) and given to `group` (``ControlSocketGroup``) when
    set. `owner` is the user the daemon will drop to (``User``): the directory is handed to it
    when this call created it or it is /run/teredo, so that the daemon can remove its socket
    after the drop. Raises `UserError` when another daemon already answers on `path`, the
    group does not exist, or the path cannot be used.
    """
    server = ControlServer(
        path, get_status, commands or {}, time.monotonic() if started is None else started
    )
    gid = _group_id(group) if group is not None else None
    directory = os.path.dirname(path) or "."
    created = not os.path.isdir(directory)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create {directory} for the control socket: {error.strerror}; run as root "
            "or set ControlSocket to a path in a writable directory"
        ) from None
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o777 & ~mode)  # no window where the socket has looser permissions
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
        os.chmod(path, mode)
        if gid is not None:
            try:
                os.chown(path, -1, gid)
            except PermissionError:
                raise UserError(
                    f"cannot give control socket {path} to group {group}: permission denied; "
                    "run as root or as a member of that group"
                ) from None
        server._inode = os.stat(path).st_ino
        server._server = await asyncio.start_unix_server(
            server._serve, sock=sock, limit=MAX_LINE_BYTES
        )
    except OSError as error:
        sock.close()
        raise UserError(
            f"cannot listen on control socket {path}: {error.strerror or error}; "
            "set ControlSocket to a short path in a writable directory"
        ) from None
    if owner is not None and (created or os.path.abspath(directory) == CONTROL_SOCKET_DIR):
        _hand_directory_to(directory, owner)
    log.info("control socket listening on %s", path)
    return server


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UserError(
            f"there is no group {group!r} for ControlSocketGroup; create it (groupadd {group}) "
            "or set ControlSocketGroup to an existing group"
        ) from None


def _hand_directory_to(directory: str, user: str) -> None:
    """Let `user` (the daemon after its privilege drop) unlink its socket in `directory`."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return  # the privilege drop reports the unknown user
    if uid == 0 or os.geteuid() != 0:
        return  # staying root, or not root: the socket stays removable as it is
    owner = os.stat(directory).st_uid
    if owner == 0:
        os.chown(directory, uid, -1)
    elif owner != uid:
        log.warning(
            "%s belongs to another user (uid %d), so %s cannot remove its control socket there "
            "at exit; give each User its own ControlSocket directory",
            directory, owner, user,
        )  # fmt: skip


def _remove_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UserError(f"{path} exists and is not a socket; remove it or set ControlSocket")
    if _answers(path):
        raise UserError(
            f"another daemon is already listening on {path}; stop it or set ControlSocket to "
            "another path"
        )
    os.unlink(path)
    log.info("removed stale control socket %s", path)


def _answers(path: str) -> bool:
    """Whether something accepts connections on the socket file `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def encode_document(document: object) -> bytes:
    """One JSON line; ipaddress objects become strings, Enums their value."""
    return json.dumps(document, default=_json_default, separators=(",", ":")).encode() + b"\n"


def _json_default(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


# --- CLI side ---------------------------------------------------------------------------------


def query_control_socket(
    path: str, command: str = "status", timeout: float = CLIENT_TIMEOUT
) -> Any:
    """Send one command to the daemon at `path` and return its decoded answer.

    Raises `UserError` when nobody answers or the daemon reports an error.
    """
    _check_socket_path(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            with sock.makefile("rb") as stream:
                line = stream.readline(MAX_LINE_BYTES * 64)
        except FileNotFoundError:  # removed between the check and the connect
            raise _no_such_socket(path) from None
        except ConnectionRefusedError:
            raise UserError(
                f"nobody is listening on {path}: it is a stale socket left by a daemon that "
                "stopped; start the daemon again (it replaces the socket), or remove the file"
            ) from None
        except PermissionError:
            raise _permission_denied(path) from None
        except TimeoutError:
            raise UserError(f"the daemon at {path} did not answer within {timeout:g} s") from None
        except OSError as error:
            raise UserError(f"cannot talk to the daemon at {path}: {error.strerror}") from None
    try:
        answer = json.loads(line)
    except ValueError:
        raise UserError(
            f"the daemon at {path} closed the connection without a JSON answer"
        ) from None
    if isinstance(answer, dict) and "error" in answer and len(answer) == 1:
        raise UserError(f"the daemon at {path} answered: {answer['error']}")
    return answer


def _check_socket_path(path: str) -> None:
    """Tell apart, before connecting, what a connect() error would blur: no such file, a file
    that is not a socket (`--socket /etc/passwd`), a path we may not look at."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise _no_such_socket(path) from None
    except NotADirectoryError:
        raise UserError(
            f"{path} is not a control socket: a part of the path is not a directory; pass the "
            "daemon's ControlSocket path with --socket"
        ) from None
    except PermissionError:
        raise _permission_denied(path) from None
    except OSError as error:
        raise UserError(f"cannot look at {path}: {error.strerror}") from None
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a file"
        raise UserError(
            f"{path} is {kind}, not a control socket; pass the daemon's ControlSocket path "
            f"with --socket (by default a {SOCKET_SUFFIX} file in {CONTROL_SOCKET_DIR})"
        )


def _no_such_socket(path: str) -> UserError:
    return UserError(
        f"no control socket at {path}: no such file; start the daemon, or pass the path its "
        "ControlSocket directive names"
    )


def _permission_denied(path: str) -> UserError:
    return UserError(
        f"cannot connect to {path}: permission denied; run teredo status as root, or as a "
        "member of the socket's group"
    )


def find_control_socket(directory: str = CONTROL_SOCKET_DIR) -> str:
    """The one live control socket in `directory`; `UserError` when there are none or several."""
    from pathlib import Path  # `teredo status` only: the daemons need not carry it

    candidates = sorted(
        str(entry) for entry in Path(directory).glob("*" + SOCKET_SUFFIX) if _is_socket(entry)
    )
    live = [path for path in candidates if _answers(path)]
    if len(live) == 1:
        return live[0]
    if not live:
        stale = f" (only stale sockets: {', '.join(candidates)})" if candidates else ""
        raise UserError(
            f"no teredo daemon is running: no live control socket in {directory}{stale}; "
            "start one, or pass --socket PATH"
        )
    raise UserError(
        f"several teredo daemons are running ({', '.join(live)}); pick one with --socket PATH"
    )


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False
