"""Peer-table benchmark: memory per peer, inserts/s and lookups/s at 1 000 000 peers.

    .venv/bin/python benchmarks/peer_table.py [--peers N] [--json FILE]

Miredo's C peer list (libteredo with Judy arrays) measured on this kind of machine does about
1.76 M inserts/s and 2.05 M lookups/s (LAB-NOTES.md); the ratios printed are ours / those.
Issue 7's target is at most 200 bytes per peer at 1 M peers.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc

from teredo.peers import PeerTable

MIREDO_INSERTS_PER_S = 1.76e6
MIREDO_LOOKUPS_PER_S = 2.05e6


def keys(count: int) -> list[bytes]:
    # Teredo addresses with distinct mappings, as a relay would see them.
    return [
        (0x20010000 << 96 | 0xC6336402 << 64 | (i * 2654435761 & 0xFFFFFFFFFFFF)).to_bytes(
            16, "big"
        )
        for i in range(count)
    ]


def fill(table: PeerTable, addresses: list[bytes]) -> None:
    for i, address in enumerate(addresses):
        peer = table.create(address, 0.0)
        peer.trust((f"198.51.{(i >> 8) & 255}.{i & 255}", 1024 + (i & 0x7FFF)), 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1_000_000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    addresses = keys(args.peers)

    gc.collect()
    tracemalloc.start()
    table = PeerTable(max_peers=args.peers)
    fill(table, addresses)
    memory, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del table
    gc.collect()

    table = PeerTable(max_peers=args.peers)
    gc.disable()
    start = time.perf_counter()
    fill(table, addresses)
    inserts = args.peers / (time.perf_counter() - start)
    get = table.get
    start = time.perf_counter()
    for address in addresses:
        get(address)
    lookups = args.peers / (time.perf_counter() - start)
    gc.enable()

    result = {
        "peers": args.peers,
        "bytes_per_peer": round(memory / args.peers, 1),
        "inserts_per_s": round(inserts),
        "lookups_per_s": round(lookups),
        "inserts_ratio_vs_miredo": round(inserts / MIREDO_INSERTS_PER_S, 2),
        "lookups_ratio_vs_miredo": round(lookups / MIREDO_LOOKUPS_PER_S, 2),
    }
    print(f"{'peers':<28}{args.peers:>14,}")
    print(f"{'bytes per peer':<28}{result['bytes_per_peer']:>14} (target <= 200)")
    print(f"{'inserts/s':<28}{inserts:>14,.0f}  x{result['inserts_ratio_vs_miredo']} Miredo")
    print(f"{'lookups/s':<28}{lookups:>14,.0f}  x{result['lookups_ratio_vs_miredo']} Miredo")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
