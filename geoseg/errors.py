"""Errors and warnings of geoseg.

Every error a user can cause is a :class:`GeoSegError`; the CLI prints its message as one
line ``geoseg: error: ...`` and exits 1. Subclasses also inherit the builtin they refine,
so ``except OSError`` still catches an unreadable raster (as rasterio does).
Messages name the file or value at fault and say what to do.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (its type when empty), for a one-line error.

    A line over ``limit`` characters ends at its last full sentence (or word) within the
    limit, with "..." where it was cut: never mid-word. torch's "Please feel free to
    request support" plea is dropped.

    Examples:
        >>> first_line(ValueError("bad header\\nTraceback ..."))
        'bad header'
        >>> first_line(OSError("failed finding central directory. This is an internal error of it"), limit=40)
        'failed finding central directory'
        >>> first_line(KeyError())
        'KeyError'
        >>> try:
        ...     raise OSError("Read failed. See previous exception for details.") from OSError("x.tif: No such file")
        ... except OSError as err:
        ...     first_line(err)
        'x.tif: No such file'
    """
    text = str(err).strip()
    if "See previous exception" in text and err.__cause__ is not None:  # rasterio's read: GDAL's reason is the cause
        return first_line(err.__cause__, limit)
    line = text.splitlines()[0] if text else type(err).__name__
    line = line.split(" Please feel free to request support")[0].rstrip(" .")  # the caller punctuates
    if len(line) <= limit:
        return line
    head = line[:limit]
    end = head.rfind(". ")
    if end > limit // 4:
        return head[:end]
    return head[:head.rfind(" ")].rstrip(",;:") + "..." if " " in head else head + "..."



def listed(names: Iterable[object], most: int = 8) -> str:
    """The first ``most`` names, comma-separated, and how many more: the lists in geoseg's messages.

    Examples:
        >>> listed(["a.png", "b.png"]), listed(range(5), most=3)
        ('a.png, b.png', '0, 1, 2 and 2 more')
    """
    items = [str(n) for n in names]
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")

class GeoSegError(Exception):
    """Root of every geoseg error."""


class ConfigError(GeoSegError, ValueError):
    """A configuration file or option is invalid (unknown key, wrong type, bad value)."""


class InputRasterError(GeoSegError, OSError):
    """A raster cannot be read or lacks what geoseg needs (e.g. a CRS)."""


class InputVectorError(GeoSegError, OSError):
    """A vector file cannot be read or lacks what geoseg needs (e.g. a CRS)."""


class OutputError(GeoSegError, OSError):
    """An output cannot be written: its folder is a file or read-only, the disk is full."""


class SchedulerError(GeoSegError, ConnectionError):
    """The Dask scheduler named by ``--scheduler tcp://...`` cannot be reached."""


class OutputExistsError(GeoSegError, FileExistsError):
    """An output exists and would be clobbered without ``--overwrite``.

    Attributes:
        path: the file at fault where the message names one of several outputs (None: ``--out``).
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CheckpointError(GeoSegError, ValueError):
    """A checkpoint file is corrupt, foreign, or incompatible."""


class DependencyError(GeoSegError, ImportError):
    """An optional dependency is missing; the message gives the pip command."""


class FfMemoryError(GeoSegError, MemoryError):
    """An FF call ran out of memory at the smallest chunk it can be cut into (one tile)."""


class GeoSegWarning(UserWarning):
    """Root of geoseg's warnings: non-fatal problems the user should know about."""


class EmptyLabelsWarning(GeoSegWarning):
    """A label file holds no usable geometry: only negative chips will be written."""


class SkippedInputWarning(GeoSegWarning):
    """An input was skipped (``--skip-bad``)."""


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Silence geoseg's warnings, both kinds: :class:`GeoSegWarning` and the ``geoseg`` loggers' warnings.

    For work done twice in one command, such as ``geoseg run`` opening a stage's scenes to
    decide whether it is up to date: the stage gives its warnings when it runs, once. The
    warnings filter and the logger's level are process-wide: no other thread should warn
    meanwhile.
    """
    logger = logging.getLogger("geoseg")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeoSegWarning)
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)
