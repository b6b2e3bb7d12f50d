"""Same-run benchmark of floods against the relay and the server, ours against Miredo's.

    bash scripts/bench --attack [--attacks bubbles,destinations,rs] [--rounds N]
                                [--seconds S] [--scale F] [--quick] [--json FILE]

Every path a stranger can reach must have a bound on state, on CPU per packet and on packets
sent per packet received. This benchmark floods each role from the lab's generator node
(`Lab(generator=True)`, flood.c) while a real client uses it, and measures what the legitimate
traffic sees and what the flood costs. Per round the role under test runs in one lab by this
project and in another by Miredo, in alternating order; every other role is the same in both
(`--rest`, default ours). Figures are medians over rounds (default 3); every round's value is
printed too. Floods are bounded in packets and in seconds.

- **bubbles** (relay): Teredo bubbles (RFC 4380 §2.8) from 300 000 distinct self-consistent
  Teredo clients (fake mappings in 100.64.0.0/10), each source new, 15 000 per second for 20 s,
  while client1 pings the native host 20 times a second through the relay and the native host
  pings client1 as often. Reports whether the relay lost client1's entry: the number of bubbles
  the server relayed to client1 meanwhile (a relay that forgot client1 has to set the path up
  again through the server, RFC 4380 §5.4.1) and, for our relay, its evicted-peer counter.
- **destinations** (relay): the native host sends 10 000 packets a second toward 200 000
  distinct Teredo destinations (mappings in 100.64.0.0/10, the lab's server) for 20 s: the relay
  must queue, send bubbles and give up for each. Reports the relay's packets out per packet in,
  and whether a *new* client is reachable meanwhile: client2 restarts a quarter into the flood
  (a new Teredo address), then the native host pings it 10 times a second; the time from the
  first echo request to the first reply, and the loss.
- **rs** (server): Router Solicitations (RFC 4380 §5.2.1) from 65 536 spoofed sources, as fast
  as the generator sends, for 10 s. Reports the Router Advertisements answered per second
  (counted where the spoofed sources live, on gen), the server's CPU per RA, and whether a
  client qualifies within 1 s: client1 restarts two seconds into the flood (launch -> Teredo
  address, as benchmarks/tunnel.py times qualification), then pings the native host 20 times a
  second until the flood ends.

For each arm: the legitimate pings' loss and RTT (average, maximum), the role's CPU (utime +
stime of its process group) and memory (RSS after the flood and its peak, VmHWM), and packets
out per packet in (the role's interface counters). The relay runs with its default settings
(ours: MaxPeers 65536), as deployed. `--scale` multiplies every rate and count (the smoke test
uses a small one); `--seconds` sets the relay floods' length (the RS flood lasts half of it).
Writes every value to benchmarks/results/attack-<timestamp>.json. Needs root, gcc, nftables,
Miredo and ping. Timing figures on a shared 2-core machine vary from run to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchlib import (
    ArmFailed,
    Costs,
    Flood,
    FloodResult,
    bench_main,
    compiled_flood,
    cpus_to_split,
    daemon_status,
    exit_status,
    first_reply_seconds,
    generator_lab,
    give_own_cpu,
    group_pids,
    keep_log,
    median,
    parse_pings,
    per,
    ping_argv,
    ratio,
    render_table,
    require_root_and_tools,
    rss_bytes,
    run_arm_lab,
    sample,
    save_report,
    si,
    used_between,
)
from tunnel import machine, progress, random_lab_name

from teredo.core.errors import UsageError, UserError
from teredo.lab.lab import Lab
from teredo.lab.topology import NATIVE_IPV6, RELAY_IPV4, RELAY_PORT, SERVER_IPV4, NatKind

IMPLS: Final = ("ours", "miredo")
ATTACKS: Final = ("bubbles", "destinations", "rs")
ROLE: Final = {"bubbles": "relay", "destinations": "relay", "rs": "server"}
NODE: Final = {"relay": "relay", "server": "srv"}
REQUIRED_TOOLS: Final = ("ip", "nft", "ping", "gcc", "miredo", "miredo-server")
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
TEREDO_PORT: Final = 3544  # RFC 4380 §2.7

BUBBLE_SOURCES: Final = 300000
BUBBLE_RATE: Final = 15000
DESTINATIONS: Final = 200000
DESTINATION_RATE: Final = 10000
RS_SOURCES: Final = 65536
LEGIT_RATE: Final = 20  # pings per second
NEW_CLIENT_RATE: Final = 10  # pings per second to the restarted client2
QUALIFY_WITHIN: Final = 1.0  # seconds
SETTLE: Final = 0.5  # seconds after a flood before the costs are read

# client1 counts the bubbles the server relays to it (an origin indication first: its
# indicator is two zero bytes, RFC 4380 §5.1.1): each one means some relay set a path to
# client1 up again. Loaded in client1's namespace by this benchmark only.
CLIENT_COUNTER: Final = f"""table inet teredo_bench_client {{
  counter relayed_bubbles {{ }}
  chain input {{
    type filter hook input priority 0; policy accept;
    ip saddr {SERVER_IPV4} udp sport {TEREDO_PORT} @th,64,16 0 counter name relayed_bubbles
  }}
}}
"""


@dataclass(frozen=True, slots=True)
class Settings:
    attacks: tuple[str, ...]
    impls: tuple[str, ...]
    rounds: int
    seconds: float
    scale: float
    nat: str
    rest: str
    quick: bool
    json_path: Path

    @property
    def rs_seconds(self) -> float:
        return self.seconds / 2

    def scaled(self, value: int) -> int:
        return max(1, round(value * self.scale))


@dataclass(slots=True)
class Arm:
    role: str
    round: int
    impl: str
    lab: str = ""
    impls: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)  # "attack:name" -> value
    raw: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    costs: Costs
    interface: dict[str, int]
    counters: dict[str, dict[str, int]]  # node -> nftables counter -> packets
    status: dict[str, Any] | None  # our daemon's, None for Miredo


class AttackBench:
    """Runs the attacks of one role in a lab that is up."""

    def __init__(self, lab: Lab, flood: Flood, arm: Arm, settings: Settings) -> None:
        self.lab = lab
        self.flood = flood
        self.arm = arm
        self.settings = settings
        self.role = arm.role
        self.node = NODE[arm.role]

    # -- sampling ---------------------------------------------------------------------------

    def pids(self) -> list[int]:
        state = self.lab.state
        pid = state.roles[self.role].pid if state is not None else None
        if pid is None:
            raise ArmFailed(f"the lab has no {self.role}")
        return group_pids(pid, self.lab.namespace(self.node))

    def status(self) -> dict[str, Any] | None:
        if self.arm.impl != "ours":
            return None
        try:
            return daemon_status(str(self.lab.directory / f"{self.node}.sock"))
        except (OSError, ValueError) as error:
            progress(f"  (no status from our {self.role}: {error})")
            return None

    def snapshot(self) -> Snapshot:
        return Snapshot(
            costs=sample(self.pids()),
            interface=self.lab.interface_counters(self.node),
            counters={node: self.lab.counters(node) for node in ("gen", "cli1")},
            status=self.status(),
        )

    def record(self, attack: str, name: str, value: float | None) -> None:
        self.arm.metrics[f"{attack}:{name}"] = value

    def record_costs(
        self, attack: str, before: Snapshot, after: Snapshot, flood_packets: int
    ) -> None:
        used = used_between(before.costs, after.costs)
        rx = after.interface["rx_packets"] - before.interface["rx_packets"]
        tx = after.interface["tx_packets"] - before.interface["tx_packets"]
        self.record(attack, "out_per_in", per(tx, rx))
        self.arm.raw[attack].update(
            {"interface_rx": rx, "interface_tx": tx, "machine_cpu_s": used.machine_cpu}
        )
        pids = self.pids()
        if not pids:  # its CPU and memory went with it: no figure rather than a zero
            kept = keep_log(self.lab, self.node, self.settings.json_path)
            message = f"{attack}: the {self.arm.impl} {self.role} exited during the flood"
            self.arm.errors.append(f"{message}; its log: {kept}")
            progress(f"  FAILED {message}; its log: {kept}")
            return
        # The role's CPU: with CPUs to split, what its own CPU did for it (its processes and
        # the kernel's work in its node: a kernel data path included); else its processes.
        role_cpu = used.role_host_cpu if cpus_to_split() else used.role_cpu
        self.record(attack, "cpu_s", role_cpu)
        self.record(attack, "cpu_us_per_flood_packet", per(role_cpu, flood_packets, 1e6))
        self.record(attack, "rss_mb", rss_bytes(pids) / 1e6)
        self.record(attack, "rss_peak_mb", rss_bytes(pids, peak=True) / 1e6)

    def record_pings(self, attack: str, name: str, output: str) -> None:
        stats = parse_pings(output).stats()
        self.arm.raw[attack][name] = stats
        for key in ("loss_pct", "avg_ms", "max_ms"):
            self.record(attack, f"{name}_{key}", stats[key])

    def legit_pings(self, seconds: float) -> dict[str, subprocess.Popen[str]]:
        """client1 -> native host and native host -> client1, 20 a second, in the background."""
        count = max(1, math.ceil(seconds * LEGIT_RATE))
        client = self.lab.teredo_address("cli1")
        pings: dict[str, subprocess.Popen[str]] = {}
        targets = [("legit_to_native", "cli1", str(NATIVE_IPV6))]
        if client is not None:
            targets.append(("legit_to_client", "v6", str(client)))
        for name, node, destination in targets:
            argv = ping_argv(destination, count, 1 / LEGIT_RATE)
            pings[name] = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.namespace(node), *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        return pings

    def collect(self, attack: str, pings: dict[str, subprocess.Popen[str]]) -> None:
        for name, process in pings.items():
            try:
                output, _ = process.communicate(timeout=self.settings.seconds + 30)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
            self.record_pings(attack, name, output)

    def warm_up(self) -> None:
        address = self.lab.teredo_address("cli1")
        if address is None:
            raise ArmFailed("client1 has no Teredo address")
        there = self.lab.ping("v6", address, count=3, interval=0.2, wait=3)
        back = self.lab.ping("cli1", NATIVE_IPV6, count=3, interval=0.2, wait=3)
        if not (there.ok and back.ok):
            raise ArmFailed(
                f"no ping through the relay (native->client {there.received}/3, "
                f"client->native {back.received}/3)"
            )

    def attempt(self, attack: str, step: Callable[[], None]) -> None:
        self.arm.raw.setdefault(attack, {})
        try:
            step()
        except (ArmFailed, UserError, OSError, ValueError, subprocess.SubprocessError) as error:
            message = f"{attack}: {error}"
            progress(f"  FAILED {message}")
            self.arm.errors.append(message)

    # -- the attacks ------------------------------------------------------------------------

    def run(self) -> None:
        result = self.lab.exec("cli1", ["nft", "-f", "-"], input=CLIENT_COUNTER)
        if result.returncode != 0:
            raise ArmFailed(f"nft refused client1's counter: {result.stderr.strip()}")
        attacks = [a for a in self.settings.attacks if ROLE[a] == self.role]
        for index, attack in enumerate(attacks):
            if index:
                self.lab.restart_role(self.role)  # each attack meets a fresh role
            give_own_cpu(self.lab, self.node, self.pids())  # as another host (benchlib)
            self.warm_up()
            self.attempt(attack, getattr(self, attack))
            self.report(attack)

    def bubbles(self) -> None:
        s = self.settings
        sources, rate = s.scaled(BUBBLE_SOURCES), s.scaled(BUBBLE_RATE)
        args = [
            "-m", "bubble", "-n", str(sources), "-c", str(sources), "-r", str(rate),
            "-t", f"{s.seconds:g}", "-S", str(SERVER_IPV4), "-R", f"{RELAY_IPV4}:{RELAY_PORT}",
            "-d", str(NATIVE_IPV6),
        ]  # fmt: skip
        before = self.snapshot()
        pings = self.legit_pings(s.seconds)
        flood = self.flood.run("gen", args, s.seconds)
        self.collect("bubbles", pings)
        time.sleep(SETTLE)
        after = self.snapshot()
        self.flood_figures("bubbles", flood)
        self.record_costs("bubbles", before, after, flood.sent)
        relayed = (
            after.counters["cli1"]["relayed_bubbles"] - before.counters["cli1"]["relayed_bubbles"]
        )
        self.record("bubbles", "client1_set_up_again", relayed)
        self.record("bubbles", "evicted_peers", self.status_delta(before, after, "evicted_peers"))

    def destinations(self) -> None:
        s = self.settings
        count, rate = s.scaled(DESTINATIONS), s.scaled(DESTINATION_RATE)
        args = [
            "-m", "native", "-n", str(count), "-c", str(count), "-r", str(rate),
            "-t", f"{s.seconds:g}", "-S", str(SERVER_IPV4), "-s", str(NATIVE_IPV6),
        ]  # fmt: skip
        before = self.snapshot()
        pings = self.legit_pings(s.seconds)
        started = time.monotonic()
        process = self.flood.start("v6", args)
        try:
            time.sleep(s.seconds / 4)
            self.lab.restart_role("client2")
            address = self.lab.teredo_address("cli2")
            if address is None:
                raise ArmFailed("client2 has no Teredo address after its restart")
            left = max(1.0, s.seconds - (time.monotonic() - started))
            count2 = max(5, math.ceil(left * NEW_CLIENT_RATE))
            argv = ping_argv(str(address), count2, 1 / NEW_CLIENT_RATE)
            result = self.lab.exec("v6", argv, timeout=left + 30)
        finally:
            flood = self.flood.finish(process, s.seconds + 30)
        self.collect("destinations", pings)
        time.sleep(SETTLE)
        after = self.snapshot()
        new_client = parse_pings(result.stdout)
        self.arm.raw["destinations"]["new_client"] = new_client.stats()
        self.record(
            "destinations",
            "new_client_first_reply_s",
            first_reply_seconds(new_client, 1 / NEW_CLIENT_RATE),
        )
        self.record("destinations", "new_client_loss_pct", new_client.loss)
        self.flood_figures("destinations", flood)
        self.record_costs("destinations", before, after, flood.sent)
        self.record(
            "destinations", "evicted_peers", self.status_delta(before, after, "evicted_peers")
        )
        gen = {
            k: after.counters["gen"][k] - before.counters["gen"][k] for k in after.counters["gen"]
        }
        self.arm.raw["destinations"]["gen_counters"] = gen

    def rs(self) -> None:
        s = self.settings
        seconds = s.rs_seconds
        args = [
            "-m", "rs", "-n", str(s.scaled(RS_SOURCES)), "-t", f"{seconds:g}",
            "-S", str(SERVER_IPV4), "-R", f"{SERVER_IPV4}:{TEREDO_PORT}",
        ]  # fmt: skip
        if s.scale < 1:
            args += ["-r", str(s.scaled(1000000))]
        before = self.snapshot()
        started = time.monotonic()
        process = self.flood.start("gen", args)
        qualify: float | None = None
        solicited: float | None = None
        output = ""
        try:
            time.sleep(min(2.0, seconds / 4))
            timeout, self.lab.ready_timeout = self.lab.ready_timeout, max(seconds, 5.0)
            try:
                launched = self.lab.restart_role("client1")
                qualify = time.time() - launched
                solicited = self.client_rs_to_address()
            except UserError as error:
                progress(f"  client1 did not qualify during the RS flood: {error}")
            finally:
                self.lab.ready_timeout = timeout
            left = seconds - (time.monotonic() - started)
            if qualify is not None and left > 0.5:
                count = max(1, math.ceil(left * LEGIT_RATE))
                argv = ping_argv(str(NATIVE_IPV6), count, 1 / LEGIT_RATE)
                output = self.lab.exec("cli1", argv, timeout=left + 30).stdout
        finally:
            flood = self.flood.finish(process, seconds + 30)
        time.sleep(SETTLE)
        after = self.snapshot()
        answered = after.counters["gen"]["from_server"] - before.counters["gen"]["from_server"]
        self.flood_figures("rs", flood)
        self.record_costs("rs", before, after, flood.sent)
        self.record("rs", "ras_per_s", per(answered, flood.seconds))
        self.record("rs", "answered_pct", per(100.0 * answered, flood.sent))
        used = used_between(before.costs, after.costs)
        server_cpu = used.role_host_cpu if cpus_to_split() else used.role_cpu
        self.record("rs", "cpu_us_per_ra", per(server_cpu, answered, 1e6))
        self.record("rs", "qualify_s", qualify)
        self.record("rs", "rs_to_address_s", solicited)
        # Within 1 s of its Router Solicitation leaving (the server's part): launch -> address
        # adds the client's own start, which a 2-CPU machine whose CPUs both serve the flood
        # (the generator's, the server's) slows down for reasons no server can help.
        within = solicited is not None and solicited <= QUALIFY_WITHIN
        self.record("rs", "qualified_within_1s", float(within))
        self.record_pings("rs", "legit_to_native", output)

    def client_rs_to_address(self) -> float | None:
        """Our client1's time from the Router Solicitation that qualified it to its address
        on the interface, in seconds (its status document); None for Miredo's client."""
        try:
            document = daemon_status(str(self.lab.directory / "cli1.sock"))
        except (OSError, ValueError):
            return None
        value = document.get("rs_to_address_ms")
        return value / 1000 if isinstance(value, int | float) else None

    # -- reporting --------------------------------------------------------------------------

    def flood_figures(self, attack: str, flood: FloodResult) -> None:
        self.arm.raw[attack]["flood"] = dataclasses.asdict(flood)
        self.record(attack, "flood_packets", flood.sent)
        self.record(attack, "flood_pps", per(flood.sent, flood.seconds))

    @staticmethod
    def status_delta(before: Snapshot, after: Snapshot, key: str) -> float | None:
        if before.status is None or after.status is None:
            return None
        return float(after.status.get(key, 0) - before.status.get(key, 0))

    def report(self, attack: str) -> None:
        m = {k.split(":", 1)[1]: v for k, v in self.arm.metrics.items() if k.startswith(attack)}
        parts = [f"{name} {si(value)}" for name, value in m.items()]
        progress(f"  {attack} ({self.arm.impl}): " + ", ".join(parts))


