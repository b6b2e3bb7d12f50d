"""What a daemon says when it cannot start, run for real in a network namespace of its own
(`unshare -n`): one sentence with a fix that works, and nothing that suggests it ran."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from testsupport import require_root

pytestmark = pytest.mark.root


def in_new_namespace(script: str, *teredo: str) -> subprocess.CompletedProcess[str]:
    """Run `script` (shell: set up the namespace), then `teredo ARGS` if any, in a fresh
    network namespace."""
    require_root("unshare", "ip")
    command = " ".join([sys.executable, "-m", "teredo", *teredo]) if teredo else "true"
    return subprocess.run(
        ["unshare", "-n", "sh", "-ec", f"ip link set lo up; {script}; exec {command}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


ONE_ADDRESS = (
    "ip link add wan type veth peer name peer; ip link set wan up; "
    "ip addr add 198.51.100.2/24 dev wan"
)


def warnings_of_a_server_that_cannot_bind(config: Path) -> str:
    """A server whose address is missing retries (the address may come later, at boot): its
    first warning, from a server given 3 s."""
    result = in_new_namespace(
        f"{ONE_ADDRESS}; exec timeout 3 {sys.executable} -m teredo server -f -c {config}"
    )
    assert result.returncode == 124, result.stderr  # still retrying when timeout stopped it
    return next(line for line in result.stderr.splitlines() if "cannot bind" in line)


def test_server_without_its_second_address_says_to_add_it(tmp_path: Path) -> None:
    """It once said "set ServerBindAddress2 to one of this host's IPv4 addresses (or
    0.0.0.0)", which the server then rejects, and never said to add the next address."""
    config = tmp_path / "miredo-server.conf"
    config.write_text("ServerBindAddress 198.51.100.2\nControlSocket none\n")
    warning = warnings_of_a_server_that_cannot_bind(config)
    assert (
        "cannot bind UDP 198.51.100.3:3544: 198.51.100.3 is not an address of this host; a "
        "Teredo server needs it besides 198.51.100.2: add it to the interface that has "
        "198.51.100.2 (ip addr add 198.51.100.3/24 dev wan) (attempt 1); retrying in 1 s"
    ) in warning
    # The advice works: after that very command the server starts on both addresses.
    advice = re.search(r"\((ip addr add [^)]*)\)", warning)
    assert advice is not None
    log = tmp_path / "server.log"
    started = in_new_namespace(
        f"{ONE_ADDRESS}; {advice.group(1)}; "
        f"{sys.executable} -m teredo server -f -c {config} 2>{log} & server=$!; "
        f"for _ in $(seq 300); do grep -q 'Teredo server on' {log} && break; sleep 0.1; done; "
        "kill -TERM $server; wait $server || true"  # what it logged is the point, not its end
    )
    assert started.returncode == 0, started.stderr
    assert "Teredo server on 198.51.100.2:3544 and 198.51.100.3:3544" in log.read_text()


def test_server_without_either_address(tmp_path: Path) -> None:
    config = tmp_path / "miredo-server.conf"
    config.write_text("ServerBindAddress 203.0.113.8\nControlSocket none\n")
    warning = warnings_of_a_server_that_cannot_bind(config)
    assert (
        "cannot bind UDP 203.0.113.8:3544: 203.0.113.8 is not an address of this host; "
        "a Teredo server needs two consecutive public IPv4 addresses on this host: add them to "
        "its interface (ip addr add 203.0.113.8/32 dev IFACE; ip addr add 203.0.113.9/32 dev "
        "IFACE), or set ServerBindAddress to the first of two it has"
    ) in warning
    assert "0.0.0.0" not in warning


@pytest.mark.parametrize(
    ("role", "config_text"),
    [
        ("client", "ServerAddress 192.0.2.1\nAllowPrivateAddresses yes\n"),
        ("relay", "RelayType relay\n"),
    ],
)
def test_a_failed_start_logs_no_summary(tmp_path: Path, role: str, config_text: str) -> None:
    """A start that fails (here: ControlSocket names a regular file) once logged "sent 0 and
    received 0 packets" before its error, as if the daemon had run."""
    not_a_socket = tmp_path / "not-a-socket"
    not_a_socket.write_text("")
    config = tmp_path / "miredo.conf"
    config.write_text(f"{config_text}InterfaceName tfail\nControlSocket {not_a_socket}\n")
    result = in_new_namespace(ONE_ADDRESS, role, "-f", "-c", str(config))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"teredo: {not_a_socket} exists and is not a socket; remove it or set ControlSocket"
    )
    assert " packets" not in result.stderr, result.stderr
