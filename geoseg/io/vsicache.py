"""GDAL's caches of remote files, dropped when the file at a URL changed.

``/vsicurl/`` and the object-store file systems keep, for the life of the process, each
file's size and the byte ranges downloaded (``CPL_VSIL_CURL_CACHE_SIZE``). A process that
lives across runs (a Dask worker, a notebook kernel) would read a file replaced at the same
URL from those caches: the old pixels, with the new file's stamp, and exit 0. Each run
stamps its remote scenes (:func:`geoseg.io.sources.remote_stamp`: ETag, Last-Modified,
size) and every open carries that identity: :func:`fresh` calls GDAL's
``VSICurlPartialClearCache`` for the path when this process last read it with another one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import logging
import os
import threading
from functools import cache

log = logging.getLogger(__name__)

_seen: dict[str, str] = {}  # GDAL path -> identity of the file this process read there
_lock = threading.Lock()


@cache
def _gdal() -> ctypes.CDLL | None:
    """The GDAL library rasterio runs on (its wheel's copy, else the system's), or None."""
    import rasterio

    libs = os.path.join(os.path.dirname(os.path.dirname(rasterio.__file__)), "rasterio.libs")
    found = sorted(glob.glob(os.path.join(libs, "libgdal*.so*"))) or \
        [p for p in [ctypes.util.find_library("gdal")] if p]
    for path in found:
        try:
            lib = ctypes.CDLL(path)
            lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            lib.VSICurlPartialClearCache.restype = None
            return lib
        except (OSError, AttributeError):
            continue
    return None


def clear(path: str) -> bool:
    """Drop GDAL's cached size and data of a ``/vsicurl/``-like ``path``; False if not possible."""
    lib = _gdal()
    if lib is None:
        return False
    lib.VSICurlPartialClearCache(path.encode())
    return True


def fresh(path: str, identity: str) -> None:
    """Before opening ``path``: drop GDAL's caches of it if this process read another file there.

    Args:
        path: the GDAL path (``/vsicurl/https://...``, ``/vsis3/...``).
        identity: the file's identity this run (empty: unknown, nothing is checked).
    """
    if not identity:
        return
    with _lock:
        before = _seen.get(path)
        _seen[path] = identity
    if before is not None and before != identity and not clear(path):
        log.warning("%s changed since this process read it and GDAL's cache of it cannot be "
                    "cleared here: restart the process (or Dask workers) to read the new file", path)
