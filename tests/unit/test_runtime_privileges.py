"""teredo.adapters.privileges without changing this process: the paths that stop before a drop.

The drop itself runs in a child process: tests/e2e/test_runtime_privileges.py.
"""

from __future__ import annotations

import os

import pytest

from teredo.adapters.privileges import capability_mask, current_capabilities, drop_privileges
from teredo.core.errors import UserError


def test_capability_mask() -> None:
    assert capability_mask(()) == 0
    assert capability_mask(["CAP_NET_ADMIN"]) == 1 << 12
    assert capability_mask(["cap_net_admin", "CAP_NET_RAW"]) == (1 << 12) | (1 << 13)
    with pytest.raises(ValueError, match="unknown capability 'CAP_SYS_ADMIN'"):
        capability_mask(["CAP_SYS_ADMIN"])


def test_current_capabilities_reads_this_thread() -> None:
    effective, permitted = current_capabilities()
    assert effective & ~permitted == 0  # effective is always a subset of permitted
    if os.geteuid() != 0:
        assert effective == 0


def test_not_root_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert drop_privileges("nobody", keep=["CAP_NET_ADMIN"]) is False


def test_unknown_user_is_refused_before_any_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    before = (os.getresuid(), current_capabilities())
    with pytest.raises(UserError) as caught:
        drop_privileges("no-such-user-teredo")
    assert str(caught.value) == (
        "cannot drop privileges to user 'no-such-user-teredo': no such user; create it or set "
        "User to another user"
    )
    assert (os.getresuid(), current_capabilities()) == before
