"""Secure qualification (RFC 4380 §5.2.2): vectors, the server's checks, the client's.

How the vectors were derived: RFC 4380 gives no test vector for its authentication value, so
the byte strings below were built from §5.1.1's header layout and §5.2.2's algorithm text
(HMAC-SHA1 keyed with the secret, over nonce || confirmation || origin indication, if any ||
IPv6 packet, no padding), and the HMAC values computed independently of this code with
``openssl dgst -sha1 -hmac example-shared-secret`` over those concatenations. The RS and RA are
the nonce-only vectors of test_wire.py / test_server.py (an RS from fe80::ffff:ffff:ffff, and
the RA a server at 203.0.113.120 answers to 192.0.2.1:4096).
"""

from __future__ import annotations

import base64
import itertools
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakenet import PORT_RESTRICTED, FakeNetwork, Nat, ServerNode
from teredo.adapters import accel
from teredo.core.address import TEREDO_PORT, endpoint
from teredo.core.errors import UsageError
from teredo.core.qualification import QualificationState, Qualifier, ServerPair
from teredo.core.secure_qualification import (
    ClientKey,
    authentication_value,
    parse_identifier,
    parse_key_file,
    parse_secret,
    sign,
    verify,
)
from teredo.core.server import (
    BATCH_SIZE,
    DROP_REASONS,
    ServerBatch,
    ServerSettings,
    TeredoServer,
    python_answer_solicitations,
)
from teredo.core.wire import (
    Authentication,
    TeredoPacket,
    encode_teredo_packet,
    parse_teredo_packet,
)


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


PRIMARY = IPv4Address("203.0.113.120")
SECONDARY = IPv4Address("203.0.113.121")
CLIENT = ("192.0.2.1", 4096)
NONCE = hexbytes("0123456789abcdef")
SECRET = b"example-shared-secret"
ALICE = ClientKey(b"alice", SECRET)

RS_IPV6 = hexbytes(
    "60000000 0008 3a ff fe800000000000000000ffffffffffff ff020000000000000000000000000002"
    "85 00 7d37 00000000"
)
RA_IPV6 = hexbytes(
    "60000000 0038 3a ff fe80000000000000 8000f22734ff8e87 fe80000000000000 0000ffffffffffff"
    "86 00 954c 00 00 0000 00000000 000007d0"
    "03 04 40 40 ffffffff ffffffff 00000000 20010000cb0071780000000000000000"
    "05 01 0000 00000500"
)
ORIGIN = hexbytes("0000 efff 3ffffdfe")  # 192.0.2.1:4096, obfuscated (RFC 4380 §5.1.1)
# HMAC-SHA1(SECRET, NONCE || 00 || RS): openssl dgst -sha1 -hmac example-shared-secret
RS_VALUE = hexbytes("eb1ab5dada98563b37978252b4e0d1914a0f176e")
# HMAC-SHA1(SECRET, NONCE || 00 || ORIGIN || RA): likewise
RA_VALUE = hexbytes("e6f7c5640cd9dc77c318767c1f95c21c4e149568")

# RFC 4380 §5.1.1: 00 01 | ID-len | AU-len | client identifier | value | nonce | confirmation
SIGNED_RS = hexbytes("0001 05 14") + b"alice" + RS_VALUE + NONCE + b"\x00" + RS_IPV6
SIGNED_RA = hexbytes("0001 05 14") + b"alice" + RA_VALUE + NONCE + b"\x00" + ORIGIN + RA_IPV6


def test_the_algorithm_is_hmac_sha1_over_the_plain_concatenation() -> None:
    # RFC 2202 §3 test case 2 (HMAC-SHA1, key "Jefe"), its data cut into the four parts.
    value = authentication_value(b"Jefe", b"what do ", ord("y"), b"", b"a want for nothing?")
    assert value == hexbytes("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")


def test_signed_rs_and_ra_vectors() -> None:
    assert authentication_value(SECRET, NONCE, 0, b"", RS_IPV6) == RS_VALUE
    assert authentication_value(SECRET, NONCE, 0, ORIGIN, RA_IPV6) == RA_VALUE
    rs = encode_teredo_packet(TeredoPacket(RS_IPV6, sign(ALICE, NONCE, RS_IPV6)))
    assert rs == SIGNED_RS
    packet = parse_teredo_packet(SIGNED_RA)
    assert packet.authentication is not None
    assert packet.authentication.client_id == b"alice"
    assert verify(packet.authentication, SECRET, packet.ipv6, ORIGIN)
    assert not verify(packet.authentication, b"another secret", packet.ipv6, ORIGIN)
    assert not verify(packet.authentication, SECRET, packet.ipv6)  # the origin is covered


def test_the_secret_never_shows_in_a_repr() -> None:
    assert "example" not in repr(ALICE)


# -- text forms --------------------------------------------------------------------------------


