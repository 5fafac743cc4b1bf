"""The torch backend: the checkpoint's model in eager mode, on the CPU or a CUDA GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from geoseg.backends.base import Backend
from geoseg.errors import ConfigError
from geoseg.models.meta import ModelMeta


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU.

    Raises:
        ConfigError: ``cuda`` asked for without a GPU, or an unknown name.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device '{device}'; valid devices: auto, cpu, cuda")
    return torch.device(device)


def model_meta(model: torch.nn.Module, ckpt_meta: dict[str, Any]) -> ModelMeta:
    """:meth:`ModelMeta.from_checkpoint`, plus the calibrated ``utility_threshold`` when there is one.

    The threshold (``--budget auto``) is a buffer of the model, NaN when never calibrated;
    it is kept as an extra key, so ``geoseg export`` writes it into ``geoseg-export.json``.
    """
    meta = ModelMeta.from_checkpoint(model.cfg, ckpt_meta)
    thr = getattr(model, "utility_threshold", None)
    if thr is None or bool(torch.isnan(thr)):
        return meta
    return meta.model_copy(update={"utility_threshold": float(thr)})


class TorchBackend(Backend):
    """``RoutedModel.pv_graph`` / ``ff_graph`` under :func:`torch.inference_mode`.

    Args:
        model_path: run directory or ``.pt`` checkpoint (EMA weights when present).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        ff_batch: most FF tiles per forward.
        precision: ``"fp32"``, or ``"fp16"`` (autocast on CUDA; float32 on the CPU).
        compile: run both graphs through ``torch.compile``.

    On the CPU, a routed model runs in channels-last memory format (inputs converted per
    call, outputs returned contiguous): oneDNN's convolutions are 1.2-1.45x faster so on
    the CPU preset (``python bench/predict.py --memory-format`` measures it).

    Raises:
        CheckpointError: missing or corrupt checkpoint.
        ConfigError: bad device or precision.
    """

    name: ClassVar[str] = "torch"
    _pv_fn: Any
    _ff_fn: Any

    def __init__(self, model_path: str | Path, device: str = "auto", ff_batch: int = 32,
                 precision: str = "fp32", compile: bool = False) -> None:
        from geoseg.models.checkpoint import load_model

        dev = resolve_device(device)
        model, ckpt_meta = load_model(model_path, dev)
        self._init(model, ckpt_meta, dev, ff_batch)
        if dev.type == "cpu" and self._ff_fn is not None:
            self.channels_last = True
            model.to(memory_format=torch.channels_last)
        if precision not in ("fp32", "fp16"):
            raise ConfigError(f"unknown precision '{precision}'; valid: fp32, fp16")
        self._fp16 = precision == "fp16" and dev.type == "cuda"  # autocast; outputs stay float32
        if compile:  # torch.compile of both graphs, shapes dynamic (regions of several sizes)
            self._pv_fn = torch.compile(self._pv_fn, dynamic=True)
            self._ff_fn = torch.compile(self._ff_fn, dynamic=True)

    @classmethod
    def from_model(cls, model: torch.nn.Module, ckpt_meta: dict[str, Any], device: str = "cpu",
                   ff_batch: int = 32) -> TorchBackend:
        """Wrap an already loaded model (as :func:`geoseg.models.checkpoint.load_model` returns it).

        Args:
            model: a :class:`~geoseg.models.routed.RoutedModel`; it is put in eval mode on ``device``.
            ckpt_meta: the ``meta`` returned with it.
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
            ff_batch: most FF tiles per forward.

        Returns:
            The backend.
        """
        self = cls.__new__(cls)
        dev = resolve_device(device)
        self._init(model.to(dev).eval(), ckpt_meta, dev, ff_batch)
        return self

    def _init(self, model: torch.nn.Module, ckpt_meta: dict[str, Any], dev: torch.device,
              ff_batch: int) -> None:
        super().__init__(model_meta(model, ckpt_meta), Path(ckpt_meta.get("path", "")),
                         dev.type, ff_batch)
        self.model = model
        self._dev = dev
        self._fp16 = False
        self.channels_last = False  # inputs to NHWC per call (the routed model on the CPU)
        routed: Any = model  # a RoutedModel (a MaskRCNNModel has no graphs: it runs detect)
        self._pv_fn = getattr(routed, "pv_graph", None)
        self._ff_fn = getattr(routed, "ff_graph", None)

    def _run(self, fn: Any, x: np.ndarray) -> Any:
        with torch.inference_mode(), torch.autocast(self._dev.type, torch.float16, enabled=self._fp16):
            t = torch.from_numpy(x).to(self._dev, non_blocking=True)
            if self.channels_last and t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            return fn(t)

    def _pv(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, utility = self._run(self._pv_fn, small)
        return logits.float().cpu().contiguous().numpy(), utility.float().cpu().contiguous().numpy()

    def _ff(self, tiles: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._run(self._ff_fn, tiles).float().cpu().contiguous().numpy()
        return out

    def _release_memory(self) -> None:
        if self._dev.type == "cuda":
            torch.cuda.empty_cache()

    def detect(self, images: np.ndarray) -> list[dict[str, torch.Tensor]]:
        """Mask R-CNN detections (:meth:`geoseg.models.maskrcnn.MaskRCNNModel.detect`), on the CPU.

        Args:
            images: normalised images (B, C_in, H, W).

        Raises:
            ConfigError: the model is not a Mask R-CNN model.
        """
        detect = getattr(self.model, "detect", None)
        if detect is None:
            raise ConfigError(f"{self.source} is a routed model: it has no detect step; run it with pv/ff")
        dets: list[dict[str, torch.Tensor]] = self._run(detect, self._as_input(images, "images"))
        return [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in d.items()} for d in dets]

    def close(self) -> None:
        """Drop the model (frees GPU memory once no other reference holds it)."""
        for key in ("model", "_pv_fn", "_ff_fn"):
            self.__dict__.pop(key, None)
        if self._dev.type == "cuda":
            torch.cuda.empty_cache()
