"""Inference backends: the routed model's PV and FF graphs behind one numpy interface.

>>> from geoseg.backends import open_backend
>>> backend = open_backend("runs/b1", "torch")                  # doctest: +SKIP
>>> pv_logits, utility = backend.pv(small)                      # doctest: +SKIP
>>> ff_logits = backend.ff(tiles)                               # doctest: +SKIP

See :mod:`geoseg.backends.base` and ``docs/export.md``.
"""

from geoseg.backends.base import (
    BACKENDS,
    EXPORT_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    Backend,
    BackendName,
    is_export_dir,
    open_backend,
    read_export_meta,
)

__all__ = [
    "BACKENDS",
    "EXPORT_FILE",
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "Backend",
    "BackendName",
    "is_export_dir",
    "open_backend",
    "read_export_meta",
]
