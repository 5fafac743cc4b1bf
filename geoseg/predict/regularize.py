"""Building regularization: outlines squared to their dominant directions, in metres.

The pixel-traced polygons of :mod:`geoseg.predict.vectorize` follow the raster's
staircase. Regularization (``geoseg predict --regularize``) squares them, each alone:

- a near-rectangle (area / minimum rotated rectangle >= ``rectangle``, 0.75 by default)
  becomes the rectangle, in the orientation of its minimum rotated rectangle, with its
  centroid, its area and the proportions of its second moments of area
  (:func:`_moment_rectangles`);
- any other outline (an L, a T, a courtyard) gets its edges snapped to its main direction
  and the perpendicular one (45° edges allowed when the outline has them) and parallel
  edges closer than the tolerance merged, by buildingregulariser (MIT, built on geopandas
  and numpy: the algorithm of ArcGIS's "Regularize Building Footprint"), so an L keeps its
  6 corners.

Both run in a metric CRS (:func:`geoseg.io.ground.metric_crs`): the polygons' own when it is projected
in metres and not a Mercator (whose metres are not ground metres; a compound CRS is judged by its
horizontal part), else the local UTM zone, so the tolerance is ground metres
whatever the CRS; the result is mapped back. Each row keeps its attributes (``area_m2``
is recomputed). Squaring never moves an outline far from what the model saw: a
rectangle that overlaps the traced outline by IoU < ``min_iou`` (0.8) gives way to the
edge-snapped outline, and that one, when it too is below, or invalid, or empty, to the
traced outline (repaired and reduced to its largest polygon, as vectorize does; logged).
Touching neighbours are regularized independently and may overlap by up to about the
tolerance.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS

from geoseg.io.ground import metric_crs
from geoseg.io.vectors import polygonal_parts
from geoseg.outlines import rectangularity

if TYPE_CHECKING:
    from geoseg.io.rasters import SceneInfo

log = logging.getLogger(__name__)


def regularize(
    gdf: gpd.GeoDataFrame,
    *,
    tolerance: float = 1.0,
    allow_45: bool = True,
    rectangle: float = 0.75,
    min_iou: float = 0.8,
) -> gpd.GeoDataFrame:
    """Square each polygon's outline to its dominant directions.

    Args:
        gdf: polygons (one object per row) with a CRS.
        tolerance: ground metres: steps, jogs and wiggles smaller than this are squared
            away (buildingregulariser's ``parallel_threshold``; its initial simplification
            uses half of it).
        allow_45: keep edges at 45° to the main direction where the outline has them.
        rectangle: outlines at least this rectangular become a rectangle (1.0: none).
        min_iou: a squared outline must overlap the traced one by at least this IoU
            (else the next candidate: rectangle, edge-snapped, traced).

    Returns:
        A copy of ``gdf``, same rows, order, columns and CRS, with regularized outlines
        (valid Polygons); ``area_m2``, when present, is recomputed.

    Raises:
        ValueError: ``gdf`` has no CRS, or ``tolerance`` is not positive.
    """
    if gdf.crs is None:
        raise ValueError("polygons without a CRS cannot be regularized in metres; set one with gdf.set_crs()")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive (metres), got {tolerance}")
    out = gdf.copy()
    if not len(gdf):
        return out
    work = metric_crs(gdf)
    source = gdf.geometry.to_crs(work).to_numpy()
    repaired = _one_polygon_per_row(np.arange(len(source)), source, len(source))
    squared = np.array([shapely.Polygon()] * len(gdf), dtype=object)
    near = np.flatnonzero(rectangularity(repaired) >= rectangle)
    squared[near] = _moment_rectangles(repaired[near])
    square = _close_enough(squared, repaired, min_iou)
    # edge snapping, only where no rectangle will do (outlines are snapped each alone)
    snapped = _snap(source[~square], np.flatnonzero(~square), len(gdf), work, tolerance, allow_45)
    result = repaired.copy()
    snap = _close_enough(snapped, repaired, min_iou)
    result[snap] = snapped[snap]
    result[square] = squared[square]
    kept = int(np.sum(result == repaired))
    if kept:
        log.info("%d of %d polygons kept their traced outline: squaring them moved them below "
                 "IoU %.2f or left no valid polygon", kept, len(result), min_iou)
    out.geometry = gpd.GeoSeries(result, crs=work, index=gdf.index).to_crs(gdf.crs)
    if "area_m2" in out.columns:
        from geoseg.predict.vectorize import geodesic_area

        out["area_m2"] = geodesic_area(out.geometry.to_numpy(), out.crs)
    return out


def _snap(geoms: np.ndarray, rows: np.ndarray, n: int, crs: CRS, tolerance: float,
          allow_45: bool) -> np.ndarray:
    """The edge-snapped outlines (buildingregulariser) of ``geoms``, at rows ``rows`` of ``n``; empty elsewhere."""
    if not len(geoms):
        return np.array([shapely.Polygon()] * n, dtype=object)
    from buildingregulariser import regularize_geodataframe

    frame = gpd.GeoDataFrame({"_row": rows}, geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)
    with warnings.catch_warnings():  # it warns about the invalid inputs it then repairs
        warnings.simplefilter("ignore")
        done = regularize_geodataframe(
            frame, parallel_threshold=tolerance, simplify=True, simplify_tolerance=tolerance / 2,
            allow_45_degree=allow_45, allow_circles=False, num_cores=1,
        )
    return _one_polygon_per_row(done["_row"].to_numpy(), done.geometry.to_numpy(), n)


def _close_enough(candidate: np.ndarray, reference: np.ndarray, min_iou: float) -> np.ndarray:
    """Valid non-empty candidates whose IoU with the reference is at least ``min_iou``."""
    ok = ~shapely.is_empty(candidate) & shapely.is_valid(candidate) & ~shapely.is_empty(reference)
    inter = np.zeros(len(candidate))
    union = np.ones(len(candidate))
    inter[ok] = shapely.area(shapely.intersection(candidate[ok], reference[ok]))
    union[ok] = shapely.area(shapely.union(candidate[ok], reference[ok]))
    return np.asarray(ok & (inter >= min_iou * union))


def _moment_rectangles(polys: np.ndarray) -> np.ndarray:
    """The rectangle of each polygon's centroid, area and spread, in its envelope's orientation.

    Along each side direction of the minimum rotated rectangle, the side's share is the one
    a rectangle needs to have the polygon's second moment of area about its centroid
    (``L = sqrt(12 I / A)``, exact for a rectangle); the sides are then scaled to the
    polygon's area. A staircase outline's envelope runs along its outermost pixels, so
    the envelope scaled to the area keeps its proportions and its centre, both off when
    one side is ragged; the moments follow the mass of the outline. Moments come from the
    vertices (Green's theorem, holes included).
    """
    out: np.ndarray = np.asarray(shapely.oriented_envelope(polys), dtype=object)
    box = np.flatnonzero((shapely.get_type_id(out) == shapely.GeometryType.POLYGON)
                         & (shapely.get_type_id(polys) == shapely.GeometryType.POLYGON) & (shapely.area(polys) > 0))
    if not len(box):
        return out
    corners = np.stack([shapely.get_coordinates(shapely.get_exterior_ring(e))[:4] for e in out[box]])
    axes = np.stack([corners[:, 1] - corners[:, 0], corners[:, 3] - corners[:, 0]], 1)  # (n, 2 sides, 2)
    axes /= np.linalg.norm(axes, axis=2, keepdims=True)
    oriented = shapely.orient_polygons(polys[box])  # exterior counter-clockwise, holes clockwise
    centre = shapely.get_coordinates(shapely.centroid(oriented))
    rings, owner = shapely.get_rings(oriented, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    own = owner[ring]
    local = np.einsum("pk,pak->pa", xy - centre[own], axes[own])  # coordinates along the two sides
    edge = ring[:-1] == ring[1:]  # consecutive vertices of one ring (each ring is closed)
    a, b, o = local[:-1][edge], local[1:][edge], own[:-1][edge]
    cross = a[:, 0] * b[:, 1] - b[:, 0] * a[:, 1]
    area = np.bincount(o, cross / 2, minlength=len(box))
    second = np.stack([np.bincount(o, cross * (a[:, i] ** 2 + a[:, i] * b[:, i] + b[:, i] ** 2) / 12,
                                   minlength=len(box)) for i in (0, 1)], 1)
    half = np.sqrt(np.maximum(3 * second / area[:, None], 0))  # L / 2 = sqrt(12 I / A) / 2
    # scaled to the polygon's area (``area`` is signed: the sides may make a left-handed frame)
    half *= np.sqrt(np.abs(area) / np.maximum(4 * half[:, 0] * half[:, 1], 1e-12))[:, None]
    hu, hv = axes[:, 0] * half[:, :1], axes[:, 1] * half[:, 1:]
    out[box] = shapely.polygons(np.stack([centre - hu - hv, centre + hu - hv, centre + hu + hv,
                                          centre - hu + hv], 1))
    return out


def _one_polygon_per_row(rows: np.ndarray, geoms: np.ndarray, n: int) -> np.ndarray:
    """The largest valid Polygon of the pieces each input row became; empty where none."""
    result = np.array([shapely.Polygon()] * n, dtype=object)
    if not len(geoms):
        return result
    parts, owner = polygonal_parts(np.asarray(geoms, dtype=object))
    if not len(parts):
        return result
    row = np.asarray(rows)[owner]
    order = np.lexsort((-shapely.area(parts), row))  # by row, largest piece first
    rows_u, first = np.unique(row[order], return_index=True)
    result[rows_u] = parts[order[first]]
    return result


def square_tolerance(tolerance: float, scene: SceneInfo) -> float:
    """The regularization tolerance for a scene: ``tolerance`` metres, at least two of its pixels.

    A traced outline's staircase has steps of one pixel, and buildingregulariser squares a
    diagonal's steps away from a tolerance of about two pixels. Under that (a 1 m tolerance
    on 10 m pixels) every step stays an edge to square: no square outline, and tens of
    seconds per polygon. At the GSD of building imagery (0.5 m and finer) the default 1 m is
    at or above the floor (a floor within 5 % of ``tolerance`` leaves it).

    Examples:
        >>> from geoseg.io.rasters import SceneInfo
        >>> from dataclasses import replace
        >>> s = SceneInfo("a.tif", "a", 4, 4, 3, "uint8", "EPSG:32636", (10.0, 0, 0, 0, -10.0, 0), None, False, 10.0)
        >>> square_tolerance(1.0, s), square_tolerance(1.0, replace(s, gsd=0.3))
        (20.0, 1.0)
    """
    floor = PIXELS_SQUARED * scene.gsd
    return floor if math.isfinite(floor) and floor > 1.05 * tolerance else tolerance  # not for a geodesic 0.5002 m


#: The least regularization tolerance, in pixels of the scene (:func:`square_tolerance`).
PIXELS_SQUARED = 2.0


def regularize_file(path: str | Path, tolerance: float, classes: Collection[str] | None = None) -> Path:
    """The polygons of one vector file (a predict block's cache), regularized (:func:`regularize`).

    With ``classes``, only the rows of those classes (column ``class``) are squared; the
    others keep their traced outline (a tree crown is not a rectangle).

    Predict runs it as one Dask task per block, so squaring outlines runs in parallel (on a
    cluster, on the workers) instead of on the whole output at the end.

    Returns:
        A file beside ``path`` (``<stem>.square.gpkg``) holding the squared polygons; the
        block's own cache is kept as traced (a rerun with another tolerance starts from it).
    """
    from geoseg.io.formats import write_vector

    path = Path(path)
    gdf = gpd.read_file(path)
    squared = path.with_name(f"{path.stem}.square.gpkg")
    pick = np.ones(len(gdf), bool) if classes is None else gdf["class"].isin(list(classes)).to_numpy()
    if pick.any():
        done = regularize(gdf[pick], tolerance=tolerance)
        geoms = gdf.geometry.to_numpy().copy()
        geoms[pick] = done.geometry.to_numpy()
        gdf[gdf.geometry.name] = gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs)
        if "area_m2" in gdf.columns:
            gdf.loc[pick, "area_m2"] = done["area_m2"].to_numpy()
    write_vector(gdf, squared, layer=path.stem)
    return squared
