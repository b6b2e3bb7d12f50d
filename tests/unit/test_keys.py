"""Reading the secure qualification key files (teredo.programs.keys): real files, one-sentence
errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from teredo.core.config import parse_client_config
from teredo.core.errors import UsageError
from teredo.core.secure_qualification import ClientKey
from teredo.programs.keys import client_key, client_keys

BASE = "ServerAddress 198.51.100.2\nClientIdentifier alice\n"


def test_client_key_inline_or_from_a_file(tmp_path: Path) -> None:
    assert client_key(parse_client_config(BASE + "SharedSecret 0a0b\n")) == ClientKey(
        b"alice", b"\x0a\x0b"
    )
    secret = tmp_path / "secret"
    secret.write_text("base64:AAEC\n")
    config = parse_client_config(BASE + f"SharedSecretFile {secret}\n")
    assert client_key(config) == ClientKey(b"alice", b"\x00\x01\x02")
    assert client_key(parse_client_config("ServerAddress 198.51.100.2\n")) is None


def test_client_key_errors_are_one_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(UsageError, match=f"cannot read the shared secret file .* {missing}: No"):
        client_key(parse_client_config(BASE + f"SharedSecretFile {missing}\n"))
    bad = tmp_path / "bad"
    bad.write_text("not hex\n")
    with pytest.raises(UsageError, match=f"the secret in {bad} must be an even number of hex"):
        client_key(parse_client_config(BASE + f"SharedSecretFile {bad}\n"))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="is not ASCII text"):
        client_key(parse_client_config(BASE + f"SharedSecretFile {binary}\n"))


def test_server_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "clients"
    keys.write_text("alice 00ff\nbob base64:Ym9i\n")
    assert client_keys(str(keys)) == {b"alice": b"\x00\xff", b"bob": b"bob"}
    keys.write_text("alice\n")
    with pytest.raises(UsageError, match=f"{keys}:1: a key line is 'identifier secret'"):
        client_keys(str(keys))
    with pytest.raises(UsageError, match="cannot read the client key file"):
        client_keys(str(tmp_path / "none"))
