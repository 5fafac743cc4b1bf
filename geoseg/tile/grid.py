"""The window grid of a scene and its split into train/val by spatial blocks."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Literal

import numpy as np
from rasterio.windows import Window

from geoseg.io.rasters import SceneInfo
from geoseg.tile.config import TileConfig


def axis_offsets(length: int, size: int, stride: int) -> list[int]:
    """Window offsets along one axis: a regular stride, the last one flush with the edge.

    Examples:
        >>> axis_offsets(1536, 512, 448)
        [0, 448, 896, 1024]
        >>> axis_offsets(300, 512, 448)
        [0]
    """
    if length <= size:
        return [0]
    offs = list(range(0, length - size, stride))
    if offs[-1] != length - size:
        offs.append(length - size)
    return offs


def window_grid(width: int, height: int, size: int, overlap: int) -> list[list[Window]]:
    """Rows of windows covering a ``width`` × ``height`` raster.

    Windows are ``size`` square (smaller only when the raster is), with at least
    ``overlap`` pixels shared by neighbours; the last row and column are flush with the
    raster edge, so no chip needs padding.
    """
    stride = size - overlap
    rows = axis_offsets(height, size, stride)
    cols = axis_offsets(width, size, stride)
    h, w = min(size, height), min(size, width)
    return [[Window(c, r, w, h) for c in cols] for r in rows]


def plan_splits(
    scenes: Sequence[SceneInfo], blocks: dict[str, list[tuple[int, int]]], cfg: TileConfig
) -> dict[tuple[str, tuple[int, int]], Literal["train", "val"]]:
    """Assign each split block to train or val.

    Scenes matching ``val_scenes`` go wholly to val. Of the other blocks,
    ``round(val_fraction × n)`` chosen by a seeded shuffle go to val.
    """
    out: dict[tuple[str, tuple[int, int]], Literal["train", "val"]] = {}
    pool: list[tuple[str, tuple[int, int]]] = []
    for s in scenes:
        forced = any(fnmatch.fnmatch(s.name, pat) for pat in cfg.val_scenes)
        for b in blocks[s.name]:
            if forced:
                out[(s.name, b)] = "val"
            else:
                pool.append((s.name, b))
    n_val = round(cfg.val_fraction * len(pool))
    order = np.random.default_rng(cfg.seed).permutation(len(pool))
    for rank, k in enumerate(order):
        out[pool[k]] = "val" if rank < n_val else "train"
    return out