# -- arms, rounds and the report --------------------------------------------------------------


def run_arm(
    role: str, round_: int, impl: str, binary: Path, settings: Settings, arms: list[Arm]
) -> None:
    arm = Arm(role=role, round=round_, impl=impl, lab=random_lab_name("ba"))
    arms.append(arm)
    arm.impls = {"server": settings.rest, "relay": settings.rest, "client1": settings.rest}
    arm.impls["client2"] = settings.rest
    arm.impls[role] = impl
    progress(f"{role} round {round_}: {impl} (lab {arm.lab}: {arm.impls})")
    lab = generator_lab(arm.lab, settings.nat, arm.impls, progress)
    run_arm_lab(lab, arm, AttackBench(lab, Flood(binary, lab), arm, settings).run, progress)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    label: str


# What a relay flood costs the relay, the same rows for every relay attack.
RELAY_COSTS: Final = (
    Row("flood_pps", "flood packets/s sent"),
    Row("cpu_s", "relay CPU s"),
    Row("cpu_us_per_flood_packet", "relay CPU us per flood packet"),
    Row("rss_mb", "relay RSS MB after"),
    Row("rss_peak_mb", "relay RSS MB peak"),
    Row("out_per_in", "relay packets out per packet in"),
)

ROWS: Final = {
    "bubbles": (
        Row("legit_to_native_loss_pct", "client1->native loss %"),
        Row("legit_to_native_avg_ms", "client1->native RTT avg ms"),
        Row("legit_to_native_max_ms", "client1->native RTT max ms"),
        Row("legit_to_client_loss_pct", "native->client1 loss %"),
        Row("legit_to_client_avg_ms", "native->client1 RTT avg ms"),
        Row("legit_to_client_max_ms", "native->client1 RTT max ms"),
        Row("client1_set_up_again", "client1 set up again (bubbles relayed to it)"),
        Row("evicted_peers", "peers evicted (our relay's counter)"),
        *RELAY_COSTS,
    ),
    "destinations": (
        Row("new_client_first_reply_s", "new client2: first reply after s"),
        Row("new_client_loss_pct", "new client2: loss %"),
        Row("legit_to_native_loss_pct", "client1->native loss %"),
        Row("legit_to_native_avg_ms", "client1->native RTT avg ms"),
        Row("legit_to_native_max_ms", "client1->native RTT max ms"),
        Row("legit_to_client_loss_pct", "native->client1 loss %"),
        Row("legit_to_client_max_ms", "native->client1 RTT max ms"),
        Row("evicted_peers", "peers evicted (our relay's counter)"),
        *RELAY_COSTS,
    ),
    "rs": (
        Row("qualify_s", "client1 launch -> address s"),
        Row("rs_to_address_s", "client1 Router Solicitation -> address s (ours)"),
        Row("qualified_within_1s", "client1 qualified within 1 s of its RS (1 = yes)"),
        Row("legit_to_native_loss_pct", "client1->native loss % after"),
        Row("legit_to_native_avg_ms", "client1->native RTT avg ms"),
        Row("legit_to_native_max_ms", "client1->native RTT max ms"),
        Row("flood_pps", "RS packets/s sent"),
        Row("ras_per_s", "RAs/s answered"),
        Row("answered_pct", "RS answered %"),
        Row("cpu_s", "server CPU s"),
        Row("cpu_us_per_ra", "server CPU us per RA"),
        Row("rss_mb", "server RSS MB after"),
        Row("rss_peak_mb", "server RSS MB peak"),
        Row("out_per_in", "server packets out per packet in"),
    ),
}
TITLES: Final = {
    "bubbles": "new-source bubble flood at the relay",
    "destinations": "new-destination flood at the relay",
    "rs": "Router Solicitation flood at the server",
}


