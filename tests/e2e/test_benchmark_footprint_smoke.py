"""Smoke test of the footprint benchmark (benchmarks/footprint.py), ours against Miredo.

Runs the harness with its smallest settings (one round, one client launch per lab, three runs
of each one-shot command) and checks that the JSON holds every row for both implementations
(decode has no Miredo twin), each arm's raw samples, and no namespace left behind. It never
looks at the figures' values: tests do not assert on timing or memory.
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

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "footprint.py"
LAB_METRICS = {"launch_ms", "launch_cpu_s"} | {
    f"rss_{when}_{daemon}_mib"
    for when in ("ready", "traffic")
    for daemon in ("server", "relay", "client")
}
ONESHOT_METRICS = {"version_ms", "decode_ms", "checkconf_ms"}


def test_footprint_smoke_run_has_every_row_for_both_implementations(tmp_path: Path) -> None:
    require_root(*LAB_TOOLS, "miredo-checkconf")
    output = tmp_path / "footprint.json"
    argv = [sys.executable, str(HARNESS), "--quick", "--json", str(output)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert output.exists(), result.stderr[-3000:]
    report = json.loads(output.read_text())

    arms = {arm["impl"]: arm for arm in report["arms"]}
    assert set(arms) == {"ours", "miredo"}
    for impl, arm in arms.items():
        missing = sorted(name for name in LAB_METRICS if arm["metrics"].get(name) is None)
        assert not missing, f"{impl} lacks {missing}; errors: {arm['errors']}"
        assert [sample["attempt"] for sample in arm["raw"]["launches"]] == [1]
        assert arm["raw"]["rss_ready"]["client"]["processes"] >= 1
    rows = {row["metric"]: row for row in report["summary"]}
    assert set(rows) == LAB_METRICS | ONESHOT_METRICS
    for name, row in rows.items():
        assert row["ours"] is not None, name
        if name != "decode_ms":
            assert row["miredo"] is not None, name
    assert len(report["oneshots"]["checkconf_ms"]["ours"]) == 3
    assert report["settings"]["bytecode_compiled"] is True
    assert report["leftover_namespaces"] == []
    labs = {arm["lab"] for arm in report["arms"]}
    assert not [ns for ns in netns.list_namespaces() if ns.split("-")[0] in labs]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ours/Miredo" in result.stdout
