"""What every inference backend offers, and how a model path picks one.

A :class:`Backend` runs the two exportable graphs of the routed model (see
:mod:`geoseg.models.routed`) with numpy in and out, so that predict code never knows
whether torch, ONNX Runtime or TensorRT did the work::

    small (B, C_in, h, w) ──pv──▶ pv_logits (B, C, h, w), utility (B, h·scale/cell, w·scale/cell)
    tiles (N, C_in, cell+2·halo, cell+2·halo) ──ff──▶ ff_logits (N, C, cell, cell)
    regions (N, C_in, rows·cell+2·halo, cols·cell+2·halo) ──ff──▶ (N, C, rows·cell, cols·cell)

``downsample``, ``pad``, the router and ``fuse`` stay in Python around these calls.

Backends are chosen by name through :data:`BACKENDS`, an explicit dict (a bad name is a
:class:`~geoseg.errors.ConfigError` listing the valid ones). The torch backend reads a run
directory or ``.pt`` checkpoint; the onnx and tensorrt backends read an *export directory*,
the output of ``geoseg export``, recognised by its ``geoseg-export.json`` (see
``docs/export.md``).
"""

from __future__ import annotations

import importlib
import logging
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from geoseg.errors import CheckpointError, ConfigError
from geoseg.models.meta import ModelMeta, read_json_object
from geoseg.models.regions import MAX_SIDE

log = logging.getLogger(__name__)

#: Name of the metadata file that marks an export directory.
EXPORT_FILE = "geoseg-export.json"
#: Value of its ``format`` key.
EXPORT_FORMAT = "geoseg-export"
#: Version of the export directory layout this geoseg writes and reads.
EXPORT_FORMAT_VERSION = 1

BackendName = Literal["torch", "onnx", "tensorrt"]

#: Backend name -> "module:class", imported only when chosen (tensorrt is optional).
BACKENDS: dict[str, str] = {
    "torch": "geoseg.backends.torch_backend:TorchBackend",
    "onnx": "geoseg.backends.onnx_backend:OnnxBackend",
    "tensorrt": "geoseg.backends.tensorrt_backend:TensorRTBackend",
}


