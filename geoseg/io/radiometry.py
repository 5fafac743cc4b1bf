"""Whether a scene's values lie where the model's training chips' did: a sample of its pixels.

A model sees ``clip((x - mean) / std, -3, 3)`` with the training chips' statistics. A scene
of the training scenes' data type and declared encoding may still hold its values in
another range: 16-bit imagery of another provider (digital numbers of 0-2047 beside
reflectance of 0-10000), or 8-bit imagery stretched otherwise (a 12-bit product divided by
16, all of it under 30). The model then sees a scene saturated at the clip, or one flat
grey, and finds nothing, with exit 0. :func:`warn_out_of_range` reads a sample of each
scene before the work and says so, with a ``gdal_translate -scale`` that moves the
sample's mean and spread onto the training chips'.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.dtypes import dtype_rev, typename_fwd
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geoseg.io.rasters import SceneInfo, valid_mask
from geoseg.io.sources import open_raster

if TYPE_CHECKING:
    from geoseg.bands import BandStats

log = logging.getLogger(__name__)

#: Most pixels on a side of each of the 3x3 windows read across a scene.
SAMPLE_SIDE = 128
#: A band is off when its sample's mean lies more than this many training standard
#: deviations from the training mean (its mean pixel is clipped)...
FAR_MEAN = 3.0
#: ...or its sample's standard deviation is over SPREAD times the training one, or under 1 / SPREAD.
SPREAD = 4.0
#: Fewer valid sampled pixels than this say nothing (a scene mostly nodata).
MIN_PIXELS = 256


def sample(src: Any, bands: Sequence[int]) -> np.ndarray:
    """Valid values of ``bands`` (1-based) of an open raster, at full resolution: (bands, n) float64.

    Up to 3x3 windows of at most :data:`SAMPLE_SIDE` pixels spread over the scene, each
    inside one of the file's tiles when they are that large (one tile read each, also over
    HTTP); a window the dataset mask says is all nodata is not read (judged on the mask's
    overviews first where the file has them: a COG's frame costs one small read). Not an overview: an
    averaged overview narrows the spread of fine texture (noise averaged over 4x4 pixels
    has a quarter of its spread).
    """
    bh, bw = src.block_shapes[0] if src.block_shapes else (1, 1)
    if min(bh, bw) < SAMPLE_SIDE:  # strips, or small tiles: windows anywhere
        bh = bw = 1
    side_r, side_c = min(SAMPLE_SIDE, src.height), min(SAMPLE_SIDE, src.width)
    coarse = _coarse_mask(src)
    out = []
    for r0 in _starts(src.height, bh, side_r):
        for c0 in _starts(src.width, bw, side_c):
            if coarse is not None and not _any_in(coarse, src, r0, c0, side_r, side_c):
                continue
            win = Window(c0, r0, side_c, side_r)
            mask = src.dataset_mask(window=win)
            if not mask.any():  # nodata there: its pixels are not read (a strip's frame, over HTTP too)
                continue
            raw = src.read(list(bands), window=win)
            out.append(raw[:, valid_mask(raw, mask)].astype(np.float64))
    return np.concatenate(out, axis=1) if out else np.zeros((len(bands), 0))


def _coarse_mask(src: Any) -> np.ndarray | None:
    """The dataset mask at about 64 px from the overviews (a COG: one small read); None without overviews."""
    if not src.overviews(1) or max(src.width, src.height) <= 4 * SAMPLE_SIDE:
        return None
    f = 64 / max(src.width, src.height)
    mask: np.ndarray = src.dataset_mask(out_shape=(max(1, round(src.height * f)), max(1, round(src.width * f))))
    return mask


def _any_in(coarse: np.ndarray, src: Any, r0: int, c0: int, h: int, w: int) -> bool:
    """Whether the coarse mask has a valid pixel over the window (grown by a coarse pixel: nearest reads)."""
    fy, fx = coarse.shape[0] / src.height, coarse.shape[1] / src.width
    rows = slice(max(0, int(r0 * fy) - 1), int(np.ceil((r0 + h) * fy)) + 1)
    cols = slice(max(0, int(c0 * fx) - 1), int(np.ceil((c0 + w) * fx)) + 1)
    return bool(coarse[rows, cols].any())


def _starts(size: int, block: int, side: int) -> list[int]:
    """Starts of up to 3 windows of ``side`` spread over ``size``, each at the start of a block it fits in.

    Examples:
        >>> _starts(600, 256, 128), _starts(600, 1, 128), _starts(100, 256, 100)
        ([0, 256], [0, 300, 472], [0])
    """
    blocks = -(-size // block)
    last = (size - side) // block * block  # the last block start with room for the window
    return sorted({min(int(i) * block, last) for i in np.linspace(0, blocks - 1, 3).round()})


def off_bands(mean: np.ndarray, std: np.ndarray, stats: BandStats) -> list[int]:
    """The bands (0-based) whose sample lies far from the training chips' (see :data:`FAR_MEAN`, :data:`SPREAD`).

    Examples:
        >>> from geoseg.bands import BandStats
        >>> trained = BandStats(mean=(160.0, 130.0), std=(60.0, 50.0))
        >>> off_bands(np.array([150.0, 10.0]), np.array([55.0, 4.0]), trained)
        [1]
    """
    t_mean, t_std = np.asarray(stats.mean), np.maximum(np.asarray(stats.std), 1e-12)
    ratio = np.maximum(std, 1e-12) / t_std
    far = (np.abs(mean - t_mean) / t_std > FAR_MEAN) | (ratio > SPREAD) | (ratio < 1 / SPREAD)
    return [int(b) for b in np.flatnonzero(far)]


def rescale_command(source: str, mean: np.ndarray, std: np.ndarray, stats: BandStats) -> str:
    """``gdal_translate`` mapping the sample's mean ± 2 std onto the training chips' (one ``-scale_N`` a band)."""
    parts = []
    for b, (m, s, tm, ts) in enumerate(zip(mean, std, stats.mean, stats.std, strict=True), 1):
        parts.append(f"-scale_{b} {m - 2 * s:.6g} {m + 2 * s:.6g} {tm - 2 * ts:.6g} {tm + 2 * ts:.6g}")
    gdal_type = typename_fwd.get(dtype_rev.get(stats.dtype, 6), "Float32")  # GDAL's names: uint8 is Byte
    return f"gdal_translate {' '.join(parts)} -ot {gdal_type} {source} rescaled.tif"


def warn_out_of_range(reads: Sequence[tuple[SceneInfo, Sequence[int]]], stats: BandStats) -> None:
    """Warn, once, of the scenes whose sampled values lie far from the training chips' (module doc).

    Scenes of another data type than the chips are left to the data type's own warning
    (:func:`geoseg.io.encoding.check_for_model`).
    """
    off: list[tuple[SceneInfo, list[int], np.ndarray, np.ndarray]] = []
    for scene, bands in reads:
        if stats.dtype and scene.dtype != stats.dtype:
            continue
        try:  # the file as stored: a sample's moments do not need the scene's grid
            with open_raster(scene.source, scene.identity) as src:
                values = sample(src, bands)
        except RasterioError:  # a damaged file: the work's own read names it and the window
            continue
        if values.shape[1] < MIN_PIXELS:
            continue
        mean, std = values.mean(axis=1), values.std(axis=1)
        if far := off_bands(mean, std, stats):
            off.append((scene, far, mean, std))
    if not off:
        return
    scene, far, mean, std = off[0]
    names = ", ".join(s.source for s, *_ in off[:3]) + (f" and {len(off) - 3} more" if len(off) > 3 else "")
    log.warning("%d scene(s) hold values far from the training chips' (%s): in a sample of %s, band(s) %s have "
                "mean %s and std %s where the chips had mean %s and std %s; the model sees such a scene out of "
                "its range and may find nothing: bring it to the training scenes' range (%s) or train on "
                "scenes like it", len(off), names, scene.source, ",".join(str(b + 1) for b in far),
                _round(mean), _round(std), _round(np.asarray(stats.mean)), _round(np.asarray(stats.std)),
                rescale_command(scene.source, mean, std, stats))


def _round(values: np.ndarray) -> str:
    return "/".join(f"{v:.4g}" for v in values)
