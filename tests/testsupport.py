"""Test support shared by all tests (`from testsupport import ...`).

Root/namespace tests skip only outside CI; in CI a skip is a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = bool(os.environ.get("CI"))


def require_root(*tools: str) -> None:
    """Skip (outside CI) or fail (in CI) unless we are root and the given tools exist."""
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root")
    if not os.path.exists("/dev/net/tun"):
        problems.append("needs /dev/net/tun")
    problems += [f"needs {tool}" for tool in tools if shutil.which(tool) is None]
    if problems:
        reason = ", ".join(problems)
        if IN_CI:
            pytest.fail(f"in CI this test must run, but it {reason}")
        pytest.skip(reason)


def require_accelerators() -> None:
    """Skip (outside CI) or fail (in CI) unless the optional C module was built: CI installs a
    compiler, so there a missing module is a broken build, not a machine without one."""
    from teredo.adapters import accel

    if accel.ACCELERATED:
        return
    reason = "needs the C accelerator (build it with gcc and python3-dev: bash scripts/setup)"
    if IN_CI:
        pytest.fail(f"in CI this test must run, but it {reason}")
    pytest.skip(reason)


def require_kernel_data_path() -> None:
    """Skip (outside CI) or fail (in CI) unless the kernel data path's object was built: CI
    installs clang and libbpf-dev, so there a missing object is a broken build."""
    from teredo.adapters.bpf import OBJECT_PATH

    if os.path.exists(OBJECT_PATH):
        return
    name = os.path.basename(OBJECT_PATH)
    reason = f"needs the kernel data path built ({name}: clang and libbpf-dev)"
    if IN_CI:
        pytest.fail(f"in CI this test must run, but it {reason}")
    pytest.skip(reason)
