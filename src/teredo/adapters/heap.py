"""Giving the C heap's free memory back to the kernel after a one-time burst.

glibc's `malloc` keeps memory that was freed inside its heap (or, for another thread, inside
that thread's arena) resident, to reuse it: only free space at the very top of the main heap
goes back by itself. Loading the kernel data path is such a burst: libbpf reads the object
file, its BTF and the relocations, some 0.7 MiB that it frees once the programs are in the
kernel and that the daemon would otherwise carry for the rest of its life
(`bash scripts/bench --footprint` measures it). `release_free_memory` asks glibc for
`malloc_trim(0)`, which returns every free page of every arena; with another C library it
does nothing.
"""

from __future__ import annotations


def release_free_memory() -> bool:
    """Return the C heap's free pages to the kernel; False where there is no `malloc_trim`."""
    import ctypes  # the daemons that call it have it already (privileges, the kernel path)

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
