"""Predicted polygons against truth polygons: SpaceNet F1, COCO-style AP, boundary IoU.

Each part of a MultiPolygon feature is an object of its own, as ``geoseg tile`` makes one
training instance per part (``multipart="whole"``: every feature one object, its parts
together); a truth polygon that repeats another of its class (IoU >= 0.9: mapped twice)
counts once, with a warning.
Geometries are repaired with ``make_valid`` and their polygonal parts kept; features
with no area left are dropped (logged).

Numbers, all in one plain dict (see :data:`KEYS`):

- ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``, ``mean_iou``: SpaceNet
  matching: one-to-one, greedy by IoU descending; a pair is a match at IoU >= ``iou``.
  ``mean_iou`` is the mean IoU of the matches.
- ``ap``, ``ap50``, ``ap75``: COCO-style average precision over polygons. Predictions
  are ranked by their ``score`` column (all 1 when there is none); at each IoU
  threshold 0.50:0.05:0.95 each prediction in turn takes the unmatched truth of highest
  IoU above the threshold (pycocotools' rule); AP is the mean of the interpolated
  precision at recalls 0:0.01:1. ``ap`` is the mean over the 10 thresholds. No
  ``maxDets`` cap: a file is one big image.
- ``boundary_iou``: mean over the matches of the boundary IoU of Cheng et al. 2021
  (https://arxiv.org/abs/2103.16562) in vector form: the IoU of the inner bands
  ``poly - poly.buffer(-d)`` of the two polygons, with ``d`` = 2 % of the diagonal of
  the pair's joint bounding box, or a fixed ``boundary_width`` in metres.

- ``vertices``, ``truth_vertices``, ``vertex_ratio``, ``rectangularity``,
  ``truth_rectangularity``: the outline quality of the matches (:mod:`geoseg.outlines`:
  median corners, mean area over the minimum rotated rectangle's).

With a class column in both inputs, matches are only made within a class, ``per_class``
holds the numbers of each class, and the overall ``tp``/``fp``/``fn`` are their sums;
the overall ``ap*`` are the mean over the classes that have truth (as COCO). A ratio
with a zero denominator is 0.0 (scikit-learn's ``zero_division=0``).

Lengths and areas are computed in the CRS of the predictions (truth is reprojected to
it; after ``--clip`` or a projected ``--aoi``, in the area's CRS) when it is projected in
metres, or in the UTM zone of the data when that CRS is geographic, in feet, or a
(non-transverse) Mercator, whose metres are not ground metres
(:func:`geoseg.io.ground.metric_crs`; a compound CRS is judged by its horizontal part).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from geoseg.errors import InputVectorError
from geoseg.io.classes import class_values
from geoseg.io.datums import to_crs
from geoseg.io.ground import metric_crs
from geoseg.io.near import Areas, near_features
from geoseg.io.vectors import NO_FIELD, bounds_text, polygonal, read_vector, require_polygons, split_layer
from geoseg.matching import EPS, candidate_pairs, class_mismatch, counted_once, greedy, match_by_iou
from geoseg.outlines import OUTLINE_KEYS, pair_measures, summarize

log = logging.getLogger(__name__)

#: The numbers of a report, in table order; ``per_class`` maps class -> the same keys.
KEYS = ("tp", "fp", "fn", "precision", "recall", "f1", "mean_iou", "ap", "ap50", "ap75", "boundary_iou")
#: Every key of a report (and of each class): KEYS, then the outline quality of the matched
#: pairs (:mod:`geoseg.outlines`: vertices, vertex_ratio, rectangularity, ...).
REPORT_KEYS = KEYS + OUTLINE_KEYS
#: COCO IoU thresholds 0.50, 0.55, ..., 0.95 (each the double nearest the decimal).
THRESHOLDS = (50 + 5 * np.arange(10)) / 100
RECALLS = np.linspace(0.0, 1.0, 101)


def read_polygons(path: str | Path, role: str = "polygon", near: Areas | None = None) -> gpd.GeoDataFrame:
    """Read a vector file (anything pyogrio reads) that has geometries and a CRS.

    ``near``: areas (each with its CRS); a polygon layer is read only where it meets them
    (:func:`geoseg.io.near.near_features`: a country's truth for a few scenes), else whole.

    Raises:
        InputVectorError: see :func:`geoseg.io.vectors.read_vector`; features and no polygon
            among them (points, lines: :func:`geoseg.io.vectors.require_polygons`).
    """
    got = near_features(path, role, None, near) if near else None
    gdf = got[0].reset_index(drop=True) if got is not None else read_vector(path, role)
    require_polygons(gdf, split_layer(path)[0], role)
    gdf.attrs["source"] = str(path)  # for the messages of evaluate_frames (pandas carries attrs along)
    return gdf


#: ``multipart`` values: each part an object (as tile trains), or each feature one object.
MULTIPART = ("parts", "whole")


def _prepare(gdf: gpd.GeoDataFrame, crs: CRS, role: str, multipart: str) -> gpd.GeoDataFrame:
    gdf = to_crs(gdf, crs, f"the {role} polygons")  # warns where PROJ lacks a datum grid
    geoms = polygonal(gdf.geometry.to_numpy())
    keep = np.array([g is not None for g in geoms], dtype=bool)
    if not keep.all():
        log.warning("%d %s features have no polygonal area and are ignored", int((~keep).sum()), role)
    rows, geoms = np.flatnonzero(keep), geoms[keep]
    if multipart == "parts" and len(geoms):
        geoms, owner = shapely.get_parts(geoms, return_index=True)
        if len(geoms) > len(rows):
            log.info("%d %s features have several parts: each part is an object (%d objects from %d "
                     "features; --multipart whole keeps a feature one object)",
                     int((np.bincount(owner) > 1).sum()), role, len(geoms), len(rows))
        rows = rows[owner]
    out = gdf.iloc[rows].copy()
    out.geometry = gpd.GeoSeries(geoms, index=out.index, crs=crs)
    return out.reset_index(drop=True)


def match_by_score(pi: np.ndarray, ti: np.ndarray, iou: np.ndarray, rank: np.ndarray,
                   threshold: float) -> np.ndarray:
    """COCO matching: predictions by rank, each takes the free truth of highest IoU >= threshold.

    Args:
        pi: prediction index of each candidate pair (see :func:`candidate_pairs`).
        ti: truth index of each pair.
        iou: IoU of each pair.
        rank: rank of each prediction (0 = highest score).
        threshold: IoU threshold.

    Returns:
        bool per pair: whether it is a match.
    """
    ok = np.flatnonzero(iou >= threshold - EPS)
    order = ok[np.lexsort((ti[ok], -iou[ok], rank[pi[ok]]))]
    return greedy(pi, ti, order)


def average_precision(matched: np.ndarray, rank: np.ndarray, n_truth: int) -> float:
    """COCO 101-point interpolated AP of ranked predictions.

    Args:
        matched: bool per prediction: is it a true positive.
        rank: rank of each prediction (0 = highest score).
        n_truth: number of truth objects.

    Examples:
        >>> average_precision(np.array([True, False, True]), np.array([0, 1, 2]), 2)  # doctest: +ELLIPSIS
        0.83...
    """
    if n_truth == 0 or len(matched) == 0:
        return 0.0
    tp = np.cumsum(matched[np.argsort(rank, kind="stable")])
    recall = tp / n_truth
    precision = tp / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    idx = np.searchsorted(recall, RECALLS, side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


def boundary_iou(a: np.ndarray, b: np.ndarray, width: float | None = None) -> np.ndarray:
    """Boundary IoU (Cheng et al. 2021) of polygon pairs, in vector form.

    The boundary band of a polygon is ``poly - poly.buffer(-d)``: its points closer than
    ``d`` to its outline. ``d`` is ``width`` (CRS units) or, when None, 2 % of the
    diagonal of the pair's joint bounding box (the paper's 2 % of the image diagonal,
    per object here since a map has no image).

    Examples:
        >>> sq = shapely.box(0, 0, 10, 10)
        >>> boundary_iou(np.array([sq]), np.array([sq]), width=1.0).tolist()
        [1.0]
        >>> lower = shapely.box(0, 0, 10, 9)  # bands of 36 and 34, sharing 26: 26 / 44
        >>> float(boundary_iou(np.array([sq]), np.array([lower]), width=1.0)[0])
        0.5909090909090909
    """
    if len(a) == 0:
        return np.zeros(0)
    if width is None:
        bounds = np.concatenate([shapely.bounds(a), shapely.bounds(b)], axis=1)
        w = bounds[:, [2, 6]].max(1) - bounds[:, [0, 4]].min(1)
        h = bounds[:, [3, 7]].max(1) - bounds[:, [1, 5]].min(1)
        d = 0.02 * np.hypot(w, h)
    else:
        d = np.full(len(a), float(width))
    band_a = shapely.difference(a, shapely.buffer(a, -d))
    band_b = shapely.difference(b, shapely.buffer(b, -d))
    inter = shapely.area(shapely.intersection(band_a, band_b))
    union = shapely.area(band_a) + shapely.area(band_b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def _summary(pairs: np.ndarray, iou: np.ndarray, biou: np.ndarray, n_pred: int, n_truth: int,
             aps: np.ndarray, shape: np.ndarray) -> dict[str, Any]:
    tp = int(len(pairs))
    fp, fn = n_pred - tp, n_truth - tp
    return {
        "tp": tp, "fp": fp, "fn": fn,
        "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mean_iou": float(iou[pairs].mean()) if tp else 0.0,
        "ap": float(aps.mean()), "ap50": float(aps[0]), "ap75": float(aps[5]),
        "boundary_iou": float(biou[pairs].mean()) if tp else 0.0,
        **summarize(shape[pairs]),
    }


def evaluate_frames(
    pred: gpd.GeoDataFrame,
    truth: gpd.GeoDataFrame,
    *,
    iou: float = 0.5,
    class_field: str = "class",
    score_field: str = "score",
    boundary_width: float | None = None,
    multipart: str = "parts",
) -> dict[str, Any]:
    """Compare predicted with true polygons (see the module docstring for the metrics).

    Args:
        pred: predicted polygons; ``score_field`` ranks them for AP when present.
        truth: true polygons, in any CRS (reprojected to that of ``pred``).
        iou: IoU at which a pair counts as a match for tp/fp/fn.
        class_field: class column; per-class numbers when both frames have it; ``"none"``: classes ignored.
        score_field: confidence column of ``pred`` (all 1 when absent, with a warning: AP
            then ranks the predictions in file order).
        boundary_width: band width of boundary IoU in metres; None: 2 % of each pair's
            bounding-box diagonal.
        multipart: ``parts``: each part of a MultiPolygon is an object, as tile trains;
            ``whole``: each feature is one object.

    Returns:
        JSON-able dict with the :data:`KEYS` and ``per_class`` (class -> the same keys;
        empty when the evaluation is class-agnostic).

    Raises:
        InputVectorError: a frame has no CRS, or non-numeric scores; a ``class_field`` other
            than ``"class"`` that neither frame has.
        ValueError: ``iou`` is not in (0, 1].
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    if multipart not in MULTIPART:
        raise ValueError(f"multipart must be one of {MULTIPART}, got {multipart!r}")
    for role, gdf in (("prediction", pred), ("truth", truth)):
        if gdf.crs is None:
            raise InputVectorError(f"the {role} polygons have no CRS; set one with gdf.set_crs(...)")
    crs = metric_crs(pred if len(pred) else truth, pred.crs)  # ground metres: the boundary width, outlines
    pred, truth = _prepare(pred, crs, "prediction", multipart), _prepare(truth, crs, "truth", multipart)
    if boundary_width is not None:
        boundary_width /= crs.axis_info[0].unit_conversion_factor  # metres -> CRS units

    if score_field in pred.columns:
        try:
            scores = pd.to_numeric(pred[score_field]).to_numpy(dtype=np.float64)
        except (ValueError, TypeError):
            raise InputVectorError(f"prediction column '{score_field}' is not numeric; "
                                   "give each polygon a numeric confidence") from None
    else:  # another tool's predictions: AP ranks them in file order (said at the end, once the inputs passed)
        scores = np.ones(len(pred))
    rank = np.empty(len(pred), dtype=np.int64)
    rank[np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")] = np.arange(len(pred))

    named = class_field.lower() != NO_FIELD  # none: every prediction may match every truth
    by_class = named and class_field in pred.columns and class_field in truth.columns
    if named and class_field != "class" and class_field not in pred.columns and class_field not in truth.columns:
        raise InputVectorError(f"neither the predictions nor the truth has a column '{class_field}' (the "
                               "class field); name one they have, or leave it out to match every class")
    if named and not by_class and (class_field in pred.columns or class_field in truth.columns):
        (log.warning if class_field != "class" else log.info)(
            "only one input has a '%s' column: matching ignores classes", class_field)
    sources = [f"{role} {g.attrs.get('source', '')}".strip() for g, role in ((pred, "predictions"), (truth, "truth"))]
    pcls = class_values(pred, class_field, sources[0]) if by_class else np.zeros(len(pred), dtype=str)
    tcls = class_values(truth, class_field, sources[1]) if by_class else np.zeros(len(truth), dtype=str)
    keep = counted_once(truth.geometry.to_numpy(), tcls, "truth")  # an object mapped twice counts once
    truth, tcls = truth.iloc[keep].reset_index(drop=True), tcls[keep]

    pg, tg = pred.geometry.to_numpy(), truth.geometry.to_numpy()
    if len(pg) and len(tg) and not shapely.box(*pred.total_bounds).intersects(shapely.box(*truth.total_bounds)):
        log.warning("the predictions (bounds %s) and the truth (bounds %s; both in %s) do not "
                    "overlap: nothing can match; check that each file's CRS is the one its coordinates are in",
                    bounds_text(pred), bounds_text(truth), pred.crs.to_string())
    elif len(pg) and len(tg):
        warn_beyond(pg, tg)
    # pairs below both thresholds can never match: skip them early
    pi, ti, pair_iou = candidate_pairs(pg, tg, pcls, tcls, min_iou=min(iou, THRESHOLDS[0]) - 2 * EPS)
    matched = match_by_iou(pi, ti, pair_iou, iou)
    biou = np.zeros(len(pi))
    biou[matched] = boundary_iou(pg[pi[matched]], tg[ti[matched]], boundary_width)
    shape = np.zeros((len(pi), 4))  # outline quality of the matched pairs
    shape[matched] = pair_measures(pg[pi[matched]], tg[ti[matched]])
    tp_at = np.zeros((len(THRESHOLDS), len(pred)), dtype=bool)  # COCO matches per threshold
    for k, thr in enumerate(THRESHOLDS):
        tp_at[k, pi[match_by_score(pi, ti, pair_iou, rank, thr)]] = True

    classes = sorted(set(pcls) | set(tcls))
    per_class: dict[str, dict[str, Any]] = {}
    class_aps = []
    for c in classes:
        pm, n_truth = pcls == c, int((tcls == c).sum())
        aps = np.array([average_precision(tp_at[k, pm], rank[pm], n_truth) for k in range(len(THRESHOLDS))])
        if n_truth:
            class_aps.append(aps)
        per_class[c] = _summary(np.flatnonzero(matched & (pcls[pi] == c)), pair_iou, biou,
                                int(pm.sum()), n_truth, aps, shape)
    aps = np.mean(class_aps, axis=0) if class_aps else np.zeros(len(THRESHOLDS))
    report = _summary(np.flatnonzero(matched), pair_iou, biou, len(pred), len(truth), aps, shape)
    report["per_class"] = per_class if by_class else {}
    if by_class and (why := class_mismatch(pcls, tcls)):
        log.warning("%s", why)
    if score_field not in pred.columns and len(pred):
        likely = [c for c in pred.columns if str(c).lower() in ("confidence", "conf", "prob", "probability")]
        log.warning("the predictions have no '%s' column: ap, ap50 and ap75 rank them in file order (F1 and the "
                    "others stand); name their confidence column with --score-field%s", score_field,
                    f" ({likely[0]}?)" if likely else "")
    return report


def warn_beyond(pg: np.ndarray, tg: np.ndarray, share: float = 0.05) -> None:
    """Warn when many objects of one side lie far beyond the other side's extent (in metres).

    Truth mapped over one district against predictions over the whole scene: the
    predictions beyond count as false positives and precision is too low; truth over a
    city against one scene's predictions: recall is too low. Far is a tenth of the other
    side's extent (its box's diagonal) beyond its box; more than ``share`` of a side, and
    at least 5 objects, warns.
    """
    for side, other, text in (
            (pg, tg, "predictions lie over %.0f m beyond the truth's extent: if the truth was mapped only there, "
                     "they count as false positives and precision is too low; evaluate inside the mapped area "
                     "with --aoi AREA_FILE"),
            (tg, pg, "truth polygons lie over %.0f m beyond the predictions' extent: if the scenes predicted do "
                     "not reach them, they count as misses and recall is too low; clip the truth to the scenes "
                     "with --scenes SCENES --clip")):
        x0, y0, x1, y1 = shapely.total_bounds(other)
        margin = 0.1 * float(np.hypot(x1 - x0, y1 - y0))
        far = int((~shapely.intersects(side, shapely.box(x0, y0, x1, y1).buffer(margin))).sum())
        if far >= max(5, share * len(side)):
            log.warning("%d of %d " + text, far, len(side), margin)


def evaluate(
    pred: str | Path,
    truth: str | Path,
    *,
    iou: float = 0.5,
    class_field: str = "class",
    boundary_width: float | None = None,
    multipart: str = "parts",
) -> dict[str, Any]:
    """Compare a file of predicted polygons with a file of true polygons (``FILE|layername=L`` for a layer).

    Args:
        pred: vector file of predictions (e.g. the output of ``geoseg predict``).
        truth: vector file of true polygons, any CRS.
        iou: IoU at which a pair counts as a match.
        class_field: class column; per-class numbers when both files have it.
        boundary_width: band width of boundary IoU in metres (None: 2 % of the diagonal).
        multipart: ``parts`` (each part of a MultiPolygon an object) or ``whole``.

    Returns:
        See :func:`evaluate_frames`.

    Raises:
        InputVectorError: a file is missing, unreadable, or has no CRS.
    """
    pred_gdf = read_polygons(pred, "prediction")
    truth_gdf = read_polygons(truth, "truth")
    return evaluate_frames(pred_gdf, truth_gdf, iou=iou, class_field=class_field,
                           boundary_width=boundary_width, multipart=multipart)


def format_report(report: dict[str, Any]) -> str:
    """An aligned text table of a report: one row overall, one per class.

    Examples:
        >>> row = dict.fromkeys(KEYS, 0.0) | {"tp": 3, "fp": 1, "fn": 0, "precision": 0.75,
        ...                                   "recall": 1.0, "f1": 0.857}
        >>> print(format_report(row | {"per_class": {}}))
        class  tp  fp  fn  precision  recall     f1  mean_iou     ap   ap50   ap75  boundary_iou
        all     3   1   0      0.750   1.000  0.857     0.000  0.000  0.000  0.000         0.000
    """
    rows = [("all", report)] + [(str(c), r) for c, r in report.get("per_class", {}).items()]
    text = _table(rows, KEYS)
    if all(k in report for k in OUTLINE_KEYS):
        text += "\noutline of the matched pairs (median corners, mean rectangularity):\n" + _table(rows, OUTLINE_KEYS)
    return text


def _table(rows: list[tuple[str, dict[str, Any]]], keys: tuple[str, ...]) -> str:
    table = [["class", *keys]] + [
        [name, *(str(r[k]) if k in ("tp", "fp", "fn") else f"{r[k]:.3f}" for k in keys)] for name, r in rows]
    widths = [max(len(row[j]) for row in table) for j in range(len(table[0]))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)
