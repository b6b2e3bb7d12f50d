"""Micro-benchmark of the kernel data path against a user-space copy loop (root).

    .venv/bin/python benchmarks/bpf_datapath.py [--seconds S] [--size BYTES] [--json FILE]

Two network namespaces joined by a veth pair; the relay side has a TUN device (no offloads)
and the daemon's socket address 198.51.100.1:3545, the peer side 198.51.100.2:40000. One
flood at a time, each for S seconds, from a sender that queues 256 packets per system call
(sendmmsg through ctypes):

CPU per packet (sender and copy loop together, from their rusage) is the fairer figure: the
kernel path runs in the sender's own system calls and softirqs, on its one CPU, while the copy
loop gets the second CPU. A baseline flood that nothing takes (decapsulation: into the
daemon's socket, full and never read; encapsulation: into the TUN queue, unread) gives the
sender's own share, so
"over baseline" is what each data path costs per packet. The programs' own cost comes from
BPF_PROG_TEST_RUN.

- **decapsulation**: Teredo datagrams (a UDP/IPv6 packet of BYTES of payload inside, full
  outer checksums, written as Ethernet frames on an AF_PACKET socket) from the peer to the
  relay. Counted: inner packets reaching the relay's IPv6 UDP layer (Udp6InDatagrams +
  Udp6RcvbufErrors of /proc/net/snmp6: the sink socket is not read), per second.
- **encapsulation**: UDP/IPv6 packets from a local socket on the relay side to the peer's
  Teredo address (routed into the TUN device). Counted: datagrams reaching the peer's UDP
  layer (InDatagrams + RcvbufErrors of /proc/net/snmp), per second.

Each is run through the kernel data path (`teredo.adapters.bpf`, the peer in its map) and
through the simplest user-space path there is: one Python process that copies
UDP -> TUN (or TUN -> UDP), one `recv_into`/`os.write` (or `os.read`/`send`) per packet:
an upper bound for any Python daemon. Figures depend on the machine and its load: compare
the two columns of one run. Nothing is written outside the two namespaces, which are
deleted at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv6Address
from typing import Any

from teredo.adapters.bpf import KernelDataPath
from teredo.bpf.datapath import DataPathSettings, Role, encapsulate
from teredo.core.wire import encode_ipv6_packet, internet_checksum

RELAY = ("198.51.100.1", 3545)
PEER = ("198.51.100.2", 40000)
RELAY_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")
NATIVE = IPv6Address("2001:db8:1::1")
TEREDO_PEER = IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2")
BATCH = 256
RELAY_NAMESPACE: list[str] = []  # the relay side's name, for the copy loop's process


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def flood(sock: socket.socket, packet: bytes, seconds: float) -> int:
    """Send `packet` on the connected or bound `sock`, BATCH per sendmmsg, for `seconds`."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(packet, len(packet))
    iovecs = (_Iovec * BATCH)()
    messages = (_Mmsghdr * BATCH)()
    for index in range(BATCH):
        iovecs[index].iov_base = ctypes.cast(buffer, ctypes.c_void_p)
        iovecs[index].iov_len = len(packet)
        messages[index].msg_hdr.msg_iov = ctypes.pointer(iovecs[index])
        messages[index].msg_hdr.msg_iovlen = 1
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        count = libc.sendmmsg(sock.fileno(), messages, BATCH, 0)
        if count > 0:
            sent += count
    return sent


def udp6(source: IPv6Address, destination: IPv6Address, payload: bytes) -> bytes:
    upper = bytearray((7777).to_bytes(2, "big") + (9001).to_bytes(2, "big"))
    upper += (8 + len(payload)).to_bytes(2, "big") + bytes(2) + payload
    pseudo = (
        source.packed + destination.packed + len(upper).to_bytes(4, "big") + bytes((0, 0, 0, 17))
    )
    upper[6:8] = (internet_checksum(pseudo + bytes(upper)) or 0xFFFF).to_bytes(2, "big")
    return encode_ipv6_packet(source, destination, 17, bytes(upper))


def ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True)


