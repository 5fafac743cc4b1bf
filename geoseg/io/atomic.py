"""Atomic writes: write to a temporary name in the same folder, then rename.

A reader (or a rerun after a crash) never sees a half-written file: either the old
file, or the new one, or nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.

    Args:
        path: the final path.
        suffix: suffix of the temporary name (defaults to that of ``path``, so that
            drivers chosen by extension, e.g. GDAL's, still work).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=path.suffix if suffix is None else suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # let the writer create it (some drivers refuse an existing file)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any, indent: int | None = None) -> None:
    """Write JSON atomically."""
    write_text(path, json.dumps(obj, indent=indent))
