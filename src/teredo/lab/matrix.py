"""The reachability matrix: which pairs of NAT kinds let two Teredo clients reach each other.

RFC 6081 §3 Figure 1 says, for a client behind one NAT kind initiating toward a client behind
another, whether plain RFC 4380 works ("Yes"), or which extensions it takes ("SNS", the
Symmetric NAT Support extension; "SNS+UPnP", "SNS+PP" and "SNS+SS" with the UPnP,
port-preserving and sequential port-symmetric extensions), or that nothing can ("No").
`measure_pair` measures a lab's cells: one lab per NAT pair, every path pinged from a fresh
state, client 1 initiating first, then (after both clients restarted: new ports, no peer state)
client 2 initiating. The lab's NAT kind "none" (a public address) stands in the figure's cone
row and column.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv6Address
from typing import Final

from teredo.lab.lab import Lab
from teredo.lab.topology import NATIVE_IPV6, NatKind

Path = tuple[str, str]  # (source node, destination node); "v6" is the native host

# Phase 1 runs on a fresh lab, phase 2 after both clients restarted: each Teredo<->Teredo
# direction starts from no state at all.
PHASE1: Final[tuple[Path, ...]] = (("cli1", "v6"), ("v6", "cli2"), ("cli1", "cli2"))
PHASE2: Final[tuple[Path, ...]] = (("v6", "cli1"), ("cli2", "v6"), ("cli2", "cli1"))

# Figure 1's rows and columns, in its order, as the lab's NAT kinds.
FIGURE_KINDS: Final = (
    NatKind.FULLCONE,
    NatKind.RESTRICTED,
    NatKind.PORT_RESTRICTED,
    NatKind.UPNP_PORT_RESTRICTED,
    NatKind.UPNP_SYMMETRIC,
    NatKind.SYMMETRIC_PRESERVING,
    NatKind.SYMMETRIC_SEQUENTIAL,
    NatKind.SYMMETRIC,
    NatKind.ADDRESS_SYMMETRIC,
)
_FIGURE_ROWS: Final = (
    "Yes Yes Yes Yes SNS SNS SNS SNS SNS",
    "Yes Yes Yes Yes SNS SNS SNS SNS No",
    "Yes Yes Yes Yes No SNS+PP SNS+SS No No",
    "Yes Yes Yes Yes SNS+UPnP No No No No",
    "SNS SNS No SNS+UPnP SNS+UPnP No No No No",
    "SNS SNS SNS+PP No No SNS+PP SNS+SS No No",
    "SNS SNS SNS+SS No No No No No No",
    "SNS SNS No No No No No No No",
    "SNS No No No No No No No No",
)
# (initiator's NAT, responder's NAT) -> the figure's cell.
FIGURE1: Final[dict[tuple[NatKind, NatKind], str]] = {
    (source, destination): cell
    for source, row in zip(FIGURE_KINDS, _FIGURE_ROWS, strict=True)
    for destination, cell in zip(FIGURE_KINDS, row.split(), strict=True)
}

# Why a cell needs what it needs (the figure's legend, and RFC 6081 §3).
CELL_REASONS: Final = {
    "Yes": "RFC 4380 alone: both mappings are endpoint-independent",
    "SNS": "the symmetric side must qualify anyway and be answered at the mapping its peer "
    "sees (RFC 6081 §3.1)",
    "SNS+UPnP": "the symmetric side maps its port on the NAT's UPnP IGD (RFC 6081 §3.2)",
    "SNS+PP": "both sides send their first direct bubble from a fresh local port the NAT "
    "keeps (RFC 6081 §3.3)",
    "SNS+SS": "the sequential side predicts its next mapped port and tells its peer (RFC 6081 "
    "§3.4)",
    "No": "no Teredo extension opens this pair: a filtering NAT on one side and a mapping "
    "that cannot be predicted on the other",
}


def figure_cell(source: NatKind, destination: NatKind) -> str:
    """Figure 1's cell for a client behind `source` initiating toward one behind
    `destination` (the lab's "none", a public address, counts as a cone)."""

    def row(kind: NatKind) -> NatKind:
        return NatKind.FULLCONE if kind is NatKind.NONE else kind

    return FIGURE1[row(source), row(destination)]


def ping_all(lab: Lab, paths: tuple[Path, ...]) -> dict[Path, bool]:
    """Ping several paths at once (independent peers, so they do not disturb each other);
    a path works when at least one of 4 echoes is answered."""
    addresses: dict[str, IPv6Address] = {"v6": NATIVE_IPV6}
    for node in ("cli1", "cli2"):
        address = lab.teredo_address(node)
        if address is None:
            raise RuntimeError(f"{node} has no Teredo address; see {lab.directory}")
        addresses[node] = address
    with ThreadPoolExecutor(len(paths)) as pool:
        futures = {path: pool.submit(lab.ping, path[0], addresses[path[1]]) for path in paths}
    return {path: future.result().ok for path, future in futures.items()}


UPNP_WAIT: Final = 10.0  # seconds: miniupnpc's discovery with a gateway took ~1.2 s


def wait_for_upnp_mappings(lab: Lab, timeout: float = UPNP_WAIT) -> None:
    """Our clients qualify without waiting for their UPnP gateway and use the mapping once it
    exists (RFC 6081 §5.3.3, README): behind a UPnP NAT, measure only then, as a user would
    meet the client a few seconds after its start."""
    state = lab.state
    if state is None:
        return
    nat_of = {"cli1": state.nat1, "cli2": state.nat1 if state.same_nat else state.nat2}
    impl_of = {record.node: record.impl for record in state.roles.values()}
    nodes = [
        node
        for node in ("cli1", "cli2")
        if nat_of[node].startswith("upnp") and impl_of.get(node) == "ours"
    ]
    deadline = time.monotonic() + timeout
    for node in nodes:
        socket_path = str(lab.directory / f"{node}.sock")
        while time.monotonic() < deadline:
            result = lab.exec(
                node,
                [sys.executable, "-m", "teredo", "status", "--json", "--socket", socket_path],
                timeout=20,
            )
            if result.returncode == 0 and json.loads(result.stdout).get("upnp_mapped"):
                break
            time.sleep(0.2)


def measure_lab(lab: Lab) -> dict[Path, bool]:
    """Every path of a lab that is up: phase 1, both clients restarted, phase 2."""
    wait_for_upnp_mappings(lab)
    measured = ping_all(lab, PHASE1)
    lab.restart_roles(["client1", "client2"])
    wait_for_upnp_mappings(lab)
    measured.update(ping_all(lab, PHASE2))
    return measured


def measure_pair(
    name: str,
    nat1: NatKind,
    nat2: NatKind,
    impl: str,
    progress: Callable[[str], None] | None = None,
    *,
    same_nat: bool = False,
    hairpinning: bool = True,
) -> dict[Path, bool]:
    """Build a lab with `impl` ("miredo", or "ours": this project wherever it implements the
    role) in every role, measure every path, tear the lab down. With `same_nat` both clients
    sit behind one NAT of kind `nat1`, `hairpinning` or not."""
    with Lab(
        name,
        nat1=nat1,
        nat2=nat2,
        progress=progress,
        server=impl,
        relay=impl,
        client1=impl,
        client2=impl,
        same_nat=same_nat,
        hairpinning=hairpinning,
    ) as lab:
        return measure_lab(lab)
