"""RFC 6081 extensions between our clients in the lab, with real NATs (nftables) and sockets.

Server load reduction (RFC 6081 §3.6, §5.7): after the peers have been silent for longer than
the 30 s a peer stays valid, a packet revalidates the peer with a direct bubble carrying a
TeredoDiscoverySolicitation, answered by an advertisement, without its server. The status
says so (netsh-style state, the extension's peer count). The hairpinning extension (§5.6)
and the UPnP extension (§5.3) need the lab's `--same-nat` and `upnp-*` NAT kinds; their fake
network tests are in tests/unit/test_client.py.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

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


# A UPnP gateway in NAT box 1: miniupnpd (its nftables backend) with chains of its own that
# accept by default, so that the box's own ruleset still decides everything else.
MINIUPNPD_RULES = """table inet miniupnpd {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_up; }
  chain prerouting_up { }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_up; }
  chain postrouting_up { }
}
"""
MINIUPNPD_CONFIG = """ext_ifname=wan
listening_ip=lan
enable_upnp=yes
enable_natpmp=no
secure_mode=yes
uuid=3b1c1f6e-4d2f-4e0a-9b0e-0c3ad1f00d01
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_up
upnp_nat_postrouting_chain=postrouting_up
allow 1024-65535 10.1.0.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""


def test_the_client_asks_a_real_gateway_and_goes_on_when_refused(lab: Lab) -> None:
    """RFC 6081 §5.3.3 with the real library against a real IGD. miniupnpd 2.3.1 refuses to
    map on an outside address in 203.0.113.0/24 (documentation space, which the lab's Internet
    uses), so AddPortMapping fails: the client must say so in one line and go on qualified
    (the mapping itself waits for the lab's `upnp-*` NAT kinds)."""
    if shutil.which("miniupnpd") is None:
        pytest.skip("miniupnpd is not installed (Debian: miniupnpd-nftables)")
    namespace = lab.namespace("nat1")
    rules = lab.directory / "miniupnpd.nft"
    rules.write_text(MINIUPNPD_RULES)
    config = lab.directory / "miniupnpd.conf"
    config.write_text(MINIUPNPD_CONFIG)
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", str(rules)], check=True)
    with open(lab.directory / "miniupnpd.log", "w") as output:
        gateway = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "miniupnpd", "-f", str(config), "-d"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        lab.restart_role("client1")
        log = Path(lab._require_state().roles["client1"].log)

        def asked() -> bool:
            return "UPnP:" in log.read_text()

        end = time.monotonic() + 20
        while not asked() and time.monotonic() < end:
            time.sleep(0.5)
        text = log.read_text()
        assert "UPnP:" in text, text
        assert "Traceback" not in text, text
        assert teredo_of(lab, "cli1") is not None
        status = daemon_status(lab, "cli1")
        assert status["client_state"] in ("qualified", "dormant")
    finally:
        gateway.terminate()
        gateway.wait(timeout=10)
