"""Same-run benchmark of this project's relay and client against Miredo's, in the lab.

    bash scripts/bench [--rounds N] [--duration S] [--nat KIND] [--rest ours|miredo]
                       [--roles relay,client] [--json FILE] [--quick]

For each role under test (relay, client) and each round, two labs are built one after the
other (`teredo.lab.lab.Lab`, NAT1 full cone by default): one where this project runs the role,
one where Miredo does; every other role (server, relay or client, client2) is the same in both
arms (`--rest`). The order alternates per round (round 1: ours first, round 2: Miredo first, ...)
so that drift on a shared machine does not favour one side. Traffic runs between the native
host ("v6", 2001:db8:2::2) and client1's Teredo address, through the relay in both cases.

Per arm:

- UDP (iperf3 -u -b 0), 64 B and 1200 B payloads, native->client and client->native:
  packets per second the receiver got, and loss %;
- TCP (iperf3 default), both directions: Mbit/s received;
- ping RTT native->client, established (median of `--pings` pings 10 ms apart) and to a new
  peer: the RTT of seq 1 right after the role under test restarted with an empty peer table
  and is ready again (client qualified / relay interface up); `--restarts` times, median;
- client role only, time to qualify, median over the same restarts: launch -> global Teredo
  address on the interface (`ip -ts monitor address` in client1's namespace), and Router
  Solicitation on the wire -> address (a packet socket in client1's namespace timestamps the
  first RS sent to UDP port 3544);
- CPU per packet of the role's processes (utime + stime of its process group from /proc) over
  each UDP test, divided by the packets delivered.

Prints a table of medians over rounds (ours, Miredo, ratio ours/Miredo, which way is better)
and writes every per-round value, the machine and the settings to JSON. Timing figures on a
shared 2-core machine vary 10-20 % from run to run (docs/lab-notes.md): compare within one run.
Progress goes to stderr. Needs root, iperf3, Miredo, nftables and ping.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import string
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any, Final

from benchlib import bench_main, exit_status, require_root_and_tools, save_report

from teredo.core.errors import ParseError, UsageError, UserError
from teredo.core.wire import ICMPv6Type, icmpv6_message, is_router_solicitation, parse_teredo_packet
from teredo.lab import netns, processes
from teredo.lab.lab import Lab
from teredo.lab.processes import ProcessInfo
from teredo.lab.topology import NATIVE_IPV6, TEREDO_PREFIX, NatKind

ROLES: Final = ("relay", "client")
LAB_ROLE: Final = {"relay": "relay", "client": "client1"}  # role under test -> Lab role
IMPLS: Final = ("ours", "miredo")
CLIENT_NODE: Final = "cli1"
NATIVE_NODE: Final = "v6"
SERVER_PORT: Final = 3544  # RFC 4380 §2.7: the RS goes to the server's Teredo port
IPERF_PORT: Final = 5201
IPERF_SLACK: Final = 30.0  # seconds an iperf3 run may take beyond its duration
PAUSE: Final = 0.5  # seconds between tests, for queues to drain (0.1 with --quick)
ETH_P_ALL: Final = 0x0003  # only taps on every protocol see outgoing packets
ETH_P_IP: Final = 0x0800
SO_TIMESTAMPNS: Final = 35  # <asm-generic/socket.h>; Python's socket module lacks it
REQUIRED_TOOLS: Final = ("ip", "nft", "ping", "iperf3", "miredo", "miredo-server")
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    roles: tuple[str, ...] = ROLES
    digits: int = 1


def _udp_metrics(size: int) -> list[Metric]:
    metrics = []
    for direction, arrow in (("to_client", "native->client"), ("from_client", "client->native")):
        metrics += [
            Metric(
                f"udp{size}_{direction}_pps", f"UDP {size} B {arrow}", "pkt/s", "higher", digits=0
            ),
            Metric(f"udp{size}_{direction}_loss", f"UDP {size} B {arrow} loss", "%", "lower"),
        ]
    return metrics


METRICS: Final = [
    *_udp_metrics(64),
    *_udp_metrics(1200),
    Metric("tcp_to_client_mbps", "TCP native->client", "Mbit/s", "higher"),
    Metric("tcp_from_client_mbps", "TCP client->native", "Mbit/s", "higher"),
    Metric("rtt_established_ms", "ping RTT, established", "ms", "lower", digits=3),
    Metric("rtt_first_ms", "ping RTT, first packet to a new peer", "ms", "lower", digits=3),
    Metric("qualify_launch_ms", "qualify: launch -> address", "ms", "lower", ("client",), 2),
    Metric("qualify_rs_ms", "qualify: RS on the wire -> address", "ms", "lower", ("client",), 3),
    Metric(
        "cpu_udp64_to_client_us", "CPU/packet, UDP 64 B native->client", "us", "lower", digits=2
    ),
    Metric(
        "cpu_udp64_from_client_us", "CPU/packet, UDP 64 B client->native", "us", "lower", digits=2
    ),
]

UDP_TESTS: Final = [
    (size, direction) for size in (64, 1200) for direction in ("to_client", "from_client")
]


class ArmFailed(Exception):
    """The arm cannot go on (its lab did not come up, or the tunnel does not pass traffic)."""


@dataclass(frozen=True, slots=True)
class Settings:
    roles: tuple[str, ...]
    rounds: int
    duration: int
    nat: str
    rest: str
    server: str
    restarts: int
    pings: int
    quick: bool
    json_path: Path

    @property
    def pause(self) -> float:
        return 0.1 if self.quick else PAUSE


@dataclass(slots=True)
class Arm:
    """One lab with one implementation running the role under test, and what it measured."""

    role: str
    round: int
    impl: str
    lab: str = ""
    impls: dict[str, str] = field(default_factory=dict)
    teredo_address: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


_started = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _started:6.1f} s] {message}", file=sys.stderr, flush=True)


# -- small helpers ----------------------------------------------------------------------------


def random_lab_name(prefix: str = "bn") -> str:
    """A short lab name no other lab uses (as tests/labsupport.py makes them)."""
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(5))


def median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def group_cpu_ticks(pgid: int, namespace: str) -> dict[tuple[int, int], int]:
    """(pid, starttime) -> utime + stime in clock ticks, for the live members of a group.

    The lab starts each role in a process group of its own; Miredo forks workers into it.
    """
    ticks = {}
    for pid in processes.group_members(pgid, [namespace]):
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on
        ticks[(pid, int(fields[19]))] = int(fields[11]) + int(fields[12])
    return ticks


def cpu_seconds_between(
    before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]
) -> float:
    """CPU seconds used between two samples (processes started meanwhile count from zero)."""
    return sum(t - before.get(key, 0) for key, t in after.items()) / CLOCK_TICKS


_PING_REPLY = re.compile(r"icmp_seq=(\d+) .*time=([\d.]+) ms")


def ping_times(output: str) -> dict[int, float]:
    """icmp_seq -> RTT in ms, from iputils ping's per-reply lines."""
    return {int(m.group(1)): float(m.group(2)) for m in _PING_REPLY.finditer(output)}


