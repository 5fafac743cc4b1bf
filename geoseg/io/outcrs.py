"""The CRS that predict and search write their polygons in (``--crs``).

Without ``--crs`` the output is in the first scene's CRS, as before: the polygons of the
other scenes are reprojected to it. That is right for scenes of one place; for scenes far
apart (a country over three UTM zones, cities on two continents) the first scene's zone is
a poor map of the others, so ``--crs EPSG:4326`` (or an equal-area or national CRS) writes
every scene's polygons in one CRS chosen for all of them. ``area_m2`` is geodesic either way.
GeoJSON is always EPSG:4326 (RFC 7946), so another ``--crs`` with a ``.geojson`` output is refused.
"""

from __future__ import annotations

from pathlib import Path

from pyproj import CRS
from pyproj.exceptions import CRSError

from geoseg.errors import ConfigError
from geoseg.io.formats import vector_driver

_WGS84 = CRS.from_epsg(4326)


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
