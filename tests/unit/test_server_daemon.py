"""`teredo server` plumbing without root: configuration, status, reload, the UDP glue, errors."""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from teredo.adapters import accel
from teredo.adapters.udp import open_udp_socket, python_recv_batch, python_send_batch
from teredo.cli import main
from teredo.core.errors import UsageError
from teredo.core.server import SourceRateLimiter, python_answer_solicitations
from teredo.core.wire import (
    Authentication,
    TeredoPacket,
    encode_router_solicitation,
    encode_teredo_packet,
    parse_router_advertisement,
    parse_teredo_packet,
)
from teredo.programs import server_daemon
from teredo.programs.server_daemon import (
    ServerDaemon,
    load_server_config,
    new_core,
    settings_from_config,
)
from testsupport import NotifyListener


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "miredo-server.conf"
    path.write_text(text)
    return str(path)


def daemon_for(path: str, address: str | None = None) -> ServerDaemon:
    loaded = load_server_config(path, address)
    return ServerDaemon(loaded=loaded, core=new_core(loaded.config), clock=time.monotonic)


def test_miredo_server_conf_is_read_unchanged(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# Miredo's sample\nServerBindAddress 198.51.100.2\nPrefix 3ffe:831f::\n"
        "InterfaceMTU 1400\n",
    )
    loaded = load_server_config(path, None)
    settings = settings_from_config(loaded.config)
    assert settings.primary == IPv4Address("198.51.100.2")
    assert settings.secondary == IPv4Address("198.51.100.3")  # the next address by default
    assert settings.prefix == IPv6Network("3ffe:831f::/32")
    assert settings.mtu == 1400
    assert not settings.allow_private
    assert loaded.syslog is None  # no SyslogFacility: log to stderr


@pytest.mark.parametrize(
    ("line", "rate", "burst"),
    [("", 100.0, 200.0), ("RateLimit 10\n", 10.0, 20.0), ("RateLimit 0\n", None, 200.0)],
)
def test_rate_limit_sets_the_rate_and_a_burst_of_twice_as_many(
    tmp_path: Path, line: str, rate: float | None, burst: float
) -> None:
    path = write(tmp_path, f"ServerBindAddress 198.51.100.2\n{line}")
    settings = settings_from_config(load_server_config(path, None).config)
    assert (settings.rate_per_second, settings.rate_burst) == (rate, burst)
    core = new_core(load_server_config(path, None).config)
    assert (core.limiter is None) == (rate is None)


def test_syslog_facility_selects_syslog(tmp_path: Path) -> None:
    path = write(tmp_path, "ServerBindAddress 198.51.100.2\nSyslogFacility local3\n")
    assert load_server_config(path, None).syslog == "local3"


def test_address_argument_overrides_and_needs_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_daemon, "DEFAULT_SERVER_CONFIG_PATH", str(tmp_path / "none"))
    loaded = load_server_config(None, "203.0.113.10")
    assert loaded.config.server_bind_address2 == IPv4Address("203.0.113.11")
    assert loaded.path is None
    with pytest.raises(UsageError, match="-c FILE"):
        load_server_config(None, None)


def test_status_document(tmp_path: Path) -> None:
    daemon = daemon_for(write(tmp_path, "ServerBindAddress 198.51.100.2\n"))
    daemon.core.drops["malformed"] += 2
    status = daemon.status()
    assert status["role"] == "server"
    assert status["primary"] == "198.51.100.2:3544"
    assert status["secondary"] == "198.51.100.3:3544"
    assert status["client_prefix"] == "2001:0:c633:6402::/64"
    assert status["link_local"] == "fe80::8000:f227:39cc:9bfd"
    assert status["drops"] == {"malformed": 2}
    assert isinstance(status["counters"], dict)


