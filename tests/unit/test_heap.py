"""Giving the C heap's free memory back (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
import platform

import pytest

from teredo.adapters.heap import release_free_memory


def resident_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_blocks_below_the_heap_top_go_back_to_the_kernel() -> None:
    """A burst of 4 KiB blocks, all freed but the last (which pins the heap's top, as libbpf's
    live allocations do): glibc keeps them resident until asked."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4000) for _ in range(2048)]  # 8 MiB under the mmap threshold
    for block in blocks:
        ctypes.memset(block, 1, 4000)
    for block in blocks[:-1]:
        libc.free(block)
    before = resident_kib()
    assert release_free_memory()
    after = resident_kib()
    libc.free(blocks[-1])
    assert before - after > 4096  # most of the 8 MiB freed
