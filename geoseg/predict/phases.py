"""The per-block work of `geoseg predict`, one function per phase.

A scene is cut into square *blocks* (``--block`` px, a multiple of the router cell).
Each phase runs as one Dask task per block and leaves its result in a per-scene cache
directory, written atomically, so a killed run resumes where it stopped:

- :func:`pv_block`: PV on the block (plus a context ring) read decimated, giving the
  utility of each cell, whether the cell holds valid pixels, and PV logits at 1/scale;
- :func:`ff_block`: FF on the chosen cells of the block core, merged into regions
  (:mod:`geoseg.models.regions`: one windowed read and one halo per region, same-shaped
  regions batched; a block whose cells are mostly chosen runs as plain dense windows),
  pasted over the PV logits upsampled to full resolution (every cell of a region: the
  chosen ones and those a region covers to save a halo); probabilities cached as uint8;
- :func:`instances_block`: probabilities of the block plus a halo, assembled from the
  3×3 neighbouring caches; watershed; an instance is kept only by the block that holds
  its centroid (nothing duplicated, nothing cut at seams); vectorized.

Memory of a task is bounded by the block size, whatever the scene size.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geoseg.backends.cache import ModelKey, get_backend
from geoseg.bands import BandStats, normalize
from geoseg.io.atomic import atomic_path
from geoseg.io.npy import load_npz, map_npy
from geoseg.io.rasters import open_scene, valid_mask
from geoseg.models.config import FIRST_CLASS
from geoseg.models.postprocess import PostprocessConfig
from geoseg.models.regions import Region, cover, group_by_shape
from geoseg.predict.heap import releasing
from geoseg.predict.plan import CUT, BlockPlan, at_window_edge, read_errors, read_window, valid_where
from geoseg.predict.tta import averaged

#: Logit where no model ran (dense runs: cells without a valid pixel at PV's scale): sigmoid ≈ 2e-9.
NO_PV_LOGIT = -20.0

if TYPE_CHECKING:
    from geoseg.predict.instances import Instances

__all__ = ["FfResult", "ModelKey", "PvResult", "ff_block", "instances_block", "owned_polygons", "pv_block"]


@dataclass(frozen=True)
class PvResult:
    """What :func:`pv_block` returns for the scene-wide router."""

    utility: np.ndarray
    """(gh, gw) float32 predicted utility of the block's cells (-inf past the scene)."""
    allowed: np.ndarray
    """(gh, gw) bool: the cell holds valid pixels."""
    cell0: tuple[int, int]
    """Scene cell (row, col) of the block's first cell."""
    model_s: float
    """Seconds in the model (0 when resumed from the cache)."""


@dataclass(frozen=True)
class FfResult:
    """What :func:`ff_block` returns for the summary."""

    cells: int
    """Cells of the block run by FF."""
    model_s: float
    """Seconds in the model (0 when resumed from the cache)."""
    regions: int = 0
    """FF regions (rectangles of cells, one halo each) the cells ran in (0 when resumed)."""
    ff_batch: int = 0
    """The backend's FF batch after the block (halved when a call ran out of memory; 0: no FF run)."""
    covered: int = 0
    """Cells whose maps FF wrote: the chosen ones and the others inside their regions (0 when resumed)."""


