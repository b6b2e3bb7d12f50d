"""Same-run benchmark of the footprint: start-up time, memory and CPU, ours against Miredo's.

    bash scripts/bench --footprint [--rounds N] [--launches N] [--repeats N] [--quick]
                                   [--ours-config LINE] [--json FILE]

Teredo runs on small boxes (routers, small VMs), so what a daemon costs when it does nothing
matters as much as its throughput. Per round two labs are built one after the other, one where
this project runs every role (server, relay, both clients) and one where Miredo does; the order
alternates per round (round 1: ours first, round 2: Miredo first, ...) so that both see the same
load on a shared machine. In each lab:

- **RSS ready**: the resident memory (VmRSS, summed over the role's process group: Miredo forks
  a privileged helper) of the server, the relay and client1, a moment after each is ready
  (client qualified, relay interface up, server listening) and idle;
- **RSS after traffic**: the same after the native host and client2 pinged client1 (a peer set
  up in each role: the relay's, the client's, the server's forwarded bubbles);
- **launch -> address**: client1 restarted `--launches` times; from just before the process is
  started to the global Teredo address on its interface (`ip -ts monitor address`, as
  benchmarks/tunnel.py times qualification); the qualification itself is the same protocol
  exchange for both;
- **CPU launch+address+stop**: utime + stime of that client process (and of any process it
  waited for), from its start, through qualification and interface configuration, to its exit
  after SIGTERM (the kernel's accounting of a reaped child: `getrusage(RUSAGE_CHILDREN)`).

Then, outside any lab, the one-shot commands, `--repeats` times each, ours and Miredo's twin
alternating: `teredo --version` (`miredo -V`), `teredo decode ADDRESS` (no twin),
`teredo checkconf FILE` (`miredo-checkconf FILE`), wall time from fork to exit.

Prints medians, ours/Miredo ratios and the targets (launch -> address at most twice Miredo's,
every daemon's RSS at most 20 MiB, one-shot commands under 40 ms), and writes every value to
benchmarks/results/footprint-<timestamp>.json. Our bytecode is compiled first (as an installed
package's is), so that no run pays for compiling. Needs root, Miredo, nftables and ping.
`--ours-config 'Offload no'` runs our daemons without the kernel data path (whose loading is
part of the client's launch). Timing figures on a shared machine vary from run to run: compare
within one run.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchlib import (
    ArmFailed,
    bench_main,
    children_cpu_seconds,
    exit_status,
    group_pids,
    median,
    ratio,
    render_table,
    require_root_and_tools,
    rss_bytes,
    run_arm_lab,
    save_report,
)
from tunnel import (
    _netlink_subscribed,
    helper_process,
    machine,
    progress,
    random_lab_name,
    wait_address_event,
    wait_for,
)

import teredo
from teredo.core.errors import UsageError
from teredo.lab import processes
from teredo.lab.lab import Lab
from teredo.lab.processes import ProcessInfo
from teredo.lab.topology import NatKind

IMPLS: Final = ("ours", "miredo")
DAEMONS: Final = {"server": "srv", "relay": "relay", "client": "cli1"}  # what -> lab node
LAB_ROLE: Final = {"server": "server", "relay": "relay", "client": "client1"}
LAB_ROLES: Final = ("server", "relay", "client1", "client2")
CLIENT_NODE: Final = "cli1"
REQUIRED_TOOLS: Final = ("ip", "nft", "ping", "miredo", "miredo-server", "miredo-checkconf")
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
MIB: Final = 1 << 20
SETTLE: Final = 0.5  # seconds between readiness and the "ready" RSS (0.1 with --quick)
RSS_TARGET_MIB: Final = 20.0
ONESHOT_TARGET_MS: Final = 40.0
LAUNCH_TARGET_RATIO: Final = 2.0
EXAMPLE_ADDRESS: Final = "2001:0:4136:e378:8000:63bf:3fff:fdd2"
CLIENT_CONFIG: Final = "RelayType client\nServerAddress 192.0.2.1\nInterfaceName teredo\n"


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int
    launches: int
    repeats: int
    quick: bool
    json_path: Path
    ours_config: tuple[str, ...] = ()

    @property
    def settle(self) -> float:
        return 0.1 if self.quick else SETTLE


@dataclass(slots=True)
class Arm:
    """One lab where one implementation runs every role, and what it measured."""

    round: int
    impl: str
    lab: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a metric, its unit, and the target it is held to."""

    name: str
    label: str
    unit: str
    digits: int
    target: str  # "ratio" (ours <= 2x Miredo), "rss" (<= 20 MiB), "oneshot" (< 40 ms), ""


