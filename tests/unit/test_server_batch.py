"""The server's batch path (RFC 4380 §5.3.2 answered from a template) and its rate limiter.

Three layers of agreement:

- the pure-Python answer function, through `TeredoServer.receive_batch`, against the
  per-datagram core (`receive_datagram`): the same answers, counters and drops for any traffic;
- the C answer function against its twin (skipped without the C module outside CI) on mutated
  Router Solicitations, sources, nonces and C bits, and on arbitrary bytes (a bounded fuzz);
- the batch I/O (`recv_batch`, `send_batch`) on real loopback sockets.

The limiters are tested in test_server_limiter.py.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teredo.adapters import accel
from teredo.adapters.udp import python_recv_batch, python_send_batch
from teredo.core.address import TEREDO_PORT, Endpoint, encode_teredo_address, endpoint
from teredo.core.server import (
    ANSWER_SLOT_BYTES,
    BATCH_SIZE,
    RECORD,
    SLOT_BYTES,
    AnswerFunction,
    OutgoingDatagram,
    RateLimiter,
    ServerBatch,
    ServerSettings,
    SourceRateLimiter,
    TeredoServer,
    Verdict,
    python_answer_solicitations,
    solicitation_plan,
)
from teredo.core.wire import (
    Authentication,
    TeredoPacket,
    encode_bubble,
    encode_echo,
    encode_router_solicitation,
    encode_teredo_packet,
)
from testsupport import require_accelerators

PRIMARY = IPv4Address("203.0.113.120")
SECONDARY = IPv4Address("203.0.113.121")
CLIENT = ("192.0.2.1", 4096)
NONCE = bytes.fromhex("0123456789abcdef")

# RFC 4380 §5.2.1 / §5.3.2 vectors (tests/unit/test_server.py has them too).
RS_PAYLOAD = bytes.fromhex(
    "0001 00 00 0123456789abcdef 00"
    "60000000 0008 3a ff fe800000000000000000ffffffffffff ff020000000000000000000000000002"
    "85 00 7d37 00000000"
)
RA_PAYLOAD = bytes.fromhex(
    "0001 00 00 0123456789abcdef 00"
    "0000 efff 3ffffdfe"
    "60000000 0038 3a ff fe80000000000000 8000f22734ff8e87 fe80000000000000 0000ffffffffffff"
    "86 00 954c 00 00 0000 00000000 000007d0"
    "03 04 40 40 ffffffff ffffffff 00000000 20010000cb0071780000000000000000"
    "05 01 0000 00000500"
)

C_ANSWER = accel.answer_solicitations
C_LIMITER = accel.new_rate_limiter


def rs(source: IPv6Address, nonce: bytes | None = NONCE) -> bytes:
    authentication = None if nonce is None else Authentication(nonce=nonce)
    return encode_teredo_packet(
        TeredoPacket(ipv6=encode_router_solicitation(source), authentication=authentication)
    )


def fill(batch: ServerBatch, datagrams: list[tuple[bytes, Endpoint]]) -> None:
    """Put datagrams into a batch as recv_batch would."""
    for index, (data, source) in enumerate(datagrams):
        start = index * SLOT_BYTES
        batch.data[start : start + len(data)] = data
        address = int(IPv4Address(source[0]))
        RECORD.pack_into(batch.records, index * RECORD.size, address, len(data), source[1], 0)


def batch_outputs(server: TeredoServer, batch: ServerBatch, answers: int) -> list[OutgoingDatagram]:
    """The answers in the batch and what the per-datagram path queued, as datagrams."""
    senders = (server.settings.primary, server.settings.secondary)
    out = []
    for index in range(answers):
        data, destination, socket_index = batch.answer(index)
        out.append(OutgoingDatagram(data, destination, senders[socket_index]))
    return out + server.datagrams_to_send()


# ---------------------------------------------------------------------------------------------
# The plan and the answer


@pytest.mark.parametrize("answer", [python_answer_solicitations, C_ANSWER])
@pytest.mark.parametrize("limiter", [SourceRateLimiter, C_LIMITER])
def test_the_vector_is_answered_from_the_template(
    answer: AnswerFunction, limiter: Callable[[float, float, int], RateLimiter]
) -> None:
    server = TeredoServer(ServerSettings(PRIMARY, SECONDARY), limiter)
    batch = ServerBatch(4)
    fill(batch, [(RS_PAYLOAD, CLIENT), (RS_PAYLOAD[13:], CLIENT), (b"junk", CLIENT)])
    assert server.receive_batch(batch, 3, PRIMARY, 0.0, answer) == 2
    assert batch.answer(0) == (RA_PAYLOAD, CLIENT, 0)
    assert batch.answer(1) == (RA_PAYLOAD[13:], CLIENT, 0)  # no nonce, no header
    tags = [RECORD.unpack_from(batch.records, i * RECORD.size)[3] for i in range(3)]
    assert tags == [Verdict.ANSWERED, Verdict.ANSWERED, Verdict.SLOW]
    assert server.counters == {
        "received": 3,
        "router_solicitations": 2,
        "router_advertisements": 2,
    }
    assert server.drops == {"malformed": 1}


def test_the_template_is_the_answer_with_fields_zeroed() -> None:
    plan = solicitation_plan(ServerSettings(PRIMARY, SECONDARY))
    assert len(plan.template) == len(RA_PAYLOAD) == 117
    zeroed = bytearray(RA_PAYLOAD)
    for start, end in ((4, 12), (15, 21), (45, 61), (63, 65)):  # nonce, origin, dest., checksum
        zeroed[start:end] = bytes(end - start)
    assert plan.template == zeroed
    assert (plan.primary, plan.secondary) == (int(PRIMARY), int(SECONDARY))


def test_cone_solicitations_are_answered_from_the_other_socket() -> None:
    server = TeredoServer(ServerSettings(PRIMARY, SECONDARY))
    batch = ServerBatch(4)
    cone = IPv6Address("fe80::8000:5445:5245:444f")
    fill(batch, [(rs(cone), CLIENT), (rs(IPv6Address("fe80::1")), CLIENT)])
    assert server.receive_batch(batch, 2, SECONDARY, 0.0) == 2
    assert [batch.answer(i)[2] for i in range(2)] == [0, 1]  # C=1: primary; C=0: secondary
    assert server.counters["router_advertisements_cone"] == 1


def test_the_slow_path_runs_in_arrival_order() -> None:
    """A bubble and an RS from one source with one token left: whichever came first wins, as
    when the datagrams are taken one by one (the limiter is shared by both paths)."""
    source = ("192.0.2.7", 5000)
    own = encode_teredo_address(PRIMARY, IPv4Address(source[0]), source[1])
    peer = encode_teredo_address(PRIMARY, IPv4Address("198.51.100.10"), 40000)
    bubble = encode_bubble(own, peer)
    for first, second in ((bubble, RS_PAYLOAD), (RS_PAYLOAD, bubble)):
        server = TeredoServer(ServerSettings(PRIMARY, SECONDARY, rate_burst=1.0))
        batch = ServerBatch(2)
        fill(batch, [(first, source), (second, source)])
        answers = server.receive_batch(batch, 2, PRIMARY, 0.0)
        assert answers == (1 if first is RS_PAYLOAD else 0)
        assert len(batch_outputs(server, batch, answers)) == 1
        assert server.drops == {"rate_limited": 1}


def test_an_exception_in_the_slow_path_stops_the_batch() -> None:
    for answer in (python_answer_solicitations, C_ANSWER):
        batch = ServerBatch(2)
        fill(batch, [(b"junk", CLIENT), (RS_PAYLOAD, CLIENT)])
        plan = solicitation_plan(ServerSettings(PRIMARY, SECONDARY))

        def explode(index: int) -> None:
            raise RuntimeError(f"slow {index}")

        with pytest.raises(RuntimeError, match="slow 0"):
            answer(
                batch.data,
                SLOT_BYTES,
                batch.records,
                2,
                plan,
                None,
                0.0,
                0,
                batch.out,
                ANSWER_SLOT_BYTES,
                batch.out_records,
                explode,
            )


def arguments(batch: ServerBatch, **changes: object) -> list[object]:
    """The answer function's arguments for the whole batch, with `changes`."""
    values: dict[str, object] = {
        "data": batch.data,
        "slot": SLOT_BYTES,
        "records": batch.records,
        "count": batch.size,
        "plan": solicitation_plan(ServerSettings(PRIMARY, SECONDARY)),
        "limiter": None,
        "now": 0.0,
        "local": 0,
        "out": batch.out,
        "out_slot": ANSWER_SLOT_BYTES,
        "out_records": batch.out_records,
        "slow": lambda index: None,
    }
    values.update(changes)
    return list(values.values())


