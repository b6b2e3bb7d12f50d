"""What the benchmarks at the Internet's shape share (internet.py, attack.py).

- The traffic generator: `compiled_flood()` compiles flood.c with `gcc -O2` into a temporary
  directory (no binary is ever kept), `Flood.run`/`Flood.start` run it inside a lab node and
  read the line it prints.
- Costs, from the kernel's own accounting: a role's CPU (utime + stime of its process group,
  /proc/PID/stat), the machine's busy CPU (/proc/stat: a kernel fast path works in softirq,
  which no process is charged for), a role's resident memory (VmRSS of the group) plus the
  locked memory of the BPF maps it holds or attached in its namespace, if any.
- Summaries: medians, percentiles, ratios and the "ours / Miredo (ratio) [ours/limit]" cells.

Pure functions (parsing, statistics, formatting) are unit-tested in tests/unit/test_benchlib.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol, TypeVar

from teredo.core.errors import UserError
from teredo.lab import netns, processes
from teredo.lab.lab import Lab

SettingsT = TypeVar("SettingsT")

FLOOD_SOURCE: Final = Path(__file__).resolve().with_name("flood.c")
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
FLOOD_SLACK: Final = 30.0  # seconds a flood may take beyond its own bound


# -- the generator ----------------------------------------------------------------------------


@contextlib.contextmanager
def compiled_flood() -> Iterator[Path]:
    """flood.c compiled with gcc -O2 into a temporary directory, removed afterwards."""
    if shutil.which("gcc") is None:
        raise UserError("the benchmark compiles benchmarks/flood.c: install gcc (apt install gcc)")
    with tempfile.TemporaryDirectory(prefix="teredo-flood-") as directory:
        binary = Path(directory) / "flood"
        result = subprocess.run(
            ["gcc", "-O2", "-Wall", "-o", str(binary), str(FLOOD_SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise UserError(
                f"gcc could not compile {FLOOD_SOURCE.name}: "
                f"{result.stderr.strip().splitlines()[-1:]}; check the gcc installation"
            )
        yield binary


@dataclass(frozen=True, slots=True)
class FloodResult:
    mode: str
    sent: int
    failed: int
    seconds: float
    pps: float
    clients: int
    first: int


_FLOOD_LINE: Final = re.compile(
    r"flood mode=(\w+) sent=(\d+) failed=(\d+) seconds=([\d.]+) pps=([\d.]+) "
    r"clients=(\d+) first=(\d+)"
)


def parse_flood(output: str) -> FloodResult:
    """The generator's summary line; ValueError when it printed none."""
    match = _FLOOD_LINE.search(output)
    if match is None:
        raise ValueError(f"the generator printed no summary: {output.strip()[-200:]!r}")
    mode, sent, failed, seconds, pps, clients, first = match.groups()
    return FloodResult(
        mode, int(sent), int(failed), float(seconds), float(pps), int(clients), int(first)
    )


# The role under test gets a CPU of its own, as if it were another host: on a machine of two
# or more CPUs, the generator and the rest of the lab (router, senders, sinks) run on CPU 0 and
# the role's node on CPU 1. In namespaces on one machine a packet is otherwise processed, all
# the way through the relay's node, on the CPU of the process that sent it (a veth hands it to
# the next namespace in the sender's softirq), so an in-kernel path would pay on the
# generator's CPU what a user-space daemon pays on its own: a lab artefact, not a property of
# either relay. Receive packet steering (RPS) on the veths in and out of the role's node moves
# that processing where a separate host's network card would: its way in to CPU 1, its way out
# back to CPU 0. Both relays (and servers) are measured the same way.
LAB_CPU: Final = 0
ROLE_CPU: Final = 1


def cpus_to_split() -> bool:
    return (os.cpu_count() or 1) >= 2


