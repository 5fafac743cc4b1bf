"""Encoder-decoder streams (PV and FF) built with segmentation-models-pytorch.

Encoders start from random weights, from a local encoder state-dict file, or from
weights smp names (``imagenet``, ...), which :mod:`geoseg.models.pretrained` fetches into
the Hugging Face cache once and smp (or timm) then loads from that cache, offline.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from geoseg.errors import CheckpointError, ConfigError, first_line
from geoseg.models.config import StreamConfig, check_encoder_name, check_encoder_weights
from geoseg.models.pretrained import fetch, hub_weights, is_named

#: Explicit dispatch from ``StreamConfig.arch`` to the smp class (no string registry).
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "fpn": smp.FPN,
    "unetplusplus": smp.UnetPlusPlus,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "linknet": smp.Linknet,
}


class Stream(nn.Module):
    """An smp segmentation model that also returns its last decoder features.

    Args:
        model: the smp model (encoder, decoder, segmentation_head).
        checkpointing: recompute activations in backward (training only) to save memory.
            BatchNorm running statistics are then updated twice per step.

    Attributes:
        feature_channels: channels of the decoder features fed to the segmentation head.
        output_stride: input sides must be multiples of this.
    """

    def __init__(self, model: nn.Module, *, checkpointing: bool = False) -> None:
        super().__init__()
        self.model = model
        self.checkpointing = checkpointing
        smp_model: Any = model  # encoder, decoder, segmentation_head
        head = smp_model.segmentation_head
        self.feature_channels: int = int(head[0].in_channels)
        self.output_stride: int = int(smp_model.encoder.output_stride)
        params = inspect.signature(smp_model.decoder.forward).parameters.values()
        self._star_features = any(p.kind is p.VAR_POSITIONAL for p in params)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m: Any = self.model
        features = m.encoder(x)
        if self._star_features:  # smp < 0.6 decoders take *features
            decoded = m.decoder(*features)
        else:
            decoded = m.decoder(features)
        return m.segmentation_head(decoded), decoded

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the decoder features they come from.

        Args:
            x: input images, sides multiples of ``output_stride``.

        Returns:
            ``(logits, features)``.

        Shape:
            - x: (B, C_in, H, W)
            - logits: (B, C_out, H, W)
            - features: (B, feature_channels, H / s, W / s) with s = 1 (unet, unet++,
              linknet) or 4 (fpn, deeplabv3plus).
        """
        if self.checkpointing and self.training and torch.is_grad_enabled():
            out = checkpoint(self._run, x, use_reentrant=False)
            return out[0], out[1]
        return self._run(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits only.

        Shape:
            - x: (B, C_in, H, W)
            - output: (B, C_out, H, W)
        """
        return self.forward_features(x)[0]


def _decoder_kwargs(cfg: StreamConfig) -> dict[str, Any]:
    dc = cfg.decoder_channels
    if cfg.arch in ("unet", "unetplusplus"):
        default = (256, 128, 64, 32, 16)[-cfg.encoder_depth :]
        return {"decoder_channels": tuple(dc) if dc is not None else default}
    if dc is None:
        return {}
    if cfg.arch == "fpn":
        return {"decoder_segmentation_channels": dc[0]}
    if cfg.arch == "deeplabv3plus":
        return {"decoder_channels": dc[0]}
    raise ConfigError(f"{cfg.arch} takes no decoder_channels; remove the key")


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state-dict file into an encoder (safe loading, no pickled code).

    Keys may carry an ``encoder.`` prefix (a whole smp model's state dict); only those
    keys are then used.

    Args:
        encoder: the smp encoder.
        path: the file written by ``torch.save(encoder.state_dict(), path)``.

    Raises:
        CheckpointError: unreadable file, not a state dict, or keys/shapes that do not match.
    """
    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(
            f"cannot read encoder weights {path}: {err}; give a file saved with torch.save(encoder.state_dict(), path)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[:3]
        raise CheckpointError(
            f"encoder weights {path} do not fit the configured encoder ({' '.join(first)}); "
            "check the encoder name, encoder_depth and in_channels"
        ) from None


def build_stream(cfg: StreamConfig, in_channels: int, out_channels: int, *, checkpointing: bool = False) -> Stream:
    """Build one stream from its config.

    Args:
        cfg: architecture, encoder, optional local weights.
        in_channels: bands of the input.
        out_channels: channels of the output maps.
        checkpointing: gradient checkpointing in training.

    Returns:
        The stream, with random weights, the local encoder weights, or the named
        pretrained weights loaded (their first convolution adapted by smp or timm when
        ``in_channels`` is not 3).

    Raises:
        ConfigError: unknown architecture, encoder or weights; named weights neither
            cached nor downloadable.
        CheckpointError: the local weights file (or the cached copy of named weights) is bad.
    """
    if cfg.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown arch '{cfg.arch}'; valid: {', '.join(sorted(ARCHITECTURES))}")
    try:
        check_encoder_name(cfg.encoder)
        check_encoder_weights(cfg.encoder_weights, cfg.encoder)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    named = is_named(cfg.encoder_weights, cfg.encoder)
    pretrained: dict[str, Any] = {"encoder_weights": None}
    if named:
        assert cfg.encoder_weights is not None
        path = fetch(hub_weights(cfg.encoder, cfg.encoder_weights))
        if cfg.encoder.startswith("tu-"):  # timm reads the cached file, never the network
            pretrained = {"encoder_weights": True, "pretrained_cfg_overlay": {"file": str(path)}}
        else:  # smp pins a commit: its hf_hub_download answers from the cache
            pretrained = {"encoder_weights": cfg.encoder_weights}
    try:
        model = ARCHITECTURES[cfg.arch](
            encoder_name=cfg.encoder,
            encoder_depth=cfg.encoder_depth,
            in_channels=in_channels,
            classes=out_channels,
            **pretrained,
            **_decoder_kwargs(cfg),
        )
    except (OSError, RuntimeError, ValueError) as err:
        if not named:
            raise
        raise CheckpointError(
            f"cached weights '{cfg.encoder_weights}' of encoder '{cfg.encoder}' cannot be loaded "
            f"({first_line(err, 160)}); delete them from the Hugging Face cache to fetch "
            "them again, or set encoder_weights to null"
        ) from None
    if cfg.encoder_weights is not None and not named:
        load_encoder_weights(model.encoder, cfg.encoder_weights)  # type: ignore[arg-type]
    return Stream(model, checkpointing=checkpointing)
