"""teredo.adapters.control: the control socket round trip, discovery, errors and rendering."""

from __future__ import annotations

import asyncio
import enum
import grp
import json
import os
import pwd
import shutil
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest

from teredo import __version__
from teredo.adapters.control import (
    ControlServer,
    query_control_socket,
    start_control_server,
)
from teredo.core.errors import UserError
from teredo.programs.status import format_duration, render_status, run_status

# The often quoted example address (not from an RFC): server 65.54.227.120, mapped
# 192.0.2.45:40000, cone.
EXAMPLE_ADDRESS = "2001:0:4136:e378:8000:63bf:3fff:fdd2"
NOBODY = 65534


class State(enum.Enum):
    QUALIFIED = "qualified"


def fake_status() -> dict[str, Any]:
    return {
        "role": "client",
        "state": State.QUALIFIED,
        "address": EXAMPLE_ADDRESS,
        "server": IPv4Address("65.54.227.120"),
        "counters": {"datagrams_in": 12, "datagrams_out": 7},
        "drops": {},
        "peers": [{"address": "2001:0:1::1", "trusted": True}, {"address": "2001:0:1::2"}],
    }


@pytest.fixture
def directory() -> Iterator[str]:
    # Short path: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be long.
    path = tempfile.mkdtemp(prefix="trc-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def with_server(
    path: str,
    body: Callable[[ControlServer], Awaitable[Any]],
    get_status: Callable[[], dict[str, Any]] = fake_status,
    **options: Any,
) -> Any:
    """Run `body(server)` on a loop where a control server listens on `path`."""

    async def main() -> Any:
        server = await start_control_server(path, get_status, **options)
        try:
            return await body(server)
        finally:
            await server.close()

    return asyncio.run(main())


def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    """A body that runs a blocking client call off the loop, so the server can answer."""

    async def body(server: ControlServer) -> Any:
        return await asyncio.to_thread(function, *args, **kwargs)

    return body


def test_status_round_trip(directory: str) -> None:
    path = os.path.join(directory, "client.sock")
    answer = with_server(path, in_thread(query_control_socket, path))
    assert answer["role"] == "client"
    assert answer["state"] == "qualified"  # Enum -> its value
    assert answer["server"] == "65.54.227.120"  # ipaddress -> str
    assert answer["version"] == __version__
    assert answer["pid"] == os.getpid()
    assert isinstance(answer["uptime"], float) and answer["uptime"] >= 0
    assert answer["counters"] == {"datagrams_in": 12, "datagrams_out": 7}
    assert not os.path.exists(path), "the socket file is removed on close"


def test_socket_mode_and_extra_command(directory: str) -> None:
    path = os.path.join(directory, "relay.sock")

    async def body(server: ControlServer) -> Any:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        peers = await asyncio.to_thread(query_control_socket, path, "peers")
        return mode, peers

    mode, peers = with_server(path, body, commands={"peers": lambda: [{"n": 1}]})
    assert mode == 0o660
    assert peers == [{"n": 1}]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a socket to a group needs root")
def test_control_socket_group(directory: str) -> None:
    """ControlSocketGroup: members of the group may ask, so monitoring needs no root."""
    path = os.path.join(directory, "client-teredo.sock")
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name

    async def body(server: ControlServer) -> os.stat_result:
        return os.stat(path)

    found = with_server(path, body, group=group)
    assert found.st_gid == grp.getgrnam(group).gr_gid
    assert stat.S_IMODE(found.st_mode) == 0o660


