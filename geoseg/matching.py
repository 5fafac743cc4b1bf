"""Greedy one-to-one matching of predicted and true objects, shared by evaluation and training.

:func:`candidate_pairs` finds the polygon pairs worth matching (IoU computed vectorised);
:func:`duplicates` uses it to find the labels drawn twice, :func:`overlapping` those mostly
inside another.

Both :mod:`geoseg.evaluate` (polygons) and :mod:`geoseg.train.metrics` (masks of val
chips) count a match the SpaceNet way: candidate pairs sorted by IoU descending, each
taken when neither its prediction nor its truth is taken yet, at IoU >= a threshold.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import shapely

#: IoU is compared with a threshold to this tolerance (80/120 >= 2/3 whatever the rounding).
EPS = 1e-9

#: Two polygons of one class overlapping at this IoU or more are one object drawn twice.
DUPLICATE_IOU = 0.9


def class_mismatch(pred: Iterable[str], truth: Iterable[str]) -> str | None:
    """Why classes of the predictions cannot match those of the truth, or None.

    Matches are made within a class: a class spelled ``building`` by the model and
    ``Building`` by the truth gives that class F1 0 and counts its objects as misses.

    Examples:
        >>> print(class_mismatch(["building", "tree"], ["Building ", "tree"])[:61])
        classes differ only in case or spaces between the predictions
        >>> class_mismatch(["building"], ["building", "tree"]) is None
        True
    """
    p, t = set(pred), set(truth)
    pairs = [(a, b) for a in sorted(p - t) for b in sorted(t - p) if a.strip().casefold() == b.strip().casefold()]
    if pairs:
        shown = ", ".join(f"{a!r} and {b!r}" for a, b in pairs[:3])
        return (f"classes differ only in case or spaces between the predictions and the truth ({shown}): they never "
                "match each other; give both one spelling (QGIS Field Calculator), or match regardless of class with "
                "--class-field none")
    if p and t and not p & t:
        return (f"no class is in both inputs ({sorted(p)[:5]} vs {sorted(t)[:5]}): nothing can match; check the "
                "class field, or match regardless of class with --class-field none")
    return None


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


def _box_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Area of the overlap of each pair's bounding boxes: a bound on their intersection, without GEOS.

    Examples:
        >>> _box_overlap(np.array([shapely.box(0, 0, 4, 4)]), np.array([shapely.box(2, 3, 9, 9)])).tolist()
        [2.0]
    """
    ba, bb = shapely.bounds(a), shapely.bounds(b)
    return np.asarray(np.clip(np.minimum(ba[:, 2], bb[:, 2]) - np.maximum(ba[:, 0], bb[:, 0]), 0, None)
                      * np.clip(np.minimum(ba[:, 3], bb[:, 3]) - np.maximum(ba[:, 1], bb[:, 1]), 0, None))


