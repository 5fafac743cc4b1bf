"""Keep predict's memory bounded by the block, not the scene: glibc's mmap threshold.

predict allocates and frees block-sized buffers over and over (reads, normalised windows,
feature maps, probabilities), of sizes that vary with the FF regions. glibc serves an
allocation above its *mmap threshold* with its own ``mmap`` and gives it back to the system
on ``free``; below, it comes from the heap of the thread's arena. The threshold is dynamic:
each freed mmap'd chunk raises it to that chunk's size (up to 32 MiB on 64-bit), so after
the first large buffers most block buffers come from the arenas, which fragment and are not
returned. RSS then climbs with the number of blocks until it levels off: on a 20000² scene
peak RSS was 1.28 x that of a 5000² scene, 1.06 x with a fixed 128 KiB threshold, at the same
wall time (docs/benchmarks.md, ``bench/predict_memory.py``).

:func:`bound_heap` fixes the threshold (``mallopt(M_MMAP_THRESHOLD, 128 KiB)``, which also
turns the dynamic rule off) once per process: predict calls it in its own process and each
block task calls it in the process that runs it (Dask worker processes included). It does
nothing when the C library is not glibc, and leaves the allocator alone when the user set
``MALLOC_MMAP_THRESHOLD_`` (glibc's own variable, read at start-up) or ``GEOSEG_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

#: glibc's ``M_MMAP_THRESHOLD`` (malloc.h).
M_MMAP_THRESHOLD = -3
#: the fixed threshold: buffers of 128 KiB and more are mmap'd and returned when freed.
THRESHOLD = 128 * 1024

_done: dict[int, str] = {}  # pid -> what was done (a forked child must decide again)


def bound_heap() -> str:
    """Fix glibc's mmap threshold in this process, once; return what was done.

    Returns:
        ``"set"`` (threshold fixed at :data:`THRESHOLD`), ``"user"`` (the environment
        decides: ``MALLOC_MMAP_THRESHOLD_`` or ``GEOSEG_MALLOC=default``), or
        ``"unsupported"`` (not glibc, or ``mallopt`` refused).
    """
    pid = os.getpid()
    if pid in _done:
        return _done[pid]
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or os.environ.get("GEOSEG_MALLOC", "") == "default":
        what = "user"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        what = "unsupported"
    else:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        what = "set" if libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 else "unsupported"
    if what == "unsupported":
        log.debug("glibc mallopt not available: predict's peak RSS may grow with the number of blocks")
    _done[pid] = what
    return what