LAB_ROWS: Final = (
    Row("launch_ms", "client launch -> address", "ms", 1, "ratio"),
    Row("launch_cpu_s", "client CPU launch+address+stop", "s", 3, ""),
    *(
        Row(f"rss_{when}_{daemon}_mib", f"{daemon} RSS {label}", "MiB", 1, "rss")
        for daemon in DAEMONS
        for when, label in (("ready", "ready, idle"), ("traffic", "after traffic"))
    ),
)
ONESHOT_ROWS: Final = (
    Row("version_ms", "teredo --version (miredo -V)", "ms", 1, "oneshot"),
    Row("decode_ms", "teredo decode ADDRESS (no twin)", "ms", 1, "oneshot"),
    Row("checkconf_ms", "teredo checkconf FILE (miredo-checkconf)", "ms", 1, "oneshot"),
)


# -- a lab's arm --------------------------------------------------------------------------------


class FootprintBench:
    """Measures one arm in a lab that is up."""

    def __init__(self, lab: Lab, arm: Arm, settings: Settings) -> None:
        self.lab = lab
        self.arm = arm
        self.settings = settings

    def run(self) -> None:
        time.sleep(self.settings.settle)
        self.rss("ready")
        self.traffic()
        self.rss("traffic")
        self.launches()

    def _pids(self, daemon: str) -> list[int]:
        for entry in self.lab.status()["roles"]:
            if entry["role"] == LAB_ROLE[daemon] and entry["alive"]:
                return group_pids(int(entry["pid"]), self.lab.namespace(entry["node"]))
        raise ArmFailed(f"the lab's {daemon} is not running")

    def rss(self, when: str) -> None:
        for daemon in DAEMONS:
            pids = self._pids(daemon)
            mib = rss_bytes(pids) / MIB
            self.arm.metrics[f"rss_{when}_{daemon}_mib"] = mib
            self.arm.raw.setdefault(f"rss_{when}", {})[daemon] = {
                "processes": len(pids),
                "vm_rss_mib": mib,
                "vm_hwm_mib": rss_bytes(pids, peak=True) / MIB,
            }
        progress(
            f"  RSS {when}: "
            + ", ".join(f"{d} {self.arm.metrics[f'rss_{when}_{d}_mib']:.1f} MiB" for d in DAEMONS)
        )

    def traffic(self) -> None:
        """The native host and client2 ping client1: each role sets a peer up."""
        address = self.lab.teredo_address(CLIENT_NODE)
        if address is None:
            raise ArmFailed(f"{CLIENT_NODE} has no Teredo address")
        for source in ("v6", "cli2"):
            result = self.lab.ping(source, address, count=5, interval=0.1)
            self.arm.raw.setdefault("pings", {})[source] = result.received
            if not result.ok:
                self.arm.errors.append(f"no ping from {source} to {CLIENT_NODE} got a reply")

    def launches(self) -> None:
        launch_ms: list[float] = []
        cpu_s: list[float] = []
        samples: list[dict[str, Any]] = []
        for attempt in range(1, self.settings.launches + 1):
            sample = self.launch_once(attempt)
            samples.append(sample)
            if sample["launch_ms"] is not None:
                launch_ms.append(sample["launch_ms"])
            cpu_s.append(sample["cpu_s"])
            shown = f"{sample['launch_ms']:.1f} ms" if sample["launch_ms"] is not None else "-"
            progress(f"  launch {attempt}: -> address {shown}, CPU {sample['cpu_s']:.3f} s")
        self.arm.raw["launches"] = samples
        self.arm.metrics["launch_ms"] = median(launch_ms)
        self.arm.metrics["launch_cpu_s"] = median(cpu_s)

    def launch_once(self, attempt: int) -> dict[str, Any]:
        """Stop client1, start it, time its address, stop it: wall time and CPU."""
        log = self.lab.directory / f"address-monitor-{attempt}.log"
        with helper_process(
            self.lab, CLIENT_NODE, ["ip", "-ts", "monitor", "address"], log
        ) as monitor:
            wait_for(lambda: _netlink_subscribed(monitor.pid), 5.0, "ip monitor did not subscribe")
            self._stop_client()
            cpu_before = children_cpu_seconds()
            launched = self.lab.restart_role(LAB_ROLE["client"])
            address_at = wait_address_event(log, launched)
            self._stop_client()
            cpu = children_cpu_seconds() - cpu_before
        if address_at is None:
            self.arm.errors.append(f"launch {attempt}: no address event seen by ip monitor")
        return {
            "attempt": attempt,
            "launch_ms": (address_at - launched) * 1e3 if address_at is not None else None,
            "cpu_s": cpu,
        }

    def _stop_client(self) -> None:
        """SIGTERM client1's group and reap it, so that its CPU is accounted to us."""
        for entry in self.lab.status()["roles"]:
            if entry["role"] == LAB_ROLE["client"] and entry["alive"]:
                namespace = self.lab.namespace(entry["node"])
                starttime = processes.starttime_of(int(entry["pid"]))
                info = ProcessInfo(int(entry["pid"]), starttime or -1, namespace)
                processes.stop([info], self.lab.namespaces)
                # stop() returns once the group has no live member, maybe before the exited
                # client is reaped; its CPU reaches RUSAGE_CHILDREN only when it is.
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(info.pid, 0)


