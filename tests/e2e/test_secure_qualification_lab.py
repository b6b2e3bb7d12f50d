"""Secure qualification (RFC 4380 §5.2.2) in the lab: our server with a client key file.

Two labs. In the first, the server requires authentication: our two clients, each with its key
(ClientIdentifier and SharedSecret), qualify and reach each other; then the server's key file
gets another secret for one of them and SIGHUP reloads it: that client's refresh RSs are refused
and counted (`authentication_failed`) while the other stays qualified. In the second, the server
has the key file but does not require it: a Miredo client (nonce-only RSs, never signed) and one
of ours (signed) qualify side by side.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labsupport import built_lab, daemon_status, teredo_of
from teredo.lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.lab]

ALICE = "a11ce0000000000000000000000000000000a11c"  # hex secrets, as the key file takes them
BOB = "b0b0000000000000000000000000000000000b0b"
WRONG = "0000000000000000000000000000000000000bad"
REFRESH = 2  # seconds: the clients' refresh RSs come soon after the server's keys change


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


@pytest.fixture(scope="module")
def key_directory() -> Iterator[Path]:
    # Readable by the daemons' User (nobody) too: SIGHUP re-reads the file after privileges
    # were dropped, as an operator's key file must allow (see README, Secure qualification).
    with tempfile.TemporaryDirectory(prefix="teredo-keys-") as directory:
        os.chmod(directory, 0o755)
        yield Path(directory)


def write_keys(path: Path, bob: str) -> None:
    path.write_text(f"# identifier secret\nalice {ALICE}\nbob hex:{bob}\n")
    path.chmod(0o644)


@pytest.fixture(scope="module")
def required_lab(key_directory: Path) -> Iterator[tuple[Lab, Path]]:
    keys = key_directory / "required.keys"
    write_keys(keys, BOB)
    ours_config = {
        "server": [f"ClientKeyFile {keys}", "RequireAuthentication yes"],
        "client1": [
            "ClientIdentifier alice",
            f"SharedSecret {ALICE}",
            f"RefreshInterval {REFRESH}",
        ],
        "client2": ["ClientIdentifier bob", f"SharedSecret {BOB}", f"RefreshInterval {REFRESH}"],
    }
    with built_lab(
        "tq", nat1="port-restricted", nat2="restricted", server="ours", relay="miredo",
        client1="ours", client2="ours", ours_config=ours_config,
    ) as lab:  # fmt: skip
        yield lab, keys


def test_clients_with_their_keys_qualify_and_reach_each_other(
    required_lab: tuple[Lab, Path],
) -> None:
    lab, _ = required_lab
    status = daemon_status(lab, "srv")
    assert status["require_authentication"] is True
    assert status["client_keys"] == 2
    assert status["counters"]["router_advertisements_authenticated"] >= 2
    for source, target in (("cli1", "cli2"), ("cli2", "cli1")):
        result = lab.ping(source, teredo_of(lab, target))
        assert result.ok, result.output


def test_a_wrong_secret_is_refused_and_counted_after_sighup(
    required_lab: tuple[Lab, Path],
) -> None:
    lab, keys = required_lab
    write_keys(keys, WRONG)  # the server now holds another secret for bob
    record = lab._require_state().roles["server"]
    assert record.pid is not None
    os.kill(record.pid, signal.SIGHUP)

    def refused() -> bool:
        drops: dict[str, int] = daemon_status(lab, "srv")["drops"]
        return drops.get("authentication_failed", 0) >= 1

    assert wait_for(refused), daemon_status(lab, "srv")
    assert "client keys: 2 from" in Path(record.log).read_text()
    # bob's client never gets an answer again and goes off-line; alice's stays qualified.
    assert wait_for(lambda: lab.teredo_address("cli2") is None, timeout=40.0)
    assert lab.teredo_address("cli1") is not None
    assert daemon_status(lab, "cli2")["drops"].get("ra_authentication_failed", 0) == 0


@pytest.fixture(scope="module")
def optional_lab(key_directory: Path) -> Iterator[Lab]:
    keys = key_directory / "optional.keys"
    write_keys(keys, BOB)
    ours_config = {
        "server": [f"ClientKeyFile {keys}"],
        "client2": ["ClientIdentifier alice", f"SharedSecret {ALICE}"],
    }
    with built_lab(
        "tp", nat1="restricted", nat2="port-restricted", server="ours", relay="miredo",
        client1="miredo", client2="ours", ours_config=ours_config,
    ) as lab:  # fmt: skip
        yield lab


def test_a_miredo_client_qualifies_beside_a_signed_one_when_not_required(
    optional_lab: Lab,
) -> None:
    lab = optional_lab
    teredo_of(lab, "cli1")  # Miredo: nonce-only RSs
    teredo_of(lab, "cli2")  # ours: signed
    status = daemon_status(lab, "srv")
    assert status["require_authentication"] is False
    assert status["counters"]["router_advertisements_authenticated"] >= 1
    assert (
        status["counters"]["router_advertisements"]
        > (status["counters"]["router_advertisements_authenticated"])
    )
    assert not {"authentication_failed", "unknown_client"} & set(status["drops"])
    result = lab.ping("cli1", teredo_of(lab, "cli2"))
    assert result.ok, result.output
