"""Reading label polygons: any OGR vector file, repaired, exploded into instances."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import shapely

from geoseg.errors import EmptyLabelsWarning, InputVectorError, OutputError, first_line, listed
from geoseg.io.classes import class_values
from geoseg.io.near import Areas, near_mask, read_near, rejoin_antimeridian
from geoseg.matching import DUPLICATE_IOU, duplicates, overlapping

log = logging.getLogger(__name__)

#: Name of the class column in every GeoDataFrame geoseg hands around.
CLASS = "class"
#: ``--class-field none``: no class column (tile: every label is ``--class-name``; evaluate: classes ignored).
NO_FIELD = "none"
#: QGIS's data source syntax for one layer of a file: ``buildings.gpkg|layername=roofs``.
LAYER_SEP = "|layername="
#: ... and for the features a filter keeps (last, as QGIS writes it): ``x.gpkg|subset="confidence" > 0.7``.
SUBSET_SEP = "|subset="


def split_source(path: str | Path) -> tuple[Path, str | None, str | None]:
    """A vector input as (file, layer, subset), in QGIS's data source syntax (Layer Properties > Source).

    ``|layername=`` names a layer of the file, ``|subset=`` an OGR SQL WHERE clause on its
    columns (QGIS's Query Builder writes it), always last.

    Examples:
        >>> split_source("labels.gpkg|layername=roofs|subset=confidence >= 0.7")
        (PosixPath('labels.gpkg'), 'roofs', 'confidence >= 0.7')
        >>> split_source("labels.gpkg")
        (PosixPath('labels.gpkg'), None, None)
    """
    text, ssep, subset = str(path).partition(SUBSET_SEP)
    file, lsep, layer = text.partition(LAYER_SEP)
    return Path(file), (layer if lsep else None), (subset if ssep else None)


def split_layer(path: str | Path) -> tuple[Path, str | None]:
    """A vector input as (file, layer): ``x.gpkg|layername=roofs`` names a layer, as in QGIS.

    Examples:
        >>> split_layer("labels.gpkg|layername=roofs")
        (PosixPath('labels.gpkg'), 'roofs')
        >>> split_layer("labels.gpkg")
        (PosixPath('labels.gpkg'), None)
    """
    file, layer, _ = split_source(path)
    return file, layer


def pick_layer(path: Path, role: str, layer: str | None) -> str | None:
    """The layer to read: the one named, else the file's only layer with geometries.

    A file of several geometry layers and no name given is refused: reading its first one,
    as OGR does, would tile or score the wrong polygons without a word.

    Raises:
        InputVectorError: the named layer is not in the file; several geometry layers and none named.
    """
    try:
        layers = [(str(n), g) for n, g in pyogrio.list_layers(path)]
    except Exception:  # unreadable: read_file's error names it
        return layer
    names = [n for n, _ in layers]
    spatial = [n for n, g in layers if g is not None]

    if layer is not None:
        if layer not in names:
            raise InputVectorError(f"{role} file {path} has no layer '{layer}'; its layers: {listed(names)}")
        return layer
    if len(spatial) > 1:
        raise InputVectorError(
            f"{role} file {path} holds {len(spatial)} geometry layers ({listed(spatial)}); name the one to read "
            f"as '{path}{LAYER_SEP}{spatial[0]}' (QGIS's syntax for a layer of a file)")
    return spatial[0] if spatial and len(layers) > 1 else layer


def bounds_text(geoms: object) -> str:
    """``(xmin, ymin, xmax, ymax)`` of geometries (a GeoDataFrame, GeoSeries or array), for messages."""
    return "(" + ", ".join(f"{v:.6g}" for v in shapely.total_bounds(getattr(geoms, "geometry", geoms))) + ")"


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


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """Repair geometries (:func:`polygonal_parts`), one per feature.

    Returns:
        Per feature, its Polygon, a MultiPolygon of its parts, or None where none is left.

    Examples:
        >>> bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
        >>> [g.geom_type if g else None for g in polygonal(np.array([bowtie, shapely.Point(0, 0)]))]
        ['MultiPolygon', None]
    """
    parts, owner = polygonal_parts(geoms)
    out = np.full(len(geoms), None, dtype=object)
    count = np.bincount(owner, minlength=len(geoms))
    one = count[owner] == 1
    out[owner[one]] = parts[one]
    if not one.all():
        owners, idx = np.unique(owner[~one], return_inverse=True)
        out[owners] = shapely.multipolygons(parts[~one], indices=idx)
    return out


def check_vector_name(path: str | Path, what: str, *, output: bool = False) -> Path:
    """Refuse a vector file name with ``;``: GDAL's vector drivers cut it there.

    ``a;b.gpkg`` is opened (and written) as ``a``, so another file would be read, or the
    output land under another name.

    Raises:
        InputVectorError: an input's name holds ``;``.
        OutputError: an output's (``output=True``) does.
    """
    path = Path(path)
    if ";" in path.name:
        cls = OutputError if output else InputVectorError
        raise cls(f"{what} {path}: GDAL cuts vector file names at ';'; rename it without ';'")
    return path


def read_vector(
    path: str | Path, role: str, layer: str | None = None, mask: shapely.Geometry | None = None,
) -> gpd.GeoDataFrame:
    """Read a vector file (anything pyogrio reads) that has geometries and a CRS.

    The one reader of the vector inputs of geoseg (labels, truth, predictions, AOIs,
    examples), so each takes ``FILE|layername=LAYER`` for a layer of a multi-layer file and
    ``|subset=SQL`` for the features a WHERE clause keeps (Google Open Buildings'
    ``confidence >= 0.7``), as QGIS writes a layer's source.

    Args:
        path: GeoPackage, GeoJSON, Shapefile, FlatGeobuf..., optionally ``|layername=LAYER``
            and ``|subset=SQL``.
        role: what the file is (``"label"``, ``"truth"``), for messages.
        layer: the layer to read (default: the one in ``path``, else the file's only
            geometry layer).
        mask: only the features that meet it (in the file's CRS; OGR's spatial filter),
            indexed by feature id (not for GeoParquet).

    Raises:
        InputVectorError: a missing or unreadable file, a name with ``;``, a layer without
            a geometry column (an attribute table, a CSV), several geometry layers and
            none named, a named layer the file lacks, no CRS, or a subset OGR cannot apply.
    """
    path, named, subset = split_source(path)
    if layer is not None and named is not None and layer != named:
        raise InputVectorError(f"{role} file {path}: layer '{named}' in the path and '{layer}' given; name one")
    layer = layer if layer is not None else named
    path = check_vector_name(path, f"{role} file")
    if not path.exists():
        raise InputVectorError(f"{role} file {path} does not exist; check the path")
    if path.suffix.lower() != ".parquet":
        layer = pick_layer(path, role, layer)
    elif layer is not None and layer != path.stem:  # one layer, named after the file, as OGR names it
        raise InputVectorError(f"{role} file {path} is GeoParquet, one layer ('{path.stem}'), not '{layer}'; "
                               f"drop '{LAYER_SEP}{layer}'")
    if subset is not None and path.suffix.lower() == ".parquet":
        raise InputVectorError(f"{role} file {path} is GeoParquet, which '{SUBSET_SEP}' cannot filter; save the "
                               "features to keep as a GeoPackage first (QGIS: Export > Save Selected Features As)")
    try:
        if path.suffix.lower() == ".parquet":  # GeoParquet (geoseg predict writes it): pyarrow
            gdf = gpd.read_parquet(path)
            info = {"geometry_type": "GeoParquet", "layer_name": path.stem, "driver": "GeoParquet"}
        else:
            info = pyogrio.read_info(path, layer=layer)
            filters: dict[str, Any] = {} if mask is None else {"mask": mask, "fid_as_index": True}
            gdf = gpd.read_file(path, layer=layer, engine="pyogrio", where=subset, **filters)
    except Exception as err:  # pyogrio raises DataSourceError, DataLayerError, ...
        msg = first_line(err)
        if subset is not None:
            raise InputVectorError(
                f"cannot read {role} file {path} with subset '{subset}': {msg}; the subset is an OGR SQL WHERE "
                "clause on the file's columns (quote names with spaces in double quotes; QGIS: Query Builder)"
            ) from None
        raise InputVectorError(
            f"cannot read {role} file {path}: {msg}; use a GeoPackage, GeoJSON or Shapefile"
        ) from None
    if info.get("geometry_type") is None or not isinstance(gdf, gpd.GeoDataFrame):
        wkt = [str(f) for f in info.get("fields", []) if str(f).lower() in ("geometry", "wkt", "geom", "the_geom")]
        if wkt:  # Google Open Buildings: a CSV of WKT in EPSG:4326
            raise InputVectorError(
                f"{role} file {path} is a table whose '{wkt[0]}' column looks like WKT; convert it, saying its CRS: "
                f"ogr2ogr -oo GEOM_POSSIBLE_NAMES={wkt[0]} -oo KEEP_GEOM_COLUMNS=NO -a_srs EPSG:4326 "
                f"{path.stem}.gpkg {path} (EPSG:4326 for Google Open Buildings; QGIS: Add Delimited Text Layer)")
        raise InputVectorError(
            f"{role} file {path} has no geometry column (layer '{info.get('layer_name')}' is a "
            f"table of {info.get('driver')} without geometry); pass a polygon layer "
            "(GeoPackage, GeoJSON or Shapefile of polygons)"
        )
    if gdf.crs is None:
        raise InputVectorError(
            f"{role} file {path} has no CRS; assign one (e.g. ogr2ogr -a_srs EPSG:4326 fixed.gpkg {path})"
        )
    if gdf.crs.is_engineering:  # LOCAL_CS: a site grid that no transformation reaches
        raise InputVectorError(
            f"{role} file {path} has a local engineering CRS ('{gdf.crs.name}'), which has no place on the Earth; "
            f"assign its real CRS (ogr2ogr -a_srs EPSG:... fixed.gpkg {path})")
    if gdf.crs.is_geographic and len(gdf):
        _check_degrees(gdf, path, role)
    return gdf


def _check_degrees(gdf: gpd.GeoDataFrame, path: Path, role: str) -> None:
    """Refuse a file in degrees whose coordinates are not (metres under an EPSG:4326 label).

    Reprojected, they gave infinite coordinates: tile stopped with 'unexpected GEOSException',
    evaluate with 'unexpected RuntimeError: Unable to determine UTM CRS'. Longitudes up to ±360
    pass (a 0-360° product), latitudes up to ±90.
    """
    geoms = gdf.geometry.to_numpy()
    live = np.flatnonzero(~(shapely.is_missing(geoms) | shapely.is_empty(geoms)))
    b = shapely.bounds(geoms[live])
    off = (np.abs(b[:, [0, 2]]) > 360.0).any(axis=1) | (np.abs(b[:, [1, 3]]) > 90.0 + 1e-9).any(axis=1)
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise InputVectorError(
            f"{role} file {path} declares {gdf.crs.to_string()} (degrees), but {int(off.sum())} of its {len(live)} "
            f"features lie beyond ±360° / ±90° (feature {int(live[first]) + 1}, counting from 1: "
            f"{', '.join(f'{v:.6g}' for v in b[first])}): its coordinates are not degrees (metres of a projected "
            f"CRS?); assign the CRS they are in (ogr2ogr -a_srs EPSG:nnnn fixed.gpkg {path}; QGIS: Layer "
            "Properties > Source > Assigned Coordinate Reference System)")


def require_polygons(gdf: gpd.GeoDataFrame, path: str | Path, role: str) -> None:
    """Refuse a vector file whose features are all points or lines (building centroids, road lines).

    Polygonal parts are what labels and truth are made of: such a file would give none, so
    tiling would write negative chips only and evaluate would score against nothing.

    Raises:
        InputVectorError: features, and no polygon among them.

    Examples:
        >>> require_polygons(gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)] * 2), "pts.gpkg", "label")
        Traceback (most recent call last):
        geoseg.errors.InputVectorError: label file pts.gpkg holds 2 features and no polygon (2 Point); ...
    """
    geoms = gdf.geometry.to_numpy()
    present = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))]
    if not len(present) or np.isin(shapely.get_type_id(present), (3, 6, 7)).any():  # (Multi)Polygon, collection
        return
    kinds, counts = np.unique([g.geom_type for g in present], return_counts=True)
    raise InputVectorError(
        f"{role} file {path} holds {len(present)} features and no polygon "
        f"({', '.join(f'{n} {k}' for k, n in zip(kinds, counts, strict=True))}); geoseg needs object outlines: "
        "buffer points or lines into polygons first (QGIS: Vector > Geoprocessing Tools > Buffer)")


def _warn_arealess(path: Path, geoms: np.ndarray, used: np.ndarray, rows: np.ndarray) -> None:
    """Warn of the features beside polygons that give no polygon (points, lines, rings drawn as lines).

    ``used``: the index (in ``geoms``) of every polygon kept; ``rows``: each geometry's row in the file.
    """
    lost = np.setdiff1d(np.arange(len(geoms)), used)
    if not len(lost):
        return
    lines = shapely.get_parts(geoms[lost])
    rings = int((shapely.is_closed(lines) & (shapely.get_type_id(lines) == shapely.GeometryType.LINESTRING)).sum())
    log.warning("%s: %d of %d label features have no area (points, lines, collapsed polygons; feature %d first, "
                "counting from 1) and are not used%s", path, len(lost), len(geoms), int(rows[lost[0]]) + 1,
                f"; {rings} of them closed lines (outlines drawn as lines?): QGIS's Lines to polygons makes "
                "polygons of them" if rings else "")


def read_labels(
    path: str | Path, class_field: str = CLASS, class_name: str = "object", layer: str | None = None,
    near: Areas | None = None,
) -> gpd.GeoDataFrame:
    """Read labels as one Polygon per instance with a string ``class`` column.

    Invalid geometries are repaired with ``make_valid`` and their polygonal parts kept;
    MultiPolygons become one instance per part; a polygon that repeats another of its class
    (:func:`geoseg.matching.duplicates`) is used once, with a warning. When ``class_field`` is ``"none"``, or
    ``"class"`` and not a column, every instance gets ``class_name``; another field that is not a column is an
    error.

    Args:
        path: GeoPackage, GeoJSON, Shapefile, or any file pyogrio reads.
        class_field: column holding the class of each feature; ``"none"``: every feature is ``class_name``.
        class_name: the class of every feature when ``class_field`` is absent.
        layer: layer to read (first layer by default).
        near: areas (each with its CRS: the scenes' footprints); only the features near them
            are read (:func:`geoseg.io.near.read_near`: a country's buildings for a few
            scenes; a GeoPackage's R-tree) or kept (:func:`geoseg.io.near.near_mask`)
            before they are repaired and compared; when none is near, all are kept, for the
            caller's diagnosis. Classes and the null-class check still cover every feature.

    Returns:
        GeoDataFrame with columns ``class``, ``label_id`` (row of the source feature)
        and ``geometry``, in the file's CRS; ``attrs``: ``classes`` (of every feature) and
        ``far`` (features left out by ``near``, with those of a polygon layer that have no geometry).

    Raises:
        InputVectorError: see :func:`read_vector`; a ``class_field`` other than ``"class"``
            that the file lacks.
    """
    path = Path(path)
    one_class = class_field.lower() == NO_FIELD  # whatever columns the file has (Overture's mostly null 'class')
    got = read_near(path, "label", layer, near, None if one_class else class_field) if near is not None else None
    gdf, every = got if got is not None else (read_vector(path, "label", layer), None)
    table = gdf if every is None else every  # one row per feature of the file
    require_polygons(gdf, path, "label")
    if not one_class and class_field != CLASS and class_field not in table.columns:  # named but absent
        cols = [str(c) for c in gdf.columns if c != gdf.geometry.name]
        raise InputVectorError(f"label file {path} has no column '{class_field}' (the class field); its "
                               f"columns: {', '.join(cols[:12]) or 'none'}")
    if not one_class and class_field in table.columns:
        classes = class_values(table, class_field, f"label file {path}")
    else:
        classes = np.full(len(table), class_name, dtype=object)
    geoms = rejoin_antimeridian(gdf.geometry.to_numpy(), gdf.crs)  # a roof that RFC 7946 split at 180°: one instance
    present = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    if every is not None:  # a polygon layer, read near the areas: rows of the file from feature ids
        rows = every.index.get_indexer(gdf.index)[present]
        everything, far = sorted(set(classes)), len(every) - int(present.sum())
    else:
        areal = present & np.isin(shapely.get_type_id(geoms), (3, 6, 7))  # polygons (collections: their parts)
        everything = sorted(set(classes[areal]))
        close = near_mask(geoms, gdf.crs, near) if near is not None else present
        far = int((present & ~close).sum()) if (present & close).any() else 0
        if far:
            present &= close
        rows = np.flatnonzero(present)
    parts, idx = polygonal_parts(geoms[present])
    _warn_arealess(path, geoms[present], idx, rows)
    out = gpd.GeoDataFrame(
        {CLASS: classes[rows[idx]], "label_id": rows[idx]}, geometry=parts, crs=gdf.crs
    )
    twice = duplicates(out.geometry.to_numpy(), out[CLASS].to_numpy())
    if len(twice):  # one object drawn twice would be all contact between two instances
        log.warning("%s: %d label polygons repeat another of their class (IoU >= %g; the first is feature %d, "
                    "counting from 1) and are used once; remove the duplicates from the file to silence this",
                    path, len(twice), DUPLICATE_IOU, int(out["label_id"].iloc[twice[0]]) + 1)
        out = out.drop(index=out.index[twice]).reset_index(drop=True)
    i, j = overlapping(out.geometry.to_numpy(), out[CLASS].to_numpy())
    if len(i):  # two sources merged: their shared pixels would train as contact between two objects
        ids = out["label_id"].to_numpy()
        log.warning("%s: %d label polygons lie over half inside another of their class (features %d and %d first, "
                    "counting from 1): two sources merged, or parts drawn over their building? Each is an object "
                    "and their shared pixels train as contact between two; keep one of each pair that is one "
                    "object (objects that do overlap, such as tree crowns, are right as they are)", path,
                    len(np.unique(j)), int(ids[i[0]]) + 1, int(ids[j[0]]) + 1)
    out.attrs.update(classes=everything, far=far)
    if len(out) == 0:
        warnings.warn(
            f"{path} holds no polygon labels: only negative chips will be written",
            EmptyLabelsWarning, stacklevel=2,
        )
    return out
