"""The per-process backend cache: one open backend per (model, backend, device, version).

Dask runs many tasks per worker process; each would otherwise load the model again.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

_BACKENDS: dict[tuple[str, str, str, int], Any] = {}
_LOCK = threading.Lock()


def _model_mtime(model: str) -> int:
    """Newest mtime of the files that make a model (so a retrained model is reloaded)."""
    path = Path(model)
    if path.is_dir():
        files = [*path.glob("checkpoints/*.pt"), *path.glob("*.pt"), *path.glob("*.json"),
                 *path.glob("*.onnx"), *path.glob("*.engine")]
        return max((f.stat().st_mtime_ns for f in files), default=0)
    return path.stat().st_mtime_ns if path.exists() else 0


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
