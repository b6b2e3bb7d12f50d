"""Processes the lab starts inside its namespaces, and how it stops them again.

Each role runs as `ip netns exec NS PROGRAM ...` (ip execs PROGRAM, so the pid is the role's)
in a session and process group of its own. A process is identified by its pid *and* its start
time, so a pid reused by an unrelated process after the role died is never signalled; and only
members of the group that still live in one of the lab's namespaces are signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from teredo.core.errors import UserError
from teredo.lab import netns

logger = logging.getLogger(__name__)

STOP_TIMEOUT: Final = 6.0  # seconds between SIGTERM and SIGKILL (a Miredo client takes ~2 s)

# Popen objects of the processes this Python process started, to reap them once stopped.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    starttime: int  # clock ticks since boot, /proc/PID/stat field 22
    namespace: str


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return text[text.rindex(")") + 2 :].split()


def starttime_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(info: ProcessInfo) -> bool:
    """True while the very process we started runs (not a zombie, not a reused pid)."""
    _reap()
    fields = _stat_fields(info.pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == info.starttime


def launch(
    namespace: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> ProcessInfo:
    """Start `argv` inside `namespace`, stdout and stderr appended to `log_path`."""
    if shutil.which("ip") is None:
        raise UserError("the lab runs its roles with `ip netns exec`; install iproute2")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _children[process.pid] = process
    starttime = starttime_of(process.pid)
    if starttime is None:  # it died at once; its log says why
        starttime = -1
    logger.debug("started pid %d in %s: %s", process.pid, namespace, " ".join(argv))
    return ProcessInfo(process.pid, starttime, namespace)


def _reap() -> None:
    # Labs may run in several threads at once (benchmarks/matrix.py): another may have
    # reaped the same child meanwhile.
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            _children.pop(pid, None)


def group_members(pgid: int, namespaces: Iterable[str]) -> list[int]:
    """Live members of process group `pgid` that live in one of `namespaces`."""
    allowed = {netns.namespace_inode(name) for name in namespaces} - {None}
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or fields[0] == "Z" or int(fields[2]) != pgid:
            continue
        if netns.process_namespace_inode(int(entry.name)) in allowed:
            members.append(int(entry.name))
    return members


def stop(
    processes: Iterable[ProcessInfo], namespaces: Iterable[str], timeout: float = STOP_TIMEOUT
) -> list[int]:
    """SIGTERM the groups of these processes, then SIGKILL what is left after `timeout`.

    Returns the pids that had to be killed. Groups whose leader is no longer the process we
    started are still stopped when members remain in a lab namespace (the leader died first).
    """
    names = list(namespaces)
    groups = [info.pid for info in processes]
    _signal_groups(groups, names, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap()
        if not any(group_members(pgid, names) for pgid in groups):
            return []
        time.sleep(0.05)
    killed = _signal_groups(groups, names, signal.SIGKILL)
    time.sleep(0.05)
    _reap()
    return killed


def signal_group(info: ProcessInfo, namespaces: Iterable[str], signum: int) -> list[int]:
    """Send `signum` to the live members of the process group `info` leads; their pids."""
    if not is_alive(info) and not group_members(info.pid, namespaces):
        return []
    return _signal_groups([info.pid], list(namespaces), signum)


def _signal_groups(groups: Iterable[int], namespaces: list[str], signum: int) -> list[int]:
    signalled = []
    for pgid in groups:
        for pid in group_members(pgid, namespaces):
            try:
                os.kill(pid, signum)
                signalled.append(pid)
            except ProcessLookupError:
                pass
    return signalled


def stop_pids(pids: Iterable[int], timeout: float = 2.0) -> None:
    """Stop leftover processes found in lab namespaces: SIGTERM, then SIGKILL."""
    pids = list(pids)
    starts = {pid: starttime_of(pid) for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap()
        if not [p for p in pids if _same(p, starts[p])]:
            return
        time.sleep(0.05)
    for pid in pids:
        if _same(pid, starts[pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    _reap()


def _same(pid: int, starttime: int | None) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == starttime
