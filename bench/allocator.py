"""glibc's allocator, tuned for the upsamplers' many full-size temporaries, and set for memory measurement.

Neither setting changes a result. Both do nothing where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 512 * 2**20


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return library if library is not None and hasattr(library, "mallopt") and hasattr(library, "malloc_trim") else None


def keep_freed_memory() -> None:
    """Serve allocations up to 32 MiB from the heap and keep up to 512 MiB of freed heap.

    By default glibc maps each allocation above a moving threshold afresh and trims the heap
    top once 2x that threshold is free, so a JBU at 224² (about ten 10 MB temporaries per stage)
    pays page faults for every temporary on every call; kept, a loop over images reuses them
    (the measured gain is in docs/performance.md).
    PyTorch's CPU tuning guide suggests jemalloc or tcmalloc for the same reason.
    """
    if libc := _glibc():
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def follow_live_memory(threshold: int = 128 * 2**10) -> None:
    """Map every allocation above ``threshold`` bytes afresh and unmap it when freed, with no moving threshold.

    The resident set then follows the memory alive at each moment, so the peak of a measured block is its
    own: under glibc's defaults, which heap pages a long loop leaves in use varies from run to run (a streamed
    probe's peak read 138-159 MB in three runs at 8 images, 132-146 MB at 32; with this, 77.3 MB and
    77.5-77.9 MB; docs/performance.md). Slower: for measuring.
    """
    if libc := _glibc():
        libc.mallopt(M_MMAP_THRESHOLD, threshold)


def return_free_memory() -> None:
    """Give the heap's free pages back to the OS (malloc_trim(0)), so a block measured next faults
    in every page it uses and its resident-set growth is its peak (bench.profiling.memory)."""
    if libc := _glibc():
        libc.malloc_trim(0)
