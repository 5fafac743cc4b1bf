"""What `geoseg export` runs: ONNX, or ONNX then TensorRT engines."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from geoseg.backends.base import is_export_dir, is_maskrcnn, read_export_meta
from geoseg.errors import ConfigError, OutputExistsError
from geoseg.export.onnx import export_onnx
from geoseg.export.report import ExportReport
from geoseg.io.atomic import check_writable

if TYPE_CHECKING:
    from geoseg.export.tensorrt import TrtProfiles

Format = Literal["onnx", "tensorrt"]


def export_model(model_path: str | Path, out_dir: str | Path, fmt: Format = "onnx", *, fp16: bool = False,
                 opset: int | None = None, tolerance: float | None = None, overwrite: bool = False,
                 profiles: TrtProfiles | None = None) -> list[ExportReport]:
    """What `geoseg export` runs: ONNX, or ONNX then TensorRT engines, into ``out_dir``.

    A Mask R-CNN model (``model.arch: maskrcnn``) exports its ``detect`` graph to ONNX
    (:func:`geoseg.export.maskrcnn.export_maskrcnn_onnx`); it has no TensorRT engines.

    For ``tensorrt``, ``model_path`` may also be an ONNX export directory (the ONNX step is
    skipped); otherwise the ONNX is exported to a temporary directory first and copied into
    ``out_dir`` with the engines, so ``out_dir`` serves both the onnx and tensorrt backends.

    Args:
        model_path: run directory or ``.pt`` (or, for tensorrt, an ONNX export directory).
        out_dir: the export directory to create.
        fmt: ``"onnx"`` or ``"tensorrt"``.
        fp16: FP16 graphs (onnx) or FP16 kernels (tensorrt).
        opset: ONNX opset.
        tolerance: largest max-abs difference accepted (see :func:`export_onnx`).
        overwrite: replace an existing ``out_dir``.
        profiles: TensorRT profile ranges (a ``TrtProfiles``).

    Returns:
        One report per step (ONNX vs torch, then TensorRT vs ONNX Runtime).

    Raises:
        ConfigError: unknown format; ``tensorrt`` (or an export directory) for a Mask R-CNN model.
        DependencyError / CheckpointError / OutputExistsError / ExportError: see the steps.
    """
    out = check_writable(out_dir, "--out", directory=True)
    exported = is_export_dir(model_path)
    if read_export_meta(model_path).arch == "maskrcnn" if exported else is_maskrcnn(Path(model_path)):
        if fmt != "onnx" or exported:
            raise ConfigError(f"{model_path} is a Mask R-CNN model: it exports to ONNX only (--format onnx "
                              "from its run directory; no TensorRT engines, docs/maskrcnn.md)")
        from geoseg.export.maskrcnn import export_maskrcnn_onnx

        return [export_maskrcnn_onnx(model_path, out, opset=opset, fp16=fp16, tolerance=tolerance,
                                     overwrite=overwrite)]
    if fmt == "onnx":
        return [export_onnx(model_path, out, opset=opset, fp16=fp16, tolerance=tolerance, overwrite=overwrite)]
    if fmt != "tensorrt":
        raise ConfigError(f"unknown export format '{fmt}'; valid formats: onnx, tensorrt")
    from geoseg.backends.tensorrt_backend import import_tensorrt, require_cuda
    from geoseg.export.tensorrt import export_tensorrt

    trt = import_tensorrt()  # fail fast, before a minute of ONNX export
    require_cuda()
    if is_export_dir(model_path):
        return [export_tensorrt(model_path, out, fp16, tolerance=tolerance, overwrite=overwrite,
                                profiles=profiles)]
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx_fp16 = fp16 and not hasattr(trt.BuilderFlag, "FP16")  # strongly typed TensorRT: FP16 from ONNX
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.onnx-", dir=out.parent) as scratch:
        first = export_onnx(model_path, Path(scratch) / "onnx", opset=opset, fp16=onnx_fp16,
                            tolerance=tolerance)
        second = export_tensorrt(Path(scratch) / "onnx", out, fp16, tolerance=tolerance, overwrite=overwrite,
                                 profiles=profiles)
    first.out_dir, first.files = out, []
    return [first, second]
