"""What predict needs to know about a model besides its two graphs: one frozen value.

:class:`ModelMeta` is built from a checkpoint by the torch backend and written by
``geoseg export`` into ``geoseg-export.json`` (keys in ``docs/export.md``), then read back
by the onnx and tensorrt backends. Every reader uses its attributes, never a dict.

On disk the keys stay as they were (``bands``, ``halo``); in Python the names say which
number they are: ``band_count`` (how many bands the model takes, not which to read) and
``tile_halo`` (the FF tile margin, not the watershed's halo around a predict block).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geoseg.bands import BandStats
from geoseg.config import format_validation_error
from geoseg.errors import CheckpointError
from geoseg.models.postprocess import PostprocessConfig


def trained_range(config: dict[str, Any]) -> list[float] | None:
    """``augment.gsd_range`` of a training config when scale augmentation was on, else None."""
    aug = config.get("augment") or {}
    rng = aug.get("gsd_range")
    return [float(v) for v in rng] if aug.get("gsd", 0) and rng else None


class ModelMeta(BaseModel):
    """The model facts predict depends on (frozen).

    Keys of an export's JSON that predict does not read (``exporter``, ``tensorrt``,
    ``verification``, ...) are kept as extra fields and written back by :meth:`to_json`.
    """

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    arch: Literal["routed", "maskrcnn"] = Field("routed", description="the model family predict runs")
    band_count: int = Field(alias="bands", ge=1, description="input bands C_in")
    stats: dict[str, Any] = Field(description="band statistics of the training chips")
    classes: tuple[str, ...] = Field(min_length=1, description="class names in category-id order")
    scale: int = Field(ge=1, description="PV decimation")
    cell: int = Field(ge=1, description="router cell side, full-resolution px")
    tile_halo: int = Field(alias="halo", ge=0, description="FF context per side of a cell")
    tile: int = Field(ge=1, description="FF tile side: cell + 2 * tile_halo")
    multiple: int = Field(ge=1, description="full-resolution sides are padded to this")
    pv_multiple: int = Field(ge=1, description="PV input sides are multiples of this")
    pv_stride: int = Field(1, ge=1, description="PV encoder output stride")
    n_outputs: int = Field(3, ge=1, description="channels of every map")
    budget: float = Field(0.25, gt=0, le=1, description="the model's default share of FF cells")
    deadline_ms: float | None = Field(None, gt=0, description="the model's default deadline")
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    model: dict[str, Any] = Field(default_factory=dict, description="the training config's model section")
    gsd_range: tuple[float, float] | None = Field(
        None, description="metres per pixel the model was trained across (augment.gsd_range)")
    checkpoint: str = ""
    checkpoint_version: str = ""
    files: dict[str, dict[str, str]] = Field(default_factory=dict, description="graph files of an export")
    inputs: dict[str, str] | None = None
    outputs: dict[str, list[str]] | None = None
    fp16: bool = False
    opset: int | None = None

    @property
    def band_stats(self) -> BandStats:
        """:attr:`stats` as :class:`~geoseg.bands.BandStats`."""
        return BandStats.from_dict(self.stats)

    @property
    def gsd(self) -> float | None:
        """Metres per pixel of the training chips (None: not recorded, e.g. older checkpoints)."""
        g = self.stats.get("gsd")
        return float(g) if isinstance(g, int | float) and g > 0 else None

    @classmethod
    def from_checkpoint(cls, model_cfg: Any, ckpt_meta: dict[str, Any]) -> ModelMeta:
        """The metadata of a loaded checkpoint.

        Args:
            model_cfg: the model's :class:`~geoseg.models.config.ModelConfig`, or
                :class:`~geoseg.models.maskrcnn.MaskRCNNConfig` (no routing: scale 1, no
                cells or FF tiles; sides padded to its stride).
            ckpt_meta: the ``meta`` of :func:`geoseg.models.checkpoint.load_model` (``config``,
                ``stats``, ``classes``, ``version``, ``path``).

        Raises:
            CheckpointError: the checkpoint's postprocess section or statistics are invalid.
        """
        c = model_cfg
        config = ckpt_meta.get("config") or {}
        path = str(Path(ckpt_meta["path"]).resolve()) if ckpt_meta.get("path") else ""
        stats = dict(ckpt_meta.get("stats") or {})
        arch, m = getattr(c, "arch", "routed"), int(c.multiple)
        grid = ({"scale": int(c.scale), "cell": int(c.cell), "halo": int(c.halo),
                 "tile": int(c.cell + 2 * c.halo), "multiple": m,
                 "pv_multiple": int(c.multiple // c.scale), "pv_stride": int(c.pv.output_stride),
                 "n_outputs": int(c.n_outputs), "budget": float(c.budget), "deadline_ms": c.deadline_ms}
                if arch == "routed" else  # Mask R-CNN: no PV, cells nor FF tiles
                {"scale": 1, "cell": m, "halo": 0, "tile": m, "multiple": m, "pv_multiple": m})
        data = {
            "arch": arch, "bands": int(c.in_channels),
            "stats": {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in stats.items()},
            "classes": list(ckpt_meta.get("classes") or c.classes), **grid,
            "postprocess": dict(config.get("postprocess") or {}),
            "model": c.model_dump(mode="json"), "gsd_range": trained_range(config),
            "checkpoint": path, "checkpoint_version": str(ckpt_meta.get("version", "")),
        }
        return cls._checked(data, path or "the checkpoint", "retrain or pass another checkpoint")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelMeta:
        """Read the metadata part of an export's ``geoseg-export.json``.

        Raises:
            CheckpointError: unreadable, not JSON, or missing/invalid keys (named, with the file).
        """
        return cls.from_mapping(read_json_object(path), str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str) -> ModelMeta:
        """Validate an export's mapping (``source`` names it in errors).

        Raises:
            CheckpointError: missing or invalid keys (named, with the source).
        """
        return cls._checked(data, source, "re-run geoseg export")

    @classmethod
    def _checked(cls, data: dict[str, Any], source: str, advice: str) -> ModelMeta:
        try:
            meta = cls.model_validate(data)
            BandStats.from_dict(meta.stats)
        except ValidationError as err:
            raise CheckpointError(f"model metadata: {format_validation_error(err, source)}; {advice}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{source} holds invalid band statistics ({err}); {advice}") from None
        if len(meta.band_stats.mean) != meta.band_count:
            raise CheckpointError(f"{source} has statistics of {len(meta.band_stats.mean)} bands for a "
                                  f"{meta.band_count}-band model; {advice}")
        return meta

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the on-disk keys (extra export keys included).

        JSON has no infinity: an infinite ``utility_threshold`` (``--budget auto`` runs FF
        on every cell, or on none) is written as the string ``"-inf"`` / ``"inf"``, which
        predict reads back; pydantic would write ``null``, i.e. "never calibrated".
        """
        data = self.model_dump(mode="json", by_alias=True)
        thr = (self.model_extra or {}).get("utility_threshold")
        if isinstance(thr, float) and math.isinf(thr):
            data["utility_threshold"] = "inf" if thr > 0 else "-inf"
        return data


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        CheckpointError: unreadable, not JSON, or not an object (naming the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not readable JSON ({err}); re-run geoseg export") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; re-run geoseg export")
    return data
