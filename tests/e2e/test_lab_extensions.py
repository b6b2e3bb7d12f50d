"""RFC 6081 extensions between our clients in the lab, with real NATs (nftables) and sockets.

Server load reduction (RFC 6081 §3.6, §5.7): after the peers have been silent for longer than
the 30 s a peer stays valid, a packet revalidates the peer with a direct bubble carrying a
TeredoDiscoverySolicitation, answered by an advertisement, without its server. The status
says so (netsh-style state, the extension's peer count). The hairpinning extension (§5.6)
and the UPnP extension (§5.3) need the lab's `--same-nat` and `upnp-*` NAT kinds; their fake
network tests are in tests/unit/test_client.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from labsupport import built_lab, daemon_status, teredo_of
from teredo.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

PEER_VALIDITY = 30.0  # RFC 4380 §5.2.4: a peer not heard from for this long is not valid


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with built_lab(
        "tx", nat1="restricted", nat2="port-restricted", server="ours", relay="ours",
        client1="ours", client2="ours",
    ) as lab:  # fmt: skip
        yield lab


def test_an_idle_peer_is_revalidated_without_the_server(lab: Lab) -> None:
    target = teredo_of(lab, "cli2")
    first = lab.ping("cli1", target)
    assert first.ok, first.output
    before = daemon_status(lab, "cli1")
    assert before["client_state"] == "qualified"
    assert before["extensions"]["server_load_reduction"] is True
    time.sleep(PEER_VALIDITY + 3)  # let both sides' entries go stale (not a timing assertion)
    again = lab.ping("cli1", target)
    after = daemon_status(lab, "cli1")
    other = daemon_status(lab, "cli2")
    print("cli1", after["counters"], after["drops"], after["peer_list"])
    print("cli2", other["counters"], other["drops"], other["peer_list"])
    assert again.ok, again.output
    assert after["counters"].get("solicitations_sent", 0) >= 1, after["counters"]
    assert after["counters"].get("advertisements_received", 0) >= 1, after["counters"]
    assert after["peers_server_load_reduction"] >= 1
    assert other["counters"].get("advertisements_sent", 0) >= 1


def test_status_shows_the_local_mapping_and_the_nat(lab: Lab) -> None:
    status = daemon_status(lab, "cli1")
    assert status["client_state"] in ("qualified", "dormant")
    assert status["nat"] != "unknown"
    assert status["local_mapping"] is not None
    assert status["local_mapping"].rsplit(":", 1)[0] != status["mapped"].rsplit(":", 1)[0]
    assert status["upnp_mapped"] is None  # no gateway in this lab: the client went on without
