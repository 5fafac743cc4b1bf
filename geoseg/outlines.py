"""Outline quality of polygons: corner counts and rectangularity, as `geoseg evaluate` reports.

A pixel-traced building has a staircase outline with many corners where its true
footprint has 4; a regularized one (``geoseg predict --regularize``) gets closer. For
the matched (prediction, truth) pairs of an evaluation:

- ``vertices`` / ``truth_vertices``: the median number of corners of the predicted /
  true polygons (every ring, holes included; repeated and collinear points are not
  corners);
- ``vertex_ratio``: the median over the pairs of predicted over true corners (1 is
  as simple as the truth);
- ``rectangularity`` / ``truth_rectangularity``: the mean over the pairs of area over the
  area of the minimum rotated rectangle (1 for a rectangle, 0.785 for a circle,
  lower for ragged or L-shaped outlines).

Every number is 0.0 when there is no matched pair.
"""

from __future__ import annotations

import numpy as np
import shapely

#: The keys :func:`summarize` returns, in report order.
OUTLINE_KEYS = ("vertices", "truth_vertices", "vertex_ratio", "rectangularity", "truth_rectangularity")


#: Points closer than this (metres) to the line through their neighbours are not corners: the
#: vertices that clipping to a densified footprint leaves along a straight edge are collinear
#: only up to floating-point error.
CORNER_TOLERANCE = 0.01


def corners(geoms: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Number of corners of each (Multi)Polygon.

    The vertices of every ring, less repeated and collinear points (within ``tolerance``,
    in the geometries' units) and each ring's closing point.

    Examples:
        >>> sq = shapely.Polygon([(0, 0), (1, 0), (2, 0), (2, 2), (0, 2), (0, 2)])  # a collinear, a repeat
        >>> corners(np.array([sq, shapely.box(0, 0, 5, 5).difference(shapely.box(1, 1, 2, 2))])).tolist()
        [4, 8]
    """
    geoms = np.asarray(geoms, dtype=object)
    clean = shapely.simplify(shapely.remove_repeated_points(geoms), tolerance)  # drops collinear points
    parts, part_owner = shapely.get_parts(clean, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    out = np.zeros(len(geoms), dtype=np.int64)
    np.add.at(out, part_owner[ring_part], shapely.get_num_coordinates(rings) - 1)
    return out


def rectangularity(geoms: np.ndarray) -> np.ndarray:
    """Area over the area of the minimum rotated rectangle, per geometry (0 when empty).

    Examples:
        >>> ell = shapely.Polygon([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)])
        >>> rectangularity(np.array([shapely.box(0, 0, 3, 1), ell])).tolist()
        [1.0, 0.75]
    """
    geoms = np.asarray(geoms, dtype=object)
    area = shapely.area(geoms)
    rect = shapely.area(shapely.oriented_envelope(geoms))
    return np.divide(area, rect, out=np.zeros(len(geoms)), where=rect > 0)


def pair_measures(pred: np.ndarray, truth: np.ndarray, tolerance: float = CORNER_TOLERANCE) -> np.ndarray:
    """Per pair: predicted corners, true corners, predicted and true rectangularity.

    The geometries are in a metric CRS; ``tolerance`` (metres) is :func:`corners`'.

    Returns:
        float64 (n, 4), columns in that order.
    """
    return np.column_stack([corners(pred, tolerance), corners(truth, tolerance), rectangularity(pred),
                            rectangularity(truth)]
                           ).astype(np.float64).reshape(len(pred), 4)


def summarize(measures: np.ndarray) -> dict[str, float]:
    """The :data:`OUTLINE_KEYS` of pairs given by :func:`pair_measures` (0.0 with none).

    Examples:
        >>> m = pair_measures(np.array([shapely.box(0, 0, 2, 1)]), np.array([shapely.box(0, 0, 2, 1)]))
        >>> summarize(m)["vertex_ratio"], summarize(m[:0])["vertices"]
        (1.0, 0.0)
    """
    if len(measures) == 0:
        return dict.fromkeys(OUTLINE_KEYS, 0.0)
    ratio = measures[:, 0] / np.maximum(measures[:, 1], 1)
    return {
        "vertices": float(np.median(measures[:, 0])),
        "truth_vertices": float(np.median(measures[:, 1])),
        "vertex_ratio": float(np.median(ratio)),
        "rectangularity": float(measures[:, 2].mean()),
        "truth_rectangularity": float(measures[:, 3].mean()),
    }
