"""The random port of RFC 6081 §5.4 (port-preserving symmetric NAT) and §5.5 (sequential
port-symmetric NAT): a second UDP port a client behind a symmetric NAT opens for one peer.

Behind a symmetric NAT the mapping in our address is good for the server only; a peer behind a
port-restricted or symmetric NAT can be reached only at a mapping our NAT made *toward it*, and
only if it knows that mapping's port before it sends. So for each peer being set up the client
opens a fresh local port and tells the peer, in a Random Port trailer (RFC 6081 §4.5) on its
indirect bubbles, the port its NAT will give that port toward the peer:

- a port-preserving NAT keeps a free local port (§3.3, §5.4.4.2): the prediction is the port;
- a sequential NAT gives the next free port to each new mapping (§3.4, §5.5.4.1.1): the client
  sends from the random port an RS to the server's first address, a direct bubble to the peer,
  an RS to its second address, and predicts the bubble's mapping midway between the two the
  server saw (§5.5.4.4).

`RandomPortPeer` is the RFC's per-peer state (§5.4.1, §5.5.1); `teredo.core.client` applies
the rules and asks its daemon, through its outputs, to open and close the sockets. The core
draws the port from its injected randomness and does no I/O.
"""

from __future__ import annotations

from teredo.core.address import CLIENT_LINK_LOCAL
from teredo.core.secure_qualification import ClientKey, sign
from teredo.core.trailers import RandomPortTrailer, encode_trailer, encode_trailers
from teredo.core.wire import (
    Authentication,
    TeredoPacket,
    encode_router_solicitation,
    encode_teredo_packet,
)

TYPE_CHECKING = False  # typing's flag without importing typing (ms a launch pays)
if TYPE_CHECKING:
    from typing import Final

PEER_REFRESH_INTERVAL: Final = 30.0  # RFC 6081 §5.4.2.1: the Peer Refresh Timer
MAX_REFRESH_BUBBLES: Final = 20  # §5.4.2.1: Connection Refresh Count at most
DATA_RECENT: Final = 30.0  # §5.4.2.1, §5.4.4.4: "in the last 30 seconds"
ECHO_TESTS: Final = 2  # §5.5.2.2: a second echo test, then a plain indirect bubble
ECHO_TEST_NONCE_LENGTH: Final = 8  # RFC 4380 §5.1.1: the authentication nonce
# Our bound: random ports open at once. Strangers can make us set peers up (an indirect bubble
# is answered with ours), so each one must not cost an unbounded number of sockets; past it a
# setup goes on without a random port (plain symmetric NAT support) and is counted.
MAX_RANDOM_PORTS: Final = 32
# A peer whose indirect bubbles carry no Random Port trailer (behind a port-restricted NAT, say)
# is reached from our random port only after it sent there, which it does on learning the port
# from our indirect bubble: a round trip through its server. A peer behind a cone NAT answers
# our service port's direct bubble within one round trip, and is then valid. So our random
# port's own bubble toward it waits this long, not for the next round of bubbles 2 s later
# (RFC 4380 §5.2.6), which would hold the peer's first packets that long.
PLAIN_PEER_WAIT: Final = 0.25
LOWEST_RANDOM_PORT: Final = 1024  # never a privileged port


