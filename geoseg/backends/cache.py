"""The per-process backend cache: one open backend per (model, backend, device, version).

Dask runs many tasks per worker process; each would otherwise load the model again.
"""

from __future__ import annotations

import threading
from typing import Any

from geoseg.io.stamps import input_stamp

_BACKENDS: dict[tuple[str, str, str, int], Any] = {}
_LOCK = threading.Lock()


def _model_mtime(model: str) -> int:
    """Newest mtime of the files that make a model (so a retrained model is reloaded)."""
    stamp = input_stamp(model)
    return 0 if stamp is None else int(stamp["mtime_ns"])


def get_backend(model: str, backend: str, device: str) -> Any:
    """The backend for a model, opened once per process (per Dask worker) and per version."""
    from geoseg.backends import open_backend

    key = (model, backend, device, _model_mtime(model))
    with _LOCK:
        if key not in _BACKENDS:
            stale = [k for k in _BACKENDS if k[:3] == key[:3]]
            for k in stale:
                del _BACKENDS[k]
            _BACKENDS[key] = open_backend(model, backend, device)
        return _BACKENDS[key]
