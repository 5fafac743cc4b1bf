"""Vector outputs by extension: GeoPackage, GeoJSON, FlatGeobuf, Shapefile, GeoParquet.

Every format is written by pyogrio (GDAL), GeoParquet by ``geopandas.to_parquet``
(pyarrow; GeoParquet 1.x metadata with the CRS). A file is written under its final name
inside a temporary folder beside the output, then renamed into place: readers never see
half a file, an existing output is replaced only on success, and the layer (GeoPackage
table, GeoJSON ``name``, FlatGeobuf header, Shapefile) is named after the output's stem,
never after a temporary name. A Shapefile's sidecars (``.shx``, ``.dbf``, ``.prj``,
``.cpg``) are renamed first and the ``.shp`` last. FlatGeobuf files carry a spatial
index, so their features are stored in the index's (Hilbert) order, not the frame's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
from pyproj import CRS

from geoseg.errors import GeoSegError, OutputError, OutputExistsError
from geoseg.io.atomic import as_output_error, output_error, temp_name
from geoseg.io.datums import to_crs
from geoseg.io.vectors import check_vector_name

log = logging.getLogger(__name__)

#: Extension -> writer: an OGR driver, or ``GeoParquet`` (geopandas + pyarrow).
DRIVERS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
    ".shp": "ESRI Shapefile",
    ".parquet": "GeoParquet",
}
#: Files a Shapefile is made of besides the ``.shp`` (renamed before it).
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")
_WGS84 = CRS.from_epsg(4326)


class VectorFormatError(GeoSegError, ValueError):
    """An output vector path has an extension geoseg cannot write."""


def vector_driver(path: str | Path) -> str:
    """The writer geoseg uses for a path, chosen by its extension (case-insensitive).

    Raises:
        VectorFormatError: the extension is not one of :data:`DRIVERS`.
        OutputError: the name holds ``;`` (GDAL would cut it there).

    Examples:
        >>> vector_driver("out/buildings.GPKG"), vector_driver("b.fgb"), vector_driver("b.parquet")
        ('GPKG', 'FlatGeobuf', 'GeoParquet')
    """
    check_vector_name(path, "cannot write", output=True)
    ext = Path(path).suffix.lower()
    try:
        return DRIVERS[ext]
    except KeyError:
        raise VectorFormatError(
            f"cannot write {path}: unknown vector extension '{ext}'; use one of "
            f"{', '.join(DRIVERS)} (GeoPackage, GeoJSON, FlatGeobuf, Shapefile, GeoParquet)"
        ) from None


def check_replace(path: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``, and always one whose other layers would go with it.

    Outputs are written whole and renamed over the old file: a GeoPackage that also holds
    layers geoseg does not write (a QGIS project's roads and parcels, saved styles) would
    lose them. geoseg's own layer is named after the file's stem.

    Raises:
        OutputExistsError: ``path`` exists and not ``overwrite``; or it is a GeoPackage with
            layers other than ``path.stem``.
    """
    if not path.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if vector_driver(path) != "GPKG":
        return
    import pyogrio

    try:
        others = [str(n) for n, _ in pyogrio.list_layers(path) if str(n) != path.stem]
    except Exception:  # not a GeoPackage GDAL reads: nothing readable is lost by replacing it
        return
    if others:
        shown = ", ".join(others[:6]) + (f" and {len(others) - 6} more" if len(others) > 6 else "")
        raise OutputExistsError(
            f"{path} holds other layers ({shown}) that --overwrite would delete with the file; write to a new "
            "file (QGIS shows it beside them) or move those layers out first")


def write_vector(gdf: gpd.GeoDataFrame, path: str | Path, layer: str | None = None) -> Path:
    """Write polygons atomically in the format of the path's extension.

    GeoJSON is reprojected to EPSG:4326, as RFC 7946 requires (logged at INFO; GDAL's RFC
    7946 mode keeps 7 decimals of a degree, ~1 cm); the other formats keep the frame's
    CRS and full precision.

    Args:
        gdf: the frame to write; must have a CRS.
        path: ``.gpkg``, ``.geojson``/``.json``, ``.fgb``, ``.shp`` or ``.parquet``.
        layer: layer name (default: the file's stem); a Shapefile's and a GeoParquet
            file's layer is always their stem.

    Returns:
        ``path``.

    Raises:
        VectorFormatError: unknown extension, or the frame has no CRS.
        OutputError: the output cannot be written (read-only folder, full disk, ...).
    """
    path = Path(path)
    driver = vector_driver(path)
    if gdf.crs is None:
        raise VectorFormatError(f"cannot write {path}: the polygons have no CRS; set one with gdf.set_crs()")
    if driver == "GeoJSON" and not CRS.from_user_input(gdf.crs).equals(_WGS84):
        log.info("writing %s in EPSG:4326 (RFC 7946 GeoJSON); source CRS was %s", path, gdf.crs.to_string())
        gdf = to_crs(gdf, _WGS84, f"{path} (GeoJSON: EPSG:4326)")
    with _staging_dir(path) as folder:
        staged = folder / path.name
        if driver == "GeoParquet":
            gdf.to_parquet(staged, index=False)
        else:
            options: dict[str, Any] = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
            if driver != "ESRI Shapefile":
                options["layer"] = layer or path.stem
            gdf.to_file(staged, driver=driver, engine="pyogrio", **options)
        files = sorted(folder.iterdir(), key=lambda p: p.name == path.name)  # the main file last
        if driver == "ESRI Shapefile":  # an old index or sidecar the new file lacks would lie
            for ext in set(SHAPEFILE_SIDECARS) - {f.suffix.lower() for f in files}:
                path.with_suffix(ext).unlink(missing_ok=True)
        for f in files:
            os.replace(f, path.with_name(f.name))
    return path


@contextlib.contextmanager
def _staging_dir(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path``, removed afterwards; write errors made one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=temp_name(path), dir=path.parent))
    except OSError as err:
        raise output_error(path, err) from None
    try:
        yield folder
    except Exception as err:
        out_err = as_output_error(path, err)
        if out_err is not None:
            raise out_err from None
        if isinstance(err, ImportError):
            raise OutputError(f"cannot write {path}: {err}; install pyarrow "
                              "(pip install -c constraints.txt pyarrow) or choose .gpkg") from None
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
