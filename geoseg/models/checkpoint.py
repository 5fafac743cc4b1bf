"""Checkpoints: save atomically, load safely (``torch.load(weights_only=True)``).

A checkpoint is a plain dict of tensors and JSON-like values:

- ``format`` (``"geoseg-checkpoint"``) and ``version`` (geoseg's);
- ``config``: the resolved training config (a mapping, as in ``RUN_DIR/config.yaml``);
- ``stats``: per-band ``mean``/``std``, ``bands``, ``dtype`` from the tile step;
- ``classes``: class names in category-id order;
- ``model`` and ``ema``: state dicts (``ema`` is used for inference when present);
- ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step``, ``best``, ``rng``:
  what ``--resume`` needs to continue exactly.

``last.pt`` holds all of it; ``best.pt`` only what predict and export need
(:func:`inference_payload`: the weights predict uses as ``model``, no ``ema``, no optimiser
state), half the size or less.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from geoseg import __version__
from geoseg.errors import CheckpointError, first_line
from geoseg.io.atomic import atomic_path

FORMAT = "geoseg-checkpoint"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temp file, then rename)."""
    payload = {"format": FORMAT, "version": __version__, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


#: Keys of a training state that ``best.pt`` keeps besides the weights (small, informative).
INFERENCE_KEYS = ("config", "stats", "classes", "epoch", "step", "best")


def inference_payload(state: dict[str, Any]) -> dict[str, Any]:
    """What predict and export need of a training state: config, stats, classes, one weight set.

    The weights are the EMA's when the run kept one (those that were validated), saved as
    ``model``; optimizer, scheduler, scaler, RNG and the raw weights are left out.
    """
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    return {**{k: state[k] for k in INFERENCE_KEYS if k in state}, "model": weights}


def resolve_checkpoint(model: str | Path, name: str = "best.pt") -> Path:
    """A checkpoint path from a run directory (``checkpoints/<name>``) or a ``.pt`` file.

    Raises:
        CheckpointError: nothing usable at that path.
    """
    path = Path(model)
    if path.is_dir():
        for cand in (path / "checkpoints" / name, path / "checkpoints" / "last.pt", path / name):
            if cand.is_file():
                return cand
        raise CheckpointError(
            f"{path} holds no checkpoint (checkpoints/{name} or checkpoints/last.pt); "
            "pass a run directory written by geoseg train or a .pt file"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a geoseg checkpoint with ``weights_only=True`` (no code is unpickled).

    Raises:
        CheckpointError: missing, corrupt, not loadable safely, or not a geoseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any bytes: torch raises KeyError, ValueError, ...
        first = first_line(err, 120)
        raise CheckpointError(
            f"{path} is not a loadable checkpoint ({first}); it is corrupt or was not "
            "written by geoseg train: retrain or pass another file"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a geoseg checkpoint (no '{FORMAT}' marker); "
            "pass a checkpoint written by geoseg train"
        )
    for key in ("config", "stats", "classes", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks '{key}'; it is incomplete: retrain")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], *, ema: bool = True) -> torch.nn.Module:
    """Build the model of a checkpoint (routed or Mask R-CNN), in eval mode (EMA weights when present).

    Args:
        ckpt: a dict from :func:`load_checkpoint`.
        ema: use the EMA weights if the checkpoint has them.

    Raises:
        CheckpointError: the weights do not fit the config (a foreign or edited file).
    """
    from geoseg.config import validate
    from geoseg.models.config import ModelConfig
    from geoseg.models.routed import RoutedModel

    # the checkpoint holds every weight: encoder_weights (a local file, or named weights
    # in the Hugging Face cache) are not needed, nor fetched, to rebuild the model
    raw = {**ckpt["config"]["model"]}
    model: torch.nn.Module
    if raw.get("arch") == "maskrcnn":
        from geoseg.models.maskrcnn import MaskRCNNConfig, MaskRCNNModel

        model = MaskRCNNModel.from_config(validate(MaskRCNNConfig, {**raw, "weights": None}, "checkpoint config"))
    else:
        for stream in ("pv", "ff"):
            if isinstance(raw.get(stream), dict):
                raw[stream] = {**raw[stream], "encoder_weights": None}
        model = RoutedModel.from_config(validate(ModelConfig, raw, "checkpoint config"))
    weights = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not fit its config ({first_line(err, 120)}); "
                              "retrain or pass another checkpoint") from None
    return model.eval()


def load_model(model: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model and metadata (config, stats, classes) of a run directory or ``.pt`` file.

    Returns:
        ``(model, meta)`` where meta holds ``config``, ``stats``, ``classes``, ``version``
        and ``path`` (the checkpoint file).
    """
    path = resolve_checkpoint(model)
    ckpt = load_checkpoint(path, map_location="cpu")
    net = model_from_checkpoint(ckpt).to(device)
    meta = {k: ckpt[k] for k in ("config", "stats", "classes", "version")}
    meta["path"] = path
    return net, meta
