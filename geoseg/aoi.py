"""Areas that an evaluation is restricted to: scene footprints and AOI files.

`geoseg evaluate --clip` compares only inside the footprint of the predicted scenes
(truth elsewhere could not have been found); `--aoi FILE` only inside the polygons of a
file. Both inputs are clipped the same way, so an object cut by the edge is compared
with the part of the other that the edge keeps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.features import shapes
from rasterio.windows import Window
from skimage.morphology import remove_small_holes

from geoseg.errors import InputRasterError, InputVectorError
from geoseg.io.datums import to_crs
from geoseg.io.frames import warn_zero_frames
from geoseg.io.near import area_boxes, near_mask
from geoseg.io.rasters import SceneInfo, check_grid, no_georef_warning, window_footprint
from geoseg.io.sources import open_raster
from geoseg.io.vectors import polygonal, polygonal_parts, read_vector

#: The valid-data mask of a scene is read decimated to at most this long side.
MASK_SIDE = 1024
#: Masked specks smaller than this share of the mask (isolated transparent pixels of a
#: mosaic, say) are not cut out of the footprint: clipping both sides around them would only
#: punch holes in roofs and add staircase corners to the outlines compared.
SPECK = 0.005

log = logging.getLogger(__name__)


def scene_footprint(path: str | Path, max_side: int = MASK_SIDE) -> gpd.GeoSeries:
    """Where a scene has data.

    Its four corners through the full affine transform (rotated scenes too), less the
    nodata / masked area, read decimated to ``max_side`` pixels; masked specks under
    :data:`SPECK` of the mask's pixels are kept in.

    Returns:
        A one-row GeoSeries in the scene's CRS.

    Raises:
        InputRasterError: the scene cannot be read or has no CRS.
    """
    path = str(path)  # a URL keeps its two slashes
    try:
        with no_georef_warning(), open_raster(path) as src:
            check_grid(path, src)  # no CRS, or GCPs/RPCs only: its footprint cannot be placed
            w, h, tr, crs = src.width, src.height, src.transform, src.crs
            scale = max(1.0, max(w, h) / max_side)
            shape = (max(1, round(h / scale)), max(1, round(w / scale)))
            mask = src.dataset_mask(out_shape=shape, resampling=Resampling.nearest)
    except RasterioError as err:
        raise InputRasterError(f"cannot read scene {path}: {err}; check the file (gdalinfo)") from None
    outline = shapely.Polygon([tr @ (0, 0), tr @ (w, 0), tr @ (w, h), tr @ (0, h)])
    mask = remove_small_holes(mask > 0, max_size=int(SPECK * mask.size))  # masked specks count as valid
    if not mask.all():
        small = tr @ Affine.scale(w / shape[1], h / shape[0])
        valid = [shapely.geometry.shape(g) for g, v in shapes(mask.astype(np.uint8), mask=mask, transform=small)
                 if v]
        outline = outline.intersection(shapely.union_all(valid)) if valid else shapely.Polygon()
    outline = shapely.segmentize(outline, max(outline.length, 1e-9) / 400)  # true when reprojected
    return gpd.GeoSeries([outline], crs=crs)


def footprint(scenes: Sequence[str | Path]) -> gpd.GeoSeries:
    """The union of the footprints of scenes, one row in the first scene's CRS.

    Raises:
        InputRasterError: no scene, or one cannot be read.
    """
    if not scenes:
        raise InputRasterError("no scene to take a footprint from; pass the predicted scenes")
    parts = [scene_footprint(p) for p in scenes]
    crs = parts[0].crs
    return gpd.GeoSeries([shapely.union_all([p.to_crs(crs).iloc[0] for p in parts])], crs=crs)


def read_aoi(path: str | Path) -> gpd.GeoSeries:
    """The union of the polygons of a vector file, one row in its CRS.

    Raises:
        InputVectorError: unreadable, no CRS, or no polygon in it.
    """
    gdf = read_vector(path, "AOI")
    parts, _ = polygonal_parts(gdf.geometry.to_numpy())
    if not len(parts):
        raise InputVectorError(f"AOI file {path} holds no polygon; give a file of polygons (any CRS)")
    return gpd.GeoSeries([shapely.union_all(parts)], crs=gdf.crs)


def area_on_scene(area: gpd.GeoSeries, scene: SceneInfo, margin: int, what: str) -> shapely.Geometry:
    """``area`` (:func:`read_aoi`) in ``scene``'s CRS, clipped first to the scene grown by ``margin`` px.

    The clip is done in the area's CRS, on the grown scene's box: a country's outline, most
    of it beyond the scene's projection's domain, does not turn into infinities. An empty
    polygon when the area does not come near the scene (or lies beyond its CRS's domain).
    """
    grown = window_footprint(Window(-margin, -margin, scene.width + 2 * margin, scene.height + 2 * margin),
                             scene.affine)
    geom = area.iloc[0]
    boxes = area_boxes(area.crs, [(scene.crs, grown)])
    if boxes is not None:  # two boxes for a scene across the antimeridian in a geographic area's CRS
        geom = shapely.intersection(geom, shapely.union_all(boxes))
    if shapely.is_empty(geom):
        return shapely.Polygon()
    placed = to_crs(gpd.GeoSeries([geom], crs=area.crs), scene.crs, what).iloc[0]
    if not np.isfinite(shapely.bounds(placed)).all():  # beyond the scene CRS's domain
        return shapely.Polygon()
    return shapely.make_valid(placed)


def windows_meeting(area: shapely.Geometry, windows: Sequence[Window], transform: Affine) -> np.ndarray:
    """Whether each window of a grid (``transform``: the scene's) meets ``area`` (the scene's CRS), as bool.

    Through each window's true footprint, so rotated and skewed grids too (tile's chips,
    predict's and search's blocks grown by their halo: :mod:`geoseg.predict.area`).
    """
    if shapely.is_empty(area) or not len(windows):
        return np.zeros(len(windows), dtype=bool)
    feet = np.array([window_footprint(w, transform) for w in windows], dtype=object)
    shapely.prepare(area)
    return np.asarray(shapely.intersects(area, feet), dtype=bool)


def clip_to(gdf: gpd.GeoDataFrame, area: gpd.GeoSeries) -> gpd.GeoDataFrame:
    """The parts of ``gdf`` inside ``area``, in ``gdf``'s CRS; features outside are dropped.

    Geometries are repaired first (:func:`~geoseg.io.vectors.polygonal`); features without
    a polygonal part are dropped. :func:`restrict` gives it ``gdf`` in a projected area's CRS.

    Examples:
        >>> g = gpd.GeoDataFrame({"n": [1, 2]}, geometry=[shapely.box(0, 0, 2, 2), shapely.box(5, 5, 6, 6)],
        ...                      crs="EPSG:32636")
        >>> out = clip_to(g, gpd.GeoSeries([shapely.box(1, 0, 3, 3)], crs="EPSG:32636"))
        >>> out["n"].tolist(), out.area.tolist()
        ([1], [2.0])
    """
    region = to_crs(area, gdf.crs, "the area of interest") if area.crs != gdf.crs else area
    geoms = polygonal(gdf.geometry.to_numpy())  # GEOS cannot clip an invalid polygon (OSM has some)
    keep = np.flatnonzero([g is not None for g in geoms])
    gdf = gdf.iloc[keep].set_geometry(gpd.GeoSeries(geoms[keep], index=gdf.index[keep], crs=gdf.crs))
    out = gpd.clip(gdf, region)
    keep = shapely.area(out.geometry.to_numpy()) > 0
    return out.iloc[np.flatnonzero(keep)].sort_index()


def _near(gdf: gpd.GeoDataFrame, area: gpd.GeoSeries) -> gpd.GeoDataFrame:
    """The features whose envelope meets ``area``: all that clipping to it can keep, in file order."""
    if not len(gdf) or not len(area):
        return gdf
    keep = near_mask(gdf.geometry.to_numpy(), gdf.crs, [(area.crs, shapely.union_all(area.to_numpy()))])
    return gdf.iloc[np.flatnonzero(keep)]


def _one_part_each(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Each polygonal part of ``gdf`` as a feature of its own (repaired), attributes kept."""
    parts, index = polygonal_parts(gdf.geometry.to_numpy())
    out = gdf.iloc[index].reset_index(drop=True)
    return out.set_geometry(gpd.GeoSeries(parts, index=out.index, crs=gdf.crs))


