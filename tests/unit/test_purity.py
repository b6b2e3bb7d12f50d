"""The core is pure: no sockets, clocks, randomness, environment or files in `teredo.core`.

Time comes in as `now`, randomness as a `random_bytes` callable, packets as bytes, files as
text (the adapters and programs do the I/O). This reads every core module's source, so a new
module is checked without being listed here, and it also imports each one in a fresh
interpreter to see that nothing impure comes in through the back door (a dependency).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import teredo.core

# Modules that give access to the world outside the arguments (I/O, clocks, randomness, the
# process environment, threads). `struct`, `hmac`, `hashlib`, `ipaddress`... are pure.
IMPURE_MODULES = frozenset(
    {
        "asyncio", "ctypes", "datetime", "fcntl", "io", "mmap", "multiprocessing", "os",
        "pathlib", "random", "secrets", "select", "selectors", "shutil", "signal", "socket",
        "ssl", "subprocess", "sys", "tempfile", "threading", "time", "urllib", "uuid",
    }
)  # fmt: skip
IMPURE_CALLS = frozenset({"open", "input", "print", "exec", "eval", "__import__"})
CORE_DIRECTORY = Path(teredo.core.__file__).parent
CORE_MODULES = sorted(
    f"teredo.core.{info.name}" for info in pkgutil.iter_modules([str(CORE_DIRECTORY)])
)


def source_of(module: str) -> ast.Module:
    path = CORE_DIRECTORY / (module.rsplit(".", 1)[1] + ".py")
    return ast.parse(path.read_text(), str(path))


def imported_modules(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_core_module_is_checked() -> None:
    assert {"teredo.core.peering", "teredo.core.server", "teredo.core.config"} <= set(CORE_MODULES)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_nothing_impure(module: str) -> None:
    tree = source_of(module)
    assert not imported_modules(tree) & IMPURE_MODULES
    imports_of_teredo = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("teredo")
    }
    assert all(name.startswith("teredo.core") for name in imports_of_teredo), imports_of_teredo


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_calls_nothing_impure(module: str) -> None:
    calls = {
        node.func.id
        for node in ast.walk(source_of(module))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not calls & IMPURE_CALLS


def test_importing_the_core_brings_in_nothing_impure() -> None:
    """In a fresh interpreter, the core and its dependencies import no I/O module. Not counted:
    what the interpreter starts with (`os`, `io`, `sys`) and what `logging` brings for its own
    records (`threading`, `time`): the core logs, through `logging.getLogger(__name__)`."""
    script = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"for name in {CORE_MODULES!r}: __import__(name)\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded = {name.split(".")[0] for name in output.split()}
    allowed = {"os", "io", "sys", "threading", "time"}
    assert not loaded & (IMPURE_MODULES - allowed), loaded & IMPURE_MODULES
