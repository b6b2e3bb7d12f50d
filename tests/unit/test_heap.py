"""The C heap: one arena for every thread (glibc's mallopt), its free memory given back
(malloc_trim)."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

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


# A thread that allocates, then glibc's own report of its arenas (one "Arena N:" per arena).
THREAD_ALLOCATES = """
import ctypes, sys, threading
from teredo.adapters.heap import use_one_arena
if sys.argv[1] == "one":
    assert use_one_arena()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
thread = threading.Thread(target=lambda: [libc.malloc(4000) for _ in range(64)])
thread.start()
thread.join()
libc.malloc_stats()
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize(("mode", "arenas"), [("one", 1), ("default", 2)])
def test_with_one_arena_a_thread_allocates_from_the_main_heap(mode: str, arenas: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", THREAD_ALLOCATES, mode], capture_output=True, text=True, check=True
    )
    assert result.stderr.count("Arena ") == arenas
