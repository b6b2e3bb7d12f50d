"""The systemd units (systemd/) and scripts/install: checked with systemd's own tool."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from testsupport import require_tool

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("teredo-client.service", "teredo-client@.service", "teredo-relay.service",
         "teredo-server.service")  # fmt: skip
TEREDO = Path(sys.executable).parent / "teredo"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/install staged into a directory, with this checkout's teredo as the program."""
    root = tmp_path_factory.mktemp("destdir")
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "install"), "--destdir", str(root),
         "--teredo", str(TEREDO)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return root


def unit(staged: Path, name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(staged / "etc/systemd/system" / name)
    return parser


def test_install_stages_every_unit(staged: Path) -> None:
    installed = sorted(p.name for p in (staged / "etc/systemd/system").iterdir())
    assert installed == sorted(UNITS)
    assert (staged / "etc/teredo").is_dir()
    for name in UNITS:
        text = (staged / "etc/systemd/system" / name).read_text()
        assert "@SBINDIR@" not in text and f"{TEREDO.parent}/teredo " in text


def test_systemd_analyze_verify(staged: Path) -> None:
    """systemd's own checker accepts every unit, the template as an instance, without a word
    (it exits 0 even on unknown keys, so its output must be empty)."""
    analyze = require_tool("systemd-analyze", "systemd")
    directory = staged / "etc/systemd/system"
    paths = [str(directory / name) for name in UNITS if "@" not in name]
    paths.append(str(directory / "teredo-client@lab.service"))
    done = subprocess.run(
        [analyze, "verify", "--man=no", *paths],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


@pytest.mark.parametrize("name", UNITS)
def test_units_notify_and_harden(staged: Path, name: str) -> None:
    service = unit(staged, name)["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].split()[1:3] in (
        ["client", "-f"],
        ["relay", "-f"],
        ["server", "-f"],
    )
    assert " checkconf --role " in service["ExecStartPre"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["RuntimeDirectory"] == "teredo"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    capabilities = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_SETUID", "CAP_SETGID"} <= capabilities  # the daemon drops root itself
    assert "CAP_SYS_ADMIN" not in capabilities
    if "server" in name:
        assert capabilities == {"CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN"}
    else:
        assert {"CAP_NET_ADMIN", "CAP_BPF"} <= capabilities
        assert service["DeviceAllow"] == "/dev/net/tun rw"


def test_template_instances_have_their_own_file(staged: Path) -> None:
    service = unit(staged, "teredo-client@.service")["Service"]
    assert service["ExecStart"].endswith("client -f -c /etc/teredo/client-%i.conf")
