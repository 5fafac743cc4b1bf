"""The per-process backend cache: one open backend per model key and model version.

Dask runs many tasks per worker process; each would otherwise load the model again.
The backend's FF batch lives on the cached object: a batch halved after running out of
memory (:mod:`geoseg.backends.governor`) is what every later task of the process uses,
until :func:`adopt` sets it again at the start of the next run.
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
    ff_batch: int | str
    """FF cell tiles per call, or ``"auto"``: opened with :data:`FIRST_FF_BATCH`, for predict to choose."""


#: FF batch a backend opened for ``ff_batch="auto"`` starts with (until predict's governor sets it).
FIRST_FF_BATCH = 32


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
            batch = key.ff_batch if isinstance(key.ff_batch, int) else FIRST_FF_BATCH
            _BACKENDS[versioned] = open_backend(key.model, key.backend, key.device, ff_batch=batch)
        return _BACKENDS[versioned]


def adopt(key: ModelKey, backend: Any) -> ModelKey:
    """Serve an open backend for ``key`` too, its FF batch set to ``key.ff_batch`` for a new run.

    ``geoseg predict`` opens a backend, chooses the FF batch from the memory available
    (:mod:`geoseg.predict.memory`), then hands this key to its tasks: in this process they
    get the same object (nothing is loaded twice), and halvings of an earlier run are
    forgotten. Workers of a cluster open their own backend with the key's batch.

    Returns:
        ``key``, with ``ff_batch`` capped at the backend's largest batch (TensorRT engines).
    """
    if not isinstance(key.ff_batch, int):
        raise TypeError(f"adopt needs a chosen FF batch, got {key.ff_batch!r}")
    cap = getattr(backend, "ff_batch_max", None)
    if cap is not None and key.ff_batch > cap:
        key = key._replace(ff_batch=int(cap))
    versioned = (key, _model_mtime(key.model))
    with _LOCK:
        _BACKENDS[versioned] = backend
    with backend.ff_lock:
        backend.ff_batch = key.ff_batch
        backend.ff_halved.clear()
    return key
