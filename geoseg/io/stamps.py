"""One answer to "has this input changed?", for every cache and skip rule in geoseg.

A stamp is the name, size and newest modification time of a file, or of a folder and
everything in it (a run directory whose ``checkpoints/best.pt`` was rewritten counts as
changed even though the folder's own mtime did not move); a raster's stamp covers the
files it is read from too (a VRT mosaic's tiles, wherever they lie, an external mask or
overviews: :func:`raster_parts`); a remote scene's stamp is its
size, ETag and Last-Modified (:func:`geoseg.io.sources.remote_stamp`). Tile's manifest, predict's block
cache, the per-process backend cache and ``geoseg run``'s skip rules all compare stamps
from here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoseg.io.rasters import SceneInfo


def input_stamp(path: str | Path) -> dict[str, Any] | None:
    """``{"name", "bytes", "mtime_ns"}`` of a file or a whole folder; None when it is missing.

    A layer of a vector file (``x.gpkg|layername=roofs``) gets the file's stamp and ``layer``
    (and ``subset``, given ``|subset=SQL``).

    For a folder, ``bytes`` is the total size of the files in it and ``mtime_ns`` the newest
    mtime of the folder and of anything in it. A URL or GDAL network path (a ``str``) gets
    :func:`geoseg.io.sources.remote_stamp` (ETag and Last-Modified too); it raises
    :class:`~geoseg.errors.InputRasterError` when the file cannot be reached.

    Examples:
        >>> input_stamp("/nonexistent/x.tif") is None
        True
    """
    from geoseg.io.sources import is_remote, remote_stamp

    if is_remote(path):
        return remote_stamp(path)
    if "|layername=" in str(path) or "|subset=" in str(path):  # QGIS's syntax: the file's stamp, layer, subset
        from geoseg.io.vectors import split_source

        file, layer, subset = split_source(path)
        stamp = input_stamp(file)
        return None if stamp is None else {**stamp, "layer": layer, **({"subset": subset} if subset else {})}
    p = Path(path)
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    newest, size = st.st_mtime_ns, (0 if p.is_dir() else st.st_size)
    parts = [] if p.is_dir() else raster_parts(p)
    if p.is_dir():
        for top, dirs, files in os.walk(p):
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    s = os.stat(os.path.join(top, name))
                    newest = max(newest, s.st_mtime_ns)
                    if name in files:
                        size += s.st_size
                        parts += vrt_sources(Path(top, name))  # a mosaic's tiles may lie outside the folder
    for part in parts:  # a mosaic's tile re-processed in place changes the mosaic
        with contextlib.suppress(FileNotFoundError):
            s = part.stat()
            newest, size = max(newest, s.st_mtime_ns), size + s.st_size
    return {"name": p.name, "bytes": size, "mtime_ns": newest}


#: Files GDAL reads beside a raster ``x.tif`` when present: its external mask and overviews.
#: ``x.tif.aux.xml`` is left out: QGIS writes display statistics there on opening a scene.
SIDECARS = (".msk", ".ovr")


def raster_parts(path: Path) -> list[Path]:
    """The other local files whose pixels a raster file is read from: sidecars (:data:`SIDECARS`), a VRT's sources.

    Examples:
        >>> raster_parts(Path("/nonexistent/x.tif"))
        []
    """
    return [q for q in (path.with_name(path.name + ext) for ext in SIDECARS) if q.exists()] + vrt_sources(path)


def vrt_sources(path: Path) -> list[Path]:
    """The local files a GDAL VRT (``.vrt``) reads, its sources' sidecars included; [] for anything else.

    A VRT that does not open as a raster (an OGR vector VRT, a broken file) has none here:
    reading it fails later with its own error.
    """
    if path.suffix.lower() != ".vrt":
        return []
    import rasterio
    from rasterio.errors import RasterioError

    from geoseg.io.sources import is_remote

    try:
        with rasterio.open(path) as src:
            files = list(src.files)[1:]
    except (RasterioError, OSError):
        return []
    local = [Path(f) for f in files if not is_remote(f)]
    return local + [q for f in local for q in raster_parts(f) if q not in local]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (a checkpoint: what an export came from), read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def changed_since(checkpoint: str | Path | None, sha256: str | None) -> bool:
    """Whether the file an export came from still exists and is no longer the one hashed then.

    False when either is unknown (an export of an earlier revision) or the file is gone
    (an export moved to another machine): nothing to compare.
    """
    path = Path(checkpoint) if checkpoint else None
    return bool(sha256) and path is not None and path.is_file() and file_sha256(path) != sha256


def read_stamp(scene: SceneInfo) -> dict[str, Any]:
    """How a scene is read, JSON-ready: its grid (size, transform, CRS), bands, dtype, validity, encoding.

    Kept beside the file's :func:`input_stamp` by tile's manifest and predict's and search's
    caches: the same file with the same options, read otherwise (another geoseg revision's
    grid, or its handling of an alpha band or of nodata), never resumes their outputs.

    Examples:
        >>> from geoseg.io.rasters import SceneInfo
        >>> s = SceneInfo("a.tif", "a", 4, 2, 3, "uint8", "EPSG:32636", (1.0, 0, 0, 0, -1.0, 0), float("nan"), True)
        >>> read_stamp(s)["nodata"], read_stamp(s)["gsd"], read_stamp(s)["transform"]
        ('nan', None, [1.0, 0, 0, 0, -1.0, 0])
    """
    fields = asdict(scene)
    for key in ("source", "name", "identity"):  # the file's stamp says which file and version
        fields.pop(key)
    fields["nodata"] = None if scene.nodata is None else str(scene.nodata)  # NaN and inf are not JSON
    fields["gsd"] = None if math.isnan(scene.gsd) else scene.gsd
    loaded: dict[str, Any] = json.loads(json.dumps(fields))  # tuples as lists: equal to a manifest read back
    return loaded


def digest(payload: Any) -> str:
    """sha256 of a JSON-ready payload (keys sorted), e.g. stamps plus the options of a run."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
