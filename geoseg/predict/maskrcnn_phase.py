"""`geoseg predict` for Mask R-CNN models: per-block detections through the same block plan.

One task per block of the :class:`~geoseg.predict.plan.BlockPlan` (no routing phases):

1. read the block core plus ``watershed_halo`` pixels (one windowed read), normalise it
   with the training band statistics, run :meth:`~geoseg.models.maskrcnn.MaskRCNNModel.detect`;
2. turn the detections into an instance label image of that window
   (:func:`detections_to_instances`: each 28 × 28 mask pasted into its box only, score
   threshold, mask NMS, pixels claimed best score first);
3. keep the instances whose centroid lies in the block core and vectorize them, with the
   code the watershed path uses (:func:`geoseg.predict.phases.owned_polygons`): nothing is
   duplicated or cut at seams as long as objects are smaller than twice the halo.

The ``score`` of a polygon is the detection score. Memory of a task is bounded by the
block and halo sizes (no detections × H × W array). The backend is torch (the checkpoint)
or ONNX Runtime (the ``detect.onnx`` of a Mask R-CNN export, :mod:`geoseg.export.maskrcnn`):
both give the same detections as CPU tensors, and everything after them is this module's.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dask.delayed import delayed

from geoseg.backends.cache import ModelKey, get_backend
from geoseg.bands import BandStats, normalize
from geoseg.errors import ConfigError, GeoSegWarning
from geoseg.io.rasters import open_scene
from geoseg.models.maskrcnn import MaskRCNNConfig
from geoseg.models.meta import ModelMeta
from geoseg.predict.config import PredictConfig
from geoseg.predict.heap import releasing
from geoseg.predict.instances import Instances, fill_enclosed
from geoseg.predict.phases import owned_polygons
from geoseg.predict.plan import BlockPlan, read_window


@dataclass(frozen=True)
class MaskResult:
    """What :func:`maskrcnn_block` returns."""

    path: Path
    """The block's cached polygons (GPKG)."""
    model_s: float
    """Seconds in the model (0 when resumed from the cache)."""
    detections: int
    """Instances kept in the window before ownership (0 when resumed)."""
    any_valid: bool = True
    """The block's window holds a valid pixel (True when resumed: a scene without one warns)."""