# ----------------------------------------------------------------------------- phase 1
@releasing
def pv_block(plan: BlockPlan, bi: int, bj: int, model: ModelKey, stats: BandStats) -> PvResult:
    """PV over one block read decimated; cache its logits; return utilities.

    Args:
        plan: the scene's block plan.
        bi: block row.
        bj: block column.
        model: the backend to use.
        stats: band statistics for normalisation.

    Returns:
        The block's :class:`PvResult`.
    """
    out = plan.path("pv", bi, bj)
    core = plan.core(bi, bj)
    gh, gw = math.ceil(core.height / plan.cell), math.ceil(core.width / plan.cell)
    cell0 = (int(core.row_off) // plan.cell, int(core.col_off) // plan.cell)
    if out.exists():
        saved = load_npz(out, "utility", "allowed")
        return PvResult(saved[0], saved[1], cell0, 0.0)
    s, m = plan.scale, plan.multiple
    ctx = m  # context ring for PV's receptive field, aligned to the cell grid
    ring = plan.grown(bi, bj, ctx)
    r0, c0 = int(ring.row_off), int(ring.col_off)
    h, w = int(ring.height) // s * s, int(ring.width) // s * s  # whole low-res pixels only
    win = Window(c0, r0, w, h)
    with open_scene(plan.scene) as src, read_errors(plan, win):
        small = src.read(plan.band_indexes, window=win, out_shape=(len(plan.band_indexes), h // s, w // s),
                         resampling=Resampling.average).astype(np.float32)
        # a low-res pixel averaged over a NaN is NaN: invalid, as at full resolution
        valid = valid_mask(small, src.dataset_mask(window=win, out_shape=(h // s, w // s)))
    backend = get_backend(model)
    if plan.dense:  # every valid cell runs FF: the read only tells which cells are valid
        lh0, lw0 = -(-h // m) * m // s, -(-w // m) * m // s
        pv_logits = np.full((1, backend.meta.n_outputs, lh0, lw0), NO_PV_LOGIT, np.float32)
        utility = np.zeros((1, lh0 * s // plan.cell, lw0 * s // plan.cell), np.float32)
        model_s = 0.0
    else:
        x = normalize(small, stats, valid=valid)
        ph, pw = -x.shape[1] % (m // s), -x.shape[2] % (m // s)
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
        t0 = time.perf_counter()
        pv_logits, utility = averaged(backend.pv, x[None], plan.tta)
        model_s = time.perf_counter() - t0
    lr0, lc0 = (int(core.row_off) - r0) // s, (int(core.col_off) - c0) // s
    lh, lw = math.ceil(core.height / s), math.ceil(core.width / s)
    logits = pv_logits[0, :, lr0:lr0 + lh, lc0:lc0 + lw]
    if logits.shape[1:] != (lh, lw):  # the far scene edge lost < scale px: repeat the edge
        logits = np.pad(logits, ((0, 0), (0, lh - logits.shape[1]), (0, lw - logits.shape[2])),
                        mode="edge")
    step = plan.cell // s
    cr, cc = (int(core.row_off) - r0) // plan.cell, (int(core.col_off) - c0) // plan.cell
    util = utility[0, cr:cr + gh, cc:cc + gw].astype(np.float32)
    vpad = np.pad(valid, ((0, -valid.shape[0] % step + step * gh), (0, -valid.shape[1] % step + step * gw)))
    vr, vc = (int(core.row_off) - r0) // s, (int(core.col_off) - c0) // s
    vcore = vpad[vr:vr + gh * step, vc:vc + gw * step]
    allowed = vcore.reshape(gh, step, gw, step).any(axis=(1, 3))
    if util.shape != (gh, gw):  # last partial cells of the scene: no utility, not allowed
        util = np.pad(util, ((0, gh - util.shape[0]), (0, gw - util.shape[1])),
                      constant_values=-np.inf)
    with atomic_path(out) as tmp, tmp.open("wb") as f:
        np.savez(f, logits=logits.astype(np.float16), utility=util, allowed=allowed)
    return PvResult(util, np.asarray(allowed), cell0, model_s)


# ----------------------------------------------------------------------------- phase 2
def _probabilities_u8(logits: torch.Tensor) -> np.ndarray:
    """As :func:`geoseg.models.postprocess.probabilities`, quantised to uint8 (x 255), in torch.

    Works in place on ``logits`` (which may be a view): no second float map of the block.
    """
    logits[:FIRST_CLASS].sigmoid_()
    if logits.shape[0] > FIRST_CLASS:
        logits[FIRST_CLASS:] = torch.softmax(logits[FIRST_CLASS:], dim=0)
    u8 = logits.mul_(255).round_().to(torch.uint8, memory_format=torch.contiguous_format)
    return np.asarray(u8.numpy())


def upsampled(pv: torch.Tensor, scale: int) -> torch.Tensor:
    """PV's maps (C, h, w) upsampled ``scale`` times, bilinear (``align_corners=False``), as the model fuses them.

    torch's CPU kernel takes twice as long on 3 contiguous maps (one class: extent,
    boundary, contact) as on the same maps channels-last, which give the same values
    (``python bench/upsample.py``; ``tests/test_predict.py``); with more maps the layouts
    cost about the same and differ in the last bits, so those stay contiguous.
    """
    x = pv[None]
    if pv.shape[0] == 3 and not pv.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)[0]


def _pv_neighbourhood(plan: BlockPlan, bi: int, bj: int) -> np.ndarray:
    """PV logits of the block core with a ring of one low-res pixel from the neighbours."""
    centre = load_npz(plan.path("pv", bi, bj), "logits")[0].astype(np.float32)
    out = np.pad(centre, ((0, 0), (1, 1), (1, 1)), mode="edge")  # scene edge: clamp
    for di, dj in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        ni, nj = bi + di, bj + dj
        if not plan.computed(ni, nj):  # the scene's edge, or beyond the blocks --aoi computes: clamp
            continue
        nb = load_npz(plan.path("pv", ni, nj), "logits")[0]
        rows = slice(-1, None) if di == -1 else (slice(0, 1) if di == 1 else slice(None))
        cols = slice(-1, None) if dj == -1 else (slice(0, 1) if dj == 1 else slice(None))
        orow = slice(0, 1) if di == -1 else (slice(-1, None) if di == 1 else slice(1, -1))
        ocol = slice(0, 1) if dj == -1 else (slice(-1, None) if dj == 1 else slice(1, -1))
        out[:, orow, ocol] = nb[:, rows, cols]
    return out


@releasing
def ff_block(plan: BlockPlan, bi: int, bj: int, chosen: np.ndarray, model: ModelKey,
             stats: BandStats, *deps: Any) -> FfResult:
    """Fuse PV and FF on one block core; cache probabilities (uint8, C × h × w).

    Args:
        plan: the scene's block plan.
        bi: block row.
        bj: block column.
        chosen: (K, 2) scene cell (row, col) chosen for FF that lie in this block.
        model: the backend to use (its ``ff_batch`` tiles per model call).
        stats: band statistics for normalisation.
        deps: upstream tasks (the PV of the neighbours), for ordering only.

    Returns:
        The block's :class:`FfResult`.
    """
    out = plan.path("probs", bi, bj)
    if out.exists():
        return FfResult(len(chosen), 0.0)
    core = plan.core(bi, bj)
    s, c, hl = plan.scale, plan.cell, plan.tile_halo
    if plan.dense:  # FF covers every valid cell; the others (no valid pixel at 1/scale) hold nothing
        n_out = get_backend(model).meta.n_outputs
        logits = torch.full((n_out, int(core.height), int(core.width)), NO_PV_LOGIT)
    else:
        up = upsampled(torch.from_numpy(_pv_neighbourhood(plan, bi, bj)), s)
        logits = up[:, s:s + int(core.height), s:s + int(core.width)]  # a view: FF pastes into it
    model_s = 0.0
    n_regions = covered = 0
    if len(chosen):
        backend = get_backend(model)
        mask = np.zeros((math.ceil(core.height / c), math.ceil(core.width / c)), dtype=bool)
        mask[chosen[:, 0] - int(core.row_off) // c, chosen[:, 1] - int(core.col_off) // c] = True
        regions = cover(mask, c, hl, max_side=backend.region_side)
        n_regions = len(regions)
        with open_scene(plan.scene) as src:
            for (rows, cols), members in group_by_shape(regions).items():
                tiles = []
                for i in members:  # one windowed read per region, with one halo
                    reg = regions[i]
                    win = Window(int(core.col_off) + reg.col * c - hl, int(core.row_off) + reg.row * c - hl,
                                 cols * c + 2 * hl, rows * c + 2 * hl)
                    img, valid = read_window(src, plan, win)
                    tiles.append(normalize(img, stats, valid=valid))
                t0 = time.perf_counter()
                (maps,) = averaged(lambda t: (backend.ff(t),), np.stack(tiles).astype(np.float32, copy=False),
                                   plan.tta)
                ff = torch.from_numpy(maps)
                model_s += time.perf_counter() - t0
                for i, maps in zip(members, ff, strict=True):
                    covered += _paste(logits, maps, regions[i], c)
    probs = _probabilities_u8(logits)
    with atomic_path(out) as tmp, tmp.open("wb") as f:
        np.save(f, probs)  # raw .npy: zlib would cost more than the model; readers map the part they need
    return FfResult(len(chosen), model_s, n_regions, int(backend.ff_batch) if len(chosen) else 0, covered)


def _paste(logits: torch.Tensor, maps: torch.Tensor, reg: Region, c: int) -> int:
    """Write a region's FF maps over all of its cells (clipped at the block edge); returns their number.

    Regions are disjoint, and FF computed every cell of the rectangle: its cells that the
    router did not choose (a region covers a few to save a halo) take FF's maps too, not
    PV's, so no PV/FF seam runs through a roof inside a region. It costs nothing.
    """
    rows, cols = reg.shape
    y0, x0 = reg.row * c, reg.col * c
    h, w = min(rows * c, logits.shape[1] - y0), min(cols * c, logits.shape[2] - x0)
    logits[:, y0:y0 + h, x0:x0 + w] = maps[:, :h, :w]
    return rows * cols


# ----------------------------------------------------------------------------- phase 3
def _probs_region(plan: BlockPlan, bi: int, bj: int) -> tuple[np.ndarray, Window]:
    """Probabilities (uint8 x 255, as cached) of the block core plus ``watershed_halo``, from the neighbour caches.

    They stay uint8: the watershed converts only the pieces holding objects to float.
    """
    win = plan.grown(bi, bj, plan.watershed_halo)
    r0, c0 = int(win.row_off), int(win.col_off)
    r1, c1 = r0 + int(win.height), c0 + int(win.width)
    region = None
    nbh, nbw = plan.blocks_shape
    for ni in range(max(0, bi - 1), min(nbh, bi + 2)):
        for nj in range(max(0, bj - 1), min(nbw, bj + 2)):
            nwin = plan.core(ni, nj)
            nr0, nc0 = int(nwin.row_off), int(nwin.col_off)
            nr1, nc1 = nr0 + int(nwin.height), nc0 + int(nwin.width)
            ir0, ic0, ir1, ic1 = max(r0, nr0), max(c0, nc0), min(r1, nr1), min(c1, nc1)
            if ir0 >= ir1 or ic0 >= ic1 or not plan.computed(ni, nj):  # not computed: no object there
                continue
            probs = map_npy(plan.path("probs", ni, nj))  # reads only the rows sliced
            if region is None:
                region = np.zeros((probs.shape[0], r1 - r0, c1 - c0), dtype=np.uint8)
            region[:, ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = probs[:, ir0 - nr0:ir1 - nr0, ic0 - nc0:ic1 - nc0]
    assert region is not None
    return region, win


@releasing
def instances_block(plan: BlockPlan, bi: int, bj: int, post: PostprocessConfig, classes: tuple[str, ...],
                    simplify: float, min_area: float, *deps: Any) -> Path:
    """Watershed instances whose centroid lies in the block core, as polygons (cached GPKG).

    Args:
        plan: the scene's block plan.
        bi: block row.
        bj: block column.
        post: the model's watershed thresholds.
        classes: class names.
        simplify: tolerance in metres.
        min_area: smallest polygon kept, in m².
        deps: upstream tasks (the FF of the 3×3 neighbours), for ordering only.

    Returns:
        The cache GPKG of the block (possibly with no feature).
    """
    from geoseg.predict.instances import above, instances_from_probs

    out = plan.path("polys", bi, bj)
    if out.exists():
        return out
    probs, win = _probs_region(plan, bi, bj)
    with open_scene(plan.scene) as src, read_errors(plan, win):
        # a pixel joins an instance only where the extent clears its threshold: validity is read there
        valid, no_data = valid_where(src, plan, win, above(probs[0], post.extent_threshold))
    inst = instances_from_probs(probs, post, valid, no_data)
    return owned_polygons(plan, bi, bj, inst, win, classes, simplify, min_area)


def owned_polygons(plan: BlockPlan, bi: int, bj: int, inst: Instances, win: Window,
                   classes: tuple[str, ...], simplify: float, min_area: float) -> Path:
    """The instances of a window whose centroid lies in block (bi, bj)'s core, as its cached GPKG.

    Shared by the watershed path and Mask R-CNN (:mod:`geoseg.predict.maskrcnn_phase`).

    Args:
        plan: the scene's block plan.
        bi: block row.
        bj: block column.
        inst: instances of ``win`` (the core plus a halo).
        win: the window of ``inst.labels`` in the scene.
        classes: class names.
        simplify: tolerance in metres.
        min_area: smallest polygon kept, in m².

    Returns:
        The cache GPKG of the block (possibly with no feature).
    """
    from geoseg.predict.vectorize import instances_to_frame, write_vector

    out = plan.path("polys", bi, bj)
    labels = inst.labels
    n = len(inst)
    core = plan.core(bi, bj)
    if n:
        at = np.flatnonzero(labels)  # object pixels only: no window-sized index arrays
        ids = labels.ravel()[at]
        rows, cols = np.divmod(at, labels.shape[1])
        cnt = np.bincount(ids, minlength=n + 1)[1:]
        cy = np.bincount(ids, weights=rows, minlength=n + 1)[1:] / np.maximum(cnt, 1)
        cx = np.bincount(ids, weights=cols, minlength=n + 1)[1:] / np.maximum(cnt, 1)
        cy += int(win.row_off) + 0.5
        cx += int(win.col_off) + 0.5
        keep = ((cy >= core.row_off) & (cy < core.row_off + core.height)
                & (cx >= core.col_off) & (cx < core.col_off + core.width))
        lut = np.zeros(n + 1, dtype=np.int32)
        lut[1:][keep] = np.arange(1, int(keep.sum()) + 1)
        cut = at_window_edge(plan, labels, win, n)[keep]
        labels = lut[labels]
        score, cls = inst.score[keep], inst.class_index[keep]
    else:
        score = cls = cut = np.zeros(0)
    transform = window_transform(win, plan.scene.affine)
    gdf = instances_to_frame(labels, transform, plan.scene.crs, score=score, class_index=cls,
                             class_names=classes, simplify=simplify,
                             extra={"scene": plan.scene.name, CUT: cut.astype(bool)})
    gdf = gdf[gdf["area_m2"] >= min_area]
    write_vector(gdf, out)
    return out