def _rps(lab: Lab, node: str, interface: str, cpu: int) -> None:
    path = f"/sys/class/net/{interface}/queues/rx-0/rps_cpus"
    subprocess.run(
        ["ip", "netns", "exec", lab.namespace(node), "sh", "-c", f"echo {1 << cpu:x} > {path}"],
        check=True,
        capture_output=True,
    )


def give_own_cpu(lab: Lab, node: str, pids: Iterable[int]) -> None:
    """Steer `node`'s traffic (the role's node: "relay" or "srv") and its processes `pids` to
    ROLE_CPU, the traffic leaving it back to LAB_CPU (see above). A no-op on one CPU."""
    if not cpus_to_split():
        return
    _rps(lab, node, "eth0", ROLE_CPU)
    _rps(lab, "inet", node, LAB_CPU)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {ROLE_CPU})


class Flood:
    """The compiled generator, run inside the nodes of one lab (on LAB_CPU when the machine
    has CPUs to split)."""

    def __init__(self, binary: Path, lab: Lab) -> None:
        self.binary = binary
        self.lab = lab

    def argv(self, node: str, args: Iterable[str]) -> list[str]:
        pin = ["taskset", "-c", str(LAB_CPU)] if cpus_to_split() else []
        return ["ip", "netns", "exec", self.lab.namespace(node), *pin, str(self.binary), *args]

    def run(self, node: str, args: list[str], bound: float) -> FloodResult:
        """Run to completion (`bound`: the seconds the flood itself may last)."""
        result = subprocess.run(
            self.argv(node, args),
            capture_output=True,
            text=True,
            timeout=bound + FLOOD_SLACK,
            check=False,
        )
        if result.returncode != 0:
            raise UserError(f"the generator failed in {node}: {result.stderr.strip()}")
        return parse_flood(result.stdout)

    def start(self, node: str, args: list[str]) -> subprocess.Popen[str]:
        """Start in the background; `finish` waits for it and reads its summary."""
        return subprocess.Popen(
            self.argv(node, args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def finish(process: subprocess.Popen[str], timeout: float) -> FloodResult:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise UserError(f"the generator failed: {stderr.strip()}")
        return parse_flood(stdout)


def keep_log(lab: Lab, node: str, like: Path) -> Path | None:
    """Copy a role's log next to the results file `like` (the lab removes its own on teardown),
    as <results stem>-<lab>-<node>.log; None when there is no log."""
    source = lab.directory / f"{node}.log"
    if not source.exists():
        return None
    target = like.with_name(f"{like.stem}-{lab.name}-{node}.log")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


# -- costs ------------------------------------------------------------------------------------


def parse_proc_stat(text: str, cpu: int | None = None) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs from /proc/stat's "cpu" line (of CPU `cpu` from
    its "cpuN" line, when given).

    Busy is user + nice + system + irq + softirq + steal (guest time is inside user already);
    idle and iowait are not busy.
    """
    label = "cpu " if cpu is None else f"cpu{cpu} "
    for line in text.splitlines():
        if line.startswith(label):
            values = [int(v) for v in line.split()[1:]]
            values += [0] * (8 - len(values))
            user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
            busy = user + nice + system + irq + softirq + steal
            return busy, busy + idle + iowait
    raise ValueError("no cpu line in /proc/stat")


def machine_busy_ticks(cpu: int | None = None) -> int:
    return parse_proc_stat(Path("/proc/stat").read_text(), cpu)[0]


def parse_stat_cpu(text: str) -> tuple[int, int]:
    """(utime + stime, starttime) in clock ticks from /proc/PID/stat."""
    fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on
    return int(fields[11]) + int(fields[12]), int(fields[19])


def group_pids(pgid: int, namespace: str) -> list[int]:
    """The live members of a role's process group (the lab starts each role in its own)."""
    return processes.group_members(pgid, [namespace])


def group_cpu_ticks(pids: Iterable[int]) -> dict[tuple[int, int], int]:
    """(pid, starttime) -> utime + stime, for processes that still exist."""
    ticks = {}
    for pid in pids:
        try:
            cpu, start = parse_stat_cpu(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        ticks[(pid, start)] = cpu
    return ticks


def cpu_seconds(before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]) -> float:
    """CPU seconds used between two samples (processes started meanwhile count from zero)."""
    return sum(t - before.get(key, 0) for key, t in after.items()) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """utime + stime of this process's waited-for children (the generator runs as one)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_vm_rss(text: str) -> int:
    """VmRSS in bytes from /proc/PID/status (0 for a kernel thread or a zombie)."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def parse_vm_hwm(text: str) -> int:
    """VmHWM (the peak resident set) in bytes from /proc/PID/status."""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pids: Iterable[int], peak: bool = False) -> int:
    """Resident memory of the processes now (or their peaks with `peak`), summed."""
    parse = parse_vm_hwm if peak else parse_vm_rss
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += parse(Path(f"/proc/{pid}/status").read_text())
    return total


