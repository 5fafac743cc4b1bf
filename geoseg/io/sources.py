"""Where a scene comes from: a local file, a URL, an object store, or a STAC catalogue.

A scene's *source* is a string: a local path, ``https://...``, ``s3://...`` or a GDAL path
(``/vsicurl/...``, ``/vsis3/...``). :func:`gdal_path` turns it into what GDAL opens, and
:func:`open_raster` opens it with the GDAL settings of remote reads (:func:`remote_options`):
no directory listing on open, a per-file read cache, consecutive ranges merged, retries
of transient HTTP errors. Cloud-Optimized GeoTIFFs are then read by range requests: PV's
decimated reads come from the overviews and FF reads only the windows it runs on. The
options are set at each open, so Dask workers in other processes (``--scheduler tcp://``)
read with them too; an option set in the environment wins over geoseg's default.

A remote file's identity (:func:`remote_stamp`: size, ETag, Last-Modified) stands in for a
local file's size and mtime in every cache and skip rule (:func:`geoseg.io.stamps.input_stamp`).

STAC Items, ItemCollections and API searches become scenes in :mod:`geoseg.io.stac`.
"""

from __future__ import annotations

import email.utils
import glob
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import rasterio
from rasterio.errors import RasterioError

from geoseg.errors import InputRasterError, first_line
from geoseg.io.encoding import Scaling

log = logging.getLogger(__name__)

#: URL schemes and the GDAL virtual file system each is read through.
SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/",
           "az": "/vsiaz/", "abfs": "/vsiaz/"}
#: GDAL network file systems (``/vsicurl/``, ``/vsis3/``...) taken as remote sources too.
VSI_NETWORK = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/",
               "/vsiwebhdfs/", "/vsihdfs/")

#: GDAL configuration of remote reads (an environment variable of the same name wins).
REMOTE_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the folder, no .aux/.ovr probes
    "VSI_CACHE": "TRUE",  # a read cache per open file
    "VSI_CACHE_SIZE": str(64 * 1024 * 1024),
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # ranges one after another through the process's download cache: the overlapping reads
    # of neighbouring blocks (PV's context ring, FF's halo, the watershed halo) are fetched once
    "GDAL_HTTP_MULTIRANGE": "SERIAL",
    "CPL_VSIL_CURL_CACHE_SIZE": str(256 * 1024 * 1024),
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",  # 429, 502, 503, 504 are retried
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
}

#: What to do when a remote scene cannot be read: the end of every such error.
REMOTE_HINT = ("check the URL (curl -I URL), that the server or bucket is reachable from here and "
               "from the Dask workers, and its credentials (GDAL_HTTP_*/AWS_*/GS_* settings)")


@dataclass(frozen=True)
class SceneSource:
    """A scene to read and the name it has in outputs.

    Attributes:
        source: a local path or a URL / GDAL path (see :func:`gdal_path`).
        name: the scene's name in chip names and the ``scene`` column (unique in a run).
        scaling: the per-band (scale, offset) its STAC asset declares (``raster:bands``),
            for a file that declares none itself (:mod:`geoseg.io.encoding`); None: none.
    """

    source: str
    name: str
    scaling: Scaling | None = None


def is_remote(source: str | Path) -> bool:
    """Whether ``source`` is a URL or a GDAL network path rather than a local file.

    Examples:
        >>> [is_remote(s) for s in ("https://h/a.tif", "s3://b/a.tif", "/vsis3/b/a.tif", "a.tif")]
        [True, True, True, False]
    """
    s = str(source)
    if s.startswith(VSI_NETWORK):
        return True
    scheme = s.split("://", 1)[0].lower() if "://" in s else ""
    return scheme in SCHEMES


def gdal_path(source: str | Path) -> str:
    """The path GDAL opens for a source: ``/vsicurl/https://...``, ``/vsis3/bucket/key``...

    Examples:
        >>> gdal_path("https://h.org/a/b.tif")
        '/vsicurl/https://h.org/a/b.tif'
        >>> gdal_path("s3://bucket/a/b.tif"), gdal_path("/vsis3/bucket/b.tif")
        ('/vsis3/bucket/a/b.tif', '/vsis3/bucket/b.tif')
        >>> gdal_path("scenes/a.tif")
        'scenes/a.tif'
    """
    s = str(source)
    if not is_remote(s) or s.startswith(VSI_NETWORK):
        return s
    scheme, rest = s.split("://", 1)
    vsi = SCHEMES[scheme.lower()]
    return vsi + (s if vsi == "/vsicurl/" else rest)


