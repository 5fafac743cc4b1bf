"""The block plan of one scene in `geoseg predict`, and windowed reads with padding.

A scene is cut into square *blocks* (``--block`` px, a multiple of the router cell).
Each phase of :mod:`geoseg.predict.phases` runs as one Dask task per block and leaves
its result in the plan's per-scene cache directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from geoseg.io.rasters import SceneInfo


@dataclass(frozen=True)
class BlockPlan:
    """Geometry of the blocks of one scene and the model's grid.

    Attributes:
        scene: the scene.
        block: block side in full-resolution pixels (multiple of ``cell``).
        halo: pixels around a block that the instance phase sees (< ``block``).
        cell: router cell side; scale: PV decimation; model_halo: FF tile halo;
        multiple: the model's input multiple; bands: 1-based band indexes to read.
        cache: the scene's cache directory.
    """

    scene: SceneInfo
    block: int
    halo: int
    cell: int
    scale: int
    model_halo: int
    multiple: int
    bands: tuple[int, ...]
    cache: Path

    @property
    def blocks_shape(self) -> tuple[int, int]:
        """Rows and columns of blocks."""
        return math.ceil(self.scene.height / self.block), math.ceil(self.scene.width / self.block)

    @property
    def cells_shape(self) -> tuple[int, int]:
        """Rows and columns of router cells in the scene."""
        return math.ceil(self.scene.height / self.cell), math.ceil(self.scene.width / self.cell)

    def core(self, bi: int, bj: int) -> Window:
        """The full-resolution window of block (bi, bj), clipped to the scene."""
        r0, c0 = bi * self.block, bj * self.block
        return Window(c0, r0, min(self.block, self.scene.width - c0),
                      min(self.block, self.scene.height - r0))

    def path(self, kind: str, bi: int, bj: int) -> Path:
        """Cache file of one phase of one block."""
        suffix = {"pv": ".npz", "probs": ".npz", "polys": ".gpkg"}[kind]
        return self.cache / f"{kind}_{bi}_{bj}{suffix}"


# ----------------------------------------------------------------------------- reading
def _clip(win: Window, scene: SceneInfo) -> tuple[Window, tuple[int, int, int, int]]:
    """Clip a window to the scene; return it and the (top, bottom, left, right) cut."""
    r0, c0 = int(win.row_off), int(win.col_off)
    r1, c1 = r0 + int(win.height), c0 + int(win.width)
    cr0, cc0 = max(r0, 0), max(c0, 0)
    cr1, cc1 = min(r1, scene.height), min(c1, scene.width)
    return Window(cc0, cr0, cc1 - cc0, cr1 - cr0), (cr0 - r0, r1 - cr1, cc0 - c0, c1 - cc1)


def read_window(src: Any, plan: BlockPlan, win: Window, pad_mode: str = "reflect"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution pixels and validity of a window that may pass the scene edge.

    Outside the scene the image is padded (reflect, as the model's training padding)
    and marked invalid.

    Returns:
        ``(image (C, h, w) float32 raw values, valid (h, w) bool)``.
    """
    inner, (t, b, left, right) = _clip(win, plan.scene)
    data = src.read(plan.bands, window=inner).astype(np.float32)
    valid = src.dataset_mask(window=inner) > 0
    if t or b or left or right:
        mode = pad_mode if min(data.shape[1:]) > max(t, b, left, right) else "edge"
        data = np.pad(data, ((0, 0), (t, b), (left, right)), mode=mode)  # type: ignore[call-overload]
        valid = np.pad(valid, ((t, b), (left, right)), constant_values=False)
    return data, valid
