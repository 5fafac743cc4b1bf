"""Instance labels to georeferenced polygons (written by :mod:`geoseg.io.formats`).

Polygons are traced in *pixel* space (``rasterio.features.shapes``, 4-connected), where
every vertex is an exact integer pixel corner, simplified there, and only then mapped
through the affine transform. Tracing in pixel space makes the polygons of touching
instances an exact coverage (shared edges have identical vertices after
``segmentize(1 px)``), which ``shapely.coverage_simplify`` needs to simplify neighbours
without gaps or overlaps between them.

Areas are geodesic (``pyproj.Geod`` on WGS84), so ``area_m2`` is right whatever the
CRS: UTM, Web Mercator (whose projected areas are ``1 / cos²(lat)`` too large) or
longitude/latitude.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer
from rasterio.features import shapes
from shapely.geometry import shape

# the writer lives in geoseg.io.formats (every output format); re-exported here
from geoseg.io.formats import DRIVERS as DRIVERS
from geoseg.io.formats import VectorFormatError as VectorFormatError
from geoseg.io.formats import vector_driver as vector_driver
from geoseg.io.formats import write_vector as write_vector
from geoseg.io.ground import metres_per_pixel
from geoseg.io.vectors import polygonal_parts

log = logging.getLogger(__name__)

_GEOD = Geod(ellps="WGS84")
_WGS84 = CRS.from_epsg(4326)
HAS_COVERAGE_SIMPLIFY = hasattr(shapely, "coverage_simplify")


def geodesic_area(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """Area in m² of each polygon on the WGS84 ellipsoid, whatever the CRS.

    Coordinates are transformed to longitude/latitude in one vectorised call; only the
    per-ring area (``Geod.polygon_area_perimeter``, in C) runs in a loop over rings.

    Args:
        geoms: Polygons or MultiPolygons (other types count 0).
        crs: their CRS (anything ``pyproj.CRS.from_user_input`` takes).

    Returns:
        float64 array, one area per geometry (holes subtracted).

    Examples:
        >>> sq = shapely.box(500000, 0, 500100, 100)  # 100 m square on a UTM central meridian
        >>> round(float(geodesic_area(np.array([sq]), "EPSG:32636")[0]), 1)  # / 0.9996²
        10008.0
    """
    geoms = np.asarray(geoms, dtype=object)
    polys, owner = shapely.get_parts(geoms, return_index=True)
    rings, ring_poly = shapely.get_rings(polys, return_index=True)
    out = np.zeros(len(geoms))
    if len(rings) == 0:
        return out
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    lon, lat = Transformer.from_crs(CRS.from_user_input(crs), _WGS84, always_xy=True).transform(
        coords[:, 0], coords[:, 1])
    starts = np.searchsorted(ring_of, np.arange(len(rings) + 1))
    ring_area = np.array([abs(_GEOD.polygon_area_perimeter(lon[a:b], lat[a:b])[0])
                          for a, b in zip(starts[:-1], starts[1:], strict=True)])
    exterior = np.r_[True, ring_poly[1:] != ring_poly[:-1]]  # first ring of each polygon
    np.add.at(out, owner[ring_poly], np.where(exterior, ring_area, -ring_area))
    return out


def _trace(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polygons of each label in pixel coordinates, one per label (pieces merged).

    A label in several 4-connected pieces (never made by the watershed, possible in
    hand-made or stitched labels) keeps only its largest piece, logged.
    """
    feats = shapes(labels, mask=labels > 0, connectivity=4)
    pairs = [(shape(geom), int(value)) for geom, value in feats]
    if not pairs:
        return np.array([], dtype=object), np.array([], dtype=np.int64)
    geoms = np.array([g for g, _ in pairs], dtype=object)
    values = np.array([v for _, v in pairs], dtype=np.int64)
    uniq, first, counts = np.unique(values, return_index=True, return_counts=True)
    out = geoms[first]
    split = 0
    for i in np.flatnonzero(counts > 1):  # only labels shapes() returned in pieces
        merged = shapely.union_all(geoms[values == uniq[i]])
        if merged.geom_type == "MultiPolygon":
            split += 1
            merged = max(merged.geoms, key=lambda p: p.area)
        out[i] = merged
    if split:
        log.info("%d instances were in disconnected pieces; kept the largest piece of each", split)
    return out, uniq