def test_status_names_the_limiter_table_for_what_it_is(tmp_path: Path) -> None:
    """The limiter keeps a bucket for every recent source: those are sources *tracked*, and
    three sources far below the limit must not read as three sources rate limited."""
    daemon = daemon_for(write(tmp_path, "ServerBindAddress 198.51.100.2\n"))
    local = daemon.core.settings.primary
    for number in range(3):
        source = (f"203.0.113.{number + 1}", 40000)
        daemon.core.receive_datagram(
            solicitation("fe80::ffff:ffff:ffff", bytes(8)), source, local, 1.0
        )
    status = daemon.status()
    assert "rate_limited_sources" not in status
    assert status["rate_limit_sources_tracked"] == 3
    assert status["drops"].get("rate_limited", 0) == 0
    assert status["counters"]["router_advertisements"] == 3


def test_reload_applies_prefix_and_mtu_and_keeps_addresses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "ServerBindAddress 198.51.100.2\n")
    daemon = daemon_for(path)
    daemon.core.counters["received"] = 5
    Path(path).write_text(
        "ServerBindAddress 198.51.100.20\nInterfaceMTU 1400\nControlSocket /tmp/x.sock\n"
    )
    with caplog.at_level(logging.WARNING, logger="teredo"):
        daemon.reload()
    settings = daemon.core.settings
    assert settings.mtu == 1400
    assert settings.primary == IPv4Address("198.51.100.2")  # rebinding needs a restart
    assert daemon.config.server_bind_address == IPv4Address("198.51.100.2")
    assert daemon.core.counters["received"] == 5
    assert "restart teredo server" in caplog.text
    assert "ControlSocket changed" in caplog.text


def test_reload_applies_the_rate_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "ServerBindAddress 198.51.100.2\n")
    daemon = daemon_for(path)
    limiter = daemon.core.limiter
    assert limiter is not None and limiter.rate == 100.0
    Path(path).write_text("ServerBindAddress 198.51.100.2\nRateLimit 5\n")
    daemon.reload()
    assert daemon.core.limiter is limiter  # the buckets are kept
    assert (limiter.rate, limiter.burst) == (5.0, 10.0)
    assert daemon.status()["rate_limit"] == 5.0
    Path(path).write_text("ServerBindAddress 198.51.100.2\nRateLimit 0\n")
    daemon.reload()
    assert daemon.core.limiter is None


def test_reload_keeps_the_metrics_address_and_socket_group_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The endpoint and the socket are bound once: a new MetricsAddress or ControlSocketGroup
    needs a restart, and SIGHUP says so rather than pretend."""
    path = write(tmp_path, "ServerBindAddress 198.51.100.2\nMetricsAddress 127.0.0.1:9344\n")
    daemon = daemon_for(path)
    Path(path).write_text(
        "ServerBindAddress 198.51.100.2\nMetricsAddress [::1]:9345\nControlSocketGroup adm\n"
    )
    with caplog.at_level(logging.WARNING, logger="teredo"):
        daemon.reload()
    assert str(daemon.config.metrics_address) == "127.0.0.1:9344"
    assert daemon.config.control_socket_group is None
    assert "MetricsAddress changed to [::1]:9345: takes effect at the next restart" in caplog.text
    assert "ControlSocketGroup changed to adm: takes effect at the next restart" in caplog.text


def test_reload_switches_the_log_format(tmp_path: Path, restore_logging: None) -> None:
    from teredo.adapters.daemon import JsonFormatter
    from teredo.programs.loading import start_logging

    path = write(tmp_path, "ServerBindAddress 198.51.100.2\n")
    daemon = daemon_for(path)
    start_logging(daemon.loaded)

    def formatter() -> logging.Formatter | None:
        (handler,) = [h for h in logging.getLogger("teredo").handlers if h.get_name()]
        return handler.formatter

    assert not isinstance(formatter(), JsonFormatter)
    Path(path).write_text("ServerBindAddress 198.51.100.2\nLogFormat json\n")
    daemon.reload()
    assert isinstance(formatter(), JsonFormatter) and daemon.config.log_format == "json"


def test_reload_with_a_broken_file_raises_and_keeps_running(tmp_path: Path) -> None:
    path = write(tmp_path, "ServerBindAddress 198.51.100.2\n")
    daemon = daemon_for(path)
    Path(path).write_text("ServerBindAddress 10.0.0.1\n")
    with pytest.raises(UsageError):  # the daemon frame logs it and keeps the running config
        daemon.reload()
    assert daemon.core.settings.primary == IPv4Address("198.51.100.2")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`teredo server` installs its log handler on the "teredo" logger: undo that afterwards."""
    root = logging.getLogger("teredo")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], root.level, root.propagate = saved