def _listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of `pid`."""
    for table in ("tcp6", "tcp"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            return False
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _netlink_subscribed(pid: int) -> bool:
    """Whether `pid` holds a route netlink socket bound to multicast groups (ip monitor)."""
    try:
        lines = Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(
        p[1] == "0" and int(p[2]) == pid and int(p[3], 16) != 0
        for p in (line.split() for line in lines)
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ArmFailed(f"{what} within {timeout:g} s")
        time.sleep(0.02)


@contextlib.contextmanager
def helper_process(lab: Lab, node: str, argv: list[str], log: Path) -> Iterator[ProcessInfo]:
    """A process of ours in a node (own process group), stopped by pid when the block ends."""
    info = processes.launch(lab.namespace(node), argv, log)
    try:
        yield info
    finally:
        processes.stop([info], lab.namespaces, timeout=3.0)


# -- measurements -----------------------------------------------------------------------------


class Bench:
    """Measures one arm in a lab that is up."""

    def __init__(self, lab: Lab, arm: Arm, settings: Settings) -> None:
        self.lab = lab
        self.arm = arm
        self.settings = settings
        self.lab_role = LAB_ROLE[arm.role]
        self.address = self._client_address()

    def _client_address(self) -> IPv6Address:
        address = self.lab.teredo_address(CLIENT_NODE)
        if address is None:
            raise ArmFailed(f"{CLIENT_NODE} has no Teredo address")
        self.arm.teredo_address = str(address)
        return address

    def _role_group(self) -> tuple[int, str]:
        for entry in self.lab.status()["roles"]:
            if entry["role"] == self.lab_role:
                return int(entry["pid"]), self.lab.namespace(entry["node"])
        raise ArmFailed(f"the lab has no {self.lab_role}")

    def _record(self, name: str, value: float | None) -> None:
        self.arm.metrics[name] = value

    def _attempt(self, what: str, step: Callable[[], None], retries: int = 0) -> None:
        """Run one measurement; a failure is recorded and the arm goes on with the next.

        iperf3 tests get one retry: under a flood its control connection (TCP through the same
        tunnel) now and then loses the end-of-test exchange ("the client has terminated"). A
        retry is listed in the arm's raw values; only a measurement that fails every time is
        an error.
        """
        for attempt in range(retries + 1):
            try:
                step()
                return
            except (ArmFailed, UserError, ParseError, OSError, subprocess.SubprocessError) as error:
                message = f"{what}: {error}"
            except (KeyError, ValueError, TypeError) as error:  # unexpected tool output
                message = f"{what}: unreadable output ({type(error).__name__}: {error})"
            if attempt < retries:
                progress(f"  retrying after: {message}")
                self.arm.raw.setdefault("retried", []).append(message)
                time.sleep(max(self.settings.pause, 1.0))
        progress(f"  FAILED {message}")
        self.arm.errors.append(message)

    def run(self) -> None:
        self.warm_up()
        self._attempt("ping established", self.rtt_established)
        for size, direction in UDP_TESTS:
            udp = functools.partial(self.udp, size, direction)
            self._attempt(f"UDP {size} B {direction}", udp, retries=1)
        for direction in ("to_client", "from_client"):
            self._attempt(f"TCP {direction}", functools.partial(self.tcp, direction), retries=1)
        self._attempt("restarts", self.restarts)

    def warm_up(self) -> None:
        """Both directions once, so that the measured paths are established."""
        there = self.lab.ping(NATIVE_NODE, self.address, count=3, interval=0.2, wait=3)
        back = self.lab.ping(CLIENT_NODE, NATIVE_IPV6, count=3, interval=0.2, wait=3)
        if not (there.ok and back.ok):
            raise ArmFailed(
                f"no ping through the tunnel (native->client {there.received}/3, "
                f"client->native {back.received}/3)"
            )

    def rtt_established(self) -> None:
        count = self.settings.pings
        argv = ["ping", "-6", "-n", "-c", str(count), "-i", "0.01", "-W", "2", str(self.address)]
        result = self.lab.exec(NATIVE_NODE, argv, timeout=count * 0.01 + 15)
        times = list(ping_times(result.stdout).values())
        self.arm.raw["rtt_established_ms"] = times
        if not times:
            raise ArmFailed(f"no ping reply: {result.stdout.strip()[-200:]}")
        self._record("rtt_established_ms", median(times))

    def iperf(self, args: list[str]) -> dict[str, Any]:
        """One iperf3 test from the native host to a one-off `iperf3 -s -1` on client1."""
        duration = self.settings.duration
        log = self.lab.directory / "iperf3-server.log"
        with helper_process(self.lab, CLIENT_NODE, ["iperf3", "-s", "-1"], log) as server:
            wait_for(lambda: _listening(server.pid, IPERF_PORT), 5.0, "iperf3 -s did not listen")
            argv = ["iperf3", "-J", "--connect-timeout", "5000", "-t", str(duration)]
            argv += ["-c", str(self.address), *args]
            result = self.lab.exec(NATIVE_NODE, argv, timeout=duration + IPERF_SLACK)
        try:
            document: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError:
            output = (result.stdout + result.stderr).strip()[-300:]
            raise ArmFailed(f"iperf3 said: {output}") from None
        if "error" in document:
            raise ArmFailed(f"iperf3: {document['error']}")
        return document

    def udp(self, size: int, direction: str) -> None:
        name = f"udp{size}_{direction}"
        args = ["-u", "-b", "0", "-l", str(size)] + (["-R"] if direction == "from_client" else [])
        pgid, namespace = self._role_group()
        time.sleep(self.settings.pause)
        before = group_cpu_ticks(pgid, namespace)
        document = self.iperf(args)
        after = group_cpu_ticks(pgid, namespace)
        if not any(pid == pgid for pid, _ in after):
            raise ArmFailed(f"the {self.lab_role} exited during the test; read its log")
        cpu = cpu_seconds_between(before, after)
        received = document["end"]["sum_received"]
        sent = document["end"]["sum_sent"]
        delivered = int(received["packets"]) - int(received["lost_packets"])
        pps = delivered / float(received["seconds"])
        loss = float(received["lost_percent"])
        cpu_us = cpu / delivered * 1e6 if delivered > 0 else None
        self.arm.raw[name] = {
            "delivered_packets": delivered,
            "receiver_seconds": received["seconds"],
            "sent_packets": sent["packets"],
            "sender_pps": int(sent["packets"]) / float(sent["seconds"]),
            "lost_packets": received["lost_packets"],
            "role_cpu_seconds": cpu,
            "cpu_us_per_packet": cpu_us,
        }
        self._record(f"{name}_pps", pps)
        self._record(f"{name}_loss", loss)
        if size == 64:
            self._record(f"cpu_{name}_us", cpu_us)
        progress(
            f"  UDP {size} B {direction}: {pps:,.0f} pkt/s delivered, {loss:.1f} % lost, "
            + (f"{cpu_us:.2f} us CPU/packet" if cpu_us is not None else "no packet delivered")
        )

    def tcp(self, direction: str) -> None:
        time.sleep(self.settings.pause)
        document = self.iperf(["-R"] if direction == "from_client" else [])
        mbps = float(document["end"]["sum_received"]["bits_per_second"]) / 1e6
        self.arm.raw[f"tcp_{direction}"] = {
            "mbps": mbps,
            "retransmits": document["end"].get("sum_sent", {}).get("retransmits"),
        }
        self._record(f"tcp_{direction}_mbps", mbps)
        progress(f"  TCP {direction}: {mbps:,.1f} Mbit/s")

    def restarts(self) -> None:
        """Restart the role `--restarts` times: first-packet RTT (and qualify times)."""
        first: list[float] = []
        launch_ms: list[float] = []
        rs_ms: list[float] = []
        samples: list[dict[str, Any]] = []
        for attempt in range(1, self.settings.restarts + 1):
            time.sleep(self.settings.pause)
            sample: dict[str, Any] = {"attempt": attempt}
            samples.append(sample)
            if self.arm.role == "client":
                qualify = self.restart_timed(attempt)
                sample.update(qualify)
                if qualify.get("launch_ms") is not None:
                    launch_ms.append(qualify["launch_ms"])
                if qualify.get("rs_ms") is not None:
                    rs_ms.append(qualify["rs_ms"])
            else:
                self.lab.restart_role(self.lab_role)
            address = self.lab.teredo_address(CLIENT_NODE)
            if address is None:
                raise ArmFailed(f"{CLIENT_NODE} lost its Teredo address after a restart")
            sample["teredo_address"] = str(address)
            argv = ["ping", "-6", "-n", "-c", "1", "-W", "5", str(address)]
            result = self.lab.exec(NATIVE_NODE, argv, timeout=20)
            rtt = ping_times(result.stdout).get(1)
            sample["first_rtt_ms"] = rtt
            if rtt is not None:
                first.append(rtt)
            progress(
                f"  restart {attempt}: first ping "
                + (f"{rtt:.3f} ms" if rtt is not None else "lost")
                + "".join(
                    f", {label} {sample[key]:.2f} ms"
                    for key, label in (("launch_ms", "launch->address"), ("rs_ms", "RS->address"))
                    if sample.get(key) is not None
                )
            )
        self.arm.raw["restarts"] = samples
        self._record("rtt_first_ms", median(first))
        if self.arm.role == "client":
            self._record("qualify_launch_ms", median(launch_ms))
            self._record("qualify_rs_ms", median(rs_ms))
        if not first:
            raise ArmFailed("no first ping after a restart got a reply")

    def restart_timed(self, attempt: int) -> dict[str, Any]:
        """Restart client1 and time its qualification from launch and from the first RS."""
        namespace = self.lab.namespace(CLIENT_NODE)
        interface = self.lab.topology.node(CLIENT_NODE).interfaces[0].name
        log = self.lab.directory / f"address-monitor-{attempt}.log"
        with (
            rs_sniffer(namespace, interface) as sniffer,
            helper_process(self.lab, CLIENT_NODE, ["ip", "-ts", "monitor", "address"], log) as mon,
        ):
            wait_for(lambda: _netlink_subscribed(mon.pid), 5.0, "ip monitor did not subscribe")
            launched = self.lab.restart_role(self.lab_role)
            address_at = wait_address_event(log, launched)
            rs_at, ra_at = solicitation_times(sniffer, launched)
        result: dict[str, Any] = {
            "launched": launched,
            "rs_at": rs_at,
            "ra_at": ra_at,
            "address_at": address_at,
            "rs_to_ra_ms": (ra_at - rs_at) * 1e3
            if ra_at is not None and rs_at is not None
            else None,
        }
        result["launch_ms"] = (address_at - launched) * 1e3 if address_at is not None else None
        result["rs_ms"] = (
            (address_at - rs_at) * 1e3 if address_at is not None and rs_at is not None else None
        )
        if address_at is None:
            self.arm.errors.append(f"restart {attempt}: no address event seen by ip monitor")
        if rs_at is None:
            self.arm.errors.append(f"restart {attempt}: no Router Solicitation seen on the wire")
        return result


_MONITOR_LINE = re.compile(r"^\[([0-9T:.\-]+)\] (Deleted )?\d+: \S+\s+inet6 ([0-9a-f:]+)/")


def wait_address_event(log: Path, after: float, timeout: float = 3.0) -> float | None:
    """Wall-clock time of the first global Teredo address `ip -ts monitor` saw after `after`."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log.read_text(errors="replace").splitlines():
            match = _MONITOR_LINE.match(line)
            if match is None or match.group(2):
                continue
            address = IPv6Address(match.group(3))
            if address not in TEREDO_PREFIX or address.is_link_local:
                continue
            # ip prints local time; naive datetimes convert with the local zone, as time.time().
            at = datetime.datetime.fromisoformat(match.group(1)).timestamp()
            if at >= after:
                return at
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


