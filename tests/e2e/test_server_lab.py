"""`teredo server` in the lab, with Miredo clients and a Miredo relay.

One lab per NAT pairing (module scope, torn down even when a test fails): client 1 behind an
address-restricted NAT and client 2 behind a full-cone NAT, then port-restricted and no NAT; both
clients Miredo, qualifying through OUR server; the native host is reached through Miredo's relay,
both ways, and the clients reach each other, both ways. A small UDP sender on the native host
(public IPv4) crafts Windows-style Router Solicitations and bad packets to check the daemon's
answers and its drop counters.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

from labsupport import built_lab, daemon_status
from teredo.core.address import parse_teredo_address
from teredo.lab.lab import Lab
from teredo.lab.topology import NATIVE_IPV4, NATIVE_IPV6, SERVER_IPV4, SERVER_IPV4_2

pytestmark = [pytest.mark.root, pytest.mark.lab]

# (NAT in front of client 1, NAT in front of client 2): address-restricted and full cone first,
# then a port-restricted NAT and a client with a public address of its own.
NAT_PAIRS = [("restricted", "fullcone"), ("port-restricted", "none")]


@pytest.fixture(scope="module", params=NAT_PAIRS, ids=["-".join(pair) for pair in NAT_PAIRS])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    nat1, nat2 = request.param
    with built_lab(
        "ts", nat1=nat1, nat2=nat2,
        server="ours", relay="miredo", client1="miredo", client2="miredo",
    ) as lab:  # fmt: skip
        yield lab


def server_status(lab: Lab) -> dict[str, Any]:
    return daemon_status(lab, "srv")


def test_miredo_clients_qualify_through_our_server(lab: Lab) -> None:
    for site in lab.topology.sites:
        node = site.client_node
        # Behind a NAT the mapping is the NAT's public address; without one, the client's own.
        nat = site.client.ip if site.kind == "none" else site.wan.ip
        address = lab.teredo_address(node)
        assert address is not None, f"{node} did not qualify"
        teredo = parse_teredo_address(address)
        assert teredo.server == SERVER_IPV4
        assert teredo.mapped_address == nat  # the origin indication of our RA
    status = server_status(lab)
    assert status["role"] == "server"
    assert status["counters"]["router_advertisements"] >= 2


@pytest.mark.parametrize("client", ["cli1", "cli2"])
def test_client_reaches_native_host(lab: Lab, client: str) -> None:
    """The echo test goes through our server natively; the reply comes back via the relay."""
    result = lab.ping(client, NATIVE_IPV6)
    assert result.ok, result.output


@pytest.mark.parametrize("client", ["cli1", "cli2"])
def test_native_host_reaches_client(lab: Lab, client: str) -> None:
    """The relay's indirect bubble goes through our server with an origin indication."""
    address = lab.teredo_address(client)
    assert address is not None
    result = lab.ping("v6", address)
    assert result.ok, result.output


@pytest.mark.parametrize(("source", "target"), [("cli1", "cli2"), ("cli2", "cli1")])
def test_clients_reach_each_other(lab: Lab, source: str, target: str) -> None:
    address = lab.teredo_address(target)
    assert address is not None
    result = lab.ping(source, address)
    assert result.ok, result.output


def test_forwarding_is_counted(lab: Lab) -> None:
    lab.ping("cli1", NATIVE_IPV6, count=1)
    counters = server_status(lab)["counters"]
    assert counters["forwarded_native"] >= 1
    assert counters["native_sent"] >= 1
    assert counters["origin_indications"] >= 1


