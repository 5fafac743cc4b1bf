"""The block plan of one scene in `geoseg predict`, and windowed reads with padding.

A scene is cut into square *blocks* (``--block`` px, a multiple of the router cell).
Each phase of :mod:`geoseg.predict.phases` runs as one Dask task per block and leaves
its result in the plan's per-scene cache directory.
"""

from __future__ import annotations

import logging
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window, intersection

from geoseg.io import rasters
from geoseg.io.rasters import SceneInfo, valid_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockPlan:
    """Geometry of the blocks of one scene and the model's grid.

    Attributes:
        scene: the scene.
        block: block side in full-resolution pixels (multiple of ``cell``).
        watershed_halo: pixels around a block that the instance phase sees (< ``block``).
        cell: router cell side; scale: PV decimation; tile_halo: FF tile margin per side;
        multiple: the model's input multiple; band_indexes: 1-based bands to read.
        cache: the scene's cache directory.
        tta: test-time augmentation of the model calls (:mod:`geoseg.predict.tta`).
        dense: every valid cell gets FF (budget 1.0): PV's model call is skipped, and so
            is its upsampling under FF (:func:`geoseg.predict.choose.dense_run`).
        only: the blocks computed (``--aoi``: those near the area and a ring of context
            around them; :mod:`geoseg.predict.area`); None: every block.
        owners: the blocks whose objects are kept, a subset of ``only``; None: every block.
    """

    scene: SceneInfo
    block: int
    watershed_halo: int
    cell: int
    scale: int
    tile_halo: int
    multiple: int
    band_indexes: tuple[int, ...]
    cache: Path
    tta: str = "none"
    dense: bool = False
    only: frozenset[tuple[int, int]] | None = None
    owners: frozenset[tuple[int, int]] | None = None

    @property
    def blocks_shape(self) -> tuple[int, int]:
        """Rows and columns of blocks."""
        return math.ceil(self.scene.height / self.block), math.ceil(self.scene.width / self.block)

    def blocks(self) -> list[tuple[int, int]]:
        """The blocks computed, row-major (all of them without ``--aoi``)."""
        nbh, nbw = self.blocks_shape
        return [(i, j) for i in range(nbh) for j in range(nbw) if self.only is None or (i, j) in self.only]

    def owned(self) -> list[tuple[int, int]]:
        """The blocks whose objects are written, row-major (a subset of :meth:`blocks`)."""
        return [b for b in self.blocks() if self.owners is None or b in self.owners]

    def computed(self, bi: int, bj: int) -> bool:
        """Whether block (bi, bj) lies in the scene and is computed."""
        nbh, nbw = self.blocks_shape
        inside = 0 <= bi < nbh and 0 <= bj < nbw
        return inside and (self.only is None or (bi, bj) in self.only)

    @property
    def cells_shape(self) -> tuple[int, int]:
        """Rows and columns of router cells in the scene."""
        return math.ceil(self.scene.height / self.cell), math.ceil(self.scene.width / self.cell)

    @property
    def extent(self) -> Window:
        """The whole scene as a window."""
        return Window(0, 0, self.scene.width, self.scene.height)

    def core(self, bi: int, bj: int) -> Window:
        """The full-resolution window of block (bi, bj), clipped to the scene."""
        return self.clip(Window(bj * self.block, bi * self.block, self.block, self.block))

    def grown(self, bi: int, bj: int, margin: int) -> Window:
        """Block (bi, bj) grown by ``margin`` px on each side, clipped to the scene."""
        core = self.core(bi, bj)
        return self.clip(Window(core.col_off - margin, core.row_off - margin,
                                core.width + 2 * margin, core.height + 2 * margin))

    def clip(self, win: Window) -> Window:
        """``win`` intersected with the scene (rasterio.windows.intersection)."""
        return intersection(win, self.extent)

    def path(self, kind: str, bi: int, bj: int) -> Path:
        """Cache file of one phase of one block."""
        suffix = {"pv": ".npz", "probs": ".npy", "polys": ".gpkg"}[kind]
        return self.cache / f"{kind}_{bi}_{bj}{suffix}"


# ----------------------------------------------------------------------------- reading
def read_errors(plan: BlockPlan, win: Window) -> AbstractContextManager[None]:
    """A failed read of the scene (truncated, damaged) as one error naming file and window."""
    return rasters.read_errors(plan.scene.source, win)


