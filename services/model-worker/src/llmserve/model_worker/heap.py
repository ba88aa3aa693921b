"""How the worker's C heap (glibc malloc, which torch's CPU tensors live in) gives memory back.

glibc serves a block of at least its mmap threshold with a mapping of its own, returned to the system
when freed, and keeps smaller ones in its heaps, where freed memory stays resident. The threshold starts
at 128 KB and rises to the size of the largest mapped block ever freed (up to 32 MB): after the first
large temporary of a model load, every later temporary stays in the heap, and a worker that decodes 32
rows keeps each step's largest activations resident too. A fixed threshold of 4 MB keeps the heap for
the small tensors of a step and maps the large ones (a load's weight copies, a long prompt's
activations): 130 MB less at the peak of a 32-stream run of SmolLM2. 1 MB cost half the throughput
(a page fault for every page of every mid-sized activation, every step).

Fixing the mmap threshold also stops glibc raising its trim threshold (how much free memory may stay at
the top of a heap), which stays at 128 KB: every step then handed its activations back and faulted them
in again, 30-40 % of a step. The trim threshold is fixed at twice the mmap threshold, which is what
glibc's own adjustment would set.
"""

from __future__ import annotations

import ctypes

import structlog

log = structlog.get_logger("llmserve.model_worker")

MMAP_THRESHOLD_BYTES = 4 * 2**20
# mallopt's parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 (not glibc: no mallopt)
        return libc
    except (OSError, AttributeError):
        return None


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Sets glibc's mmap threshold and trim threshold (twice as much), which stops their dynamic raise;
    False where the C library is not glibc."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold))
    if not ok:
        log.warning("mmap_threshold_not_set", threshold=threshold)
    return ok


def return_free_memory() -> None:
    """Gives the heaps' free pages back to the system (after a load, which frees as much as it keeps)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
