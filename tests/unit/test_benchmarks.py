"""The micro-benchmarks still run against the code as it is now (scripts/bench runs them in full).

Tiny settings, no figures asserted: this only catches a benchmark broken by a rename or by a
change that keeps the engine off its fast paths (fast_path.py asserts they were taken).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_fast_path_benchmark_runs_and_takes_the_fast_paths() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fast_path.py"), "--peers", "10", "--packets", "400"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accept_from_teredo" in result.stdout


def test_peer_table_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "peer_table.py"), "--peers", "1000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bytes per peer" in result.stdout
