"""Reprojections that lose accuracy on this machine: PROJ's best datum shift needs a missing grid.

Labels, truth, areas of interest and examples are reprojected to the scenes' (or the
predictions') CRS with PROJ. Between two datums (OSGB36 and WGS 84: British National Grid
labels on a UTM scene; NAD27 and WGS 84) the accurate transformation reads a grid file that
pyproj's wheels do not ship. Without it PROJ falls back to a coarser transformation (2 m,
20 m) without a word, and labels land metres off the roofs they outline: a wrong result
with exit 0. :func:`to_crs` reprojects as geopandas does and warns once per input and pair
of CRSs, naming the grid and how to get it (QGIS asks the same question).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, TypeVar, cast

import numpy as np
from pyproj import CRS, Transformer
from pyproj.exceptions import ProjError
from pyproj.transformer import AreaOfInterest, TransformerGroup

from geoseg.errors import GeoSegWarning

G = TypeVar("G")

_said: set[tuple[str, str, str]] = set()


def _accuracy(value: float) -> str:
    return f"accurate to {value:g} m" if value >= 0 else "of unknown accuracy"


@functools.lru_cache(maxsize=64)
def datum_gap(src: str, dst: str, where: tuple[float, float, float, float] | None = None) -> str | None:
    """What reprojecting from ``src`` to ``dst`` (any CRS text) loses here, in words; None: nothing.

    ``where`` (west, south, east, north in degrees) is the data's extent: PROJ chooses the
    transformation whose area of use holds the points, so a regional grid elsewhere is no loss.

    Examples:
        >>> datum_gap("EPSG:4326", "EPSG:32636") is None  # one datum: exact
        True
    """
    a, b = CRS.from_user_input(src), CRS.from_user_input(dst)
    if a == b:
        return None
    aoi = AreaOfInterest(*where) if where is not None else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pyproj's own note of a missing grid: said below
            group = TransformerGroup(a, b, always_xy=True, area_of_interest=aoi)
    except ProjError:  # no judgement possible: the reprojection itself says what is wrong
        return None
    used = group.transformers[0] if group.transformers else None
    how = f"{used.description} ({_accuracy(used.accuracy)})" if used is not None else "no transformation"
    if not group.best_available and group.unavailable_operations:
        best = group.unavailable_operations[0]
        grids = sorted({g.short_name for g in best.grids if not g.available}) or ["(a grid)"]
        return (f"PROJ's best transformation ({best.name}, {_accuracy(best.accuracy)}) needs the grid "
                f"{', '.join(grids)}, which is not installed here, so PROJ falls back to {how}; install the "
                f"grid (pyproj sync --file {grids[0]}) or let PROJ fetch it (PROJ_NETWORK=ON)")
    if used is not None and "ballpark" in used.description.lower():
        return (f"PROJ knows no transformation between their datums and uses a ballpark one ({used.description}: "
                "error unknown, often tens of metres); give both in one datum")
    return None


def _extent(geo: Any, crs: CRS) -> tuple[float, float, float, float] | None:
    """The data's extent in degrees, rounded out to 0.1 degree (one check per region); None: unknown."""
    bounds = np.asarray(geo.total_bounds, dtype=float)
    if not np.isfinite(bounds).all():
        return None
    if not crs.is_geographic:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bounds = np.asarray(Transformer.from_crs(crs, 4326, always_xy=True).transform_bounds(*bounds))
        except ProjError:
            return None
    if not np.isfinite(bounds).all():
        return None
    west, south = (float(v) for v in np.floor(bounds[:2] * 10) / 10)
    east, north = (float(v) for v in np.ceil(bounds[2:] * 10) / 10)
    return max(west, -180.0), max(south, -90.0), min(east, 180.0), min(north, 90.0)


def to_crs(geo: G, crs: Any, what: str) -> G:
    """``geo.to_crs(crs)`` (a GeoDataFrame or GeoSeries), warning when it loses accuracy here.

    Warns (:class:`GeoSegWarning`, once per ``what`` and pair of CRSs in a process) when
    :func:`datum_gap` says so, naming ``what`` (the input: ``--labels roofs.gpkg``).
    """
    src = getattr(geo, "crs", None)
    if src is not None and len(geo):  # type: ignore[arg-type]
        a, b = CRS.from_user_input(src), CRS.from_user_input(crs)
        if a != b and (gap := datum_gap(a.to_wkt(), b.to_wkt(), _extent(geo, a))) is not None:
            key = (what, a.to_wkt(), b.to_wkt())
            if key not in _said:
                _said.add(key)
                warnings.warn(f"{what} ({a.to_string()}) reprojected to {b.to_string()}: {gap}",
                              GeoSegWarning, stacklevel=2)
    frame: Any = geo
    out = frame.to_crs(crs)
    _check_placed(geo, out, what)
    return cast(G, out)


def _check_placed(before: Any, after: Any, what: str) -> None:
    """Refuse features that reprojection gave non-finite coordinates: they lie outside their CRS's domain.

    Coordinates far outside what their CRS covers (metres under a degrees label the other way
    round, a UTM file offset by 10^12 m) come out of PROJ as inf: clipped and repaired, they
    stopped tile with 'unexpected GEOSException: Shell empty after removing invalid points'.
    """
    import shapely

    geoms = (after.geometry if hasattr(after, "geometry") else after).to_numpy()
    live = np.flatnonzero(~(shapely.is_missing(geoms) | shapely.is_empty(geoms)))
    bad = live[~np.isfinite(shapely.bounds(geoms[live])).all(axis=1)]
    if len(bad):
        from geoseg.errors import InputVectorError

        src = (before.geometry if hasattr(before, "geometry") else before).to_numpy()
        a, b = CRS.from_user_input(before.crs).to_string(), CRS.from_user_input(after.crs).to_string()
        at = ", ".join(f"{v:.6g}" for v in shapely.bounds(src[bad[0]]))
        raise InputVectorError(
            f"{what}: {len(bad)} of {len(live)} features have no place in {b} (one at {at} in {a}): their "
            f"coordinates lie outside what {a} covers; check that the file's CRS is the one of its coordinates "
            "(ogr2ogr -a_srs EPSG:nnnn; QGIS: Layer Properties > Source > Assigned Coordinate Reference System)")
