"""The man pages and the README's directive tables are generated (teredo.docs.manpages) from the
parser and the directive table: they must be what the generator gives now, so a new flag, help
text or directive fails here until `python -m teredo.docs.manpages` has been run. Rendered with
man (groff) and linted with mandoc where they are installed."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from teredo.cli import build_parser
from teredo.core.config import DIRECTIVES
from teredo.docs import manpages
from testsupport import IN_CI

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PAGES = [MAN / "teredo.8", MAN / "teredo.conf.5"]


def test_committed_pages_and_readme_tables_are_up_to_date() -> None:
    stale = [str(path.relative_to(ROOT)) for path in manpages.stale(ROOT)]
    assert stale == [], f"stale: {', '.join(stale)}; run python -m teredo.docs.manpages"


def test_check_mode_names_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert manpages.main(["--root", str(tmp_path), "--check"]) == 1
    assert "teredo.8 is stale: run python -m teredo.docs.manpages" in capsys.readouterr().err
    assert manpages.main(["--root", str(tmp_path)]) == 0
    assert manpages.main(["--root", str(tmp_path), "--check"]) == 0
    assert (tmp_path / "man" / "teredo.8").read_text() == (MAN / "teredo.8").read_text()


def test_a_new_flag_shows_up_in_teredo_8() -> None:
    parser = build_parser()
    before = manpages.render_teredo_8(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["client"].add_argument("--linger", action="store_true", help="stay")
    after = manpages.render_teredo_8(parser)
    assert r"\fB\-\-linger\fR" not in before
    assert r"\fB\-\-linger\fR" in after and "\nstay\n" in after


def every_action(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                actions += every_action(subparser)
        elif not isinstance(action, argparse._HelpAction):
            actions.append(action)
    return actions


def test_every_option_and_help_text_is_in_teredo_8() -> None:
    page = (MAN / "teredo.8").read_text()
    for action in every_action(build_parser()):
        for option in action.option_strings:
            assert manpages.roff(f"`{option}`") in page
        assert action.help and manpages.roff(action.help) in page, action.dest


def test_every_directive_has_help_and_is_in_teredo_conf_5_and_the_readme() -> None:
    page = (MAN / "teredo.conf.5").read_text()
    readme = (ROOT / "README.md").read_text()
    for directive in DIRECTIVES:
        assert directive.help and directive.default, directive.name
        assert f"\n.TP\n\\fB{directive.name}\\fR\n" in page
        assert f"| `{directive.name}` | {manpages.roles_of(directive)} |" in readme


def test_roff_escaping() -> None:
    assert manpages.roff("use `--socket PATH` or C:\\x") == r"use \fB\-\-socket PATH\fR or C:\ex"
    assert manpages.roff(".hidden") == r"\&.hidden"
    text = "RFC 6081 \u00a75.1.1, 1280\u201365507"  # section sign, en dash
    assert manpages.roff(text) == r"RFC 6081 \(sc5.1.1, 1280\(en65507"


def require_tool(tool: str) -> None:
    if shutil.which(tool) is None:
        if IN_CI:
            pytest.fail(f"in CI this test must run, but {tool} is missing (scripts/setup)")
        pytest.skip(f"needs {tool}")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_man_renders_the_page_without_warnings(page: Path) -> None:
    require_tool("man")
    result = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"},
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert "SEE ALSO" in result.stdout and "teredo" in result.stdout


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_mandoc_lint_finds_nothing(page: Path) -> None:
    require_tool("mandoc")
    result = subprocess.run(
        ["mandoc", "-T", "lint", "-W", "warning", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
