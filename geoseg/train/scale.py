"""Scale augmentation in metres: training crops read at a ground sampling distance drawn per sample.

With ``augment.gsd > 0`` and ``augment.gsd_range: [lo, hi]`` (metres per pixel), a training
sample is, with probability ``gsd``, read at a GSD drawn log-uniformly from the range
instead of its chip's own: the crop covers ``crop x factor`` chip pixels (``factor`` = drawn
GSD / chip GSD) and is read into ``crop x crop`` pixels by GDAL (average when coarser,
bilinear when finer); the instance labels are resampled to the same grid by nearest
neighbour, and the targets are computed on that grid (boundary widths stay in model
pixels). The model then sees buildings at every size the range implies, which is what a
scene at another GSD shows it; predict reads a scene inside the range on its own grid
(:func:`geoseg.predict.gsd.target_gsd`).

Everything is a function of the sample's generator, so crops stay deterministic per
(seed, epoch, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from geoseg.io.rasters import valid_mask


@dataclass(frozen=True)
class ScaledWindow:
    """A chip window and the output grid it is read into.

    ``window`` is in chip pixels; ``shape`` is the (rows, cols) of the sample;
    ``factor`` is chip pixels per sample pixel along rows and cols (1.0: the chip's grid).
    """

    window: Window
    shape: tuple[int, int]
    factor: tuple[float, float] = (1.0, 1.0)

    @property
    def resampled(self) -> bool:
        """Whether the sample grid differs from the chip's."""
        return self.factor != (1.0, 1.0)


def draw_factor(rng: np.random.Generator, p: float, gsd_range: tuple[float, float] | None,
                chip_gsd: float) -> float:
    """Chip pixels per sample pixel for one sample (1.0 without scale augmentation).

    Draws nothing when ``p`` is 0, so runs without it keep their crops.
    """
    if p <= 0 or gsd_range is None or not math.isfinite(chip_gsd) or chip_gsd <= 0:
        return 1.0
    if rng.random() >= p:
        return 1.0
    lo, hi = gsd_range
    target = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
    return target / chip_gsd


def scaled_window(chip_hw: tuple[int, int], crop: int | None, factor: float,
                  rng: np.random.Generator) -> ScaledWindow:
    """A random window of ``crop x factor`` chip pixels (clamped to the chip) and its sample grid.

    ``crop`` None: the whole chip. With ``factor`` 1 this is the plain random crop.
    """
    h, w = chip_hw
    if crop is None:
        win = Window(0, 0, w, h)
    else:
        ch, cw = (min(max(1, round(crop * factor)), side) for side in (h, w))
        win = Window(int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch)
    if factor == 1.0:
        return ScaledWindow(win, (int(win.height), int(win.width)))
    oh, ow = max(1, round(win.height / factor)), max(1, round(win.width / factor))
    return ScaledWindow(win, (oh, ow), (win.height / oh, win.width / ow))


def read_scaled(src: Any, sw: ScaledWindow) -> tuple[np.ndarray, np.ndarray]:
    """The bands (C, H, W) and valid mask (H, W) of ``sw`` from an open raster, on the sample grid.

    GDAL resamples: average when the sample grid is coarser than the chip's, bilinear when finer.
    """
    if not sw.resampled:
        raw = src.read(window=sw.window)
        return raw, valid_mask(raw, src.dataset_mask(window=sw.window))
    how = Resampling.average if max(sw.factor) > 1 else Resampling.bilinear
    raw = src.read(window=sw.window, out_shape=(src.count, *sw.shape), resampling=how)
    return raw, valid_mask(raw, src.dataset_mask(window=sw.window, out_shape=sw.shape))


def label_region(sw: ScaledWindow, chip_hw: tuple[int, int], pad: int
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Chip rows and cols of the labels a sample needs: its window plus ``pad`` sample pixels a side."""
    h, w = chip_hw
    r0, c0 = int(sw.window.row_off), int(sw.window.col_off)
    pr, pc = (math.ceil(pad * f) for f in sw.factor)
    return ((max(r0 - pr, 0), min(r0 + int(sw.window.height) + pr, h)),
            (max(c0 - pc, 0), min(c0 + int(sw.window.width) + pc, w)))


def resample_labels(labels: np.ndarray, sw: ScaledWindow, region: tuple[tuple[int, int], tuple[int, int]]
                    ) -> tuple[np.ndarray, tuple[int, int]]:
    """Labels of ``region`` (chip pixels) on the sample grid, and where the window starts in them.

    Nearest neighbour by pixel centre, on the same pixel-area mapping GDAL uses to read the
    image into the sample grid, so labels and image stay aligned. With factor 1 the labels
    are returned as they are.
    """
    (R0, R1), (C0, C1) = region
    r0, c0 = int(sw.window.row_off), int(sw.window.col_off)
    if not sw.resampled:
        return labels, (r0 - R0, c0 - C0)
    fr, fc = sw.factor
    oh, ow = sw.shape
    top, left = int((r0 - R0) // fr), int((c0 - C0) // fc)
    bottom, right = int((R1 - r0 - sw.window.height) // fr), int((C1 - c0 - sw.window.width) // fc)
    rows = np.floor((r0 - R0) + (np.arange(-top, oh + bottom) + 0.5) * fr).astype(np.int64)
    cols = np.floor((c0 - C0) + (np.arange(-left, ow + right) + 0.5) * fc).astype(np.int64)
    rows = np.clip(rows, 0, labels.shape[0] - 1)
    cols = np.clip(cols, 0, labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)], (top, left)
