"""The end of a measured run: coverage of lines and of branches, each on its own line.

scripts/test runs pytest with pytest-cov ([tool.coverage] in pyproject.toml) and asks for a JSON
report besides the table, whose Cover column mixes lines and branches into one figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    reports: dict[str, str | None] = getattr(config.option, "cov_report", None) or {}
    path = reports.get("json")
    if path is None or not Path(path).is_file():
        return
    totals = json.loads(Path(path).read_text())["totals"]
    terminalreporter.write_line(
        f"coverage of teredo: lines {totals['percent_statements_covered_display']} %, "
        f"branches {totals['percent_branches_covered_display']} % "
        f"(together {totals['percent_covered_display']} %)"
    )