# A small sender on the native host (198.51.100.34, global): prints one JSON line per answer.
SENDER = r"""
import json, socket, sys
from ipaddress import IPv6Address
from teredo.core.wire import (Authentication, TeredoPacket, encode_router_solicitation,
                         encode_teredo_packet, parse_router_advertisement, parse_teredo_packet)
rs_source, server = IPv6Address(sys.argv[1]), sys.argv[2]
nonce = bytes.fromhex("0123456789abcdef")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
s.settimeout(5)
payload = encode_teredo_packet(
    TeredoPacket(encode_router_solicitation(rs_source), Authentication(nonce=nonce)))
s.sendto(payload, (server, 3544))
data, sender = s.recvfrom(2048)
packet = parse_teredo_packet(data)
ra = parse_router_advertisement(packet.ipv6)
print(json.dumps({
    "sender": sender[0], "sender_port": sender[1], "length": len(data),
    "nonce": packet.authentication.nonce.hex(), "confirmation": packet.authentication.confirmation,
    "origin": [str(packet.origin.address), packet.origin.port], "local_port": s.getsockname()[1],
    "source": str(ra.source), "destination": str(ra.destination),
    "prefixes": [f"{p.prefix}/{p.prefix_length}" for p in ra.prefixes], "mtu": ra.mtu,
}))
"""


@pytest.mark.parametrize(
    ("rs_source", "sent_to", "answered_from"),
    [
        ("fe80::ffff:ffff:fffe", SERVER_IPV4, SERVER_IPV4),  # Windows, C=0: same address
        ("fe80::8000:ffff:ffff:fffe", SERVER_IPV4, SERVER_IPV4_2),  # Windows cone: the other
        ("fe80::8000:5445:5245:444f", SERVER_IPV4_2, SERVER_IPV4),  # Miredo cone, on secondary
    ],
)
def test_windows_style_rs_gets_a_correct_ra(
    lab: Lab, rs_source: str, sent_to: IPv4Address, answered_from: IPv4Address
) -> None:
    result = lab.exec("v6", [sys.executable, "-c", SENDER, rs_source, str(sent_to)], timeout=20)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["sender"] == str(answered_from)
    assert answer["sender_port"] == 3544
    assert answer["length"] == 117  # auth 13 + origin 8 + IPv6 40 + RA 16 + PIO 32 + MTU 8
    assert answer["nonce"] == "0123456789abcdef"
    assert answer["confirmation"] == 0
    assert answer["origin"] == [str(NATIVE_IPV4), answer["local_port"]]
    assert answer["source"] == "fe80::8000:f227:39cc:9bfd"  # ~198.51.100.2
    assert IPv6Address(answer["destination"]) == IPv6Address(rs_source)
    assert answer["prefixes"] == ["2001:0:c633:6402::/64"]
    assert answer["mtu"] == 1280


BAD_SENDER = r"""
import socket, sys
from ipaddress import IPv4Address, IPv6Address
from teredo.core.address import encode_teredo_address
from teredo.core.wire import encode_bubble
server = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))
junk = [b"", b"\x00", b"\x00\x01" + bytes(5), b"\x60" + bytes(10), bytes(range(256))]
# A bubble whose Teredo source claims another mapping than the sender's: spoofed.
spoofed = encode_teredo_address(IPv4Address(server), IPv4Address("203.0.113.99"), 1234)
target = encode_teredo_address(IPv4Address(server), IPv4Address("203.0.113.2"), 5555)
for payload in [*junk, encode_bubble(spoofed, target)]:
    s.sendto(payload, (server, 3544))
"""


def test_malformed_and_spoofed_packets_are_dropped_and_counted(lab: Lab) -> None:
    before = server_status(lab)["drops"]
    result = lab.exec("v6", [sys.executable, "-c", BAD_SENDER, str(SERVER_IPV4)], timeout=20)
    assert result.returncode == 0, result.stderr
    # The status request is answered after the datagrams queued before it (one event loop),
    # but the kernel may still be delivering them: ask until they are counted.
    for _ in range(50):
        drops = server_status(lab)["drops"]
        if (
            drops.get("spoofed_source", 0) > before.get("spoofed_source", 0)
            and drops.get("malformed", 0) >= before.get("malformed", 0) + 5
        ):
            break
    assert drops.get("malformed", 0) >= before.get("malformed", 0) + 5
    assert drops.get("spoofed_source", 0) >= before.get("spoofed_source", 0) + 1
    # ...and the server still serves.
    assert lab.ping("cli1", NATIVE_IPV6, count=1).ok
