"""Watching our daemons in the lab: metrics scraped with curl, the control socket's group, JSON
logs, and no socket left behind after a privilege-dropped daemon stops. Root only.

One lab: OUR server (MetricsAddress 127.0.0.1:9344) and OUR relay (MetricsAddress [::1]:9344,
LogFormat json), our client 1 and Miredo's client 2. A second client of ours in cli1 (interface
teredo2) has a control socket in a directory it creates, given to group nogroup, metrics and
JSON logs: it is queried by an unprivileged member of that group and stopped with SIGTERM.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from labsupport import built_lab
from teredo.lab.lab import Lab
from teredo.lab.topology import SERVER_IPV4

pytestmark = [pytest.mark.root, pytest.mark.lab]

SOURCE = Path(__file__).resolve().parents[2] / "src"
NOGROUP = 65534  # Debian's nogroup, nobody's group


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with built_lab(
        "tob", nat1="restricted", nat2="fullcone",
        server="ours", relay="ours", client1="ours", client2="miredo",
        ours_config={
            "server": ["MetricsAddress 127.0.0.1:9344"],
            "relay": ["MetricsAddress [::1]:9344", "LogFormat json"],
        },
    ) as lab:  # fmt: skip
        yield lab


def scrape(lab: Lab, node: str, url: str) -> dict[str, Any]:
    """curl the endpoint in `node`; the families as Prometheus' own parser reads them."""
    result = lab.exec(node, ["curl", "--silent", "--show-error", "--fail", url], timeout=20)
    assert result.returncode == 0, result.stderr
    families = {family.name: family for family in text_string_to_metric_families(result.stdout)}
    for family in families.values():
        assert family.name.startswith("teredo_")
        if family.type == "counter":
            assert all(sample.name == family.name + "_total" for sample in family.samples)
    return families


def test_server_metrics_with_curl(lab: Lab) -> None:
    families = scrape(lab, "srv", "http://127.0.0.1:9344/metrics")
    info = families["teredo_build_info"]
    assert info.type == "gauge" and info.samples[0].labels["role"] == "server"
    answered = families["teredo_router_advertisements"]  # both clients qualified through it
    assert answered.type == "counter" and answered.samples[0].value >= 2
    assert families["teredo_drops"].type == "counter"
    assert families["teredo_rate_limit_sources_tracked"].type == "gauge"
    assert families["teredo_uptime_seconds"].samples[0].value >= 0


def test_relay_metrics_over_ipv6_and_json_logs(lab: Lab) -> None:
    families = scrape(lab, "relay", "http://[::1]:9344/metrics")
    assert families["teredo_build_info"].samples[0].labels["role"] == "relay"
    assert families["teredo_max_peers"].type == "gauge"
    assert families["teredo_peers"].type == "gauge"
    events = [json.loads(line) for line in json_lines(lab.directory / "relay.log")]
    assert events and all(event["role"] == "relay" for event in events)
    assert any("Prometheus metrics on http://[::1]:9344" in e["message"] for e in events)
    assert {"time", "level", "message", "logger", "pid"} <= set(events[0])


def json_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("{")]


def status_as(lab: Lab, socket_path: Path, gid: int) -> subprocess.CompletedProcess[str]:
    """`teredo status --json` as nobody with group `gid` only: no root, no other group."""
    return lab.exec(
        "cli1",
        [
            "setpriv", f"--reuid={NOGROUP}", f"--regid={gid}", "--clear-groups",
            "env", f"PYTHONPATH={SOURCE}", "/usr/bin/python3", "-m", "teredo",
            "status", "--json", "--socket", str(socket_path),
        ],
        timeout=20,
    )  # fmt: skip


def test_a_second_client_watched_without_root_leaves_no_socket(lab: Lab) -> None:
    directory = lab.directory / "observed"  # the daemon creates it, so it becomes the daemon's
    socket_path = directory / "control.sock"
    config = lab.directory / "observed.conf"
    config.write_text(
        f"ServerAddress {SERVER_IPV4}\nInterfaceName teredo2\nBindPort 4000\n"
        f"ControlSocket {socket_path}\nControlSocketGroup nogroup\n"
        "MetricsAddress 127.0.0.1:9345\nLogFormat json\n"
    )
    log_path = lab.directory / "observed.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", lab.namespace("cli1"), sys.executable, "-m", "teredo",
             "client", "-f", "-c", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        for _ in range(200):
            if any("configured on teredo2" in line for line in json_lines(log_path)):
                break
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.1)
        # The socket: 0660, group nogroup, in a directory the dropped daemon owns.
        found = socket_path.stat()
        assert stat.S_ISSOCK(found.st_mode) and stat.S_IMODE(found.st_mode) == 0o660
        assert found.st_gid == NOGROUP
        assert directory.stat().st_uid == NOGROUP  # nobody
        # A member of the group asks without root; a stranger is refused with one sentence.
        member = status_as(lab, socket_path, NOGROUP)
        assert member.returncode == 0, member.stderr
        document = json.loads(member.stdout)
        assert document["state"] == "qualified" and document["interface"] == "teredo2"
        assert document["servers"][0]["address"] == str(SERVER_IPV4)
        stranger = status_as(lab, socket_path, 4242)
        assert stranger.returncode != 0
        assert "permission denied" in stranger.stderr and "Traceback" not in stranger.stderr
        # The metrics agree with the status document.
        families = scrape(lab, "cli1", "http://127.0.0.1:9345/metrics")
        assert families["teredo_state"].samples[0].labels["state"] == "qualified"
        assert families["teredo_build_info"].samples[0].labels["role"] == "client"
        assert families["teredo_server_rtt_seconds"].samples[0].value < 5
        events = [json.loads(line) for line in json_lines(log_path)]
        assert all(event["role"] == "client" for event in events)
        (qualified,) = [event for event in events if event.get("event") == "qualified"]
        assert qualified["address"] == document["address"] and qualified["mtu"] == 1280
        assert qualified["interface"] == "teredo2" and qualified["level"] == "info"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, log_path.read_text()
    assert not socket_path.exists(), "the stopped daemon left its control socket behind"
    assert not any(Path(p).is_socket() for p in directory.iterdir())
