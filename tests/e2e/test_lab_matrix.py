"""The lab's reachability matrix with Miredo in every role, across NAT kinds, and the NAT kinds.

Each lab runs Miredo's server, relay and two Miredo clients; client 1 sits behind NAT1, client 2
behind NAT2. Every path is pinged from a *fresh* state: first cli1->native, native->cli2 and
cli1->cli2; then both clients restart (new port, new NAT mapping, no peer state) and
native->cli1, cli2->native and cli2->cli1 are pinged. So each Teredo<->Teredo direction is
measured with the named side initiating. A path works when at least one of 4 echoes is answered.

Measured (Miredo 1.2.6, this lab; rows marked * are run below, the others were measured once
by hand with the same procedure):

| NAT1            | NAT2            | Teredo<->native | cli1 -> cli2 | cli2 -> cli1 |
| --------------- | --------------- | --------------- | ------------ | ------------ |
| port-restricted | fullcone        | all work        | works        | works        | (test_lab)
| restricted      | symmetric       | all work        | works        | FAILS        | *
| symmetric       | fullcone        | all work        | FAILS        | works        | *
| none            | port-restricted | all work        | works        | works        | *
| port-restricted | symmetric       | all work        | FAILS        | FAILS        | *
| none            | symmetric       | all work        | works        | FAILS        |
| symmetric       | symmetric       | all work        | FAILS        | FAILS        |
| restricted      | restricted      | all work        | works        | works        |
| port-restricted | port-restricted | all work        | works        | works        |
| restricted      | port-restricted | all work        | works        | works        |
| fullcone/none   | fullcone/none   | all work        | works        | works        |

Why:

- Teredo <-> native works behind every NAT kind, symmetric included: the client opens its NAT
  toward the relay itself (a bubble answering the relay's indirect bubble, RFC 4380 §5.2.6),
  and Miredo's relay accepts a bubble whose source mapping differs from the Teredo address when
  it carries the relay's own nonce (docs/lab-notes.md), which is what a symmetric NAT produces.
- Teredo <-> Teredo without a symmetric NAT works both ways: the initiator's direct bubble
  opens its own NAT toward the peer's mapping, the peer's direct bubble (sent on receiving the
  indirect bubble through the server) comes back on that very mapping.
- When the *symmetric* side initiates it always fails: its peer answers toward the symmetric
  client's Teredo mapping, which that NAT opened for the server only, so nothing gets back.
- When the *other* side initiates toward a symmetric peer, the symmetric peer's direct bubble
  arrives from a new port: it gets through a full-cone NAT, an address-restricted NAT (the
  initiator has sent to that address already) or no NAT, and Miredo then talks to the port it
  came from; a port-restricted or symmetric NAT drops it, so those fail.

This refines the rule of thumb in docs/lab-notes.md ("fails whenever one side is symmetric,
except a full-cone peer initiating"): an address-restricted or NAT-less initiator succeeds too.

The NAT kinds themselves are checked with plain UDP (test_nat_kind_behaves_as_named): which of a
server's replies from the same address and port, the same address and another port, another
address, get back to the client, and whether the mapping depends on the destination.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv6Address
from typing import Any, Final

import pytest

from teredo.lab.lab import Lab, PingResult
from teredo.lab.topology import NATIVE_IPV4, NATIVE_IPV6, SERVER_IPV4, SERVER_IPV4_2, Site

pytestmark = [pytest.mark.root, pytest.mark.lab]

Path = tuple[str, str]  # (source node, destination node); "v6" is the native host

# Phase 1 runs on a fresh lab, phase 2 after both clients restarted: each Teredo<->Teredo
# direction starts from no state at all.
PHASE1: Final[tuple[Path, ...]] = (("cli1", "v6"), ("v6", "cli2"), ("cli1", "cli2"))
PHASE2: Final[tuple[Path, ...]] = (("v6", "cli1"), ("cli2", "v6"), ("cli2", "cli1"))

NATIVE_PATHS: Final = {
    ("cli1", "v6"): True,
    ("v6", "cli1"): True,
    ("cli2", "v6"): True,
    ("v6", "cli2"): True,
}

# (NAT1, NAT2) -> path -> works?, with the reason; the module docstring has the whole table.
REACHABILITY: Final[dict[tuple[str, str], dict[Path, bool]]] = {
    # The restricted initiator has sent to NAT2's address: the symmetric peer's bubble from a
    # new port gets in. The symmetric initiator's peer answers a mapping open to the server only.
    ("restricted", "symmetric"): {**NATIVE_PATHS, ("cli1", "cli2"): True, ("cli2", "cli1"): False},
    # Full cone lets the symmetric peer's bubble in when it initiates; the reverse fails.
    ("symmetric", "fullcone"): {**NATIVE_PATHS, ("cli1", "cli2"): False, ("cli2", "cli1"): True},
    # No symmetric NAT: every path works.
    ("none", "port-restricted"): {**NATIVE_PATHS, ("cli1", "cli2"): True, ("cli2", "cli1"): True},
    # Port-restricted drops the symmetric peer's bubble from a new port: both directions fail.
    ("port-restricted", "symmetric"): {
        **NATIVE_PATHS,
        ("cli1", "cli2"): False,
        ("cli2", "cli1"): False,
    },
}

# What a client behind each NAT kind receives of a UDP server's answers (see probe below):
# "same" from the address and port it sent to, "port" from that address and another port,
# "addr" from another address, "other" from a second host it sent to afterwards.
NAT_REPLIES: Final = {
    "fullcone": {"same", "port", "addr", "other"},
    "restricted": {"same", "port", "other"},
    "port-restricted": {"same", "other"},
    "symmetric": {"same", "other"},
    "none": {"same", "port", "addr", "other"},
}

REFLECTOR_PORT: Final = 4000

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


def ping_all(lab: Lab, paths: tuple[Path, ...]) -> dict[Path, PingResult]:
    """Ping several paths at once (independent peers, so they do not disturb each other)."""
    addresses: dict[str, IPv6Address] = {"v6": NATIVE_IPV6}
    for node in ("cli1", "cli2"):
        address = lab.teredo_address(node)
        assert address is not None, f"{node} has no Teredo address; see {lab.directory}"
        addresses[node] = address
    with ThreadPoolExecutor(len(paths)) as pool:
        futures = {path: pool.submit(lab.ping, path[0], addresses[path[1]]) for path in paths}
    return {path: future.result() for path, future in futures.items()}


@pytest.fixture(scope="module", params=list(REACHABILITY), ids=lambda pair: "-".join(pair))
def matrix_lab(
    request: pytest.FixtureRequest, module_lab_factory: Callable[..., Lab]
) -> Iterator[Lab]:
    nat1, nat2 = request.param
    lab = module_lab_factory(
        nat1=nat1, nat2=nat2, server="miredo", relay="miredo", client1="miredo", client2="miredo"
    )
    yield lab
    lab.down()


def test_reachability_matrix(matrix_lab: Lab) -> None:
    lab = matrix_lab
    first, second = (site.kind.value for site in lab.topology.sites)
    pair = (first, second)
    expected = REACHABILITY[pair]
    measured = ping_all(lab, PHASE1)
    lab.restart_roles(["client1", "client2"])
    measured.update(ping_all(lab, PHASE2))
    table = {path: result.ok for path, result in measured.items()}
    report = ", ".join(
        f"{a}->{b} {'works' if ok else 'fails'}" for (a, b), ok in sorted(table.items())
    )
    assert table == expected, f"NAT1 {pair[0]}, NAT2 {pair[1]}: measured {report}"


def test_nat_kind_behaves_as_named(matrix_lab: Lab) -> None:
    lab = matrix_lab
    reflectors = [
        start_reflector(
            lab,
            "srv",
            [
                f"same:{SERVER_IPV4}:{REFLECTOR_PORT}",
                f"port:{SERVER_IPV4}:{REFLECTOR_PORT + 1}",
                f"addr:{SERVER_IPV4_2}:{REFLECTOR_PORT}",
            ],
        ),
        start_reflector(lab, "v6", [f"other:{NATIVE_IPV4}:{REFLECTOR_PORT}"]),
    ]
    try:
        with ThreadPoolExecutor(2) as pool:  # both sites at once: each waits for silence
            probes = list(pool.map(lambda site: probe_nat(lab, site), lab.topology.sites))
        for site, probe in zip(lab.topology.sites, probes, strict=True):
            kind = site.kind.value
            assert set(probe["replies"]) == NAT_REPLIES[kind], f"{kind} NAT: {probe}"
            to_server = probe["mapped"][f"{SERVER_IPV4}:{REFLECTOR_PORT}"]
            to_other = probe["mapped"][f"{NATIVE_IPV4}:{REFLECTOR_PORT}"]
            public = site.client.ip if kind == "none" else site.wan.ip
            assert to_server.split(":")[0] == str(public), f"{kind} NAT: {probe}"
            if kind == "symmetric":
                assert to_server != to_other, f"a symmetric NAT kept one mapping: {probe}"
            else:  # endpoint-independent mapping, and Linux keeps a free source port
                assert to_server == to_other == f"{public}:{probe['port']}", f"{kind} NAT: {probe}"
    finally:
        for reflector in reflectors:
            reflector.kill()
            reflector.wait()


def probe_nat(lab: Lab, site: Site) -> dict[str, Any]:
    """Run PROBE on the site's client: which answers got through, and the mappings seen."""
    targets = [f"{SERVER_IPV4}:{REFLECTOR_PORT}", f"{NATIVE_IPV4}:{REFLECTOR_PORT}"]
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