def paste_mask(prob: torch.Tensor, box: torch.Tensor, shape: tuple[int, int], threshold: float
               ) -> tuple[slice, slice, np.ndarray] | None:
    """One mask of a detection pasted into its box only, as torchvision pastes it.

    The M × M probabilities get a one-pixel zero border and the box grows to match
    (``expand_masks``/``expand_boxes``), then they are resized bilinearly onto the box's
    pixels and thresholded.

    Args:
        prob: (M, M) mask probabilities of the detection.
        box: (4,) x0, y0, x1, y1 in window pixels.
        shape: (H, W) of the window.
        threshold: a pixel is the object's where the probability exceeds it.

    Returns:
        ``(rows, cols, mask)`` with ``mask`` bool of the box clipped to the window, or None
        when nothing of the box is inside.
    """
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    m, scale = expand_masks(prob[None, None], padding=1)
    x0, y0, x1, y1 = (int(v) for v in expand_boxes(box[None].float(), scale).to(torch.int64)[0])
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    full = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    r0, c0 = max(y0, 0), max(x0, 0)
    r1, c1 = min(y0 + h, shape[0]), min(x0 + w, shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    crop = full[r0 - y0:r1 - y0, c0 - x0:c1 - x0] > threshold
    return slice(r0, r1), slice(c0, c1), crop.numpy()


def detections_to_instances(det: dict[str, torch.Tensor], shape: tuple[int, int], cfg: MaskRCNNConfig,
                            *, min_area: int = 1, valid: np.ndarray | None = None) -> Instances:
    """The instance label image of one window's detections.

    Detections are taken best score first; those under ``cfg.score_threshold`` are dropped.
    Each claims the pixels of its mask (``> cfg.mask_threshold``, valid, not claimed by a
    better one); it is dropped when its mask overlaps an already kept instance with IoU
    above ``cfg.mask_nms_iou`` (mask NMS), or when fewer than ``min_area`` pixels are left.

    Args:
        det: one image's output of :meth:`MaskRCNNModel.detect` (``boxes``, ``scores``,
            ``labels``, ``masks``).
        shape: (H, W) of the window.
        cfg: the model's thresholds.
        min_area: smallest instance in pixels.
        valid: bool (H, W); invalid pixels belong to no instance, except a patch of them
            that one instance encloses, which joins it (as in the watershed:
            :func:`~geoseg.predict.instances.fill_enclosed`).

    Returns:
        :class:`~geoseg.predict.instances.Instances`: ``score`` the detection score,
        ``class_index`` the label − 1.
    """
    labels = np.zeros(shape, dtype=np.int32)
    score: list[float] = []
    cls: list[int] = []
    area: list[int] = []
    scores = det["scores"].float().cpu()
    order = torch.argsort(scores, descending=True, stable=True)
    for k in order.tolist():
        if float(scores[k]) < cfg.score_threshold:
            break
        pasted = paste_mask(det["masks"][k, 0].float().cpu(), det["boxes"][k].cpu(), shape, cfg.mask_threshold)
        if pasted is None:
            continue
        rows, cols, mask = pasted
        if valid is not None:
            mask &= valid[rows, cols]
        n_mask = int(mask.sum())
        if n_mask == 0:
            continue
        sub = labels[rows, cols]
        ids, inter = np.unique(sub[mask], return_counts=True)
        inter, ids = inter[ids > 0], ids[ids > 0]
        if len(ids):
            # the kept instance's mask is what it claimed (pixels of better ones excluded)
            iou = inter / (n_mask + np.asarray(area)[ids - 1] - inter)
            if float(iou.max()) > cfg.mask_nms_iou:
                continue
        new = mask & (sub == 0)
        if int(new.sum()) < max(min_area, 1):
            continue
        sub[new] = len(score) + 1
        score.append(float(scores[k]))
        cls.append(int(det["labels"][k]) - 1)
        area.append(int(new.sum()))
    areas = np.asarray(area, dtype=np.int64)
    if valid is not None and len(score):
        areas += fill_enclosed(labels, ~valid.astype(bool), len(score))
    return Instances(labels=labels, score=np.asarray(score, dtype=np.float64),
                     class_index=np.asarray(cls, dtype=np.int64), area=areas)


@releasing
def maskrcnn_block(plan: BlockPlan, bi: int, bj: int, model: ModelKey, stats: BandStats,
                   cfg: MaskRCNNConfig, classes: tuple[str, ...], simplify: float, min_area: float,
                   min_area_px: int) -> MaskResult:
    """Detect in block (bi, bj) plus its halo; keep and vectorize the instances it owns.

    Args:
        plan: the scene's block plan (``watershed_halo`` is the detection halo).
        bi: block row.
        bj: block column.
        model: the backend holding the Mask R-CNN model (torch, or onnx with a detect graph).
        stats: band statistics for normalisation.
        cfg: the model's config (thresholds).
        classes: class names.
        simplify: tolerance in metres.
        min_area: smallest polygon kept, in m².
        min_area_px: smallest instance in pixels (the training postprocess's ``min_area``).

    Returns:
        The block's :class:`MaskResult`.
    """
    out = plan.path("polys", bi, bj)
    if out.exists():
        return MaskResult(out, 0.0, 0)
    win = plan.grown(bi, bj, plan.watershed_halo)
    with open_scene(plan.scene) as src:  # at the predict GSD when it is not the scene's
        raw, valid = read_window(src, plan, win)
    x = normalize(raw, stats, valid=valid)
    backend = get_backend(model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        det = backend.detect(x[None])[0]
    model_s = time.perf_counter() - t0
    inst = detections_to_instances(det, valid.shape, cfg, min_area=min_area_px, valid=valid)
    path = owned_polygons(plan, bi, bj, inst, win, classes, simplify, min_area)
    return MaskResult(path, model_s, len(inst), bool(valid.any()))


def maskrcnn_graph(plans: list[BlockPlan], model: ModelKey, meta: ModelMeta, cfg: PredictConfig
                   ) -> tuple[list[Any], list[tuple[BlockPlan, int, int, Any]]]:
    """The Dask tasks of a Mask R-CNN predict run: one :func:`maskrcnn_block` per block.

    Returns:
        ``(tasks, final)`` as the routed graph of :func:`geoseg.predict.stage.predict` builds
        them: the block tasks (their :class:`MaskResult`) and, per block, the task giving
        its polygon file.

    Warns:
        GeoSegWarning: once, naming the routing options given that do not apply
            (``--budget``, ``--deadline-ms``, an explicit ``--ff-batch``, ``--tta``).

    Raises:
        ConfigError: ``--prob-out`` (Mask R-CNN has no probability map).
    """
    if cfg.prob_out:
        raise ConfigError(f"--prob-out {cfg.prob_out}: a Mask R-CNN model has no probability map; "
                          "drop --prob-out")
    unused = [name for name, given in (("--budget", cfg.budget is not None),
                                       ("--deadline-ms", cfg.deadline_ms is not None),
                                       ("--ff-batch", cfg.ff_batch != "auto"), ("--tta", cfg.tta != "none"))
              if given]
    if unused:
        warnings.warn(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to a Mask R-CNN "
                      "model (no routing, no FF, no dense maps to average): ignored", GeoSegWarning, stacklevel=3)
    mcfg = MaskRCNNConfig.model_validate({**meta.model, "weights": None})
    stats = meta.band_stats
    tasks: list[Any] = []
    final: list[tuple[BlockPlan, int, int, Any]] = []
    for plan in plans:
        for i, j in plan.owned():  # each block reads its own window with the halo: no ring needed
            res = delayed(maskrcnn_block, pure=False)(plan, i, j, model, stats, mcfg, meta.classes,
                                                      cfg.simplify, cfg.min_area, meta.postprocess.min_area)
            tasks.append(res)
            final.append((plan, i, j, delayed(_path, pure=False)(res)))
    return tasks, final


def _path(res: MaskResult) -> Path:
    return res.path
