"""Micro-benchmark of the peering engine's fast paths, the data path for trusted peers.

    .venv/bin/python benchmarks/fast_path.py [--peers N] [--packets N] [--json FILE]

Measures, for a relay core with N trusted peers (no I/O at all):

- `forward_to_teredo` (native -> Teredo, a trusted peer: the per-packet cost on the TUN side),
- `accept_from_teredo` (Teredo -> native: the per-packet cost on the UDP side),
- and, for scale, the full paths `send_ipv6` and `receive_datagram` on the same packets;
- and what strangers cost, each packet from or to someone new, with the table full
  (`--peers` entries, all established): a bubble from a new self-consistent Teredo source
  (consumed, no state), a data packet from a new source (a new entry, evicting one on
  probation), and a packet toward a new Teredo destination (queued, setup within the budget).

Prints nanoseconds per packet and packets per second per core. The fast paths are the one place
where the core answers with a single call and builds no event or parsed object, for speed; this
benchmark is what keeps them honest. The interpreter's share of a relayed packet should stay well
below the ~10 us Miredo spends per packet, mostly in system calls (docs/lab-notes.md): if a
change makes the fast path much slower, this shows it. The end-to-end comparison with Miredo in
the lab is `benchmarks/tunnel.py` (`bash scripts/bench`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from teredo.core.address import encode_teredo_address
from teredo.core.peering import PeeringSettings
from teredo.core.relay import TeredoRelay
from teredo.core.wire import encode_bubble, encode_ipv6_packet

NATIVE = IPv6Address("2001:db8:2::2")
PAYLOAD = bytes(64)  # a 64-byte UDP-sized payload


def build(peers: int) -> tuple[TeredoRelay, list[bytes], list[bytes], list[tuple[str, int]]]:
    relay = TeredoRelay(
        PeeringSettings(max_peers=max(peers, 1)),
        random_bytes=lambda n: bytes(n),
        secret=b"s" * 32,
        now=0.0,
    )
    outbound, inbound, sources = [], [], []
    for i in range(peers):
        ip = IPv4Address(0xCB007100 + (i >> 16))  # 203.0.113.x and beyond: global
        port = 1024 + (i & 0xFFFF) % 60000
        address = encode_teredo_address(IPv4Address("198.51.100.2"), ip, port)
        source = (str(ip), port)
        relay.receive_datagram(encode_ipv6_packet(address, NATIVE, 17, PAYLOAD), source, 0.0)
        outbound.append(encode_ipv6_packet(NATIVE, address, 17, PAYLOAD))
        inbound.append(encode_ipv6_packet(address, NATIVE, 17, PAYLOAD))
        sources.append(source)
    relay.packets_to_deliver()
    return relay, outbound, inbound, sources


def measure(run: Callable[[int], None], packets: int) -> float:
    """Seconds per packet, best of 3."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(packets)
        best = min(best, (time.perf_counter() - start) / packets)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    relay, outbound, inbound, sources = build(args.peers)
    count = len(outbound)
    now = 1.0

    def forward(n: int) -> None:
        fn = relay.forward_to_teredo
        for i in range(n):
            fn(outbound[i % count], now)

    def accept(n: int) -> None:
        fn = relay.accept_from_teredo
        for i in range(n):
            j = i % count
            fn(inbound[j], sources[j], now)

    def forward_view(n: int) -> None:
        fn = relay.forward_to_teredo
        views = [memoryview(p) for p in outbound]
        for i in range(n):
            fn(views[i % count], now)

    def full_send(n: int) -> None:
        fn = relay.send_ipv6
        for i in range(n):
            fn(outbound[i % count], now)
            if i & 1023 == 0:
                relay.datagrams_to_send()
        relay.datagrams_to_send()

    def full_receive(n: int) -> None:
        fn = relay.receive_datagram
        for i in range(n):
            j = i % count
            fn(inbound[j], sources[j], now)
            if i & 1023 == 0:
                relay.packets_to_deliver()
        relay.packets_to_deliver()

    strangers = TeredoRelay(
        PeeringSettings(max_peers=max(args.peers, 1)),
        random_bytes=lambda n: bytes(n),
        secret=b"s" * 32,
        now=0.0,
    )
    for packet, source in zip(inbound, sources, strict=True):  # fill the table
        strangers.receive_datagram(packet, source, 0.0)
    strangers.packets_to_deliver()

    def stranger(n: int, kind: int) -> tuple[bytes, tuple[str, int]]:
        ip = IPv4Address(0x64400000 + (n >> 14))  # 100.64/10: global for RFC 4380
        port = 1024 + (n & 0x3FFF)
        address = encode_teredo_address(IPv4Address("198.51.100.2"), ip, port)
        if kind == 0:
            return encode_bubble(address, NATIVE), (str(ip), port)
        if kind == 1:
            return encode_ipv6_packet(address, NATIVE, 17, PAYLOAD), (str(ip), port)
        return encode_ipv6_packet(NATIVE, address, 17, PAYLOAD), (str(ip), port)

    def new_sources(kind: int, n: int) -> None:
        packets = [stranger(kind << 22 | i, kind) for i in range(n)]
        fn = strangers.receive_datagram
        start = time.perf_counter()
        for packet, source in packets:
            fn(packet, source, now)
        stranger_seconds[kind] = (time.perf_counter() - start) / n
        strangers.packets_to_deliver()

    def new_destinations(n: int) -> None:
        packets = [stranger(2 << 22 | i, 2)[0] for i in range(n)]
        fn = strangers.send_ipv6
        start = time.perf_counter()
        for i, packet in enumerate(packets):
            fn(packet, now)
            if i & 1023 == 0:
                strangers.datagrams_to_send()
        stranger_seconds[2] = (time.perf_counter() - start) / n
        strangers.datagrams_to_send()

    stranger_seconds = [0.0, 0.0, 0.0]
    count_strangers = max(1000, args.packets // 10)
    new_sources(0, count_strangers)
    new_sources(1, count_strangers)
    new_destinations(count_strangers)

    results = {}
    for name, seconds in (
        ("stranger: bubble from a new source", stranger_seconds[0]),
        ("stranger: data from a new source", stranger_seconds[1]),
        ("stranger: packet to a new destination", stranger_seconds[2]),
    ):
        results[name] = {"ns_per_packet": round(seconds * 1e9), "packets_per_s": round(1 / seconds)}
    assert len(strangers.peers) <= strangers.peers.max_peers
    for name, run, packets in (
        ("forward_to_teredo", forward, args.packets),
        ("forward_to_teredo (memoryview)", forward_view, args.packets),
        ("accept_from_teredo", accept, args.packets),
        ("send_ipv6 (full path)", full_send, args.packets // 4),
        ("receive_datagram (full path)", full_receive, args.packets // 4),
    ):
        seconds = measure(run, packets)
        results[name] = {"ns_per_packet": round(seconds * 1e9), "packets_per_s": round(1 / seconds)}
    assert relay.fast_tx and relay.fast_rx, "the fast paths were not taken"
    width = max(len(name) for name in results)
    print(f"peering engine, {args.peers} trusted peers (a full table), 64-byte payloads")
    for name, row in results.items():
        rate = row["packets_per_s"]
        print(f"  {name:<{width}}  {row['ns_per_packet']:>6} ns/packet  {rate:>10,} /s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"peers": args.peers, "results": results}, file, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