def http_url(source: str | Path) -> str | None:
    """The ``http(s)://`` URL of a source read over plain HTTP, else None."""
    s = str(source)
    if s.startswith("/vsicurl/"):
        s = s[len("/vsicurl/"):]
        if s.startswith("url="):  # /vsicurl?url=... style is not supported here
            return None
    return s if s.split("://", 1)[0].lower() in ("http", "https") else None


def scene_name(source: str | Path) -> str:
    """A scene's name in outputs: the file stem (of a URL's path, without its query).

    Examples:
        >>> scene_name("https://h.org/cogs/kampala_b.tif?token=x"), scene_name("/vsis3/b/k/x.tif")
        ('kampala_b', 'x')
        >>> scene_name("data/sample/a.tif")
        'a'
    """
    s = str(source)
    if is_remote(s):
        url = http_url(s) or s
        path = urllib.parse.urlsplit(url).path if "://" in url else url
        return PurePosixPath(urllib.parse.unquote(path)).stem
    return Path(s).stem


def remote_options() -> dict[str, str]:
    """:data:`REMOTE_OPTIONS` less those the environment sets (GDAL reads those itself)."""
    return {k: v for k, v in REMOTE_OPTIONS.items() if k not in os.environ}


@contextmanager
def open_raster(source: str | Path, identity: str = "") -> Iterator[Any]:
    """``rasterio.open`` of a scene source, with the remote read settings for URLs.

    Args:
        source: a local path, a URL or a GDAL path.
        identity: of a remote file, what :func:`remote_identity` said when the run
            inspected it: when this process read the URL before as another file, GDAL's
            caches of it are dropped first (:func:`geoseg.io.vsicache.fresh`).

    Yields:
        The open dataset.
    """
    if not is_remote(source):
        with rasterio.open(source) as src:
            yield src
        return
    from geoseg.io.vsicache import fresh

    path = gdal_path(source)
    with rasterio.Env(**remote_options()):
        fresh(path, identity)
        with rasterio.open(path) as src:
            yield src


def remote_identity(stamp: dict[str, Any]) -> str:
    """What tells two versions of a remote file apart, from its :func:`remote_stamp`."""
    return "|".join(str(stamp.get(k) or "") for k in ("etag", "last_modified", "bytes", "gdal"))


