"""`teredo decode` / `teredo encode` as a person or a script uses them: the JSON keys, the text
form, one sentence and exit status 2 for bad input, and `python -m teredo`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from teredo.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_decode_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "decode", "2001:0:cb00:7178:285c:efff:3fff:fdfe", "--json")
    assert code == 0 and err == ""
    assert json.loads(out) == {
        "address": "2001:0:cb00:7178:285c:efff:3fff:fdfe",
        "prefix": "2001::/32",
        "server": "203.0.113.120",
        "flags": 0x285C,
        "cone": False,
        "random_bits": 0x285C & 0x3CFF,
        "mapped_address": "192.0.2.1",
        "mapped_port": 4096,
    }


def test_decode_cone_and_uncompressed_form(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "decode", "2001:0000:4136:e378:8000:63bf:3fff:fdd2", "--json")
    fields = json.loads(out)
    assert code == 0
    assert fields["address"] == "2001:0:4136:e378:8000:63bf:3fff:fdd2"
    assert fields["cone"] is True and fields["flags"] == 0x8000 and fields["random_bits"] == 0
    assert (fields["mapped_address"], fields["mapped_port"]) == ("192.0.2.45", 40000)


def test_decode_human(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "decode", "2001:0:cb00:7178:0:efff:3fff:fdfe")
    assert code == 0
    assert "203.0.113.120" in out and "192.0.2.1" in out and "4096" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["decode", "2001:db8::1"],
        ["decode", "2001:db8::1", "--json"],
        ["decode", "hello"],
        ["decode", "192.0.2.1"],
        ["decode", ""],
        ["decode"],
        ["encode", "--server", "1.2.3", "--mapped", "192.0.2.1:1"],
        ["encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1"],
        ["encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:65536"],
        ["encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:-1"],
        ["encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:x"],
        ["encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:1", "--flags", "0x10000"],
        ["encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:1", "--flags", "z"],
        ["encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:1", "--prefix", "x::/64"],
        ["encode", "--mapped", "192.0.2.1:1"],
        ["nonsense"],
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_encode_vectors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:4096")
    assert (code, out.strip()) == (0, "2001:0:cb00:7178:0:efff:3fff:fdfe")
    _, out, _ = run(
        capsys, "encode", "--server", "65.54.227.120", "--mapped", "192.0.2.45:40000", "--cone"
    )
    assert out.strip() == "2001:0:4136:e378:8000:63bf:3fff:fdd2"
    _, out, _ = run(
        capsys, "encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:4096",
        "--flags", "0x285c",
    )  # fmt: skip
    assert out.strip() == "2001:0:cb00:7178:285c:efff:3fff:fdfe"
    _, out, _ = run(
        capsys, "encode", "--server", "203.0.113.120", "--mapped", "192.0.2.1:4096",
        "--prefix", "3ffe:831f::",
    )  # fmt: skip
    assert out.strip() == "3ffe:831f:cb00:7178:0:efff:3fff:fdfe"


def test_encode_then_decode_through_the_console_script() -> None:
    encoded = subprocess.run(
        [sys.executable, "-m", "teredo", "encode", "--server", "198.51.100.118",
         "--mapped", "192.0.2.10:8192"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert encoded == "2001:0:c633:6476:0:dfff:3fff:fdf5"
    decoded = subprocess.run(
        [sys.executable, "-m", "teredo", "decode", encoded, "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert json.loads(decoded)["mapped_port"] == 8192
