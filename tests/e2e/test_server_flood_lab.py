"""`teredo server` under a Router Solicitation flood in the lab: a real client still qualifies.

The generator `benchmarks/flood.c` runs on the native host and sends Router Solicitations (RFC
4380 §5.2.1) to the server from 262 144 spoofed sources (65 536 distinct IPv4 addresses in
100.64.0.0/10, four ports each) as fast as it can, for longer than the test needs; the router
sends the answers back to the native host, which counts and drops them. Meanwhile client 1
(ours, behind a port-restricted NAT) restarts and must qualify through the flooded server. The
timeout is generous and nothing here asserts a rate or a time: the machine may be shared.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labsupport import built_lab, compiled_flood, daemon_status
from teredo.core.address import TEREDO_PORT, parse_teredo_address
from teredo.lab.lab import Lab
from teredo.lab.topology import NATIVE_IPV4, SERVER_IPV4, SERVER_IPV4_2

pytestmark = [pytest.mark.root, pytest.mark.lab]

FAKE_CLIENTS = "100.64.0.0/10"
SPOOFED_CLIENTS = 262144  # 65 536 addresses, four ports each (flood.c)
FLOOD_SECONDS = 240  # longer than the test: it is stopped by pid when the test ends
COUNTER_RULESET = f"""
table ip rsflood {{
    counter answers {{ }}
    chain prerouting {{
        type filter hook prerouting priority -300; policy accept;
        ip saddr {{ {SERVER_IPV4}, {SERVER_IPV4_2} }} udp sport {TEREDO_PORT} \
ip daddr {FAKE_CLIENTS} counter name answers drop
    }}
}}
"""


@pytest.fixture(scope="module")
def flood_binary() -> Iterator[Path]:
    with compiled_flood() as binary:
        yield binary


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with built_lab("tf", server="ours", client1="ours", ready_timeout=180.0) as lab:
        lab.exec("inet", ["ip", "route", "add", FAKE_CLIENTS, "via", str(NATIVE_IPV4)], check=True)
        lab.exec("v6", ["nft", "-f", "-"], input=COUNTER_RULESET, check=True)
        yield lab


@pytest.fixture
def flood(lab: Lab, flood_binary: Path) -> Iterator[subprocess.Popen[str]]:
    argv = [
        "ip", "netns", "exec", lab.namespace("v6"), str(flood_binary), "-m", "rs",
        "-n", str(SPOOFED_CLIENTS), "-t", str(FLOOD_SECONDS), "-S", str(SERVER_IPV4),
        "-R", f"{SERVER_IPV4}:{TEREDO_PORT}",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()  # flood.c prints its summary and exits on SIGTERM
        process.communicate(timeout=30)


def answers(lab: Lab) -> int:
    listing = lab.exec("v6", ["nft", "list", "counter", "ip", "rsflood", "answers"]).stdout
    match = re.search(r"packets (\d+)", listing)
    assert match is not None, listing
    return int(match.group(1))


def test_a_client_qualifies_while_the_server_is_flooded(
    lab: Lab, flood: subprocess.Popen[str]
) -> None:
    before = answers(lab)
    deadline = time.monotonic() + 60
    while answers(lab) < before + 10000:  # the flood is on and being answered
        assert flood.poll() is None, flood.communicate()
        assert time.monotonic() < deadline, "the server answered no flood"
        time.sleep(0.2)
    # The restart removes the old address; restart_role waits (up to the lab's generous
    # ready_timeout) until the new process has qualified and configured a new one.
    lab.restart_role("client1")
    address = lab.teredo_address("cli1")
    assert address is not None
    assert parse_teredo_address(address).server == SERVER_IPV4
    assert flood.poll() is None, "the flood ended before the client qualified"
    status = daemon_status(lab, "srv")
    assert status["counters"]["router_advertisements"] > 10000
    assert status["rate_limit_sources_tracked"] <= 65536  # the table stays bounded
