"""Boxes from the head's maps, the similarity threshold and box AP50 (search validation, benchmarks)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torchvision.ops import box_iou, nms

from geoseg.models.refdet import decode

#: the default ``--min-score`` of `geoseg search`, at which training calibrates ``--min-similarity``
MIN_SCORE = 0.3


class Detections(NamedTuple):
    """The boxes of one image, by decreasing score."""

    boxes: torch.Tensor  #: (N, 4) x0 y0 x1 y1 in pixels
    scores: torch.Tensor  #: (N,) sigmoid objectness
    similarity: torch.Tensor  #: (N,) cosine of the box cell's kind embedding with the examples' (0 without map)


def detections(obj: torch.Tensor, dist: torch.Tensor, sim: torch.Tensor | None = None, *,
               min_score: float = MIN_SCORE, min_similarity: float | None = None,
               nms_iou: float = 0.4, max_boxes: int = 1000) -> Detections:
    """Boxes, scores and similarities of one image from its maps.

    Args:
        obj: (1, h, w) objectness logits.
        dist: (4, h, w) box distances in pixels.
        sim: (1, h, w) similarity (cosine) map, or None.
        min_score: keep cells whose sigmoid score reaches this.
        min_similarity: and whose similarity reaches this (None: no similarity gate).
        nms_iou: non-maximum suppression threshold (torchvision.ops.nms).
        max_boxes: keep at most this many (highest scores).
    """
    scores = torch.sigmoid(obj.float()).reshape(-1)
    boxes = decode(dist.float())
    sims = sim.float().reshape(-1) if sim is not None else torch.zeros_like(scores)
    keep = scores >= min_score
    if min_similarity is not None and sim is not None:
        keep &= sims >= min_similarity
    boxes, scores, sims = boxes[keep], scores[keep], sims[keep]
    if len(scores) > 4 * max_boxes:
        top = torch.topk(scores, 4 * max_boxes).indices
        boxes, scores, sims = boxes[top], scores[top], sims[top]
    idx = nms(boxes, scores, nms_iou)[:max_boxes]
    return Detections(boxes[idx], scores[idx], sims[idx])


def calibrate_similarity(sims: np.ndarray, hits: np.ndarray, n_truth: int) -> tuple[float | None, float]:
    """The similarity threshold that maximises F1 of pooled detections, and that F1.

    Detections are kept when their similarity reaches the threshold; ``hits`` says which
    are true positives (the examples' kind, IoU >= 0.5). The threshold is halfway between
    the last similarity kept and the next one below, so it does not sit on a sample.

    Returns:
        ``(threshold, f1)``; threshold None when keeping every detection is best.
    """
    if len(sims) == 0 or n_truth == 0:
        return None, 0.0
    order = np.argsort(-sims, kind="stable")
    s, h = sims[order], hits[order]
    tp = np.cumsum(h)
    f1 = 2 * tp / (np.arange(1, len(s) + 1) + n_truth)
    last = np.flatnonzero(s[:-1] > s[1:])  # the prefixes that a threshold can cut
    cuts = np.append(last, len(s) - 1)
    best = int(cuts[np.argmax(f1[cuts])])
    if best == len(s) - 1:
        return None, float(f1[best])
    return float((s[best] + s[best + 1]) / 2), float(f1[best])


def match(pred: torch.Tensor, truth: torch.Tensor, iou: float = 0.5) -> np.ndarray:
    """Greedy one-to-one matching of score-sorted ``pred`` (N, 4) to ``truth`` (M, 4).

    Returns:
        (N,) bool: whether each prediction matches a truth box at ``iou`` or more.
    """
    hit = np.zeros(len(pred), dtype=bool)
    if len(pred) == 0 or len(truth) == 0:
        return hit
    ious = box_iou(pred.float(), truth.float()).numpy()
    used = np.zeros(len(truth), dtype=bool)
    for i in range(len(pred)):
        cand = np.where(~used & (ious[i] >= iou))[0]
        if len(cand):
            j = cand[np.argmax(ious[i, cand])]
            used[j] = hit[i] = True
    return hit


def average_precision(scores: np.ndarray, hits: np.ndarray, n_truth: int) -> float:
    """All-point interpolated AP (VOC 2010+/COCO style) of pooled detections.

    Args:
        scores: (N,) scores of all detections.
        hits: (N,) whether each is a true positive.
        n_truth: number of truth boxes.

    Returns:
        AP in [0, 1] (0 without truth).
    """
    if n_truth == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = tp / n_truth
    precision = tp / np.maximum(tp + fp, 1)
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.sum((r[1:] - r[:-1]) * p[1:]))
