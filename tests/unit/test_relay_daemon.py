"""The relay daemon's pieces without root: the data path over a loopback UDP socket and a
datagram socketpair standing in for the TUN device, the host address reader, config loading."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from teredo.adapters.netlink import host_addresses
from teredo.adapters.tun import TunDevice
from teredo.adapters.udp import open_udp_socket
from teredo.core.address import encode_teredo_address
from teredo.core.config import parse_relay_config
from teredo.core.errors import UsageError
from teredo.core.peering import PeeringSettings
from teredo.core.relay import TeredoRelay
from teredo.core.wire import encode_bubble, encode_echo
from teredo.programs.datapath import DataPath
from teredo.programs.loading import Loaded
from teredo.programs.relay_daemon import RelayDaemon, load_relay_config

NATIVE = IPv6Address("2001:db8:2::2")


def test_host_addresses_reads_global_scope_only(tmp_path: Path) -> None:
    table = tmp_path / "if_inet6"
    table.write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "20010db8000200000000000000000002 02 40 00 80     eth0\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
        "20010db8000300000000000000000002 05 40 00 80   teredo\n"
        "garbage\n"
    )
    found = host_addresses(exclude_interface="teredo", path=str(table))
    assert found == [NATIVE]
    assert host_addresses(path=str(tmp_path / "missing")) == []


def test_load_relay_config(tmp_path: Path) -> None:
    path = tmp_path / "relay.conf"
    path.write_text("RelayType relay\nSyslogFacility local0\n")
    loaded = load_relay_config(str(path))
    assert loaded.syslog == "local0"
    path.write_text("RelayType client\nServerAddress 198.51.100.2\n")
    with pytest.raises(UsageError):
        load_relay_config(str(path))


def test_status_document_without_io() -> None:
    config = parse_relay_config("RelayType host-specific\n")
    core = TeredoRelay.from_config(config, random_bytes=bytes, secret=b"s" * 32, now=0.0)
    daemon = RelayDaemon(loaded=Loaded(config, "relay.conf", None, None), core=core)
    document = daemon.status()
    assert document["role"] == "host-specific relay"
    assert document["bind"] == "-"
    assert "ipv6_forwarding" not in document
    assert document["peers"] == 0


def test_data_path_moves_packets_both_ways() -> None:
    asyncio.run(_loop_round_trip())


async def _loop_round_trip() -> None:
    relay = TeredoRelay(
        PeeringSettings(allow_private=True), random_bytes=bytes, secret=b"s" * 32, now=0.0
    )
    udp = open_udp_socket("127.0.0.1", 0)
    kernel_side, tun_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun_side.setblocking(False)
    kernel_side.settimeout(5)
    tun = TunDevice(tun_side.detach(), "faketun", multi_queue=False, vnet_hdr=False)
    peer_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer_sock.bind(("127.0.0.1", 0))
    peer_sock.settimeout(5)
    port = peer_sock.getsockname()[1]
    # Everything stays on loopback: the "server" of the indirect bubble is 127.0.0.2.
    peer = encode_teredo_address(IPv4Address("127.0.0.2"), IPv4Address("127.0.0.1"), port)
    loop = asyncio.get_running_loop()
    tunnel = DataPath(relay, udp, tun)
    tunnel.start(loop)
    try:
        # Native -> Teredo, unknown peer: queued, bubbles go out (the direct one reaches us).
        outbound = encode_echo(NATIVE, peer, 1, 1, b"out")
        await loop.run_in_executor(None, kernel_side.send, outbound)
        bubble, _ = await loop.run_in_executor(None, peer_sock.recvfrom, 2048)
        assert bubble[6] == 59 and bubble[24:40] == peer.packed
        # The peer answers with a bubble from its embedded mapping: trusted, queue flushed.
        reply = encode_bubble(peer, IPv6Address(bubble[8:24]))
        await loop.run_in_executor(None, peer_sock.sendto, reply, udp.local)
        data, _ = await loop.run_in_executor(None, peer_sock.recvfrom, 2048)
        assert data == outbound
        # Teredo -> native through the fast path.
        inbound = encode_echo(peer, NATIVE, 1, 1, b"in")
        await loop.run_in_executor(None, peer_sock.sendto, inbound, udp.local)
        assert await loop.run_in_executor(None, kernel_side.recv, 2048) == inbound
        # Native -> Teredo through the fast path.
        await loop.run_in_executor(None, kernel_side.send, outbound)
        data, _ = await loop.run_in_executor(None, peer_sock.recvfrom, 2048)
        assert data == outbound
        assert relay.fast_rx == 1 and relay.fast_tx == 1
        counters = tunnel.counters()
        assert counters["udp_datagrams_in"] == 2 and counters["tun_packets_in"] == 2
    finally:
        tunnel.stop()
        tun.close()
        udp.close()
        peer_sock.close()
        kernel_side.close()
