"""Boxes from the head's maps, and box AP50 (validation of search training, benchmarks)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou, nms

from geoseg.models.refdet import decode


def detections(obj: torch.Tensor, dist: torch.Tensor, *, min_score: float = 0.3,
               nms_iou: float = 0.4, max_boxes: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes and scores of one image from its maps.

    Args:
        obj: (1, h, w) objectness logits.
        dist: (4, h, w) box distances in pixels.
        min_score: keep cells whose sigmoid score reaches this.
        nms_iou: non-maximum suppression threshold (torchvision.ops.nms).
        max_boxes: keep at most this many (highest scores).

    Returns:
        ``(boxes (N, 4) x0 y0 x1 y1 in pixels, scores (N,))``, by decreasing score.
    """
    scores = torch.sigmoid(obj.float()).reshape(-1)
    boxes = decode(dist.float())
    keep = scores >= min_score
    boxes, scores = boxes[keep], scores[keep]
    if len(scores) > 4 * max_boxes:
        top = torch.topk(scores, 4 * max_boxes).indices
        boxes, scores = boxes[top], scores[top]
    idx = nms(boxes, scores, nms_iou)[:max_boxes]
    return boxes[idx], scores[idx]


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
