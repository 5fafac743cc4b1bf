"""TensorRT engines: building them from the ONNX of an export, and running them.

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

import math
import threading
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TrtProfiles:
    """Optimisation-profile ranges of the dynamic axes (min / opt / max).

    PV sides are low-resolution pixels (the ``small`` input); they are rounded down to
    multiples of ``pv_multiple``. Inputs outside these ranges are refused at run time with
    a message that says how to rebuild.

    Attributes:
        pv_max_batch: most images per PV call (predict sends one block at a time).
        pv_opt_side: side TensorRT tunes PV for (default: predict's default 2048 px block
            plus its context ring, at 1/scale).
        pv_max_side: largest PV side.
        ff_opt_batch: FF batch TensorRT tunes for (predict's default ``ff_batch``).
        ff_max_batch: largest FF batch.
    """

    pv_max_batch: int = 2
    pv_opt_side: int | None = None
    pv_max_side: int = 1024
    ff_opt_batch: int = 32
    ff_max_batch: int = 128

    def pv(self, meta: dict[str, Any]) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) shapes of the PV input ``small`` for a model's metadata."""
        c, m = int(meta["bands"]), int(meta["pv_multiple"])
        top = max(m, self.pv_max_side // m * m)
        opt = self.pv_opt_side or math.ceil((2048 + 2 * int(meta["multiple"])) / int(meta["scale"]))
        opt = min(top, max(m, math.ceil(opt / m) * m))
        return (1, c, m, m), (1, c, opt, opt), (max(1, self.pv_max_batch), c, top, top)

    def ff(self, meta: dict[str, Any]) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) shapes of the FF input ``tiles`` for a model's metadata."""
        c, t = int(meta["bands"]), int(meta["tile"])
        top = max(1, self.ff_max_batch)
        return (1, c, t, t), (min(top, max(1, self.ff_opt_batch)), c, t, t), (top, c, t, t)


def build_engine(onnx_path: Path, engine_path: Path, input_name: str,
                 shapes: tuple[Shape, Shape, Shape], *, fp16: bool, onnx_fp16: bool = False,
                 workspace_gb: float = 4.0) -> None:
    """Build and serialise one engine from an ONNX file.

    Args:
        onnx_path: the ONNX graph.
        engine_path: where to write the serialised engine.
        input_name: the graph's one input (``small`` or ``tiles``).
        shapes: its (min, opt, max) shapes for the optimisation profile.
        fp16: let TensorRT pick FP16 kernels (``BuilderFlag.FP16``).
        onnx_fp16: the ONNX already computes in FP16 (``geoseg export --fp16``); needed
            for FP16 on TensorRT versions that only build strongly typed networks.
        workspace_gb: workspace memory pool limit.

    Raises:
        DependencyError: tensorrt or a GPU missing.
        ExportError: the ONNX does not parse, or the build fails.
    """
    from geoseg.export import ExportError

    trt = import_tensorrt()
    require_cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path} ({errors[:300]}); re-export the ONNX "
                          "with another --opset or report the failing operator")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and not onnx_fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ExportError(f"tensorrt {trt.__version__} builds strongly typed networks only: FP16 must "
                              "come from the ONNX; export with `geoseg export --format tensorrt --fp16` "
                              "from the run directory (not from an FP32 ONNX export)")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see its log above); "
                          "try a larger workspace or smaller profile maxima")
    engine_path.write_bytes(bytes(serialized))


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
        self.ff_batch = min(self.ff_batch, self._ff_engine.max_shape[0])
        names = meta.get("outputs") or {}
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
