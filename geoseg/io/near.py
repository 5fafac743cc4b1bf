"""The features of a large vector file near a few areas: a country's buildings for a few scenes.

A country's footprints hold millions of polygons of which a scene meets a few hundred.
:func:`read_near` reads only the features whose geometry meets the areas (OGR's spatial
filter, through a GeoPackage's R-tree or a FlatGeobuf's index), plus one column of every
feature without its geometry (the classes, and the row numbers that ``label_id`` keeps).
:func:`near_mask` is the same test on features already in memory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS

#: Areas (each with its CRS), as the callers hand them: the scenes' footprints.
Areas = Sequence[tuple[Any, shapely.Geometry]]
#: Areas whose boxes fill less than 1 / SPREAD of their envelope are read one group at a time.
SPREAD = 4.0
#: Layer geometry types whose every feature is a polygon or none (OGR's names, any dimension).
POLYGONAL = re.compile(r"^(Multi)?Polygon( Z| M| ZM)?$|^(Multi)?Polygon25D$", re.IGNORECASE)


def area_boxes(crs: Any, areas: Areas) -> list[shapely.Geometry] | None:
    """The areas' bounding boxes in ``crs``, each grown by 1 % of its larger side.

    The bounds are reprojected with their edges densified (a footprint's sides curve when
    reprojected). An area across the antimeridian (a scene of Fiji's Taveuni in UTM 60S)
    has two boxes in a geographic ``crs``, one each side of 180°: GDAL gives its bounds
    west > east, and one box from west to east would span the globe but the area. None
    when an area cannot be placed in ``crs`` (beyond its domain): the caller cannot judge
    nearness and keeps everything.

    Examples:
        >>> taveuni = ("EPSG:32760", shapely.box(819000, 8140000, 820000, 8141000))
        >>> [[round(v, 3) for v in b.bounds] for b in area_boxes("EPSG:4326", [taveuni])]
        [[179.992, -16.802, 180.0, -16.792], [-180.0, -16.802, -179.998, -16.792]]
    """
    from rasterio.warp import transform_bounds

    dst = CRS.from_user_input(crs)
    boxes = []
    for area_crs, area in areas:
        src = CRS.from_user_input(area_crs)
        try:
            x0, y0, x1, y1 = area.bounds if src == dst else transform_bounds(src.to_wkt(), dst.to_wkt(), *area.bounds)
        except Exception:  # GDAL finds no operation (a local engineering CRS...): cannot judge
            return None
        if not np.isfinite([x0, y0, x1, y1]).all():
            return None
        if x0 > x1 and dst.is_geographic:  # across the antimeridian
            pad = 0.01 * max(x1 + 360.0 - x0, y1 - y0)
            boxes += [shapely.box(x0 - pad, y0 - pad, 180.0, y1 + pad),
                      shapely.box(-180.0, y0 - pad, x1 + pad, y1 + pad)]
            continue
        pad = 0.01 * max(x1 - x0, y1 - y0)
        boxes.append(shapely.box(x0 - pad, y0 - pad, x1 + pad, y1 + pad))
    return boxes


def near_mask(geoms: np.ndarray, crs: Any, areas: Areas) -> np.ndarray:
    """Whether each geometry's envelope meets one of ``areas`` (each with its CRS; grown by 1 %) in ``crs``.

    All that clipping to the areas can keep, found on envelopes before anything is repaired
    (a country's footprints for a few scenes); an area beyond ``crs``'s domain keeps all.

    Examples:
        >>> geoms = np.array([shapely.box(0, 0, 1, 1), shapely.box(50, 50, 51, 51)])
        >>> near_mask(geoms, "EPSG:32636", [("EPSG:32636", shapely.box(0.5, 0.5, 3, 3))]).tolist()
        [True, False]
    """
    boxes = area_boxes(crs, areas)
    if boxes is None:
        return np.ones(len(geoms), dtype=bool)
    hit = np.zeros(len(geoms), dtype=bool)
    tree = shapely.STRtree(geoms)
    for box in boxes:
        hit[tree.query(box)] = True
    return hit


def rejoin_antimeridian(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """Polygons that were split at 180° (RFC 7946 GeoJSON, ``ogr2ogr -wrapdateline``) made whole again.

    In a geographic ``crs``, a feature whose parts touch both 180° and -180° has its western
    parts moved east by 360° and is unioned: its halves, which share the cut, are one polygon
    (with longitudes past 180°, which PROJ wraps when it reprojects). Its parts would
    otherwise be two objects (two training instances cut along the meridian). Other
    features, and every feature in a projected ``crs``, are returned as they are.

    Examples:
        >>> halves = shapely.MultiPolygon([shapely.box(179.9, 0, 180, 1), shapely.box(-180, 0, -179.9, 1)])
        >>> [round(v, 6) for v in rejoin_antimeridian(np.array([halves]), "EPSG:4326")[0].bounds]
        [179.9, 0.0, 180.1, 1.0]
    """
    out = np.array(geoms, dtype=object)
    if crs is None or not CRS.from_user_input(crs).is_geographic or not len(out):
        return out
    live = ~(shapely.is_missing(out) | shapely.is_empty(out))
    bounds = np.full((len(out), 4), np.nan)
    bounds[live] = shapely.bounds(out[live])
    for i in np.flatnonzero(live & (bounds[:, 0] <= -180.0 + 1e-9) & (bounds[:, 2] >= 180.0 - 1e-9)):
        parts = shapely.get_parts(out[i])
        if len(parts) < 2:  # one polygon around the globe: not a split
            continue
        lo, hi = shapely.bounds(parts)[:, 0], shapely.bounds(parts)[:, 2]
        west = hi <= 0.0
        if not (west & (lo <= -180.0 + 1e-9)).any() or not (~west & (hi >= 180.0 - 1e-9)).any():
            continue
        parts[west] = shapely.transform(parts[west], lambda xy: xy + (360.0, 0.0))
        out[i] = shapely.union_all(parts)
    return out


def _near_parquet(src: Path, named: str | None, subset: str | None,
                  areas: Areas) -> tuple[gpd.GeoDataFrame, Any] | None:
    """:func:`near_features` of a GeoParquet file with a bbox covering (:mod:`geoseg.io.parquet`)."""
    from geoseg.io.parquet import near_rows, parquet_info

    if (named is not None and named != src.stem) or subset is not None:  # the whole read's error says why
        return None
    info = parquet_info(src)
    boxes = area_boxes(info["crs"], areas) if info is not None else None
    if info is None or not boxes:
        return None
    near = near_rows(src, info, boxes)
    if not np.isin(shapely.get_type_id(near.geometry.to_numpy()), (3, 6)).any():  # no polygon near: the whole
        return None  # read's diagnosis (geometry types undeclared: points only, or polygons elsewhere)
    return near, info


def near_features(path: str | Path, role: str, layer: str | None, areas: Areas) -> tuple[gpd.GeoDataFrame, Any] | None:
    """The features of a polygon layer whose geometry meets one of ``areas``' boxes, and the layer's info.

    Read through OGR's spatial filter (a GeoPackage's R-tree, a FlatGeobuf's index), indexed
    by feature id, in its order: a subset of what :func:`near_mask` keeps and a superset of what clipping
    to the areas keeps; a GeoParquet file's by its bbox covering, indexed by row
    (:mod:`geoseg.io.parquet`). None, and the caller reads the whole file as before, where this
    read could differ from it or saves nothing: GeoParquet without a covering, a layer that may hold points or
    lines beside polygons, areas beyond the file's CRS, no feature near them (the caller's
    diagnosis needs them all), or a file that does not open (the whole read's error names it).
    """
    from geoseg.io.vectors import pick_layer, read_vector, split_source

    src, named, subset = split_source(path)
    if not src.exists():
        return None
    if src.suffix.lower() == ".parquet":
        return _near_parquet(src, layer if layer is not None else named, subset, areas)
    try:
        info = pyogrio.read_info(src, layer=pick_layer(src, role, layer if layer is not None else named))
        if info.get("crs") is None or CRS.from_user_input(info["crs"]).is_engineering:
            return None
    except Exception:  # the whole read says what is wrong with the file
        return None
    if not POLYGONAL.match(str(info.get("geometry_type"))):
        return None
    boxes = area_boxes(info["crs"], areas)
    if not boxes:
        return None
    union = shapely.union_all(boxes)
    parts = shapely.get_parts(union)
    if len(parts) > 1 and shapely.area(shapely.envelope(union)) > SPREAD * shapely.area(union):
        # scenes in several cities: OGR's index answers a filter's envelope, which would span the
        # country between them; one filter per group of scenes, a feature met by two read once
        frames = [read_vector(path, role, layer, mask=part) for part in parts]
        near = pd.concat(frames)
        near = near[~near.index.duplicated()]
    else:
        near = read_vector(path, role, layer, mask=union)
    return (near.sort_index(kind="stable"), info) if len(near) else None  # an R-tree answers in its own order


def read_near(
    path: str | Path, role: str, layer: str | None, areas: Areas, field: str | None,
) -> tuple[gpd.GeoDataFrame, pd.DataFrame] | None:
    """The features of a polygon layer near ``areas`` (:func:`near_features`), and one column of every feature.

    Returns ``(near, every)``: ``near`` in file order; ``every`` holds the ``field`` column
    (when the layer has it) of every feature, indexed by feature id in file order, read without geometries
    (Arrow): the classes, and the rows in the file that ``label_id`` keeps. None where
    :func:`near_features` is, or the feature ids are not unique.
    """
    from geoseg.io.vectors import split_source

    got = near_features(path, role, layer, areas)
    if got is None:
        return None
    near, info = got
    src, _, subset = split_source(path)
    columns = [field] if field is not None and field in list(info["fields"]) else []
    if "file" in info:  # GeoParquet: the row groups' column, not OGR
        from geoseg.io.parquet import every_row

        every = every_row(info, columns)
        return near.iloc[np.argsort(near.index.to_numpy(), kind="stable")], every
    try:
        every = pyogrio.read_dataframe(src, layer=info["layer_name"], columns=columns, read_geometry=False,
                                       fid_as_index=True, use_arrow=True, where=subset)
    except Exception:  # a driver without Arrow reading: the whole read, as before
        return None
    if not every.index.is_unique or not near.index.isin(every.index).all():
        return None
    return near.iloc[np.argsort(every.index.get_indexer(near.index), kind="stable")], every  # in file order


def split_antimeridian(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Polygons reprojected into degrees across 180° cut there into parts, as RFC 7946 writes them.

    A roof of a scene in UTM 60S (Fiji's Taveuni) on the meridian, reprojected to EPSG:4326,
    has corners at 179.9999° and -179.9999°: read as written, a polygon round the globe
    (what predict's GeoPackage held with ``--crs EPSG:4326``, exit 0). Each polygon whose
    longitudes span over 180° is unwrapped east of 180° and cut into its part east of the
    meridian and its part west of it, one MultiPolygon feature (:func:`rejoin_antimeridian`
    makes it whole again on reading). Frames in a projected CRS, and other features, are
    returned as they are.

    Examples:
        >>> roof = shapely.Polygon([(179.9, 0), (-179.9, 0), (-179.9, 1), (179.9, 1)])
        >>> out = split_antimeridian(gpd.GeoDataFrame(geometry=[roof], crs="EPSG:4326"))
        >>> sorted(tuple(round(v, 6) for v in p.bounds) for p in shapely.get_parts(out.geometry.iloc[0]))
        [(-180.0, 0.0, -179.9, 1.0), (179.9, 0.0, 180.0, 1.0)]
    """
    if gdf.crs is None or not CRS.from_user_input(gdf.crs).is_geographic or not len(gdf):
        return gdf
    geoms = gdf.geometry.to_numpy()
    live = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    bounds = np.full((len(geoms), 4), np.nan)
    bounds[live] = shapely.bounds(geoms[live])
    wide = np.flatnonzero(live & (bounds[:, 2] - bounds[:, 0] > 180.0))
    if not len(wide):
        return gdf
    out = geoms.copy()
    for i in wide:
        east = shapely.transform(geoms[i], lambda xy: np.where(xy[:, :1] < 0, xy + (360.0, 0.0), xy))
        here = shapely.intersection(east, shapely.box(-180.0, -90.0, 180.0, 90.0))
        over = shapely.affinity.translate(shapely.intersection(east, shapely.box(180.0, -90.0, 540.0, 90.0)), -360.0)
        parts = [p for g in (here, over) for p in shapely.get_parts(g) if p.geom_type == "Polygon" and p.area > 0]
        out[i] = shapely.MultiPolygon(parts) if parts else geoms[i]
    gdf = gdf.copy()
    gdf[gdf.geometry.name] = gpd.GeoSeries(out, index=gdf.index, crs=gdf.crs)
    return gdf