@contextlib.contextmanager
def rs_sniffer(namespace: str, interface: str) -> Iterator[socket.socket]:
    """A packet socket on `interface` in `namespace` that timestamps its packets, both ways."""
    with netns.entered(namespace):
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            sniffer.bind((interface, ETH_P_ALL))  # the name is looked up in the namespace
        except OSError:
            sniffer.close()
            raise
    try:
        sniffer.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sniffer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sniffer.setblocking(False)
        yield sniffer
    finally:
        sniffer.close()


def solicitation_times(sniffer: socket.socket, after: float) -> tuple[float | None, float | None]:
    """Kernel timestamps of the first Teredo RS sent to UDP 3544 and the first RA after it.

    The RA (from UDP 3544) is not a metric of its own: RS -> RA is the server's share, and
    RA -> address what the client does with the answer (JSON only).
    """
    rs_at = ra_at = None
    while ra_at is None:
        try:
            data, ancillary, _, source = sniffer.recvmsg(65535, socket.CMSG_SPACE(16))
        except BlockingIOError:
            break
        if source[1] != ETH_P_IP:
            continue
        at: float | None = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("@qq", value[:16])
                at = int(seconds) + int(nanoseconds) / 1e9
        if at is None or at < after:
            continue
        if rs_at is None:
            if _teredo_icmpv6_type(data, to_server=True) == ICMPv6Type.ROUTER_SOLICITATION:
                rs_at = at
        elif _teredo_icmpv6_type(data, to_server=False) == ICMPv6Type.ROUTER_ADVERTISEMENT:
            ra_at = at
    return rs_at, ra_at


