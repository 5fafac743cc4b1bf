"""ONNX export of the routed model's PV and FF graphs, verified in ONNX Runtime against torch."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from geoseg import __version__
from geoseg.backends.base import EXPORT_FILE, EXPORT_FORMAT, EXPORT_FORMAT_VERSION, is_export_dir
from geoseg.errors import ConfigError, OutputExistsError, first_line
from geoseg.export.report import ExportReport
from geoseg.export.verify import (
    ExportError,
    _tolerance,
    _verify,
    random_inputs,
)
from geoseg.io.atomic import write_json
from geoseg.io.staging import staging_dir
from geoseg.io.stamps import file_sha256
from geoseg.models.meta import ModelMeta

log = logging.getLogger(__name__)

Exporter = Literal["auto", "dynamo", "torchscript"]
INPUTS = {"pv": "small", "ff": "tiles"}
OUTPUTS = {"pv": ["pv_logits", "utility"], "ff": ["ff_logits"]}
#: first opset the dynamo exporter writes itself (below it converts, or silently keeps its own)
DYNAMO_MIN_OPSET = 18


class _Graph(nn.Module):
    """``pv_graph`` or ``ff_graph`` as a module of one float32 input (optionally FP16 inside)."""

    def __init__(self, model: nn.Module, graph: str, fp16: bool) -> None:
        super().__init__()
        self.model, self.graph, self.fp16 = model, graph, fp16

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = getattr(self.model, f"{self.graph}_graph")(x.half() if self.fp16 else x)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()



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
    # below its first opset the dynamo exporter converts, and where that fails it keeps its own
    # opset without an error: an older opset goes to the TorchScript exporter, which writes it
    if exporter == "dynamo" or (exporter == "auto" and (opset is None or opset >= DYNAMO_MIN_OPSET)):
        try:
            with warnings.catch_warnings(), tempfile.TemporaryDirectory() as artifacts, _quiet("onnxscript"):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (example,), str(path), input_names=[name], output_names=outputs,
                                  opset_version=opset, dynamo=True, external_data=False, verbose=False,
                                  dynamic_shapes=({a: torch.export.Dim.DYNAMIC for a in axes},),
                                  artifacts_dir=artifacts)
            _check_opset(path, opset)
            return "dynamo"
        except Exception as err:  # noqa: BLE001 - torch.export and onnxscript raise many types
            path.unlink(missing_ok=True)
            failure = f"dynamo: {first_line(err)}"
            log.debug("dynamo export of the %s graph", graph, exc_info=True)
            if exporter == "dynamo":
                raise ExportError(f"ONNX export of the {graph} graph failed ({failure}); try "
                                  "exporter='auto' or another --opset") from None
            log.warning("dynamo ONNX export of the %s graph failed (%s); trying the TorchScript exporter",
                        graph, failure)
    try:
        with warnings.catch_warnings(), quiet_stdout():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=[name], output_names=outputs,
                              opset_version=opset, dynamo=False, dynamic_axes={name: axes, **out_axes},
                              verbose=False)
        _check_opset(path, opset)
        return "torchscript"
    except Exception as err:  # noqa: BLE001 - the TorchScript exporter raises many types
        path.unlink(missing_ok=True)
        failure = "; ".join(filter(None, [failure, f"torchscript: {first_line(err)}"]))
        hint = (f"opsets below {DYNAMO_MIN_OPSET} need the TorchScript exporter: export with --opset "
                f"{DYNAMO_MIN_OPSET} or newer (or none)" if opset is not None and opset < DYNAMO_MIN_OPSET
                else "try another --opset, or report it with the model config")
        raise ExportError(f"ONNX export of the {graph} graph failed ({failure}); {hint}") from None


def verify_inputs(meta: ModelMeta, ff_max: int | None = None) -> dict[str, list[np.ndarray]]:
    """:func:`~geoseg.export.verify.random_inputs` plus a batch of FF regions (2x3 cells)."""
    cases = random_inputs(meta, ff_max=ff_max)
    h, w = 2 * meta.cell + 2 * meta.tile_halo, 3 * meta.cell + 2 * meta.tile_halo
    region = np.random.default_rng(1).standard_normal((2, meta.band_count, h, w), dtype=np.float32)
    cases["ff"].append(region)
    return cases


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Errors only from ``logger`` (onnxscript logs a converter's traceback as a warning; ours says why)."""
    lg = logging.getLogger(logger)
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Discard what C++ code writes to the process's stdout.

    torch's TorchScript exporter dumps the whole IR graph (a thousand lines) to stdout when
    it fails, whatever ``verbose`` says (torch 2.14 tests a function for truth in
    ``setup_onnx_logging``); the error is ours to say, in one line.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _check_opset(path: Path, opset: int | None) -> None:
    """Raise where the graph written is not of the opset asked for (the exporters may fall back)."""
    got = _onnx_opset(path)
    if opset is not None and got != opset:
        raise RuntimeError(f"wrote opset {got}, not the {opset} asked for")


