"""Vector outputs by extension: GeoPackage, GeoJSON, FlatGeobuf, Shapefile, GeoParquet.

Every format is written by pyogrio (GDAL), GeoParquet by ``geopandas.to_parquet``
(pyarrow; GeoParquet 1.x metadata with the CRS). A file is written under its final name
inside a temporary folder beside the output, then renamed into place: readers never see
half a file, an existing output is replaced only on success, and the layer (GeoPackage
table, GeoJSON ``name``, FlatGeobuf header, Shapefile) is named after the output's stem,
never after a temporary name. A Shapefile's sidecars (``.shx``, ``.dbf``, ``.prj``,
``.cpg``) are renamed first and the ``.shp`` last. FlatGeobuf files carry a spatial
index, so their features are stored in the index's (Hilbert) order, not the frame's.
:class:`VectorSink` writes an output chunk by chunk (predict's polygons, block by block)
with the same guarantees and memory bounded by a chunk.
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

from geoseg.errors import GeoSegError, OutputError, OutputExistsError, listed
from geoseg.io.atomic import as_output_error, output_error, temp_name
from geoseg.io.datums import to_crs
from geoseg.io.near import split_antimeridian
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
#: The table where QGIS saves a GeoPackage layer's styles ("Save as default" / in the database).
STYLES = "layer_styles"


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
    layers geoseg does not write (a QGIS project's roads and parcels) would lose them.
    geoseg's own layer is named after the file's stem; the styles QGIS saved in the file
    (:data:`STYLES`) are carried over to the new one.

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
        others = [str(n) for n, _ in pyogrio.list_layers(path) if str(n) not in (path.stem, STYLES)]
    except Exception:  # not a GeoPackage GDAL reads: nothing readable is lost by replacing it
        return
    if others:
        shown = listed(others, 6)
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
    gdf = split_antimeridian(gdf)  # in degrees: a roof on 180° in two parts, not a polygon round the globe
    with _staging_dir(path) as folder:
        staged = folder / path.name
        if driver == "GeoParquet":
            gdf.to_parquet(staged, index=False, write_covering_bbox=True)  # GeoParquet 1.1: read near an area
        else:
            options: dict[str, Any] = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
            if driver != "ESRI Shapefile":
                options["layer"] = layer or path.stem
            gdf.to_file(staged, driver=driver, engine="pyogrio", **options)
        if driver == "GPKG":
            keep_styles(path, staged)
        _move_into_place(folder, path, driver)
    return path


def keep_styles(old: Path, new: Path) -> None:
    """Copy the styles QGIS saved in GeoPackage ``old`` (:data:`STYLES`) into ``new``, which replaces it.

    A layer styled in QGIS and saved as its default keeps that style when predict rewrites
    the file with ``--overwrite``. Nothing when ``old`` does not exist or holds no styles.
    """
    if not old.exists():
        return
    import pyogrio

    try:
        if STYLES not in {str(n) for n, _ in pyogrio.list_layers(old)}:
            return
        styles = pyogrio.read_dataframe(old, layer=STYLES)
    except Exception as err:  # an unreadable old file: nothing to keep (check_replace let it be replaced)
        log.warning("the styles saved in %s could not be read (%s); the new file has none", old, err)
        return
    pyogrio.write_dataframe(styles, new, layer=STYLES)


def _move_into_place(folder: Path, path: Path, driver: str) -> None:
    """Rename the files staged in ``folder`` over ``path`` (a Shapefile's sidecars first, the main file last)."""
    files = sorted(folder.iterdir(), key=lambda p: p.name == path.name)  # the main file last
    if driver == "ESRI Shapefile":  # an old index or sidecar the new file lacks would lie
        for ext in set(SHAPEFILE_SIDECARS) - {f.suffix.lower() for f in files}:
            path.with_suffix(ext).unlink(missing_ok=True)
    for f in files:
        os.replace(f, path.with_name(f.name))


@contextlib.contextmanager
def _staging_dir(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path``, removed afterwards; write errors made one line."""
    folder = _make_staging(path)
    try:
        with _write_errors(path):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _make_staging(path: Path) -> Path:
    """A new temporary folder beside ``path`` (named after it, so a crash leaves a recognisable one)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=temp_name(path), dir=path.parent))
    except OSError as err:
        raise output_error(path, err) from None


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """Errors of writing ``path`` (full disk, read-only folder, pyarrow missing) as one-line OutputErrors."""
    try:
        yield
    except Exception as err:
        out_err = as_output_error(path, err)
        if out_err is not None:
            raise out_err from None
        if isinstance(err, ImportError):
            raise OutputError(f"cannot write {path}: {err}; install pyarrow "
                              "(pip install -c constraints.txt pyarrow) or choose .gpkg") from None
        raise


#: Rows :class:`VectorSink` buffers before writing them (a few MB of polygons; a GeoParquet row group).
SINK_ROWS = 20000