def test_secrets_in_hex_or_base64() -> None:
    assert parse_secret("00ff") == parse_secret("hex:00FF") == b"\x00\xff"
    assert parse_secret("base64:" + base64.b64encode(SECRET).decode()) == SECRET
    for bad in ("", "0", "xyz", "base64:", "base64:@@", "00" * 256):
        with pytest.raises(ValueError):
            parse_secret(bad)
    with pytest.raises(ValueError):
        parse_identifier("two words")


def test_key_file() -> None:
    text = (
        "# identifier  secret\n"
        "\n"
        f"alice {SECRET.hex()}   # the lab's client\n"
        f"bob\tbase64:{base64.b64encode(b'bob').decode()}\n"
    )
    assert parse_key_file(text) == {b"alice": SECRET, b"bob": b"bob"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", "keys:1: a key line is 'identifier secret', two words, not 1"),
        ("alice 00 11\n", "two words, not 3"),
        ("alice zz\n", "keys:1: the secret of alice must be an even number of hex digits"),
        ("\nalice 00\nalice 11\n", "keys:3: the client alice is listed twice"),
        ("al\x01ce 00\n", "the identifier must be 1 to 255 printable ASCII"),
    ],
)
def test_key_file_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_key_file(text, "keys")


# -- the server --------------------------------------------------------------------------------


def make_server(*, required: bool = False) -> TeredoServer:
    server = TeredoServer(ServerSettings(PRIMARY, SECONDARY, require_authentication=required))
    server.set_client_keys({b"alice": SECRET})
    return server


def rs(auth: Authentication | None) -> bytes:
    return encode_teredo_packet(TeredoPacket(RS_IPV6, auth))


def only_drop(server: TeredoServer) -> str:
    assert not server.datagrams_to_send()
    [(reason, count)] = server.drops.items()
    assert count == 1 and reason in DROP_REASONS
    return reason


@pytest.mark.parametrize("required", [False, True])
def test_a_signed_rs_gets_the_signed_ra_byte_for_byte(required: bool) -> None:
    server = make_server(required=required)
    server.receive_datagram(SIGNED_RS, CLIENT, PRIMARY, 0.0)
    [answer] = server.datagrams_to_send()
    assert answer.data == SIGNED_RA
    assert server.counters["router_advertisements_authenticated"] == 1


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (Authentication(NONCE, 0, b"mallory", RS_VALUE), "unknown_client"),
        (sign(ClientKey(b"alice", b"wrong"), NONCE, RS_IPV6), "authentication_failed"),
        (Authentication(NONCE, 0, b"alice", RS_VALUE[:-1]), "authentication_failed"),
        (Authentication(NONCE, 0, b"alice", b""), "authentication_failed"),
        (Authentication(NONCE, 0, b"", RS_VALUE), "unknown_client"),
        (Authentication(NONCE, 1, b"alice", RS_VALUE), "authentication_failed"),  # covered
    ],
)
def test_unknown_or_wrong_clients_are_dropped_and_counted(
    auth: Authentication, reason: str
) -> None:
    server = make_server()
    server.receive_datagram(rs(auth), CLIENT, PRIMARY, 0.0)
    assert only_drop(server) == reason


def test_unauthenticated_clients_are_answered_unless_authentication_is_required() -> None:
    for auth in (Authentication(NONCE), None):  # Miredo and Windows: nonce-only
        server = make_server()
        server.receive_datagram(rs(auth), CLIENT, PRIMARY, 0.0)
        assert len(server.datagrams_to_send()) == 1
        server = make_server(required=True)
        server.receive_datagram(rs(auth), CLIENT, PRIMARY, 0.0)
        assert only_drop(server) == "authentication_required"


def batch_of(datagrams: list[bytes]) -> ServerBatch:
    from teredo.core.server import RECORD, SLOT_BYTES

    batch = ServerBatch(BATCH_SIZE)
    for index, data in enumerate(datagrams):
        batch.view[index * SLOT_BYTES : index * SLOT_BYTES + len(data)] = data
        RECORD.pack_into(
            batch.records, index * RECORD.size, int(IPv4Address(CLIENT[0])), len(data), CLIENT[1], 0
        )
    return batch


@pytest.mark.parametrize("answer", [python_answer_solicitations, accel.answer_solicitations])
def test_the_batch_fast_path_never_answers_an_unsigned_rs_when_required(answer: object) -> None:
    """The answer functions (the C one too) answer nonce-only RSs from a template: a server
    that requires authentication must not let them, and must still answer signed RSs."""
    datagrams = [rs(Authentication(NONCE)), rs(None), SIGNED_RS]
    server = make_server(required=True)
    batch = batch_of(datagrams)
    answers = server.receive_batch(batch, len(datagrams), PRIMARY, 0.0, answer)  # type: ignore[arg-type]
    assert answers == 0
    assert [d.data for d in server.datagrams_to_send()] == [SIGNED_RA]
    assert server.drops == {"authentication_required": 2}
    server = make_server()  # not required: the fast path answers the two, the slow one signs
    answers = server.receive_batch(batch_of(datagrams), 3, PRIMARY, 0.0, answer)  # type: ignore[arg-type]
    assert answers == 2
    assert [d.data for d in server.datagrams_to_send()] == [SIGNED_RA]


