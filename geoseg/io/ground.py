"""Ground size of a raster's pixels, in metres, whatever its CRS.

A pixel's two sides can differ on the ground: a scene in EPSG:4326 with equal steps in
degrees has pixels ``cos(latitude)`` as wide as they are tall (0.64 at 50° N), and some
products store rectangular pixels. geoseg reads such scenes on square ground pixels
(:meth:`geoseg.io.rasters.SceneInfo.at_gsd`); a model never sees its objects stretched.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from geoseg.errors import GeoSegWarning, InputRasterError


def _steps(transform: Affine, crs: object, shape_hw: tuple[int, int],
           at: tuple[tuple[float, float], ...] = ((0.5, 0.5),)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geodesic forward azimuths and lengths of a pixel's column and row steps (NaN: off the Earth).

    ``at`` are pixel positions as fractions (row, column) of the raster's height and width
    (the centre by default). Returns azimuths and lengths, each (len(at), 2): column step,
    row step; and the positions' (longitude, latitude), (len(at), 2).
    """
    from pyproj import CRS as ProjCRS
    from pyproj import Geod, Transformer

    pts = []
    for fr, fc in at:
        r, c = min(fr * shape_hw[0], shape_hw[0] - 1), min(fc * shape_hw[1], shape_hw[1] - 1)
        pts += [transform @ (c, r), transform @ (c + 1, r), transform @ (c, r + 1)]
    xy = np.array(pts)
    to_lonlat = Transformer.from_crs(ProjCRS.from_user_input(crs), ProjCRS.from_epsg(4326), always_xy=True)
    lon, lat = (np.asarray(v).reshape(len(at), 3) for v in to_lonlat.transform(xy[:, 0], xy[:, 1]))
    where = np.stack([lon[:, 0], lat[:, 0]], axis=1)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        nan = np.full((len(at), 2), np.nan)
        return nan, nan, where
    az, _, dist = Geod(ellps="WGS84").inv(lon[:, [0, 0]].ravel(), lat[:, [0, 0]].ravel(),
                                          lon[:, 1:].ravel(), lat[:, 1:].ravel())
    return np.asarray(az).reshape(-1, 2), np.asarray(dist).reshape(-1, 2), where


def ground_sides(transform: Affine, crs: object, shape_hw: tuple[int, int]) -> tuple[float, float]:
    """Ground lengths in metres of the centre pixel's column step and row step (its width, its height).

    Geodesic (WGS84 ellipsoid), whatever the CRS; NaN where the centre does not map to the
    Earth (a geotransform outside the CRS's domain).

    Examples:
        >>> from rasterio.transform import from_origin
        >>> [round(s, 4) for s in ground_sides(from_origin(500000, 100, 0.5, 0.5), "EPSG:32636", (10, 10))]
        [0.5002, 0.5002]
        >>> w, h = ground_sides(from_origin(10, 60.001, 1e-5, 1e-5), "EPSG:4326", (10, 10))  # 60° N
        >>> round(w / h, 3)
        0.501
    """
    dist = _steps(transform, crs, shape_hw)[1][0]
    return float(dist[0]), float(dist[1])


def metric_crs(data: Any, crs: Any = None) -> Any:
    """A CRS whose units are ground metres near ``data``: ``crs`` (default: the data's), or the local UTM zone.

    ``crs`` is kept when it is projected in metres and not a Mercator (whose metres are
    ground metres only at the equator: 2 ground metres are 1 at 60°); else the UTM zone of
    ``data`` (a GeoDataFrame or GeoSeries with a CRS; ``crs`` itself when none of its features
    has a geometry). A
    compound CRS (a drone survey's "UTM zone 33N + EGM96 height") is judged by its
    horizontal part.

    Examples:
        >>> import geopandas as gpd, shapely
        >>> g = gpd.GeoSeries([shapely.box(32.58, 0.31, 32.581, 0.311)], crs="EPSG:4326")
        >>> [metric_crs(g.to_crs(c)).to_epsg() for c in ("EPSG:4326", "EPSG:3857+5773", "EPSG:32636")]
        [32636, 32636, 32636]
    """
    from pyproj import CRS as ProjCRS

    crs = ProjCRS.from_user_input(data.crs if crs is None else crs)
    flat = crs.to_2d() if crs.is_compound else crs  # a compound CRS has no coordinate operation itself
    method = flat.coordinate_operation.method_name if flat.coordinate_operation else ""
    unit = flat.axis_info[0].unit_name if flat.axis_info else ""
    mercator = "Mercator" in method and "Transverse" not in method
    geoms = data.geometry if hasattr(data, "geometry") else data
    placed = geoms[~(geoms.isna() | geoms.is_empty)]  # features without geometry have no place to judge by
    if (flat.is_projected and unit in ("metre", "meter") and not mercator) or not len(placed):
        return crs
    return ProjCRS.from_user_input(placed.estimate_utm_crs())