class Backend:
    """Runs the PV and FF graphs of one model; numpy float32 in and out.

    Subclasses implement :meth:`_pv` and :meth:`_ff`; this class checks shapes, converts
    inputs to contiguous float32, handles empty FF batches and splits FF into chunks of
    ``ff_batch`` tiles.

    Attributes:
        name: the backend's name in :data:`BACKENDS`.
        meta: what predict needs besides the graphs (:class:`~geoseg.models.meta.ModelMeta`).
        source: the file whose size and modification time identify the model (the
            checkpoint, or the export's JSON).
        device: where the graphs run (``"cpu"`` or ``"cuda"``).
        ff_batch: most FF cell tiles per call of the underlying graph (regions: as many
            pixels); halved when a call runs out of memory (:mod:`geoseg.backends.governor`).
        ff_halved: ``(from, to)`` of each halving since the run set :attr:`ff_batch`.
        ff_memory: the probe's :class:`~geoseg.backends.governor.FfMemory` (None: not probed).
        region_side: largest FF region side in cells (1 for graphs of fixed tile size).
    """

    name: ClassVar[str] = "base"

    def __init__(self, meta: ModelMeta, source: Path, device: str, ff_batch: int = 32) -> None:
        if ff_batch < 1:
            raise ConfigError(f"ff_batch must be >= 1, got {ff_batch}")
        self.meta = meta
        self.source = Path(source)
        self.device = device
        self.ff_batch = int(ff_batch)
        self.ff_halved: list[tuple[int, int]] = []
        self.ff_memory: Any = None
        self.ff_lock = threading.Lock()  # guards ff_batch, ff_halved, ff_memory
        self.ff_device_lock = threading.Lock()  # one FF call at a time on a GPU
        #: Largest region side (in cells) the FF graph takes; 1: single cells only (an old export).
        self.region_side = MAX_SIDE

    # ------------------------------------------------------------------ public
    def pv(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Enhance + PV + utility head on images already at 1/scale and padded.

        Args:
            small: normalised images at 1/scale; sides multiples of ``meta.pv_multiple``.

        Returns:
            ``(pv_logits, utility)`` as float32 arrays.

        Raises:
            ValueError: wrong rank, band count or side lengths (the message gives the fix).

        Shape:
            - small: (B, C_in, h, w)
            - pv_logits: (B, C, h, w)
            - utility: (B, h * scale / cell, w * scale / cell)
        """
        x = self._as_input(small, "small")
        step = self.meta.pv_multiple
        if x.shape[2] % step or x.shape[3] % step:
            raise ValueError(f"pv input sides {x.shape[2:]} must be multiples of {step} "
                             f"(multiple / scale); pad the decimated image first")
        pv_logits, utility = self._pv(x)
        return np.asarray(pv_logits, dtype=np.float32), np.asarray(utility, dtype=np.float32)

    def ff(self, tiles: np.ndarray) -> np.ndarray:
        """Enhance + FF on normalised full-resolution tiles (cells or regions) with their halo.

        A tile is one cell (side ``cell + 2 * tile_halo``) or a region of ``rows x cols``
        cells (``rows * cell + 2 * tile_halo`` by ``cols * cell + 2 * tile_halo``, at most
        :attr:`region_side` cells a side). Runs in chunks of about ``ff_batch`` cell tiles'
        worth of pixels, halving ``ff_batch`` and running again when the device runs out of
        memory (:func:`geoseg.backends.governor.run_ff`); an empty batch returns an empty array.

        Args:
            tiles: normalised tiles, all of one shape.

        Returns:
            FF logits (halo cropped), float32.

        Raises:
            ValueError: wrong rank, band count or tile sides.
            FfMemoryError: out of memory with one tile per call.

        Shape:
            - tiles: (N, C_in, rows * cell + 2 * tile_halo, cols * cell + 2 * tile_halo)
            - output: (N, C, rows * cell, cols * cell)
        """
        x = self._as_input(tiles, "tiles")
        side, cell, halo = self.meta.tile, self.meta.cell, self.meta.tile_halo
        h, w = x.shape[2:]
        rows, cols = (h - 2 * halo) // cell, (w - 2 * halo) // cell
        if min(rows, cols) < 1 or (h - 2 * halo) % cell or (w - 2 * halo) % cell:
            raise ValueError(f"ff tiles must be {side}x{side} (cell {cell} + 2 * halo {halo}), or regions "
                             f"of whole cells plus the halo (rows * {cell} + {2 * halo}), got {h}x{w}")
        if max(rows, cols) > self.region_side:
            raise ValueError(f"ff tiles of {rows}x{cols} cells exceed the {self.region_side} cells a side "
                             f"that this {self.name} FF graph takes; re-export the model for regions")
        if x.shape[0] == 0:
            return np.zeros((0, self.meta.n_outputs, h - 2 * halo, w - 2 * halo), dtype=np.float32)
        from geoseg.backends.governor import run_ff

        return run_ff(self, x)

    def ms_per_cell(self, ff_batch: int | None = None, repeats: int = 3) -> float:
        """Milliseconds of FF per cell, timed on a batch of random tiles.

        Args:
            ff_batch: tiles per timed batch (default: ``self.ff_batch``).
            repeats: timed runs after one warm-up; the median is kept.

        Returns:
            Median milliseconds per cell (used to turn a deadline into a K).
        """
        n = ff_batch or self.ff_batch
        side = self.meta.tile
        tiles = np.random.default_rng(0).standard_normal((n, self.meta.band_count, side, side),
                                                       dtype=np.float32)
        runs = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            self.ff(tiles)
            if i:
                runs.append((time.perf_counter() - t0) * 1000.0 / n)
        return statistics.median(runs)

    def close(self) -> None:
        """Release sessions, engines and device memory (idempotent)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={str(self.source)!r}, device={self.device!r})"

    # --------------------------------------------------------------- subclasses
    def _pv(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _ff(self, tiles: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _release_memory(self) -> None:
        """Give cached device memory back after an out-of-memory error (torch: its cache)."""

    def _as_input(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        bands = self.meta.band_count
        if x.ndim != 4 or x.shape[1] != bands:
            raise ValueError(f"{what} must be (batch, {bands} bands, height, width) for this "
                             f"model, got shape {tuple(x.shape)}")
        return x


# ---------------------------------------------------------------------------- metadata
def is_export_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding ``geoseg-export.json``."""
    p = Path(path)
    return p.is_dir() and (p / EXPORT_FILE).is_file()


def read_export_meta(export_dir: str | Path) -> ModelMeta:
    """Read and check the ``geoseg-export.json`` of an export directory.

    Args:
        export_dir: the directory written by ``geoseg export``.

    Returns:
        Its :class:`~geoseg.models.meta.ModelMeta` (see ``docs/export.md``).

    Raises:
        CheckpointError: no such file, not JSON, not a geoseg export, a newer layout, or
            missing keys (named).
    """
    path = Path(export_dir) / EXPORT_FILE
    if not path.is_file():
        raise CheckpointError(f"{Path(export_dir)} is not an export directory (no {EXPORT_FILE}); "
                              "run `geoseg export --model RUN --out DIR` and pass DIR")
    raw = read_json_object(path)
    if raw.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not a geoseg export (no '{EXPORT_FORMAT}' format marker); "
                              "re-run geoseg export")
    version = raw.get("format_version", 0)
    if not isinstance(version, int) or version > EXPORT_FORMAT_VERSION:
        raise CheckpointError(f"{path} has export format {version}, newer than this "
                              f"geoseg reads ({EXPORT_FORMAT_VERSION}); upgrade geoseg or re-export")
    meta = ModelMeta.from_mapping(raw, str(path))
    if not meta.files:
        raise CheckpointError(f"{path} lacks files; it is incomplete: re-run geoseg export")
    return meta


def export_file(export_dir: str | Path, meta: ModelMeta, kind: str, graph: str) -> Path:
    """Path of one graph file of an export (``kind`` ``onnx`` or ``tensorrt``, ``graph`` pv/ff).

    Raises:
        CheckpointError: the export has no such file (e.g. engines never built).
    """
    root = Path(export_dir)
    name = meta.files.get(kind, {}).get(graph)
    if not name or not (root / name).is_file():
        hint = ("build engines with `geoseg export --model " f"{root} --format tensorrt --out NEW_DIR` on a GPU"
                if kind == "tensorrt" else "re-run `geoseg export --format onnx`")
        raise CheckpointError(f"{root} holds no {kind} {graph} graph ({name or 'not listed in ' + EXPORT_FILE}); "
                              f"{hint}")
    return root / str(name)


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------- dispatch
def open_backend(
    model_path: str | Path,
    backend: BackendName | str = "torch",
    device: str = "auto",
    **options: Any,
) -> Backend:
    """Open a model with the named backend.

    Args:
        model_path: run directory or ``.pt`` checkpoint (torch), or export directory from
            ``geoseg export`` (onnx, tensorrt; its ``geoseg-export.json`` also works).
        backend: ``"torch"``, ``"onnx"`` or ``"tensorrt"``.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        **options: backend options, e.g. ``ff_batch`` (all), ``threads`` (onnx).

    Returns:
        The opened :class:`Backend`.

    Raises:
        ConfigError: unknown backend or device, or a model path of the wrong kind for the
            backend (the message says to run ``geoseg export`` first).
        CheckpointError: the model files are missing or corrupt.
        DependencyError: the backend's package or a GPU is missing.
    """
    target = BACKENDS.get(str(backend))
    if target is None:
        raise ConfigError(f"unknown backend '{backend}'; valid backends: {', '.join(BACKENDS)}")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device '{device}'; valid devices: auto, cpu, cuda")
    path = Path(model_path)
    if path.is_file() and path.name == EXPORT_FILE:
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"model {path} does not exist; pass a run directory, a .pt "
                              "checkpoint or an export directory from geoseg export")
    exported = is_export_dir(path)
    if backend == "torch" and exported:
        src = read_export_meta(path).checkpoint or "its run directory"
        raise ConfigError(f"{path} is an export directory; the torch backend reads the checkpoint it "
                          f"came from ({src}): pass that, or use --backend onnx")
    if backend == "tensorrt" and (read_export_meta(path).arch == "maskrcnn" if exported else is_maskrcnn(path)):
        raise ConfigError(f"{path} is a Mask R-CNN model, which has no TensorRT engines (docs/maskrcnn.md); "
                          "use --backend torch, or --backend onnx with its `geoseg export` directory")
    if backend != "torch" and not exported:
        raise ConfigError(f"the {backend} backend needs an export directory, but {path} is a run "
                          f"directory or checkpoint; run `geoseg export --model {path} --format "
                          f"{'tensorrt' if backend == 'tensorrt' else 'onnx'} --out DIR` first and pass DIR")
    if exported and (why := stale_export(path)):
        log.warning(why)
    module, attr = target.split(":")
    cls: Any = getattr(importlib.import_module(module), attr)  # a Backend subclass: (path, device, **options)
    backend_obj: Backend = cls(path, device=device, **options)
    return backend_obj


def stale_export(export_dir: Path) -> str | None:
    """Why an export no longer matches the checkpoint it came from (retrained, recalibrated), or None.

    The export records the sha256 of its checkpoint (``checkpoint_sha256``); where that file
    still exists and its bytes differ, predict with the export uses the old weights and
    ``--budget auto`` threshold. Exports of earlier revisions (no hash) and exports whose
    checkpoint is elsewhere (copied to another machine) are not checked.
    """
    from geoseg.io.stamps import changed_since

    meta = read_export_meta(export_dir)
    if not changed_since(meta.checkpoint, (meta.model_extra or {}).get("checkpoint_sha256")):
        return None
    src = meta.checkpoint
    return (f"{export_dir} was exported from {src}, which has changed since (retrained, or "
            f"recalibrated by geoseg calibrate): this run uses the export's older copy; re-export with "
            f"`geoseg export --model {src} --out {export_dir} --overwrite` to use the new one")


def is_maskrcnn(model_path: Path) -> bool:
    """Whether a run directory or ``.pt`` holds a Mask R-CNN model (False when it holds no checkpoint)."""
    from geoseg.models.checkpoint import load_checkpoint, resolve_checkpoint

    try:
        ckpt = load_checkpoint(resolve_checkpoint(model_path))
    except CheckpointError:
        return False
    return bool(ckpt["config"].get("model", {}).get("arch") == "maskrcnn")
