"""The whole reachability matrix of the lab's NAT kinds, Miredo's clients against ours.

For every unordered pair of NAT kinds (the diagonal included) and each implementation, one lab
is built with that implementation in every role (`teredo.lab.matrix.measure_pair`: client 1
initiates toward client 2, then both restart and client 2 initiates toward client 1, and every
Teredo<->native path is pinged too); then, for every kind, both clients behind one NAT of that
kind, with and without hairpinning. Several labs run at once (--jobs). Prints Markdown tables,
one row per ordered pair (initiator's NAT first) with RFC 6081 Figure 1's cell, and writes the
JSON under benchmarks/results/.

    bash scripts/bench --matrix [--jobs N] [--impl miredo,ours] [--kinds a,b,...]

Run as root.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tunnel import RESULTS_DIR, machine, progress, random_lab_name

from teredo.lab.matrix import CELL_REASONS, figure_cell, measure_pair
from teredo.lab.topology import NatKind

IMPLS = ("miredo", "ours")


def measure(
    nat1: NatKind, nat2: NatKind, impl: str, hairpinning: bool | None = None
) -> dict[str, Any]:
    """One lab; `hairpinning` None: client 2 behind NAT2, else behind NAT1 too."""
    started = time.monotonic()
    try:
        paths = measure_pair(
            random_lab_name("mx"),
            nat1,
            nat2,
            impl,
            same_nat=hairpinning is not None,
            hairpinning=bool(hairpinning),
        )
        error = None
    except Exception as failure:  # one lab's failure is a result, not the end of the run
        paths, error = {}, f"{type(failure).__name__}: {failure}"
    seconds = time.monotonic() - started
    result = {
        "nat1": nat1.value,
        "nat2": nat2.value,
        "impl": impl,
        "same_nat": hairpinning is not None,
        "hairpinning": hairpinning,
        "paths": {f"{a}->{b}": ok for (a, b), ok in paths.items()},
        "error": error,
        "seconds": round(seconds, 1),
    }
    where = f"{nat2.value:<20}" if hairpinning is None else f"same NAT, hairpinning {hairpinning}"
    progress(f"{impl:6} {nat1.value:>20} | {where} {result['paths'] or error}")
    return result


def directed(results: list[dict[str, Any]]) -> dict[tuple[str, str, str], bool | None]:
    """(initiator's NAT, responder's NAT, impl) -> client to client works? (None: no lab)."""
    cells: dict[tuple[str, str, str], bool | None] = {}
    for r in results:
        if r.get("same_nat"):
            continue
        paths = r["paths"]
        cells[r["nat1"], r["nat2"], r["impl"]] = paths.get("cli1->cli2")
        cells[r["nat2"], r["nat1"], r["impl"]] = paths.get("cli2->cli1")
    return cells


def native_ok(results: list[dict[str, Any]], kind: str, impl: str) -> bool | None:
    """Whether every Teredo<->native path of clients behind `kind` worked in every lab."""
    seen: list[bool] = []
    for r in results:
        if r["impl"] != impl or not r["paths"]:
            continue
        for node, nat in (("cli1", r["nat1"]), ("cli2", r["nat2"])):
            if nat == kind:
                seen += [r["paths"][f"{node}->v6"], r["paths"][f"v6->{node}"]]
    return all(seen) if seen else None


def _mark(ok: bool | None) -> str:
    return "?" if ok is None else ("works" if ok else "fails")


# Short column names for the grid (the rows spell the kinds out).
SHORT = {
    "fullcone": "cone",
    "restricted": "a-rest",
    "port-restricted": "p-rest",
    "upnp-port-restricted": "upnp-p-rest",
    "upnp-symmetric": "upnp-sym",
    "symmetric-preserving": "pp-sym",
    "symmetric-sequential": "seq-sym",
    "symmetric": "sym",
    "address-symmetric": "a-sym",
    "none": "none",
}


def table(results: list[dict[str, Any]], kinds: list[NatKind], impls: list[str]) -> str:
    """A grid: initiator's NAT per row, responder's per column; each cell is Figure 1's
    verdict then, per implementation, + (ping answered) or - (not)."""
    cells = directed(results)
    header = ["initiator \\ responder", *(SHORT.get(k.value, k.value) for k in kinds)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for source in kinds:
        row = [f"{source}"]
        for destination in kinds:
            marks = "/".join(
                {None: "?", True: "+", False: "-"}[cells.get((source.value, destination.value, i))]
                for i in impls
            )
            row.append(f"{figure_cell(source, destination)} {marks}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("| both clients behind | hairpinning | " + " | ".join(impls) + " |")
    lines.append("|" + " --- |" * (2 + len(impls)))
    same = {
        (r["nat1"], r["hairpinning"], r["impl"]): r["paths"] for r in results if r.get("same_nat")
    }
    for kind in kinds:
        for hairpinning in (True, False):
            both: list[str] = []
            for impl in impls:
                paths = same.get((kind.value, hairpinning, impl))
                both.append(
                    "?"
                    if paths is None
                    else f"{_mark(paths.get('cli1->cli2'))} / {_mark(paths.get('cli2->cli1'))}"
                )
            yes = "yes" if hairpinning else "no"
            lines.append(f"| {kind} | {yes} | " + " | ".join(both) + " |")
    lines.append("")
    lines.append("| NAT | Teredo <-> native, " + ", ".join(impls) + " |")
    lines.append("| --- | --- |")
    for kind in kinds:
        natives = ", ".join(_mark(native_ok(results, kind.value, i)) for i in impls)
        lines.append(f"| {kind} | {natives} |")
    lines.append("")
    lines += [f"- {cell}: {reason}" for cell, reason in CELL_REASONS.items()]
    return "\n".join(lines)


def commit() -> str:
    here = Path(__file__).resolve().parent
    result = subprocess.run(
        ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3, help="labs at once (default 3)")
    parser.add_argument(
        "--impl", default=",".join(IMPLS), help="implementations, comma-separated (miredo,ours)"
    )
    parser.add_argument(
        "--kinds",
        default=",".join(kind.value for kind in NatKind),
        help="NAT kinds, comma-separated (default: every kind)",
    )
    parser.add_argument(
        "--no-same-nat", action="store_true", help="skip the labs with both clients behind one NAT"
    )
    args = parser.parse_args(argv)
    try:
        kinds = [NatKind(kind) for kind in args.kinds.split(",")]
    except ValueError as error:
        print(f"matrix: {error}; kinds are {', '.join(NatKind)}", file=sys.stderr)
        return 2
    impls = args.impl.split(",")
    if not set(impls) <= set(IMPLS) or args.jobs < 1:
        print("matrix: --impl takes miredo and/or ours, --jobs at least 1", file=sys.stderr)
        return 2
    pairs = list(itertools.combinations_with_replacement(kinds, 2))
    jobs: list[tuple[NatKind, NatKind, str, bool | None]] = [
        (a, b, impl, None) for impl in impls for a, b in pairs
    ]
    if not args.no_same_nat:
        jobs += [(k, k, impl, h) for impl in impls for k in kinds for h in (True, False)]
    progress(f"{len(jobs)} labs, {args.jobs} at a time")
    started = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: measure(*job), jobs))
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    document: dict[str, Any] = {
        "date": date,
        "commit": commit(),
        "machine": machine(),
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"matrix-{date.replace(':', '')}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(table(results, kinds, impls))
    print(f"\n{len(jobs)} labs in {document['seconds']} s, commit {document['commit']}; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
