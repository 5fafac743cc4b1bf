"""Configuration of the routed model (YAML section ``model``).

Every model maps one to one onto a YAML mapping; unknown keys are errors
(:class:`geoseg.config.Strict`). Nothing here downloads anything: encoder weights are
random (``None``), a local state-dict file, or a name smp knows for the encoder
(``imagenet``, ...), fetched into the Hugging Face cache only when a model is built
(:mod:`geoseg.models.pretrained`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from geoseg.config import Strict

Arch = Literal["unet", "fpn", "unetplusplus", "deeplabv3plus", "linknet"]

#: Channels of every map: 0 extent, 1 boundary, 2 contact, 3.. class logits (if > 1 class).
EXTENT, BOUNDARY, CONTACT, FIRST_CLASS = 0, 1, 2, 3


def encoder_names_hint() -> str:
    """Where to find valid encoder names (for error messages)."""
    return (
        "use a name from segmentation_models_pytorch.encoders.get_encoder_names() "
        "(e.g. 'resnet18') or 'tu-<timm model>' (e.g. 'tu-regnety_002')"
    )


def check_encoder_name(name: str) -> None:
    """Raise ValueError unless smp can build an encoder of this name.

    Args:
        name: an smp encoder name or ``tu-<timm model name>``.

    Raises:
        ValueError: the name is unknown to smp and timm; the message says where to look.
    """
    import segmentation_models_pytorch as smp  # lazy: importing smp takes seconds
    import timm

    if name.startswith("tu-"):
        known = timm.is_model(name[3:])
    else:
        known = name in smp.encoders.get_encoder_names()
    if not known:
        raise ValueError(f"unknown encoder '{name}'; {encoder_names_hint()}")


def check_encoder_weights(value: str | None, encoder: str) -> str | None:
    """Accept None, a name smp knows for this encoder, or an existing local file.

    Nothing is downloaded here: named weights are fetched when the model is built.

    Args:
        value: None, a weights name (``imagenet``, ``ssl``, ...) or the path of a
            state-dict file of the encoder.
        encoder: the encoder the weights are for.

    Returns:
        The value unchanged.

    Raises:
        ValueError: neither a name known for the encoder nor an existing file.
    """
    from geoseg.models.pretrained import is_named, unknown_weights_message

    if value is None or is_named(value, encoder):
        return value
    if not Path(value).expanduser().is_file():
        raise ValueError(unknown_weights_message(value, encoder))
    return value


class StreamConfig(Strict):
    """One encoder-decoder stream (PV or FF) built with segmentation-models-pytorch."""

    arch: Arch = "unet"
    encoder: str
    encoder_weights: str | None = Field(
        None,
        description="None (random), a name smp knows for the encoder ('imagenet', ...) fetched "
        "into the Hugging Face cache, or a local encoder state-dict file",
    )
    encoder_depth: int = Field(5, ge=3, le=5)
    decoder_channels: tuple[int, ...] | None = Field(
        None, description="unet/unetplusplus: one per decoder stage; fpn/deeplabv3plus: one value"
    )

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        check_encoder_name(value)
        return value

    @model_validator(mode="after")
    def _weights_fit(self) -> StreamConfig:
        check_encoder_weights(self.encoder_weights, self.encoder)
        return self

    @model_validator(mode="after")
    def _decoder_channels_fit(self) -> StreamConfig:
        dc = self.decoder_channels
        if dc is None:
            return self
        if any(c < 1 for c in dc):
            raise ValueError(f"decoder_channels must be positive, got {dc}")
        if self.arch in ("unet", "unetplusplus") and len(dc) != self.encoder_depth:
            raise ValueError(
                f"{self.arch} needs one decoder channel per encoder stage: "
                f"{self.encoder_depth} values, got {len(dc)} ({dc})"
            )
        if self.arch in ("fpn", "deeplabv3plus") and len(dc) != 1:
            raise ValueError(f"{self.arch} takes a single decoder_channels value, got {dc}")
        if self.arch == "linknet":
            raise ValueError("linknet has no decoder_channels; remove the key")
        return self

    @property
    def output_stride(self) -> int:
        """Input sides must be multiples of this (``2 ** encoder_depth``)."""
        return 2**self.encoder_depth


class EnhanceConfig(Strict):
    """The learnable image enhancer placed before both streams (identity at init)."""

    enabled: bool = True
    denoise: bool = True
    colour: bool = True
    unsharp: bool = True
    hidden: int = Field(16, ge=1, description="channels of the denoising residual block")


class ModelConfig(Strict):
    """The routed model: Enhance, PV at 1/scale, router over cells, FF on chosen cells.

    Sizes are full-resolution pixels. Constraints checked here: ``cell`` is a multiple of
    ``scale``; ``cell + 2 * halo`` is a multiple of the FF output stride.
    """

    in_channels: int = Field(3, ge=1)
    classes: tuple[str, ...] = ("object",)
    scale: int = Field(4, ge=1, description="PV runs at 1/scale of full resolution")
    cell: int = Field(64, ge=8, description="router cell side in full-resolution pixels")
    halo: int = Field(16, ge=0, description="context added around each FF cell, per side")
    budget: float = Field(0.25, gt=0.0, le=1.0, description="share of cells run by FF")
    deadline_ms: float | None = Field(None, gt=0.0, description="overrides budget at inference")
    train_random_cells: float = Field(
        0.25, ge=0.0, le=1.0, description="extra share of random cells FF sees in training"
    )
    gradient_checkpointing: bool = False
    enhance: EnhanceConfig = Field(default_factory=EnhanceConfig)
    # factories: building the defaults validates encoder names, which imports smp (seconds)
    pv: StreamConfig = Field(
        default_factory=lambda: StreamConfig(encoder="tu-regnety_002", decoder_channels=(128, 64, 32, 16, 16))
    )
    ff: StreamConfig = Field(default_factory=lambda: StreamConfig(encoder="resnet18"))

    @field_validator("classes")
    @classmethod
    def _classes_named(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("classes must name at least one class, e.g. ['building']")
        if len(set(value)) != len(value):
            raise ValueError(f"classes must be unique, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _sizes_fit(self) -> ModelConfig:
        if self.cell % self.scale:
            raise ValueError(
                f"cell ({self.cell}) must be a multiple of scale ({self.scale}) so cells fall on whole PV pixels"
            )
        tile = self.cell + 2 * self.halo
        if tile % self.ff.output_stride:
            raise ValueError(
                f"cell + 2 * halo = {tile} must be a multiple of the FF output stride "
                f"{self.ff.output_stride}; e.g. cell={self.cell} with halo="
                f"{_next_halo(self.cell, self.halo, self.ff.output_stride)}"
            )
        return self

    @property
    def arch(self) -> str:
        """The model family: ``routed`` (``maskrcnn`` is :class:`geoseg.models.maskrcnn.MaskRCNNConfig`)."""
        return "routed"

    @property
    def n_outputs(self) -> int:
        """Channels of every map: extent, boundary, contact, then class logits if > 1 class."""
        return 3 + (len(self.classes) if len(self.classes) > 1 else 0)

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this: lcm(cell, scale * PV stride)."""
        return math.lcm(self.cell, self.scale * self.pv.output_stride)


def _next_halo(cell: int, halo: int, stride: int) -> str:
    """Smallest halo >= ``halo`` with ``cell + 2 * halo`` a multiple of ``stride``, as text."""
    for h in range(halo, halo + stride):
        if (cell + 2 * h) % stride == 0:
            return str(h)
    return "<none: make cell a multiple of 2>"