@contextmanager
def namespaces() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    relay, peer = f"bbpf-r-{tag}", f"bbpf-p-{tag}"
    ip("netns", "add", relay)
    ip("netns", "add", peer)
    try:
        ip("link", "add", "r0", "netns", relay, "type", "veth", "peer", "name", "p0", "netns", peer)
        for ns, name, mac, address in (
            (relay, "r0", RELAY_MAC, RELAY[0]),
            (peer, "p0", PEER_MAC, PEER[0]),
        ):
            ip("-n", ns, "link", "set", name, "address", mac.hex(":"), "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", name)
        ip("-n", relay, "addr", "add", f"{NATIVE}/128", "dev", "lo")
        ip("-n", relay, "neigh", "replace", PEER[0], "lladdr", PEER_MAC.hex(":"), "dev", "r0",
           "nud", "permanent")  # fmt: skip
        ip("-n", peer, "neigh", "replace", RELAY[0], "lladdr", RELAY_MAC.hex(":"), "dev", "p0",
           "nud", "permanent")  # fmt: skip
        yield relay, peer
    finally:
        for namespace in (peer, relay):  # each on its own: one failing leaves no other behind
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)


def enter(namespace: str) -> None:
    from pyroute2 import netns

    netns.setns(namespace)


def snmp(namespace: str, path: str, table: str, fields: tuple[str, ...]) -> int:
    """The sum of `fields` of `table` in /proc/net/snmp(6) of `namespace`."""
    text = subprocess.run(
        ["ip", "netns", "exec", namespace, "cat", path], capture_output=True, text=True, check=True
    ).stdout
    if path.endswith("snmp6"):
        values = dict(line.split() for line in text.splitlines() if line)
        return sum(int(values[table + field]) for field in fields)
    lines = [line.split() for line in text.splitlines() if line.startswith(table + ":")]
    header, numbers = lines[0][1:], lines[1][1:]
    return sum(int(numbers[header.index(field)]) for field in fields)


def in_child(namespace: str, work: Callable[[], object]) -> multiprocessing.process.BaseProcess:
    def run() -> None:
        enter(namespace)
        work()

    process = multiprocessing.get_context("fork").Process(target=run, daemon=True)
    process.start()
    return process


