"""Smoke tests of the benchmarks at the Internet's shape (benchmarks/internet.py, attack.py).

Each runs its harness with the smallest settings and our implementation only: the generator is
compiled, a few hundred packets go through one tiny cell of each measurement, and the JSON must
hold the figures and name no namespace left behind. Tests never look at the figures' values:
they do not assert on timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labsupport import LAB_TOOLS
from teredo.lab import netns
from testsupport import require_root

pytestmark = [pytest.mark.root, pytest.mark.lab]

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_harness(script: str, args: list[str], output: Path) -> tuple[dict[str, Any], str]:
    argv = [sys.executable, str(BENCHMARKS / script), *args, "--json", str(output)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert output.exists(), result.stderr[-3000:]
    report: dict[str, Any] = json.loads(output.read_text())
    assert report["leftover_namespaces"] == []
    labs = {arm["lab"] for arm in report["arms"]}
    assert not [ns for ns in netns.list_namespaces() if ns.split("-")[0] in labs]
    assert result.returncode == 0, result.stderr[-3000:]
    return report, result.stdout


def test_internet_smoke_run_has_every_figure(tmp_path: Path) -> None:
    require_root(*LAB_TOOLS, "gcc")
    args = ["--quick", "--impls", "ours", "--peers", "1,100", "--duration", "0.3"]
    args += ["--rate", "1000", "--prime-rate", "1000", "--pings", "5"]
    report, stdout = run_harness("internet.py", args, tmp_path / "internet.json")
    (arm,) = report["arms"]
    assert arm["impl"] == "ours" and arm["impls"]["relay"] == "ours" and not arm["errors"]
    metrics = arm["metrics"]
    expected = [
        "rtt_to_client_median_ms",
        "rtt_from_client_p99_ms",
        "plain_to_native_pps",
        "plain_to_teredo_pps",
    ]
    for n in ("1", "100"):
        for name in ("to_native", "to_teredo"):
            expected += [f"{n}:{name}_pps", f"{n}:{name}_relay_us", f"{n}:{name}_machine_us"]
        expected += [f"{n}:rss_mb", f"{n}:primed_pct"]
    missing = [name for name in expected if metrics.get(name) is None]
    assert not missing, f"no figure for {missing}"
    assert arm["raw"]["N=100"]["to_native"]["sent"] > 0
    assert "Teredo->native pkt/s" in stdout and "N=100" in stdout


def test_attack_smoke_run_has_every_figure(tmp_path: Path) -> None:
    require_root(*LAB_TOOLS, "gcc")
    args = ["--quick", "--impls", "ours", "--seconds", "1", "--scale", "0.001"]
    report, stdout = run_harness("attack.py", args, tmp_path / "attack.json")
    arms = {arm["role"]: arm for arm in report["arms"]}
    assert set(arms) == {"relay", "server"}
    for arm in arms.values():
        assert arm["impl"] == "ours" and not arm["errors"], arm["errors"]
    common = ["flood_pps", "cpu_s", "rss_mb", "rss_peak_mb", "out_per_in"]
    expected = {
        "relay": [
            f"{attack}:{name}"
            for attack in ("bubbles", "destinations")
            for name in [*common, "legit_to_native_loss_pct", "evicted_peers"]
        ]
        + ["bubbles:client1_set_up_again", "destinations:new_client_loss_pct"],
        "server": [f"rs:{name}" for name in [*common, "ras_per_s", "qualified_within_1s"]],
    }
    for role, names in expected.items():
        missing = [name for name in names if arms[role]["metrics"].get(name) is None]
        assert not missing, f"{role}: no figure for {missing}"
    for title in ("bubble flood", "new-destination flood", "Router Solicitation flood"):
        assert title in stdout
