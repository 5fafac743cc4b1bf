"""The memory governor of `geoseg predict`: FF batch and Dask threads from the memory available.

What holds memory in a predict run (see :mod:`geoseg.predict.phases`):

- the model and the libraries, once per process (measured: the RSS once the model is loaded);
- per running block task (one per Dask thread), bounded by ``--block`` and
  ``--watershed-halo``, never by the scene size: :func:`block_bytes`, an estimate;
- per running FF call, its tiles and activations, about ``ff_batch`` cell tiles' worth of
  pixels (at least one region of ``region_side`` cells), measured by the probe
  (:func:`geoseg.backends.governor.measure_ff`).

``--ff-batch auto`` (the default) probes the FF call once and keeps the batch for the
run. On CUDA: the largest batch (at most :data:`GPU_MAX_BATCH`) whose call fits in
:data:`GPU_FRACTION` of the free device memory (FF calls run one at a time on a GPU). On
the CPU: the budget is ``--max-memory``, or :data:`RAM_FRACTION` of the RAM available
(within a cgroup's limit) plus what the process holds; the threads come first (as many
Dask threads as fit with one-tile FF calls, at most the scheduler's), then the batch (at
most :data:`CPU_MAX_BATCH`: larger CPU batches are no faster). An explicit ``--ff-batch N``
is not probed; with ``--max-memory`` it is checked and the threads bounded. Running out
of device memory later halves the batch (:mod:`geoseg.backends.governor`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geoseg.backends.governor import FfMemory, available_ram, measure_ff, rss
from geoseg.errors import ConfigError
from geoseg.models.meta import ModelMeta
from geoseg.parallel import LOCAL_SCHEDULERS
from geoseg.predict.plan import BlockPlan

log = logging.getLogger(__name__)

#: FF batch of a run that cannot probe, and the most ``auto`` picks on the CPU: on 2 cores
#: 8 tiles per call run as fast per tile as 16 or 32, for a third to a quarter of the
#: call's memory (``python bench/ff_batch.py``; docs/benchmarks.md).
CPU_MAX_BATCH = 8
#: The most cell tiles per FF call ``auto`` picks on a GPU.
GPU_MAX_BATCH = 256
#: Share of the free device memory FF calls may take (the rest: PV, fragmentation).
GPU_FRACTION = 0.8
#: Share of the available RAM a run without ``--max-memory`` plans for.
RAM_FRACTION = 0.8

_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")


def parse_size(value: str | int, what: str = "--max-memory") -> int:
    """Bytes of a size such as ``8GiB``, ``512MiB``, ``1.5G``, ``8GB`` or ``8000000000``.

    Units: ``B``; ``K``/``KiB``, ``M``/``MiB``, ``G``/``GiB``, ``T``/``TiB`` (powers of 1024);
    ``KB``, ``MB``, ``GB``, ``TB`` (powers of 1000); case does not matter.

    Raises:
        ConfigError: not a size, or not positive (the message names ``what``).
    """
    m = _SIZE.match(str(value).lower()) if not isinstance(value, bool) else None
    if m is None or m.group(2) not in _UNITS:
        raise ConfigError(f"{what} {value!r} is not a size; write e.g. 8GiB, 512MiB or 8000000000 (bytes)")
    n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n < 1:
        raise ConfigError(f"{what} {value!r} must be more than 0 bytes; write e.g. 8GiB")
    return n


def fmt(n: float) -> str:
    """Bytes for people: ``1.5 GiB``, ``320 MiB``, ``12 KiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.3g} {unit}" if abs(v) < 100 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class FfPlan:
    """The FF batch and the Dask threads of a run, and why.

    Attributes:
        batch: cell tiles' worth of pixels per FF call.
        threads: Dask workers of a local scheduler (None: the scheduler's own).
        why: for the summary line, e.g. ``probe: 1.2 MiB per cell tile, 30 GiB free on cuda``.
    """

    batch: int
    threads: int | None
    why: str


def block_bytes(plans: Sequence[BlockPlan], meta: ModelMeta) -> int:
    """Estimated bytes one block task holds, the largest over the scenes' plans (not measured).

    FF phase, per pixel of the block: fused logits, upsampled PV and probabilities in
    float32, plus the windowed reads; instance phase, per pixel of the block with its
    watershed halo on each side: probabilities in float32, and the watershed's energy
    (float64), markers, labels and queue, and the polygon tracing, about 96 bytes. Both
    windows end at the scene's edge: a scene smaller than a block is one block its size.
    """
    c = meta.n_outputs
    most = 0
    for p in plans:  # a block, and the watershed's window, end at the scene's edge (--block 100000 on 512 px)
        h, w = p.scene.height, p.scene.width
        bands = len(p.band_indexes)
        ff = min(p.block, h) * min(p.block, w) * (16 * c + 4 * bands + 8)
        side = p.block + 2 * p.watershed_halo
        inst = min(side, h) * min(side, w) * (4 * c + 96)
        most = max(most, ff, inst)
    return most


def local_threads(scheduler: Any) -> int | None:
    """Dask workers a local scheduler runs (None: a cluster, whose workers have their own)."""
    import dask
    from dask.system import CPU_COUNT

    if not isinstance(scheduler, str) or scheduler not in LOCAL_SCHEDULERS:
        return None
    if scheduler == "sync":
        return 1
    return int(dask.config.get("num_workers", None) or CPU_COUNT)


