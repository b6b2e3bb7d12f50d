"""Dropping root after setup, optionally keeping a capability such as CAP_NET_ADMIN.

A daemon needs root only to open its TUN device and sockets and to configure its interface.
Once that is done, `drop_privileges(user)` switches every user and group id to `user` (default
"nobody"), with no supplementary groups. The client and the relay pass `keep=("CAP_NET_ADMIN",)`:
the client reconfigures its interface whenever its Teredo address changes, and the relay sets a
new MTU on SIGHUP and removes its route and address on exit. The server keeps nothing.

How (Linux, through ctypes; see capabilities(7)):

1. drop every capability not kept from the bounding set (PR_CAPBSET_DROP), so no later exec
   can regain them;
2. prctl(PR_SET_KEEPCAPS, 1): the permitted set survives the uid change below;
3. setgroups([]), setresgid(gid, gid, gid), setresuid(uid, uid, uid);
4. capset(): effective = permitted = the kept set, inheritable = none;
5. prctl(PR_SET_KEEPCAPS, 0), and check that setuid(0) now fails.

Capabilities are per thread: call this before starting threads (other threads lose all their
capabilities with the uid change). Files created before the drop (pid file, control socket in a
root-owned directory) cannot be removed afterwards; `PidFile` and the control server cope.
Import every module the daemon will need before the drop: the interpreter's own library may sit
where the new user cannot read it (on the project's machines, under a 0700 /root).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import pwd
from collections.abc import Collection
from typing import Final

from teredo.core.config import DEFAULT_USER
from teredo.core.errors import UserError

log = logging.getLogger(__name__)

# <linux/capability.h>: the ones a Teredo daemon may want to keep.
CAPABILITIES: Final = {
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
}

PR_SET_KEEPCAPS: Final = 8
PR_CAPBSET_DROP: Final = 24
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_CAP_LAST_CAP_FILE: Final = "/proc/sys/kernel/cap_last_cap"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CapDataPair = _CapData * 2  # version 3: capabilities 0-31, then 32-63


def capability_mask(names: Collection[str]) -> int:
    """The bit mask of capability names; `ValueError` for a name not in `CAPABILITIES`."""
    mask = 0
    for name in names:
        number = CAPABILITIES.get(name.upper())
        if number is None:
            raise ValueError(f"unknown capability {name!r}; known: {', '.join(CAPABILITIES)}")
        mask |= 1 << number
    return mask


def current_capabilities() -> tuple[int, int]:
    """(effective, permitted) capability masks of the calling thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    if _libc().capget(ctypes.byref(header), data) != 0:
        _raise_errno("capget")
    effective = data[0].effective | data[1].effective << 32
    permitted = data[0].permitted | data[1].permitted << 32
    return effective, permitted


def drop_privileges(user: str = DEFAULT_USER, *, keep: Collection[str] = ()) -> bool:
    """Become `user`, keeping only the capabilities named in `keep` (e.g. "CAP_NET_ADMIN").

    Returns False, changing nothing, when not running as root (nothing to drop) or when `user`
    is root itself; True once dropped. Raises `UserError` when `user` does not exist or the
    kernel refuses a step (the daemon must then stop: it may be half-dropped).
    """
    mask = capability_mask(keep)
    if os.geteuid() != 0:
        log.debug("not running as root: no privileges to drop")
        return False
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UserError(
            f"cannot drop privileges to user {user!r}: no such user; create it or set User "
            "to another user"
        ) from None
    if entry.pw_uid == 0:
        log.warning("configured to keep running as %s: privileges not dropped", user)
        return False
    try:
        _drop_bounding_set(mask)
        _prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
        os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
        _capset(mask)
        _prctl(PR_SET_KEEPCAPS, 0)
    except OSError as error:
        raise UserError(
            f"cannot drop privileges to user {user!r}: {error.strerror}; stopping"
        ) from None
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - would be a kernel or logic failure
        raise RuntimeError("privilege drop failed: root could be regained")
    kept = ", ".join(sorted(name.upper() for name in keep)) or "no capabilities"
    log.info("dropped privileges to %s (uid %d), keeping %s", user, entry.pw_uid, kept)
    return True


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _raise_errno(call: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{call}: {os.strerror(code)}")


def _prctl(option: int, argument: int) -> None:
    if _libc().prctl(option, ctypes.c_ulong(argument), 0, 0, 0) != 0:
        _raise_errno("prctl")


def _capset(mask: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    for word in range(2):
        bits = (mask >> (32 * word)) & 0xFFFFFFFF
        data[word].effective = bits
        data[word].permitted = bits
        data[word].inheritable = 0
    if _libc().capset(ctypes.byref(header), data) != 0:
        _raise_errno("capset")


def _drop_bounding_set(keep_mask: int) -> None:
    try:
        with open(_CAP_LAST_CAP_FILE, encoding="ascii") as file:
            last = int(file.read())
    except (OSError, ValueError):
        last = 40  # CAP_CHECKPOINT_RESTORE, the last one in Linux 6.x
    for number in range(last + 1):
        if keep_mask & (1 << number):
            continue
        try:
            _prctl(PR_CAPBSET_DROP, number)
        except OSError as error:  # without CAP_SETPCAP (a container may withhold it)
            log.debug("cannot shrink the capability bounding set: %s", error)
            return