def summarize(arms: list[Arm], settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for attack in settings.attacks:
        for row in ROWS[attack]:
            name = f"{attack}:{row.name}"
            values = {
                impl: [
                    a.metrics.get(name) for a in arms if a.impl == impl and a.role == ROLE[attack]
                ]
                for impl in IMPLS
            }
            ours, miredo = median(values["ours"]), median(values["miredo"])
            rows.append(
                {
                    "attack": attack,
                    "metric": row.name,
                    "label": row.label,
                    "ours": ours,
                    "miredo": miredo,
                    "ratio": ratio(ours, miredo),
                    "ours_per_round": values["ours"],
                    "miredo_per_round": values["miredo"],
                }
            )
    return rows


def tables(rows: list[dict[str, Any]], settings: Settings) -> str:
    s = settings
    sizes = {
        "bubbles": f"{s.scaled(BUBBLE_SOURCES):,} sources, {s.scaled(BUBBLE_RATE):,}/s for "
        f"{s.seconds:g} s",
        "destinations": f"{s.scaled(DESTINATIONS):,} destinations, "
        f"{s.scaled(DESTINATION_RATE):,}/s for {s.seconds:g} s",
        "rs": f"{s.scaled(RS_SOURCES):,} sources, as fast as sent, {s.rs_seconds:g} s",
    }
    out = []
    for attack in settings.attacks:
        lines = []
        for row in (r for r in rows if r["attack"] == attack):
            rounds = [", ".join(si(v) for v in row[f"{impl}_per_round"]) or "-" for impl in IMPLS]
            lines.append(
                [
                    row["label"],
                    si(row["ours"]),
                    si(row["miredo"]),
                    "-" if row["ratio"] is None else f"{row['ratio']:.2f}",
                    *rounds,
                ]
            )
        header = [
            f"{TITLES[attack]} ({sizes[attack]})",
            "ours",
            "Miredo",
            "ours/Miredo",
            "ours per round",
            "Miredo per round",
        ]
        out.append(render_table(header, lines))
    return "\n\n".join(out)


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="bash scripts/bench --attack",
        description="Flood the relay and the server, ours against Miredo's, in one run.",
    )
    parser.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help="which floods, comma-separated (default bubbles,destinations,rs)",
    )
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help="who runs the role under test (default ours,miredo; the smoke test runs ours)",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    parser.add_argument(
        "--seconds",
        type=float,
        help="length of the relay floods; the RS flood lasts half (default 20, --quick 4)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every flood rate and count (default 1; e.g. 0.01 for a smoke test)",
    )
    parser.add_argument(
        "--nat",
        default=NatKind.FULLCONE.value,
        choices=[k.value for k in NatKind],
        help="the NAT in front of client1 (default fullcone)",
    )
    parser.add_argument(
        "--rest", default="ours", choices=IMPLS, help="who runs the other roles (default ours)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a minute or two")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="where to write the results (default benchmarks/results/attack-<timestamp>.json)",
    )
    args = parser.parse_args(argv)
    attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    if not attacks or any(a not in ATTACKS for a in attacks):
        raise UsageError(f"--attacks takes a comma-separated list of {', '.join(ATTACKS)}")
    impls = tuple(i.strip() for i in args.impls.split(",") if i.strip())
    if not impls or any(i not in IMPLS for i in impls):
        raise UsageError("--impls takes ours, miredo or both")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < (1 if args.quick or len(impls) == 1 else 2):
        raise UsageError(
            "--rounds must be at least 2, so that each side runs first once (1 with --quick)"
        )
    seconds = args.seconds if args.seconds is not None else (4.0 if args.quick else 20.0)
    if not 1 <= seconds <= 600:
        raise UsageError("--seconds must be between 1 and 600")
    if not 0 < args.scale <= 10:
        raise UsageError("--scale must be more than 0 and at most 10")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Settings(
        attacks=attacks,
        impls=impls,
        rounds=rounds,
        seconds=seconds,
        scale=args.scale,
        nat=args.nat,
        rest=args.rest,
        quick=args.quick,
        json_path=args.json or RESULTS_DIR / f"attack-{stamp}.json",
    )