def read_window(src: Any, plan: BlockPlan, win: Window, pad_mode: str = "reflect"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution pixels and validity of a window that may pass the scene edge.

    Outside the scene the image is padded (reflect, as the model's training padding)
    and marked invalid.

    Returns:
        ``(image (C, h, w) float32 raw values, valid (h, w) bool)``.
    """
    inner = plan.clip(win)
    t, left = int(inner.row_off - win.row_off), int(inner.col_off - win.col_off)
    b = int(win.row_off + win.height - inner.row_off - inner.height)
    right = int(win.col_off + win.width - inner.col_off - inner.width)
    with read_errors(plan, inner):
        raw = src.read(plan.band_indexes, window=inner)
        valid = valid_mask(raw, src.dataset_mask(window=inner))
    data = raw.astype(np.float32)
    if t or b or left or right:
        mode = pad_mode if min(data.shape[1:]) > max(t, b, left, right) else "edge"
        data = np.pad(data, ((0, 0), (t, b), (left, right)), mode=mode)  # type: ignore[call-overload]
        valid = np.pad(valid, ((t, b), (left, right)), constant_values=False)
    return data, valid


#: Side of the parts of a window whose validity :func:`valid_where` reads (when needed).
VALID_TILE = 256


def valid_where(src: Any, plan: BlockPlan, win: Window, need: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validity (dataset mask, and finite values in float scenes) of ``win`` where ``need``.

    Only the :data:`VALID_TILE`-sided parts of ``win`` holding a needed pixel are read;
    elsewhere the result is False. The instance phase needs validity only where the extent
    clears its threshold, so a block without objects reads nothing: on a remote scene the
    full-resolution mask of every block (in a COG interleaved with the pixels) would cost
    as much as reading the whole scene.

    Returns:
        ``(valid, no_data)``: (h, w) bool each, ``win``'s shape; ``no_data`` marks the
        invalid pixels of the parts read (known to hold no data), never those not read.
    """
    valid = np.zeros(need.shape, dtype=bool)
    looked = np.zeros(need.shape, dtype=bool)
    floating = np.issubdtype(np.dtype(plan.scene.dtype), np.floating)
    rows, cols = need.shape
    for r in range(0, rows, VALID_TILE):
        for c in range(0, cols, VALID_TILE):
            h, w = min(VALID_TILE, rows - r), min(VALID_TILE, cols - c)
            if not need[r:r + h, c:c + w].any():
                continue
            part = Window(int(win.col_off) + c, int(win.row_off) + r, w, h)
            mask = src.dataset_mask(window=part)
            # NaN/inf pixels are invalid too: float scenes need their values
            valid[r:r + h, c:c + w] = (valid_mask(src.read(plan.band_indexes, window=part), mask)
                                       if floating else mask > 0)
            looked[r:r + h, c:c + w] = True
    return valid, looked & ~valid


#: Column of a block's cached polygons: the object reaches the edge of the window the instance
#: phase saw, inside the scene, so it may be cut at a block seam; the stage counts and drops it.
CUT = "cut_at_window"


def at_window_edge(plan: BlockPlan, labels: np.ndarray, win: Window, n: int) -> np.ndarray:
    """Per instance 1..n, whether it touches a side of ``win`` that is not the scene's edge."""
    sides = []
    if win.row_off > 0:
        sides.append(labels[0])
    if win.col_off > 0:
        sides.append(labels[:, 0])
    if win.row_off + win.height < plan.scene.height:
        sides.append(labels[-1])
    if win.col_off + win.width < plan.scene.width:
        sides.append(labels[:, -1])
    touched = np.zeros(n + 1, dtype=bool)
    for side in sides:
        touched[side] = True
    return touched[1:]


def warn_cut(cut: dict[str, int], plan: BlockPlan, arch: str) -> None:
    """Log how many objects per scene reached the edge of their instance window (:data:`CUT`)."""
    if not cut:
        return
    total = sum(cut.values())
    where = ", ".join(f"{k} in {name}" for name, k in sorted(cut.items(), key=lambda kv: -kv[1])[:3])
    halo = plan.watershed_halo
    what = "detection halo" if arch == "maskrcnn" else "watershed halo"
    fix = (f"raise --watershed-halo (now {halo}) above half the largest object's size in pixels"
           if halo < plan.block else f"raise --block (now {plan.block}) and --watershed-halo")
    log.warning("%d object(s) (%s) reach the edge of the %d-px %s around their block and may be cut in two "
                "at block seams; %s", total, where, halo, what, fix)
