"""Keep a long-running process's resident memory close to what it actually holds.

The worker rebuilds numpy arrays of megabytes as they merge (sealed tenths of remembered ids,
segments of open items). After the first such block is freed, glibc raises its mmap threshold
(up to 32 MiB) and serves later ones from the heap, where the holes they leave keep the
resident size up; every thread that allocates also gets an arena of its own (Faust's consumer
thread, the writer hand-off). Fixed thresholds keep large blocks in mmap, given back when freed,
and let the heap's top be trimmed; two arenas are enough for a process whose work is one thread.

The price is CPU: asyncio reads a socket 256 KiB at a time and a batched record's value is
~150 KB, so each comes as fresh pages from the kernel (400 MiB through a socket: 0.55-1.3 s of
CPU against 0.11 s with glibc's default). A 1 MiB threshold avoided that, but over the same
1,400 s run the main process grew from 239 to 275 MB after warm-up (spread 11.7%, against 8.6%):
memory that stays flat was chosen over the 1.5-3.7% of throughput it measured.

Measured at 5,000 events/s over 1,400 s, from 720 s on (state full): the worker's main process
held 258-292 MB with glibc's defaults, 232-258 MB with these settings, and gave memory back
towards the end (246 MB at 1,400 s); main and writer processes 333-368 MB against 301-326 MB.
(That run set them through glibc's MALLOC_* environment variables; a 420 s run with this call
instead followed the same curve.)
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_BLOCK_BYTES = 128 * 1024
_ARENAS = 2


def return_freed_memory() -> bool:
    """Set glibc's allocator up as described above; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _BLOCK_BYTES), (_M_TRIM_THRESHOLD, _BLOCK_BYTES), (_M_ARENA_MAX, _ARENAS)))