def _teredo_icmpv6_type(packet: bytes, *, to_server: bool) -> int | None:
    """The ICMPv6 type in an IPv4/UDP datagram to (or from) port 3544 (RFC 4380 §5.2.1)."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    header = (packet[0] & 0x0F) * 4
    udp = packet[header : header + 8]
    if len(udp) < 8 or struct.unpack("!H", udp[2:4] if to_server else udp[0:2])[0] != SERVER_PORT:
        return None
    try:
        ipv6 = parse_teredo_packet(packet[header + 8 :]).ipv6
    except (ParseError, IndexError, struct.error):
        return None
    if is_router_solicitation(ipv6):  # also checks hop limit and code (RFC 4861 §6.1.1)
        return ICMPv6Type.ROUTER_SOLICITATION
    message = icmpv6_message(ipv6)
    if message is None or message[0] == ICMPv6Type.ROUTER_SOLICITATION:  # not a valid RS
        return None
    return message[0]


# -- arms, rounds and the report --------------------------------------------------------------


def lab_impls(role: str, impl: str, settings: Settings) -> dict[str, str]:
    impls = {"server": settings.server, "relay": settings.rest, "client1": settings.rest}
    impls["client2"] = settings.rest
    impls[LAB_ROLE[role]] = impl
    return impls


def run_arm(role: str, round_: int, impl: str, settings: Settings, arms: list[Arm]) -> None:
    """Build the arm's lab, measure, tear it down; the arm joins `arms` before anything runs."""
    arm = Arm(role=role, round=round_, impl=impl, lab=random_lab_name())
    arms.append(arm)  # first, so that an interrupted arm still names its lab and what it measured
    arm.impls = lab_impls(role, impl, settings)
    arm.metrics = {m.name: None for m in METRICS if role in m.roles}
    progress(f"{role} round {round_}: {impl} (lab {arm.lab}: {arm.impls})")
    started = time.monotonic()
    lab = Lab(
        arm.lab,
        nat1=settings.nat,
        server=arm.impls["server"],
        relay=arm.impls["relay"],
        client1=arm.impls["client1"],
        client2=arm.impls["client2"],
        progress=lambda message: progress(f"  {message}"),
    )
    try:
        lab.up()
        Bench(lab, arm, settings).run()
    except (ArmFailed, UserError) as error:
        progress(f"  FAILED {error}")
        arm.errors.append(str(error))
    finally:
        lab.down()
        arm.seconds = time.monotonic() - started


