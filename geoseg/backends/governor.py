"""FF calls that survive running out of memory, and what one FF call costs in memory.

:func:`run_ff` is how :meth:`geoseg.backends.base.Backend.ff` runs its chunks. A chunk
holds about ``backend.ff_batch`` cell tiles' worth of pixels. When the device runs out
of memory (:func:`is_out_of_memory`: ``torch.cuda.OutOfMemoryError``, ONNX Runtime's and
CUDA's allocation failures recognised by their messages, ``MemoryError``), the batch is
halved until a chunk of this call gets smaller, and the *whole call* is run again from
its first tile: the chunks are then exactly those of a run given the small batch from
the start. The halved batch is stored on the backend (one per process, see
:mod:`geoseg.backends.cache`), so every later call of the run uses it; the halving is a
compare-and-swap under the backend's lock, so two Dask threads that run out of memory
at once halve once, not twice. On CUDA, FF calls of one backend run one at a time (the
GPU runs their kernels one after the other anyway), so a call never fails because a
sibling thread holds the memory it measured.

:func:`measure_ff` is the probe of ``--ff-batch auto`` (:mod:`geoseg.predict.memory`):
two FF calls on random tiles, whose peak memory gives a fixed cost per call and a cost
per cell tile.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import FfMemoryError, GeoSegError, first_line

log = logging.getLogger(__name__)

#: Lower-case fragments of the messages of allocation failures that are not typed
#: (ONNX Runtime's RuntimeException, cuDNN/cuBLAS status codes, torch's CPU allocator).
OOM_MESSAGES = ("out of memory", "failed to allocate memory", "can't allocate memory",
                "cannot allocate memory", "alloc_failed", "cudaerrormemoryallocation", "bad_alloc",
                "bad allocation")

#: Tiles per probe call (two calls: the slope is the cost per tile).
PROBE_SIZES = (2, 8)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure that a smaller FF batch may avoid."""
    if isinstance(err, MemoryError) and not isinstance(err, FfMemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(err, GeoSegError):
        return False
    msg = str(err).lower()
    return any(m in msg for m in OOM_MESSAGES)


def tiles_per_call(batch: int, side: int, h: int, w: int) -> int:
    """Tiles of ``h x w`` pixels in a chunk of ``batch`` cell tiles (``side`` square) of pixels; >= 1."""
    return max(1, batch * side * side // (h * w))


def run_ff(backend: Any, x: np.ndarray) -> np.ndarray:
    """``backend._ff`` over ``x`` in chunks of ``backend.ff_batch`` cell tiles' worth, halving on OOM.

    Args:
        backend: a :class:`~geoseg.backends.base.Backend` (``x`` checked, not empty).
        x: (N, C_in, h, w) float32 tiles of one shape.

    Returns:
        (N, C, h - 2 halo, w - 2 halo) float32, the chunks' outputs in order.

    Raises:
        FfMemoryError: out of memory with one tile per call.
    """
    h, w = int(x.shape[2]), int(x.shape[3])
    side = backend.meta.tile
    lock = backend.ff_device_lock if backend.device == "cuda" else contextlib.nullcontext()
    while True:
        batch = backend.ff_batch
        per = tiles_per_call(batch, side, h, w)
        failed: BaseException | None = None
        with lock:
            try:
                outs = [np.asarray(backend._ff(x[k:k + per]), dtype=np.float32) for k in range(0, len(x), per)]
                return outs[0] if len(outs) == 1 else np.concatenate(outs)
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                failed = err
            first = first_line(failed, 160)
            del failed  # its traceback holds the tensors of the failed call
            backend._release_memory()
        sent = min(per, len(x))
        if sent == 1:
            raise FfMemoryError(
                f"FF ran out of {backend.device} memory on a single {h}x{w} tile at FF batch {batch} "
                f"({first}); " + ("free the GPU (other processes on it) or use --device cpu" if backend.device
                                  == "cuda" else "free RAM (other processes) or use a machine with more"))
        halve(backend, batch, side, h, w, sent, first)


def halve(backend: Any, batch: int, side: int, h: int, w: int, sent: int, why: str) -> int:
    """Halve ``backend.ff_batch`` (from ``batch``) until a chunk of ``h x w`` tiles holds fewer than ``sent``.

    A compare-and-swap: when another thread already lowered the batch, it is kept.

    Returns:
        The backend's FF batch after the call.
    """
    with backend.ff_lock:
        if backend.ff_batch != batch:
            return int(backend.ff_batch)
        new = batch
        while new > 1 and tiles_per_call(new, side, h, w) >= sent:
            new //= 2
        backend.ff_batch = new
        backend.ff_halved.append((batch, new))
    log.warning("FF ran out of %s memory at FF batch %d (%s); halved to %d cell tiles per call, "
                "kept for the rest of the run", backend.device, batch, why, new)
    return new


# ----------------------------------------------------------------------------- the probe
@dataclass(frozen=True)
class FfMemory:
    """What one FF call costs in memory on the backend's device, measured by :func:`measure_ff`.

    Attributes:
        device: ``"cpu"`` (process memory) or ``"cuda"`` (device memory).
        fixed: bytes per call whatever its size (workspaces, first-call caches).
        per_tile: bytes per cell tile (``meta.tile`` squared pixels) in the call.
        free: bytes free for the process on the device at the probe (CPU: available RAM,
            within the cgroup's limit; CUDA: free device memory plus torch's cached blocks).
        in_use: bytes the process holds there after loading the model (CPU: its RSS).
    """

    device: str
    fixed: int
    per_tile: int
    free: int
    in_use: int

    def call(self, tiles: float) -> int:
        """Bytes of one FF call on ``tiles`` cell tiles' worth of pixels."""
        return int(self.fixed + self.per_tile * tiles)


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def rss() -> int:
    """Resident memory of this process in bytes (psutil where /proc is missing)."""
    now = _status_kib("VmRSS")
    if now is None:
        import psutil

        now = int(psutil.Process().memory_info().rss)
    return now


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: ``/proc/self/clear_refs``); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def available_ram() -> int:
    """Bytes of RAM this process may still take: the system's available memory, within a cgroup v2 limit."""
    import psutil

    free = int(psutil.virtual_memory().available)
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - current)
    except (OSError, ValueError):
        pass
    return max(0, free)