def _right_angle(az: np.ndarray, tolerance_deg: float = 2.0) -> bool:
    """Whether two azimuths (degrees) are perpendicular within ``tolerance_deg``."""
    angle = abs((float(az[1] - az[0]) + 180.0) % 360.0 - 180.0)  # between the two sides, 0-180
    return abs(angle - 90.0) <= tolerance_deg


def metres_per_pixel(transform: Affine, crs: object, shape_hw: tuple[int, int]) -> float:
    """Ground length in metres of the larger side of the pixel at the centre of a raster (NaN: off the Earth).

    Examples:
        >>> from rasterio.transform import from_origin
        >>> round(metres_per_pixel(from_origin(500000, 100, 0.5, 0.5), "EPSG:32636", (10, 10)), 4)
        0.5002
    """
    return max(ground_sides(transform, crs, shape_hw))


def check_ground_pixel(path: str | Path, transform: Affine, crs: object,
                       shape_hw: tuple[int, int]) -> tuple[tuple[float, float], bool]:
    """A scene pixel's ground sides in metres and whether they meet at a right angle; an error where not lengths.

    One geodesic computation gives both, and warns when the sides change over the scene.
    North-up and rotated grids meet at a right angle (within 2°); a sheared (skewed)
    geotransform does not, and resampling its two sides to one length would not make its
    pixels square.

    A geotransform that puts the scene outside its CRS's domain (an origin at 1e12 m in
    UTM, or at the pole in Web Mercator) has no ground pixel size: every metric of the
    scene (areas, simplify tolerances) would be infinite or zero.

    Raises:
        InputRasterError: a side is not finite and positive.

    Examples:
        >>> from rasterio.transform import from_origin
        >>> t = from_origin(500000, 100, 0.5, 0.5)
        >>> check_ground_pixel("a.tif", t, "EPSG:32636", (10, 10))[1]
        True
        >>> check_ground_pixel("a.tif", t @ Affine.shear(20, 0), "EPSG:32636", (10, 10))[1]
        False
    """
    _check_longitudes(path, transform, crs, shape_hw)
    az, dist, where = _steps(transform, crs, shape_hw, _CENTRE_AND_CORNERS)
    sides = (float(dist[0, 0]), float(dist[0, 1]))
    if not all(np.isfinite(s) and s > 0 for s in sides):
        from geoseg.io.rasters import crs_to_string

        x, y = transform @ (shape_hw[1] / 2, shape_hw[0] / 2)
        raise InputRasterError(
            f"{path}: its geotransform puts the scene centre at ({x:.6g}, {y:.6g}), outside the "
            f"valid area of its CRS {crs_to_string(CRS.from_user_input(crs))}; fix its "
            "georeferencing (gdalinfo shows it)")
    _warn_if_pixels_vary(path, dist, where)
    return sides, _right_angle(az[0])