def daemon_status(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """The status document of one of our daemons, through its control socket.

    The protocol (teredo's control socket): one JSON line {"command": "status"} in, one JSON
    document back. Raises OSError or ValueError when the daemon does not answer.
    """

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b'{"command": "status"}\n')
        with sock.makefile("rb") as stream:
            document = json.loads(stream.readline())
    if not isinstance(document, dict) or "error" in document:
        raise ValueError(f"the daemon at {path} answered {document!r}")
    return document


def parse_fdinfo_map(text: str) -> tuple[int, int] | None:
    """(map id, memlock bytes) when this /proc/PID/fdinfo/FD describes a BPF map."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    if "map_id" not in fields or "memlock" not in fields:
        return None
    return int(fields["map_id"]), int(fields["memlock"])


def _bpftool_json(namespace: str | None, args: list[str]) -> Any:
    argv = ["bpftool", "-j", *args]
    if namespace is not None:
        argv = ["ip", "netns", "exec", namespace, *argv]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return None


def attached_program_ids(document: Any) -> set[int]:
    """Program ids in `bpftool -j net show` output (XDP, tc, flow dissector, netfilter...)."""
    ids: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("id", "prog_id") and isinstance(value, int):
                    ids.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return ids


def bpf_map_bytes(pids: Iterable[int], namespace: str) -> int:
    """Kernel memory (memlock) of the BPF maps a role holds: maps its processes have open,
    and maps of programs attached to interfaces in its namespace. 0 when it has none."""
    maps: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for entry in Path(f"/proc/{pid}/fdinfo").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    found = parse_fdinfo_map(entry.read_text())
                    if found is not None:
                        maps[found[0]] = found[1]
    if shutil.which("bpftool") is None:
        return sum(maps.values())
    for program in attached_program_ids(_bpftool_json(namespace, ["net", "show"])):
        info = _bpftool_json(None, ["prog", "show", "id", str(program)])
        for map_id in (info or {}).get("map_ids", []):
            if map_id not in maps:
                shown = _bpftool_json(None, ["map", "show", "id", str(map_id)]) or {}
                maps[map_id] = int(shown.get("bytes_memlock", 0))
    return sum(maps.values())


@dataclass(frozen=True, slots=True)
class Costs:
    """A sample of what a role and the machine have used so far."""

    at: float
    machine_ticks: int
    role_ticks: dict[tuple[int, int], int]
    children_cpu: float
    role_cpu_ticks: int  # busy ticks of ROLE_CPU (0 when the machine has no CPUs to split)


def sample(pids: Iterable[int]) -> Costs:
    return Costs(
        time.monotonic(),
        machine_busy_ticks(),
        group_cpu_ticks(pids),
        children_cpu_seconds(),
        machine_busy_ticks(ROLE_CPU) if cpus_to_split() else 0,
    )


@dataclass(frozen=True, slots=True)
class Used:
    seconds: float  # wall clock
    role_cpu: float  # CPU seconds of the role's processes
    machine_cpu: float  # busy CPU seconds of the whole machine
    generator_cpu: float  # CPU seconds of the generator (and anything else we waited for)
    role_host_cpu: float  # busy seconds of ROLE_CPU: the role's node, kernel work included


def used_between(before: Costs, after: Costs) -> Used:
    return Used(
        seconds=after.at - before.at,
        role_cpu=cpu_seconds(before.role_ticks, after.role_ticks),
        machine_cpu=(after.machine_ticks - before.machine_ticks) / CLOCK_TICKS,
        generator_cpu=after.children_cpu - before.children_cpu,
        role_host_cpu=(after.role_cpu_ticks - before.role_cpu_ticks) / CLOCK_TICKS,
    )


# -- statistics and formatting ----------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return float(statistics.median(present)) if present else None


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100), nearest rank: a value that was actually measured."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def per(amount: float | None, count: float | None, scale: float = 1.0) -> float | None:
    """amount / count * scale, or None when there is nothing to divide by."""
    if amount is None or not count:
        return None
    return amount / count * scale


def si(value: float | None, digits: int = 3) -> str:
    """A short human number: 1.23M, 45.6k, 789, 0.52 ("-" for None)."""
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


def comparison(
    ours: float | None, miredo: float | None, limit: float | None = None, digits: int = 3
) -> str:
    """ "ours / Miredo (ours/Miredo) [ours/limit]", the limit part only when a limit exists."""
    text = f"{si(ours, digits)} / {si(miredo, digits)}"
    r = ratio(ours, miredo)
    text += f" ({r:.2f})" if r is not None else " (-)"
    if limit is not None:
        fraction = ratio(ours, limit)
        text += f" [{fraction:.2f}]" if fraction is not None else " [-]"
    return text


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns separated by " | ", the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return " | ".join([first, *rest]).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def parse_count(text: str) -> int:
    """1, 1000, 1k, 100k, 1M (k = 1 000, M = 1 000 000)."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1000, "m": 1000000}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    value = float(number)
    if value <= 0 or value * scale != int(value * scale):
        raise ValueError(text)
    return int(value * scale)


