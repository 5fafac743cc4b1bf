"""Keep predict's memory bounded by the block, not the scene: glibc's heap between blocks.

predict allocates and frees block-sized buffers over and over (reads, normalised windows,
feature maps, probabilities), of sizes that vary with the FF regions. glibc serves an
allocation above its *mmap threshold* with its own ``mmap`` and gives it back on ``free``;
below, it comes from the heap of the thread's arena. The threshold is dynamic: each freed
mmap'd chunk raises it to that chunk's size (up to 32 MiB), so after the first large
buffers most block buffers come from the arenas, which fragment and keep their free pages.
RSS then climbs with the number of blocks until it levels off (a 20000² scene peaked at
1.28-1.21 x a 5000² one; docs/benchmarks.md, ``bench/predict_memory.py``).

``GEOSEG_MALLOC`` chooses what predict does about it (glibc only; nothing elsewhere, nor
when the user set glibc's own ``MALLOC_MMAP_THRESHOLD_``):

- ``trim`` (the default): each block task ends with ``malloc_trim(0)``
  (:func:`releasing`), which hands the arenas' free pages back; buffers inside a block are
  still reused without page faults. Measured: peak RSS 18-22 % lower, same time.
- ``mmap``: :func:`bound_heap` fixes the threshold at 128 KiB
  (``mallopt(M_MMAP_THRESHOLD)``, which also turns the dynamic rule off) once per process,
  so every buffer of 128 KiB or more is mmap'd and returned when freed: the lowest peak
  (about 30 % below glibc's) but about 1.45 x the time, every buffer faulting its pages in.
- ``default``: glibc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
from collections.abc import Callable
from typing import Any, TypeVar, cast

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

#: glibc's ``M_MMAP_THRESHOLD`` (malloc.h).
M_MMAP_THRESHOLD = -3
#: the fixed threshold: buffers of 128 KiB and more are mmap'd and returned when freed.
THRESHOLD = 128 * 1024

_done: dict[int, str] = {}  # pid -> what was done (a forked child must decide again)


def _mode() -> str:
    return os.environ.get("GEOSEG_MALLOC", "trim")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def release() -> None:
    """After a block task: give the heap's free pages back to the system (``malloc_trim``)."""
    if _mode() != "trim" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def releasing(fn: F) -> F:
    """Decorate a block task: :func:`bound_heap` before it (once per process), :func:`release` after."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound_heap()  # a Dask worker process's first block sets its allocator too
        try:
            return fn(*args, **kwargs)
        finally:
            release()
    return cast(F, run)


def bound_heap() -> str:
    """Fix glibc's mmap threshold in this process, once; return what was done.

    Returns:
        ``"set"`` (threshold fixed at :data:`THRESHOLD`, ``GEOSEG_MALLOC=mmap``), ``"user"``
        (another mode, or ``MALLOC_MMAP_THRESHOLD_`` set), or
        ``"unsupported"`` (not glibc, or ``mallopt`` refused).
    """
    pid = os.getpid()
    if pid in _done:
        return _done[pid]
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or _mode() != "mmap":
        what = "user"
    else:
        libc = _libc()
        what = "set" if libc is not None and libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 else "unsupported"
    if what == "unsupported":
        log.debug("glibc mallopt not available: predict's peak RSS may grow with the number of blocks")
    _done[pid] = what
    return what