def run(settings: Settings) -> int:
    require_root_and_tools(REQUIRED_TOOLS)
    report: dict[str, Any] = {
        "benchmark": "attack",
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "attacks": list(settings.attacks),
            "impls": list(settings.impls),
            "rounds": settings.rounds,
            "seconds": settings.seconds,
            "rs_seconds": settings.rs_seconds,
            "scale": settings.scale,
            "nat1": settings.nat,
            "rest": settings.rest,
            "quick": settings.quick,
        },
    }
    roles = [r for r in ("relay", "server") if any(ROLE[a] == r for a in settings.attacks)]
    arms: list[Arm] = []
    interrupted = False
    try:
        with compiled_flood() as binary:
            for round_ in range(1, settings.rounds + 1):
                for role in roles:
                    order = settings.impls if round_ % 2 else tuple(reversed(settings.impls))
                    for impl in order:
                        run_arm(role, round_, impl, binary, settings, arms)
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted: the labs built so far are torn down; writing what was measured")
    rows = summarize(arms, settings)
    left = save_report(report, arms, rows, interrupted, settings.json_path)

    print(tables(rows, settings))
    print()
    info = report["machine"]
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), kernel {info['kernel']}, "
        f"{info['miredo']}, teredo {info['commit']}; load average {info['loadavg_start'][0]:.2f} "
        f"at start, {info['loadavg_end'][0]:.2f} at end"
    )
    print(
        f"settings: {settings.rounds} rounds (medians; every round listed), other roles "
        f"{settings.rest}, NAT1 {settings.nat}, default relay and server settings"
    )
    print(f"raw values: {settings.json_path}")
    failures = [f"{a.role}/{a.impl} round {a.round}: {e}" for a in arms for e in a.errors]
    return exit_status(failures, left, interrupted)


def main(argv: list[str] | None = None) -> int:
    return bench_main(lambda: parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
