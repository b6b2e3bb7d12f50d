"""The kernel data path in the real kernel: its programs against their Python twins through
BPF_PROG_TEST_RUN (hypothesis and a bounded fuzz loop), and end to end between two network
namespaces joined by a veth pair, with a TUN device.

Topology (each test gets fresh namespaces with unique names, always deleted)::

    relay namespace (entered)                       peer namespace
    teredo (TUN, 2001::/32) + lo 2001:db8:1::1      p0 198.51.100.2  02:00:00:00:00:02
    r0 198.51.100.1  02:00:00:00:00:01  <-- veth -->  raw frames out (AF_PACKET), captures in

The daemon's UDP socket is 198.51.100.1:3545; what the kernel passes must reach it (or the
TUN queue) byte for byte; what it takes must reach the IPv6 stack (decapsulated) or the peer
(encapsulated) with correct outer and inner checksums.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from bpfsupport import (
    CLIENT,
    LEARNABLE,
    MULTICAST,
    NATIVE,
    NEW_PEER,
    NEW_PEER_MAPPING,
    OTHER_PEER,
    PEER,
    PEER_IP,
    PEER_MAC,
    PEER_PORT,
    RELAY_IP,
    RELAY_MAC,
    RELAY_PORT,
    STALE_PEER,
    UNKNOWN_PEER,
    bubble,
    decap_frames,
    encap_packets,
    ethernet,
    icmp6_echo,
    nonce_trailer,
    peer_table,
    relay_settings,
    tcp6,
    udp4,
    udp6,
)
from teredo.adapters.bpf import (
    OBJECT_PATH,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    KernelDataPath,
    KernelDataPathUnavailable,
)
from teredo.adapters.tun import TunDevice, open_tun
from teredo.bpf.datapath import (
    PEER_TRUSTED,
    DataPathSettings,
    PeerEntry,
    Role,
    encapsulate,
    python_decap_verdict,
    python_encap_verdict,
)
from teredo.core.wire import internet_checksum
from testsupport import IN_CI, require_root

pytestmark = pytest.mark.root

GATEWAY = "198.51.100.254"
GATEWAY_MAC = bytes.fromhex("020000000099")
WAIT = 3.0  # seconds to wait for a packet to arrive; not a timing assertion


def require_datapath() -> None:
    require_root("ip", "tc")
    if not os.path.exists(OBJECT_PATH):
        reason = "needs the kernel data path built (clang and libbpf-dev: bash scripts/setup)"
        if IN_CI:
            pytest.fail(f"in CI this test must run, but it {reason}")
        pytest.skip(reason)


def ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True)


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    from pyroute2 import netns

    netns.pushns(namespace)
    try:
        yield
    finally:
        netns.popns()


def mac(address: bytes) -> str:
    return address.hex(":")


@dataclass
class Namespaces:
    relay: str
    peer: str


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    require_datapath()
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    names = Namespaces(f"tbpf-r-{tag}", f"tbpf-p-{tag}")
    ip("netns", "add", names.relay)
    try:
        ip("netns", "add", names.peer)
        try:
            r, p = ("-n", names.relay), ("-n", names.peer)
            ip("link", "add", "r0", "netns", names.relay, "type", "veth", "peer", "name", "p0",
               "netns", names.peer)  # fmt: skip
            ip(*r, "link", "set", "r0", "address", mac(RELAY_MAC), "up")
            ip(*p, "link", "set", "p0", "address", mac(PEER_MAC), "up")
            ip(*r, "link", "set", "lo", "up")
            ip(*p, "link", "set", "lo", "up")
            ip(*r, "addr", "add", f"{RELAY_IP}/24", "dev", "r0")
            ip(*p, "addr", "add", f"{PEER_IP}/24", "dev", "p0")
            ip(*r, "addr", "add", "2001:db8:1::1/128", "dev", "lo")
            ip(*r, "route", "add", "default", "via", GATEWAY)
            for address, lladdr in ((PEER_IP, PEER_MAC), (GATEWAY, GATEWAY_MAC)):
                ip(*r, "neigh", "replace", address, "lladdr", mac(lladdr), "dev", "r0",
                   "nud", "permanent")  # fmt: skip
            ip(*p, "neigh", "replace", RELAY_IP, "lladdr", mac(RELAY_MAC), "dev", "p0",
               "nud", "permanent")  # fmt: skip
            with inside(names.relay):
                yield names
        finally:
            ip("netns", "del", names.peer)
    finally:
        ip("netns", "del", names.relay)


def forwarding(namespace: str, on: bool) -> None:
    subprocess.run(
        ["ip", "netns", "exec", namespace, "sysctl", "-qw",
         f"net.ipv4.conf.r0.forwarding={int(on)}"],
        check=True,
    )  # fmt: skip


# -- BPF_PROG_TEST_RUN against the twins ----------------------------------------------------


@dataclass
class Bench:
    """A loaded (not attached) data path and the twins' view of its maps."""

    path: KernelDataPath
    settings: DataPathSettings
    local: set[bytes]

    def load_peers(self) -> dict[bytes, PeerEntry]:
        """The twins' table in the map, and nothing an earlier run learned."""
        table = peer_table(time.monotonic_ns())
        for address in LEARNABLE:
            self.path.remove_peer(address)
        for address, entry in table.items():
            assert self.path.set_peer(address, entry.mapping, entry.last_rx_ns / 1e9)
        return table


