"""teredo.programs.service: Miredo's command line, the role a file asks for, retries at start."""

from __future__ import annotations

import _socket  # what teredo.adapters.resolver calls (getaddrinfo is patched there)
import asyncio
import logging
import os
import socket
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from teredo.adapters.daemon import StartReport
from teredo.adapters.notify import Notifier
from teredo.cli import build_parser, main
from teredo.core.config import parse_client_config
from teredo.core.errors import NameResolutionError, TransientError, UsageError
from teredo.core.qualification import ServerPair
from teredo.programs.client_daemon import resolve_servers
from teredo.programs.service import RETRY_DELAYS, Service, retry, tunnel_role


def write(tmp_path: Path, text: str, name: str = "miredo.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["client", "relay", "server"])
def test_miredo_options(role: str) -> None:
    args = build_parser().parse_args(
        [role, "-f", "-p", "/run/x.pid", "-u", "teredo", "-c", "/etc/x.conf", "192.0.2.1"]
    )
    assert (args.foreground, args.pidfile, args.user, args.config, args.argument) == (
        True, "/run/x.pid", "teredo", "/etc/x.conf", "192.0.2.1",
    )  # fmt: skip
    long = build_parser().parse_args(
        [role, "--foreground", "--pidfile", "p", "--user", "u", "--config", "c"]
    )
    assert (long.foreground, long.pidfile, long.user, long.config, long.argument) == (
        True, "p", "u", "c", None,
    )  # fmt: skip
    assert build_parser().parse_args([role]).foreground is False  # detaching is the default


def test_version_after_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """`miredo -V` works, so does `teredo client -V`."""
    assert main(["client", "-V"]) == 0
    assert capsys.readouterr().out.startswith("teredo ")


def test_configuration_errors_exit_2_before_detaching(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -f, a bad file is reported on the terminal (no fork happens before it)."""
    path = write(tmp_path, "ServerAddress 198.51.100.2\nBindPort 99999\n")
    assert main(["client", "-c", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teredo: ") and err.count("\n") == 1


def test_missing_syslog_says_to_use_foreground(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Detaching logs to syslog (facility daemon by default, as Miredo): without a syslog
    daemon the sentence points at -f, and nothing is forked."""
    if os.path.exists("/dev/log"):
        pytest.skip("this host has a syslog socket")
    path = write(tmp_path, "ServerBindAddress 192.0.2.1\nAllowPrivateAddresses yes\n")
    assert main(["server", "-c", path]) == 1
    assert capsys.readouterr().err == (
        "teredo: cannot log to syslog: /dev/log does not exist; start a syslog daemon or run in "
        "the foreground with -f to log to stderr\n"
    )


# --- which role: RelayType decides, as with miredo ----------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "role"),
    [
        ("client", "ServerAddress 198.51.100.2\n", "client"),
        ("relay", "BindPort 3545\n", "relay"),  # no RelayType: the subcommand's role
        ("client", "RelayType relay\n", "relay"),  # RelayType wins
        ("client", "RelayType host-specific\n", "relay"),
        ("relay", "RelayType client\nServerAddress 198.51.100.2\n", "client"),
        ("relay", "RelayType autoclient\nServerAddress 198.51.100.2\n", "client"),
        ("client", "ServerBindAddress 198.51.100.2\n", "client"),  # the parser says why not
        ("server", "RelayType relay\n", "server"),
    ],
)
def test_tunnel_role(tmp_path: Path, kind: str, text: str, role: str) -> None:
    assert tunnel_role(kind, write(tmp_path, text)) == role  # type: ignore[arg-type]


def test_tunnel_role_without_a_file(tmp_path: Path) -> None:
    assert tunnel_role("client", None) == "client" or os.path.exists("/etc/miredo/miredo.conf")


# --- retries at start ---------------------------------------------------------------------------


class FakeResolver:
    """Fails `failures` times (temporarily), then resolves every name to 198.51.100.2."""

    def __init__(self, failures: int, temporary: bool = True) -> None:
        self.failures = failures
        self.temporary = temporary
        self.calls = 0

    def __call__(self, name: str, what: str) -> IPv4Address:
        self.calls += 1
        if self.calls <= self.failures:
            reason = "Temporary failure in name resolution" if self.temporary else "Name unknown"
            raise NameResolutionError(
                f"cannot resolve the {what} {name!r}: {reason}", temporary=self.temporary
            )
        return IPv4Address("198.51.100.2")


@pytest.mark.parametrize("temporary", [True, False])
def test_server_name_not_resolvable_yet_is_retried_with_backoff(
    caplog: pytest.LogCaptureFixture, temporary: bool
) -> None:
    """At boot a name may not resolve yet (no network, or not yet in the name servers): the
    client retries after 1, 2, 4 ... s with a warning each time, and a detached start returns
    saying so."""
    config = parse_client_config("ServerAddress teredo.example.net\n")
    resolver = FakeResolver(failures=4, temporary=temporary)
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    read_end, write_end = os.pipe()
    service = Service(Notifier(None), StartReport(write_end))
    with caplog.at_level(logging.WARNING, logger="teredo"):
        servers = asyncio.run(
            retry(lambda: resolve_servers(config, resolver), service, sleep=sleep)
        )
    assert servers == (ServerPair.of(IPv4Address("198.51.100.2")),)
    assert slept == list(RETRY_DELAYS[:4])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert warnings[0].startswith("cannot resolve the Teredo server (ServerAddress) ")
    assert warnings[0].endswith("(attempt 1); retrying in 1 s")
    report = os.read(read_end, 4096).decode()
    os.close(read_end)
    assert report.startswith("0 cannot resolve the Teredo server") and "retrying" in report


def test_backoff_stops_growing_at_a_minute() -> None:
    slept: list[float] = []
    attempts = 0

    def attempt() -> str:
        nonlocal attempts
        attempts += 1
        if attempts <= 10:
            raise TransientError("cannot bind UDP 192.0.2.1:3544: not an address of this host")
        return "bound"

    async def sleep(delay: float) -> None:
        slept.append(delay)

    assert asyncio.run(retry(attempt, Service(), sleep=sleep)) == "bound"
    assert slept == [1, 2, 4, 8, 16, 30, 60, 60, 60, 60]


def test_other_errors_are_not_retried() -> None:
    def attempt() -> None:
        raise UsageError("bad")

    with pytest.raises(UsageError):
        asyncio.run(retry(attempt, Service()))


def test_resolution_failure_is_a_runtime_error_not_a_usage_error() -> None:
    """Exit 2 is for usage and configuration mistakes; a name that does not resolve is 1."""
    error = NameResolutionError("cannot resolve x", temporary=True)
    assert error.exit_code == 1 and not isinstance(error, UsageError)


def test_bind_address_not_yet_present_is_transient() -> None:
    from teredo.adapters.udp import open_udp_socket

    with pytest.raises(TransientError, match="not an address of this host"):
        open_udp_socket("192.0.2.77", 0)


# --- checkconf resolves names, as miredo-checkconf ----------------------------------------------


def _failing_getaddrinfo(code: int) -> object:
    def getaddrinfo(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(code, "resolver said no")

    return getaddrinfo


def test_checkconf_name_that_does_not_exist_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "ServerAddress teredo.example.invalid\n")
    monkeypatch.setattr(_socket, "getaddrinfo", _failing_getaddrinfo(socket.EAI_NONAME))
    assert main(["checkconf", path]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"teredo: {path}: cannot resolve the Teredo server (ServerAddress) "
        "'teredo.example.invalid': resolver said no; fix the name (or check later with "
        "--no-resolve)\n"
    )


def test_checkconf_temporary_failure_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "ServerAddress teredo.example.net\n")
    monkeypatch.setattr(_socket, "getaddrinfo", _failing_getaddrinfo(socket.EAI_AGAIN))
    assert main(["checkconf", path]) == 0
    err = capsys.readouterr().err
    assert err.startswith("teredo: warning: ") and err.endswith("; the client retries it\n")


