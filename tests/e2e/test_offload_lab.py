"""TCP streams through the offloaded data path arrive intact, with our peers and with Miredo's.

The relay and client cut TCP super-packets from their TUN device into segments with checksums
computed by us, and join received segments into super-packets for the kernel
(`teredo.core.offload`). A wrong checksum, sequence number or length would stall or corrupt a TCP
stream, so each test moves 8 MB of pseudo-random bytes each way and compares digests:

- our client and our relay (segments cut by both, joined by both);
- a Miredo client behind our relay: its kernel checks every segment our relay cut;

each with the C accelerator (`teredo._accel`) and with its
pure-Python twins (`TEREDO_PURE_PYTHON=1`), the portable data path.

The relay's counters prove the super-packet path ran (more packets sent than read).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from labsupport import built_lab, daemon_status, teredo_of
from teredo.adapters.accel import PURE_PYTHON_VARIABLE
from teredo.lab.lab import Lab
from teredo.lab.topology import NATIVE_IPV6

pytestmark = [pytest.mark.root, pytest.mark.lab]

PORT = 5301
BYTES = 8 * 1024 * 1024

SINK = """
import hashlib, socket, sys
server = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6)
print("listening", flush=True)
server.settimeout(60)
connection, _ = server.accept()
connection.settimeout(60)
digest, size = hashlib.sha256(), 0
while chunk := connection.recv(1 << 16):
    digest.update(chunk)
    size += len(chunk)
print(size, digest.hexdigest(), flush=True)
"""

SOURCE = """
import hashlib, random, socket, sys
data = random.Random(int(sys.argv[3])).randbytes(int(sys.argv[4]))
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60) as connection:
    connection.sendall(data)
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


@pytest.fixture(scope="module", params=["accelerated", "pure-python"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The lab, once with the C accelerators and once with their Python twins."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "pure-python":
            patch.setenv(PURE_PYTHON_VARIABLE, "1")  # the daemons inherit the environment
        else:
            patch.delenv(PURE_PYTHON_VARIABLE, raising=False)
        with built_lab(
            "tof", nat1="fullcone", nat2="fullcone",
            server="ours", relay="ours", client1="ours", client2="miredo",
        ) as lab:  # fmt: skip
            accelerators = "off" if request.param == "pure-python" else "on"
            log = (lab.directory / "relay.log").read_text()
            assert f"C accelerators {accelerators}" in log
            yield lab


def transfer(
    lab: Lab, sender: str, source: list[str], receiver: str, sink: list[str], timeout: float
) -> None:
    """Start the `sink` script in `receiver`, run the `source` script in `sender`, and check
    that both print the same line (what was sent and what arrived)."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", lab.namespace(receiver), sys.executable, "-c", *sink],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        sent = lab.exec(sender, [sys.executable, "-c", *source], timeout=timeout)
        assert sent.returncode == 0, sent.stderr
        received, errors = listener.communicate(timeout=timeout)
        assert listener.returncode == 0, errors
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert received.split() == sent.stdout.split()


def stream(lab: Lab, sender: str, receiver: str, address: str, seed: int) -> None:
    source = [SOURCE, address, str(PORT), str(seed), str(BYTES)]
    transfer(lab, sender, source, receiver, [SINK, str(PORT)], timeout=90)


def test_tcp_through_our_client_and_relay(lab: Lab) -> None:
    client = str(teredo_of(lab, "cli1"))
    assert lab.ping("v6", client).ok
    before = daemon_status(lab, "relay")["counters"]
    stream(lab, "v6", "cli1", client, seed=1)
    stream(lab, "cli1", "v6", str(NATIVE_IPV6), seed=2)
    after = daemon_status(lab, "relay")["counters"]
    read = after["tun_packets_in"] - before["tun_packets_in"]
    sent = after["fast_tx"] - before["fast_tx"]
    assert sent > 2 * read, "the relay read no TCP super-packets: offloads are not in use"


def test_tcp_between_our_relay_and_a_miredo_client(lab: Lab) -> None:
    client = str(teredo_of(lab, "cli2"))
    assert lab.ping("v6", client).ok
    stream(lab, "v6", "cli2", client, seed=3)
    stream(lab, "cli2", "v6", str(NATIVE_IPV6), seed=4)


UDP_SINK = """
import hashlib, socket, sys
server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
server.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: hold the whole burst
server.bind(("::", int(sys.argv[1])))
server.settimeout(5)
print("listening", flush=True)
digests = []
try:
    while len(digests) < int(sys.argv[2]):
        digests.append(hashlib.sha256(server.recv(65535)).hexdigest()[:8])
except TimeoutError:
    pass
print(" ".join(sorted(digests)), flush=True)
"""

UDP_SEGMENTED_SOURCE = """
import hashlib, socket, sys
SOL_UDP, UDP_SEGMENT, SIZE, SENDS = 17, 103, 1000, 4
sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sender.setsockopt(SOL_UDP, UDP_SEGMENT, SIZE)
sender.connect((sys.argv[1], int(sys.argv[2])))
digests = []
for send in range(SENDS):
    pieces = [bytes([send, n]) * (SIZE // 2) for n in range(48)]
    sender.send(b"".join(pieces))  # one system call, 48 datagrams: a super-packet for the TUN
    digests += [hashlib.sha256(piece).hexdigest()[:8] for piece in pieces]
print(" ".join(sorted(digests)), flush=True)
"""


def test_udp_segmented_by_a_local_sender_leaves_as_datagrams(lab: Lab) -> None:
    """A sender using UDP segmentation offload hands our client one super-packet per call
    (USO on the TUN device); the client cuts it, and every datagram arrives intact."""
    assert lab.ping("cli1", str(NATIVE_IPV6)).ok
    before = daemon_status(lab, "cli1")["counters"]
    source = [UDP_SEGMENTED_SOURCE, str(NATIVE_IPV6), str(PORT)]
    transfer(lab, "cli1", source, "v6", [UDP_SINK, str(PORT), str(4 * 48)], timeout=30)
    after = daemon_status(lab, "cli1")["counters"]
    assert after["tun_super_packets_in"] > before["tun_super_packets_in"]