def _peaks(backend: Any, tiles: np.ndarray, sizes: tuple[int, ...]) -> tuple[list[int], int, int] | None:
    """Peak bytes above the start of each probe call, bytes free and in use; None: cannot measure."""
    if backend.device == "cpu":
        base = rss()
        if not _reset_peak():
            return None
        backend.ff(tiles[:sizes[0]])  # warm-up: one-time allocations count as fixed
        peaks = []
        for n in sizes:
            _reset_peak()
            backend.ff(tiles[:n])
            peaks.append(max(0, int(_status_kib("VmHWM") or 0) - base))
        return peaks, available_ram(), base
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    own = backend.name == "torch"  # torch's allocator knows its own peak; other runtimes: the device's
    free0 = int(torch.cuda.mem_get_info()[0])
    start = int(torch.cuda.memory_allocated()) if own else 0
    backend.ff(tiles[:sizes[0]])
    peaks = []
    for n in sizes:
        if own:
            torch.cuda.reset_peak_memory_stats()
        backend.ff(tiles[:n])
        torch.cuda.synchronize()
        peaks.append(int(torch.cuda.max_memory_allocated()) - start if own
                     else free0 - int(torch.cuda.mem_get_info()[0]))
    cached = int(torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    return peaks, free0 + (cached if own else 0), int(torch.cuda.memory_reserved())


def measure_ff(backend: Any, sizes: tuple[int, ...] = PROBE_SIZES) -> FfMemory | None:
    """Probe the memory of the backend's FF calls, once per backend (the result is kept on it).

    Two FF calls on random cell tiles (after a warm-up call): the difference of their
    peaks over the difference of their sizes is the cost per tile (at least the bytes of
    a tile's input and output), the rest the fixed cost. CPU: the process's peak RSS
    (``VmHWM``, reset through ``/proc/self/clear_refs``); CUDA: torch's allocator peak
    (torch backend), or the drop in free device memory (ONNX Runtime and TensorRT hold
    what they allocate).

    Returns:
        The :class:`FfMemory`, or None where it cannot be measured (no ``/proc``; CUDA
        without torch seeing the GPU).
    """
    with backend.ff_lock:
        if backend.ff_memory is not None:
            cached: FfMemory = backend.ff_memory
            return cached
    meta = backend.meta
    side = meta.tile
    tiles = np.random.default_rng(0).standard_normal((max(sizes), meta.band_count, side, side),
                                                   dtype=np.float32)
    got = _peaks(backend, tiles, sizes)
    if got is None:
        return None
    peaks, free, in_use = got
    (n1, n2), (p1, p2) = sizes[:2], peaks[:2]
    floor = 4 * side * side * (meta.band_count + meta.n_outputs)  # a tile's input and output
    per_tile = max(floor, (p2 - p1) // (n2 - n1))
    fixed = max(0, max(p1 - n1 * per_tile, p2 - n2 * per_tile))
    found = FfMemory(device=backend.device, fixed=int(fixed), per_tile=int(per_tile), free=int(free),
                     in_use=int(in_use))
    with backend.ff_lock:
        backend.ff_memory = found
    return found