def evaluate_within(
    pred: gpd.GeoDataFrame,
    truth: gpd.GeoDataFrame,
    *,
    scenes: Sequence[str | Path] = (),
    clip: bool = False,
    aoi: str | Path | None = None,
    multipart: str = "parts",
    areas: list[tuple[str, gpd.GeoSeries]] | None = None,
    **options: Any,
) -> tuple[dict[str, Any], gpd.GeoDataFrame, gpd.GeoDataFrame, list[str]]:
    """:func:`restrict`, then :func:`geoseg.evaluate.evaluate_frames` (``geoseg evaluate`` and the pipeline).

    With ``multipart="parts"``, parts are taken before clipping (a concave roof the area's
    edge cuts in two stays one object), so the clipped frames are evaluated whole.
    ``areas``: :func:`areas_of` ``(scenes, clip, aoi)``, when the caller read them already.

    Returns:
        ``(report, pred, truth, notes)``: the frames as restricted (for a quick-look).
    """
    from geoseg.evaluate import evaluate_frames

    pred, truth, notes = restrict(pred, truth, scenes=scenes, clip=clip, aoi=aoi, multipart=multipart, areas=areas)
    report = evaluate_frames(pred, truth, multipart="whole" if notes else multipart, **options)
    if clip:  # the footprint is where the scenes declare data: a frame of zeros they do not is inside it
        warn_zero_frames(scenes)
    return report, pred, truth, notes