class RandomPortPeer:
    """RFC 6081 §5.4.1/§5.5.1's fields of one peer entry (kept by the client, per peer)."""

    __slots__ = (
        "direct_primary",
        "direct_random",
        "echo_lower",
        "echo_nonce1",
        "echo_nonce2",
        "echo_retries",
        "echo_upper",
        "failover_at",
        "heard_plain",
        "last_data",
        "opened_at",
        "peer_port",
        "plain_bubble_at",
        "port",
        "predicted",
        "refresh_count",
        "retry_after",
        "rounds",
        "waiting_indirect",
    )

    def __init__(self) -> None:
        self.port = 0  # the local random port (0: none open)
        self.predicted = 0  # §5.4.1 "Random Port": the mapped port we predict and announce
        self.peer_port = 0  # §5.4.1 "Peer Random Port"
        self.heard_plain = False  # the peer's indirect bubble came without a Random Port trailer
        self.plain_bubble_at: float | None = None  # our random port's bubble to such a peer
        self.direct_primary = False  # §5.4.1 "Direct Receive on Primary Port"
        self.direct_random = False  # §5.4.1 "Direct Receive on Random Port"
        self.refresh_count = 0  # §5.4.1 "Connection Refresh Count"
        self.last_data = float("-inf")  # §5.4.1 "Last Data Packet Sent Timestamp"
        self.opened_at = float("-inf")
        self.rounds = 0  # indirect bubbles sent while this random port was open
        self.echo_nonce1: bytes | None = None  # §5.5.1 EchoTestNonce1
        self.echo_nonce2: bytes | None = None  # §5.5.1 EchoTestNonce2
        self.echo_lower = 0  # §5.5.1 EchoTestLowerPort
        self.echo_upper = 0  # §5.5.1 EchoTestUpperPort
        self.echo_retries = 0  # §5.5.1 EchoTestRetryCounter
        self.failover_at: float | None = None  # §5.5.2 the Echo Test Failover Timer
        self.waiting_indirect = False  # §5.5.4.1: our indirect bubble waits for the echo test
        self.retry_after = float("-inf")  # no new random port before (echo tests failed)

    def reset_echo_test(self) -> None:
        """§5.5.2.1, §5.5.4.3: forget the echo test (its nonces with it)."""
        self.echo_lower = self.echo_upper = self.echo_retries = 0
        self.echo_nonce1 = self.echo_nonce2 = None
        self.failover_at = None


def predicted_port(lower: int, upper: int) -> int:
    """The mapped port of the echo test's direct bubble, sent between its two RSs (RFC 6081
    §5.5.4.4). The RFC's text says "(EchoTestUpperPort + EchoTestUpperPort)/2", an evident
    typo: §3.4 says the port is "midway between the external ports for Packets 1 and 3", so
    this is the midpoint of the lower and upper ports, rounded down."""
    return (lower + upper) // 2


def choose_port(random: bytes, avoid: set[int] | frozenset[int]) -> int | None:
    """A local port from two random bytes, above the privileged ones and not in `avoid` (our
    service port, the random ports already open); None when the draw hit one of them (the
    caller goes on without a random port this time)."""
    port = int.from_bytes(random[:2], "big")
    if port < LOWEST_RANDOM_PORT:
        port += LOWEST_RANDOM_PORT
    return None if port in avoid else port


def random_port_trailer(port: int) -> bytes:
    """A Random Port trailer (RFC 6081 §4.5) announcing `port`."""
    return encode_trailers([encode_trailer(RandomPortTrailer(port))])


def echo_solicitation(nonce: bytes, key: ClientKey | None) -> bytes:
    """An RS of the echo test (RFC 6081 §5.5.4.1.1): "as specified in Section 5.2.1 of
    [RFC4380]", from the client's link-local address with a nonce in its authentication
    header (signed as the qualification's RSs are, with secure qualification)."""
    ipv6 = encode_router_solicitation(CLIENT_LINK_LOCAL)
    authentication = Authentication(nonce=nonce) if key is None else sign(key, nonce, ipv6)
    return encode_teredo_packet(TeredoPacket(ipv6=ipv6, authentication=authentication))


__all__ = [
    "DATA_RECENT",
    "ECHO_TESTS",
    "ECHO_TEST_NONCE_LENGTH",
    "MAX_RANDOM_PORTS",
    "MAX_REFRESH_BUBBLES",
    "PEER_REFRESH_INTERVAL",
    "PLAIN_PEER_WAIT",
    "RandomPortPeer",
    "choose_port",
    "echo_solicitation",
    "predicted_port",
    "random_port_trailer",
]
