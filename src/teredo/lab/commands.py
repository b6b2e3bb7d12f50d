"""`teredo lab up/down/status/exec/demo`: the lab's command line on top of `teredo.lab.lab`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv6Address
from typing import Final, TextIO

from teredo.core.errors import EXIT_BROKEN_PIPE, UserError
from teredo.lab.lab import (
    Lab,
    PingResult,
    describe_teredo,
    raise_if_interrupted,
    terminate_as_interrupt,
)
from teredo.lab.roles import EVERY_ROLE, OURS_IMPLEMENTED, Impl
from teredo.lab.state import list_labs, load
from teredo.lab.topology import NATIVE_IPV6

PING_HOW: Final = "ping -6 -c 4 -i 0.3 -W 2"


def run_lab_command(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UserError("the lab needs root (network namespaces, nftables); run it with sudo")
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "up": _up,
        "down": _down,
        "status": _status,
        "exec": _exec,
        "demo": _demo,
    }
    status = handlers[args.lab_command](args)
    return (status or EXIT_BROKEN_PIPE) if _output.lost else status


class _Output:
    lost = False  # a write found the reader gone


_output = _Output()


def _say(message: str, stream: TextIO = sys.stdout, end: str = "\n") -> None:
    """Print now. When the reader has gone (`teredo lab demo | head -3`) the lab's work goes on,
    since stopping halfway would leave namespaces and processes behind; the rest of the output
    goes nowhere, and the command exits 141 (SIGPIPE's status) unless it failed."""
    try:
        print(message, file=stream, end=end, flush=True)
    except BrokenPipeError:
        _output.lost = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def _new_lab(args: argparse.Namespace) -> Lab:
    return Lab(
        args.name,
        nat1=args.nat1,
        nat2=args.nat2,
        server=args.server,
        relay=args.relay,
        client1=args.client1,
        client2=args.client2,
        ready_timeout=args.timeout,
        progress=lambda message: _say(f"  {message}"),
        generator=getattr(args, "generator", False),
        relays=getattr(args, "relays", 1),
        same_nat=getattr(args, "same_nat", False),
        hairpinning=getattr(args, "hairpinning", "yes") == "yes",
    )


def _up(args: argparse.Namespace) -> int:
    lab = _new_lab(args)
    _say(f"bringing up lab {lab.name}: {_impls_line(lab)}")
    lab.up()
    _say(
        f"lab {lab.name} is up. Try: teredo lab status --name {lab.name}; "
        f"teredo lab exec --name {lab.name} cli1 ping -6 {NATIVE_IPV6}; "
        f"teredo lab down --name {lab.name}"
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    lab = Lab(args.name)
    if load(args.name) is None and not any(
        os.path.exists(f"/run/netns/{ns}") for ns in lab.possible_namespaces
    ):
        raise UserError(f"no lab named {args.name!r} is up{_others(args.name)}")
    done = lab.down()
    _say(f"lab {lab.name} is down: {', '.join(done) if done else 'nothing was left'}")
    return 0


def _others(name: str) -> str:
    others = [lab for lab in list_labs() if lab != name]
    return f" (labs up: {', '.join(others)}; pass --name)" if others else ""


def _attach(name: str) -> Lab:
    if load(name) is None:
        raise UserError(f"no lab named {name!r} is up{_others(name)}; start one with teredo lab up")
    return Lab.attach(name)


def _status(args: argparse.Namespace) -> int:
    status = _attach(args.name).status()
    if args.json:
        _say(json.dumps(status, indent=2))
        return 0
    _say(f"lab {status['name']} ({status['phase']}), state and logs in {status['state_dir']}")
    rows = []
    for node in status["nodes"]:
        kind = node["kind"] + (f" ({node['nat']})" if "nat" in node else "")
        present = "" if node["exists"] else "  MISSING"
        rows.append([node["node"], node["namespace"], kind, " ".join(node["addresses"]) + present])
    _table(["node", "namespace", "kind", "addresses"], rows)
    _say("")
    rows = []
    for role in status["roles"]:
        teredo = ""
        if "teredo" in role:
            teredo = "no Teredo address"
            if role["teredo"]:
                address = IPv6Address(role["teredo"]["address"])
                teredo = f"{address} ({describe_teredo(address)})"
        alive = "running" if role["alive"] else "NOT RUNNING"
        rows.append([role["role"], role["node"], role["impl"], str(role["pid"]), alive, teredo])
    _table(["role", "node", "impl", "pid", "process", "Teredo address"], rows)
    if "bgp" in status:
        _say("")
        rows = [
            [s["node"], s["peer"], s["state"], s["info"] or "-"] for s in status["bgp"]["sessions"]
        ]
        _table(["BGP at", "session with", "state", "info"], rows)
        preferred = status["bgp"]["preferred_relay"]
        _say(
            "the router prefers "
            + (f"{preferred} for 2001::/32" if preferred else "no relay: no BGP route to 2001::/32")
        )
    return 0


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        _say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _exec(args: argparse.Namespace) -> int:
    lab = _attach(args.name)
    namespace = lab.namespace(args.node)
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        command = [os.environ.get("SHELL", "/bin/sh")]
    try:
        return subprocess.call(["ip", "netns", "exec", namespace, *command])
    except FileNotFoundError:
        raise UserError("ip (iproute2) is not installed; install the iproute2 package") from None


def _impls_line(lab: Lab) -> str:
    parts = []
    for role, impl in lab.impls.items():
        kind = EVERY_ROLE[role][1]
        if impl is Impl.MIREDO and not OURS_IMPLEMENTED[kind]:
            parts.append(f"{role} Miredo (ours not implemented yet)")
        elif impl is Impl.MIREDO:
            parts.append(f"{role} Miredo")
        else:
            parts.append(f"{role} teredo (ours)")
    return f"{'; '.join(parts)}; {lab.nat_description}"


def _demo(args: argparse.Namespace) -> int:
    # SIGTERM and SIGHUP unwind like Ctrl-C for the whole demo, so it always tears down.
    with terminate_as_interrupt():
        return _run_demo(args)


def _run_demo(args: argparse.Namespace) -> int:
    lab = _new_lab(args)
    _say(f"teredo lab demo: a Teredo Internet in network namespaces {lab.name}-*")
    _say(f"roles: {_impls_line(lab)}")
    started = time.monotonic()
    results: list[PingResult] = []
    try:
        lab.up()
        raise_if_interrupted()
        _say("qualification:")
        addresses: dict[str, IPv6Address] = {}
        for role, node in (("client1", "cli1"), ("client2", "cli2")):
            address = lab.teredo_address(node)
            if address is None:
                raise UserError(f"{role} lost its Teredo address; read {lab.directory}/{node}.log")
            addresses[node] = address
            site = lab.topology.site(f"nat{node[-1]}")
            _say(f"  {role}  {address}")
            _say(f"           {describe_teredo(address)}; behind a {site.kind.value} NAT")
        paths: list[tuple[str, str, IPv6Address]] = [
            ("native", "v6", addresses["cli1"]),
            ("client1", "cli1", NATIVE_IPV6),
            ("native", "v6", addresses["cli2"]),
            ("client2", "cli2", NATIVE_IPV6),
            ("client1", "cli1", addresses["cli2"]),
            ("client2", "cli2", addresses["cli1"]),
        ]
        names = {str(v): k for k, v in (("native", NATIVE_IPV6), *_named(addresses))}
        _say(f"reachability ({PING_HOW}; a path works when at least one reply comes back):")
        interactive = sys.stdout.isatty()
        for label, node, destination in paths:
            raise_if_interrupted()
            arrow = f"  {label:>7} -> {names[str(destination)]:<8}"
            # Progress while ping waits: on a terminal the line is rewritten with the verdict.
            if interactive:
                _say(f"{arrow} pinging ...", end="")
            result = lab.ping(node, destination)
            results.append(result)
            _say(f"\r{arrow} {_verdict(result)}" if interactive else f"{arrow} {_verdict(result)}")
    finally:
        done = lab.down()
        _say(f"torn down: {', '.join(done) if done else 'nothing was left'}")
    working = sum(result.ok for result in results)
    elapsed = time.monotonic() - started
    if working == len(results):
        _say(f"result: all {working} paths work ({elapsed:.1f} s)")
        return 0
    _say(f"result: {len(results) - working} of {len(results)} paths FAILED ({elapsed:.1f} s)")
    return 1


def _named(addresses: dict[str, IPv6Address]) -> list[tuple[str, IPv6Address]]:
    return [("client1", addresses["cli1"]), ("client2", addresses["cli2"])]


def _verdict(result: PingResult) -> str:
    replies = f"{result.received}/{result.transmitted} replies"
    if not result.ok:
        return f"FAILED  {replies}"
    return f"ok      {replies}, avg {result.rtt_avg_ms:.2f} ms"
