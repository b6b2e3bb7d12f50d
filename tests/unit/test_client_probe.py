"""`teredo probe`: a real UDP exchange on loopback with this project's server core."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from teredo.cli import main
from teredo.core.address import TEREDO_PORT, parse_teredo_address
from teredo.core.errors import NameResolutionError, UsageError, UserError
from teredo.core.server import ServerSettings, TeredoServer
from teredo.programs.probe import probe, resolve_ipv4

PRIMARY = IPv4Address("127.84.0.2")
SECONDARY = IPv4Address("127.84.0.3")


class LoopbackServer:
    """TeredoServer on 127.84.0.2/.3:3544, served by a thread."""

    def __init__(self) -> None:
        self.core = TeredoServer(ServerSettings(PRIMARY, SECONDARY, allow_private=True))
        self.sockets = {}
        for address in (PRIMARY, SECONDARY):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((str(address), TEREDO_PORT))
            self.sockets[address] = sock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        by_fd = {s.fileno(): (a, s) for a, s in self.sockets.items()}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(by_fd), [], [], 0.05)
            for fd in ready:
                local, sock = by_fd[fd]
                data, source = sock.recvfrom(65536)
                self.core.receive_datagram(data, source, local, time.monotonic())
                for out in self.core.datagrams_to_send():
                    self.sockets[out.source].sendto(out.data, out.destination)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets.values():
            sock.close()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    try:
        running = LoopbackServer()
    except OSError as error:
        pytest.skip(f"cannot bind the loopback test server: {error}")
    try:
        yield running
    finally:
        running.close()


def test_probe_reports_mapping_nat_address_and_rtt(server: LoopbackServer) -> None:
    document = probe(str(PRIMARY), timeout=3.0)
    assert document["server"] == str(PRIMARY)
    assert document["secondary_server"] == str(SECONDARY)
    assert document["mapped_address"] == document["local_address"]
    assert document["mapped_port"] == document["local_port"]
    assert document["nat"] == "none"  # loopback: the server sees our own endpoint
    assert document["cone"] is True  # the answer from the other address reached us
    assert document["port_preserving"] is True
    assert document["port_delta"] == 0 and document["sequential"] is False
    assert isinstance(document["upnp"], bool)  # whatever this host's LAN has
    decoded = parse_teredo_address(document["teredo_address"])
    assert decoded.server == PRIMARY
    assert decoded.mapped_port == document["local_port"]
    assert document["mtu"] == 1280
    assert document["rtt_ms"] >= 0


def test_probe_cli_json(server: LoopbackServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", str(PRIMARY), "--json", "--timeout", "3"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["teredo_address"].startswith("2001:0:7f54:2:")


def test_probe_cli_text(server: LoopbackServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", str(PRIMARY), "--timeout", "3"]) == 0
    out = capsys.readouterr().out
    assert "Teredo address" in out and "no NAT" in out


def test_silent_server_is_one_sentence_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match=r"no answer from the Teredo server 127\.84\.0\.9"):
        probe("127.84.0.9", timeout=0.3)
    assert main(["probe", "127.84.0.9", "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        probe("127.84.0.9", timeout=0)
    with pytest.raises(UsageError):
        probe("127.84.0.9", port=70000)
    with pytest.raises(NameResolutionError, match="cannot resolve"):  # a runtime failure: 1
        resolve_ipv4("no-such-host.invalid")
