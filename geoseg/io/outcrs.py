"""The CRS that predict and search write their polygons in (``--crs``).

Without ``--crs`` the output is in the first scene's CRS, as before: the polygons of the
other scenes are reprojected to it. That is right for scenes of one place; for scenes far
apart (a country over three UTM zones, cities on two continents) the first scene's zone is
a poor map of the others, so ``--crs EPSG:4326`` (or an equal-area or national CRS) writes
every scene's polygons in one CRS chosen for all of them. ``area_m2`` is geodesic either way.
GeoJSON is always EPSG:4326 (RFC 7946), so another ``--crs`` with a ``.geojson`` output is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from geoseg.errors import ConfigError
from geoseg.io.formats import vector_driver

log = logging.getLogger(__name__)

_WGS84 = CRS.from_epsg(4326)
#: Degrees of longitude and latitude around a CRS's area of use where its scenes are not warned
#: of (a UTM zone's neighbour; a northern zone's scenes just south of the equator).
_MARGIN = (6.0, 3.0)


def check_crs(value: str | None) -> str | None:
    """``value`` when PROJ knows it as a CRS with a place on the Earth (a pydantic validator).

    Examples:
        >>> check_crs("EPSG:4326"), check_crs(None)
        ('EPSG:4326', None)
        >>> check_crs("EPSG:99999")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 'EPSG:99999' is not a CRS PROJ knows: give an EPSG code (EPSG:4326, EPSG:32636), ...
    """
    if value is None:
        return None
    try:
        crs = CRS.from_user_input(value)
    except CRSError:
        raise ValueError(f"{value!r} is not a CRS PROJ knows: give an EPSG code (EPSG:4326, EPSG:32636), "
                         "a WKT or a PROJ string") from None
    if crs.is_engineering or not (crs.is_geographic or crs.is_projected):
        raise ValueError(f"{value!r} is not a geographic or projected CRS ('{crs.name}'): give one on the Earth, "
                         "such as EPSG:4326 or a UTM zone")
    return value


def output_crs(value: str | None, out: str | Path) -> CRS | None:
    """The CRS of the output ``out`` that ``value`` (``--crs``) asks for; None: the first scene's.

    Raises:
        ConfigError: a ``--crs`` other than EPSG:4326 for a GeoJSON output (RFC 7946).
    """
    if value is None:
        return None
    crs = CRS.from_user_input(value)
    if vector_driver(out) == "GeoJSON" and not crs.equals(_WGS84):
        raise ConfigError(f"--crs {value} with the GeoJSON output {out}: RFC 7946 GeoJSON is always in "
                          "EPSG:4326; drop --crs, or write .gpkg, .fgb or .parquet to keep another CRS")
    return crs


def warn_beyond_use(crs: CRS | None, scenes: Sequence[Any], what: str = "polygons") -> None:
    """Warn of the scenes whose centre lies outside ``crs``'s area of use (``--crs``; None: nothing to say).

    Web Mercator over Antarctica (y of -240 000 km), a UTM zone on another continent: the
    polygons of such a scene are written, but distorted past use or where no tool expects
    them. A scene a little beyond a UTM zone's edge (its neighbour's) is inside the margin.
    """
    if crs is None or crs.area_of_use is None:
        return
    (mx, my), area = _MARGIN, crs.area_of_use
    west, south, east, north = area.west - mx, area.south - my, area.east + mx, area.north + my
    away = []
    for s in scenes:
        c = s.footprint.centroid
        lon, lat = Transformer.from_crs(s.crs, _WGS84, always_xy=True).transform(c.x, c.y)
        inside_lon = west <= lon <= east if west <= east else (lon >= west or lon <= east)  # across 180°
        if not (inside_lon and south <= lat <= north):
            away.append(f"{s.name} ({lon:.1f}, {lat:.1f})")
    if away:
        log.warning("--crs %s is made for %.1f..%.1f° E, %.1f..%.1f° N (%s), and the %s of %d scene(s) lie beyond it: "
                    "%s; they are written, distorted or where no map expects them: choose a CRS for every scene "
                    "(EPSG:4326, or one per run of scenes of one region)", crs.to_string(), area.west, area.east,
                    area.south, area.north, area.name, what, len(away), ", ".join(away[:3]))