def run_arm(round_: int, impl: str, settings: Settings, arms: list[Arm]) -> None:
    arm = Arm(round=round_, impl=impl, lab=random_lab_name("fp"))
    arms.append(arm)
    arm.metrics = {row.name: None for row in LAB_ROWS}
    progress(f"round {round_}: {impl} (lab {arm.lab})")
    lab = Lab(
        arm.lab,
        nat1=NatKind.FULLCONE,
        server=impl,
        relay=impl,
        client1=impl,
        client2=impl,
        progress=lambda message: progress(f"  {message}"),
        ours_config={role: list(settings.ours_config) for role in LAB_ROLES},
    )
    run_arm_lab(lab, arm, FootprintBench(lab, arm, settings).run, progress)


# -- one-shot commands --------------------------------------------------------------------------


def wall_ms(argv: list[str]) -> float:
    """Fork to exit of one command, its output discarded."""
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - started) * 1e3


def oneshot_commands(config: Path) -> dict[str, tuple[list[str], list[str] | None]]:
    """metric -> (our argv, Miredo's twin or None)."""
    teredo_command = str(Path(sys.executable).with_name("teredo"))
    if not Path(teredo_command).exists():
        teredo_command = shutil.which("teredo") or teredo_command
    return {
        "version_ms": ([teredo_command, "--version"], ["miredo", "-V"]),
        "decode_ms": ([teredo_command, "decode", EXAMPLE_ADDRESS], None),
        "checkconf_ms": (
            [teredo_command, "checkconf", str(config)],
            ["miredo-checkconf", str(config)],
        ),
    }


def run_oneshots(settings: Settings) -> dict[str, dict[str, list[float]]]:
    """metric -> impl -> wall times (ms), ours and Miredo's alternating."""
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="teredo-footprint-") as directory:
        config = Path(directory) / "miredo.conf"
        config.write_text(CLIENT_CONFIG)
        for name, (ours, twin) in oneshot_commands(config).items():
            samples: dict[str, list[float]] = {"ours": [], "miredo": []}
            wall_ms(ours)  # the first run reads the files into the page cache
            if twin is not None:
                wall_ms(twin)
            for repeat in range(settings.repeats):
                order = [("ours", ours), ("miredo", twin)]
                for impl, argv in order if repeat % 2 == 0 else reversed(order):
                    if argv is not None:
                        samples[impl].append(wall_ms(argv))
            times[name] = samples
            progress(
                f"{name}: ours {median(samples['ours']) or 0:.1f} ms"
                + (f", Miredo {median(samples['miredo']) or 0:.1f} ms" if twin else "")
            )
    return times


# -- the report ---------------------------------------------------------------------------------


def verdict(row: Row, ours: float | None, miredo: float | None) -> str:
    if ours is None:
        return "-"
    if row.target == "ratio":
        r = ratio(ours, miredo)
        return "-" if r is None else ("ok" if r <= LAUNCH_TARGET_RATIO else "over") + " (<= 2x)"
    if row.target == "rss":
        return ("ok" if ours <= RSS_TARGET_MIB else "over") + " (<= 20 MiB)"
    if row.target == "oneshot":
        return ("ok" if ours < ONESHOT_TARGET_MS else "over") + " (< 40 ms)"
    return ""