def copy_udp_to_tun(tun_fd: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(RELAY)
    buffer = bytearray(2048)
    view = memoryview(buffer)
    recv_into, write = sock.recv_into, os.write
    while True:
        size = recv_into(buffer)
        write(tun_fd, view[:size])


def copy_tun_to_udp(tun_fd: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(RELAY)
    sock.connect(PEER)
    os.set_blocking(tun_fd, True)
    read, send = os.read, sock.send
    while True:
        send(read(tun_fd, 2048))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    count: Callable[[], int],
    sender: Callable[[], multiprocessing.process.BaseProcess],
    seconds: float,
    loop: Callable[[], object] | None,
) -> tuple[float, float]:
    """Packets per second delivered, and CPU microseconds per delivered packet of the sender
    and the copy loop together (the kernel's work in their system calls and softirqs)."""
    cpu = children_cpu()
    copier = None
    if loop is not None:
        copier = in_child(RELAY_NAMESPACE[0], loop)
        time.sleep(0.3)
    before, start = count(), time.monotonic()
    sender().join(seconds + 5)
    time.sleep(0.2)  # what is in flight arrives
    delivered = count() - before
    rate = delivered / (time.monotonic() - start - 0.2)
    if copier is not None:
        copier.kill()
        copier.join()
    return rate, (children_cpu() - cpu) * 1e6 / max(delivered, 1)


def run(seconds: float, size: int) -> dict[str, Any]:
    from teredo.adapters.tun import open_tun

    results: dict[str, Any] = {"seconds": seconds, "payload_bytes": size}
    inner = udp6(TEREDO_PEER, NATIVE, bytes(size))
    frame = RELAY_MAC + PEER_MAC + b"\x08\x00" + encapsulate(inner, PEER, RELAY, 1)
    outbound = udp6(NATIVE, TEREDO_PEER, bytes(size))
    with namespaces() as (relay, peer):
        enter(relay)
        tun = open_tun("teredo")
        ip("link", "set", "teredo", "up", "txqueuelen", "1000")
        ip("-6", "route", "add", "2001::/32", "dev", "teredo")
        sink = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sink.bind((str(NATIVE), 9001))

        RELAY_NAMESPACE[:] = [relay]

        def send_frames() -> None:
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            raw.bind(("p0", 0))
            flood(raw, frame, seconds)

        def send_packets() -> None:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.bind((str(NATIVE), 9000))
            sock.connect((str(TEREDO_PEER), 7777))
            flood(sock, outbound, seconds)

        fields = ("InDatagrams", "RcvbufErrors")

        def decap(loop: Callable[[], object] | None, baseline: bool = False) -> tuple[float, float]:
            def count() -> int:
                if baseline:  # nothing takes them: the daemon's socket, full, never read
                    return snmp(relay, "/proc/net/snmp", "Udp", fields)
                return snmp(relay, "/proc/net/snmp6", "Udp6", fields)

            if not baseline:
                return measure(count, lambda: in_child(peer, send_frames), seconds, loop)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unread:
                unread.bind(RELAY)
                return measure(count, lambda: in_child(peer, send_frames), seconds, loop)

        def encap(loop: Callable[[], object] | None, baseline: bool = False) -> tuple[float, float]:
            def count() -> int:
                if baseline:  # nothing takes them: routed into the TUN queue, never read
                    return snmp(relay, "/proc/net/snmp6", "Ip6", ("OutRequests",))
                return snmp(peer, "/proc/net/snmp", "Udp", fields)

            return measure(count, lambda: in_child(relay, send_packets), seconds, loop)

        results["baseline_decap"] = decap(None, baseline=True)
        results["baseline_encap"] = encap(None, baseline=True)

        with in_namespace_socket(peer, PEER):
            path = KernelDataPath.open(
                Role.RELAY,
                tun_ifindex=tun.index,
                ipv4_ifindexes=[socket.if_nametoindex("r0")],
                local=RELAY,
            )
            with path:
                path.set_peer(TEREDO_PEER.packed, PEER, time.monotonic())
                results["kernel_decap"] = decap(None)
                path.set_peer(TEREDO_PEER.packed, PEER, time.monotonic())
                results["kernel_encap"] = encap(None)
                results["kernel_counters"] = {k: v for k, v in path.counters().items() if v}
            results["user_decap"] = decap(lambda: copy_udp_to_tun(tun.fd))
            results["user_encap"] = encap(lambda: copy_tun_to_udp(tun.fd))
        results["program_ns"] = program_cost(frame, outbound)
        tun.close()
    return results


def program_cost(frame: bytes, outbound: bytes) -> dict[str, int]:
    """The programs' own cost per packet taken: the median of 2000 single BPF_PROG_TEST_RUNs
    (repeating one run would re-run the program on the packet it already changed)."""
    fib = socket.if_nametoindex("r0")
    settings = DataPathSettings(
        role=Role.RELAY, local=RELAY, tun_ifindex=1, fib_ifindex=fib, tun_l2_bytes=14
    )
    subprocess.run(["sysctl", "-qw", "net.ipv4.conf.r0.forwarding=1"], check=True)
    inputs = {
        "decap": bytes(6) + frame[6:],
        "encap": bytes(12) + b"\x86\xdd" + outbound,
        "floor": bytes(12) + b"\x08\x06" + bytes(28),  # ARP: passed at once, the run's overhead
    }
    costs = {}
    with KernelDataPath.load(settings) as path:
        path.set_peer(TEREDO_PEER.packed, PEER, time.monotonic())
        for program, data in inputs.items():
            durations = []
            for _ in range(2000):
                run = path.test_run("decap" if program == "floor" else program, data)  # type: ignore[arg-type]
                assert run.action == (0 if program == "floor" else 7), path.counters()
                durations.append(run.duration_ns)
            costs[program] = sorted(durations)[len(durations) // 2]
    return costs


@contextmanager
def in_namespace_socket(namespace: str, address: tuple[str, int]) -> Iterator[socket.socket]:
    """A bound UDP socket in `namespace` that nobody reads: the encapsulated flood's sink."""
    from pyroute2 import netns

    netns.pushns(namespace)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    finally:
        netns.popns()
    with sock:
        sock.bind(address)
        yield sock


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per flood (default 3)")
    parser.add_argument("--size", type=int, default=64, help="inner UDP payload bytes (64)")
    parser.add_argument("--json", help="also write the results to this file")
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        print("bpf_datapath: run as root (namespaces, TUN, BPF)", file=sys.stderr)
        return 2
    results = run(arguments.seconds, arguments.size)
    print(f"{'':27} {'kpkt/s':>8} {'us CPU/pkt':>11} {'us over baseline':>17}")
    for direction in ("decap", "encap"):
        base = results[f"baseline_{direction}"][1]
        for arm, label in (("baseline", "nothing takes them"), ("kernel", "kernel data path"),
                           ("user", "user-space copy loop")):  # fmt: skip
            rate, cpu = results[f"{arm}_{direction}"]
            extra = "" if arm == "baseline" else f"{cpu - base:17.2f}"
            print(f"{direction} {label:21} {rate / 1e3:8.1f} {cpu:11.2f} {extra}")
    costs = results["program_ns"]
    print(
        f"program alone (test run, median ns): decap {costs['decap']}, encap {costs['encap']}, "
        f"a frame passed at once {costs['floor']}"
    )
    print("kernel counters:", results["kernel_counters"])
    if arguments.json:
        with open(arguments.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