@pytest.fixture(params=list(Role), ids=[role.name.lower() for role in Role])
def bench(request: pytest.FixtureRequest, namespaces: Namespaces) -> Iterator[Bench]:
    forwarding(namespaces.relay, True)
    role: Role = request.param
    local = {CLIENT} if role == Role.CLIENT else {NATIVE} if role != Role.RELAY else set()
    config = relay_settings(
        role=role,
        fib_ifindex=socket.if_nametoindex("r0"),
        tun_l2_bytes=14,
        source=RELAY_IP,
        learn=role != Role.CLIENT,  # as the daemons open it
    )
    path = KernelDataPath.load(config, max_peers=1024)
    path.set_local_addresses(local)
    try:
        yield Bench(path, config, local)
    finally:
        path.close()


def counted(path: KernelDataPath, run: Callable[[], object]) -> tuple[object, set[str]]:
    before = path.counters()
    result = run()
    after = path.counters()
    return result, {name for name, value in after.items() if value != before[name]}


def runnable(frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN refuses a frame shorter than its network header: no device hands a
    program such an IPv4 or IPv6 packet either (the twins pass them)."""
    minimum = {b"\x08\x00": 20, b"\x86\xdd": 40}.get(frame[12:14], 1)
    return len(frame) >= 14 + minimum


def check_decap(bench: Bench, frame: bytes) -> None:
    peers = bench.load_peers()
    expected = python_decap_verdict(frame, bench.settings, peers, bench.local)
    if not runnable(frame):
        assert not expected.taken
        return
    run, changed = counted(bench.path, lambda: bench.path.test_run("decap", frame))
    counters = {expected.reason} if expected.reason else set()
    if expected.taken and expected.mapping is not None:
        counters.add("rx_learned")
    assert changed == counters, expected
    if expected.taken:
        assert run.action == TC_ACT_REDIRECT  # type: ignore[attr-defined]
        out = run.packet  # type: ignore[attr-defined]
        assert out[12:14] == b"\x86\xdd" and out[14:] == expected.packet
        source = expected.packet[8:24]  # type: ignore[index]
        entry = bench.path.peer(source)
        assert entry is not None
        if expected.mapping is not None:  # learned: trusted at the outer source, heard now
            assert entry.mapping == expected.mapping and entry.flags == PEER_TRUSTED
            assert entry.last_rx_ns > peers[PEER].last_rx_ns
        else:
            assert entry.last_rx_ns > peers[source].last_rx_ns
    elif expected.reason != "rx_peers_full":
        for address in LEARNABLE:
            assert bench.path.peer(address) is None  # nothing passed creates an entry
    else:
        assert (run.action, run.packet) == (TC_ACT_OK, frame)  # type: ignore[attr-defined]


def check_encap(bench: Bench, packet: bytes) -> None:
    peers = bench.load_peers()
    frame = ethernet(packet, kind=0x86DD)
    if not runnable(frame):
        verdict = python_encap_verdict(packet, bench.settings, peers, now_ns=time.monotonic_ns())
        assert not verdict.taken
        return
    run, changed = counted(bench.path, lambda: bench.path.test_run("encap", frame))
    expected = python_encap_verdict(
        packet, bench.settings, peers, bench.local, now_ns=time.monotonic_ns()
    )
    assert changed == {expected.reason}, expected
    if expected.taken:
        assert expected.mapping is not None
        assert run.action == TC_ACT_REDIRECT  # type: ignore[attr-defined]
        out = run.packet  # type: ignore[attr-defined]
        gateway = expected.mapping[0] != PEER_IP
        assert out[:6] == (GATEWAY_MAC if gateway else PEER_MAC)
        assert out[6:14] == RELAY_MAC + b"\x08\x00"
        identification = int.from_bytes(out[18:20], "big")
        source = (RELAY_IP, RELAY_PORT)
        assert out[14:] == encapsulate(packet, source, expected.mapping, identification)
    else:
        assert (run.action, run.packet) == (TC_ACT_OK, frame)  # type: ignore[attr-defined]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=decap_frames())
def test_decap_program_agrees_with_its_twin(bench: Bench, frame: bytes) -> None:
    check_decap(bench, frame)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(packet=encap_packets())
def test_encap_program_agrees_with_its_twin(bench: Bench, packet: bytes) -> None:
    check_encap(bench, packet)


def _mutated(rng: random.Random, data: bytes) -> bytes:
    target = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(4)
        if action == 0 and target:
            bit = rng.randrange(len(target) * 8)
            target[bit // 8] ^= 1 << (bit % 8)
        elif action == 1 and target:
            target[rng.randrange(min(len(target), 90))] = rng.randrange(256)
        elif action == 2 and len(target) > 1:
            del target[rng.randrange(1, len(target)) :]
        else:
            target.extend(rng.randbytes(rng.randint(1, 8)))
    return bytes(target)


def test_fuzz_both_programs_against_their_twins(namespaces: Namespaces) -> None:
    """A bounded fuzz target: 3000 seeded mutations (bit flips, byte changes, truncations,
    extensions) of valid datagrams, of the packets they carry, and of packets for peers, each
    through its program and its twin."""
    forwarding(namespaces.relay, True)
    config = relay_settings(
        fib_ifindex=socket.if_nametoindex("r0"), tun_l2_bytes=14, source=RELAY_IP, learn=True
    )
    rng = random.Random(4380)
    inner = [udp6(PEER, NATIVE, b"x" * 100), tcp6(PEER, NATIVE, b"y" * 1000), bubble(PEER, NATIVE)]
    learnable = [udp6(NEW_PEER, NATIVE, b"z" * 60), tcp6(NEW_PEER, NATIVE, b"w" * 500)]
    outbound = [udp6(NATIVE, PEER, b"x" * 100), tcp6(NATIVE, OTHER_PEER, b"y" * 1000),
                icmp6_echo(NATIVE, PEER)]  # fmt: skip
    with KernelDataPath.load(config, max_peers=1024) as path:
        bench = Bench(path, config, set())
        for round_ in range(1000):
            seed = rng.choice(inner)
            checksum = rng.random() < 0.5
            check_decap(bench, ethernet(udp4(_mutated(rng, seed), checksum=checksum)))
            check_decap(bench, _mutated(rng, ethernet(udp4(seed, checksum=checksum))))
            new = rng.choice(learnable)
            check_decap(bench, _mutated(rng, ethernet(udp4(new, NEW_PEER_MAPPING))))
            check_encap(bench, _mutated(rng, outbound[round_ % 3]))


# -- End to end ------------------------------------------------------------------------------


@dataclass
class Wire:
    """The relay side (this namespace) and the peer side of one test."""

    names: Namespaces
    tun: TunDevice
    path: KernelDataPath
    daemon: socket.socket  # the daemon's UDP socket, 198.51.100.1:3545
    sink: socket.socket  # a native UDP6 socket, [2001:db8:1::1]:9001
    raw: socket.socket  # AF_PACKET on p0, in the peer namespace

    def send_frame(self, packet: bytes) -> None:
        self.raw.send(ethernet(packet, destination=RELAY_MAC))

    def send_teredo(self, inner: bytes, source: tuple[str, int] = (PEER_IP, PEER_PORT)) -> None:
        self.send_frame(udp4(inner, source))

    def daemon_reads(self) -> bytes | None:
        return read_one(self.daemon)

    def tun_reads(self, wanted: Callable[[bytes], bool] = lambda packet: True) -> bytes | None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            select.select([self.tun.fileno()], [], [], 0.2)
            found: list[bytes] = []
            self.tun.drain(lambda view, into=found: into.append(bytes(view)))  # type: ignore[misc]
            for packet in found:
                if wanted(packet):
                    return packet
        return None

    def captured(self, wanted: Callable[[bytes], bool]) -> bytes | None:
        """The first frame p0 receives that `wanted` accepts."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.raw], [], [], 0.2)
            if ready:
                frame = self.raw.recv(65536)
                if wanted(frame):
                    return frame
        return None


def read_one(sock: socket.socket, timeout: float = WAIT) -> bytes | None:
    ready, _, _ = select.select([sock], [], [], timeout)
    return sock.recv(65536) if ready else None


def teredo_to_peer(frame: bytes) -> bool:
    return (
        frame[12:14] == b"\x08\x00"
        and frame[23] == 17
        and frame[36:38] == PEER_PORT.to_bytes(2, "big")
    )


def open_wire(
    names: Namespaces, *, offload: bool, local: tuple[str, int] = (RELAY_IP, RELAY_PORT)
) -> Wire:
    tun = open_tun("teredo", offload=offload)
    ip("link", "set", "teredo", "up")
    ip("-6", "route", "add", "2001::/32", "dev", "teredo")
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind((RELAY_IP, RELAY_PORT))
    sink = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sink.bind(("2001:db8:1::1", 9001))
    with inside(names.peer):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        raw.bind(("p0", 0))
    path = KernelDataPath.open(
        Role.RELAY,
        tun_ifindex=tun.index,
        ipv4_ifindexes=[socket.if_nametoindex("r0")],
        local=local,
    )
    return Wire(names, tun, path, daemon, sink, raw)


@pytest.fixture(params=[False, True], ids=["plain-tun", "offload-tun"])
def wire(request: pytest.FixtureRequest, namespaces: Namespaces) -> Iterator[Wire]:
    link = open_wire(namespaces, offload=request.param)
    try:
        yield link
    finally:
        close_wire(link)


def close_wire(link: Wire) -> None:
    link.path.close()
    for sock in (link.daemon, link.sink, link.raw):
        sock.close()
    link.tun.close()


def valid_checksums(frame: bytes) -> bool:
    """Outer IPv4 header and UDP checksums, and the inner TCP/UDP checksum."""
    outer = frame[14:]
    if internet_checksum(outer[:20]) != 0:
        return False
    pseudo = outer[12:20] + struct.pack("!xBH", 17, len(outer) - 20)
    if outer[26:28] != b"\0\0" and internet_checksum(pseudo + outer[20:]) != 0:
        return False
    inner = outer[28:]
    upper = inner[40:]
    inner_pseudo = inner[8:40] + struct.pack("!I3xB", len(upper), inner[6])
    return internet_checksum(inner_pseudo + upper) == 0


def test_a_mapped_peers_datagram_is_decapsulated_and_delivered(wire: Wire) -> None:
    before = time.monotonic()
    wire.path.set_peer(PEER, (PEER_IP, PEER_PORT), before - 5)
    wire.send_teredo(udp6(PEER, NATIVE, b"hello through the kernel"))
    assert read_one(wire.sink) == b"hello through the kernel"
    assert wire.daemon_reads() is None or False  # nothing for user space
    assert wire.path.counters()["decapsulated"] == 1
    last_rx = wire.path.last_rx(PEER)
    assert last_rx is not None and before <= last_rx <= time.monotonic()


@pytest.mark.parametrize("forward", [True, False], ids=["fib", "neigh"])
def test_packets_routed_into_the_tun_leave_encapsulated(wire: Wire, forward: bool) -> None:
    """UDP from a local socket, and TCP that the relay forwards from a native host: both reach
    the peer with correct outer and inner checksums. A local socket's TCP segment (and UDP when
    the TUN device has offloads) has a partial checksum, which the stack leaves for the
    reader to finish: it goes to user space, whole."""
    forwarding(wire.names.relay, forward)
    subprocess.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], check=True)
    ip("addr", "add", "2001:db8:9::1/64", "dev", "r0", "nodad")
    native = socket.inet_pton(socket.AF_INET6, "2001:db8:9::2")
    wire.path.set_peer(PEER, (PEER_IP, PEER_PORT), time.monotonic())
    with inside(wire.names.peer):
        native_raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with sender, listener, native_raw:
        sender.bind(("2001:db8:1::1", 9000))
        listener.bind(("2001:db8:1::1", 9100))
        listener.listen()
        native_raw.bind(("p0", 0))
        forwarded = tcp6(native, PEER, b"forwarded by the relay", flags=0x18)
        native_raw.send(ethernet(forwarded, kind=0x86DD, destination=RELAY_MAC))
        frame = wire.captured(teredo_to_peer)
        hop_limit_less = forwarded[:7] + bytes((forwarded[7] - 1,)) + forwarded[8:]
        assert frame is not None and frame[14 + 28 :] == hop_limit_less  # forwarded: hop - 1
        sender.sendto(b"to the peer", (socket.inet_ntop(socket.AF_INET6, PEER), 7777))
        udp_frame = wire.captured(teredo_to_peer)
        wire.send_teredo(tcp6(PEER, NATIVE))  # a SYN to port 9100: the SYN-ACK is local TCP
        syn_ack = wire.tun_reads(lambda p: PEER in p and len(p) >= 60)
    assert syn_ack is not None
    counters = wire.path.counters()
    frames = [frame] if wire.tun.vnet_hdr else [frame, udp_frame]
    assert counters["encapsulated"] == len(frames)
    assert counters["tx_checksum_incomplete"] == 3 - len(frames)
    for encapsulated in frames:
        assert encapsulated is not None and valid_checksums(encapsulated)
        assert encapsulated[20:22] == b"\0\0" and encapsulated[22] == 64  # DF off, TTL 64
        assert encapsulated[26:30] == socket.inet_aton(RELAY_IP)
        assert encapsulated[34:36] == RELAY_PORT.to_bytes(2, "big")
    if wire.tun.vnet_hdr:
        assert udp_frame is None


