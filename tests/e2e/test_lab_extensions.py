"""RFC 6081 extensions between our clients in the lab, with real NATs (nftables) and sockets.

Server load reduction (RFC 6081 §3.6, §5.7): after the peers have been silent for longer than
the 30 s a peer stays valid, a packet revalidates the peer with a direct bubble carrying a
TeredoDiscoverySolicitation, answered by an advertisement, without its server. Hairpinning
(§3.5, §5.6): two clients behind one NAT (`same_nat`), which hairpins or not. UPnP (§3.2,
§5.3): the `upnp-*` NAT kinds run miniupnpd; the client maps its port, peers behind UPnP
symmetric NATs reach each other, and the mapping goes when the client stops. The status says
so throughout (netsh-style state, NAT behaviours, each extension's peer count).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

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
    # Over 2 s of traffic: Linux's conntrack then keeps the NATs' UDP mappings 120 s, not
    # 30 (nf_conntrack_udp_timeout_stream), so the pause below outlives the Teredo peer's
    # validity but not the NATs' state, as in a session that pauses.
    first = lab.ping("cli1", target, count=10)
    assert first.ok, first.output
    before = daemon_status(lab, "cli1")
    assert before["client_state"] == "qualified"
    assert before["extensions"]["server_load_reduction"] is True
    time.sleep(PEER_VALIDITY + 3)  # let both sides' entries go stale (not a timing assertion)
    again = lab.ping("cli1", target)
    after = daemon_status(lab, "cli1")
    other = daemon_status(lab, "cli2")
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


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.5)
    return condition()


def ping_both_ways(lab: Lab) -> None:
    for source, target in (("cli1", "cli2"), ("cli2", "cli1")):
        result = lab.ping(source, teredo_of(lab, target), count=6)
        assert result.ok, result.output


# -- hairpinning (RFC 6081 §3.5, §5.6): two clients behind one NAT -------------------------------


@pytest.mark.parametrize("hairpinning", [False, True])
def test_two_clients_behind_one_nat_meet(hairpinning: bool) -> None:
    """Without local discovery, whether or not the NAT hairpins: the Alternate Address trailer
    names each client's local endpoint, and they meet there (or through the NAT)."""
    with built_lab(
        "th", nat1="port-restricted", same_nat=True, hairpinning=hairpinning,
        server="ours", relay="ours", client1="ours", client2="ours",
    ) as lab:  # fmt: skip
        ping_both_ways(lab)
        status = daemon_status(lab, "cli1")
        assert status["counters"].get("alternate_addresses_sent", 0) >= 1
        if not hairpinning:
            assert status["peers_hairpinning"] == 1, status["peer_list"]
            (peer,) = status["peer_list"]
            assert peer["mapped"].startswith("10."), peer  # the LAN, not the NAT


def test_without_the_extension_a_non_hairpinning_nat_keeps_them_apart() -> None:
    off = ["Hairpinning no"]
    with built_lab(
        "tn", nat1="port-restricted", same_nat=True, hairpinning=False,
        server="ours", relay="ours", client1="ours", client2="ours",
        ours_config={"client1": off, "client2": off},
    ) as lab:  # fmt: skip
        result = lab.ping("cli1", teredo_of(lab, "cli2"), count=4)
        assert not result.ok, result.output


# -- UPnP (RFC 6081 §3.2, §5.3): miniupnpd on the NAT boxes ------------------------------------


@pytest.mark.parametrize("nat2", ["upnp-symmetric", "upnp-port-restricted"])
def test_upnp_symmetric_nats_reach_each_other(nat2: str) -> None:
    """RFC 6081 Figure 1, "SNS + UPnP". The client maps its port on its NAT's gateway before it
    qualifies. These boxes open the mapped port to everyone but send the client's own traffic
    from other ports (miniupnpd's DNAT; the symmetric box's random ports), so the server sees
    another mapping than the UPnP one: the client offers the UPnP mapping in the Alternate
    Address trailer of its indirect bubbles (RFC 6081 §5.6.3), and the peer's direct bubble
    there opens the way both ways. At exit the mapping is deleted (RFC 6081 §5.3.5)."""
    with built_lab(
        "tu", nat1="upnp-symmetric", nat2=nat2, server="ours", relay="ours",
        client1="ours", client2="ours",
    ) as lab:  # fmt: skip
        status = daemon_status(lab, "cli1")
        assert "upnp" in status["nat_behaviours"], status
        assert status["nat"] == "symmetric"
        assert status["upnp_mapped"] is not None
        ping_both_ways(lab)
        port = status["upnp_mapped"].rsplit(":", 1)[1]
        assert f"UDP {port}->" in port_mappings(lab), port_mappings(lab)
        lab.restart_role("client1")  # SIGTERM, then a new client on another port
        assert wait_for(lambda: f"UDP {port}->" not in port_mappings(lab)), port_mappings(lab)


def port_mappings(lab: Lab) -> str:
    """What the gateway of NAT box 1 lists (upnpc -l, from client 1's namespace)."""
    result = lab.exec("cli1", ["upnpc", "-l"], timeout=20)
    return result.stdout
