"""Reading numpy's ``.npy`` / ``.npz`` files from many threads at once.

numpy parses an ``.npy`` header with :func:`ast.literal_eval`, and CPython 3.11's AST
constructor is not safe across threads: two Dask threads reading block files at the
same moment can fail with ``SystemError: AST constructor recursion depth mismatch``.
The header parse happens in :func:`numpy.load` for ``.npy`` and at each key of an
``.npz``, so both readers here do those steps under one process-wide lock (the data of a
memory map is read later, outside it).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import numpy as np

_HEADER = threading.Lock()


def load_npz(path: str | Path, *keys: str) -> tuple[np.ndarray, ...]:
    """The arrays ``keys`` of the ``.npz`` at ``path``, read whole."""
    with _HEADER, np.load(path) as z:
        return tuple(np.asarray(z[k]) for k in keys)


def map_npy(path: str | Path) -> np.ndarray:
    """The ``.npy`` at ``path`` as a read-only memory map (only the parts sliced are read)."""
    with _HEADER:
        return cast(np.ndarray, np.load(path, mmap_mode="r"))
