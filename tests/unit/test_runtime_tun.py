"""teredo.adapters.tun without root: name checks, errors, and the read/write loop on a socketpair.

A SOCK_SEQPACKET socketpair keeps packet boundaries like a TUN queue, so `TunDevice`'s drain and
write logic is tested here; the real device is exercised in tests/e2e/test_runtime_netns.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from teredo.adapters.tun import TunDevice, open_tun
from teredo.core.errors import UsageError, UserError


@pytest.mark.parametrize("name", ["", "a" * 16, "te/redo", "te redo", "t:1", "..", "tér"])
def test_invalid_interface_names(name: str) -> None:
    with pytest.raises(UsageError, match="is not a valid interface name"):
        open_tun(name)


def test_missing_device() -> None:
    with pytest.raises(UserError) as caught:
        open_tun("teredo", device="/nonexistent/tun")
    assert str(caught.value) == (
        "/nonexistent/tun is missing; load the tun module (modprobe tun) or, in a container, "
        "pass the device in"
    )


@pytest.fixture
def pair() -> Iterator[tuple[TunDevice, socket.socket]]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    device = TunDevice(os.dup(ours.fileno()), "fake0", multi_queue=False, vnet_hdr=False)
    ours.close()
    yield device, kernel
    device.close()
    kernel.close()


def test_drain_reads_one_packet_per_call(pair: tuple[TunDevice, socket.socket]) -> None:
    device, kernel = pair
    packets = [b"\x60" + bytes(39), b"\x60" + bytes(1279), b"\x60"]
    for packet in packets:
        kernel.send(packet)
    seen: list[bytes] = []
    assert device.drain(lambda view: seen.append(bytes(view)), limit=2) == 2
    assert device.drain(lambda view: seen.append(bytes(view))) == 1
    assert device.drain(lambda view: seen.append(bytes(view))) == 0
    assert seen == packets


def test_write_and_counted_failure(pair: tuple[TunDevice, socket.socket]) -> None:
    device, kernel = pair
    assert device.write(b"\x60abc") is True
    assert kernel.recv(100) == b"\x60abc"
    kernel.close()
    assert device.write(b"\x60abc") is False  # EPIPE: counted, not raised
    assert device.counters() == {"read_errors": 0, "write_eagain": 0, "write_errors": 1}


def test_close_is_idempotent(pair: tuple[TunDevice, socket.socket]) -> None:
    device, _ = pair
    device.close()
    device.close()
    assert device.fileno() == -1
