"""Greedy one-to-one matching of predicted and true objects, shared by evaluation and training.

Both :mod:`geoseg.evaluate` (polygons) and :mod:`geoseg.train.metrics` (masks of val
chips) count a match the SpaceNet way: candidate pairs sorted by IoU descending, each
taken when neither its prediction nor its truth is taken yet, at IoU >= a threshold.
"""

from __future__ import annotations

import numpy as np

#: IoU is compared with a threshold to this tolerance (80/120 >= 2/3 whatever the rounding).
EPS = 1e-9


def greedy(pi: np.ndarray, ti: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Pairs taken one-to-one in ``order``: a pair is kept when both ends are still free.

    Args:
        pi: prediction index of each candidate pair.
        ti: truth index of each pair.
        order: the pairs to consider (indices into ``pi``), in priority order.

    Returns:
        bool per pair: whether it was taken.
    """
    out = np.zeros(len(pi), dtype=bool)
    pi, ti = pi[order], ti[order]
    taken = np.zeros(len(order), dtype=bool)
    if len(np.unique(pi)) == len(pi) and len(np.unique(ti)) == len(ti):
        taken[:] = True  # no conflicts (the usual case at IoU >= 0.5): nothing to arbitrate
    else:
        used_p: set[int] = set()
        used_t: set[int] = set()
        for k, (p, t) in enumerate(zip(pi.tolist(), ti.tolist(), strict=True)):
            if p not in used_p and t not in used_t:
                used_p.add(p)
                used_t.add(t)
                taken[k] = True
    out[order] = taken
    return out


def match_by_iou(pi: np.ndarray, ti: np.ndarray, iou: np.ndarray, threshold: float) -> np.ndarray:
    """SpaceNet matching: one-to-one, greedy by IoU descending, pairs at IoU >= threshold.

    Ties are broken by prediction index, then truth index.

    Args:
        pi: prediction index of each candidate pair.
        ti: truth index of each pair.
        iou: IoU of each pair.
        threshold: a pair can match at IoU >= threshold.

    Returns:
        bool per pair: whether it is a match.

    Examples:
        >>> match_by_iou(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([0.9, 0.6, 0.7]), 0.5).tolist()
        [True, False, True]
    """
    ok = np.flatnonzero(iou >= threshold - EPS)
    order = ok[np.lexsort((ti[ok], pi[ok], -iou[ok]))]
    return greedy(pi, ti, order)
