"""The per-process backend cache: one open backend per model key and model version.

Dask runs many tasks per worker process; each would otherwise load the model again.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from geoseg.io.stamps import input_stamp


class ModelKey(NamedTuple):
    """Which backend a predict task needs: everything :func:`open_backend` is given."""

    model: str
    backend: str
    device: str
    ff_batch: int


_BACKENDS: dict[tuple[ModelKey, int], Any] = {}
_LOCK = threading.Lock()


def _model_mtime(model: str) -> int:
    """Newest mtime of the files that make a model (so a retrained model is reloaded)."""
    stamp = input_stamp(model)
    return 0 if stamp is None else int(stamp["mtime_ns"])


def get_backend(key: ModelKey) -> Any:
    """The backend for a key, opened once per process (per Dask worker) and per model version."""
    from geoseg.backends import open_backend

    versioned = (key, _model_mtime(key.model))
    with _LOCK:
        if versioned not in _BACKENDS:
            for old in [k for k in _BACKENDS if k[0] == key]:
                del _BACKENDS[old]  # not closed: a task of this process may still hold it
            _BACKENDS[versioned] = open_backend(key.model, key.backend, key.device, ff_batch=key.ff_batch)
        return _BACKENDS[versioned]
