"""Smoke test of the same-run benchmark against Miredo (benchmarks/tunnel.py).

Runs the harness with the smallest settings (one round, 1 s per iperf3 test, --quick) and checks
that its JSON holds every metric for both arms (ours and Miredo) of both roles, and that the run
left no namespace of its labs behind. It never looks at the figures themselves: tests do not
assert on timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labsupport import LAB_TOOLS
from teredo.lab import netns
from testsupport import require_root

pytestmark = [pytest.mark.root, pytest.mark.lab]

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "tunnel.py"
EXPECTED = {
    "relay": {
        "udp64_to_client_pps",
        "udp64_to_client_loss",
        "udp64_from_client_pps",
        "udp64_from_client_loss",
        "udp1200_to_client_pps",
        "udp1200_to_client_loss",
        "udp1200_from_client_pps",
        "udp1200_from_client_loss",
        "tcp_to_client_mbps",
        "tcp_from_client_mbps",
        "rtt_established_ms",
        "rtt_first_ms",
        "cpu_udp64_to_client_us",
        "cpu_udp64_from_client_us",
    },
}
EXPECTED["client"] = EXPECTED["relay"] | {"qualify_launch_ms", "qualify_rs_ms"}


def test_benchmark_smoke_run_has_every_metric_for_both_arms(tmp_path: Path) -> None:
    require_root(*LAB_TOOLS, "iperf3")
    output = tmp_path / "tunnel.json"
    argv = [sys.executable, str(HARNESS), "--rounds", "1", "--duration", "1", "--quick"]
    result = subprocess.run(
        [*argv, "--json", str(output)], capture_output=True, text=True, timeout=300
    )
    assert output.exists(), result.stderr[-3000:]
    report = json.loads(output.read_text())

    arms = {(arm["role"], arm["impl"]): arm for arm in report["arms"]}
    assert set(arms) == {(role, impl) for role in EXPECTED for impl in ("ours", "miredo")}
    for (role, impl), arm in arms.items():
        assert arm["impls"]["relay" if role == "relay" else "client1"] == impl
        missing = sorted(name for name in EXPECTED[role] if arm["metrics"].get(name) is None)
        assert not missing, f"{role}/{impl} lacks {missing}; errors: {arm['errors']}"
    rows = {(row["role"], row["metric"]) for row in report["summary"]}
    assert rows == {(role, name) for role, names in EXPECTED.items() for name in names}
    assert report["machine"]["nproc"] >= 1 and report["machine"]["miredo"]
    assert report["leftover_namespaces"] == []
    labs = {arm["lab"] for arm in report["arms"]}
    assert not [ns for ns in netns.list_namespaces() if ns.split("-")[0] in labs]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ours/Miredo" in result.stdout
