"""Checkpoints: save atomically, load safely (``torch.load(weights_only=True)``).

A checkpoint is a plain dict of tensors and JSON-like values:

- ``format`` (``"geoseg-checkpoint"``) and ``version`` (geoseg's);
- ``config``: the resolved training config (a mapping, as in ``RUN_DIR/config.yaml``);
- ``stats``: per-band ``mean``/``std``, ``bands``, ``dtype`` from the tile step;
- ``classes``: class names in category-id order;
- ``model`` and ``ema``: state dicts (``ema`` is used for inference when present);
- ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step``, ``best``, ``rng``:
  what ``--resume`` needs to continue exactly.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from geoseg import __version__
from geoseg.errors import CheckpointError
from geoseg.io.atomic import atomic_path

FORMAT = "geoseg-checkpoint"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temp file, then rename)."""
    payload = {"format": FORMAT, "version": __version__, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


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
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is not a loadable checkpoint ({first[:120]}); it is corrupt or was not "
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