@pytest.mark.parametrize("forward", [True, False], ids=["fib", "neigh"])
def test_bound_to_any_address(namespaces: Namespaces, forward: bool) -> None:
    """Bound to 0.0.0.0, datagrams to any local address are taken, and encapsulated packets
    leave from the route's preferred source (the lookup's, or the interface's address)."""
    forwarding(namespaces.relay, forward)
    link = open_wire(namespaces, offload=False, local=("0.0.0.0", RELAY_PORT))
    try:
        link.path.set_peer(PEER, (PEER_IP, PEER_PORT), time.monotonic())
        link.send_teredo(udp6(PEER, NATIVE, b"to any"))
        assert read_one(link.sink) == b"to any"
        sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        with sender:
            sender.bind(("2001:db8:1::1", 9000))
            sender.sendto(b"from any", (socket.inet_ntop(socket.AF_INET6, PEER), 7777))
            frame = link.captured(teredo_to_peer)
        assert frame is not None and valid_checksums(frame)
        assert frame[26:30] == socket.inet_aton(RELAY_IP)
    finally:
        close_wire(link)


def test_what_the_kernel_passes_reaches_user_space_unchanged(wire: Wire) -> None:
    now = time.monotonic()
    wire.path.set_peer(PEER, (PEER_IP, PEER_PORT), now)
    wire.path.set_peer(OTHER_PEER, (PEER_IP, PEER_PORT + 1), now)
    wire.path.set_peer(STALE_PEER, (PEER_IP, PEER_PORT), now - 31)
    passed = {
        "rx_mapping_mismatch": udp6(OTHER_PEER, NATIVE, b"mismatch"),
        "rx_not_plain_ipv6": nonce_trailer(udp6(PEER, NATIVE, b"trailer")),
        "rx_unknown_peer": udp6(UNKNOWN_PEER, NATIVE, b"unknown"),
        "rx_not_served": udp6(PEER, MULTICAST, b"multicast"),
    }
    for payload in [*passed.values(), bubble(PEER, NATIVE)]:
        wire.send_teredo(payload)
        assert wire.daemon_reads() == payload
    counters = wire.path.counters()
    assert all(counters[reason] >= 1 for reason in passed) and counters["rx_not_plain_ipv6"] == 2
    assert counters["decapsulated"] == 0 and read_one(wire.sink, 0.2) is None

    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sender.bind(("2001:db8:1::1", 9000))
    with sender:
        sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, wire.tun.index)
        for destination in (UNKNOWN_PEER, STALE_PEER, socket.inet_pton(socket.AF_INET6, "ff0e::1")):
            sender.sendto(b"for user space", (socket.inet_ntop(socket.AF_INET6, destination), 7777))
            packet = wire.tun_reads(lambda p, d=destination: d in p)  # type: ignore[misc]
            assert packet is not None and packet.endswith(b"for user space")
    counters = wire.path.counters()
    assert counters["tx_unknown_peer"] >= 2 and counters["tx_stale_peer"] == 1
    assert counters["encapsulated"] == 0


