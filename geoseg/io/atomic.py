"""Atomic writes: write to a temporary name in the same folder, then rename.

A reader (or a rerun after a crash) never sees a half-written file: either the old
file, or the new one, or nothing. An output that cannot be written (its folder is a file,
a read-only file system, a full disk) is one :class:`~geoseg.errors.OutputError` naming
the output, and :func:`check_writable` finds most of them before any work is done.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from geoseg.errors import GeoSegError, OutputError

#: errno values that say "this output cannot be written here", whatever wrote it.
WRITE_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM,
    errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ENOENT, errno.EEXIST, errno.EXDEV,
})

#: free bytes under which a write error is taken for a full disk.
DISK_FULL_BYTES = 1 << 20

#: characters kept in temporary names; the rest become "_" (pyogrio cuts a name at ";").
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def _advice(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space or choose another output folder"
    if err.errno == errno.ENAMETOOLONG:
        return "choose a shorter name"
    return "choose a folder you can write to"


def check_outputs(outputs: Mapping[str, str | Path | Iterable[str | Path] | None],
                  inputs: Mapping[str, str | Path | Iterable[str | Path] | None]) -> None:
    """Fail now, before any work, where an output would replace an input or another output.

    ``--prob-out scene.tif`` wrote the probabilities over the scene it read, ``--json
    pred.gpkg`` the report over the predictions, ``--quicklook scene.tif`` a PNG over the
    scene, each with exit 0. URLs and GDAL paths among the inputs are not local files and
    are skipped.

    Args:
        outputs: what the message names (``"--prob-out"``) -> the path or paths it writes.
        inputs: what the message names (``"a scene"``) -> the path or paths read.

    Raises:
        OutputError: an output is an input, or two outputs are one file.

    Examples:
        >>> check_outputs({"--json": "a.gpkg"}, {"the predictions": "a.gpkg"})
        Traceback (most recent call last):
        geoseg.errors.OutputError: --json a.gpkg is the predictions: it would be overwritten; choose another name
    """
    def paths(v: str | Path | Iterable[str | Path] | None) -> list[str | Path]:
        return [] if v is None else [v] if isinstance(v, (str, Path)) else list(v)

    read = {Path(p).resolve(): what for what, v in inputs.items() for p in paths(v) if "://" not in str(p)
            and not str(p).startswith("/vsi")}
    written: dict[Path, str] = {}
    for what, v in outputs.items():
        for p in paths(v):
            r = Path(p).resolve()
            if r in read:
                raise OutputError(f"{what} {p} is {read[r]}: it would be overwritten; choose another name")
            if r in written:
                raise OutputError(f"{what} {p} is also {written[r]}'s output; give each output its own name")
            written[r] = what


def output_error(path: Path, err: OSError, what: str = "output") -> OutputError:
    """The one-line error for an ``OSError`` met while writing ``path``."""
    reason = err.strerror or str(err) or type(err).__name__
    return OutputError(f"cannot write {what} {path}: {reason}; {_advice(err)}")


def check_writable(path: str | Path, what: str = "output", *, directory: bool = False) -> Path:
    """Fail now, before any work, if ``path`` cannot be written.

    The deepest existing ancestor of ``path`` must be a folder in which a file can be
    created (a probe file is created and removed there); nothing else is created.

    Args:
        path: the output file (or folder, with ``directory=True``).
        what: how the message names it, e.g. ``"--out"``.
        directory: ``path`` is a folder to create or fill; otherwise a file.

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: ``path`` (or a folder above it) is a file, an existing file output is
            a folder, or the folder cannot be written.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        kind = "a folder" if path.is_dir() else "a file"
        raise OutputError(f"cannot write {what} {path}: it is {kind}; choose another name")
    parent = path if directory else path.parent
    while not parent.exists():
        if parent.is_symlink() or parent == parent.parent:  # a dangling link, or nothing exists
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".geoseg-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise output_error(path, err, what) from None
    return path


def temp_name(path: Path) -> str:
    """A prefix for the temporary names of ``path``: ``.<stem>.`` with unsafe characters as ``_``."""
    return "." + _UNSAFE.sub("_", path.stem) + "."


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < DISK_FULL_BYTES
    except OSError:
        return False


def as_output_error(path: str | Path, err: BaseException, what: str = "output") -> OutputError | None:
    """The one-line :class:`OutputError` for ``err`` met while writing ``path``, or None.

    An ``OSError`` whose errno says the output cannot be written (a full disk, a read-only
    file system, a folder that is a file), or any other error (GDAL's and pyogrio's carry
    no errno) while the disk holding ``path`` is full, is an output error; anything else
    is not (None), and the caller re-raises it.
    """
    if isinstance(err, GeoSegError):
        return None
    path = Path(path)
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        return output_error(path, err, what)
    if _disk_full(path.parent if not path.is_dir() else path):
        return output_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), what)
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched. The temporary
    name holds only safe characters (``.<stem>.<random>.<ext>``), so a writer never sees
    a character a driver interprets (pyogrio cuts a name at ``;``).

    Args:
        path: the final path.
        suffix: suffix of the temporary name (defaults to that of ``path``, so that
            drivers chosen by extension, e.g. GDAL's, still work).
        what: how an error names the output, e.g. ``"--prob-out"``.

    Raises:
        OutputError: the file cannot be written (a folder that is a file, a read-only file
            system, a full disk), named; other errors of the writer pass through.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_name(path), suffix=_UNSAFE.sub("_", suffix),
                                   dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise output_error(path, err, what) from None
    tmp_path = Path(tmp)
    tmp_path.unlink()  # let the writer create it (some drivers refuse an existing file)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except Exception as err:
        out_err = as_output_error(path, err, what)  # before the temporary frees its space
        if out_err is not None:
            raise out_err from None
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def write_text(path: str | Path, text: str, what: str = "output") -> None:
    """Write text atomically (``what`` names the output in errors)."""
    with atomic_path(path, what=what) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any, indent: int | None = None, what: str = "output") -> None:
    """Write JSON atomically; NaN and infinity are refused (they are not JSON)."""
    write_text(path, json.dumps(obj, indent=indent, allow_nan=False), what)