def count_label(n: int) -> str:
    """1, 1k, 100k, 1M."""
    if n >= 1000000 and n % 1000000 == 0:
        return f"{n // 1000000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


_PING_REPLY: Final = re.compile(r"icmp_seq=(\d+) .*time=([\d.]+) ms")
_PING_COUNTS: Final = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


@dataclass(frozen=True, slots=True)
class Pings:
    transmitted: int
    received: int
    times: dict[int, float]  # icmp_seq -> RTT in ms

    @property
    def loss(self) -> float | None:
        """Lost fraction in percent."""
        if not self.transmitted:
            return None
        return 100.0 * (self.transmitted - self.received) / self.transmitted

    def stats(self) -> dict[str, float | None]:
        values = list(self.times.values())
        return {
            "loss_pct": self.loss,
            "avg_ms": statistics.fmean(values) if values else None,
            "median_ms": median(values),
            "p99_ms": percentile(values, 99),
            "max_ms": max(values) if values else None,
        }


def parse_pings(output: str) -> Pings:
    """iputils ping's per-reply lines and summary."""
    counts = _PING_COUNTS.search(output)
    times: dict[int, float] = {}
    for match in _PING_REPLY.finditer(output):
        times.setdefault(int(match.group(1)), float(match.group(2)))
    return Pings(
        transmitted=int(counts.group(1)) if counts else 0,
        received=int(counts.group(2)) if counts else len(times),
        times=times,
    )


def first_reply_seconds(pings: Pings, interval: float) -> float | None:
    """Seconds from the first echo request to the first reply (requests go `interval` apart)."""
    if not pings.times:
        return None
    seq = min(pings.times)
    return (seq - 1) * interval + pings.times[seq] / 1000.0


def ping_argv(destination: str, count: int, interval: float, wait: float = 2.0) -> list[str]:
    return [
        "ping",
        "-6",
        "-n",
        "-c",
        str(count),
        "-i",
        f"{interval:g}",
        "-W",
        f"{wait:g}",
        destination,
    ]


