"""ONNX export of a Mask R-CNN model (``model.arch: maskrcnn``): one ``detect`` graph, verified.

::

    detect.onnx   image (1, C_in, H, W) -> boxes (N, 4), scores (N,), labels (N,), masks (N, 1, M, M)

The graph is :meth:`geoseg.models.maskrcnn.MaskRCNNModel.detect` of one normalised image
(torchvision's batching transform, backbone and FPN, RPN, RoI heads, masks not pasted);
normalisation stays in Python with the band statistics of ``geoseg-export.json``, as for the
routed export and the torch path. H and W are dynamic: predict windows (block plus halo,
clipped at scene edges) keep their own size, as with torch (checked at two sizes that are
not the traced one, nor multiples of 32).

How (torch 2.14, torchvision 0.29): the TorchScript exporter (``dynamo=False``), opset 20
by default (11 and 17 also tested). The dynamo exporter fails: ``torch.export`` cannot
trace ``torchvision.ops.boxes._batched_nms_coordinate_trick`` (``if boxes.numel() == 0``
on a data-dependent size: ``GuardOnDataDependentSymNode``), so ``"auto"`` goes straight to
TorchScript, and ``exporter="dynamo"`` tries it and raises that as an :class:`ExportError`.

The trace keeps torchvision's data-dependent branches: ``batched_nms`` (its "no boxes"
case) is scripted while tracing (``torch.jit._script_if_tracing``), so a graph traced on a
window with detections gives none where torch gives none, and the other way round (tested).
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geoseg import __version__
from geoseg.backends.base import EXPORT_FILE, EXPORT_FORMAT, EXPORT_FORMAT_VERSION
from geoseg.backends.onnx_detect import DETECT_OUTPUTS
from geoseg.errors import ConfigError, GeoSegError, OutputExistsError, first_line
from geoseg.export.report import BOX_FACTOR, ExportReport
from geoseg.export.verify import ExportError, _tolerance
from geoseg.io.atomic import write_json
from geoseg.io.staging import staging_dir
from geoseg.io.stamps import file_sha256
from geoseg.models.meta import ModelMeta

log = logging.getLogger(__name__)

INPUT = "image"
#: Side of the image the graph is traced on (a multiple of 32; other sizes are verified).
TRACE_SIDE = 128
#: Windows the export is verified on: not the traced size, not multiples of 32.
VERIFY_SHAPES = ((96, 150), (130, 100))


class DetectGraph(nn.Module):
    """``MaskRCNNModel.detect`` of one image as a module with four tensor outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a MaskRCNNModel

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        det = self.model.detect(image)[0]
        return tuple(det[k] for k in DETECT_OUTPUTS)


def export_detect(model: nn.Module, path: Path, bands: int, opset: int | None, exporter: str) -> str:
    """Write the ``detect`` graph of a :class:`MaskRCNNModel` to ``path`` (TorchScript exporter).

    Args:
        model: the :class:`~geoseg.models.maskrcnn.MaskRCNNModel` (eval mode).
        path: the ``.onnx`` file to write.
        bands: input bands.
        opset: ONNX opset (None: the exporter's).
        exporter: ``"auto"`` or ``"torchscript"`` (the same), or ``"dynamo"`` (tried, fails
            with torch 2.14).

    Returns:
        The exporter used.

    Raises:
        ExportError: the exporter fails (its first line).
    """
    example = torch.randn(1, bands, TRACE_SIDE, TRACE_SIDE, generator=torch.Generator().manual_seed(0))
    try:
        if exporter == "dynamo":  # fails with torch 2.14 (module docstring); kept to say so when asked
            return _export_dynamo(model, example, path)
        from geoseg.export.onnx import quiet_stdout

        with warnings.catch_warnings(), quiet_stdout():  # TracerWarnings, deprecation, IR dumps
            warnings.simplefilter("ignore")
            torch.onnx.export(DetectGraph(model).eval(), (example,), str(path), input_names=[INPUT],
                              output_names=list(DETECT_OUTPUTS), opset_version=opset, dynamo=False,
                              dynamic_axes={INPUT: {2: "height", 3: "width"},
                                            **{k: {0: "detections"} for k in DETECT_OUTPUTS}})
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - the TorchScript exporter raises many types
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX export of the Mask R-CNN detect graph failed (torchscript: {first_line(err)}); "
                          "try another --opset (11 or newer), or report it with the model config") from None
    return "torchscript"


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """The dynamo exporter's attempt (``exporter="dynamo"``); an :class:`ExportError` with its first line."""
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as artifacts:
            warnings.simplefilter("ignore")
            torch.onnx.export(DetectGraph(model).eval(), (example,), str(path), input_names=[INPUT],
                              output_names=list(DETECT_OUTPUTS), dynamo=True, external_data=False,
                              dynamic_shapes=({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC},),
                              artifacts_dir=artifacts, verbose=False)
    except Exception as err:  # noqa: BLE001 - torch.export and onnxscript raise many types
        path.unlink(missing_ok=True)
        cause: BaseException = err
        while cause.__cause__ is not None:  # torch.onnx wraps what torch.export raised
            cause = cause.__cause__
        raise ExportError(f"the dynamo ONNX exporter cannot export Mask R-CNN ({type(cause).__name__}: "
                          f"{first_line(cause)}); "
                          "use exporter='torchscript' or 'auto'") from None
    return "dynamo"


