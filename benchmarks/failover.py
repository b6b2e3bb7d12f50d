"""Anycast relay failover, ours against Miredo as relays: how long pings stop, how many are lost.

    .venv/bin/python benchmarks/failover.py [--rounds N] [--events E,...] [--impls ours,miredo]
                                            [--quick] [--json FILE]
    bash scripts/bench --failover [ARGS]

Each arm builds a lab with two relay sites (`teredo lab up --relays 2`: relay1 and relay2 each
announce 2001::/32 to the router by eBGP with BFD, BIRD 2; the router prefers relay1), both
relays run by one implementation and every other role by ours. The native host pings client1
every 10 ms; each event (`teredo.lab.failover`) breaks relay1, the router moves to relay2, then
relay1 is repaired and the router moves back:

- kill: kill -9 of relay1's daemon;
- site-down: relay1's link to the router down (the router loses carrier);
- silent: relay1's node drops everything on a link that stays up (only BFD notices);
- sigterm: SIGTERM to relay1's daemon (ours withdraws, drains 2 s, exits);
- ipv4-gone: relay1's IPv4 address removed, its daemon, link and BGP session kept (a relay
  that judges its health withdraws; one that does not keeps attracting traffic it drops).

First the pings alone (the baseline: the longest gap the machine's own jitter makes), then per
event: the longest time without a reply and the pings lost while the router moves away
(median over rounds; "never" when the pings had not resumed when the arm stopped waiting, 3 s
after the router should have moved) and the same for the return. Rounds alternate the order of
the implementations. Numbers only, no thresholds: the machine is shared.
Needs root, BIRD 2 (bird2), nftables and Miredo.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchlib import (
    bench_main,
    exit_status,
    median,
    render_table,
    require_root_and_tools,
    run_arm_lab,
    save_report,
)
from tunnel import RESULTS_DIR, machine, progress, random_lab_name

from teredo.core.errors import UsageError, UserError
from teredo.lab.failover import EVENT_TEXT, Event, run_event, steady
from teredo.lab.lab import Lab

IMPLS: Final = ("ours", "miredo")
BASELINE: Final = "baseline"
BASELINE_TEXT: Final = "nothing broken (baseline)"
REQUIRED_TOOLS: Final = ("ip", "nft", "bird", "birdc", "miredo", "ping")


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int
    events: tuple[Event, ...]
    impls: tuple[str, ...]
    json_path: Path


@dataclass(slots=True)
class Arm:
    round: int
    impl: str
    lab: str
    baseline: dict[str, Any] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_arm(round_: int, impl: str, settings: Settings) -> Arm:
    arm = Arm(round_, impl, random_lab_name("fail"))
    progress(f"round {round_}, relays {impl}: lab {arm.lab}")
    lab = Lab(
        arm.lab,
        relays=2,
        relay=impl,
        progress=lambda message: progress(f"  {message}"),
    )

    def work() -> None:
        client = lab.teredo_address("cli1")
        if client is None:
            raise UserError("client1 has no Teredo address")
        baseline = steady(lab, client)
        arm.baseline = {
            "gap_s": round(baseline.longest_gap, 4),
            "unanswered": baseline.unanswered,
        }
        progress(
            f"  baseline: longest gap {baseline.longest_gap * 1000:.0f} ms, "
            f"{baseline.unanswered} unanswered"
        )
        for event in settings.events:
            result = run_event(lab, event, client)
            away, back = result.away, result.back
            arm.events[event.value] = {
                "away_gap_s": round(away.longest_gap, 4),
                "away_resumed": away.ended,
                "away_lost": away.lost,
                "away_unanswered": away.unanswered,
                "served_by": result.served_by,
                "back_gap_s": round(back.longest_gap, 4),
                "back_lost": back.lost,
                "returned_to": result.returned_to,
            }
            gap = f"{away.longest_gap * 1000:.0f} ms" if away.ended else "never resumed"
            progress(
                f"  {event.value}: away via {result.served_by}, longest gap {gap}, "
                f"{away.unanswered} unanswered; back to {result.returned_to}, longest gap "
                f"{back.longest_gap * 1000:.0f} ms, {back.lost} lost"
            )

    run_arm_lab(lab, arm, work, progress)
    return arm


def summarize(arms: list[Arm], settings: Settings) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"event": BASELINE}]
    for impl in settings.impls:
        measured = [a.baseline for a in arms if a.impl == impl and a.baseline]
        rows[0][impl] = {
            "tries": len(measured),
            "resumed": len(measured),
            "away_gap_s": median(b["gap_s"] for b in measured),
            "away_unanswered": median(b["unanswered"] for b in measured),
            "back_gap_s": None,
            "back_lost": None,
        }
    for event in settings.events:
        row: dict[str, Any] = {"event": event.value}
        for impl in settings.impls:
            results = [a.events[event.value] for a in arms if a.impl == impl and event in a.events]
            resumed = [r for r in results if r["away_resumed"]]
            row[impl] = {
                "tries": len(results),
                "resumed": len(resumed),
                "away_gap_s": median(r["away_gap_s"] for r in resumed),
                "away_unanswered": median(r["away_unanswered"] for r in results),
                "back_gap_s": median(r["back_gap_s"] for r in results),
                "back_lost": max((r["back_lost"] for r in results), default=None),
            }
        rows.append(row)
    return rows


def _gap(figures: dict[str, Any] | None, key: str) -> str:
    if not figures or not figures["tries"]:
        return "-"
    if key == "away_gap_s" and figures["resumed"] < figures["tries"]:
        if not figures["resumed"]:
            return "never"
        return f"{figures[key] * 1000:.0f} ms ({figures['tries'] - figures['resumed']} never)"
    return f"{figures[key] * 1000:.0f} ms" if figures[key] is not None else "-"


def _count(figures: dict[str, Any] | None, key: str) -> str:
    if not figures or figures[key] is None:
        return "-"
    return f"{figures[key]:g}"


def table(rows: list[dict[str, Any]], impls: tuple[str, ...]) -> str:
    header = ["event (relay1 broken, then repaired)"]
    for impl in impls:
        header += [f"{impl}: longest gap", "unanswered", "back: gap", "lost"]
    lines = []
    for row in rows:
        cells = [BASELINE_TEXT if row["event"] == BASELINE else EVENT_TEXT[Event(row["event"])]]
        for impl in impls:
            figures = row.get(impl)
            cells += [
                _gap(figures, "away_gap_s"),
                _count(figures, "away_unanswered"),
                _gap(figures, "back_gap_s"),
                _count(figures, "back_lost"),
            ]
        lines.append(cells)
    return render_table(header, lines)


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Anycast relay failover in a lab with two relay sites, ours vs Miredo.",
    )
    parser.add_argument("--rounds", type=int, help="rounds per implementation (default 3)")
    parser.add_argument(
        "--events",
        default=",".join(Event),
        help=f"comma-separated events, in order (default all: {','.join(Event)})",
    )
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help="who runs the relays (default ours,miredo)"
    )
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--json", type=Path, help="where to write the raw values")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if not 1 <= rounds <= 20:
        raise UsageError("--rounds must be between 1 and 20")
    try:
        events = tuple(Event(name) for name in args.events.split(","))
    except ValueError:
        raise UsageError(f"--events takes {', '.join(Event)}") from None
    impls = tuple(args.impls.split(","))
    if not impls or any(impl not in IMPLS for impl in impls):
        raise UsageError("--impls takes ours, miredo or both")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Settings(
        rounds=rounds,
        events=events,
        impls=impls,
        json_path=args.json or RESULTS_DIR / f"failover-{stamp}.json",
    )


def run(settings: Settings) -> int:
    require_root_and_tools(REQUIRED_TOOLS if "miredo" in settings.impls else REQUIRED_TOOLS[:-2])
    report: dict[str, Any] = {
        "benchmark": "failover",
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "rounds": settings.rounds,
            "events": [e.value for e in settings.events],
            "impls": list(settings.impls),
        },
    }
    arms: list[Arm] = []
    interrupted = False
    started = time.monotonic()
    try:
        for round_ in range(1, settings.rounds + 1):
            order = settings.impls if round_ % 2 else tuple(reversed(settings.impls))
            for impl in order:
                arms.append(run_arm(round_, impl, settings))
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted: the labs built so far are torn down; writing what was measured")
    rows = summarize(arms, settings)
    left = save_report(report, arms, rows, interrupted, settings.json_path)
    print(table(rows, settings.impls))
    print()
    info = report["machine"]
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), kernel {info['kernel']}, "
        f"{info['miredo']}, teredo {info['commit']}; load average {info['loadavg_start'][0]:.2f} "
        f"at start, {info['loadavg_end'][0]:.2f} at end; {time.monotonic() - started:.0f} s"
    )
    print(
        f"settings: {settings.rounds} rounds (medians), pings every 10 ms from the native host "
        "to client1; BFD 100 ms x 3; the clients and the server are ours"
    )
    print(f"raw values: {settings.json_path}")
    failures = [f"{a.impl} round {a.round}: {e}" for a in arms for e in a.errors]
    return exit_status(failures, left, interrupted)


def main(argv: list[str] | None = None) -> int:
    return bench_main(lambda: parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