def region_tiles(backend: Any, plans: Sequence[BlockPlan]) -> float:
    """Cell tiles' worth of pixels of the largest FF region: the least a call on such a region holds.

    Regions are at most ``backend.region_side`` cells a side, and never larger than a block.
    """
    meta = backend.meta
    cells = min(backend.region_side, max(-(-p.block // meta.cell) for p in plans))
    side = cells * meta.cell + 2 * meta.tile_halo
    return float(side * side) / float(meta.tile * meta.tile)


def plan_ff(backend: Any, cfg: Any, plans: Sequence[BlockPlan], scheduler: Any) -> FfPlan:
    """Choose the run's FF batch and Dask threads (see the module docstring).

    Args:
        backend: the open backend (probed here when needed; the probe is kept on it).
        cfg: the :class:`~geoseg.predict.config.PredictConfig`.
        plans: the scenes' block plans.
        scheduler: the Dask scheduler of the run.

    Returns:
        The :class:`FfPlan`.

    Raises:
        ConfigError: ``--max-memory`` with a cluster scheduler, or below what one block
            task and one FF call need (the message gives both and the least budget).
    """
    threads = local_threads(scheduler)
    if cfg.max_memory is not None and threads is None:
        raise ConfigError("--max-memory bounds a local run (--scheduler threads, processes or sync); on a "
                          "Dask cluster give each worker --memory-limit and --nthreads, and choose --ff-batch")
    explicit = cfg.ff_batch != "auto"
    routed = backend.meta.arch == "routed"
    if explicit and cfg.max_memory is None:
        return FfPlan(int(cfg.ff_batch), None, "--ff-batch")
    mem = measure_ff(backend) if routed else None
    if mem is None:
        mem = FfMemory(backend.device, 0, 0, available_ram(), rss())
        note = "Mask R-CNN: no FF" if not routed else "FF memory not measurable here"
    else:
        note = f"probe: {fmt(mem.per_tile)} per cell tile + {fmt(mem.fixed)} per call"
    batch = int(cfg.ff_batch) if explicit else None
    if explicit:
        note = f"--ff-batch, {note}"
    if mem.device == "cuda":
        note += f", {fmt(mem.free)} free on cuda"
        if batch is None:
            fit = (GPU_FRACTION * mem.free - mem.fixed) // max(1, mem.per_tile)
            batch = max(1, min(GPU_MAX_BATCH, int(fit)))
        if cfg.max_memory is None:
            return FfPlan(batch, None, note)
        mem = FfMemory("cpu", 0, 0, available_ram(), rss())  # FF is on the GPU; host RAM bounds the threads
    return _plan_ram(backend, cfg, plans, mem, threads or 1, scheduler, batch, note)


def _plan_ram(backend: Any, cfg: Any, plans: Sequence[BlockPlan], mem: FfMemory, threads: int,
              scheduler: Any, fixed_batch: int | None, note: str) -> FfPlan:
    """Threads first, then the FF batch, within the RAM budget."""
    given = cfg.max_memory is not None
    budget = float(cfg.max_memory) if given else mem.in_use + RAM_FRACTION * mem.free
    per_block = block_bytes(plans, backend.meta)
    floor = region_tiles(backend, plans) if backend.meta.arch == "routed" else 0.0

    def per_thread(batch: int) -> int:
        return per_block + (mem.call(max(batch, floor)) if mem.per_tile else 0)

    shared = scheduler != "processes"  # threads share one model; each process loads its own
    least = 1 if fixed_batch is None else fixed_batch
    need1 = mem.in_use + per_thread(least)
    fit = int((budget - mem.in_use) // per_thread(least)) if shared else int(budget // need1)
    if fit < 1:
        what = f"one FF call of {least} cell tiles" if fixed_batch is not None else "one FF call"
        parts = (f"the model and libraries hold {fmt(mem.in_use)} here, one block task about {fmt(per_block)} "
                 f"(--block, --watershed-halo) and {what} {fmt(per_thread(least) - per_block)}")
        if given:
            fix = "a smaller --block or --watershed-halo" + (", or a smaller --ff-batch" if fixed_batch else "")
            raise ConfigError(f"--max-memory {fmt(budget)} is below what predict needs: {parts}; give at "
                              f"least {fmt(need1)}, or {fix}")
        log.warning("the RAM available (%s) is short of what predict needs (%s): running one thread",
                    fmt(mem.free), parts)
        fit = 1
    n = max(1, min(threads, fit))
    share = (budget - mem.in_use) / n if shared else budget / n - mem.in_use
    if fixed_batch is not None:
        batch = fixed_batch
    elif mem.per_tile:
        batch = int((share - per_block - mem.fixed) // mem.per_tile)
        batch = max(1, min(CPU_MAX_BATCH, batch))
    else:
        batch = CPU_MAX_BATCH
    src = f"--max-memory {fmt(budget)}" if given else f"{RAM_FRACTION:.0%} of {fmt(mem.free)} RAM available"
    return FfPlan(batch, n, f"{note}; {src}: {n} of {threads} threads")


def summary_line(batch: int, why: str, used: int | None) -> str:
    """The summary's line on the FF batch: the batch, why, and a halving after running out of memory.

    Args:
        batch: the run's FF batch (:attr:`FfPlan.batch`, capped by the backend).
        why: :attr:`FfPlan.why`.
        used: the smallest batch a block ran with (None: no block ran FF).
    """
    line = f"FF batch: {batch} cell tiles per call ({why})"
    if used is not None and used < batch:
        line += f"; halved to {used} after running out of memory"
    return line
