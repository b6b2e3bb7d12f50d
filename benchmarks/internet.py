"""Same-run benchmark of the relay at the Internet's shape: many peers, one datagram at a time.

    bash scripts/bench --internet [--peers 1,1k,100k,1M] [--rounds N] [--duration S]
                                  [--rate PPS] [--prime-rate PPS] [--quick] [--json FILE]

A public relay does not carry one fat flow: it carries single datagrams from and to a great
many Teredo clients. This benchmark builds a lab with the generator node (`Lab(generator=True)`,
see teredo/lab/topology.py) whose C generator (flood.c) impersonates N Teredo clients with
public mappings in 100.64.0.0/10, and measures the relay run by this project and by Miredo in
the same run: per round one lab each, in alternating order (round 1 ours first, round 2 Miredo
first, ...), every other role the same in both (`--rest`, default ours). Figures are medians
over rounds (default 3).

Per arm:

- **Established RTT**: 500 pings 10 ms apart native host -> client1 and client1 -> native host
  through the relay; median and 99th percentile.
- **The plain-forwarding limit**: IPv6/UDP with 64 bytes of payload sent as fast as the
  generator can, gen -> native host and native host -> gen, over the same hops as Teredo traffic
  (the router detours it through the relay's node, which forwards it in the kernel).
- The [ours/limit] column divides our figure by plain forwarding's: the share of the limit for
  packet rates, how many times plain forwarding's cost for machine CPU per packet.
- For each N (`--peers`), on a relay restarted with an empty peer table:
  * **priming**, the same three passes for both relays: each client sends one packet to the
    native host; the native host sends one packet to each client; each client sends one again.
    A relay that trusts a self-consistent source at once (rx case 3 of RFC 4380 §5.2.3: ours)
    trusts the peer in the first pass and forwards the others on its fast path. Miredo's relay
    drops packets from clients it has no entry for, which RFC 4380 §5.4.2 allows ("may be
    silently discarded"; on the Internet a relay hears from a client only after contacting it):
    the second pass sets each peer up (queue and bubbles), the third makes it trusted (an entry
    exists and the source matches its mapping). Each pass goes over all N at `--prime-rate`,
    or faster when one pass would last more than 25 s, since a peer must hear from the next
    pass within its 30 s life (1M: 50 000/s, 60 s in all). "primed" is the share of the N
    clients whose packet of the third pass reached the native host;
  * **Teredo -> native**: the N clients send 64-byte UDP datagrams, round-robin, as fast as the
    generator can (or at `--rate`) for `--duration` seconds; delivered = what the native host's
    counted drop rule saw;
  * **native -> Teredo**: the native host sends the same to the N clients' Teredo addresses;
    delivered = the encapsulated datagrams that reached gen (an nftables counter of 120-byte
    UDP payloads carrying IPv6/UDP to the sink port, so bubbles are not counted).
  For each direction: packets per second delivered; the relay's CPU per delivered packet and
  how busy it was; CPU per delivered packet of the whole machine (busy time from /proc/stat,
  the generator and whatever else runs included, so the machine's load just before the floods
  is printed with it). And the relay's memory once the N peers are primed: RSS of its
  processes plus the locked memory of any BPF map it holds or attached in its namespace, and
  per peer: (that - the same on the empty relay) / N; with how many of the N our relay holds
  then (in its table or only in its kernel map: its status and counters; Miredo's does not
  say), since a priming that loses peers makes that figure smaller than what a held peer costs.

The relay gets a CPU of its own for the floods (after the RTT rows), as another host would
have (`benchlib.give_own_cpu`): on a machine of two or more CPUs the generator, the router and
the receivers run on CPU 0, the relay's node (its processes, and the kernel's work for packets
in and out of it, steered there by RPS) on CPU 1. Without that, a packet is processed through
the relay's node in the softirq of the process that sent it, on the generator's CPU, and a
kernel data path would be charged to the generator. "relay CPU" is then CPU 1's busy time,
the same measure for a user-space relay and for a kernel path; with one CPU it is the relay's
processes' time. When the relay's CPU is far from busy the delivered rate is the lab's limit
(the generator's CPU), not the relay's.

Our relay runs with `MaxPeers` raised to the largest N (`--max-peers`) when its default
(1 048 576) is not enough; Miredo's bound (1 048 576 with Judy arrays, as Debian builds it)
is compiled in. Prints the ratio ours/Miredo for each figure and, for packet rates, the fraction
of the plain-forwarding limit ([ours/limit]). Writes every value to
benchmarks/results/internet-<timestamp>.json. Needs root, gcc, nftables, Miredo and ping.
Timing figures on a shared 2-core machine vary from run to run: compare within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchlib import (
    ArmFailed,
    Flood,
    Used,
    bench_main,
    bpf_map_bytes,
    comparison,
    compiled_flood,
    count_label,
    cpus_to_split,
    daemon_status,
    exit_status,
    generator_lab,
    give_own_cpu,
    group_pids,
    keep_log,
    median,
    parse_count,
    parse_pings,
    per,
    ping_argv,
    render_table,
    require_root_and_tools,
    rss_bytes,
    run_arm_lab,
    sample,
    save_report,
    used_between,
)
from tunnel import machine, progress, random_lab_name

from teredo.core.errors import UsageError, UserError
from teredo.lab.generator import SINK_PORT
from teredo.lab.lab import Lab
from teredo.lab.topology import (
    GENERATOR_IPV6,
    NATIVE_IPV6,
    RELAY_IPV4,
    RELAY_PORT,
    SERVER_IPV4,
    NatKind,
)

IMPLS: Final = ("ours", "miredo")
PEERS: Final = (1, 1000, 100000, 1000000)
QUICK_PEERS: Final = (1, 1000)
PASS_WINDOW: Final = 25  # seconds a priming pass may last, under the peers' 30 s life
SETTLE: Final = 0.3  # seconds for queues to drain after a flood before counters are read
BACKGROUND_SECONDS: Final = 1.0  # how long the machine's load is sampled before the floods
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
REQUIRED_TOOLS: Final = ("ip", "nft", "ping", "gcc", "miredo", "miredo-server")
# Generous bounds on the relays' memory per peer, to skip an N the machine cannot hold.
BYTES_PER_PEER_BUDGET: Final = 4096
DEFAULT_OURS_MAX_PEERS: Final = 1 << 20  # our relay's default MaxPeers
MIN_PEERS_FOR_MEMORY: Final = 1000
DIRECTIONS: Final = ("to_native", "to_teredo")
DIRECTION_LABEL: Final = {"to_native": "Teredo->native", "to_teredo": "native->Teredo"}


@dataclass(frozen=True, slots=True)
class Settings:
    peers: tuple[int, ...]
    impls: tuple[str, ...]
    rounds: int
    duration: float
    rate: int
    prime_rate: int
    pings: int
    nat: str
    rest: str
    server: str
    max_peers: int
    quick: bool
    json_path: Path


@dataclass(slots=True)
class Arm:
    round: int
    impl: str
    lab: str = ""
    impls: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def metric(n: int | None, name: str) -> str:
    """Metric names: "plain_to_native_pps", or per N "1k:to_native_pps"."""
    return name if n is None else f"{count_label(n)}:{name}"


class Bench:
    """Measures one arm in a lab that is up."""

    def __init__(self, lab: Lab, flood: Flood, arm: Arm, settings: Settings) -> None:
        self.lab = lab
        self.flood = flood
        self.arm = arm
        self.settings = settings
        self.client = ""  # client1's Teredo address

    # -- the relay's processes --------------------------------------------------------------

    def relay_pids(self) -> list[int]:
        state = self.lab.state
        if state is None or state.roles["relay"].pid is None:
            raise ArmFailed("the lab has no relay")
        pid = state.roles["relay"].pid
        return group_pids(pid, self.lab.namespace("relay"))

    def relay_gone(self) -> str:
        kept = keep_log(self.lab, "relay", self.settings.json_path)
        return f"the {self.arm.impl} relay exited; its log: {kept}"

    def relay_memory(self) -> tuple[int, int]:
        pids = self.relay_pids()
        return rss_bytes(pids), bpf_map_bytes(pids, self.lab.namespace("relay"))

    def relay_peers(self) -> int | None:
        """How many peers our relay holds (its status); None for Miredo's, which does not say.

        Its table's, and those only its kernel map holds. The status counts the latter at each
        pass over the map (every ~15 s), too late for a reading right after the priming; the
        relay was restarted just before it, so its counters are this priming's: the peers the
        kernel learned, less those the daemon took into its table (adopted) or expired."""
        if self.arm.impl != "ours":
            return None
        try:
            document = daemon_status(str(self.lab.directory / "relay.sock"))
            counters = document["counters"]
            learned = (
                counters.get("kernel_rx_learned", 0)
                - counters.get("peers_adopted", 0)
                - document.get("learned_expired", 0)
            )
            return int(document["peers"]) + max(0, int(learned))
        except (OSError, ValueError, KeyError) as error:
            progress(f"  (no status from our relay: {error})")
            return None

    def record(self, name: str, value: float | None) -> None:
        self.arm.metrics[name] = value

    def attempt(self, what: str, step: Callable[[], None]) -> None:
        """Run one measurement; a failure is recorded and the arm goes on with the next."""
        try:
            step()
        except (ArmFailed, UserError, OSError, ValueError) as error:
            message = f"{what}: {error}"
            progress(f"  FAILED {message}")
            self.arm.errors.append(message)

    # -- the arm ----------------------------------------------------------------------------

    def run(self) -> None:
        self.warm_up()
        self.measure_background()
        self.attempt("established RTT", self.rtt)
        for direction in DIRECTIONS:
            self.attempt(f"plain {direction}", functools.partial(self.plain, direction))
        for index, n in enumerate(self.settings.peers):
            self.attempt(f"N={count_label(n)}", functools.partial(self.peers, n, index))

    def warm_up(self) -> None:
        address = self.lab.teredo_address("cli1")
        if address is None:
            raise ArmFailed("client1 has no Teredo address")
        self.client = str(address)
        there = self.lab.ping("v6", address, count=3, interval=0.2, wait=3)
        back = self.lab.ping("cli1", NATIVE_IPV6, count=3, interval=0.2, wait=3)
        if not (there.ok and back.ok):
            raise ArmFailed(
                f"no ping through the relay (native->client {there.received}/3, "
                f"client->native {back.received}/3)"
            )

    def measure_background(self) -> None:
        """How busy the machine is with the idle lab and whatever else runs on it: the machine
        CPU figures include that share, and other engineers' work changes by the second."""
        before = sample([])
        time.sleep(BACKGROUND_SECONDS)
        used = used_between(before, sample([]))
        self.record("background_busy_cpus", used.machine_cpu / used.seconds)

    def rtt(self) -> None:
        """Both directions at once: 100 pings a second each way cost the relay nothing much."""
        count = self.settings.pings
        running = {
            name: subprocess.Popen(
                ["ip", "netns", "exec", self.lab.namespace(node), *ping_argv(to, count, 0.01)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name, node, to in (
                ("to_client", "v6", self.client),
                ("from_client", "cli1", str(NATIVE_IPV6)),
            )
        }
        for name, process in running.items():
            try:
                output, _ = process.communicate(timeout=count * 0.01 + 20)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
            stats = parse_pings(output).stats()
            self.arm.raw[f"rtt_{name}"] = stats
            self.record(f"rtt_{name}_median_ms", stats["median_ms"])
            self.record(f"rtt_{name}_p99_ms", stats["p99_ms"])
            if stats["median_ms"] is None:
                raise ArmFailed(f"no ping reply {name}: {output.strip()[-200:]}")

    # -- cells ------------------------------------------------------------------------------

    def cell(self, sender: str, args: list[str], counter_node: str, counter: str) -> dict[str, Any]:
        """One flood for `--duration` seconds; what arrived, and what it cost."""
        duration = self.settings.duration
        pids = self.relay_pids()
        if not pids:
            raise ArmFailed(self.relay_gone())
        counted = self.lab.counters(counter_node)[counter]
        before = sample(pids)
        bounds = ["-t", f"{duration:g}", "-r", str(self.settings.rate)]
        result = self.flood.run(sender, [*args, *bounds], duration)
        time.sleep(SETTLE)
        if not self.relay_pids():
            raise ArmFailed(self.relay_gone())
        used = used_between(before, sample(pids))
        delivered = self.lab.counters(counter_node)[counter] - counted
        return {
            "sent": result.sent,
            "offered_pps": round(result.pps),
            "delivered": delivered,
            "pps": per(delivered, result.seconds),
            "loss_pct": per(100.0 * (result.sent - delivered), result.sent),
            **self.costs(used, delivered),
        }

    def costs(self, used: Used, delivered: int) -> dict[str, float | None]:
        # The relay's CPU: with CPUs to split, what its own CPU did for it (its process and the
        # kernel's work in its node, the kernel's data path included); else its processes only.
        relay = used.role_host_cpu if cpus_to_split() else used.role_cpu
        return {
            "relay_us": per(relay, delivered, 1e6),
            "relay_process_us": per(used.role_cpu, delivered, 1e6),
            "relay_cpu_busy": per(relay, used.seconds),
            "machine_us": per(used.machine_cpu, delivered, 1e6),
            "generator_us": per(used.generator_cpu, delivered, 1e6),
        }

    def plain(self, direction: str) -> None:
        give_own_cpu(self.lab, "relay", self.relay_pids())  # after the RTT rows (see benchlib)
        if direction == "to_native":
            args = ["-m", "plain", "-s", str(GENERATOR_IPV6), "-d", str(NATIVE_IPV6)]
            cell = self.cell("gen", args, "v6", "sink")
        else:
            args = ["-m", "plain", "-s", str(NATIVE_IPV6), "-d", str(GENERATOR_IPV6)]
            cell = self.cell("v6", args, "gen", "plain")
        self.arm.raw[f"plain_{direction}"] = cell
        self.record(f"plain_{direction}_pps", cell["pps"])
        self.record(f"plain_{direction}_machine_us", cell["machine_us"])

    def teredo_args(self, n: int, first: int = 0) -> list[str]:
        return [
            "-m", "teredo", "-n", str(n), "-o", str(first), "-S", str(SERVER_IPV4),
            "-R", f"{RELAY_IPV4}:{RELAY_PORT}", "-d", str(NATIVE_IPV6), "-p", str(SINK_PORT),
        ]  # fmt: skip

    def native_args(self, n: int, first: int = 0) -> list[str]:
        return [
            "-m", "native", "-n", str(n), "-o", str(first), "-S", str(SERVER_IPV4),
            "-s", str(NATIVE_IPV6), "-p", str(SINK_PORT),
        ]  # fmt: skip

    def peers(self, n: int, index: int) -> None:
        """Restart the relay, prime N peers, then flood each way."""
        label = count_label(n)
        started = time.monotonic()
        self.lab.restart_role("relay")
        give_own_cpu(self.lab, "relay", self.relay_pids())  # after the RTT rows (see benchlib)
        time.sleep(SETTLE)
        empty_rss, empty_bpf = self.relay_memory()
        primed = self.prime(n)
        rss, bpf = self.relay_memory()
        raw: dict[str, Any] = {
            "empty_rss": empty_rss,
            "empty_bpf": empty_bpf,
            "rss": rss,
            "bpf": bpf,
            "primed": primed,
        }
        self.record(metric(n, "primed_pct"), 100.0 * primed / n)
        # Bytes per peer divide by N; when the priming lost peers, say how many are held.
        held = self.relay_peers()
        raw["held"] = held
        self.record(metric(n, "held_pct"), None if held is None else 100.0 * held / n)
        self.record(metric(n, "rss_mb"), (rss + bpf) / 1e6)
        # Below a thousand peers the difference is a few pages of allocator noise, not peers.
        grown = rss + bpf - empty_rss - empty_bpf
        self.record(metric(n, "bytes_per_peer"), grown / n if n >= MIN_PEERS_FOR_MEMORY else None)
        cells = {
            "to_native": self.cell("gen", self.teredo_args(n), "v6", "sink"),
            "to_teredo": self.cell("v6", self.native_args(n), "gen", "teredo_data"),
        }
        for direction, cell in cells.items():
            raw[direction] = cell
            self.record(metric(n, f"{direction}_pps"), cell["pps"])
            self.record(metric(n, f"{direction}_relay_us"), cell["relay_us"])
            self.record(metric(n, f"{direction}_relay_busy"), cell["relay_cpu_busy"])
            self.record(metric(n, f"{direction}_machine_us"), cell["machine_us"])
        raw["seconds"] = round(time.monotonic() - started, 1)
        self.arm.raw[f"N={label}"] = raw
        to_native, to_teredo = cells["to_native"], cells["to_teredo"]
        progress(
            f"  N={label}: primed {100.0 * primed / n:.1f} %, Teredo->native "
            f"{(to_native['pps'] or 0):,.0f} pkt/s, native->Teredo {(to_teredo['pps'] or 0):,.0f} "
            f"pkt/s, RSS {rss / 1e6:.1f} MB ({raw['seconds']} s)"
        )

    def prime(self, n: int) -> int:
        """Make N peers trusted the same way for both relays (see the module docstring): a
        Teredo pass (trusted at once where the relay applies rx case 3, dropped where it does
        not), a native pass (sets up the peers the relay does not know), a Teredo pass again
        (trusts them). Returns how many packets of the last pass reached the native host."""
        pps = prime_rate(n, self.settings.prime_rate)
        bound = n / pps + 1
        count = ["-c", str(n), "-r", str(pps)]
        teredo = [*self.teredo_args(n), *count]
        self.flood.run("gen", teredo, bound)
        time.sleep(SETTLE)
        self.flood.run("v6", [*self.native_args(n), *count], bound)
        time.sleep(SETTLE)
        before = self.lab.counters("v6")["sink"]
        self.flood.run("gen", teredo, bound)
        time.sleep(SETTLE)
        return self.lab.counters("v6")["sink"] - before


# -- arms, rounds and the report --------------------------------------------------------------


def prime_rate(n: int, floor: int) -> int:
    """Packets per second of each priming pass for N peers: at least `floor`, and fast enough
    that a pass lasts at most PASS_WINDOW. Both relays forget a peer 30 s after they last
    heard from it, and a peer hears from the next pass one pass later; the last pass is at
    most one pass old when priming ends."""
    return max(floor, -(-n // PASS_WINDOW))


def lab_impls(impl: str, settings: Settings) -> dict[str, str]:
    return {
        "server": settings.server,
        "relay": impl,
        "client1": settings.rest,
        "client2": settings.rest,
    }


def run_arm(round_: int, impl: str, binary: Path, settings: Settings, arms: list[Arm]) -> None:
    arm = Arm(round=round_, impl=impl, lab=random_lab_name("bi"))
    arms.append(arm)
    arm.impls = lab_impls(impl, settings)
    progress(f"round {round_}: relay {impl} (lab {arm.lab}: {arm.impls})")
    lab = generator_lab(
        arm.lab,
        settings.nat,
        arm.impls,
        progress,
        ours_config={"relay": [f"MaxPeers {settings.max_peers}"]},
    )
    run_arm_lab(lab, arm, Bench(lab, Flood(binary, lab), arm, settings).run, progress)


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    name: str  # metric name without the N prefix
    per_n: bool
    limit: str | None = None  # the plain metric it is compared with
    digits: int = 3


ROWS: Final = (
    Row("Teredo->native pkt/s", "to_native_pps", True, "plain_to_native_pps"),
    Row("native->Teredo pkt/s", "to_teredo_pps", True, "plain_to_teredo_pps"),
    Row("relay CPU us/pkt, Teredo->native", "to_native_relay_us", True),
    Row("relay CPU us/pkt, native->Teredo", "to_teredo_relay_us", True),
    Row("relay CPU busy (of 1), Teredo->native", "to_native_relay_busy", True),
    Row("relay CPU busy (of 1), native->Teredo", "to_teredo_relay_busy", True),
    Row(
        "machine CPU us/pkt, Teredo->native",
        "to_native_machine_us",
        True,
        "plain_to_native_machine_us",
    ),
    Row(
        "machine CPU us/pkt, native->Teredo",
        "to_teredo_machine_us",
        True,
        "plain_to_teredo_machine_us",
    ),
    Row("relay memory MB, N peers primed", "rss_mb", True),
    Row("relay bytes per peer", "bytes_per_peer", True),
    Row("peers primed %", "primed_pct", True),
    Row("peers our relay holds %", "held_pct", True),
)
SINGLE_ROWS: Final = (
    Row("plain forwarding pkt/s, gen->native", "plain_to_native_pps", False),
    Row("plain forwarding pkt/s, native->gen", "plain_to_teredo_pps", False),
    Row("plain machine CPU us/pkt, gen->native", "plain_to_native_machine_us", False),
    Row("plain machine CPU us/pkt, native->gen", "plain_to_teredo_machine_us", False),
    Row("RTT native->client median ms", "rtt_to_client_median_ms", False),
    Row("RTT native->client p99 ms", "rtt_to_client_p99_ms", False),
    Row("RTT client->native median ms", "rtt_from_client_median_ms", False),
    Row("RTT client->native p99 ms", "rtt_from_client_p99_ms", False),
    Row("machine busy CPUs before the floods", "background_busy_cpus", False),
)


def medians(arms: list[Arm]) -> dict[str, dict[str, float | None]]:
    """impl -> metric -> median over rounds (and "all" for metrics both arms measure alike)."""
    names = {name for arm in arms for name in arm.metrics}
    result: dict[str, dict[str, float | None]] = {impl: {} for impl in (*IMPLS, "all")}
    for name in names:
        for impl in IMPLS:
            result[impl][name] = median(a.metrics.get(name) for a in arms if a.impl == impl)
        result["all"][name] = median(a.metrics.get(name) for a in arms)
    return result


def summarize(arms: list[Arm], settings: Settings) -> dict[str, Any]:
    m = medians(arms)
    rows = []
    for row in (*ROWS, *SINGLE_ROWS):
        for n in settings.peers if row.per_n else (None,):
            name = metric(n, row.name)
            ours, miredo = m["ours"].get(name), m["miredo"].get(name)
            limit = m["all"].get(row.limit) if row.limit else None
            rows.append(
                {
                    "metric": name,
                    "label": row.label,
                    "n": n,
                    "ours": ours,
                    "miredo": miredo,
                    "ratio": ours / miredo if ours is not None and miredo else None,
                    "limit": limit,
                    "ours_per_limit": ours / limit if ours is not None and limit else None,
                    "ours_per_round": [a.metrics.get(name) for a in arms if a.impl == "ours"],
                    "miredo_per_round": [a.metrics.get(name) for a in arms if a.impl == "miredo"],
                }
            )
    return {"rows": rows, "medians": m}


def tables(summary: dict[str, Any], settings: Settings) -> str:
    by_name = {row["metric"]: row for row in summary["rows"]}
    header = ["relay: ours / Miredo (ratio) [ours/limit]"]
    header += [f"N={count_label(n)}" for n in settings.peers]
    lines = []
    for row in ROWS:
        cells = [row.label]
        for n in settings.peers:
            found = by_name[metric(n, row.name)]
            limit = found["limit"] if row.limit else None
            cells.append(comparison(found["ours"], found["miredo"], limit, row.digits))
        lines.append(cells)
    first = render_table(header, lines)
    lines = []
    for row in SINGLE_ROWS:
        found = by_name[row.name]
        lines.append([row.label, comparison(found["ours"], found["miredo"], None, row.digits)])
    second = render_table(["same run: ours / Miredo (ratio)", "median of rounds"], lines)
    return first + "\n\n" + second


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="bash scripts/bench --internet",
        description="Benchmark the relay at the Internet's shape (many peers, single "
        "datagrams), ours against Miredo's in one run.",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help="whose relay runs (default ours,miredo; the smoke test runs ours)",
    )
    parser.add_argument(
        "--peers",
        help="numbers of Teredo clients, comma-separated, k and M allowed "
        "(default 1,1k,100k,1M; --quick 1,1k)",
    )
    parser.add_argument(
        "--duration", type=float, metavar="S", help="seconds per flood (default 3, --quick 1)"
    )
    parser.add_argument(
        "--rate",
        type=int,
        default=0,
        metavar="PPS",
        help="offered load of each flood, 0 = as fast as the generator can (default 0)",
    )
    parser.add_argument(
        "--prime-rate",
        type=int,
        default=50000,
        metavar="PPS",
        help="packets per second of each priming pass (default 50000)",
    )
    parser.add_argument(
        "--pings", type=int, help="pings 10 ms apart for the RTT rows (default 500, --quick 50)"
    )
    parser.add_argument(
        "--nat",
        default=NatKind.FULLCONE.value,
        choices=[k.value for k in NatKind],
        help="the NAT in front of client1, which the RTT rows use (default fullcone)",
    )
    parser.add_argument(
        "--rest", default="ours", choices=IMPLS, help="who runs the other roles (default ours)"
    )
    parser.add_argument("--server", choices=IMPLS, help="who runs the server (default: --rest)")
    parser.add_argument(
        "--max-peers",
        type=int,
        metavar="N",
        help="our relay's MaxPeers (default: 5 %% above the largest N, at least its own "
        "default 1048576)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a minute or two")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="where to write the results (default benchmarks/results/internet-<timestamp>.json)",
    )
    args = parser.parse_args(argv)
    try:
        peers = (
            tuple(sorted({parse_count(p) for p in args.peers.split(",")})) if args.peers else None
        )
    except ValueError:
        raise UsageError("--peers takes positive counts such as 1,1k,100k,1M") from None
    peers = peers or (QUICK_PEERS if args.quick else PEERS)
    if max(peers) > 4 * ((1 << 22) - 2):
        raise UsageError(
            "--peers goes up to 16 million: four fake clients per 100.64.0.0/10 address"
        )
    impls = tuple(i.strip() for i in args.impls.split(",") if i.strip())
    if not impls or any(i not in IMPLS for i in impls):
        raise UsageError("--impls takes ours, miredo or both")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < (1 if args.quick or len(impls) == 1 else 2):
        raise UsageError(
            "--rounds must be at least 2, so that each side runs first once (1 with --quick)"
        )
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 3.0)
    if not 0.2 <= duration <= 600:
        raise UsageError("--duration must be between 0.2 and 600 seconds")
    if args.rate < 0:
        raise UsageError("--rate must be 0 (as fast as possible) or a number of packets/s")
    if args.prime_rate < 100:
        raise UsageError("--prime-rate must be at least 100 packets per second")
    pings = args.pings if args.pings is not None else (50 if args.quick else 500)
    if pings < 1:
        raise UsageError("--pings must be at least 1")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Settings(
        peers=peers,
        impls=impls,
        rounds=rounds,
        duration=duration,
        rate=args.rate,
        prime_rate=args.prime_rate,
        pings=pings,
        nat=args.nat,
        rest=args.rest,
        server=args.server or args.rest,
        # Room for the lab's own clients and a margin: a table just full evicts.
        max_peers=args.max_peers or max(DEFAULT_OURS_MAX_PEERS, max(peers) * 21 // 20 + 1024),
        quick=args.quick,
        json_path=args.json or RESULTS_DIR / f"internet-{stamp}.json",
    )


def check_machine(settings: Settings) -> Settings:
    """Root and the tools; drop the N the machine has no memory for (saying so)."""
    require_root_and_tools(REQUIRED_TOOLS)
    available = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    fitting = tuple(n for n in settings.peers if n * BYTES_PER_PEER_BUDGET <= available / 2)
    for n in settings.peers:
        if n not in fitting:
            progress(
                f"skipping N={count_label(n)}: the relays could need "
                f"{n * BYTES_PER_PEER_BUDGET / 1e9:.1f} GB and {available / 1e9:.1f} GB are free"
            )
    if not fitting:
        raise UserError("no --peers value fits in this machine's memory; choose smaller ones")
    return dataclasses.replace(settings, peers=fitting)


def run(settings: Settings) -> int:
    settings = check_machine(settings)
    report: dict[str, Any] = {
        "benchmark": "internet",
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "peers": list(settings.peers),
            "impls": list(settings.impls),
            "rounds": settings.rounds,
            "duration_s": settings.duration,
            "rate": settings.rate,
            "prime_rate": settings.prime_rate,
            "pings": settings.pings,
            "nat1": settings.nat,
            "rest": settings.rest,
            "server": settings.server,
            "ours_max_peers": settings.max_peers,
            "quick": settings.quick,
        },
    }
    arms: list[Arm] = []
    interrupted = False
    try:
        with compiled_flood() as binary:
            for round_ in range(1, settings.rounds + 1):
                order = settings.impls if round_ % 2 else tuple(reversed(settings.impls))
                for impl in order:
                    run_arm(round_, impl, binary, settings, arms)
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted: the labs built so far are torn down; writing what was measured")
    summary = summarize(arms, settings)
    left = save_report(report, arms, summary["rows"], interrupted, settings.json_path)

    print(tables(summary, settings))
    print()
    info = report["machine"]
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), kernel {info['kernel']}, "
        f"{info['miredo']}, teredo {info['commit']}; load average {info['loadavg_start'][0]:.2f} "
        f"at start, {info['loadavg_end'][0]:.2f} at end"
    )
    print(
        f"settings: {settings.rounds} rounds (medians), {settings.duration:g} s per flood "
        + (f"at {settings.rate} pkt/s, " if settings.rate else "as fast as the generator sends, ")
        + f"priming at {settings.prime_rate} pkt/s, our relay with MaxPeers {settings.max_peers}, "
        f"other roles {settings.rest}, server {settings.server}; [ours/limit] compares with "
        "plain IPv6 forwarding over the same hops"
    )
    print(f"raw values: {settings.json_path}")
    failures = [f"{a.impl} round {a.round}: {e}" for a in arms for e in a.errors]
    return exit_status(failures, left, interrupted)


def main(argv: list[str] | None = None) -> int:
    return bench_main(lambda: parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