def summarize(arms: list[Arm], settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for role in settings.roles:
        for metric in METRICS:
            if role not in metric.roles:
                continue
            values: dict[str, list[float | None]] = {impl: [] for impl in IMPLS}
            for arm in sorted(arms, key=lambda a: a.round):
                if arm.role == role:
                    values[arm.impl].append(arm.metrics.get(metric.name))
            ours = median([v for v in values["ours"] if v is not None])
            miredo = median([v for v in values["miredo"] if v is not None])
            ratio = ours / miredo if ours is not None and miredo else None
            rows.append(
                {
                    "role": role,
                    "metric": metric.name,
                    "label": metric.label,
                    "unit": metric.unit,
                    "better": metric.better,
                    "ours": ours,
                    "miredo": miredo,
                    "ratio": ratio,
                    "ours_per_round": values["ours"],
                    "miredo_per_round": values["miredo"],
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    digits = {m.name: m.digits for m in METRICS}

    def number(value: float | None, places: int) -> str:
        return "-" if value is None else f"{value:,.{places}f}"

    header = ("role", "metric", "unit", "ours", "Miredo", "ours/Miredo", "better")
    lines = [
        (
            row["role"],
            row["label"],
            row["unit"],
            number(row["ours"], digits[row["metric"]]),
            number(row["miredo"], digits[row["metric"]]),
            number(row["ratio"], 2),
            f"{row['better']} is better",
        )
        for row in rows
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]
    aligned = ("<", "<", "<", ">", ">", ">", "<")

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(
            f"{c:{a}{w}}" for c, a, w in zip(cells, aligned, widths, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def _command_output(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0] if lines else None


def _uncommitted(checkout: Path) -> list[str] | None:
    """Files under src/ that differ from the commit: the run measured those too."""
    if shutil.which("git") is None:
        return None
    argv = ["git", "-C", str(checkout), "status", "--porcelain", "--", "src"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return [line[3:] for line in result.stdout.splitlines()]


def machine() -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        teredo_version = importlib.metadata.version("teredo")
    except importlib.metadata.PackageNotFoundError:
        teredo_version = None
    here = Path(__file__).resolve().parent
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "miredo": _command_output(["miredo", "-V"]),
        "iperf3": _command_output(["iperf3", "-v"]),
        "teredo": teredo_version,
        "commit": _command_output(["git", "-C", str(here), "rev-parse", "--short", "HEAD"]),
        "uncommitted_in_src": _uncommitted(here.parent),
        "loadavg_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="bash scripts/bench",
        description="Benchmark this project's relay and client against Miredo's, in one run.",
    )
    # Three: the median of two is their mean, and at saturation four busy processes on a small
    # machine swing one run by 20 %.
    parser.add_argument("--rounds", type=int, default=3, help="rounds per role (default 3)")
    parser.add_argument(
        "--duration", type=int, default=5, metavar="S", help="seconds per iperf3 test (default 5)"
    )
    parser.add_argument(
        "--nat",
        default=NatKind.FULLCONE.value,
        choices=[k.value for k in NatKind],
        help="the NAT in front of client1 (default fullcone)",
    )
    parser.add_argument(
        "--rest",
        default="ours",
        choices=IMPLS,
        help="who runs every role not under test (default ours)",
    )
    parser.add_argument(
        "--server", choices=IMPLS, help="who runs the Teredo server (default: as --rest)"
    )
    parser.add_argument(
        "--roles",
        default=",".join(ROLES),
        help="roles under test, comma-separated (default relay,client)",
    )
    parser.add_argument(
        "--restarts",
        type=int,
        metavar="K",
        help="restarts per arm for first-packet RTT and time to qualify (default 5, --quick 1)",
    )
    parser.add_argument(
        "--pings",
        type=int,
        metavar="N",
        help="pings 10 ms apart for the established RTT (default 50, --quick 10)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one restart, 10 pings and short pauses per arm; --rounds 1 allowed",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        help="where to write the results (default benchmarks/results/tunnel-<timestamp>.json)",
    )
    args = parser.parse_args(argv)
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    if not roles or any(r not in ROLES for r in roles):
        raise UsageError(f"--roles takes a comma-separated list of {', '.join(ROLES)}")
    if args.rounds < (1 if args.quick else 2):
        raise UsageError(
            "--rounds must be at least 2, so that each side runs first once (1 with --quick)"
        )
    if args.duration < 1:
        raise UsageError("--duration must be at least 1 second")
    restarts = args.restarts if args.restarts is not None else (1 if args.quick else 5)
    pings = args.pings if args.pings is not None else (10 if args.quick else 50)
    if restarts < 1 or pings < 1:
        raise UsageError("--restarts and --pings must be at least 1")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Settings(
        roles=roles,
        rounds=args.rounds,
        duration=args.duration,
        nat=args.nat,
        rest=args.rest,
        server=args.server or args.rest,
        restarts=restarts,
        pings=pings,
        quick=args.quick,
        json_path=args.json or RESULTS_DIR / f"tunnel-{stamp}.json",
    )


def run(settings: Settings) -> int:
    require_root_and_tools(REQUIRED_TOOLS)
    report: dict[str, Any] = {
        "benchmark": "tunnel",
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "roles": list(settings.roles),
            "rounds": settings.rounds,
            "duration_s": settings.duration,
            "nat1": settings.nat,
            "rest": settings.rest,
            "server": settings.server,
            "restarts": settings.restarts,
            "pings": settings.pings,
            "quick": settings.quick,
        },
        "metrics": [
            {"name": m.name, "label": m.label, "unit": m.unit, "better": m.better, "roles": m.roles}
            for m in METRICS
        ],
    }
    arms: list[Arm] = []
    interrupted = False
    try:
        for role in settings.roles:
            for round_ in range(1, settings.rounds + 1):
                order = IMPLS if round_ % 2 else tuple(reversed(IMPLS))
                for impl in order:
                    run_arm(role, round_, impl, settings, arms)
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted: the labs built so far are torn down; writing what was measured")
    rows = summarize(arms, settings)
    left = save_report(report, arms, rows, interrupted, settings.json_path)

    info = report["machine"]
    print(table(rows))
    print()
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), kernel {info['kernel']}, "
        f"Python {info['python']}, {info['miredo']}, {info['iperf3']}, teredo {info['commit']}"
        + (
            f" with {len(info['uncommitted_in_src'])} uncommitted files in src/"
            if info["uncommitted_in_src"]
            else ""
        )
    )
    print(
        f"settings: {settings.rounds} rounds, iperf3 {settings.duration} s per test, NAT1 "
        f"{settings.nat}, other roles {settings.rest}, server {settings.server}, "
        f"{settings.restarts} restarts and {settings.pings} pings per arm; medians over rounds; "
        f"load average {info['loadavg_start'][0]:.2f} at start, {info['loadavg_end'][0]:.2f} at end"
    )
    print(f"raw values: {settings.json_path}")
    failures = [f"{a.role}/{a.impl} round {a.round}: {e}" for a in arms for e in a.errors]
    failures += [
        f"{a.role}/{a.impl} round {a.round}: no {name} measured"
        for a in arms
        for name, value in a.metrics.items()
        if value is None
    ]
    return exit_status(failures, left, interrupted)


def main(argv: list[str] | None = None) -> int:
    return bench_main(lambda: parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