def sample_windows(meta: ModelMeta) -> list[np.ndarray]:
    """Normalised windows the export is verified on: bright rectangles on a noisy darker field.

    Seeded (the same every time), of :data:`VERIFY_SHAPES`; rectangles of 8-40 px so that
    a model trained on buildings finds something in them.
    """
    rng = np.random.default_rng(0)
    out = []
    for h, w in VERIFY_SHAPES:
        x = rng.normal(-0.8, 0.3, (1, meta.band_count, h, w)).astype(np.float32)
        for _ in range(6):
            bh, bw = rng.integers(8, 41, 2)
            r, c = rng.integers(0, h - bh), rng.integers(0, w - bw)
            x[:, :, r:r + bh, c:c + bw] += 2.0
        out.append(x)
    return out


def compare_detections(reference: Any, candidate: Any, windows: list[np.ndarray]
                       ) -> tuple[dict[str, float], int, str | None]:
    """Largest differences of two backends' detections on the same windows.

    Detections are compared rank by rank (both are sorted by score). A different count,
    or a different class at some rank, is not a difference a tolerance can accept: it is
    returned as a mismatch, and the comparison stops there.

    Returns:
        ``({"boxes": px, "scores": d, "masks": d}, detections compared, mismatch)``;
        ``mismatch`` says where counts or classes differ (None when they never do).
    """
    worst = dict.fromkeys(("boxes", "scores", "masks"), 0.0)
    n = 0
    for x in windows:
        ref, got = reference.detect(x)[0], candidate.detect(x)[0]
        where = f"on a {x.shape[2]}x{x.shape[3]} window"
        if len(ref["scores"]) != len(got["scores"]):
            return worst, n, f"{len(got['scores'])} detections against torch's {len(ref['scores'])} {where}"
        if not torch.equal(ref["labels"], got["labels"].to(ref["labels"])):
            return worst, n, f"other classes than torch's for the same ranks {where}"
        n += len(ref["scores"])
        for k in worst:
            if len(ref[k]):
                d = (ref[k].double() - got[k].double()).abs().max()
                worst[k] = max(worst[k], float(d) if bool(torch.isfinite(d)) else float("inf"))
    return worst, n, None


def _check(diffs: dict[str, float], tol: float, out: Path) -> None:
    limits = {k: tol * (BOX_FACTOR if k == "boxes" else 1.0) for k in diffs}
    bad = {k: d for k, d in diffs.items() if not d <= limits[k]}
    if bad:
        worst = ", ".join(f"{k} {d:.2e} > {limits[k]:.0e}" for k, d in bad.items())
        raise ExportError(f"ONNX Runtime's detections differ from torch's ({worst}); nothing written to {out}: "
                          "pass a larger --tolerance if that is acceptable, else report it")