@pytest.fixture
def loopback_pair() -> Iterator[tuple[str, str]]:
    """Two consecutive 127/8 addresses unlikely to be used by anything else."""
    base = random.randrange(1, 250)
    yield f"127.83.{base}.1", f"127.83.{base}.2"


@pytest.mark.usefixtures("implementation")
def test_udp_glue_answers_an_rs_from_the_right_socket(
    tmp_path: Path, loopback_pair: tuple[str, str]
) -> None:
    primary, secondary = loopback_pair
    path = write(
        tmp_path,
        f"ServerBindAddress {primary}\nAllowPrivateAddresses yes\n",
    )
    daemon = daemon_for(path)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for local in (IPv4Address(primary), IPv4Address(secondary)):
            daemon.sockets[local] = open_udp_socket(local, 3544, port_setting=None)
        client.bind(("127.0.0.1", 0))
        nonce = bytes(range(8))
        for rs_source, expected_sender in (
            ("fe80::ffff:ffff:fffe", primary),
            ("fe80::8000:ffff:ffff:fffe", secondary),
        ):
            packet = TeredoPacket(
                encode_router_solicitation(IPv6Address(rs_source)), Authentication(nonce=nonce)
            )
            client.sendto(encode_teredo_packet(packet), (primary, 3544))
            assert select.select([daemon.sockets[IPv4Address(primary)].sock], [], [], 5)[0]
            daemon.on_readable(IPv4Address(primary))
            assert select.select([client], [], [], 5)[0]
            data, sender = client.recvfrom(2048)
            assert sender == (expected_sender, 3544)
            answer = parse_teredo_packet(data)
            assert answer.authentication == Authentication(nonce=nonce)
            assert answer.origin is not None and answer.origin.port == client.getsockname()[1]
            ra = parse_router_advertisement(answer.ipv6)
            assert ra.destination == IPv6Address(rs_source)
    finally:
        client.close()
        daemon.close()


def solicitation(rs_source: str, nonce: bytes) -> bytes:
    packet = TeredoPacket(
        encode_router_solicitation(IPv6Address(rs_source)), Authentication(nonce=nonce)
    )
    return encode_teredo_packet(packet)


def serve_until_quiet(daemon: ServerDaemon, local: IPv4Address) -> None:
    """Run the readiness callback while the socket has datagrams (loopback queues them during
    sendto, so they are all there already)."""
    sock = daemon.sockets[local].sock
    while select.select([sock], [], [], 0)[0]:
        daemon.on_readable(local)


