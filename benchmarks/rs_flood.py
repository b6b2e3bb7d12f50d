"""Same-run benchmark of the Teredo server under a Router Solicitation flood, ours against Miredo.

    .venv/bin/python benchmarks/rs_flood.py [--rounds N] [--seconds S] [--clients N] [--rate PPS]
                                            [--json FILE]

Two labs are built (`teredo.lab.lab.Lab`), one where this project runs the server and one where
`miredo-server` does; every other role is ours in both. Then each round floods one, then the
other, in alternating order (round 1 ours first, round 2 Miredo first, ...), so that what else
the machine does at the time touches both alike. Each time, the C generator
`benchmarks/flood.c` (mode `rs`, compiled once per run) runs on the native host "v6" and sends
Router Solicitations (RFC 4380 §5.2.1: a nonce-only authentication header, fe80::ffff:ffff:ffff
to ff02::2) to the server's primary address from `--clients` spoofed sources (default 65 536:
mappings in 100.64.0.0/10, four ports per address), as fast as it can (or at `--rate`), for
`--seconds`. The router sends the answers for 100.64.0.0/10 back to "v6", where an nftables
counter counts the Router Advertisements from the server's port 3544 and drops them.

Per arm: RS/s offered (the generator's count), RAs/s answered (the counter, over the flood),
the share answered, and the server's CPU (utime + stime of its process group, /proc) per RA
and in all. Prints a table of medians over rounds with the ratio ours/Miredo. The machine is
shared and the two CPUs also run the generator and the kernel's forwarding: figures move 10-20 %
between runs, compare the ratios within one run. Needs root, gcc, nftables and miredo-server.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tunnel import (
    RESULTS_DIR,
    cpu_seconds_between,
    group_cpu_ticks,
    machine,
    progress,
    random_lab_name,
)

from teredo.core.address import TEREDO_PORT
from teredo.core.errors import UserError
from teredo.lab.lab import Lab
from teredo.lab.topology import NATIVE_IPV4, SERVER_IPV4, SERVER_IPV4_2

IMPLS: Final = ("ours", "miredo")
FLOOD_SOURCE: Final = Path(__file__).resolve().parent / "flood.c"
FAKE_CLIENTS: Final = "100.64.0.0/10"  # flood.c's range of spoofed sources (RFC 6598)
FLOOD_NODE: Final = "v6"
SETTLE: Final = 0.5  # seconds after the flood for the server's queue to drain
REQUIRED_TOOLS: Final = ("ip", "nft", "gcc", "miredo", "miredo-server")

# On "v6": count and drop the server's answers to the spoofed sources before routing.
COUNTER_RULESET: Final = f"""
table ip rsflood {{
    counter answers {{ }}
    chain prerouting {{
        type filter hook prerouting priority -300; policy accept;
        ip saddr {{ {SERVER_IPV4}, {SERVER_IPV4_2} }} udp sport {TEREDO_PORT} \
ip daddr {FAKE_CLIENTS} counter name answers drop
    }}
}}
"""

_FLOOD_LINE = re.compile(r"flood mode=rs sent=(\d+) failed=(\d+) seconds=([\d.]+)")
_COUNTER = re.compile(r"packets (\d+) bytes (\d+)")


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int
    seconds: float
    clients: int
    rate: int
    json_path: Path


@dataclass(slots=True)
class Arm:
    round: int
    impl: str
    lab: str
    figures: dict[str, float | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def compile_flood(directory: Path) -> Path:
    binary = directory / "flood"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(FLOOD_SOURCE)],
        check=True,
        capture_output=True,
        text=True,
    )
    return binary


def answers_counted(lab: Lab) -> int:
    result = lab.exec(FLOOD_NODE, ["nft", "list", "counter", "ip", "rsflood", "answers"])
    match = _COUNTER.search(result.stdout)
    if match is None:
        raise UserError(f"cannot read the answer counter on {FLOOD_NODE}: {result.stderr.strip()}")
    return int(match.group(1))


def server_group(lab: Lab) -> tuple[int, str]:
    for entry in lab.status()["roles"]:
        if entry["role"] == "server":
            return int(entry["pid"]), lab.namespace(entry["node"])
    raise UserError("the lab has no server")


def prepare(lab: Lab) -> None:
    """Route the spoofed range to the flooding node and count the answers there."""
    lab.exec("inet", ["ip", "route", "add", FAKE_CLIENTS, "via", str(NATIVE_IPV4)], check=True)
    lab.exec(FLOOD_NODE, ["nft", "-f", "-"], input=COUNTER_RULESET, check=True)


def measure(lab: Lab, arm: Arm, flood: Path, settings: Settings) -> None:
    pgid, namespace = server_group(lab)
    argv = [
        str(flood), "-m", "rs", "-n", str(settings.clients), "-t", f"{settings.seconds:g}",
        "-r", str(settings.rate), "-S", str(SERVER_IPV4), "-R", f"{SERVER_IPV4}:{TEREDO_PORT}",
    ]  # fmt: skip
    answered_before = answers_counted(lab)
    cpu_before = group_cpu_ticks(pgid, namespace)
    result = lab.exec(FLOOD_NODE, argv, timeout=settings.seconds + 30)
    time.sleep(SETTLE)
    cpu_after = group_cpu_ticks(pgid, namespace)
    answered = answers_counted(lab) - answered_before
    match = _FLOOD_LINE.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise UserError(f"the generator failed: {(result.stderr or result.stdout).strip()}")
    sent, seconds = int(match.group(1)), float(match.group(3))
    cpu = cpu_seconds_between(cpu_before, cpu_after)
    arm.figures = {
        "offered_per_s": sent / seconds,
        "answered_per_s": answered / seconds,
        "answered_pct": 100.0 * answered / sent if sent else None,
        "cpu_us_per_ra": cpu / answered * 1e6 if answered else None,
        "cpu_pct": 100.0 * cpu / (seconds + SETTLE),
    }
    progress(
        f"  {arm.impl}: {sent / seconds:,.0f} RS/s offered, {answered / seconds:,.0f} RA/s "
        f"answered ({arm.figures['answered_pct']:.0f} %), "
        + (f"{cpu / answered * 1e6:.2f} us CPU per RA" if answered else "no answer")
        + f", server CPU {arm.figures['cpu_pct']:.0f} %"
    )


def run_arm(lab: Lab, round_: int, impl: str, flood: Path, settings: Settings) -> Arm:
    arm = Arm(round_, impl, lab.name)
    try:
        measure(lab, arm, flood, settings)
    except (UserError, subprocess.SubprocessError) as error:
        progress(f"  FAILED {error}")
        arm.errors.append(str(error))
    return arm


def run_rounds(flood: Path, settings: Settings, arms: list[Arm]) -> None:
    """Both labs up at once, then floods in alternating order: drift on a shared machine
    touches both arms alike."""
    labs: dict[str, Lab] = {}
    try:
        for impl in IMPLS:
            name = random_lab_name("rs")
            progress(f"lab {name}: server {impl}")
            labs[impl] = Lab(name, server=impl, progress=lambda message: progress(f"  {message}"))
            labs[impl].up()
            prepare(labs[impl])
        for round_ in range(1, settings.rounds + 1):
            progress(f"round {round_}")
            for impl in IMPLS if round_ % 2 else tuple(reversed(IMPLS)):
                arms.append(run_arm(labs[impl], round_, impl, flood, settings))
    finally:
        for lab in labs.values():
            lab.down()


ROWS: Final = (
    ("offered_per_s", "RS/s offered", "higher", 0),
    ("answered_per_s", "RA/s answered", "higher", 0),
    ("answered_pct", "RS answered %", "higher", 1),
    ("cpu_us_per_ra", "server CPU us per RA", "lower", 2),
    ("cpu_pct", "server CPU %", "lower", 0),
)


def summarize(arms: list[Arm]) -> list[dict[str, Any]]:
    rows = []
    for name, label, better, digits in ROWS:
        medians: dict[str, float | None] = {}
        for impl in IMPLS:
            values = [a.figures[name] for a in arms if a.impl == impl and a.figures.get(name)]
            medians[impl] = (
                statistics.median(v for v in values if v is not None) if values else None
            )
        ours, theirs = medians["ours"], medians["miredo"]
        rows.append(
            {
                "name": name,
                "label": label,
                "better": better,
                "digits": digits,
                "ours": ours,
                "miredo": theirs,
                "ratio": ours / theirs if ours is not None and theirs else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    lines = [f"{'':24} {'ours':>12} {'miredo':>12} {'ours/miredo':>12}  better"]
    for row in rows:
        lines.append(
            f"{row['label']:24} {number(row['ours'], row['digits']):>12} "
            f"{number(row['miredo'], row['digits']):>12} {number(row['ratio'], 2):>12}  "
            f"{row['better']}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="benchmarks/rs_flood.py",
        description="Flood the lab's Teredo server with Router Solicitations: ours vs Miredo.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=10.0, help="flood length (default 10)")
    parser.add_argument(
        "--clients", type=int, default=65536, help="spoofed sources (default 65536)"
    )
    parser.add_argument("--rate", type=int, default=0, help="RS/s, 0: as fast as it can")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.add_argument(
        "--json", type=Path, default=RESULTS_DIR / f"rs-flood-{stamp}.json", help="raw values"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or not 0 < args.seconds <= 600 or args.clients < 1 or args.rate < 0:
        parser.error("rounds >= 1, 0 < seconds <= 600, clients >= 1 and rate >= 0")
    return Settings(args.rounds, args.seconds, args.clients, args.rate, args.json)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        print(f"rs_flood: missing {', '.join(missing)}: run bash scripts/setup", file=sys.stderr)
        return 2
    info = machine()
    arms: list[Arm] = []
    with tempfile.TemporaryDirectory(prefix="rs-flood-") as directory:
        flood = compile_flood(Path(directory))
        try:
            run_rounds(flood, settings, arms)
        except KeyboardInterrupt:
            progress("interrupted: writing what was measured")
        except UserError as error:
            print(f"rs_flood: {error}", file=sys.stderr)
            return 1
    rows = summarize(arms)
    settings.json_path.parent.mkdir(parents=True, exist_ok=True)
    settings.json_path.write_text(
        json.dumps(
            {
                "benchmark": "rs_flood",
                "machine": info,
                "settings": {
                    "rounds": settings.rounds,
                    "seconds": settings.seconds,
                    "clients": settings.clients,
                    "rate": settings.rate,
                },
                "arms": [
                    {"round": a.round, "impl": a.impl, "lab": a.lab, "figures": a.figures,
                     "errors": a.errors}
                    for a in arms
                ],
                "summary": rows,
            },
            indent=2,
        )
        + "\n"
    )  # fmt: skip
    print(table(rows))
    print(
        f"\nmedians of {settings.rounds} rounds, {settings.seconds:g} s floods from "
        f"{settings.clients} sources; {info['nproc']} CPUs, kernel {info['kernel']}, "
        f"{info['miredo']}, teredo {info['commit']}; raw values: {settings.json_path}"
    )
    return 1 if any(a.errors for a in arms) else 0


if __name__ == "__main__":
    sys.exit(main())