@pytest.mark.parametrize("answer", [python_answer_solicitations, C_ANSWER])
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": 5}, "too small"),
        ({"count": -1}, "too small"),
        ({"slot": 0}, "too small"),
        ({"out_slot": 100}, "not a solicitation plan"),  # the template does not fit
        ({"out": bytearray(ANSWER_SLOT_BYTES * 3)}, "too small"),
        ({"out_records": bytearray(RECORD.size)}, "too small"),
        ({"records": bytearray(RECORD.size * 3)}, "too small"),
        ({"local": 2}, "local must be 0"),
        ({"slot": 60}, "longer than its slot"),
    ],
)
def test_answer_refuses_buffers_that_cannot_hold_the_batch(
    answer: Callable[..., object], changes: dict[str, object], message: str
) -> None:
    batch = ServerBatch(4)
    fill(batch, [(RS_PAYLOAD, CLIENT)] * 4)
    if changes.get("slot") == 60:  # the records claim 61 bytes in slots of 60
        changes["data"] = bytearray(60 * 4)
    with pytest.raises(ValueError, match=message):
        answer(*arguments(batch, **changes))
    assert bytes(batch.out) == bytes(len(batch.out))  # nothing written


# ---------------------------------------------------------------------------------------------
# The batch path against the per-datagram path


