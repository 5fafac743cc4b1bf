"""ONNX export of a reference detector: template encoder and search head as two graphs.

``template.onnx``: ``templates`` (1, K, bands, T, T), K dynamic -> ``z2``, ``z3`` (fused
kernels), ``proto`` (kind prototype). ``search.onnx``: ``images`` (B, bands, H, W), B/H/W
dynamic (H, W multiples of 8), ``z2``, ``z3``, ``proto`` -> ``objectness``, ``distances``,
``similarity``. ``search-export.json`` holds the config, band statistics, classes and the
calibrated similarity threshold. Each export is verified against torch on random
inputs (max abs difference of the outputs, relative to their scale) before it is kept.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geoseg.errors import CheckpointError
from geoseg.io.atomic import write_json
from geoseg.io.stamps import file_sha256
from geoseg.models.checkpoint import load_checkpoint, resolve_checkpoint
from geoseg.models.refdet import RefDet
from geoseg.search.backend import EXPORT_FORMAT, EXPORT_JSON, OnnxSearch, load_search_model

log = logging.getLogger(__name__)
#: parity tolerance, relative to the largest output magnitude
TOLERANCE = 1e-3


class _Templates(nn.Module):
    def __init__(self, net: RefDet) -> None:
        super().__init__()
        self.net = net

    def forward(self, templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.encode_templates(templates)


class _Search(nn.Module):
    def __init__(self, net: RefDet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, z2: torch.Tensor, z3: torch.Tensor, proto: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.detect(images, z2, z3, proto)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
            outputs: list[str], axes: dict[str, dict[int, str]]) -> None:
    module.eval()  # the wrappers are new modules: in training mode, batch norm would use batch statistics
    torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                      dynamic_axes=axes, opset_version=17, dynamo=False)


def verify(net: RefDet, folder: Path, seed: int = 0) -> float:
    """Largest relative difference between torch and ONNX Runtime on random inputs.

    Raises:
        CheckpointError: the difference passes :data:`TOLERANCE`.
    """
    g = torch.Generator().manual_seed(seed)
    cfg = net.cfg
    t = torch.randn(2, cfg.bands, cfg.template_size, cfg.template_size, generator=g)  # K other than traced
    x = torch.randn(2, cfg.bands, 96, 128, generator=g)
    with torch.no_grad():
        kernels = net.encode_templates(t[None])
        ref = net.detect(x, *kernels)
    ort = OnnxSearch(folder)
    okernels = ort.fuse(t.numpy())
    got = ort.detect(x.numpy(), *okernels)
    worst = 0.0
    for a, b in [*zip(kernels, okernels, strict=True), *zip(ref, got, strict=True)]:
        ta = a.numpy()
        worst = max(worst, float(np.abs(ta - b).max() / max(np.abs(ta).max(), 1e-6)))
    if worst > TOLERANCE:
        raise CheckpointError(f"ONNX export in {folder} differs from torch by {worst:.2e} (relative, over "
                              f"{TOLERANCE:g}); report it with the run's config")
    return worst


def export_search_onnx(model: str | Path, out: str | Path) -> dict[str, Any]:
    """Export the search model of a run directory (or ``.pt``) to ``out``, verified.

    The folder is written beside its final name and renamed into place.

    Returns:
        ``{"folder", "max_rel_diff"}``.
    """
    path = resolve_checkpoint(model)
    net, _ = load_search_model(path)
    ckpt = load_checkpoint(path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cfg = net.cfg
        t = torch.randn(1, 3, cfg.bands, cfg.template_size, cfg.template_size)
        with torch.no_grad():
            z2, z3, proto = net.encode_templates(t)
        _export(_Templates(net), (t,), tmp / "template.onnx", ["templates"], ["z2", "z3", "proto"],
                {"templates": {1: "k"}})
        x = torch.randn(2, cfg.bands, 64, 64)
        _export(_Search(net), (x, z2, z3, proto), tmp / "search.onnx", ["images", "z2", "z3", "proto"],
                ["objectness", "distances", "similarity"],
                {"images": {0: "batch", 2: "height", 3: "width"}}
                | {k: {0: "batch", 2: "h4", 3: "w4"} for k in ("objectness", "distances", "similarity")})
        write_json(tmp / EXPORT_JSON, {k: ckpt[k] for k in ("config", "stats", "classes", "version")}
                   | {"calibration": ckpt.get("calibration"), "format": EXPORT_FORMAT, "checkpoint": str(path),
                      "checkpoint_sha256": file_sha256(path)},
                   indent=1)
        diff = verify(net, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s to %s (max relative difference to torch %.1e)", path, out, diff)
    return {"folder": out, "max_rel_diff": diff}


def ensure_export(run: Path) -> Path:
    """``run/search-onnx``, exported first when missing or older than the checkpoint."""
    path = resolve_checkpoint(run)
    folder = (run if run.is_dir() else run.parent) / "search-onnx"
    info = folder / EXPORT_JSON
    if (not info.is_file() or info.stat().st_mtime < path.stat().st_mtime
            or json.loads(info.read_text(encoding="utf-8")).get("format") != EXPORT_FORMAT):
        export_search_onnx(path, folder)
    return folder