def _simplify_px(geoms: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Simplify pixel-space polygons, keeping shared edges shared when shapely can."""
    if HAS_COVERAGE_SIMPLIFY:
        # Every vertex on a pixel corner: the polygons form an exact, edge-matched coverage.
        return np.asarray(shapely.coverage_simplify(shapely.segmentize(geoms, 1.0), tolerance_px))
    return np.asarray(shapely.simplify(geoms, tolerance_px, preserve_topology=True))


def _to_crs_coords(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = transform[:6]
    return np.asarray(shapely.transform(
        geoms, lambda xy: np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])))


def instances_to_frame(
    labels: np.ndarray,
    transform: Affine,
    crs: Any,
    *,
    score: Sequence[float] | np.ndarray | None = None,
    class_index: Sequence[int] | np.ndarray | None = None,
    class_names: Sequence[str] = ("object",),
    simplify: float = 0.0,
    min_area_px: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> gpd.GeoDataFrame:
    """One valid Polygon (holes kept) per instance of a label raster, with attributes.

    Args:
        labels: integer (H, W); 0 is background, instance ``i`` has pixels ``== i``.
        transform: affine transform of ``labels`` (pixel corner -> CRS coordinates).
        crs: CRS of the transform; the frame gets it unchanged.
        score: per instance, ``score[i - 1]`` for label ``i``; 1.0 when None.
        class_index: per instance index into ``class_names``; 0 when None.
        class_names: name of each class index.
        simplify: tolerance in ground **metres** (converted to pixels at the raster
            centre, so it means the same in UTM, EPSG:3857 or degrees); 0 keeps the exact
            pixel outlines. With shapely >= 2.1 this is ``coverage_simplify``
            (Visvalingam-Whyatt: removes details of about ``simplify`` metres, never
            opening gaps between touching instances), else ``simplify(preserve_topology=True)``
            (Douglas-Peucker distance) on each polygon.
        min_area_px: instances with fewer pixels are dropped.
        extra: more columns: a scalar for every row (e.g. ``{"scene": "a.tif"}``) or
            one value per instance (indexed like ``score``).

    Returns:
        GeoDataFrame with columns ``class``, ``score``, ``area_m2`` (geodesic), the
        extras, and ``geometry``, one row per kept instance in label order, in ``crs``.

    Raises:
        ValueError: ``score``/``class_index`` are shorter than the largest label, or a
            class index has no name.

    Notes:
        ``rasterio.features.shapes`` holds the traced polygons in memory; call this per
        output block (as predict does), not on a whole scene at once.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W), got shape {labels.shape}")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise ValueError("labels exceed int32; vectorize smaller blocks")
    labels = labels.astype(np.int32, copy=False)
    n = int(labels.max()) if labels.size else 0
    score_arr = np.ones(n) if score is None else np.asarray(score, dtype=np.float64)
    cls_arr = np.zeros(n, np.int64) if class_index is None else np.asarray(class_index, dtype=np.int64)
    for name, arr in (("score", score_arr), ("class_index", cls_arr)):
        if len(arr) < n:
            raise ValueError(f"{name} has {len(arr)} values but labels go up to {n}; pass one per instance")
    if n and (cls_arr[:n].min() < 0 or cls_arr[:n].max() >= len(class_names)):
        raise ValueError(f"class_index outside 0..{len(class_names) - 1}; give a name to every class")

    geoms, values = _trace(labels)
    if min_area_px > 0 and len(values):
        px = np.bincount(labels.ravel(), minlength=n + 1)
        keep = px[values] >= min_area_px
        geoms, values = geoms[keep], values[keep]
    if simplify > 0 and len(geoms):
        tol_px = simplify / metres_per_pixel(transform, crs, labels.shape)
        geoms = _simplify_px(geoms, tol_px)
    geoms = _to_crs_coords(geoms, transform)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms[bad] = _largest_polygons(geoms[bad])

    idx = values - 1
    columns: dict[str, Any] = {
        "class": pd.array(np.asarray(class_names, dtype=object)[cls_arr[idx]] if len(idx) else [],
                          dtype=object),
        "score": score_arr[idx],
        "area_m2": geodesic_area(geoms, crs),
    }
    for key, value in (extra or {}).items():
        if isinstance(value, str | bytes) or np.ndim(value) == 0:
            columns[key] = value  # the same for every row
        elif len(value) < n:
            raise ValueError(f"extra column {key!r} has {len(value)} values for {n} instances")
        else:
            columns[key] = np.asarray(value)[idx]
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)


def _largest_polygons(geoms: np.ndarray) -> np.ndarray:
    """The largest Polygon of each repaired geometry (:func:`polygonal_parts`); empty if none."""
    parts, owner = polygonal_parts(geoms)
    out = np.array([shapely.Polygon()] * len(geoms), dtype=object)
    order = np.lexsort((-shapely.area(parts), owner))  # by owner, largest first
    owners, first = np.unique(owner[order], return_index=True)
    out[owners] = parts[order[first]]
    return out
