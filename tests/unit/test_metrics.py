"""teredo.core.metrics (status document -> Prometheus text) and teredo.adapters.metrics (the
bounded HTTP endpoint), checked with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from teredo.adapters import metrics as metrics_adapter
from teredo.adapters.metrics import MetricsServer, start_metrics_server
from teredo.core.config import MetricsAddress, parse_client_config, parse_relay_config
from teredo.core.metrics import GAUGES, NOT_METRICS, exposition, status_metrics
from teredo.core.relay import TeredoRelay
from teredo.programs.client_daemon import ClientDaemon, client_settings, resolve_servers
from teredo.programs.loading import Loaded
from teredo.programs.relay_daemon import RelayDaemon
from teredo.programs.server_daemon import ServerDaemon, load_server_config, new_core

Families = dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]


def parse(text: str) -> Families:
    """name -> (type, [(sample name, labels, value)]) as Prometheus' parser reads it."""
    return {
        family.name: (family.type, [(s.name, s.labels, s.value) for s in family.samples])
        for family in text_string_to_metric_families(text)
    }


def server_document(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "server.conf"
    path.write_text("ServerBindAddress 198.51.100.2\n")
    loaded = load_server_config(str(path), None)
    daemon = ServerDaemon(loaded=loaded, core=new_core(loaded.config), clock=time.monotonic)
    daemon.core.drops["malformed"] += 2
    daemon.core.drops["rate_limited"] += 5
    daemon.core.counters["received"] += 7
    document = daemon.status()
    # What the control socket adds to every document.
    return {**document, "version": "9.9", "pid": 1, "uptime": 12.5}


def relay_document() -> dict[str, Any]:
    config = parse_relay_config("RelayType relay\n")
    core = TeredoRelay.from_config(config, random_bytes=bytes, secret=b"s" * 32, now=0.0)
    core.drop("not_teredo_source")
    daemon = RelayDaemon(loaded=Loaded(config, "relay.conf", None, None), core=core)
    daemon.forwarding = True
    return {**daemon.status(), "version": "9.9", "pid": 1, "uptime": 1.0}


def client_document() -> dict[str, Any]:
    from teredo.core.client import TeredoClient

    config = parse_client_config("ServerAddress 198.51.100.2\n")
    servers = resolve_servers(config)

    async def build() -> ClientDaemon:
        core = TeredoClient(
            client_settings(config, servers), random_bytes=os.urandom, secret=b"s" * 32, now=0.0
        )
        return ClientDaemon(loaded=Loaded(config, None, None, None), core=core, servers=servers)

    daemon = asyncio.run(build())
    daemon.rs_to_address_ms = 6.5
    return {**daemon.status(), "version": "9.9", "pid": 1, "uptime": 1.0, "rtt_ms": 2.0}


def test_server_document_maps_to_prometheus_names(tmp_path: Path) -> None:
    document = server_document(tmp_path)
    families = parse(exposition(status_metrics(document)))
    assert families["teredo_build_info"] == (
        "gauge",
        [("teredo_build_info", {"version": "9.9", "role": "server"}, 1.0)],
    )
    assert families["teredo_state"][1] == [("teredo_state", {"state": "serving"}, 1.0)]
    assert families["teredo_uptime_seconds"][1][0][2] == 12.5
    kind, samples = families["teredo_drops"]
    assert kind == "counter"
    assert {s[1]["reason"]: s[2] for s in samples} == {"malformed": 2.0, "rate_limited": 5.0}
    assert all(s[0] == "teredo_drops_total" for s in samples)
    assert families["teredo_rate_limit_per_second"][1][0][2] == 100.0
    assert families["teredo_rate_limit_sources_tracked"][0] == "gauge"
    assert families["teredo_received"][0] == "counter"


def test_every_counter_and_drop_reason_is_exported(tmp_path: Path) -> None:
    for document in (server_document(tmp_path), relay_document(), client_document()):
        families = parse(exposition(status_metrics(document)))
        for name, value in document["counters"].items():
            assert families[f"teredo_{name}"] == ("counter", [(f"teredo_{name}_total", {}, value)])
        drops = {s[1]["reason"]: s[2] for s in families["teredo_drops"][1]}
        assert drops == document["drops"]
        for family in families.values():
            assert all(s[0].startswith("teredo_") for s in family[1])
            if family[0] == "counter":
                assert all(s[0].endswith("_total") for s in family[1])


def test_every_number_in_a_status_document_has_a_metric(tmp_path: Path) -> None:
    """A new figure in a status document must be given a metric name (or a reason not to)."""
    for document in (server_document(tmp_path), relay_document(), client_document()):
        numbers = {
            key
            for key, value in document.items()
            if isinstance(value, int | float) and key not in ("counters", "drops")
        }
        assert numbers - set(GAUGES) - NOT_METRICS == set(), document["role"]


def test_base_units_and_yes_no() -> None:
    document = client_document()
    families = parse(exposition(status_metrics(document)))
    assert families["teredo_server_rtt_seconds"][1][0][2] == pytest.approx(0.002)
    assert families["teredo_rs_to_address_seconds"][1][0][2] == pytest.approx(0.0065)
    assert families["teredo_local_discovery"][1][0][2] == 0.0
    assert families["teredo_max_peers"][1][0][2] == 1024.0
    relay = parse(exposition(status_metrics(relay_document())))
    assert relay["teredo_ipv6_forwarding"][1][0][2] == 1.0
    assert relay["teredo_drops"][1] == [
        ("teredo_drops_total", {"reason": "not_teredo_source"}, 1.0)
    ]


def test_server_socket_counters_become_a_label() -> None:
    document = {
        "role": "server",
        "counters": {
            "udp_198.51.100.2_send_errors": 3,
            "udp_198.51.100.3_send_errors": 1,
            "received": 7,
        },
        "drops": {},
    }
    families = parse(exposition(status_metrics(document)))
    assert families["teredo_udp_send_errors"] == (
        "counter",
        [
            ("teredo_udp_send_errors_total", {"socket": "198.51.100.2"}, 3.0),
            ("teredo_udp_send_errors_total", {"socket": "198.51.100.3"}, 1.0),
        ],
    )
    assert families["teredo_received"][1] == [("teredo_received_total", {}, 7.0)]


def test_strange_names_and_values_stay_valid_text() -> None:
    """Label values are escaped and names cleaned: whatever a document holds, the text parses."""
    document = {
        "role": 'odd"role\\\n',
        "state": "x",
        "counters": {"weird-name.with:chars": 1, "big": 2**60, "bool": True, "text": "no"},
        "drops": {'quote"reason': 1, "": 2},
        "uptime": 0.1,
    }
    families = parse(exposition(status_metrics(document)))
    assert families["teredo_build_info"][1][0][1]["role"] == 'odd"role\\\n'
    assert families["teredo_weird_name_with_chars"][1][0][2] == 1.0
    assert families["teredo_big"][1][0][2] == float(2**60)
    assert families["teredo_bool"][1][0][2] == 1.0
    assert "teredo_text" not in families
    assert {s[1]["reason"] for s in families["teredo_drops"][1]} == {'quote"reason', ""}


def test_no_label_names_a_peer(tmp_path: Path) -> None:
    """Peers are counted, never labelled: a label per peer would be a series per peer."""
    document = {**client_document(), "peer_list": [{"address": "2001:0:1::1", "trusted": True}]}
    text = exposition(status_metrics(document))
    assert "2001:0:1::1" not in text


# --- the HTTP endpoint ------------------------------------------------------------------------


def served(
    body: Callable[[MetricsServer], Awaitable[Any]],
    get_status: Callable[[], Mapping[str, Any]] = relay_document,
) -> Any:
    async def main() -> Any:
        server = await start_metrics_server(MetricsAddress(IPv4Address("127.0.0.1"), 0), get_status)
        try:
            return await body(server)
        finally:
            await server.close()

    return asyncio.run(main())


async def request(port: int, data: bytes) -> bytes:
    """The whole answer to `data`; b"" when the server closed or reset the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def test_get_metrics_over_http() -> None:
    async def body(server: MetricsServer) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        get = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
        return (
            await request(server.port, get),
            await request(server.port, b"GET /nope HTTP/1.1\r\n\r\n"),
            await request(server.port, b"POST /metrics HTTP/1.1\r\n\r\n"),
            await request(server.port, b"garbage\r\n\r\n"),
            await request(server.port, b"HEAD /metrics HTTP/1.0\r\n\r\n"),
        )

    ok, missing, post, garbage, head = served(body)
    headers, _, text = ok.partition(b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in headers
    assert "teredo_build_info" in parse(text.decode())
    assert missing.startswith(b"HTTP/1.1 404 ")
    assert post.startswith(b"HTTP/1.1 405 ")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")


def test_an_oversized_request_is_refused() -> None:
    async def body(server: MetricsServer) -> bytes:
        return await request(server.port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)

    assert served(body).startswith(b"HTTP/1.1 431 ")


def test_connections_beyond_the_limit_are_closed_unanswered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_adapter, "MAX_CONNECTIONS", 2)

    async def body(server: MetricsServer) -> tuple[bytes, bytes, int]:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        await asyncio.sleep(0)  # let the server take them
        while len(server._connections) < 2:
            await asyncio.sleep(0.01)
        refused = await request(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        for _, writer in idle:
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        answers = [await reader.read() for reader, _ in idle]
        return refused, answers[0], server.refused

    refused, answered, count = served(body)
    assert refused == b"" and count == 1
    assert answered.startswith(b"HTTP/1.1 200 ")


def test_a_silent_connection_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_adapter, "REQUEST_TIMEOUT", 0.05)

    async def body(server: MetricsServer) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        answer = await reader.read()  # returns when the server gives up on us
        writer.close()
        return answer

    assert served(body) == b""


def test_a_busy_port_is_one_sentence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> None:
            await start_metrics_server(MetricsAddress(IPv4Address("127.0.0.1"), port), dict)

        with pytest.raises(Exception, match=r"cannot serve metrics on 127\.0\.0\.1:\d+: .*; set"):
            asyncio.run(main())


# --- both started with one call ---------------------------------------------------------------


def test_start_observers_serves_one_document_both_ways(tmp_path: Path) -> None:
    from teredo.adapters.control import query_control_socket
    from teredo.core.config import parse_server_config
    from teredo.core.record import replace
    from teredo.programs.observers import start_observers

    path = str(tmp_path / "server.sock")
    config = replace(
        parse_server_config("ServerBindAddress 198.51.100.2\n"),
        control_socket=path,
        metrics_address=MetricsAddress(IPv4Address("127.0.0.1"), 0),
    )

    async def main() -> tuple[Any, bytes]:
        observers = await start_observers(
            config, lambda: {"role": "server", "counters": {"received": 3}, "drops": {}}
        )
        try:
            assert observers.metrics is not None
            document = await asyncio.to_thread(query_control_socket, path)
            text = await request(observers.metrics.port, b"GET /metrics HTTP/1.0\r\n\r\n")
            return document, text
        finally:
            await observers.close()

    document, text = asyncio.run(main())
    families = parse(text.partition(b"\r\n\r\n")[2].decode())
    assert document["counters"] == {"received": 3} and "uptime" in document
    assert families["teredo_received"][1] == [("teredo_received_total", {}, 3.0)]
    assert families["teredo_build_info"][1][0][1]["version"] == document["version"]
    assert not os.path.exists(path)


def test_start_observers_undoes_the_socket_when_metrics_fail(tmp_path: Path) -> None:
    from teredo.core.config import parse_client_config
    from teredo.core.errors import UserError
    from teredo.core.record import replace
    from teredo.programs.observers import start_observers

    path = str(tmp_path / "client.sock")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = replace(
            parse_client_config("ServerAddress 198.51.100.2\n"),
            control_socket=path,
            metrics_address=MetricsAddress(IPv4Address("127.0.0.1"), taken.getsockname()[1]),
        )
        with pytest.raises(UserError, match="cannot serve metrics"):
            asyncio.run(start_observers(config, dict))
    assert not os.path.exists(path)