LINK_LOCALS = st.builds(
    lambda iid, cone: IPv6Address((0xFE80 << 112) | iid | (cone << 63)),
    st.integers(0, 2**64 - 1),
    st.booleans(),
)
GLOBAL_SOURCES = st.builds(
    endpoint,
    st.sampled_from(["192.0.2.1", "198.51.100.7", "100.64.3.4", "8.8.8.8"]),
    st.integers(1, 65535),
)
ODD_SOURCES = st.one_of(
    st.builds(
        endpoint,
        st.sampled_from([str(PRIMARY), str(SECONDARY)]),
        st.sampled_from([TEREDO_PORT, 3545]),
    ),
    st.builds(
        endpoint,
        st.sampled_from(
            [
                "10.1.2.3",
                "192.168.0.1",
                "127.0.0.1",
                "224.0.0.253",
                "0.0.0.1",
                "255.255.255.255",
                "172.16.0.9",
            ]
        ),
        st.integers(0, 65535),
    ),
    st.builds(endpoint, st.integers(0, 2**32 - 1), st.integers(0, 65535)),
)
SOURCES = st.one_of(GLOBAL_SOURCES, GLOBAL_SOURCES, ODD_SOURCES)


@st.composite
def solicitations(draw: st.DrawFn) -> bytes:
    """An RS as clients send it, often mutated: bytes flipped, cut, extended, other headers."""
    nonce = draw(st.one_of(st.none(), st.binary(min_size=8, max_size=8)))
    data = bytearray(rs(draw(LINK_LOCALS), nonce))
    kind = draw(st.integers(0, 9))
    if kind == 0:  # a byte changed anywhere
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif kind == 1:  # a byte changed in the IPv6 header or the RS
        start = 13 if nonce is not None else 0
        data[draw(st.integers(start, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif kind == 2:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == 3:
        data += draw(st.binary(min_size=1, max_size=12))
    elif kind == 4:  # a confirmation byte, or a client id (not a nonce-only header)
        if nonce is not None:
            data[12] = draw(st.integers(1, 255))
        else:
            data = bytearray(b"\x00\x01\x02\x00xy" + NONCE + b"\x00") + data
    elif kind == 5:  # a different hop limit, type or code, with a valid checksum
        ipv6 = data[-48:]
        field = draw(st.sampled_from([7, 40, 41]))
        ipv6[field] = draw(st.integers(0, 255))
        ipv6[42:44] = b"\x00\x00"
        pseudo = ipv6[8:40] + struct.pack("!I3xB", 8, 58)
        total = int.from_bytes(pseudo + ipv6[40:], "big") % 0xFFFF or 0xFFFF
        ipv6[42:44] = (0xFFFF - total).to_bytes(2, "big")
        data[-48:] = ipv6
    return bytes(data)


def other_traffic() -> st.SearchStrategy[bytes]:
    client = encode_teredo_address(PRIMARY, IPv4Address(CLIENT[0]), CLIENT[1])
    native = IPv6Address("2001:db8:2::2")
    return st.sampled_from(
        [
            encode_bubble(client, encode_teredo_address(PRIMARY, IPv4Address("198.51.100.10"), 1)),
            encode_bubble(IPv6Address("fe80::1"), client),
            encode_echo(client, native, 1, 2, b"12345678"),
            encode_echo(native, client, 1, 2, b"x", is_request=False),
            b"",
            b"\x00",
            bytes(48),
        ]
    )


DATAGRAMS = st.lists(
    st.tuples(st.one_of(solicitations(), solicitations(), other_traffic()), SOURCES),
    min_size=1,
    max_size=40,
)


def run_both(
    datagrams: list[tuple[bytes, Endpoint]],
    *,
    local: IPv4Address,
    step: float,
    batch_size: int,
    answer: AnswerFunction = python_answer_solicitations,
    new_limiter: Callable[[float, float, int], RateLimiter] = SourceRateLimiter,
    **options: object,
) -> tuple[TeredoServer, list[OutgoingDatagram], TeredoServer, list[OutgoingDatagram]]:
    """Feed the datagrams to one server in batches and to another one by one."""
    values: dict[str, object] = {"primary": PRIMARY, "secondary": SECONDARY}
    values.update(options)
    batched = TeredoServer(ServerSettings(**values), new_limiter)  # type: ignore[arg-type]
    single = TeredoServer(ServerSettings(**values))  # type: ignore[arg-type]
    batch = ServerBatch(batch_size)
    batched_out: list[OutgoingDatagram] = []
    single_out: list[OutgoingDatagram] = []
    now = 0.0
    for start in range(0, len(datagrams), batch_size):
        chunk = datagrams[start : start + batch_size]
        now += step
        fill(batch, chunk)
        answers = batched.receive_batch(batch, len(chunk), local, now, answer)
        batched_out += batch_outputs(batched, batch, answers)
        for data, source in chunk:
            single.receive_datagram(data, source, local, now)
        single_out += single.datagrams_to_send()
        assert batched.native_packets_to_send() == single.native_packets_to_send()
    return batched, batched_out, single, single_out


@settings(max_examples=300, deadline=None)
@given(
    datagrams=DATAGRAMS,
    local=st.sampled_from([PRIMARY, SECONDARY]),
    allow_private=st.booleans(),
    burst=st.sampled_from([1.0, 2.0, 200.0]),
    rate=st.sampled_from([None, 0.5, 100.0]),
    step=st.sampled_from([0.0, 0.4, -1.0]),
    batch_size=st.integers(1, BATCH_SIZE),
)
def test_the_batch_path_does_what_the_datagram_path_does(
    datagrams: list[tuple[bytes, Endpoint]],
    local: IPv4Address,
    allow_private: bool,
    burst: float,
    rate: float | None,
    step: float,
    batch_size: int,
) -> None:
    batched, batched_out, single, single_out = run_both(
        datagrams,
        local=local,
        step=step,
        batch_size=batch_size,
        allow_private=allow_private,
        rate_burst=burst,
        rate_per_second=rate,
        rate_max_sources=3,
    )
    assert sorted(batched_out) == sorted(single_out)
    assert batched.counters == single.counters
    assert batched.drops == single.drops
    assert batched.rate_limit_entries == single.rate_limit_entries


@settings(max_examples=300, deadline=None)
@given(
    datagrams=DATAGRAMS,
    local=st.sampled_from([PRIMARY, SECONDARY]),
    allow_private=st.booleans(),
    burst=st.sampled_from([1.0, 3.0]),
    batch_size=st.integers(1, BATCH_SIZE),
)
def test_the_c_answer_and_limiter_do_what_the_datagram_path_does(
    datagrams: list[tuple[bytes, Endpoint]],
    local: IPv4Address,
    allow_private: bool,
    burst: float,
    batch_size: int,
) -> None:
    require_accelerators()
    batched, batched_out, single, single_out = run_both(
        datagrams,
        local=local,
        step=0.3,
        batch_size=batch_size,
        answer=C_ANSWER,
        new_limiter=C_LIMITER,
        allow_private=allow_private,
        rate_burst=burst,
        rate_per_second=1.0,
        rate_max_sources=3,
    )
    assert sorted(batched_out) == sorted(single_out)
    assert batched.counters == single.counters
    assert batched.drops == single.drops


# ---------------------------------------------------------------------------------------------
# The C answer function against its twin, byte for byte


def run_answer(
    answer: Callable[..., object],
    limiter: RateLimiter | None,
    datagrams: list[tuple[bytes, Endpoint]],
    local: int,
    allow_private: bool,
    now: float,
) -> tuple[object, bytes, bytes, bytes, list[int]]:
    batch = ServerBatch(len(datagrams))
    fill(batch, datagrams)
    plan = solicitation_plan(ServerSettings(PRIMARY, SECONDARY, allow_private=allow_private))
    slow: list[int] = []
    result = answer(
        *arguments(
            batch,
            plan=plan,
            limiter=limiter,
            now=now,
            local=local,
            slow=slow.append,
        )
    )
    return result, bytes(batch.records), bytes(batch.out), bytes(batch.out_records), slow


@settings(max_examples=400, deadline=None)
@given(
    datagrams=st.lists(st.tuples(solicitations(), SOURCES), min_size=1, max_size=BATCH_SIZE),
    local=st.integers(0, 1),
    allow_private=st.booleans(),
    now=st.floats(-10.0, 1e6),
    limited=st.booleans(),
)
def test_the_c_and_python_answers_agree_on_solicitations(
    datagrams: list[tuple[bytes, Endpoint]],
    local: int,
    allow_private: bool,
    now: float,
    limited: bool,
) -> None:
    require_accelerators()
    limiters: list[RateLimiter | None] = [None, None]
    if limited:
        limiters = [C_LIMITER(1.0, 2.0, 4), SourceRateLimiter(1.0, 2.0, 4)]
    results = [
        run_answer(answer, limiter, datagrams, local, allow_private, now)
        for answer, limiter in zip((C_ANSWER, python_answer_solicitations), limiters, strict=True)
    ]
    assert results[0] == results[1]


@settings(max_examples=300, deadline=None)
@given(
    datagrams=st.lists(
        st.tuples(
            st.binary(max_size=80),
            st.builds(endpoint, st.integers(0, 2**32 - 1), st.integers(0, 65535)),
        ),
        min_size=1,
        max_size=16,
    ),
    local=st.integers(0, 1),
)
def test_the_c_answer_survives_arbitrary_bytes_like_its_twin(
    datagrams: list[tuple[bytes, Endpoint]], local: int
) -> None:
    """A bounded fuzz of the C function against its twin (memory safety: run once under ASan)."""
    require_accelerators()
    limiters = (C_LIMITER(100.0, 200.0, 8), SourceRateLimiter(100.0, 200.0, 8))
    results = [
        run_answer(answer, limiter, datagrams, local, False, 1.0)
        for answer, limiter in zip((C_ANSWER, python_answer_solicitations), limiters, strict=True)
    ]
    assert results[0] == results[1]


# ---------------------------------------------------------------------------------------------
# The batch I/O on loopback sockets


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A non-blocking receiver and a sender on 127.0.0.1."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender.bind(("127.0.0.1", 0))
    try:
        yield receiver, sender
    finally:
        receiver.close()
        sender.close()


RECEIVERS = pytest.mark.parametrize("receive", [python_recv_batch, accel.recv_batch])
SENDERS = pytest.mark.parametrize("send", [python_send_batch, accel.send_batch])


def wait_readable(sock: socket.socket) -> None:
    import select

    assert select.select([sock], [], [], 5)[0]


@RECEIVERS
def test_recv_batch_reads_into_slots(
    receive: Callable[..., tuple[int, int]], socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    receiver, sender = socket_pair
    payloads = [bytes([i]) * (i * 7 % 90) for i in range(1, 11)] + [b"x" * 300]
    for payload in payloads:
        sender.sendto(payload, receiver.getsockname())
    wait_readable(receiver)
    slot = 256
    data, records = bytearray(slot * 8), bytearray(RECORD.size * 8)
    count, error = receive(receiver, data, slot, records, 8)
    assert (count, error) == (8, 0)
    count2, error2 = receive(receiver, data, slot, records, 8)
    assert (count2, error2) == (3, errno.EAGAIN)
    address, port = sender.getsockname()
    for index, payload in enumerate(payloads[8:]):
        record = RECORD.unpack_from(records, index * RECORD.size)
        expected = payload[:slot]  # a longer datagram is cut to its slot
        assert record == (int(IPv4Address(address)), len(expected), port, 0)
        assert data[index * slot : index * slot + len(expected)] == expected
    assert receive(receiver, data, slot, records, 8) == (0, errno.EAGAIN)


@RECEIVERS
def test_recv_batch_refuses_small_buffers(
    receive: Callable[..., tuple[int, int]], socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    receiver, _ = socket_pair
    with pytest.raises(ValueError):
        receive(receiver, bytearray(100), 64, bytearray(RECORD.size * 2), 2)
    with pytest.raises(ValueError):
        receive(receiver, bytearray(128), 64, bytearray(RECORD.size), 2)


@SENDERS
def test_send_batch_sends_the_answers_of_one_socket(
    send: Callable[..., tuple[int, int, int, int]],
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver, sender = socket_pair
    address, port = receiver.getsockname()
    slot = 64
    out, records = bytearray(slot * 5), bytearray(RECORD.size * 5)
    for index in range(5):
        payload = bytes([index]) * (10 + index)
        out[index * slot : index * slot + len(payload)] = payload
        which = index % 2
        RECORD.pack_into(
            records, index * RECORD.size, int(IPv4Address(address)), len(payload), port, which
        )
    assert send(sender, out, slot, records, 5, 1) == (2, 0, 0, 0)
    got = []
    for _ in range(2):
        wait_readable(receiver)
        got.append(receiver.recv(100))
    assert got == [bytes([1]) * 11, bytes([3]) * 13]
    RECORD.pack_into(records, 0, int(IPv4Address(address)), len(out), port, 0)
    with pytest.raises(ValueError, match="longer than its slot"):
        send(sender, out, slot, records, 5, 0)


@SENDERS
def test_send_batch_counts_what_the_kernel_refuses(
    send: Callable[..., tuple[int, int, int, int]],
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    _, sender = socket_pair
    slot = 16
    out, records = bytearray(slot * 3), bytearray(RECORD.size * 3)
    for index, address in enumerate(("127.0.0.1", "255.255.255.255", "127.0.0.1")):
        RECORD.pack_into(records, index * RECORD.size, int(IPv4Address(address)), 4, 9, 0)
    # Broadcast without SO_BROADCAST: EACCES, counted, and the next one still goes out.
    assert send(sender, out, slot, records, 3, 0) == (2, 0, 0, 1)


def test_the_c_and_python_batch_io_agree(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    """Loopback delivers during sendto, so the 60 datagrams wait in the queue for one read."""
    require_accelerators()
    receiver, sender = socket_pair
    rng = random.Random(3)
    payloads = [rng.randbytes(rng.randrange(0, 200)) for _ in range(60)]
    results = []
    for receive in (accel.recv_batch, python_recv_batch):
        for payload in payloads:
            sender.sendto(payload, receiver.getsockname())
        data, records = bytearray(128 * 64), bytearray(RECORD.size * 64)
        assert receive(receiver, data, 128, records, 64) == (60, errno.EAGAIN)
        results.append((bytes(data), bytes(records)))
    assert results[0] == results[1]
