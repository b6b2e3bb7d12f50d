"""The footprint benchmark's pure parts (benchmarks/footprint.py): settings, targets, the table."""

from __future__ import annotations

import pytest
from footprint import LAB_ROWS, ONESHOT_ROWS, Arm, parse_args, summarize, table, verdict

from teredo.core.errors import UsageError


def test_settings() -> None:
    quick = parse_args(["--quick"])
    assert (quick.rounds, quick.launches, quick.repeats) == (1, 1, 3)
    full = parse_args([])
    assert (full.rounds, full.launches, full.repeats) == (3, 5, 21)
    with pytest.raises(UsageError, match="each side runs first once"):
        parse_args(["--rounds", "1"])
    with pytest.raises(UsageError, match="--launches"):
        parse_args(["--launches", "0"])


def test_targets() -> None:
    launch, rss, oneshot = LAB_ROWS[0], LAB_ROWS[2], ONESHOT_ROWS[0]
    assert verdict(launch, 50.0, 26.0) == "ok (<= 2x)"
    assert verdict(launch, 53.0, 26.0) == "over (<= 2x)"
    assert verdict(launch, 50.0, None) == "-"
    assert verdict(rss, 20.0, 5.0) == "ok (<= 20 MiB)"
    assert verdict(rss, 20.1, 5.0) == "over (<= 20 MiB)"
    assert verdict(oneshot, 39.9, 1.0) == "ok (< 40 ms)"
    assert verdict(oneshot, 40.0, 1.0) == "over (< 40 ms)"
    assert verdict(oneshot, None, 1.0) == "-"


def test_summary_takes_medians_per_implementation() -> None:
    arms = [
        Arm(round=1, impl="ours", metrics={"launch_ms": 60.0}),
        Arm(round=1, impl="miredo", metrics={"launch_ms": 20.0}),
        Arm(round=2, impl="miredo", metrics={"launch_ms": 30.0}),
        Arm(round=2, impl="ours", metrics={"launch_ms": None}),  # a failed launch
    ]
    oneshots = {"checkconf_ms": {"ours": [50.0, 40.0, 45.0], "miredo": [1.0, 2.0, 3.0]}}
    rows = {row["metric"]: row for row in summarize(arms, oneshots)}
    assert (rows["launch_ms"]["ours"], rows["launch_ms"]["miredo"]) == (60.0, 25.0)
    assert rows["launch_ms"]["ratio"] == pytest.approx(2.4)
    assert rows["checkconf_ms"]["ours"] == 45.0
    assert rows["decode_ms"]["ours"] is None and rows["decode_ms"]["target"] == "-"
    text = table(list(rows.values()))
    assert "client launch -> address (ms)" in text
    assert "over (<= 2x)" in text