def _head(url: str, timeout: float = 20.0) -> dict[str, str]:
    """Response headers of ``url`` (HEAD; a one-byte GET where HEAD is refused), lower-case keys.

    Raises:
        InputRasterError: HTTP error or unreachable server, one line naming the URL.
    """
    for method in ("HEAD", "GET"):
        req = urllib.request.Request(url, method=method, headers={"Range": "bytes=0-0"} if method == "GET" else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http/https only)
                headers = {k.lower(): v for k, v in resp.headers.items()}
                if method == "GET" and "content-range" in headers:  # bytes 0-0/SIZE
                    headers["content-length"] = headers["content-range"].rpartition("/")[2]
                return headers
        except urllib.error.HTTPError as err:
            if method == "HEAD" and err.code in (403, 405, 501):  # presigned URLs refuse HEAD
                continue
            raise InputRasterError(f"cannot read remote scene {url}: HTTP {err.code} {err.reason}; "
                                   f"{REMOTE_HINT}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise InputRasterError(f"cannot reach remote scene {url}: {reason}; {REMOTE_HINT}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def remote_stamp(source: str | Path) -> dict[str, Any]:
    """The identity of a remote file: ``{"name", "url", "bytes", "etag", "last_modified", "mtime_ns"}``.

    Over HTTP(S) from the response headers (size, ETag, Last-Modified), so that a file
    replaced at the same URL counts as changed. Object stores read with credentials
    (``s3://``, ``/vsis3/``...) are stamped by their GDAL metadata (size, bands, type,
    georeferencing, tags): a file rewritten in place with the same of those is not
    noticed there; give new data new keys.

    Raises:
        InputRasterError: the file cannot be reached.
    """
    s = str(source)
    url = http_url(s)
    if url is not None:
        h = _head(url)
        modified = h.get("last-modified")
        mtime = email.utils.parsedate_to_datetime(modified).timestamp() if modified else None
        size = h.get("content-length")
        return {"name": scene_name(s), "url": s, "bytes": int(size) if size and size.isdigit() else None,
                "etag": h.get("etag"), "last_modified": modified,
                "mtime_ns": int(mtime * 1e9) if mtime is not None else 0}
    try:
        with open_raster(s) as src:
            meta = [src.width, src.height, src.count, list(src.dtypes), list(src.transform)[:6],
                    str(src.crs), src.tags(), [src.block_shapes[0]], src.overviews(1)]
    except RasterioError as err:
        raise InputRasterError(f"cannot read remote scene {s}: {first_line(err)}; {REMOTE_HINT}") from None
    from geoseg.io.stamps import digest

    return {"name": scene_name(s), "url": s, "bytes": None, "gdal": digest(meta), "mtime_ns": 0}


def check_unique_names(scenes: Iterable[SceneSource]) -> None:
    """Scene names must be unique: chips, caches and the ``scene`` column are named by them.

    Raises:
        InputRasterError: two scenes share a name.
    """
    seen: dict[str, str] = {}
    for s in scenes:
        if s.name in seen:
            raise InputRasterError(
                f"two scenes share the name '{s.name}' ({seen[s.name]} and {s.source}); scene names "
                "(file stems, or STAC item ids) must be unique: rename one")
        seen[s.name] = s.source


def matching_files(pattern: str) -> list[Path]:
    """The files a glob pattern matches (``**`` recursive), sorted; folders are left out."""
    return sorted(Path(h) for h in glob.glob(pattern, recursive=True) if os.path.isfile(h))


def list_scenes(inputs: Iterable[str | Path | SceneSource], asset: str | None = None) -> list[SceneSource]:
    """Scenes of the inputs: files, folders of rasters, URLs, and STAC Items / ItemCollections.

    A folder gives its rasters (by extension); a glob pattern (``scenes/*.tif``,
    ``**`` recursive) its matching files; a local path is made absolute (and a file
    given twice, say as a folder and as a file in it, is listed once); a URL or
    GDAL path is kept as given (not checked here: :func:`geoseg.io.rasters.inspect_scene`
    reads it); a STAC JSON (a file, or a URL ending in ``.json``) gives the ``asset`` of
    each of its items (:func:`geoseg.io.stac.stac_scenes`), named by item id.

    Raises:
        InputRasterError: a local input does not exist, a folder holds no raster, a pattern
            matches no file, two
            scenes share a name.
        InputVectorError: a STAC document is unreadable or an item lacks the asset.
    """
    from geoseg.io import folders, stac
    from geoseg.io.folders import folder_rasters

    out: list[SceneSource] = []
    for item in inputs:
        if isinstance(item, SceneSource):
            out.append(item)
            continue
        s = str(item)
        if stac.looks_like_stac(s):
            out.extend(stac.stac_scenes(s, asset))
        elif is_remote(s):
            out.append(SceneSource(s, scene_name(s)))
        elif s.startswith("/vsi"):  # /vsizip/, /vsitar/, /vsimem/: no file of its own to stamp or resume by
            raise InputRasterError(f"{s}: GDAL's archive and in-memory paths ({s.split('/')[1]}) are not read as "
                                   "scenes; extract the archive and pass its files or folder")
        else:
            path = Path(s)
            if path.is_file() and path.name.lower().endswith(folders.ARCHIVES):
                raise InputRasterError(f"{path} is an archive, not a raster: extract it first (unzip {path.name} "
                                       f"-d {path.name.split('.')[0]}/, or tar xf for a .tar) and pass the folder")
            if path.is_dir():
                found = folder_rasters(path)
                out.extend(SceneSource(str(p.resolve()), p.stem) for p in without_mosaic_tiles(found, path))
            elif path.exists():
                out.append(SceneSource(str(path.resolve()), path.stem))
            elif glob.has_magic(s):  # a pattern the shell did not expand (quoted, or in a pipeline YAML)
                hits = matching_files(s)
                if not hits:
                    raise InputRasterError(f"{s} matches no file; check the pattern")
                out.extend(SceneSource(str(h.resolve()), h.stem) for h in without_mosaic_tiles(hits, s))
            else:
                raise InputRasterError(f"{path} does not exist; check the path")
    out = list(dict.fromkeys(out))  # a file given twice (a folder and a file in it) is one scene
    check_unique_names(out)
    return out


def without_mosaic_tiles(found: list[Path], where: str | Path) -> list[Path]:
    """``found`` without the rasters that a GDAL VRT among them reads (the mosaic stands for them).

    A folder that holds a mosaic beside its tiles (``gdalbuildvrt mosaic.vrt *.tif``)
    would give every object twice, and train and validate on the same ground.
    """
    from geoseg.io.stamps import vrt_sources

    read = {q.resolve() for p in found for q in vrt_sources(p)}
    kept = [p for p in found if p.resolve() not in read]
    if len(kept) < len(found):
        mosaics = [p.name for p in found if p.suffix.lower() == ".vrt"]
        log.warning("%s: %d raster(s) read by the VRT mosaic %s are left out (the mosaic stands for them); "
                    "name the files to take them alone", where, len(found) - len(kept), ", ".join(mosaics))
    return kept