# -- the client --------------------------------------------------------------------------------

SERVER_EP = endpoint(PRIMARY, TEREDO_PORT)


def qualifier(key: ClientKey | None) -> Qualifier:
    q = Qualifier([ServerPair(PRIMARY, SECONDARY)], lambda n: NONCE[:n], detect_nat=False, key=key)
    q.start(0.0)
    return q


def test_the_client_signs_its_rs() -> None:
    q = qualifier(ALICE)
    [(data, destination)] = q.datagrams_to_send()
    assert (data, destination) == (SIGNED_RS, SERVER_EP)


def test_the_client_accepts_only_an_ra_signed_with_its_key() -> None:
    q = qualifier(ALICE)
    q.receive_datagram(SIGNED_RA, SERVER_EP, 0.1)
    assert q.state is QualificationState.QUALIFIED
    assert q.mapped == CLIENT

    unsigned = hexbytes("0001 00 00") + NONCE + b"\x00" + ORIGIN + RA_IPV6
    forged = bytearray(SIGNED_RA)
    forged[9] ^= 1  # one bit of the value
    other = sign(ClientKey(b"alice", b"wrong"), NONCE, RA_IPV6, ORIGIN)
    wrong_key = encode_teredo_packet(TeredoPacket(RA_IPV6, other)).replace(
        RA_IPV6, ORIGIN + RA_IPV6
    )
    for data, reason in (
        (unsigned, "ra_not_authenticated"),
        (bytes(forged), "ra_authentication_failed"),
        (wrong_key, "ra_authentication_failed"),
    ):
        q = qualifier(ALICE)
        q.receive_datagram(data, SERVER_EP, 0.1)
        assert q.state is QualificationState.QUALIFYING
        assert q.drops == {reason: 1}


def test_without_a_key_the_client_refuses_a_signed_ra_as_before() -> None:
    q = qualifier(None)
    [(data, _)] = q.datagrams_to_send()
    assert data == hexbytes("0001 00 00") + NONCE + b"\x00" + RS_IPV6
    q.receive_datagram(SIGNED_RA, SERVER_EP, 0.1)
    assert q.drops == {"ra_unexpected_authentication": 1}


class QualifierNode:
    """A Qualifier on the fake network."""

    def __init__(self, core: Qualifier) -> None:
        self.core = core
        self.address = ("10.1.0.2", 5000)

    def collect(self, now: float) -> list[tuple[bytes, tuple[str, int], str | None]]:
        return [(d, e, None) for d, e in self.core.datagrams_to_send()]

    def deliver(self, payload: bytes, source: tuple[str, int], _: object, now: float) -> None:
        self.core.receive_datagram(payload, source, now)


@pytest.mark.parametrize(("secret", "qualified"), [(SECRET, True), (b"wrong", False)])
def test_client_and_server_qualify_through_a_nat_with_the_key(
    secret: bytes, qualified: bool
) -> None:
    """Our client core against our server core on the fake network, authentication required:
    the right key qualifies (on both server addresses), a wrong one never does and is counted."""
    net = FakeNetwork()
    server = make_server(required=True)
    ServerNode(server, net)
    counter = itertools.count(1)
    q = Qualifier(
        [ServerPair(PRIMARY, SECONDARY)],
        lambda n: next(counter).to_bytes(n, "big"),
        key=ClientKey(b"alice", secret),
    )
    net.attach(QualifierNode(q), Nat("203.0.113.2", PORT_RESTRICTED))
    q.start(0.0)
    net.advance(0.0, 3.0)
    assert (q.state is QualificationState.QUALIFIED) is qualified
    if qualified:
        assert server.counters["router_advertisements_authenticated"] == 2
    else:
        assert server.drops["authentication_failed"] == 2


@settings(max_examples=300, deadline=None)
@given(
    client_id=st.sampled_from([b"", b"alice", b"bob"]) | st.binary(max_size=8),
    auth_value=st.sampled_from([b"", RS_VALUE]) | st.binary(max_size=24),
    confirmation=st.integers(0, 255),
    required=st.booleans(),
    cut=st.integers(0, 120),
)
def test_arbitrary_authentication_headers_are_answered_or_dropped_by_name(
    client_id: bytes, auth_value: bytes, confirmation: int, required: bool, cut: int
) -> None:
    server = make_server(required=required)
    data = rs(Authentication(NONCE, confirmation, client_id, auth_value))
    server.receive_datagram(data[: len(data) - cut % len(data)], CLIENT, PRIMARY, 0.0)
    answers = server.datagrams_to_send()
    assert len(answers) + sum(server.drops.values()) == 1
    assert set(server.drops) <= set(DROP_REASONS)
    if answers and (required or client_id):
        assert client_id == b"alice" and auth_value == RS_VALUE and confirmation == 0
        assert answers[0].data == SIGNED_RA