def export_maskrcnn_onnx(model_path: str | Path, out: Path, *, opset: int | None = None, fp16: bool = False,
                         tolerance: float | None = None, overwrite: bool = False,
                         exporter: str = "auto") -> ExportReport:
    """Export a Mask R-CNN checkpoint's ``detect`` graph to ONNX and verify it against torch.

    Writes ``detect.onnx`` and ``geoseg-export.json`` (``arch: maskrcnn``) into ``out``,
    atomically. Verification: :func:`sample_windows` through torch and ONNX Runtime (CPU);
    boxes must agree within ``BOX_FACTOR × tolerance`` px, scores and mask probabilities
    within ``tolerance``, counts and classes exactly.

    Args:
        model_path: run directory or ``.pt`` of a Mask R-CNN model.
        out: the export directory to create.
        opset: ONNX opset (default: the TorchScript exporter's, 20 with torch 2.14).
        fp16: refused (not supported for Mask R-CNN).
        tolerance: largest difference of scores and mask probabilities (default 1e-3).
        overwrite: replace an existing ``out``.
        exporter: ``"auto"`` or ``"torchscript"``; ``"dynamo"`` fails (module docstring).

    Returns:
        An :class:`ExportReport` (``max_abs_diff`` per output, ``detections`` compared).

    Raises:
        ConfigError: ``fp16``, or a bad tolerance.
        CheckpointError / OutputExistsError: see :func:`geoseg.export.onnx.export_onnx`.
        ExportError: the exporter fails, or ONNX Runtime differs beyond the tolerances.
    """
    from geoseg.backends.onnx_backend import OnnxBackend
    from geoseg.backends.torch_backend import TorchBackend, model_meta
    from geoseg.export.onnx import _guard_model, _onnx_opset
    from geoseg.models.checkpoint import load_model, resolve_checkpoint

    t0 = time.perf_counter()
    if fp16:
        raise ConfigError("--fp16 is not supported for a Mask R-CNN export (only FP32 is exported and "
                          "verified); drop --fp16")
    tol = _tolerance(tolerance, False)
    ckpt_path = resolve_checkpoint(model_path)
    _guard_model(out, ckpt_path)
    if out.exists() and not overwrite:  # fail before loading anything
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    model, ckpt_meta = load_model(model_path, "cpu")
    meta = model_meta(model, ckpt_meta)
    with staging_dir(out, overwrite) as tmp:
        used = export_detect(model, tmp / "detect.onnx", meta.band_count, opset, exporter)
        info: dict[str, Any] = {
            "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "geoseg_version": __version__,
            **meta.to_json(), "checkpoint_sha256": file_sha256(ckpt_path),
            "files": {"onnx": {"detect": "detect.onnx"}}, "inputs": {"detect": INPUT},
            "outputs": {"detect": list(DETECT_OUTPUTS)}, "exporter": {"detect": used},
            "opset": _onnx_opset(tmp / "detect.onnx"), "fp16": False,
            "verification": {}}
        write_json(tmp / EXPORT_FILE, info, indent=2)
        log.info("verifying %s against torch", out)
        reference = TorchBackend.from_model(model, ckpt_meta, "cpu")
        with OnnxBackend(tmp, device="cpu") as candidate:
            try:
                diffs, n, mismatch = compare_detections(reference, candidate, sample_windows(meta))
            except GeoSegError:
                raise
            except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
                raise ExportError(f"the exported detect graph fails in ONNX Runtime ({first_line(err)}); "
                                  f"nothing written to {out}: re-export with another --opset") from None
        if mismatch:
            raise ExportError(f"ONNX Runtime's detections differ from torch's: {mismatch}; nothing written "
                              f"to {out}: counts and classes must match, which --tolerance does not relax; "
                              "re-export with another --opset, or report it")
        _check(diffs, tol, out)
        if n == 0:
            log.warning("the model found nothing in the verification windows: only empty outputs were compared")
        info["verification"] = {"onnx": {"reference": "torch", "max_abs_diff": diffs, "tolerance": tol,
                                         "box_tolerance_px": tol * BOX_FACTOR, "detections": n,
                                         "windows": [list(s) for s in VERIFY_SHAPES]}}
        write_json(tmp / EXPORT_FILE, info, indent=2)
    return ExportReport(out, "onnx", "torch", diffs, tol, [out / "detect.onnx", out / EXPORT_FILE],
                        {"detect": used}, info["opset"], False, time.perf_counter() - t0, detections=n)