def summarize(arms: list[Arm], oneshots: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    rows = []
    for row in LAB_ROWS:
        values = {impl: [a.metrics.get(row.name) for a in arms if a.impl == impl] for impl in IMPLS}
        rows.append(_summary_row(row, {impl: median(v) for impl, v in values.items()}, values))
    for row in ONESHOT_ROWS:
        values = {impl: list(oneshots.get(row.name, {}).get(impl, [])) for impl in IMPLS}
        rows.append(_summary_row(row, {impl: median(v) for impl, v in values.items()}, values))
    return rows


def _summary_row(
    row: Row, medians: dict[str, float | None], values: dict[str, Any]
) -> dict[str, Any]:
    return {
        "metric": row.name,
        "label": row.label,
        "unit": row.unit,
        "ours": medians["ours"],
        "miredo": medians["miredo"],
        "ratio": ratio(medians["ours"], medians["miredo"]),
        "target": verdict(row, medians["ours"], medians["miredo"]),
        "values": values,
    }


def table(rows: list[dict[str, Any]]) -> str:
    digits = {row.name: row.digits for row in (*LAB_ROWS, *ONESHOT_ROWS)}

    def number(value: float | None, places: int) -> str:
        return "-" if value is None else f"{value:,.{places}f}"

    lines = [
        [
            f"{r['label']} ({r['unit']})",
            number(r["ours"], digits[r["metric"]]),
            number(r["miredo"], digits[r["metric"]]),
            number(r["ratio"], 2),
            r["target"],
        ]
        for r in rows
    ]
    return render_table(["footprint (medians)", "ours", "Miredo", "ours/Miredo", "target"], lines)


# -- the run ------------------------------------------------------------------------------------


def compile_bytecode() -> bool:
    """Compile our modules as pip does at install time (PYTHONDONTWRITEBYTECODE may be set).
    Forced: compileall takes a .pyc with the source's mtime in seconds for fresh, but the import
    system also compares the size, so a file changed twice in one second (a `git checkout`)
    would be compiled again by every launch (+30 ms measured)."""
    return bool(compileall.compile_dir(Path(teredo.__file__).parent, quiet=1, force=True))


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="bash scripts/bench --footprint",
        description="Start-up time, memory and CPU of every role, ours against Miredo's.",
    )
    parser.add_argument("--rounds", type=int, help="labs per implementation (default 3)")
    parser.add_argument(
        "--launches", type=int, help="client launches per lab (default 5, --quick 1)"
    )
    parser.add_argument(
        "--repeats", type=int, help="runs of each one-shot command (default 21, --quick 3)"
    )
    parser.add_argument(
        "--ours-config",
        action="append",
        default=[],
        metavar="LINE",
        help="a configuration line for each of our daemons, e.g. 'Offload no' (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a minute")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="where to write the results (default benchmarks/results/footprint-<timestamp>.json)",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < (1 if args.quick else 2):
        raise UsageError(
            "--rounds must be at least 2, so that each side runs first once (1 with --quick)"
        )
    launches = args.launches if args.launches is not None else (1 if args.quick else 5)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 21)
    if not 1 <= launches <= 100 or not 1 <= repeats <= 1000:
        raise UsageError("--launches must be 1 to 100 and --repeats 1 to 1000")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Settings(
        rounds=rounds,
        launches=launches,
        repeats=repeats,
        quick=args.quick,
        json_path=args.json or RESULTS_DIR / f"footprint-{stamp}.json",
        ours_config=tuple(args.ours_config),
    )


def run(settings: Settings) -> int:
    require_root_and_tools(REQUIRED_TOOLS)
    report: dict[str, Any] = {
        "benchmark": "footprint",
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "rounds": settings.rounds,
            "launches": settings.launches,
            "repeats": settings.repeats,
            "quick": settings.quick,
            "ours_config": list(settings.ours_config),
            "bytecode_compiled": compile_bytecode(),
        },
    }
    arms: list[Arm] = []
    oneshots: dict[str, dict[str, list[float]]] = {}
    interrupted = False
    try:
        for round_ in range(1, settings.rounds + 1):
            for impl in IMPLS if round_ % 2 else tuple(reversed(IMPLS)):
                run_arm(round_, impl, settings, arms)
        oneshots = run_oneshots(settings)
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted: the labs built so far are torn down; writing what was measured")
    report["oneshots"] = oneshots
    rows = summarize(arms, oneshots)
    left = save_report(report, arms, rows, interrupted, settings.json_path)

    print(table(rows))
    print()
    info = report["machine"]
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), kernel {info['kernel']}, "
        f"{info['miredo']}, teredo {info['commit']}; load average {info['loadavg_start'][0]:.2f} "
        f"at start, {info['loadavg_end'][0]:.2f} at end"
    )
    print(
        f"settings: {settings.rounds} rounds of labs (ours and Miredo alternating), "
        f"{settings.launches} launches each, {settings.repeats} runs of each one-shot command"
        + (f"; our daemons with {', '.join(settings.ours_config)}" if settings.ours_config else "")
    )
    print(f"raw values: {settings.json_path}")
    failures = [f"{a.impl} round {a.round}: {e}" for a in arms for e in a.errors]
    return exit_status(failures, left, interrupted)


def main(argv: list[str] | None = None) -> int:
    return bench_main(lambda: parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
