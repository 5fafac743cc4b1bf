"""TensorRT engines of an export directory, run on a CUDA GPU (built by :mod:`geoseg.export.tensorrt`).

Written against the TensorRT 10 Python API (name-based I/O: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``; explicit batch always). Buffers are torch
CUDA tensors, so no pycuda is needed. ``tensorrt`` is imported lazily: without it, or
without a CUDA GPU, every entry point raises :class:`~geoseg.errors.DependencyError`
whose message gives the pip command.

Engines are specific to the GPU model and TensorRT version they were built with: build
them on the machine (or the same kind of machine) that will run predict.

Not run in the environment this was written in (no GPU, no tensorrt wheel); see
``docs/export.md``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from geoseg.backends.base import EXPORT_FILE, Backend, export_file, read_export_meta
from geoseg.errors import CheckpointError, ConfigError, DependencyError

#: How to get TensorRT (in every DependencyError of this module).
INSTALL = ('pip install -c constraints.txt "geoseg[gpu]" on a machine with an NVIDIA GPU, CUDA and '
           "access to NVIDIA's package index for the tensorrt wheels")

Shape = tuple[int, ...]


def import_tensorrt() -> Any:
    """Import ``tensorrt`` (10 or newer).

    Returns:
        The ``tensorrt`` module.

    Raises:
        DependencyError: not installed, or older than 10.
    """
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: an install whose native libraries are missing
        raise DependencyError(f"tensorrt is not installed; {INSTALL}") from None
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < 10:
        raise DependencyError(f"tensorrt {trt.__version__} is too old (10 or newer needed); {INSTALL}")
    return trt


def require_cuda() -> Any:
    """Return ``torch`` after checking that it sees a CUDA GPU.

    Raises:
        DependencyError: no GPU visible to torch (or a CPU-only torch build).
    """
    import torch

    if not torch.cuda.is_available():
        raise DependencyError(f"TensorRT needs a CUDA GPU, and torch sees none; {INSTALL}")
    return torch



def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
             "INT32": torch.int32, "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8,
             "BOOL": torch.bool}
    for name, tdtype in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return tdtype
    raise CheckpointError(f"TensorRT engine uses tensor type {dtype}, which geoseg cannot feed; "
                          "rebuild the engine with geoseg export")


class _Engine:
    """One deserialised engine, its execution context and its own CUDA stream.

    A context is not safe to use from two threads at once (Dask runs several): calls are
    serialised by a lock.
    """

    def __init__(self, runtime: Any, path: Path, trt: Any) -> None:
        import torch

        self.path = path
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise CheckpointError(f"TensorRT cannot load {path}: it was built for another GPU or "
                                  "TensorRT version; rebuild it here with geoseg export --format tensorrt")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise CheckpointError(f"{path} has inputs {self.inputs}; geoseg engines have exactly one")
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        lo, _, hi = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        self.min_shape, self.max_shape = tuple(int(v) for v in lo), tuple(int(v) for v in hi)
        self.stream = torch.cuda.Stream()
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray, order: list[str]) -> list[np.ndarray]:
        import torch

        if any(s < lo or s > hi for s, lo, hi in zip(x.shape, self.min_shape, self.max_shape, strict=True)):
            raise ValueError(f"input {tuple(x.shape)} is outside the range {self.min_shape}..{self.max_shape} "
                             f"that {self.path.name} was built for; use a smaller predict --block / "
                             "--ff-batch or rebuild with larger --pv-max-side / --ff-max-batch")
        name = self.inputs[0]
        with self.lock, torch.cuda.stream(self.stream):
            inp = torch.from_numpy(x).to("cuda").to(self.dtypes[name]).contiguous()
            if not self.context.set_input_shape(name, tuple(inp.shape)):
                raise ValueError(f"{self.path.name} refuses input shape {tuple(inp.shape)}; rebuild it with "
                                 "geoseg export --format tensorrt")
            self.context.set_tensor_address(name, inp.data_ptr())
            outs = {}
            for o in self.outputs:
                shape = tuple(int(v) for v in self.context.get_tensor_shape(o))
                outs[o] = torch.empty(shape, dtype=self.dtypes[o], device="cuda")
                self.context.set_tensor_address(o, outs[o].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.path} failed (see its log above)")
            result = [outs[o].float().cpu().numpy() for o in order]  # .cpu() waits for the stream
        return result


class TensorRTBackend(Backend):
    """``pv.engine`` and ``ff.engine`` of an export directory, on a CUDA GPU.

    Args:
        export_dir: the output of ``geoseg export --format tensorrt``.
        device: ``"auto"`` or ``"cuda"`` (TensorRT has no CPU mode).
        ff_batch: most FF tiles per call (capped at the engine's profile maximum).

    Raises:
        ConfigError: ``device="cpu"``.
        DependencyError: tensorrt or a GPU is missing.
        CheckpointError: no engines in the directory, or engines built elsewhere.
    """

    name: ClassVar[str] = "tensorrt"

    def __init__(self, export_dir: str | Path, device: str = "auto", ff_batch: int = 32) -> None:
        if device == "cpu":
            raise ConfigError("the tensorrt backend runs on a CUDA GPU only; use --backend onnx or torch "
                              "with --device cpu")
        trt = import_tensorrt()
        require_cuda()
        root = Path(export_dir)
        meta = read_export_meta(root)
        super().__init__(meta, root / EXPORT_FILE, "cuda", ff_batch)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._pv_engine = _Engine(self._runtime, export_file(root, meta, "tensorrt", "pv"), trt)
        self._ff_engine = _Engine(self._runtime, export_file(root, meta, "tensorrt", "ff"), trt)
        self.ff_batch_max = int(self._ff_engine.max_shape[0])  # the engine's profile: no larger batch
        self.ff_batch = min(self.ff_batch, self.ff_batch_max)
        top = min(self._ff_engine.max_shape[2:])  # engines of older exports: the tile side only
        self.region_side = max(1, min(self.region_side, (top - 2 * meta.tile_halo) // meta.cell))
        names = meta.outputs or {}
        self._pv_out = list(names.get("pv") or self._pv_engine.outputs)
        self._ff_out = list(names.get("ff") or self._ff_engine.outputs)

    def _pv(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, utility = self._pv_engine(small, self._pv_out[:2])
        return logits, utility

    def _ff(self, tiles: np.ndarray) -> np.ndarray:
        return self._ff_engine(tiles, self._ff_out[:1])[0]

    def close(self) -> None:
        """Drop contexts, engines and the runtime (in that order)."""
        for key in ("_pv_engine", "_ff_engine", "_runtime"):
            self.__dict__.pop(key, None)
