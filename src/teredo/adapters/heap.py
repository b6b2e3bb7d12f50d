"""The C heap: one malloc arena for the whole process, and its free memory given back after a
one-time burst.

glibc's `malloc` gives every thread that allocates its own arena (a heap of its own, up to 8
per CPU) and keeps memory freed inside an arena resident, to reuse it: only free space at the
very top of the main heap goes back by itself. A daemon's threads are short and rare (the
client's kernel path loading, its UPnP gateway search), so an arena of their own buys no
speed and leaves pages behind: `use_one_arena` (glibc's `mallopt(M_ARENA_MAX, 1)`, before
any thread starts) makes every thread allocate from the main heap. Loading the kernel data
path and searching a UPnP gateway are bursts: libbpf reads the object file, its BTF and the
relocations, some 0.7 MiB that it frees once the programs are in the kernel, and miniupnpc
its gateway's descriptions; the daemon would otherwise carry them for the rest of its life
(`bash scripts/bench --footprint` measures it). `release_free_memory` asks glibc for
`malloc_trim(0)`, which returns every free page of every arena. With another C library both
do nothing.
"""

from __future__ import annotations

M_ARENA_MAX = -8  # glibc's malloc.h


def use_one_arena() -> bool:
    """Every thread allocates from the main heap; False where there is no `mallopt`."""
    import ctypes  # the daemons that call it have it already (privileges, the kernel path)

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 1))


def release_free_memory() -> bool:
    """Return the C heap's free pages to the kernel; False where there is no `malloc_trim`."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
