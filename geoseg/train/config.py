"""The training configuration: one validated :class:`TrainConfig` (YAML presets in configs/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidatorFunctionWrapHandler, field_validator, model_validator

from geoseg.config import MAX_SEED, Strict, read_yaml
from geoseg.models.config import ModelConfig
from geoseg.models.maskrcnn import MaskRCNNConfig
from geoseg.models.postprocess import PostprocessConfig
from geoseg.train.augment import AugmentConfig
from geoseg.train.losses import LossConfig
from geoseg.train.semi import SemiConfig

Metric = Literal["ap", "ap50", "iou", "f1"]


class DataConfig(Strict):
    """What the loader feeds the model."""

    crop: int | None = Field(512, ge=32, description="random crop side (None: whole chips)")
    batch_size: int | Literal["auto"] = Field(
        4, description="the global batch (split over --devices x --nodes processes); auto: the "
                       "largest power of two up to 64 that fits (geoseg.train.autobatch)")
    samples_per_epoch: int | None = Field(
        None, ge=1, description="random crops per epoch (None: one per train chip)")
    workers: int = Field(2, ge=0)
    boundary_width: int = Field(2, ge=1)
    contact_distance: int = Field(3, ge=1)

    @field_validator("batch_size", mode="plain")
    @classmethod
    def _batch(cls, value: Any) -> int | Literal["auto"]:
        if value == "auto":
            return "auto"
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise ValueError(f"must be a whole number of at least 1 or 'auto', not {value!r}")


class OptimConfig(Strict):
    """AdamW with linear warm-up then cosine decay, clipping, EMA, AMP."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(0.99, gt=0, lt=1, description="None disables EMA")
    amp: bool = Field(True, description="mixed precision on CUDA (always off on CPU)")


class ValConfig(Strict):
    """When and how to validate."""

    every: int = Field(1, ge=1, description="validate every N epochs (and at the last)")
    metric: Metric = "ap"
    batch_size: int = Field(1, ge=1)
    budget: float | None = Field(None, gt=0, le=1, description="router budget (None: model's)")


class TrainConfig(Strict):
    """The whole training config (``configs/*.yaml``)."""

    epochs: int = Field(20, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    devices: int = Field(1, ge=1, description="training processes on this machine, one GPU each on CUDA "
                                              "(geoseg.train.distributed)")
    patches: str | None = Field(None, description="output directory of geoseg tile")
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig | MaskRCNNConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    val: ValConfig = ValConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    semi: SemiConfig = SemiConfig()

    @field_validator("model", mode="wrap")
    @classmethod
    def _arch(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """``model.arch`` picks the model family (``routed``, the default, or ``maskrcnn``).

        Validated here rather than as a tagged union so errors name ``model.<key>``.
        """
        if isinstance(value, dict):
            arch = value.get("arch", "routed")
            if arch == "maskrcnn":
                value = MaskRCNNConfig.model_validate(value)
            elif arch == "routed":
                value = ModelConfig.model_validate({k: v for k, v in value.items() if k != "arch"})
            else:
                raise ValueError(f"model.arch must be 'routed' or 'maskrcnn', not {arch!r}")
        return handler(value)

    @model_validator(mode="after")
    def _maskrcnn_fits(self) -> TrainConfig:
        if self.model.arch == "maskrcnn" and self.semi.enabled:
            raise ValueError("semi (the mean teacher) trains the routed model only; remove the semi "
                             "section or set model.arch: routed")
        return self


def config_task(path: str | Path) -> str:
    """The ``task`` of a training config file (``segment`` when absent).

    ``search`` trains the reference detector of ``geoseg search`` (:mod:`geoseg.search.train`).
    """
    return str(read_yaml(path).get("task", "segment"))
