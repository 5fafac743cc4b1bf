"""Band statistics and normalisation: the model's input, the same in training and predict.

``stats.json`` of `geoseg tile` holds per-band mean and std of the valid train pixels
(:class:`BandStats`). :func:`normalize` maps raw values to the model's input,
``clip((x − mean) / std, −3, 3)`` per band; :func:`scale_to_unit` and
:func:`unit_to_normalized` are its two halves, with augmentation between them in training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from geoseg.errors import ConfigError, InputRasterError
from geoseg.io.encoding import Scaling, bands_for, recorded_meaning, recorded_scaling
from geoseg.io.rasters import FILL

Array = TypeVar("Array", np.ndarray, torch.Tensor)

SIGMAS = 3.0
"""Half-width, in standard deviations, of the value range kept by :func:`normalize`."""

AugmentFn = Callable[[np.ndarray, dict[str, np.ndarray]], tuple[np.ndarray, dict[str, np.ndarray]]]


@dataclass(frozen=True)
class BandStats:
    """Per-band statistics of the valid train pixels (``stats.json`` of `geoseg tile`)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ("object",)
    dtype: str = "float32"
    #: the bands' declared (scale, offset) in the tiled scenes (:mod:`geoseg.io.encoding`);
    #: None: not recorded (tiled before geoseg recorded them)
    scaling: Scaling | None = None
    #: what each band declared it holds in the tiled scenes (``"red"``, ``"b04"``, ``""``); None: not recorded
    meaning: tuple[str, ...] | None = None

    @property
    def bands(self) -> int:
        """Number of bands."""
        return len(self.mean)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandStats:
        """From the mapping of ``stats.json`` (or a checkpoint)."""
        return cls(mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                   classes=tuple(d.get("classes", ("object",))), dtype=str(d.get("dtype", "")),
                   scaling=recorded_scaling(d), meaning=recorded_meaning(d))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (for checkpoints)."""
        return {"mean": list(self.mean), "std": list(self.std), "classes": list(self.classes),
                "dtype": self.dtype, "bands": self.bands,
                "scaling": None if self.scaling is None else [list(p) for p in self.scaling],
                "meaning": None if self.meaning is None else list(self.meaning)}


def load_stats(root: str | Path) -> BandStats:
    """Read ``root/stats.json``.

    Raises:
        InputRasterError: the file is missing or not valid stats (malformed JSON, keys
            missing, band counts that differ, NaN or inf values).
    """
    path = Path(root) / "stats.json"
    if not path.is_file():
        raise InputRasterError(f"{path} not found: {Path(root)} is not a tile directory; "
                               "run `geoseg tile SCENES --labels LABELS --out DIR` first")
    try:
        stats = BandStats.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputRasterError(f"{path} is not valid band statistics ({err}); "
                               "rerun `geoseg tile` with --overwrite") from None
    if len(stats.std) != stats.bands or stats.bands == 0:
        raise InputRasterError(f"{path} has {stats.bands} means and {len(stats.std)} stds; "
                               "rerun `geoseg tile` with --overwrite")
    if not (np.isfinite(stats.mean).all() and np.isfinite(stats.std).all()):
        raise InputRasterError(f"{path} holds non-finite band statistics (mean {list(stats.mean)}, "
                               f"std {list(stats.std)}); rerun `geoseg tile` with --overwrite")
    return stats


def _band_params(stats: BandStats, like: Array, channel_axis: int) -> tuple[Array, Array]:
    """Mean and safe std (0 -> 1) shaped to broadcast along ``channel_axis`` of ``like``."""
    mean = np.asarray(stats.mean, dtype=np.float64)
    std = np.asarray(stats.std, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    ax = channel_axis % like.ndim
    if like.shape[ax] != len(mean):
        raise ValueError(f"image has {like.shape[ax]} bands on axis {channel_axis}, "
                         f"stats have {len(mean)}")
    shape = [1] * like.ndim
    shape[ax] = len(mean)
    if isinstance(like, torch.Tensor):
        dt = like.dtype if like.dtype.is_floating_point else torch.float32
        return (torch.as_tensor(mean, dtype=dt, device=like.device).reshape(shape),
                torch.as_tensor(std, dtype=dt, device=like.device).reshape(shape))
    return mean.astype(np.float32).reshape(shape), std.astype(np.float32).reshape(shape)


def scale_to_unit(image: Array, stats: BandStats, *, channel_axis: int = 0) -> Array:
    """Raw values to [0, 1] per band, for augmentation.

    ``u = clip((x − (mean − 3·std)) / (6·std), 0, 1)``: mean − 3 std maps to 0, mean to
    0.5, mean + 3 std to 1. NaN, ±inf and fill values (:data:`geoseg.io.rasters.FILL`; invalid
    data) map to 0.5, the mean.

    Args:
        image: raw values, bands on ``channel_axis``.
        stats: band statistics.
        channel_axis: axis of the bands (0 for (C, H, W), -1 for (H, W, C)).

    Returns:
        float32 array (or tensor) of the same shape.
    """
    mean, std = _band_params(stats, image, channel_axis)
    if isinstance(image, torch.Tensor):
        x = image.to(mean.dtype)
        u = torch.clamp((x - (mean - SIGMAS * std)) / (2 * SIGMAS * std), 0.0, 1.0)
        return torch.where(x.abs() < FILL, u, torch.full_like(u, 0.5))
    x = image.astype(np.float32, copy=False)
    u = np.clip((x - (mean - SIGMAS * std)) / (2 * SIGMAS * std), 0.0, 1.0)
    return np.where(np.abs(x) < FILL, u, np.float32(0.5)).astype(np.float32)


def unit_to_normalized(unit: Array) -> Array:
    """[0, 1] values of :func:`scale_to_unit` to standardised ones: ``(u − 0.5) · 6``."""
    return (unit - 0.5) * (2 * SIGMAS)


def normalize(image: Array, stats: BandStats, *, channel_axis: int = 0,
              valid: Array | None = None) -> Array:
    """Standardise raw values per band: the model's input, in training and prediction.

    ``z = clip((x − mean) / std, −3, 3)`` per band (a band with std 0 uses std 1), which is
    exactly ``unit_to_normalized(scale_to_unit(x))``; invalid pixels become 0 (the mean)
    in every band: those where ``valid`` is False, and those with a NaN or ±inf in any
    band (invalid data everywhere, nodata value or not).

    Args:
        image: raw values (numpy array or torch tensor), bands on ``channel_axis``.
        stats: band statistics of the training chips (:func:`load_stats`, checkpoint).
        channel_axis: axis of the bands (0 for (C, H, W), 1 for (B, C, H, W), -1 for HWC).
        valid: optional boolean mask of the image without the band axis.

    Returns:
        float32 array (tensor) of the shape of ``image``.

    Raises:
        ValueError: the band count differs from the stats.
    """
    mean, std = _band_params(stats, image, channel_axis)
    ax = channel_axis % image.ndim
    if isinstance(image, torch.Tensor):
        x = image.to(mean.dtype)
        z = torch.clamp((x - mean) / std, -SIGMAS, SIGMAS)
        ok = (x.abs() < FILL).all(dim=ax, keepdim=True)
        if valid is not None:
            ok = ok & valid.unsqueeze(ax).to(torch.bool)
        return torch.where(ok, z, torch.zeros_like(z))
    x = image.astype(np.float32, copy=False)
    z = np.clip((x - mean) / std, -SIGMAS, SIGMAS)
    ok = (np.abs(x) < FILL).all(axis=ax, keepdims=True)
    if valid is not None:
        ok = ok & np.expand_dims(np.asarray(valid, dtype=bool), ax)
    return np.where(ok, z, np.float32(0.0)).astype(np.float32, copy=False)


def band_selection(source: str, count: int, band_indexes: tuple[int, ...] | None, need: int,
                   model: str = "model", declared: Sequence[str] = (), wanted: Sequence[str] = ()) -> tuple[int, ...]:
    """The 1-based bands of a scene to read for a model taking ``need`` bands (``--bands`` or all).

    Where the scene declares what its bands hold (``declared``) and holds all the model's
    (``wanted``, as its training scenes declared them), a band count that differs names
    the ``--bands`` that reads them.

    Examples:
        >>> band_selection("a.tif", 4, (3, 2, 1), 3)
        (3, 2, 1)
        >>> band_selection("a.tif", 3, (1, 2), 3)
        Traceback (most recent call last):
        geoseg.errors.ConfigError: --bands 1,2 names 2 bands but the model takes 3; name 3 of a.tif's bands 1..3

    Raises:
        ConfigError: ``--bands`` names another number of bands than ``need``, or a band the scene lacks.
        InputRasterError: without ``--bands``, the scene has another number of bands than ``need``.
    """
    given = ",".join(map(str, band_indexes or ()))
    if band_indexes and len(band_indexes) != need:
        raise ConfigError(f"--bands {given} names {len(band_indexes)} bands but the {model} takes {need}; "
                          f"name {need} of {source}'s bands 1..{count}")
    if band_indexes is None and count != need:
        order = bands_for(declared, wanted)
        hint = (f"--bands {','.join(map(str, order))} reads its {', '.join(wanted)}" if order else
                f"e.g. --bands {','.join(['1'] * need)} for a single band")
        raise InputRasterError(f"{source} has {count} bands but the {model} takes {need}; map them with "
                               f"--bands ({hint})")
    if band_indexes and any(b < 1 or b > count for b in band_indexes):
        raise ConfigError(f"--bands {given} names a band that {source} (bands 1..{count}) does not have")
    return band_indexes or tuple(range(1, count + 1))