def _check_longitudes(path: str | Path, transform: Affine, crs: object, shape_hw: tuple[int, int]) -> None:
    """An error for a scene in degrees whose grid runs past ±180° (a mosaic from 179.9° to 180.1°).

    Labels, truth and areas of interest are written within ±180° (GeoJSON, GeoPackage, a
    country's footprints), and a geographic CRS does not wrap: those at -179.99° would not
    meet the scene's pixels at 180.01°, and its objects there would be trained as background.

    Raises:
        InputRasterError: with the gdalwarp command to a UTM zone of the scene.
    """
    import pyproj
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info

    geo = pyproj.CRS.from_user_input(crs)
    if not geo.is_geographic or not all("degree" in a.unit_name for a in geo.axis_info[:2]):  # 3-D: metres up
        return
    h, w = shape_hw
    xs = [(transform * (c, r))[0] for c, r in ((0, 0), (w, 0), (0, h), (w, h))]
    pad = (abs(transform.a) + abs(transform.b)) / 2 + 1e-9  # a global grid's rounding
    lo, hi = min(xs), max(xs)
    ys = [(transform * (c, r))[1] for c, r in ((0, 0), (w, 0), (0, h), (w, h))]
    if max(abs(lo), abs(hi)) > 360.0 or max(abs(y) for y in ys) > 90.0 + pad:  # metres under a degrees label
        raise InputRasterError(
            f"{path} declares {geo.to_string()} (degrees), but its grid runs over x {lo:.6g} to {hi:.6g}, y "
            f"{min(ys):.6g} to {max(ys):.6g}: its coordinates are not degrees (metres of a projected CRS?); "
            "assign the CRS they are in (gdal_edit.py -a_srs EPSG:nnnn, or QGIS: Layer Properties > Source)")
    if lo >= -180.0 - pad and hi <= 180.0 + pad:
        return
    cx, cy = transform * (w / 2, h / 2)
    cx = (cx + 180.0) % 360.0 - 180.0
    zones = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(cx, cy, cx, cy))
    target = f"EPSG:{zones[0].code}" if zones else "a projected CRS of the place"
    raise InputRasterError(
        f"{path}: its longitudes run from {lo:.6g} to {hi:.6g} degrees, past ±180, where labels, truth and "
        "areas (written within ±180) miss its pixels; warp it to a projected CRS first: "
        f"gdalwarp -t_srs {target} {path} projected.tif")


#: Where a scene's pixel is measured: its centre first, then its four corners.
_CENTRE_AND_CORNERS = ((0.5, 0.5), (0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))

#: Relative change of a pixel side's ground length, centre to corner, above which a scene is said to vary.
VARIES = 0.05


def _warn_if_pixels_vary(path: str | Path, dist: np.ndarray, where: np.ndarray) -> None:
    """Warn when a pixel side's ground length at a corner is more than :data:`VARIES` off the centre's.

    A scene is read on one grid of square pixels sized at its centre; in a CRS whose scale
    changes over the scene (EPSG:4326 or Web Mercator over degrees of latitude) objects far
    from the centre are then seen stretched or scaled.
    """
    corners = dist[1:][np.isfinite(dist[1:]).all(axis=1)]
    if not len(corners):
        return
    change = np.abs(corners / dist[0] - 1.0).max(axis=0)  # per side: column step, row step
    if change.max() <= VARIES:
        return
    lon, lat = where[0]
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    utm = f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"
    w, h = dist[:, 0], dist[:, 1]
    aspect = w / h
    seen = ("stretched" if np.nanmax(np.abs(aspect / aspect[0] - 1.0)) > VARIES
            else f"at {w[0] / np.nanmax(w):.2f}-{w[0] / np.nanmin(w):.2f}x their size")
    warnings.warn(
        f"{path}: its pixels' ground size changes over the scene by up to {100 * change.max():.0f} % (width "
        f"{np.nanmin(w):.3g}-{np.nanmax(w):.3g} m, height {np.nanmin(h):.3g}-{np.nanmax(h):.3g} m; its CRS's scale "
        "varies over its extent): it is read on one grid of square pixels sized at its centre, so objects near its "
        f"edges are seen {seen}; warp it to a local projected CRS first (gdalwarp -t_srs {utm} -r bilinear, "
        "UTM at its centre)", GeoSegWarning, stacklevel=4)
