"""The lab's reachability matrix across every pair of NAT kinds, Miredo's clients and ours, and
the NAT kinds themselves.

test_reachability_matrix builds one lab per unordered pair of NAT kinds (client 1 behind NAT1,
client 2 behind NAT2), with Miredo or this project in every role, several labs at once, plus
labs with both clients behind one NAT with and without hairpinning. In each lab every path is
pinged from a fresh state (`teredo.lab.matrix.measure_lab`): cli1->native, native->cli2 and
cli1->cli2; then both clients restart (new port, new NAT mapping, no peer state) and
native->cli1, cli2->native and cli2->cli1. So each Teredo<->Teredo direction is measured with
the named side initiating: cli1->cli2 is Figure 1's cell (NAT1, NAT2) of RFC 6081, cli2->cli1
the cell (NAT2, NAT1). A path works when at least one of 4 echoes is answered. FAILS lists the
cells that fail; the README ("Which NATs reach each other") has the table, Figure 1's verdict
for every cell and the reasons, from `bash scripts/bench --matrix`, which runs the same labs.

Why, in short (README has more): Teredo <-> native works behind every kind, since the client
opens its NAT toward the relay itself and the relay accepts the mapping a nonce proves. Between
clients, Miredo fails whenever the symmetric side initiates; ours (RFC 6081 Symmetric NAT
Support) works when the peer is behind a cone, an address-restricted NAT or none, with a UPnP
NAT on either side (the client maps its port there), and in Figure 1's SNS+PP and SNS+SS cells
(RFC 6081 §5.4, §5.5: the symmetric side reaches its peer from a random port whose mapped port
it announces).

The NAT kinds themselves are checked with plain UDP (test_nat_kind_behaves_as_named): which of a
server's replies from the same address and port, the same address and another port, another
address, get back to the client, and which mapping each of three destinations sees; then what
`teredo probe` reports behind each kind, that a port mapped with upnpc on a UPnP box forwards,
and that a box with two clients hairpins, or not, as told.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import pytest

from labsupport import random_lab_name
from teredo.lab.lab import Lab
from teredo.lab.matrix import Path, figure_cell, measure_pair
from teredo.lab.topology import NATIVE_IPV4, SERVER_IPV4, SERVER_IPV4_2, NatKind, Site

pytestmark = [pytest.mark.root, pytest.mark.lab]

KINDS: Final = tuple(NatKind)
# Labs at once for the whole matrix: 3 keep a 2-core machine busy without starving the pings.
MATRIX_JOBS: Final = 3


# Kinds with a new mapping per destination, and kinds that let in replies only (with one mapping).
SYMMETRIC: Final = {
    "symmetric",
    "symmetric-preserving",
    "symmetric-sequential",
    "address-symmetric",
    "upnp-symmetric",
}
PORT_RESTRICTED: Final = {"port-restricted", "upnp-port-restricted"}
UPNP: Final = {"upnp-port-restricted", "upnp-symmetric"}
NAMES: Final = [kind.value for kind in KINDS]
RANDOM_PORT_CELLS: Final = {"SNS+PP", "SNS+SS"}  # Figure 1's cells for RFC 6081 §5.4, §5.5

# Directed client-to-client cells (initiator's NAT, responder's NAT) that FAIL, per
# implementation; every other cell, and every Teredo<->native path, works. Measured with
# `bash scripts/bench --matrix` (README, "Which NATs reach each other", has the grid and why).
FAILS: Final[dict[str, set[tuple[str, str]]]] = {
    # Miredo: whenever the symmetric side initiates (its peer answers the mapping in its
    # address, which its NAT opened for the server only), and from a port-restricted NAT toward
    # a symmetric one (the symmetric peer's bubble comes from a new port, which is dropped).
    "miredo": {
        (a, b)
        for a in NAMES
        for b in NAMES
        if a in SYMMETRIC or (a in PORT_RESTRICTED and b in SYMMETRIC)
    },
    # Ours (RFC 6081): only between a symmetric NAT and a port-restricted or symmetric one,
    # either way, never when either NAT has a UPnP IGD (the client maps its port there, which
    # then behaves as a cone's), and never in the SNS+PP and SNS+SS cells (the random port).
    "ours": {
        (a, b)
        for a in NAMES
        for b in NAMES
        if (
            (a in SYMMETRIC and b in SYMMETRIC | PORT_RESTRICTED)
            or (a in PORT_RESTRICTED and b in SYMMETRIC)
        )
        and not {a, b} & UPNP
        and figure_cell(NatKind(a), NatKind(b)) not in RANDOM_PORT_CELLS
    },
}
# Both clients behind one NAT of these kinds, with and without hairpinning (the bench runs
# every kind: Miredo's clients meet only through a hairpinning cone-like NAT, ours everywhere,
# thanks to RFC 6081 §5.6 hairpinning).
SAME_NAT_KINDS: Final = ("port-restricted", "symmetric")
BOTH_WAYS: Final = {("cli1", "cli2"), ("cli2", "cli1")}
SAME_NAT_FAILS: Final[dict[str, dict[tuple[str, bool], set[Path]]]] = {
    "miredo": {
        ("port-restricted", False): BOTH_WAYS,
        ("symmetric", True): BOTH_WAYS,
        ("symmetric", False): BOTH_WAYS,
    },
    "ours": {},
}

# Labs whose NAT boxes are checked with plain UDP and `teredo probe`: every kind once.
KIND_LABS: Final = (
    ("fullcone", "restricted"),
    ("port-restricted", "symmetric"),
    ("symmetric-preserving", "symmetric-sequential"),
    ("address-symmetric", "none"),
    ("upnp-port-restricted", "upnp-symmetric"),
)
assert {kind for pair in KIND_LABS for kind in pair} == {kind.value for kind in KINDS}

# What a client behind each NAT kind receives of UDP answers (see PROBE below): "same" from
# the address and port it sent to, "port" from that address and another port, "addr" from
# another address, "other" and "other2" from two ports of a second host it sent to afterwards.
ALL_REPLIES: Final = {"same", "port", "addr", "other", "other2"}
ONLY_REPLIES: Final = {"same", "other", "other2"}
NAT_REPLIES: Final = {
    "fullcone": ALL_REPLIES,
    "restricted": ALL_REPLIES - {"addr"},
    "none": ALL_REPLIES,
    **{
        kind: ONLY_REPLIES
        for kind in (
            "port-restricted",
            "symmetric",
            "symmetric-preserving",
            "symmetric-sequential",
            "address-symmetric",
            "upnp-port-restricted",
            "upnp-symmetric",
        )
    },
}
# One mapping for every destination (endpoint-independent), the client's port kept.
INDEPENDENT: Final = {"fullcone", "restricted", "port-restricted", "upnp-port-restricted", "none"}

REFLECTOR_PORT: Final = 4000
SERVER_TARGET: Final = f"{SERVER_IPV4}:{REFLECTOR_PORT}"
OTHER_TARGET: Final = f"{NATIVE_IPV4}:{REFLECTOR_PORT}"
OTHER2_TARGET: Final = f"{NATIVE_IPV4}:{REFLECTOR_PORT + 2}"
UPNP_PORT: Final = 47000

# Answers every datagram reaching its first socket from each of its sockets, with the label of
# that socket and the source seen; says "ready" once bound and exits after 20 s in any case.
REFLECTOR = r"""
import select, socket, sys, time
socks = []
for spec in sys.argv[1:]:
    label, address, port = spec.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, int(port)))
    socks.append((label, s))