class VectorSink:
    """An output written chunk by chunk, memory bounded by a chunk; moved into place whole on :meth:`commit`.

    Rows are buffered and written :data:`SINK_ROWS` at a time into a staging folder beside the
    output: GeoParquet as row groups of the file itself (its ``geo`` metadata, geopandas', with
    the bbox and geometry types of all rows, is added when it is closed); the OGR formats as a
    GeoPackage, which is the output for ``.gpkg`` and is otherwise converted on commit by
    streaming (pyogrio's Arrow reader into its Arrow writer). Then the file is renamed into
    place as :func:`write_vector` does. Leaving the ``with`` block without a commit (an error)
    removes everything staged: no half-written output.

    Args:
        path: the output (:data:`DRIVERS`).
        empty: the frame written when no chunk held a row: its columns and CRS make the layer.
        layer: layer name (default: the file's stem).
    """

    def __init__(self, path: str | Path, empty: gpd.GeoDataFrame, layer: str | None = None) -> None:
        self.path = Path(path)
        self.driver = vector_driver(self.path)
        self.layer = layer or self.path.stem
        self.empty = empty
        self.count = 0  # rows appended
        self.folder: Path | None = None
        self._buffer: list[gpd.GeoDataFrame] = []
        self._buffered = 0
        self._parquet: _ParquetRows | None = None

    def __enter__(self) -> VectorSink:
        self.folder = _make_staging(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    @property
    def _stream(self) -> Path:
        assert self.folder is not None, "VectorSink used outside its with block"
        return self.folder / (self.path.name if self.driver in ("GPKG", "GeoParquet") else "stream.gpkg")

    def append(self, gdf: gpd.GeoDataFrame) -> None:
        """Add rows (reprojected to EPSG:4326 for GeoJSON, as :func:`write_vector` does)."""
        if not len(gdf):
            return
        if self.driver == "GeoJSON" and not CRS.from_user_input(gdf.crs).equals(_WGS84):
            gdf = to_crs(gdf, _WGS84, f"{self.path} (GeoJSON: EPSG:4326)")
        gdf = split_antimeridian(gdf)
        self._buffer.append(gdf)
        self._buffered += len(gdf)
        self.count += len(gdf)
        if self._buffered >= SINK_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Write the buffered rows: one GDAL open and transaction, or one row group, per buffer."""
        if not self._buffer:
            return
        import pandas as pd

        gdf = self._buffer[0] if len(self._buffer) == 1 else gpd.GeoDataFrame(
            pd.concat(self._buffer, ignore_index=True), crs=self._buffer[0].crs)
        with _write_errors(self.path):
            if self.driver == "GeoParquet":
                self._parquet = self._parquet or _ParquetRows(self._stream)
                self._parquet.write(gdf)
            else:
                gdf.to_file(self._stream, driver="GPKG", layer=self.layer, engine="pyogrio",
                            append=self._stream.exists(),  # a spatial index only where it stays: a GeoPackage
                            **({} if self.driver == "GPKG" else {"SPATIAL_INDEX": "NO"}))
        self._buffer, self._buffered = [], 0

    def commit(self) -> Path:
        """Finish the staged file, in the output's format, and rename it into place; returns the path."""
        self._flush()
        if not self.count:
            write_vector(self.empty, self.path, layer=self.layer)
            return self.path
        stream = self._stream
        with _write_errors(self.path):
            if self._parquet is not None:
                self._parquet.close()
            if self.driver == "GPKG":
                keep_styles(self.path, stream)
            if self.driver not in ("GPKG", "GeoParquet"):
                final = stream.parent / "out" / self.path.name
                final.parent.mkdir()
                _ogr_from(stream, self.layer, final, self.driver)
                stream = final
            _move_into_place(stream.parent, self.path, self.driver)
        return self.path


def _ogr_from(stream: Path, layer: str, final: Path, driver: str) -> None:
    """Copy a staged GeoPackage layer into another OGR format (same layer name), batch by batch."""
    import pyogrio

    options = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
    with pyogrio.open_arrow(stream, layer=layer, use_pyarrow=True) as (meta, reader):
        pyogrio.write_arrow(reader, final, driver=driver, layer=None if driver == "ESRI Shapefile" else layer,
                            geometry_name=meta["geometry_name"], geometry_type=meta["geometry_type"],
                            crs=meta["crs"], layer_options=options)


class _ParquetRows:
    """A GeoParquet file written row group by row group (pyarrow), its ``geo`` metadata added on close.

    Each group is encoded by ``geopandas.to_parquet`` (WKB, the CRS as PROJJSON); the file's
    ``geo`` metadata is the first group's with the bbox and geometry types of all rows, so it
    is written in the footer when the file is closed (pyarrow's own schema copy is not stored:
    it would hold the first group's).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: Any = None
        self.schema: Any = None
        self.geo: dict[str, Any] = {}
        self.bounds: list[float] = []
        self.types: set[str] = set()

    def write(self, gdf: gpd.GeoDataFrame) -> None:
        import io
        import json

        import pyarrow.parquet as pq

        buf = io.BytesIO()
        gdf.to_parquet(buf, index=False, write_covering_bbox=True)
        table = pq.read_table(buf)
        if self.writer is None:
            self.geo = json.loads((table.schema.metadata or {})[b"geo"])
            self.schema = table.schema.remove_metadata()
            self.writer = pq.ParquetWriter(self.path, self.schema, store_schema=False)
        self.writer.write_table(table.cast(self.schema))
        box = [float(v) for v in gdf.total_bounds]
        self.bounds = box if not self.bounds else [min(self.bounds[0], box[0]), min(self.bounds[1], box[1]),
                                                   max(self.bounds[2], box[2]), max(self.bounds[3], box[3])]
        self.types |= {str(t) for t in gdf.geom_type.dropna().unique()}

    def close(self) -> None:
        """Write the footer (with the ``geo`` metadata of all rows); safe to call twice."""
        if self.writer is None:
            return
        import json

        column = self.geo["columns"][self.geo["primary_column"]]
        column["bbox"], column["geometry_types"] = self.bounds, sorted(self.types)
        self.writer.add_key_value_metadata({"geo": json.dumps(self.geo)})
        self.writer.close()
        self.writer = None
