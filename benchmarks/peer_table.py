"""Peer-table benchmark: memory per peer, inserts/s and lookups/s at 1 000 000 peers.

    .venv/bin/python benchmarks/peer_table.py [--peers N] [--json FILE]

Every peer is established as a relay holds it (rx case 3, `PeeringEngine.trust_peer`): created,
then trusted through `PeerTable.trust` at a mapping of its own (a distinct string, port and
tuple) at a time of its own (a distinct float). Memory is what tracemalloc sees the table hold,
keys included (the table keeps one 16-byte `bytes` per peer). It is printed three times: after
the fill; at rest, once a sweep has frozen the established peers (an int per entry instead of a
`Peer` around it, `teredo.core.peers`); and after churn (40 % of the peers replaced by new ones,
then one full idle sweep), as a relay holds its table after a while: CPython resizes a dict
that saw deletions to three times its entries, so at 1 M its slots cost more. Inserts and lookups
are the best of three passes, the garbage collector off.

Miredo's C peer list (libteredo with Judy arrays) measured on this kind of machine does about
1.76 M inserts/s and 2.05 M lookups/s (docs/lab-notes.md); the ratios printed are ours / those.
The target is at most 200 bytes per peer at 1 M peers, so that a relay with a million peers fits
in about 200 MB.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Iterator

from teredo.core.peers import PeerTable

MIREDO_INSERTS_PER_S = 1.76e6
MIREDO_LOOKUPS_PER_S = 2.05e6
PASSES = 3


def key(i: int) -> bytes:
    # Teredo addresses with distinct mappings, as a relay would see them.
    return (0x20010000 << 96 | 0xC6336402 << 64 | (i * 2654435761 & 0xFFFFFFFFFFFF)).to_bytes(
        16, "big"
    )


def mapping(i: int) -> tuple[str, int]:
    return (f"198.51.{(i >> 8) & 255}.{i & 255}", 1024 + (i & 0x7FFF))


def stamp(i: int) -> float:
    return 1.0 + i * 1e-6


def peers(count: int, first: int = 0) -> Iterator[tuple[bytes, tuple[str, int], float]]:
    for i in range(first, first + count):
        yield key(i), mapping(i), stamp(i)


def fill(table: PeerTable, items: Iterator[tuple[bytes, tuple[str, int], float]]) -> None:
    create = table.create
    trust = table.trust
    for address, mapped, now in items:
        trust(address, create(address, now), mapped, now)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1_000_000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    count = args.peers

    # Memory: keys, mappings and times are made on the fly, so only the table holds them.
    gc.collect()
    tracemalloc.start()
    table = PeerTable(max_peers=count)
    fill(table, peers(count))
    memory, _ = tracemalloc.get_traced_memory()
    table.sweep(stamp(count), budget=count)  # at rest: established peers are frozen
    rested, _ = tracemalloc.get_traced_memory()
    churn = count * 2 // 5
    for i in range(churn):
        table.remove(key(i))
    fill(table, peers(churn, first=count))
    table.sweep(stamp(count + churn), budget=count)  # nothing is idle
    churned, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(table) == count
    key_size = sys.getsizeof(key(0))
    del table
    gc.collect()

    # Speed: the inputs are made beforehand, so only the table's work is timed.
    items = list(peers(count))
    addresses = [address for address, _, _ in items]
    insert_time = lookup_time = float("inf")
    gc.disable()
    for _ in range(PASSES):
        table = PeerTable(max_peers=count)
        start = time.perf_counter()
        fill(table, iter(items))
        insert_time = min(insert_time, time.perf_counter() - start)
        get = table.get
        start = time.perf_counter()
        for address in addresses:
            get(address)
        lookup_time = min(lookup_time, time.perf_counter() - start)
        del table
        gc.enable()
        gc.collect()
        gc.disable()
    gc.enable()
    inserts = count / insert_time
    lookups = count / lookup_time

    result = {
        "peers": count,
        "bytes_per_peer": round(memory / count, 1),
        "bytes_per_peer_at_rest": round(rested / count, 1),
        "key_bytes_per_peer": key_size,
        "bytes_per_peer_after_churn": round(churned / count, 1),
        "inserts_per_s": round(inserts),
        "lookups_per_s": round(lookups),
        "inserts_ratio_vs_miredo": round(inserts / MIREDO_INSERTS_PER_S, 2),
        "lookups_ratio_vs_miredo": round(lookups / MIREDO_LOOKUPS_PER_S, 2),
    }
    print(f"{'peers':<28}{count:>14,}")
    print(f"{'bytes per peer':<28}{result['bytes_per_peer']:>14} (target <= 200)")
    print(f"{'  at rest (frozen)':<28}{result['bytes_per_peer_at_rest']:>14}")
    print(f"{'  of which the key':<28}{key_size:>14}")
    print(f"{'  after 40 % churn':<28}{result['bytes_per_peer_after_churn']:>14} (dict resized)")
    print(f"{'inserts/s':<28}{inserts:>14,.0f}  x{result['inserts_ratio_vs_miredo']} Miredo")
    print(f"{'lookups/s':<28}{lookups:>14,.0f}  x{result['lookups_ratio_vs_miredo']} Miredo")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
