"""The grid predict reads each scene on: ``--gsd native|model|METRES`` against the model's GSD."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from geoseg.io.rasters import GSD_TOLERANCE, SceneInfo
from geoseg.models.meta import ModelMeta
from geoseg.predict.config import PredictConfig

log = logging.getLogger(__name__)

#: Scenes read more than this many times finer than stored are warned about.
UPSAMPLE_WARN = 4.0

#: A scene this close to the edge of the trained range counts as inside (see SceneInfo.at_gsd).
_TOLERANCE = 1.05


def target_gsd(cfg: PredictConfig, meta: ModelMeta, scene_gsd: float | None = None) -> float | None:
    """Metres per pixel a scene of ``scene_gsd`` is read at (None: its own grid).

    ``--gsd model``: a model trained with scale augmentation (``meta.gsd_range``) reads a
    scene inside that range on its own grid and one outside it at the nearest end; a model
    trained at one GSD reads every scene at it; a model without a recorded GSD, natively.
    """
    if cfg.gsd == "native":
        return None
    if cfg.gsd != "model":
        return float(cfg.gsd)
    return model_grid(meta.gsd, meta.gsd_range, scene_gsd)


def model_grid(gsd: float | None, gsd_range: Sequence[float] | None, scene_gsd: float | None
               ) -> float | None:
    """Metres per pixel a model trained at ``gsd`` (across ``gsd_range``) reads a scene at (None: its own grid).

    The rule of ``--gsd model``, shared with the mean teacher's unlabelled chips.

    Examples:
        >>> model_grid(0.15, None, 0.075), model_grid(0.15, (0.1, 0.3), 0.2), model_grid(0.15, (0.1, 0.3), 0.6)
        (0.15, None, 0.3)
    """
    if gsd_range is not None and scene_gsd is not None and scene_gsd > 0:
        lo, hi = gsd_range
        if lo / _TOLERANCE <= scene_gsd <= hi * _TOLERANCE:
            return None
        return min(max(scene_gsd, lo), hi)
    return gsd


def gsd_note(before: Sequence[SceneInfo], after: Sequence[SceneInfo], cfg: PredictConfig) -> str:
    """The summary's line on resampling ('' when every scene was read on its own grid)."""
    moved = [(a, b) for a, b in zip(before, after, strict=True) if b.moved]
    if not moved:
        return ""
    native = sorted({a.pixel_text for a, _ in moved})
    whys = dict.fromkeys(_why(a, b, cfg) for a, b in moved)  # in scene order, once each
    return (f"{moved[0][1].gsd:.3g} m/px ({'; '.join(whys)}) for {len(moved)} of {len(after)} scenes "
            f"(native {', '.join(native)} m/px)")


def _why(before: SceneInfo, after: SceneInfo, cfg: PredictConfig) -> str:
    """Why one scene is read on another grid: squared at its own GSD, or resampled to the model's or --gsd."""
    if str(cfg.gsd) == "native" or abs(after.gsd / before.gsd - 1.0) <= GSD_TOLERANCE:
        return "square pixels of the scene's own GSD"  # a scene inside the model's range, only squared
    return "the model's training GSD" if str(cfg.gsd) == "model" else "--gsd"


def warn_upsampling(before: Sequence[SceneInfo], after: Sequence[SceneInfo], cfg: PredictConfig) -> None:
    """Warn, before any work, of scenes read more than :data:`UPSAMPLE_WARN` times finer than stored.

    A 10 m Sentinel-2 scene read at a building model's 0.3 m is 33 times finer: the model
    sees none of the detail it learned, finds noise, and the work grows 1100-fold.
    """
    far = [(a, b) for a, b in zip(before, after, strict=True) if b.resample < 1 / UPSAMPLE_WARN]
    if not far:
        return
    a, b = far[0]
    why = "the model's training GSD" if cfg.gsd == "model" else "--gsd"
    log.warning("%d scene(s) are read over %gx finer than stored, e.g. %s: %.3g m to %.3g m a pixel (%s), %.0fx "
                "the pixels: the model sees none of the detail it learned, and the work grows as much; use a "
                "model trained near the scenes' pixel size, or --gsd native", len(far), UPSAMPLE_WARN,
                a.name, a.gsd, b.gsd, why, (a.gsd / b.gsd) ** 2)



#: A ``--simplify`` tolerance over this many pixels of the grid a scene is read on is warned of.
SIMPLIFY_WARN_PX = 10.0


def warn_coarse_simplify(after: Sequence[SceneInfo], cfg: PredictConfig) -> None:
    """Warn, before any work, of a ``--simplify`` tolerance over :data:`SIMPLIFY_WARN_PX` pixels of a scene's grid.

    A tolerance in metres taken for centimetres or pixels (``--simplify 50`` on 0.15 m pixels
    is 333 of them): outlines of objects under about that size collapse, fall under
    ``--min-area`` and are dropped, the others lose their shape and ``area_m2`` with it, exit 0
    (Kampala block B: 31 polygons, 13 with ``--simplify 1000``).
    """
    far = [s for s in after if s.gsd and cfg.simplify / s.gsd > SIMPLIFY_WARN_PX]
    if far:
        s = far[0]
        log.warning("--simplify %g m is %.0f pixels of the %.3g m grid %s is read on (%d scene(s) over %g pixels): "
                    "outlines of objects under about that size collapse and are dropped, the others lose their "
                    "shape; the tolerance is in metres (default %g)", cfg.simplify, cfg.simplify / s.gsd, s.gsd,
                    s.name, len(far), SIMPLIFY_WARN_PX, PredictConfig.model_fields["simplify"].default)
