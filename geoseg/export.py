"""`geoseg export`: the routed model's two graphs as ONNX and TensorRT engines, verified.

What is exported (see DESIGN.md, "export")::

    pv.onnx   small (B, C_in, h, w)            -> pv_logits (B, C, h, w), utility (B, h', w')
    ff.onnx   tiles (N, C_in, cell+2h, cell+2h) -> ff_logits (N, C, cell, cell)

``downsample``, ``pad``, the router and ``fuse`` stay in Python. Enhance is inside both
graphs. Axes marked dynamic: PV batch, height and width; FF batch.

Every export is checked before it is kept: each graph runs on random inputs of two
batch sizes (and, for PV, two spatial sizes) in the exported runtime and in the
reference (torch for ONNX, ONNX Runtime for TensorRT); the largest absolute difference
must stay within a tolerance (1e-3, or 5e-2 for FP16) or :class:`ExportError` is raised.
The output directory is written under a temporary name and renamed when complete, so a
failed export leaves nothing behind. Format of the directory: ``docs/export.md``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from geoseg import __version__
from geoseg.backends.base import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    Backend,
    export_file,
    is_export_dir,
    max_abs_diff,
    model_meta,
    random_inputs,
    read_export_meta,
)
from geoseg.errors import ConfigError, GeoSegError, OutputExistsError
from geoseg.io.atomic import write_json

if TYPE_CHECKING:
    from geoseg.backends.tensorrt_backend import TrtProfiles

log = logging.getLogger(__name__)

#: Largest max-abs difference accepted by default (FP32 graphs).
DEFAULT_TOLERANCE = 1e-3
#: Default when a graph computes in FP16 (``--fp16``).
FP16_TOLERANCE = 5e-2

Exporter = Literal["auto", "dynamo", "torchscript"]
Format = Literal["onnx", "tensorrt"]

INPUTS = {"pv": "small", "ff": "tiles"}
OUTPUTS = {"pv": ["pv_logits", "utility"], "ff": ["ff_logits"]}


class ExportError(GeoSegError, RuntimeError):
    """An export failed: the exporter refused the model, or its outputs differ from the reference."""


@dataclass
class ExportReport:
    """What one export wrote and how closely it matches its reference.

    Attributes:
        out_dir: the export directory.
        format: ``"onnx"`` or ``"tensorrt"``.
        reference: what the graphs were compared with (``"torch"`` or ``"onnxruntime"``).
        max_abs_diff: largest absolute difference per graph (``pv``, ``ff``).
        tolerance: the largest accepted.
        files: the files written.
        exporter: per graph, the ONNX exporter used (``"dynamo"`` or ``"torchscript"``).
        opset: ONNX opset of the graphs.
        fp16: whether the graphs compute in FP16.
        seconds: wall time of the export and its verification.
    """

    out_dir: Path
    format: str
    reference: str
    max_abs_diff: dict[str, float]
    tolerance: float
    files: list[Path] = field(default_factory=list)
    exporter: dict[str, str] = field(default_factory=dict)
    opset: int | None = None
    fp16: bool = False
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """Human-readable summary: differences per graph, then the output paths."""
        how = ", ".join(f"{g} {e}" for g, e in self.exporter.items())
        extra = f"; exporter {how}, opset {self.opset}" if self.exporter else ""
        diffs = ", ".join(f"{g} {d:.2e}" for g, d in self.max_abs_diff.items())
        return [
            f"{self.format}{' (fp16)' if self.fp16 else ''}: max |difference| vs {self.reference}: "
            f"{diffs} (tolerance {self.tolerance:.0e}{extra}; {self.seconds:.1f} s)",
            *[f"wrote {p}" for p in self.files],
        ]


class _Graph(nn.Module):
    """``pv_graph`` or ``ff_graph`` as a module of one float32 input (optionally FP16 inside)."""

    def __init__(self, model: nn.Module, graph: str, fp16: bool) -> None:
        super().__init__()
        self.model, self.graph, self.fp16 = model, graph, fp16

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = getattr(self.model, f"{self.graph}_graph")(x.half() if self.fp16 else x)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


# ---------------------------------------------------------------------------- helpers
def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _tolerance(tolerance: float | None, fp16: bool) -> float:
    if tolerance is None:
        return FP16_TOLERANCE if fp16 else DEFAULT_TOLERANCE
    if not tolerance > 0:
        raise ConfigError(f"--tolerance must be > 0, got {tolerance}")
    return float(tolerance)


@contextlib.contextmanager
def staging_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``out``; rename it onto ``out`` on success.

    On an exception the temporary directory is removed and ``out`` is left as it was.

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is False, or ``out`` is a file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; --out must name a directory")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    tmp.chmod(0o777 & ~mask)  # mkdtemp makes 0700; an export is shared like any output
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _export_graph(module: nn.Module, example: torch.Tensor, path: Path, graph: str,
                  axes: dict[int, str], out_axes: dict[str, dict[int, str]], opset: int | None,
                  exporter: Exporter) -> str:
    """Export one graph to ``path``: dynamo first, the TorchScript exporter as a fallback.

    Returns:
        The exporter used, ``"dynamo"`` or ``"torchscript"``.

    Raises:
        ExportError: every allowed exporter failed (the message has each first line).
    """
    name, outputs = INPUTS[graph], OUTPUTS[graph]
    module = module.eval()
    failure = ""
    if exporter in ("auto", "dynamo"):
        try:
            with warnings.catch_warnings(), tempfile.TemporaryDirectory() as artifacts:
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (example,), str(path), input_names=[name], output_names=outputs,
                                  opset_version=opset, dynamo=True, external_data=False, verbose=False,
                                  dynamic_shapes=({a: torch.export.Dim.DYNAMIC for a in axes},),
                                  artifacts_dir=artifacts)
            return "dynamo"
        except Exception as err:  # noqa: BLE001 - torch.export and onnxscript raise many types
            path.unlink(missing_ok=True)
            failure = f"dynamo: {_first_line(err)}"
            log.debug("dynamo export of the %s graph", graph, exc_info=True)
            if exporter == "dynamo":
                raise ExportError(f"ONNX export of the {graph} graph failed ({failure}); try "
                                  "exporter='auto' or another --opset") from None
            log.warning("dynamo ONNX export of the %s graph failed (%s); trying the TorchScript exporter",
                        graph, failure)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=[name], output_names=outputs,
                              opset_version=opset, dynamo=False, dynamic_axes={name: axes, **out_axes})
        return "torchscript"
    except Exception as err:  # noqa: BLE001 - the TorchScript exporter raises many types
        path.unlink(missing_ok=True)
        failure = "; ".join(filter(None, [failure, f"torchscript: {_first_line(err)}"]))
        raise ExportError(f"ONNX export of the {graph} graph failed ({failure}); try another --opset, "
                          "or report it with the model config") from None


def _onnx_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _check(diffs: dict[str, float], tolerance: float, what: str, out: Path) -> None:
    bad = {g: d for g, d in diffs.items() if not d <= tolerance}
    if bad:
        worst = ", ".join(f"{g} {d:.2e}" for g, d in bad.items())
        raise ExportError(f"{what} differs by {worst} > tolerance {tolerance:.0e}; nothing written to {out}: "
                          "pass a larger --tolerance if that is acceptable (FP16 needs ~5e-2), else report it")


def _verify(reference: Backend, candidate: Backend, cases: dict[str, list[np.ndarray]], tolerance: float,
            what: str, out: Path) -> dict[str, float]:
    try:
        diffs = max_abs_diff(reference, candidate, cases)
    except GeoSegError:
        raise
    except Exception as err:  # noqa: BLE001 - runtimes raise their own types
        raise ExportError(f"the exported graphs fail in {what} ({_first_line(err)}); nothing written to "
                          f"{out}: re-export with another --opset") from None
    _check(diffs, tolerance, what, out)
    return diffs


def _guard_model(out: Path, model_path: Path) -> None:
    o, m = out.resolve(), model_path.resolve()
    if m == o or o in m.parents:
        raise ConfigError(f"--out {out} would replace the model {model_path} itself; choose another directory")


# ---------------------------------------------------------------------------- exports
def export_onnx(model_path: str | Path, out_dir: str | Path, *, opset: int | None = None, fp16: bool = False,
                tolerance: float | None = None, overwrite: bool = False,
                exporter: Exporter = "auto") -> ExportReport:
    """Export the PV and FF graphs of a checkpoint to ONNX and verify them in ONNX Runtime.

    Writes ``pv.onnx``, ``ff.onnx`` and ``geoseg-export.json`` into ``out_dir`` (atomically).

    Args:
        model_path: run directory or ``.pt`` checkpoint.
        out_dir: the export directory to create.
        opset: ONNX opset (default: the exporter's).
        fp16: compute in FP16 inside the graphs (inputs and outputs stay float32).
        tolerance: largest max-abs difference to torch (default 1e-3, 5e-2 with ``fp16``).
        overwrite: replace an existing ``out_dir``.
        exporter: ``"auto"`` (dynamo, TorchScript if dynamo fails), ``"dynamo"`` or
            ``"torchscript"``.

    Returns:
        An :class:`ExportReport` (differences to torch per graph, files, exporter used).

    Raises:
        CheckpointError: missing or corrupt checkpoint.
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ConfigError: bad tolerance, or ``out_dir`` would replace the model.
        ExportError: the exporters fail, or ONNX Runtime differs beyond the tolerance.
    """
    from geoseg.backends.onnx_backend import OnnxBackend
    from geoseg.backends.torch_backend import TorchBackend
    from geoseg.checkpoint import load_model, resolve_checkpoint

    t0 = time.perf_counter()
    out, tol = Path(out_dir), _tolerance(tolerance, fp16)
    if is_export_dir(model_path):
        raise ConfigError(f"{model_path} is already an export directory; pass the run directory or .pt "
                          "it came from")
    _guard_model(out, resolve_checkpoint(model_path))
    if out.exists() and not overwrite:  # fail before loading anything
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    model, ckpt_meta = load_model(model_path, "cpu")
    meta = model_meta(model.cfg, ckpt_meta)
    graph_model = copy.deepcopy(model).half() if fp16 else model
    b, m, t = meta["bands"], meta["pv_multiple"], meta["tile"]
    gen = torch.Generator().manual_seed(0)
    with staging_dir(out, overwrite) as tmp:
        used = {
            "pv": _export_graph(_Graph(graph_model, "pv", fp16), torch.randn(2, b, 2 * m, 3 * m, generator=gen),
                                tmp / "pv.onnx", "pv", {0: "batch", 2: "height", 3: "width"},
                                {"pv_logits": {0: "batch", 2: "height", 3: "width"},
                                 "utility": {0: "batch", 1: "rows", 2: "cols"}}, opset, exporter),
            "ff": _export_graph(_Graph(graph_model, "ff", fp16), torch.randn(2, b, t, t, generator=gen),
                                tmp / "ff.onnx", "ff", {0: "n"}, {"ff_logits": {0: "n"}}, opset, exporter),
        }
        info = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "geoseg_version": __version__,
                **meta, "files": {"onnx": {"pv": "pv.onnx", "ff": "ff.onnx"}}, "inputs": INPUTS,
                "outputs": OUTPUTS, "exporter": used, "opset": _onnx_opset(tmp / "pv.onnx"), "fp16": fp16,
                "verification": {}}
        write_json(tmp / EXPORT_FILE, info, indent=2)
        log.info("verifying %s against torch", out)
        reference = TorchBackend.from_model(model, ckpt_meta, "cpu", ff_batch=64)
        with OnnxBackend(tmp, device="cpu", ff_batch=64) as candidate:
            diffs = _verify(reference, candidate, random_inputs(meta), tol, "ONNX Runtime", out)
        info["verification"] = {"onnx": {"reference": "torch", "max_abs_diff": diffs, "tolerance": tol}}
        write_json(tmp / EXPORT_FILE, info, indent=2)
    files = [out / "pv.onnx", out / "ff.onnx", out / EXPORT_FILE]
    return ExportReport(out, "onnx", "torch", diffs, tol, files, used, info["opset"], fp16,
                        time.perf_counter() - t0)


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
    from geoseg.backends.tensorrt_backend import (
        TensorRTBackend,
        TrtProfiles,
        build_engine,
        import_tensorrt,
        require_cuda,
    )

    trt = import_tensorrt()
    require_cuda()
    from geoseg.backends.onnx_backend import OnnxBackend

    t0 = time.perf_counter()
    src, out = Path(onnx_dir), Path(out_dir)
    meta = read_export_meta(src)
    sources = {g: export_file(src, meta, "onnx", g) for g in ("pv", "ff")}
    prof = profiles or TrtProfiles()
    shapes = {"pv": prof.pv(meta), "ff": prof.ff(meta)}
    tol = _tolerance(tolerance, fp16 or bool(meta.get("fp16")))
    inputs = meta.get("inputs") or INPUTS
    with staging_dir(out, overwrite) as tmp:
        for g, path in sources.items():
            shutil.copy2(path, tmp / f"{g}.onnx")
        for g in ("pv", "ff"):
            log.info("building the TensorRT %s engine (minutes)", g)
            build_engine(tmp / f"{g}.onnx", tmp / f"{g}.engine", inputs[g], shapes[g], fp16=fp16,
                         onnx_fp16=bool(meta.get("fp16")), workspace_gb=workspace_gb)
        info = {**meta, "files": {"onnx": {"pv": "pv.onnx", "ff": "ff.onnx"},
                                  "tensorrt": {"pv": "pv.engine", "ff": "ff.engine"}},
                "tensorrt": {"version": str(trt.__version__), "fp16": fp16, "gpu": torch.cuda.get_device_name(),
                             "profiles": {g: dict(zip(("min", "opt", "max"), s, strict=True))
                                          for g, s in shapes.items()}}}
        info.setdefault("verification", {})
        write_json(tmp / EXPORT_FILE, info, indent=2)
        cases = random_inputs(meta, pv_max=shapes["pv"][2], ff_max=shapes["ff"][2][0])
        with OnnxBackend(tmp, device="cpu") as reference, TensorRTBackend(tmp, device="cuda") as candidate:
            diffs = _verify(reference, candidate, cases, tol, "TensorRT", out)
        info["verification"]["tensorrt"] = {"reference": "onnxruntime", "max_abs_diff": diffs, "tolerance": tol}
        write_json(tmp / EXPORT_FILE, info, indent=2)
    files = [out / n for n in ("pv.engine", "ff.engine", "pv.onnx", "ff.onnx", EXPORT_FILE)]
    return ExportReport(out, "tensorrt", "onnxruntime", diffs, tol, files, {}, meta.get("opset"), fp16,
                        time.perf_counter() - t0)


def export_model(model_path: str | Path, out_dir: str | Path, fmt: Format = "onnx", *, fp16: bool = False,
                 opset: int | None = None, tolerance: float | None = None, overwrite: bool = False,
                 profiles: TrtProfiles | None = None) -> list[ExportReport]:
    """What `geoseg export` runs: ONNX, or ONNX then TensorRT engines, into ``out_dir``.

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
        ConfigError: unknown format.
        DependencyError / CheckpointError / OutputExistsError / ExportError: see the steps.
    """
    out = Path(out_dir)
    if fmt == "onnx":
        return [export_onnx(model_path, out, opset=opset, fp16=fp16, tolerance=tolerance, overwrite=overwrite)]
    if fmt != "tensorrt":
        raise ConfigError(f"unknown export format '{fmt}'; valid formats: onnx, tensorrt")
    from geoseg.backends.tensorrt_backend import import_tensorrt, require_cuda

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