def test_a_reception_revives_a_stale_peer(namespaces: Namespaces) -> None:
    wire = open_wire(namespaces, offload=False)  # complete UDP checksums: encapsulated
    try:
        revive(wire)
    finally:
        close_wire(wire)


def revive(wire: Wire) -> None:
    wire.path.set_peer(PEER, (PEER_IP, PEER_PORT), time.monotonic() - 40)
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sender.bind(("2001:db8:1::1", 9000))
    with sender:
        destination = (socket.inet_ntop(socket.AF_INET6, PEER), 7777)
        sender.sendto(b"stale", destination)
        assert wire.tun_reads(lambda p: p.endswith(b"stale")) is not None
        wire.send_teredo(udp6(PEER, NATIVE, b"I am back"))
        assert read_one(wire.sink) == b"I am back"
        sender.sendto(b"valid again", destination)
        assert wire.captured(lambda f: teredo_to_peer(f) and f.endswith(b"valid again"))
    assert wire.path.counters()["tx_stale_peer"] == 1


def test_a_datagram_with_a_partial_outer_checksum_is_decapsulated(wire: Wire) -> None:
    """From a peer's UDP socket over a veth the outer checksum is partial; the program does
    not check it (the inner packet's own checksums protect it end to end), so a peer running
    on a plain UDP socket (Miredo, a Windows client) takes the kernel's path too."""
    wire.path.set_peer(PEER, (PEER_IP, PEER_PORT), time.monotonic())
    payload = udp6(PEER, NATIVE, b"partial")
    with inside(wire.names.peer):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        sender.bind((PEER_IP, PEER_PORT))
        sender.sendto(payload, (RELAY_IP, RELAY_PORT))
        assert read_one(wire.sink) == b"partial"
    assert wire.path.counters()["decapsulated"] == 1


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_close_detaches_and_removes_only_what_it_created(namespaces: Namespaces, mode: str) -> None:
    tun = open_tun("teredo")
    try:
        ip("link", "set", "teredo", "up")
        subprocess.run(["tc", "qdisc", "add", "dev", "teredo", "clsact"], check=True)
        daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        daemon.bind((RELAY_IP, RELAY_PORT))
        with inside(namespaces.peer):
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            raw.bind(("p0", 0))
        with daemon, raw:
            path = KernelDataPath.open(
                Role.RELAY,
                tun_ifindex=tun.index,
                ipv4_ifindexes=[socket.if_nametoindex("r0")],
                local=(RELAY_IP, RELAY_PORT),
                attach_mode=mode,  # type: ignore[arg-type]
            )
            assert path.attach_modes == [mode, mode]
            path.set_peer(PEER, (PEER_IP, PEER_PORT), time.monotonic())
            payload = udp6(PEER, NATIVE, b"after close")
            path.close()
            raw.send(ethernet(udp4(payload), destination=RELAY_MAC))
            assert read_one(daemon) == payload  # nothing in the way any more
        assert "clsact" in qdiscs("teredo")  # it was there before: kept
        assert "clsact" not in qdiscs("r0")  # created for the filter (clsact mode): removed
    finally:
        tun.close()


