"""Validation metrics on val chips: COCO mask AP (pycocotools), pixel IoU, instance F1.

Instance F1@0.5 matches predicted and true instances one to one, greedily by mask IoU.
Vectorizing a label raster with ``rasterio.features.shapes`` is exact (pixel-edge
polygons), so this equals the polygon F1 of the unsimplified predicted polygons.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from geoseg.errors import GeoSegWarning
from geoseg.matching import EPS, match_by_iou
from geoseg.models.postprocess import PostprocessConfig, probabilities
from geoseg.predict.instances import Instances, instances_from_probs
from geoseg.tile.labels import encode_rle


def val_image_ids(coco: COCO, ann_path: Path) -> list[int]:
    """The val chips to score each epoch; none (with a warning) when there is nothing to score.

    Val chips without one labelled object score AP 0 at every epoch, so the first epoch
    would stay the best and ``best.pt`` an untrained model: training then runs without
    validation, ``best.pt`` being the last epoch, as without val chips.
    """
    ids = [i for i, im in coco.imgs.items() if im.get("split") == "val"]
    if ids and not coco.getAnnIds(imgIds=ids):
        warnings.warn(f"the {len(ids)} validation chips of {ann_path} hold no labelled object: nothing to score "
                      "(AP would be 0 every epoch and best.pt an early one); training without validation, "
                      "checkpoints/best.pt is the last epoch; tile with val_scenes or a val_fraction that "
                      "puts labelled land in validation", GeoSegWarning, stacklevel=3)
        return []
    if not ids:
        warnings.warn(f"no validation chips in {ann_path}: training without validation, checkpoints/best.pt is "
                      "the last epoch; tile with val_fraction > 0 or val_scenes to validate", GeoSegWarning,
                      stacklevel=3)
    return ids


def best_text(best: dict[str, Any]) -> str:
    """The run summary's words for ``best.pt``: its metric and epoch, or that nothing validated it.

    Examples:
        >>> best_text({"metric": "ap", "value": 0.4213, "epoch": 12})
        'best ap 0.421 at epoch 12'
        >>> best_text({"metric": "ap", "value": float("nan"), "epoch": 3})
        'best.pt is the last epoch, 3 (no validation)'
    """
    value = float(best["value"])
    if not np.isfinite(value) or value < 0:
        return f"best.pt is the last epoch, {best['epoch']} (no validation)"
    return f"best {best['metric']} {value:.3f} at epoch {best['epoch']}"


def greedy_match(ious: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one matches (pred, truth, iou) of an IoU matrix: :func:`geoseg.matching.match_by_iou`.

    Examples:
        >>> greedy_match(np.array([[0.9, 0.6], [0.7, 0.2]]), 0.5)
        [(0, 0, 0.9)]
    """
    p, t = np.nonzero(ious >= threshold - EPS)
    iou = ious[p, t]
    k = np.flatnonzero(match_by_iou(p, t, iou, threshold))
    k = k[np.argsort(-iou[k], kind="stable")]  # best match first
    return [(int(p[i]), int(t[i]), float(iou[i])) for i in k]


def _as_rle(seg: dict[str, Any]) -> dict[str, Any]:
    counts = seg["counts"]
    return {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


class Validator:
    """Accumulates predictions of val chips and computes the metrics.

    Args:
        coco: the ground truth (``annotations.json`` of the patches directory).
        image_ids: the val image ids.
        post: watershed thresholds.
        iou: IoU threshold of the F1 match.
    """

    def __init__(self, coco: COCO, image_ids: Iterable[int], post: PostprocessConfig,
                 iou: float = 0.5) -> None:
        self.coco = coco
        self.image_ids = sorted(image_ids)
        self.post = post
        self.iou = iou
        self.results: list[dict[str, Any]] = []
        self.tp = self.fp = self.fn = 0
        self.inter = 0
        self.union = 0

    def add(self, image_id: int, logits: np.ndarray, valid: np.ndarray | None) -> None:
        """Add the logits (C, H, W) of one val chip (already cropped to its size)."""
        probs = probabilities(logits)
        inst = instances_from_probs(probs, self.post, valid)
        self.add_instances(image_id, inst, probs[0] > self.post.extent_threshold, valid)

    def add_instances(self, image_id: int, inst: Instances, foreground: np.ndarray,
                      valid: np.ndarray | None) -> None:
        """Add the instances of one val chip (of any model family) and its foreground (H, W) bool."""
        cat_ids = sorted(self.coco.getCatIds())
        pred_rles = []
        for i in range(len(inst)):
            seg = encode_rle(inst.labels == i + 1)
            pred_rles.append(_as_rle(seg))
            self.results.append({"image_id": image_id, "category_id": cat_ids[int(inst.class_index[i])],
                                 "segmentation": seg, "score": float(inst.score[i])})
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id]))
        gt_rles = [_as_rle(a["segmentation"]) for a in anns]
        ious = (np.asarray(mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles)))
                if pred_rles and gt_rles else np.zeros((len(pred_rles), len(gt_rles))))
        n_match = len(greedy_match(ious.reshape(len(pred_rles), len(gt_rles)), self.iou))
        self.tp += n_match
        self.fp += len(pred_rles) - n_match
        self.fn += len(gt_rles) - n_match
        truth = np.zeros(foreground.shape, dtype=bool)
        for r in gt_rles:
            truth |= mask_utils.decode(r).astype(bool)
        pred = foreground
        v = np.ones_like(truth) if valid is None else valid
        self.inter += int((pred & truth & v).sum())
        self.union += int(((pred | truth) & v).sum())

    def metrics(self) -> dict[str, float]:
        """``ap`` (mask AP@[.5:.95]), ``ap50``, ``iou`` (extent), ``precision``, ``recall``, ``f1``."""
        ap = ap50 = 0.0
        if self.results:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                dt = self.coco.loadRes(self.results)
                ev = COCOeval(self.coco, dt, "segm")
                ev.params.imgIds = self.image_ids
                ev.params.maxDets = [10, 100, 1000]
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            ap, ap50 = max(float(ev.stats[0]), 0.0), max(float(ev.stats[1]), 0.0)
        precision = self.tp / max(self.tp + self.fp, 1)
        recall = self.tp / max(self.tp + self.fn, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        return {"ap": ap, "ap50": ap50, "iou": self.inter / max(self.union, 1),
                "precision": precision, "recall": recall, "f1": f1}


@torch.no_grad()
def run_validation(model: torch.nn.Module, loader: Iterable[dict[str, Any]], coco: COCO,
                   image_ids: Iterable[int], post: PostprocessConfig, device: torch.device,
                   budget: float | None = None) -> dict[str, float]:
    """Predict every val batch and compute the metrics (model in eval mode).

    Args:
        model: a routed model.
        loader: batches of val chips (``image``, ``valid``, ``image_id``).
        coco: ground truth.
        image_ids: ids of the val images (the loader's).
        post: watershed thresholds.
        device: where the model runs.
        budget: router budget at validation (None: the model's).
    """
    was_training = model.training
    model.eval()
    val = Validator(coco, image_ids, post)
    for batch in loader:
        out = model(batch["image"].to(device), budget=budget)
        logits = out.logits.float().cpu().numpy()
        for k, image_id in enumerate(batch["image_id"]):
            info = coco.imgs[int(image_id)]
            h, w = info["height"], info["width"]
            valid = batch["valid"][k, :h, :w].numpy()
            val.add(int(image_id), logits[k, :, :h, :w], valid)
    model.train(was_training)
    return val.metrics()