def candidate_pairs(pred: np.ndarray, truth: np.ndarray, pred_class: np.ndarray | None = None,
                    truth_class: np.ndarray | None = None, *,
                    min_iou: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every same-class (pred, truth) pair with IoU > ``min_iou``, IoU computed vectorised.

    Pairs come from an STRtree query; those whose IoU cannot exceed ``min_iou`` by their
    bounding boxes alone (neighbours that merely touch) are dropped before the costly
    exact intersection.

    Returns:
        Indices into ``pred`` and ``truth``, and the IoU of each pair.

    Examples:
        >>> p, t, iou = candidate_pairs(np.array([shapely.box(2, 0, 12, 10)]),
        ...                             np.array([shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10)]))
        >>> p.tolist(), t.tolist(), iou.round(4).tolist()
        ([0], [0], [0.6667])
    """
    pi, ti = shapely.STRtree(truth).query(pred, predicate="intersects")
    if pred_class is not None and truth_class is not None:
        same = pred_class[pi] == truth_class[ti]
        pi, ti = pi[same], ti[same]
    area_p, area_t = shapely.area(pred), shapely.area(truth)
    if min_iou > 0 and len(pi):
        # the intersection is at most the smaller area and the overlap of the boxes
        most = np.minimum(_box_overlap(pred[pi], truth[ti]), np.minimum(area_p[pi], area_t[ti]))
        hope = most >= min_iou * (area_p[pi] + area_t[ti] - most) * (1 - 1e-9)
        pi, ti = pi[hope], ti[hope]
    inter = shapely.area(shapely.intersection(pred[pi], truth[ti]))
    union = area_p[pi] + area_t[ti] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    keep = iou > min_iou
    return pi[keep].astype(np.int64), ti[keep].astype(np.int64), iou[keep]


def duplicates(geoms: np.ndarray, classes: np.ndarray | None = None, iou: float = DUPLICATE_IOU) -> np.ndarray:
    """Indices of the polygons that repeat an earlier one (same class, IoU >= ``iou``).

    The first of each group is kept: a building mapped twice (an OpenStreetMap import over
    hand-mapped footprints) is one object. Kept twice, tile's training targets mark all of
    it as contact between two instances (so the model learns to find no seed there), and
    evaluation can match only one of the two.

    Examples:
        >>> a, b = shapely.box(0, 0, 10, 10), shapely.box(0, 0, 10, 10.5)
        >>> duplicates(np.array([a, b, shapely.box(5, 0, 15, 10)])).tolist()
        [1]
    """
    if len(geoms) < 2:
        return np.zeros(0, dtype=np.int64)
    i, j, _ = candidate_pairs(geoms, geoms, classes, classes, min_iou=iou - EPS)
    later = j > i
    return np.unique(j[later]).astype(np.int64)


#: Two polygons of one class (not duplicates) whose intersection covers over this share of
#: the smaller one: one lies mostly inside the other.
NESTED_SHARE = 0.5


def overlapping(geoms: np.ndarray, classes: np.ndarray | None = None,
                share: float = NESTED_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of one class whose intersection covers over ``share`` of the smaller.

    Footprints of two sources merged (OpenStreetMap over Microsoft's, one building offset by
    a metre in one of them), or a building's parts drawn over it: each is a training instance
    and their shared pixels are taught as contact between two objects; in evaluation a
    prediction matches one of them only. Polygons that merely touch or share a sliver (row
    houses, neighbouring crowns) are not such pairs; run after :func:`duplicates`.

    Examples:
        >>> big, inside, beside = shapely.box(0, 0, 10, 10), shapely.box(2, 2, 6, 6), shapely.box(9, 0, 19, 10)
        >>> [p.tolist() for p in overlapping(np.array([big, inside, beside]))]
        [[0], [1]]
    """
    if len(geoms) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = i < j
    if classes is not None:
        keep &= classes[i] == classes[j]
    i, j = i[keep], j[keep]
    area = shapely.area(geoms)
    small = np.minimum(area[i], area[j])
    hope = _box_overlap(geoms[i], geoms[j]) > share * small  # the intersection is at most the boxes' overlap
    i, j, small = i[hope], j[hope], small[hope]
    inter = shapely.area(shapely.intersection(geoms[i], geoms[j])) if len(i) else np.zeros(0)
    over = inter > share * small
    return i[over].astype(np.int64), j[over].astype(np.int64)


def counted_once(geoms: np.ndarray, classes: np.ndarray, role: str) -> np.ndarray:
    """Indices of ``geoms`` to evaluate, each object once.

    A polygon repeating another of its class (:func:`duplicates`) is dropped; both that and
    polygons mostly inside another (:func:`overlapping`) are warned of.
    """
    import logging

    log = logging.getLogger("geoseg.evaluate")
    twice = duplicates(geoms, classes)
    if len(twice):  # one object mapped twice: a prediction can match one of them only
        log.warning("%d %s polygons repeat another of their class (IoU >= %g) and count once", len(twice), role,
                    DUPLICATE_IOU)
    keep = np.setdiff1d(np.arange(len(geoms)), twice)
    _, j = overlapping(geoms[keep], classes[keep])
    if len(j):
        log.warning("%d %s polygons lie over half inside another of their class: a prediction can match one of "
                    "each pair only; if a pair is one object (two sources merged), keep one", len(np.unique(j)), role)
    return keep