def _onnx_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


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
    from geoseg.backends.torch_backend import TorchBackend, model_meta
    from geoseg.models.checkpoint import load_model, resolve_checkpoint

    t0 = time.perf_counter()
    out, tol = Path(out_dir), _tolerance(tolerance, fp16)
    if is_export_dir(model_path):
        raise ConfigError(f"{model_path} is already an export directory; pass the run directory or .pt "
                          "it came from")
    ckpt_path = resolve_checkpoint(model_path)
    _guard_model(out, ckpt_path)
    if out.exists() and not overwrite:  # fail before loading anything
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    model, ckpt_meta = load_model(model_path, "cpu")
    meta = model_meta(model, ckpt_meta)
    graph_model = copy.deepcopy(model).half() if fp16 else model
    b, m, t = meta.band_count, meta.pv_multiple, meta.tile
    gen = torch.Generator().manual_seed(0)
    with staging_dir(out, overwrite) as tmp:
        used = {
            "pv": _export_graph(_Graph(graph_model, "pv", fp16), torch.randn(2, b, 2 * m, 3 * m, generator=gen),
                                tmp / "pv.onnx", "pv", {0: "batch", 2: "height", 3: "width"},
                                {"pv_logits": {0: "batch", 2: "height", 3: "width"},
                                 "utility": {0: "batch", 1: "rows", 2: "cols"}}, opset, exporter),
            "ff": _export_graph(_Graph(graph_model, "ff", fp16), torch.randn(2, b, t, t, generator=gen),
                                tmp / "ff.onnx", "ff", {0: "n", 2: "height", 3: "width"},
                                {"ff_logits": {0: "n", 2: "height", 3: "width"}}, opset, exporter),
        }
        info = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "geoseg_version": __version__,
                **meta.to_json(), "checkpoint_sha256": file_sha256(ckpt_path),
                "files": {"onnx": {"pv": "pv.onnx", "ff": "ff.onnx"}}, "inputs": INPUTS,
                "outputs": OUTPUTS, "exporter": used, "opset": _onnx_opset(tmp / "pv.onnx"), "fp16": fp16,
                "verification": {}}
        write_json(tmp / EXPORT_FILE, info, indent=2)
        log.info("verifying %s against torch", out)
        reference = TorchBackend.from_model(model, ckpt_meta, "cpu", ff_batch=64)
        with OnnxBackend(tmp, device="cpu", ff_batch=64) as candidate:
            diffs = _verify(reference, candidate, verify_inputs(meta), tol, "ONNX Runtime", out)
        info["verification"] = {"onnx": {"reference": "torch", "max_abs_diff": diffs, "tolerance": tol}}
        write_json(tmp / EXPORT_FILE, info, indent=2)
    files = [out / "pv.onnx", out / "ff.onnx", out / EXPORT_FILE]
    return ExportReport(out, "onnx", "torch", diffs, tol, files, used, info["opset"], fp16,
                        time.perf_counter() - t0)