def test_checkconf_no_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "ServerAddress teredo.example.invalid\n")
    monkeypatch.setattr(_socket, "getaddrinfo", _failing_getaddrinfo(socket.EAI_NONAME))
    assert main(["checkconf", "--no-resolve", path]) == 0
    assert capsys.readouterr().err == ""


def test_user_option_overrides_the_file_and_survives_a_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`-u USER` as miredo's: it wins over the file's User, and a reload does not report it as
    a changed setting."""
    from teredo.programs.client_daemon import load_client_config
    from teredo.programs.loading import reload_config, with_command_line

    path = write(tmp_path, "ServerAddress 198.51.100.2\nUser nobody\n")
    loaded = with_command_line(load_client_config(path, None), user="daemon", detached=False)
    assert loaded.config.user == "daemon"
    with caplog.at_level(logging.WARNING, logger="teredo"):
        again = reload_config(loaded, load_client_config, {"user": "User"})
    assert again.config.user == "daemon"
    assert not [r for r in caplog.records if "User changed" in r.getMessage()]


def test_logging_follows_foreground(tmp_path: Path) -> None:
    """Detached: syslog, facility daemon unless the file says; -f: stderr unless it says."""
    from teredo.programs.client_daemon import load_client_config
    from teredo.programs.loading import with_command_line

    plain = load_client_config(write(tmp_path, "ServerAddress 198.51.100.2\n"), None)
    assert with_command_line(plain, user=None, detached=True).log_facility == "daemon"
    assert with_command_line(plain, user=None, detached=False).log_facility is None
    local = load_client_config(
        write(tmp_path, "ServerAddress 198.51.100.2\nSyslogFacility local3\n", "b.conf"), None
    )
    assert with_command_line(local, user=None, detached=True).log_facility == "local3"
    assert with_command_line(local, user=None, detached=False).log_facility == "local3"


@pytest.mark.parametrize("event", ["started", "ready", "waiting"])
def test_garbage_collection_is_back_once_the_daemon_has_started(event: str) -> None:
    """`teredo.cli` turns the cyclic collector off while a daemon imports and sets up."""
    import gc

    gc.disable()
    try:
        getattr(Service(), event)("qualifying")
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0  # what the start made is not scanned again
    finally:
        gc.unfreeze()
        gc.enable()