def receive_all(client: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    got = []
    while select.select([client], [], [], 1)[0]:
        got.append(client.recvfrom(2048))
    return got


@pytest.fixture(params=["accelerated", "twins"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The daemon as built (C where it was compiled), then with the pure-Python twins, as
    TEREDO_PURE_PYTHON=1 or a machine without a compiler runs it."""
    if request.param == "twins":
        for name, twin in (
            ("recv_batch", python_recv_batch),
            ("send_batch", python_send_batch),
            ("answer_solicitations", python_answer_solicitations),
            ("new_rate_limiter", SourceRateLimiter),
        ):
            monkeypatch.setattr(accel, name, twin)
    return str(request.param)


@pytest.mark.parametrize(("rate_limit", "answered"), [(0, 300), (100, 200)])
def test_a_flood_of_solicitations_is_answered_in_batches(
    tmp_path: Path,
    loopback_pair: tuple[str, str],
    rate_limit: int,
    answered: int,
    implementation: str,
) -> None:
    """300 RSs (some C=1) and junk in one go: every RS the limit allows is answered, from the
    right socket, with its own nonce; the rest is counted as the core counts it."""
    primary, secondary = loopback_pair
    path = write(
        tmp_path,
        f"ServerBindAddress {primary}\nAllowPrivateAddresses yes\nRateLimit {rate_limit}\n",
    )
    daemon = daemon_for(path)
    daemon.clock = lambda: 1000.0  # no token earned meanwhile, however long it takes
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for local in (IPv4Address(primary), IPv4Address(secondary)):
            daemon.sockets[local] = open_udp_socket(local, 3544, port_setting=None)
        client.bind(("127.0.0.1", 0))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sent = {}
        for index in range(300):
            nonce = index.to_bytes(8, "big")
            source = "fe80::8000:ffff:ffff:fffe" if index % 3 == 0 else "fe80::ffff:ffff:ffff"
            sent[nonce] = secondary if index % 3 == 0 else primary
            client.sendto(solicitation(source, nonce), (primary, 3544))
            if index % 100 == 0:
                client.sendto(b"junk", (primary, 3544))
        serve_until_quiet(daemon, IPv4Address(primary))
        answers = receive_all(client)
    finally:
        client.close()
        daemon.close()
    assert len(answers) == answered
    for data, sender in answers:
        answer = parse_teredo_packet(data)
        assert answer.authentication is not None
        assert sender == (sent[answer.authentication.nonce], 3544)
        ra = parse_router_advertisement(answer.ipv6)
        assert ra.destination in (
            IPv6Address("fe80::8000:ffff:ffff:fffe"),
            IPv6Address("fe80::ffff:ffff:ffff"),
        )
    counters = daemon.core.counters
    assert counters["received"] == 303
    assert counters["router_solicitations"] == 300
    assert counters["router_advertisements"] == answered
    drops = {"malformed": 3} | ({"rate_limited": 300 - answered} if answered < 300 else {})
    assert daemon.core.drops == drops


# --- the command line: one sentence, the right exit status, no traceback ---------------------


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["server", "--help"])
    assert exit_info.value.code == 0
    assert "ServerBindAddress" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ServerBindAddress 10.0.0.1\n", "not a global unicast"),
        ("InterfaceMTU 1280\n", "no ServerBindAddress"),
        ("ServerBindAddress 198.51.100.2\nInterfaceMTU 900\n", "InterfaceMTU"),
    ],
)
def test_bad_config_is_one_sentence_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, fragment: str
) -> None:
    assert main(["server", "-f", "-c", write(tmp_path, text)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teredo: ") and fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "-f", "-c", str(tmp_path / "missing.conf")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.usefixtures("restore_logging")
def test_port_in_use_is_one_sentence_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loopback_pair: tuple[str, str]
) -> None:
    primary, secondary = loopback_pair
    path = write(tmp_path, f"ServerBindAddress {primary}\nAllowPrivateAddresses yes\n")
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        busy.bind((secondary, 3544))
        assert main(["server", "-f", "-c", path]) == 1
    finally:
        busy.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"teredo: cannot bind UDP {secondary}:3544: the port is already in use "
        "(another teredo or miredo?); stop that program"
    )
    assert not any("Traceback" in line for line in err)


def test_server_notifies_systemd(tmp_path: Path, loopback_pair: tuple[str, str]) -> None:
    """A real `teredo server -f` on a real NOTIFY_SOCKET: READY=1 with its STATUS once both
    sockets are bound, RELOADING=1 (with MONOTONIC_USEC) then READY=1 on SIGHUP, WATCHDOG=1
    with WATCHDOG_USEC set, nothing but a log line on SIGUSR1, STOPPING=1 on SIGTERM."""
    primary, secondary = loopback_pair
    path = write(
        tmp_path,
        f"ServerBindAddress {primary}\nAllowPrivateAddresses yes\n"
        f"ControlSocket {tmp_path / 'server.sock'}\n",
    )
    listener = NotifyListener(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=listener.path, WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "teredo", "server", "-f", "-c", path],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = listener.wait_for("READY", "1")
        assert ready["STATUS"].startswith(f"serving on {primary} and {secondary}")
        listener.wait_for("WATCHDOG", "1")
        process.send_signal(signal.SIGUSR1)
        process.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        listener.wait_for("READY", "1")
        assert process.poll() is None  # SIGUSR1 did not kill it
        process.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", "1")
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        listener.close()
    assert process.returncode == 0, err
    assert "SIGUSR1 received: ignored" in err
