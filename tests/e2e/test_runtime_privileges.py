"""teredo.adapters.privileges: the real drop, in a child process that owns a private namespace.

The child unshares its network namespace first (the namespace dies with it, nothing to clean
up), imports and warms up everything it needs while still root, drops to "nobody", then reports
its ids and capabilities and whether netlink configuration still works (it must with
CAP_NET_ADMIN kept, and must be refused without).
"""

from __future__ import annotations

import json
import pwd
import subprocess
import sys

import pytest

from testsupport import require_root

pytestmark = pytest.mark.root

CHILD = r"""
import asyncio, ctypes, json, os, sys
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(CLONE_NEWNET) != 0:
    raise OSError(ctypes.get_errno(), "unshare")
from teredo.core.errors import UserError
from teredo.adapters import netlink
from teredo.adapters.privileges import CAPABILITIES, current_capabilities, drop_privileges
asyncio.run(netlink.set_mtu("lo", 1500))  # warm-up: lazy imports happen while still root
keep = sys.argv[1:]
report = {"dropped": drop_privileges("nobody", keep=keep)}
report["uids"] = os.getresuid()
report["gids"] = os.getresgid()
report["groups"] = os.getgroups()
report["capabilities"] = current_capabilities()
try:
    asyncio.run(netlink.set_mtu("lo", 1400))
    report["netlink"] = "ok"
except UserError as error:
    report["netlink"] = str(error)
try:
    os.setuid(0)
    report["regained_root"] = True
except PermissionError:
    report["regained_root"] = False
print(json.dumps(report))
"""


def run_child(*keep: str) -> dict[str, object]:
    require_root()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *keep], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_drop_keeping_cap_net_admin() -> None:
    report = run_child("CAP_NET_ADMIN")
    assert report["dropped"] is True
    nobody = pwd.getpwnam("nobody")
    assert report["uids"] == [nobody.pw_uid] * 3
    assert report["gids"] == [nobody.pw_gid] * 3  # nobody's primary group
    assert report["groups"] == []
    assert report["capabilities"] == [1 << 12, 1 << 12]  # effective, permitted: NET_ADMIN only
    assert report["netlink"] == "ok"
    assert report["regained_root"] is False


def test_drop_everything() -> None:
    report = run_child()
    assert report["dropped"] is True
    assert report["capabilities"] == [0, 0]
    assert report["netlink"] == (
        "cannot set the MTU to 1400 on lo: permission denied; run as root or keep CAP_NET_ADMIN"
    )
    assert report["regained_root"] is False