# -- arms in generator labs --------------------------------------------------------------------


class ArmFailed(Exception):
    """The arm cannot go on."""


class ArmRecord(Protocol):
    """What every benchmark's arm (a dataclass) has: its lab, what went wrong, how long it
    took. `run_arm_lab` fills in the last two; `save_report` writes every field."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    lab: str
    errors: list[str]
    seconds: float


def arm_json(arm: ArmRecord) -> dict[str, Any]:
    """An arm's fields as JSON, its duration to a tenth of a second."""
    return {**dataclasses.asdict(arm), "seconds": round(arm.seconds, 1)}


def generator_lab(
    name: str,
    nat: str,
    impls: dict[str, str],
    progress: Callable[[str], None],
    ours_config: dict[str, list[str]] | None = None,
) -> Lab:
    """A lab with the generator node, each role run by `impls` (default: "auto")."""
    return Lab(
        name,
        nat1=nat,
        generator=True,
        ours_config=ours_config,
        progress=lambda message: progress(f"  {message}"),
        server=impls.get("server", "auto"),
        relay=impls.get("relay", "auto"),
        client1=impls.get("client1", "auto"),
        client2=impls.get("client2", "auto"),
    )


def run_arm_lab(
    lab: Lab, arm: ArmRecord, work: Callable[[], None], progress: Callable[[str], None]
) -> None:
    """Bring `lab` up, run `work`, and always take the lab down; an arm's failure is recorded
    in `arm.errors` (the run goes on with the next arm), its duration in `arm.seconds`."""
    started = time.monotonic()
    try:
        lab.up()
        work()
    except (ArmFailed, UserError) as error:
        progress(f"  FAILED {error}")
        arm.errors.append(str(error))
    finally:
        lab.down()
        arm.seconds = time.monotonic() - started


def require_root_and_tools(tools: Iterable[str]) -> None:
    """A benchmark builds network namespaces (root) and runs `tools`."""
    if os.geteuid() != 0:
        raise UserError("the benchmark builds network namespaces: run it as root")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)}: run `bash scripts/setup` first")


# -- the end of a run ---------------------------------------------------------------------------


def leftovers(labs: list[str]) -> list[str]:
    """Namespaces of this run's labs that still exist (there should be none)."""
    prefixes = tuple(f"{lab}-" for lab in labs)
    return [name for name in netns.list_namespaces() if name.startswith(prefixes)]


def save_report(
    report: dict[str, Any],
    arms: Sequence[ArmRecord],
    summary: Any,
    interrupted: bool,
    path: Path,
) -> list[str]:
    """Complete `report` with how the run ended, its arms and `summary`, write it
    to `path` as JSON, and return the namespaces the arms' labs left behind."""
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    report["interrupted"] = interrupted
    report["arms"] = [arm_json(arm) for arm in arms]
    report["summary"] = summary
    left = leftovers([arm.lab for arm in arms])
    report["leftover_namespaces"] = left
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return left


def exit_status(failures: list[str], left: list[str], interrupted: bool) -> int:
    """Print every failure and leftover namespace; 130 when interrupted, else 1 if anything
    failed or was left behind."""
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if left:
        print(f"error: namespaces left behind: {', '.join(left)}", file=sys.stderr)
    if interrupted:
        return 130
    return 1 if failures or left else 0


# -- the benchmarks' entry point ----------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end a benchmark as Ctrl-C does: its labs are torn down."""
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def bench_main(parse: Callable[[], SettingsT], run: Callable[[SettingsT], int]) -> int:
    """A benchmark's main: its settings, its run under `interrupted_by_signals`, and a
    person's mistake as one sentence (exit status 2)."""
    try:
        settings = parse()
        with interrupted_by_signals():
            return run(settings)
    except UserError as error:
        print(f"bench: {error}", file=sys.stderr)
        return error.exit_code