print("ready", flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    readable, _, _ = select.select([socks[0][1]], [], [], 0.2)
    if readable:
        data, source = socks[0][1].recvfrom(2048)
        for label, s in socks:
            s.sendto(f"{label} {source[0]}:{source[1]}".encode(), source)
"""

# From one socket: send to the server, gather the answers, then to the other host, gather.
PROBE = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
s.settimeout(0.1)
replies, mapped = set(), {}
for target in sys.argv[1:]:
    address, port = target.split(":")
    for _ in range(3):
        s.sendto(b"probe", (address, int(port)))
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            continue
        label, seen = data.decode().split()
        replies.add(label)
        mapped.setdefault(target, seen)
print(json.dumps({"replies": sorted(replies), "mapped": mapped, "port": s.getsockname()[1]}))
"""


@pytest.fixture(scope="module", params=KIND_LABS, ids=lambda pair: "-".join(pair))
def kinds_lab(
    request: pytest.FixtureRequest, module_lab_factory: Callable[..., Lab]
) -> Iterator[Lab]:
    nat1, nat2 = request.param
    lab = module_lab_factory(
        nat1=nat1, nat2=nat2, server="miredo", relay="miredo", client1="miredo", client2="miredo"
    )
    yield lab
    lab.down()


@pytest.mark.parametrize("impl", ["miredo", "ours"])
def test_reachability_matrix(impl: str) -> None:
    """Every unordered pair of NAT kinds in one lab (so each direction of each ordered pair),
    and both clients behind one NAT of the SAME_NAT_KINDS with and without hairpinning,
    MATRIX_JOBS labs at once; FAILS and SAME_NAT_FAILS have the client-to-client paths that
    fail, every other path works (Teredo<->native always)."""
    pairs = [(a, b) for i, a in enumerate(KINDS) for b in KINDS[i:]]
    labs: list[tuple[NatKind, NatKind, bool | None]] = [(a, b, None) for a, b in pairs]
    labs += [(NatKind(k), NatKind(k), h) for k in SAME_NAT_KINDS for h in (True, False)]

    def measure(spec: tuple[NatKind, NatKind, bool | None]) -> dict[Path, bool]:
        nat1, nat2, hairpinning = spec
        return measure_pair(
            random_lab_name("m"),
            nat1,
            nat2,
            impl,
            same_nat=hairpinning is not None,
            hairpinning=bool(hairpinning),
        )

    with ThreadPoolExecutor(MATRIX_JOBS) as pool:
        measured = dict(zip(labs, pool.map(measure, labs), strict=True))
    wrong = []
    for (nat1, nat2, hairpinning), paths in measured.items():
        for (source, destination), ok in paths.items():
            if "v6" in (source, destination):
                expected, where = True, "-"
            elif hairpinning is not None:
                fails = SAME_NAT_FAILS[impl].get((nat1.value, hairpinning), set())
                expected, where = (source, destination) not in fails, "same NAT"
            else:
                directed = (nat1, nat2) if source == "cli1" else (nat2, nat1)
                expected = (directed[0].value, directed[1].value) not in FAILS[impl]
                where = f"Figure 1: {figure_cell(*directed)}"
            if ok != expected:
                setting = f"NAT1 {nat1}, NAT2 {nat2}"
                if hairpinning is not None:
                    setting = f"both behind {nat1}, hairpinning {hairpinning}"
                wrong.append(
                    f"{source}->{destination} with {setting} {'works' if ok else 'fails'} ({where})"
                )
    assert not wrong, f"{impl}: " + "; ".join(wrong)


def test_nat_kind_behaves_as_named(kinds_lab: Lab) -> None:
    lab = kinds_lab
    reflectors = [
        start_reflector(
            lab,
            "srv",
            [
                f"same:{SERVER_TARGET}",
                f"port:{SERVER_IPV4}:{REFLECTOR_PORT + 1}",
                f"addr:{SERVER_IPV4_2}:{REFLECTOR_PORT}",
            ],
        ),
        start_reflector(lab, "v6", [f"other:{OTHER_TARGET}"]),
        start_reflector(lab, "v6", [f"other2:{OTHER2_TARGET}"]),
    ]
    try:
        with ThreadPoolExecutor(2) as pool:  # both sites at once: each waits for silence
            probes = list(pool.map(lambda site: probe_nat(lab, site), lab.topology.sites))
        for site, probe in zip(lab.topology.sites, probes, strict=True):
            check_mappings(site, probe)
    finally:
        for reflector in reflectors:
            reflector.kill()
            reflector.wait()


def check_mappings(site: Site, probe: dict[str, Any]) -> None:
    kind = site.kind.value
    assert set(probe["replies"]) == NAT_REPLIES[kind], f"{kind} NAT: {probe}"
    public = str(site.client.ip if kind == "none" else site.wan.ip)
    seen = [probe["mapped"][t] for t in (SERVER_TARGET, OTHER_TARGET, OTHER2_TARGET)]
    assert {s.split(":")[0] for s in seen} == {public}, f"{kind} NAT: {probe}"
    ports = [int(s.split(":")[1]) for s in seen]
    local = probe["port"]
    if kind in INDEPENDENT:
        assert ports == [local] * 3, f"{kind} NAT: {probe}"
    elif kind == "symmetric-preserving":  # the first destination keeps the port, no other
        assert ports[0] == local and local not in ports[1:], f"{kind} NAT: {probe}"
        assert ports[1] != ports[2], f"{kind} NAT: {probe}"
    elif kind == "symmetric-sequential":  # one after the other (others' flows may interleave)
        assert 0 < ports[1] - ports[0] <= 4 and 0 < ports[2] - ports[1] <= 4, probe
    elif kind == "address-symmetric":  # one port per destination address, not the local one
        assert ports[1] == ports[2] and local not in ports, f"{kind} NAT: {probe}"
    else:  # symmetric, upnp-symmetric: a new random port per destination
        assert len(set(ports)) == 3, f"{kind} NAT: {probe}"


def test_probe_reports_nat_behaviours(kinds_lab: Lab) -> None:
    """`teredo probe` behind each kind: NAT type, port preserving, sequential, UPnP IGD; and
    behind a UPnP box, that a port mapped on its IGD forwards."""
    for site in kinds_lab.topology.sites:
        result = kinds_lab.exec(
            site.client_node,
            [sys.executable, "-m", "teredo", "probe", str(SERVER_IPV4), "--json", "--timeout", "6"],
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        kind = site.kind
        expected_nat = {"fullcone": "cone", "none": "none"}.get(
            kind.value, "restricted" if kind.value in INDEPENDENT else "symmetric"
        )
        found = {k: document[k] for k in ("nat", "port_preserving", "sequential", "upnp")}
        assert found == {
            "nat": expected_nat,
            "port_preserving": kind.value in INDEPENDENT or kind is NatKind.SYMMETRIC_PRESERVING,
            "sequential": kind is NatKind.SYMMETRIC_SEQUENTIAL,
            "upnp": kind.upnp,
        }, f"{kind} NAT: {document}"
        if kind.upnp:
            assert document["upnp_gateway"] == str(site.lan.ip), document
            check_upnp_mapping_forwards(kinds_lab, site)


def check_upnp_mapping_forwards(kinds_lab: Lab, site: Site) -> None:
    """A port mapped on the box's IGD with miniupnpc's upnpc really forwards from outside
    (checked where the probe found the IGD, so that no lab without one skips a test)."""
    listener = subprocess.Popen(
        [
            "ip", "netns", "exec", kinds_lab.namespace(site.client_node), sys.executable,
            "-c", LISTEN, str(UPNP_PORT),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        added = kinds_lab.exec(
            site.client_node,
            ["upnpc", "-e", "teredo-lab", "-a", str(site.client.ip), str(UPNP_PORT),
             str(UPNP_PORT), "UDP"],
            timeout=30,
        )  # fmt: skip
        assert "is redirected to internal" in added.stdout, added.stdout + added.stderr
        send = f"import socket; socket.socket(2, 2).sendto(b'in', ('{site.wan.ip}', {UPNP_PORT}))"
        kinds_lab.exec("v6", [sys.executable, "-c", send], timeout=10)
        assert listener.stdout.readline().strip() == f"in from {NATIVE_IPV4}", site.kind
    finally:
        listener.kill()
        listener.wait()


@pytest.fixture(scope="module", params=[True, False], ids=["hairpinning", "no-hairpinning"])
def same_nat_lab(
    request: pytest.FixtureRequest, module_lab_factory: Callable[..., Lab]
) -> Iterator[Lab]:
    lab = module_lab_factory(
        nat1="port-restricted",
        same_nat=True,
        hairpinning=request.param,
        server="miredo",
        relay="miredo",
        client1="miredo",
        client2="miredo",
    )
    yield lab
    lab.down()


def test_same_nat_hairpins_as_told(same_nat_lab: Lab) -> None:
    """cli2 learns its mapping from a reflector; cli1 sends to that mapping: a hairpinning box
    delivers it, from cli1's own mapping (its port kept); the other drops it."""
    lab = same_nat_lab
    first, second = lab.topology.sites
    assert first.nat_node == second.nat_node == "nat1"
    reflector = start_reflector(lab, "srv", [f"same:{SERVER_TARGET}"])
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", lab.namespace("cli2"), sys.executable, "-c", HAIRPIN_RECEIVER,
         SERVER_TARGET],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        mapped = receiver.stdout.readline().split()
        assert mapped[0] == "mapped" and mapped[1].split(":")[0] == str(first.wan.ip), mapped
        sender = lab.exec(
            "cli1", [sys.executable, "-c", HAIRPIN_SENDER, mapped[1]], timeout=20
        ).stdout.split()
        heard = receiver.stdout.readline().split()
        if lab.hairpinning:
            assert heard == ["heard", f"{first.wan.ip}:{sender[1]}"], (heard, sender)
        else:
            assert heard == ["silence"], heard
    finally:
        for process in (receiver, reflector):
            process.kill()
            process.wait()


# cli2: learn the mapping from the reflector, then report the first datagram from elsewhere.
HAIRPIN_RECEIVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
s.settimeout(3)
address, port = sys.argv[1].split(":")
s.sendto(b"probe", (address, int(port)))
data, _ = s.recvfrom(2048)
print("mapped", data.decode().split()[1], flush=True)
try:
    data, source = s.recvfrom(2048)
    print("heard", f"{source[0]}:{source[1]}", flush=True)
except socket.timeout:
    print("silence", flush=True)
"""

# cli1: send to cli2's public mapping a few times; print the local port used.
HAIRPIN_SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
address, port = sys.argv[1].split(":")
for _ in range(3):
    s.sendto(b"hairpin", (address, int(port)))
    time.sleep(0.1)
print("port", s.getsockname()[1], flush=True)
"""


# Says "ready" once bound to the port, then prints the first datagram and its source.
LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(10)
print("ready", flush=True)
data, source = s.recvfrom(2048)
print(f"{data.decode()} from {source[0]}", flush=True)
"""


def probe_nat(lab: Lab, site: Site) -> dict[str, Any]:
    """Run PROBE on the site's client: which answers got through, and the mappings seen."""
    targets = [SERVER_TARGET, OTHER_TARGET, OTHER2_TARGET]
    result = lab.exec(site.client_node, [sys.executable, "-c", PROBE, *targets], timeout=30)
    assert result.returncode == 0, result.stderr
    probe: dict[str, Any] = json.loads(result.stdout)
    return probe


def start_reflector(lab: Lab, node: str, sockets: list[str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        ["ip", "netns", "exec", lab.namespace(node), sys.executable, "-c", REFLECTOR, *sockets],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process