def test_unknown_control_socket_group(directory: str) -> None:
    path = os.path.join(directory, "x.sock")
    with pytest.raises(UserError, match="no group 'no-such-group' for ControlSocketGroup; create"):
        with_server(path, lambda server: asyncio.sleep(0), group="no-such-group")
    assert not os.path.exists(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a directory to a user needs root")
def test_directory_is_handed_to_the_user_only_when_ours(directory: str) -> None:
    """A daemon that drops to User must be able to unlink its socket: the directory it created
    becomes User's; a directory the operator made (here: `directory`) is left alone."""
    nobody = pwd.getpwnam("nobody").pw_uid
    created = os.path.join(directory, "teredo")
    inside = os.path.join(created, "client-teredo.sock")
    with_server(inside, lambda server: asyncio.sleep(0), owner="nobody")
    assert os.stat(created).st_uid == nobody
    assert not os.path.exists(inside)
    beside = os.path.join(directory, "relay.sock")
    with_server(beside, lambda server: asyncio.sleep(0), owner="nobody")
    assert os.stat(directory).st_uid == 0


def test_unknown_command_is_a_user_error(directory: str) -> None:
    path = os.path.join(directory, "x.sock")
    with pytest.raises(UserError) as caught:
        with_server(path, in_thread(query_control_socket, path, "reboot"))
    assert "unknown command 'reboot'" in str(caught.value)
    assert "status" in str(caught.value)


def test_answer_handles_bad_requests_and_failing_getters(directory: str) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("bug")

    async def body(server: ControlServer) -> list[object]:
        return [
            server.answer(b"not json\n"),
            server.answer(b"[1]\n"),
            server.answer(b'{"command": "status"}\n'),
        ]

    not_json, not_object, failed = with_server(os.path.join(directory, "b.sock"), body, broken)
    assert "not JSON" in not_json["error"]
    assert "unknown command None" in not_object["error"]
    assert "internal error" in failed["error"]


def test_stale_socket_is_replaced(directory: str) -> None:
    path = os.path.join(directory, "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # bound, never listening: what a killed daemon leaves behind
    answer = with_server(path, in_thread(query_control_socket, path))
    assert answer["role"] == "client"


def test_second_daemon_on_a_live_socket_is_refused(directory: str) -> None:
    path = os.path.join(directory, "live.sock")

    async def body(server: ControlServer) -> None:
        await start_control_server(path, fake_status)

    with pytest.raises(UserError, match="another daemon is already listening"):
        with_server(path, body)


def test_path_that_is_not_a_socket_is_refused(directory: str) -> None:
    path = os.path.join(directory, "file.sock")
    with open(path, "w") as file:
        file.write("x")

    async def start() -> None:
        await start_control_server(path, fake_status)

    with pytest.raises(UserError, match="is not a socket"):
        asyncio.run(start())


def test_run_status_prints_json(directory: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(directory, "client.sock")
    assert with_server(path, in_thread(run_status, path, True)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["role"] == "client" and printed["address"] == EXAMPLE_ADDRESS


def test_run_status_finds_the_only_socket(
    directory: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = os.path.join(directory, "server.sock")
    stale = os.path.join(directory, "old.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(stale)
    assert with_server(path, in_thread(run_status, None, False, search_dir=directory)) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"teredo client {__version__} (pid {os.getpid()}), up ")


def test_run_status_with_several_daemons_asks_to_pick(directory: str) -> None:
    first = os.path.join(directory, "a.sock")
    second = os.path.join(directory, "b.sock")

    async def body(server: ControlServer) -> Any:
        other = await start_control_server(second, fake_status)
        try:
            return await asyncio.to_thread(run_status, None, False, search_dir=directory)
        finally:
            await other.close()

    with pytest.raises(UserError) as caught:
        with_server(first, body)
    message = str(caught.value)
    assert "several teredo daemons" in message and first in message and second in message
    assert "--socket PATH" in message


def test_run_status_without_daemon(directory: str) -> None:
    with pytest.raises(UserError) as caught:
        run_status(None, False, search_dir=directory)
    assert str(caught.value) == (
        f"no teredo daemon is running: no live control socket in {directory}; "
        "start one, or pass --socket PATH"
    )


def test_run_status_tells_a_missing_file_from_a_stale_socket(directory: str) -> None:
    missing = os.path.join(directory, "missing.sock")
    with pytest.raises(UserError) as caught:
        run_status(missing, False)
    assert str(caught.value) == (
        f"no control socket at {missing}: no such file; start the daemon, or pass the path "
        "its ControlSocket directive names"
    )
    dead = os.path.join(directory, "dead.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(dead)
    with pytest.raises(UserError) as caught:
        run_status(dead, False)
    assert str(caught.value) == (
        f"nobody is listening on {dead}: it is a stale socket left by a daemon that stopped; "
        "start the daemon again (it replaces the socket), or remove the file"
    )


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc"])
def test_run_status_on_something_that_is_not_a_socket_never_says_remove_it(path: str) -> None:
    # `teredo status --socket /etc/passwd` once called it "a stale socket" and said to remove it.
    kind = "a directory" if path == "/etc" else "a file"
    with pytest.raises(UserError) as caught:
        run_status(path, False)
    assert str(caught.value) == (
        f"{path} is {kind}, not a control socket; pass the daemon's ControlSocket path with "
        "--socket (by default a .sock file in /run/teredo)"
    )
    assert "remove" not in str(caught.value) and "stale" not in str(caught.value)


def test_run_status_below_a_file(directory: str) -> None:
    with pytest.raises(UserError, match=r"a part of the path is not a directory"):
        run_status("/etc/passwd/client.sock", False)


def test_run_status_without_permission(directory: str) -> None:
    """As a user the socket's mode (0660, root's) does not admit: permission denied, not stale."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the command as another user")
    path = os.path.join(directory, "client.sock")
    os.chmod(directory, 0o755)

    def as_nobody() -> str:
        """The error a query gets in a child process that dropped root for nobody."""
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            message = "no error"
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                query_control_socket(path)
            except UserError as error:
                message = str(error)
            finally:
                os.write(writer, message.encode())
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as stream:
            answer = stream.read().decode()
        os.waitpid(pid, 0)
        return answer

    assert with_server(path, in_thread(as_nobody)) == (
        f"cannot connect to {path}: permission denied; run teredo status as root, or as a "
        "member of the socket's group"
    )


def test_render_status() -> None:
    document = {
        "role": "client",
        "version": "0.1.0",
        "pid": 42,
        "uptime": 3723.4,
        "state": "qualified",
        "address": EXAMPLE_ADDRESS,
        "counters": {"datagrams_in": 12, "ipv6_out": 3},
        "drops": {},
        "peers": [{"trusted": True}, {"trusted": False}, {}],
        "server_addresses": ["198.51.100.2", "198.51.100.3"],
        "nat": {"kind": "cone", "upnp": False},
        "mtu": 1280,
        "relay": None,
    }
    assert render_status(document).splitlines() == [
        "teredo client 0.1.0 (pid 42), up 1h 02m 03s",
        "state             qualified",
        f"address           {EXAMPLE_ADDRESS}",
        "                  server 65.54.227.120, mapped 192.0.2.45:40000, cone",
        "counters",
        "  datagrams_in  12",
        "  ipv6_out      3",
        "drops             none",
        "peers             3 (1 trusted)",
        "server_addresses  198.51.100.2, 198.51.100.3",
        "nat",
        "  kind  cone",
        "  upnp  no",
        "mtu               1280",
        "relay             -",
    ]


def test_render_status_of_a_non_teredo_address_and_peer_count() -> None:
    text = render_status({"role": "relay", "address": "2001:db8::1", "peers": 7})
    assert text.splitlines() == ["teredo relay", "address    2001:db8::1", "peers      7"]


def test_format_duration() -> None:
    assert format_duration(5.9) == "5s"
    assert format_duration(65) == "1m 05s"
    assert format_duration(3723.4) == "1h 02m 03s"
    assert format_duration(90061) == "1d 1h 01m 01s"
