"""TensorRT engines built from the ONNX of an export directory, verified against ONNX Runtime.

Written against the TensorRT 10 Python API. Engines are specific to the GPU model and
TensorRT version they were built with: build them on the machine (or the same kind of
machine) that will run predict. See ``docs/export.md``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from geoseg.backends.base import EXPORT_FILE, export_file, read_export_meta
from geoseg.backends.cache import FIRST_FF_BATCH
from geoseg.backends.tensorrt_backend import import_tensorrt, require_cuda
from geoseg.export.onnx import INPUTS, verify_inputs
from geoseg.export.report import ExportReport
from geoseg.export.verify import _tolerance, _verify, random_inputs
from geoseg.io.atomic import write_json
from geoseg.io.staging import staging_dir
from geoseg.models.meta import ModelMeta
from geoseg.models.regions import MAX_SIDE
from geoseg.predict.config import PredictConfig

#: predict's defaults, which the TensorRT optimisation profiles are tuned for
PREDICT_DEFAULTS = PredictConfig.model_fields

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TrtProfiles:
    """Optimisation-profile ranges of the dynamic axes (min / opt / max).

    PV sides are low-resolution pixels (the ``small`` input); they are rounded down to
    multiples of ``pv_multiple``. Inputs outside these ranges are refused at run time with
    a message that says how to rebuild.

    Attributes:
        pv_max_batch: most images per PV call (predict sends one block at a time).
        pv_opt_side: side TensorRT tunes PV for (default: predict's default block plus
            its context ring, at 1/scale).
        pv_max_side: largest PV side.
        ff_opt_batch: FF batch TensorRT tunes for (predict's batch before ``--ff-batch auto`` probes).
        ff_max_batch: largest FF batch.
        ff_max_cells: largest FF region side in cells (1: single cells only).
    """

    pv_max_batch: int = 2
    pv_opt_side: int | None = None
    pv_max_side: int = 1024
    ff_opt_batch: int = FIRST_FF_BATCH
    ff_max_batch: int = 128
    ff_max_cells: int = MAX_SIDE

    def pv(self, meta: ModelMeta) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) shapes of the PV input ``small`` for a model's metadata."""
        c, m = meta.band_count, meta.pv_multiple
        top = max(m, self.pv_max_side // m * m)
        block = int(PREDICT_DEFAULTS["block"].default)
        opt = self.pv_opt_side or math.ceil((block + 2 * meta.multiple) / meta.scale)
        opt = min(top, max(m, math.ceil(opt / m) * m))
        return (1, c, m, m), (1, c, opt, opt), (max(1, self.pv_max_batch), c, top, top)

    def ff(self, meta: ModelMeta) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) shapes of the FF input ``tiles`` for a model's metadata.

        Sides range from one cell's tile to a region of ``ff_max_cells`` cells a side
        (see :mod:`geoseg.models.regions`); TensorRT tunes for single cells.
        """
        c, t = meta.band_count, meta.tile
        top = max(1, self.ff_max_batch)
        side = max(1, self.ff_max_cells) * meta.cell + 2 * meta.tile_halo
        return (1, c, t, t), (min(top, max(1, self.ff_opt_batch)), c, t, t), (top, c, side, side)


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



def export_tensorrt(onnx_dir: str | Path, out_dir: str | Path, fp16: bool = True, *,
                    tolerance: float | None = None, overwrite: bool = False, profiles: TrtProfiles | None = None,
                    workspace_gb: float = 4.0) -> ExportReport:
    """Build TensorRT engines from an ONNX export and verify them against ONNX Runtime.

    Writes ``out_dir`` with the ONNX files, ``pv.engine``, ``ff.engine`` and the JSON
    (with ``files.tensorrt`` and a ``tensorrt`` section), atomically. ``out_dir`` may be
    ``onnx_dir`` itself with ``overwrite``.

    Args:
        onnx_dir: an export directory written by :func:`export_onnx`.
        out_dir: the export directory to create.
        fp16: let TensorRT use FP16 kernels.
        tolerance: largest max-abs difference to ONNX Runtime (default 1e-3, 5e-2 with FP16).
        overwrite: replace an existing ``out_dir``.
        profiles: a :class:`~geoseg.backends.tensorrt_backend.TrtProfiles` (default ranges if None).
        workspace_gb: TensorRT workspace limit.

    Returns:
        An :class:`ExportReport` (differences to ONNX Runtime on the CPU).

    Raises:
        DependencyError: tensorrt or a CUDA GPU is missing (the message gives the pip command).
        CheckpointError: ``onnx_dir`` is not an ONNX export.
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ExportError: the build fails, or the engines differ beyond the tolerance.
    """
    from geoseg.backends.tensorrt_backend import TensorRTBackend, import_tensorrt, require_cuda
    from geoseg.export.tensorrt import TrtProfiles, build_engine

    trt = import_tensorrt()
    require_cuda()
    from geoseg.backends.onnx_backend import OnnxBackend

    t0 = time.perf_counter()
    src, out = Path(onnx_dir), Path(out_dir)
    meta = read_export_meta(src)
    sources = {g: export_file(src, meta, "onnx", g) for g in ("pv", "ff")}
    prof = profiles or TrtProfiles()
    shapes = {"pv": prof.pv(meta), "ff": prof.ff(meta)}
    tol = _tolerance(tolerance, fp16 or meta.fp16)
    inputs = meta.inputs or INPUTS
    with staging_dir(out, overwrite) as tmp:
        for g, path in sources.items():
            shutil.copy2(path, tmp / f"{g}.onnx")
        for g in ("pv", "ff"):
            log.info("building the TensorRT %s engine (minutes)", g)
            build_engine(tmp / f"{g}.onnx", tmp / f"{g}.engine", inputs[g], shapes[g], fp16=fp16,
                         onnx_fp16=meta.fp16, workspace_gb=workspace_gb)
        info = {**meta.to_json(), "files": {"onnx": {"pv": "pv.onnx", "ff": "ff.onnx"},
                                  "tensorrt": {"pv": "pv.engine", "ff": "ff.engine"}},
                "tensorrt": {"version": str(trt.__version__), "fp16": fp16, "gpu": torch.cuda.get_device_name(),
                             "profiles": {g: dict(zip(("min", "opt", "max"), s, strict=True))
                                          for g, s in shapes.items()}}}
        info.setdefault("verification", {})
        write_json(tmp / EXPORT_FILE, info, indent=2)
        cases = random_inputs(meta, pv_max=shapes["pv"][2], ff_max=shapes["ff"][2][0])
        if shapes["ff"][2][2] > meta.tile:
            cases["ff"] += verify_inputs(meta, ff_max=shapes["ff"][2][0])["ff"][-1:]
        with OnnxBackend(tmp, device="cpu") as reference, TensorRTBackend(tmp, device="cuda") as candidate:
            diffs = _verify(reference, candidate, cases, tol, "TensorRT", out)
        info["verification"]["tensorrt"] = {"reference": "onnxruntime", "max_abs_diff": diffs, "tolerance": tol}
        write_json(tmp / EXPORT_FILE, info, indent=2)
    files = [out / n for n in ("pv.engine", "ff.engine", "pv.onnx", "ff.onnx", EXPORT_FILE)]
    return ExportReport(out, "tensorrt", "onnxruntime", diffs, tol, files, {}, meta.opset, fp16,
                        time.perf_counter() - t0)