def areas_of(scenes: Sequence[str | Path], clip: bool, aoi: str | Path | None) -> list[tuple[str, gpd.GeoSeries]]:
    """The areas evaluate restricts to, each with its note: the scenes' footprint (``clip``), the AOI.

    Raises:
        InputRasterError: ``clip`` without scenes, or a scene that cannot be read.
        InputVectorError: the AOI file cannot be read or holds no polygon.
    """
    areas: list[tuple[str, gpd.GeoSeries]] = []
    if clip:
        if not scenes:
            raise InputRasterError("--clip needs the predicted scenes: pass them with --scenes "
                                   "(files or folders), or restrict with --aoi FILE instead")
        areas.append(("inside the scenes", footprint(scenes)))
    if aoi is not None:
        areas.append((f"inside {Path(aoi).name}", read_aoi(aoi)))
    return areas


def read_within(
    pred: str | Path, truth: str | Path, areas: list[tuple[str, gpd.GeoSeries]],
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Read predictions and truth, only near the first of ``areas`` (:func:`areas_of`) when there is one.

    A country's truth for a few scenes is read through its spatial index instead of whole
    (:func:`geoseg.evaluate.read_polygons`); :func:`restrict` then clips both to every area.
    """
    from geoseg.evaluate import read_polygons

    # each part on its own: the footprint of scenes in two cities is one MultiPolygon, whose box spans the country
    near = [(area.crs, part) for _, area in areas[:1] for part in shapely.get_parts(area.iloc[0])] or None
    return read_polygons(pred, "prediction", near=near), read_polygons(truth, "truth", near=near)


def restrict(
    pred: gpd.GeoDataFrame,
    truth: gpd.GeoDataFrame,
    *,
    scenes: Sequence[str | Path] = (),
    clip: bool = False,
    aoi: str | Path | None = None,
    multipart: str = "whole",
    areas: list[tuple[str, gpd.GeoSeries]] | None = None,
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, list[str]]:
    """Clip predictions and truth to the scenes' footprint (``clip``) and/or an AOI file.

    Args:
        pred: predicted polygons.
        truth: true polygons.
        scenes: the predicted rasters (files; :func:`footprint`).
        clip: restrict to the footprint of ``scenes``.
        aoi: a vector file of polygons to restrict to (any CRS).
        multipart: ``parts``: when clipping, each part of a MultiPolygon becomes its own
            feature first, so that a polygon the area's edge cuts in two (a concave roof)
            stays one feature, one object; evaluate the result with ``multipart="whole"``.
            ``whole``: features are clipped as they are.
        areas: :func:`areas_of` ``(scenes, clip, aoi)``, when the caller has them already.

    Returns:
        ``(pred, truth, notes)``; the notes say what was applied, for the report's header. The
        frames are in the first projected area's CRS (the scenes'), else as given.

    Raises:
        InputRasterError: ``clip`` without scenes, or a scene that cannot be read.
        InputVectorError: the AOI file cannot be read or holds no polygon.
    """
    notes: list[str] = []
    before = len(pred) + len(truth)
    areas = areas if areas is not None else areas_of(scenes, clip, aoi)
    for _, area in areas:  # a country's truth for a few scenes: only what may be kept is repaired
        pred, truth = _near(pred, area), _near(truth, area)
    # the clip in a projected area's CRS (the scenes'): a scene across the antimeridian drawn in degrees is
    # the globe but the scene (predict's GeoJSON is in degrees); before the parts are taken, so that a
    # polygon that RFC 7946 split at 180° is one again
    work = next((area.crs for _, area in areas if area.crs.is_projected), None)
    if work is not None:
        pred, truth = (g if g.crs == work else to_crs(g, work, f"the {role} polygons")
                       for g, role in ((pred, "prediction"), (truth, "truth")))
    if multipart == "parts" and areas:
        pred, truth = _one_part_each(pred), _one_part_each(truth)
    for note, area in areas:
        pred, truth = clip_to(pred, area), clip_to(truth, area)
        notes.append(note)
    if before and not len(pred) + len(truth):
        log.warning("no prediction and no truth polygon is left %s: every number is 0; check that the "
                    "area overlaps the polygons (and its CRS)", " and ".join(notes))
    return pred, truth, notes
