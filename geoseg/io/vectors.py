"""Reading label polygons: any OGR vector file, repaired, exploded into instances."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from geoseg.errors import EmptyLabelsWarning, InputVectorError

#: Name of the class column in every GeoDataFrame geoseg hands around.
CLASS = "class"


def polygonal_parts(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repair geometries and keep only their polygonal parts, as single Polygons.

    The one polygon repair of geoseg (labels, evaluation, vectorizing): shapely's
    ``make_valid(method="structure", keep_collapsed=False)`` (a bow-tie becomes two
    triangles, collapsed rings vanish), then ``get_parts``; lines, points and parts
    without area are dropped. Missing geometries yield no part.

    Returns:
        The Polygons, and the index of the input each came from (ascending).

    Examples:
        >>> bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
        >>> parts, index = polygonal_parts(np.array([shapely.Point(0, 0), bowtie], dtype=object))
        >>> shapely.get_type_id(parts).tolist(), index.tolist()
        ([3, 3], [1, 1])
    """
    fixed = shapely.make_valid(np.asarray(geoms, dtype=object), method="structure", keep_collapsed=False)
    parts, index = shapely.get_parts(fixed, return_index=True)
    # a GeometryCollection (an input one; make_valid passes it on) may hold MultiPolygons
    parts, sub = shapely.get_parts(parts, return_index=True)
    index = index[sub]
    keep = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
    keep[keep] = shapely.area(parts[keep]) > 0
    return parts[keep], index[keep]


def read_labels(
    path: str | Path, class_field: str = CLASS, class_name: str = "object", layer: str | None = None
) -> gpd.GeoDataFrame:
    """Read labels as one Polygon per instance with a string ``class`` column.

    Invalid geometries are repaired with ``make_valid`` and their polygonal parts kept;
    MultiPolygons become one instance per part. When ``class_field`` is not a column,
    every instance gets ``class_name``.

    Args:
        path: GeoPackage, GeoJSON, Shapefile, or any file pyogrio reads.
        class_field: column holding the class of each feature.
        class_name: the class of every feature when ``class_field`` is absent.
        layer: layer to read (first layer by default).

    Returns:
        GeoDataFrame with columns ``class``, ``label_id`` (row of the source feature)
        and ``geometry``, in the file's CRS.

    Raises:
        InputVectorError: unreadable file, or no CRS.
    """
    path = Path(path)
    if not path.exists():
        raise InputVectorError(f"label file {path} does not exist; check the path")
    try:
        gdf = gpd.read_file(path, layer=layer, engine="pyogrio")
    except Exception as err:  # pyogrio raises DataSourceError, DataLayerError, ...
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputVectorError(
            f"cannot read labels {path}: {msg}; use a GeoPackage, GeoJSON or Shapefile"
        ) from None
    if gdf.crs is None:
        raise InputVectorError(
            f"label file {path} has no CRS; assign one (e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg {path})"
        )
    if class_field in gdf.columns:
        classes = gdf[class_field].astype(str).to_numpy()
    else:
        classes = np.full(len(gdf), class_name, dtype=object)
    geoms = gdf.geometry.to_numpy()
    present = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    rows = np.flatnonzero(present)
    parts, idx = polygonal_parts(geoms[present])
    out = gpd.GeoDataFrame(
        {CLASS: classes[rows[idx]], "label_id": rows[idx]}, geometry=parts, crs=gdf.crs
    )
    if len(out) == 0:
        warnings.warn(
            f"{path} holds no polygon labels: only negative chips will be written",
            EmptyLabelsWarning, stacklevel=2,
        )
    return out