def qdiscs(interface: str) -> str:
    return subprocess.run(
        ["tc", "qdisc", "show", "dev", interface], capture_output=True, text=True, check=True
    ).stdout


def test_unavailable_is_one_sentence(tmp_path: Path) -> None:
    require_root()
    with pytest.raises(KernelDataPathUnavailable) as missing:
        KernelDataPath.load(relay_settings(), object_path=tmp_path / "datapath.bpf.o")
    assert "was not built" in str(missing.value) and "\n" not in str(missing.value)
    with pytest.raises(KernelDataPathUnavailable, match="Ethernet"):
        KernelDataPath.open(Role.RELAY, tun_ifindex=1, ipv4_ifindexes=[1], local=(RELAY_IP, 1))


def test_maps_after_dropping_privileges() -> None:
    """Opened as root, then dropped to nobody keeping CAP_NET_ADMIN (as the daemons do): the
    map file descriptors still work, and close() still detaches."""
    require_datapath()
    child = r"""
import ctypes, json, os, socket, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x40000000) == 0  # CLONE_NEWNET: a namespace that dies with us
subprocess.run("ip link add r0 type veth peer name p0 && ip link set r0 up && ip link set lo up",
               shell=True, check=True)
from teredo.adapters.bpf import KernelDataPath
from teredo.bpf.datapath import Role
from teredo.adapters.privileges import drop_privileges
from teredo.adapters.tun import open_tun
tun = open_tun("teredo")
path = KernelDataPath.open(Role.CLIENT, tun_ifindex=tun.index,
                           ipv4_ifindexes=[socket.if_nametoindex("r0")],
                           local=("0.0.0.0", 3544), local_addresses=[bytes(16)])
drop_privileges("nobody", keep=("CAP_NET_ADMIN",))
peer = bytes(range(16))
report = {"uid": os.getuid(), "stored": path.set_peer(peer, ("192.0.2.1", 4000), 1234.5)}
report["last_rx"] = path.last_rx(peer)
report["batch"] = [(a.hex(), t) for a, t in path.last_rx_batch()]
report["removed"] = path.remove_peer(peer)
path.set_local_addresses([])
report["counters"] = sum(path.counters().values())
path.close()
print(json.dumps(report))
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["uid"] != 0
    assert report["stored"] is True and report["last_rx"] == 1234.5
    assert report["batch"] == [[bytes(range(16)).hex(), 1234.5]]
    assert report["removed"] is True and report["counters"] == 0


def test_a_relay_learns_a_new_peer_unless_its_map_is_full(namespaces: Namespaces) -> None:
    """A new source a relay can trust (RFC 4380 §5.2.3 rx case 3) is learned and taken; into
    a map full of peers it is passed to the daemon (counted in rx_peers_full), unchanged, and
    nothing is evicted for it."""
    config = relay_settings(tun_l2_bytes=14, source=RELAY_IP, learn=True)
    frame = ethernet(udp4(udp6(NEW_PEER, NATIVE, b"new"), NEW_PEER_MAPPING))
    with KernelDataPath.load(config, max_peers=4) as path:
        Bench(path, config, set()).load_peers()
        run, changed = counted(path, lambda: path.test_run("decap", frame))
        assert changed == {"decapsulated", "rx_learned"}
        assert run.action == TC_ACT_REDIRECT  # type: ignore[attr-defined]
        learned = path.learned_peer(NEW_PEER)
        assert learned is not None and learned[0] == NEW_PEER_MAPPING
        assert abs(learned[1] - time.monotonic()) < 60  # the clock of time.monotonic()
    with KernelDataPath.load(config, max_peers=3) as path:
        peers = Bench(path, config, set()).load_peers()
        assert python_decap_verdict(frame, config, peers, max_peers=3).reason == "rx_peers_full"
        run, changed = counted(path, lambda: path.test_run("decap", frame))
        assert changed == {"rx_peers_full"}
        assert (run.action, run.packet) == (TC_ACT_OK, frame)  # type: ignore[attr-defined]
        assert path.peer(NEW_PEER) is None and all(path.peer(address) for address in peers)


def test_last_rx_batch_walks_a_large_table(namespaces: Namespaces) -> None:
    with KernelDataPath.load(relay_settings(), max_peers=20000) as path:
        addresses = {bytes(12) + index.to_bytes(4, "big"): float(index) for index in range(10000)}
        for address, last_rx in addresses.items():
            assert path.set_peer(address, (PEER_IP, PEER_PORT), last_rx)
        assert dict(path.last_rx_batch(batch=1000)) == addresses
        full = KernelDataPath.load(relay_settings(), max_peers=2)
        with full:
            assert full.set_peer(PEER, (PEER_IP, 1), 1.0) and full.set_peer(
                OTHER_PEER, (PEER_IP, 1), 1.0
            )
            assert not full.set_peer(UNKNOWN_PEER, (PEER_IP, 1), 1.0)  # full: stays in user space
