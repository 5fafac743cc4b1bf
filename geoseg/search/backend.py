"""Running a reference detector: torch (checkpoint) or ONNX Runtime (two exported graphs).

Both backends take and give numpy arrays: :meth:`fuse` turns normalised templates
(K, bands, T, T) into the fused kernels ``z2``, ``z3`` (each (1, F, k, k)) and the kind
prototype ``proto`` (1, embed); :meth:`detect` turns normalised search windows
(B, bands, H, W) and these into objectness logits
(B, 1, H/4, W/4), box distances (B, 4, H/4, W/4) and similarities (B, 1, H/4, W/4). One backend per process and model
(:func:`get_search_backend`), so Dask tasks of one worker share it.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from geoseg.bands import BandStats
from geoseg.config import validate
from geoseg.errors import CheckpointError, ConfigError, DependencyError, first_line
from geoseg.io.stamps import changed_since, input_stamp
from geoseg.models.checkpoint import load_checkpoint, resolve_checkpoint
from geoseg.models.refdet import RefDet, RefDetConfig

log = logging.getLogger(__name__)

#: file name of the export metadata written beside the two ONNX graphs
EXPORT_JSON = "search-export.json"
#: version of the two graphs' inputs and outputs (2: the search graph gives the similarity map)
EXPORT_FORMAT = 2


@dataclass(frozen=True)
class SearchMeta:
    """What inference needs to know about a search model."""

    model: RefDetConfig
    stats: BandStats
    classes: tuple[str, ...]
    context: float
    source: Path
    #: the similarity threshold calibrated in training (-1: none helped; None: a model from before calibration)
    similarity: float | None = None


class SearchBackend(Protocol):
    """The two calls of a search model (see the module docstring)."""

    meta: SearchMeta

    def fuse(self, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def detect(self, images: np.ndarray, z2: np.ndarray, z3: np.ndarray, proto: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def _meta(ckpt: dict[str, Any], source: Path) -> SearchMeta:
    cfg = ckpt["config"]
    if not isinstance(cfg, dict) or cfg.get("task") != "search":
        raise CheckpointError(f"{source} is not a search model (its config has no 'task: search'); "
                              "train one with `geoseg train configs/search-cpu.yaml ...`")
    raw = {**cfg["model"], "encoder_weights": None}  # every weight is in the checkpoint
    model = validate(RefDetConfig, raw, f"{source} (model)")
    context = float(cfg.get("episodes", {}).get("context", 1.5))
    sim = (ckpt.get("calibration") or {}).get("min_similarity")
    return SearchMeta(model=model, stats=BandStats.from_dict(ckpt["stats"]), classes=tuple(ckpt["classes"]),
                      context=context, source=source, similarity=None if sim is None else float(sim))


def load_search_model(model: str | Path) -> tuple[RefDet, SearchMeta]:
    """The reference detector of a run directory or ``.pt`` file, in eval mode.

    Raises:
        CheckpointError: no checkpoint, not a search model, or weights that do not fit.
    """
    path = resolve_checkpoint(model)
    ckpt = load_checkpoint(path)
    meta = _meta(ckpt, path)
    net = RefDet(meta.model)
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit its config ({first_line(err)}); "
                              "retrain or pass another checkpoint") from None
    return net.eval(), meta


class TorchSearch:
    """The torch backend (CPU or CUDA)."""

    def __init__(self, model: str | Path, device: str = "cpu") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
        self.net, self.meta = load_search_model(model)
        self.device = torch.device(device)
        self.net.to(self.device)

    @torch.no_grad()
    def fuse(self, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z2, z3, proto = self.net.encode_templates(torch.from_numpy(templates).float()[None].to(self.device))
        return z2.cpu().numpy(), z3.cpu().numpy(), proto.cpu().numpy()

    @torch.no_grad()
    def detect(self, images: np.ndarray, z2: np.ndarray, z3: np.ndarray, proto: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        maps = self.net.detect(torch.from_numpy(images).float().to(self.device),
                               *(torch.from_numpy(z).to(self.device) for z in (z2, z3, proto)))
        obj, dist, sim = (m.cpu().numpy() for m in maps)
        return obj, dist, sim


class OnnxSearch:
    """The ONNX Runtime backend over an export folder (:func:`geoseg.search.export.export_search_onnx`)."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DependencyError("--backend onnx needs onnxruntime: pip install onnxruntime") from None
        folder = Path(folder)
        info_path = folder / EXPORT_JSON
        if not info_path.is_file():
            raise CheckpointError(f"{folder} is no search export (no {EXPORT_JSON}); pass a run directory "
                                  "or a folder written by geoseg.search.export")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{folder} was exported by an older geoseg (format {info.get('format', 1)}, "
                                  f"now {EXPORT_FORMAT}); export it again, or pass the run directory")
        self.meta = _meta(info, info_path)
        if changed_since(info.get("checkpoint"), info.get("checkpoint_sha256")):
            log.warning("%s was exported from %s, which has changed since (retrained): this run uses the "
                        "export's older copy; pass the run directory with --backend onnx (it exports again) or "
                        "export it again", folder, info["checkpoint"])
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device in ("cuda", "auto") \
            else ["CPUExecutionProvider"]
        providers = [p for p in providers if p in ort.get_available_providers()]
        self.template = ort.InferenceSession(str(folder / "template.onnx"), providers=providers)
        self.search = ort.InferenceSession(str(folder / "search.onnx"), providers=providers)

    def fuse(self, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z2, z3, proto = self.template.run(None, {"templates": templates.astype(np.float32)[None]})
        return np.asarray(z2), np.asarray(z3), np.asarray(proto)

    def detect(self, images: np.ndarray, z2: np.ndarray, z3: np.ndarray, proto: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obj, dist, sim = self.search.run(None, {"images": images.astype(np.float32), "z2": z2, "z3": z3,
                                                "proto": proto})
        return np.asarray(obj), np.asarray(dist), np.asarray(sim)


def get_search_backend(model: str, backend: str = "torch", device: str = "cpu") -> SearchBackend:
    """One backend per (model, backend, device) and model version in this process.

    ``backend="onnx"`` takes an export folder, or a run directory whose export (in
    ``RUN/search-onnx/``) is written and verified against torch when missing or older
    than the checkpoint. A model retrained or exported again since (newer files) is loaded again.
    """
    stamp = input_stamp(model)
    return _open(model, backend, device, 0 if stamp is None else int(stamp["mtime_ns"]))


@functools.lru_cache(maxsize=4)
def _open(model: str, backend: str, device: str, version: int) -> SearchBackend:
    if backend == "torch":
        if (Path(model) / EXPORT_JSON).is_file():
            raise ConfigError(f"{model} is an ONNX export: pass --backend onnx, or the run directory")
        return TorchSearch(model, device)
    if backend != "onnx":
        raise ConfigError(f"unknown search backend '{backend}'; use torch or onnx")
    folder = Path(model)
    if not (folder / EXPORT_JSON).is_file():
        from geoseg.search.export import ensure_export

        folder = ensure_export(folder)
    return OnnxSearch(folder, device)
