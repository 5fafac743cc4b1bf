"""Mask R-CNN, the two-stage baseline beside the routed model (``model.arch: maskrcnn``).

torchvision's :class:`~torchvision.models.detection.MaskRCNN` (FPN, RPN, RoIAlign, box and
mask heads) on an smp ResNet encoder, so the weights policy is the routed model's: the
backbone starts from random weights (``weights: null``), a local encoder state-dict file,
or a weight name smp knows for the encoder (``imagenet``, fetched once into the Hugging
Face cache by :mod:`geoseg.models.pretrained`). Any band count: smp adapts the first
convolution (with pretrained weights, by repeating the RGB filters).

Images reach the network already normalised with the band statistics of the training chips
(:func:`geoseg.bands.normalize`, as for the routed model), so the torchvision transform's
``image_mean``/``image_std`` are 0 and 1 per band, and the transform never resizes: pixels
keep their ground size, which is what the anchor sizes (in pixels) are chosen for.
Inputs are padded to multiples of 32 (:attr:`MaskRCNNConfig.multiple`).

:meth:`MaskRCNNModel.detect` returns the detections with their 28 × 28 mask probabilities
(not pasted into the image): predict pastes each into its box only, so a large window
costs no (detections × H × W) array (:mod:`geoseg.predict.maskrcnn_phase`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from geoseg.config import Strict

Backbone = Literal["resnet18", "resnet34", "resnet50"]


class MaskRCNNConfig(Strict):
    """The Mask R-CNN model (YAML section ``model`` with ``arch: maskrcnn``).

    Sizes are pixels of the chips (no resizing). The defaults suit buildings of about
    8-150 px across; ``anchor_sizes`` has one size per FPN level (strides 4, 8, 16, 32, 64).
    """

    arch: Literal["maskrcnn"] = "maskrcnn"
    in_channels: int = Field(3, ge=1)
    classes: tuple[str, ...] = ("object",)
    backbone: Backbone = "resnet18"
    weights: str | None = Field(
        None, description="None (random), a name smp knows for the backbone ('imagenet', ...) fetched "
        "into the Hugging Face cache, or a local encoder state-dict file")
    fpn_channels: int = Field(256, ge=8)
    anchor_sizes: tuple[int, ...] = Field((8, 16, 32, 64, 128), description="one per FPN level")
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_roi_size: int = Field(7, ge=2, description="RoIAlign output side of the box head")
    mask_roi_size: int = Field(14, ge=2, description="RoIAlign output side of the mask head (masks 2x)")
    box_head_size: int = Field(1024, ge=8, description="width of the box head's two layers")
    mask_head: tuple[int, ...] = Field((256, 256, 256, 256), description="channels of the mask head convs")
    rpn_batch: int = Field(256, ge=8, description="anchors sampled per image for the RPN loss")
    roi_batch: int = Field(512, ge=8, description="RoIs sampled per image for the head losses")
    rpn_pre_nms: int = Field(2000, ge=1, description="proposals per level before NMS")
    rpn_post_nms: int = Field(2000, ge=1, description="proposals kept after NMS")
    detections: int = Field(1000, ge=1, description="most detections per window")
    score_threshold: float = Field(0.5, ge=0, le=1, description="detections below are dropped")
    mask_threshold: float = Field(0.5, gt=0, lt=1, description="mask probability of an object pixel")
    mask_nms_iou: float = Field(0.5, gt=0, le=1, description="a mask overlapping a better one more is dropped")

    @field_validator("classes")
    @classmethod
    def _classes_named(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"classes must name at least one class, each once, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _fits(self) -> MaskRCNNConfig:
        from geoseg.models.config import check_encoder_weights

        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per FPN level (5: strides 4 to 64), "
                             f"got {len(self.anchor_sizes)} ({list(self.anchor_sizes)})")
        if not self.mask_head:
            raise ValueError("mask_head needs at least one conv, e.g. [256, 256, 256, 256]")
        check_encoder_weights(self.weights, self.backbone)
        return self

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this (the encoder's stride)."""
        return 32


def _backbone(cfg: MaskRCNNConfig) -> nn.Module:
    """The smp encoder with its weights, under a torchvision FPN (levels 0-3 and pool)."""
    from segmentation_models_pytorch.encoders import get_encoder
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    from geoseg.models.pretrained import fetch, hub_weights, is_named
    from geoseg.models.streams import load_encoder_weights

    named = is_named(cfg.weights, cfg.backbone)
    if named:
        assert cfg.weights is not None
        fetch(hub_weights(cfg.backbone, cfg.weights))  # smp then reads it from the cache
    encoder = get_encoder(cfg.backbone, in_channels=cfg.in_channels, depth=5,
                          weights=cfg.weights if named else None)
    if cfg.weights is not None and not named:
        load_encoder_weights(encoder, cfg.weights)
    return _EncoderFPN(encoder, FeaturePyramidNetwork(list(encoder.out_channels[2:]), cfg.fpn_channels,
                                                      extra_blocks=LastLevelMaxPool()), cfg.fpn_channels)


class _EncoderFPN(nn.Module):
    """Encoder features at strides 4-32 through an FPN: the backbone torchvision expects."""

    def __init__(self, encoder: nn.Module, fpn: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.encoder, self.fpn, self.out_channels = encoder, fpn, out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.encoder(x)[2:]
        out: OrderedDict[str, torch.Tensor] = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return out


def _transform(bands: int) -> nn.Module:
    """The batching transform of torchvision without resizing or normalising (done before)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class Batching(GeneralizedRCNNTransform):  # type: ignore[misc]  # torchvision is untyped here
        def resize(self, image: torch.Tensor, target: Any = None) -> tuple[torch.Tensor, Any]:
            return image, target

        def normalize(self, image: torch.Tensor) -> torch.Tensor:
            return image

    return Batching(min_size=1, max_size=1, image_mean=[0.0] * bands, image_std=[1.0] * bands,
                    size_divisible=32)


class MaskRCNNModel(nn.Module):
    """torchvision Mask R-CNN built from a :class:`MaskRCNNConfig`.

    Class ``k`` of ``cfg.classes`` is label ``k + 1`` (0 is torchvision's background).
    """

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        from torchvision.models.detection import MaskRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.ops import MultiScaleRoIAlign

        self.cfg = cfg
        levels = ["0", "1", "2", "3"]
        c, r, n = cfg.fpn_channels, cfg.box_roi_size, len(cfg.classes) + 1
        anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes),
                                  (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
        self.net = MaskRCNN(
            _backbone(cfg),
            rpn_anchor_generator=anchors, rpn_batch_size_per_image=cfg.rpn_batch,
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms, rpn_pre_nms_top_n_test=cfg.rpn_pre_nms,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms, rpn_post_nms_top_n_test=cfg.rpn_post_nms,
            box_roi_pool=MultiScaleRoIAlign(levels, r, sampling_ratio=2),
            box_head=TwoMLPHead(c * r * r, cfg.box_head_size),
            box_predictor=FastRCNNPredictor(cfg.box_head_size, n),
            box_batch_size_per_image=cfg.roi_batch, box_detections_per_img=cfg.detections,
            # low: AP needs the ranked tail; predict and validation apply score_threshold
            box_score_thresh=min(0.05, cfg.score_threshold),
            mask_roi_pool=MultiScaleRoIAlign(levels, cfg.mask_roi_size, sampling_ratio=2),
            mask_head=MaskRCNNHeads(c, list(cfg.mask_head), 1),
            mask_predictor=MaskRCNNPredictor(cfg.mask_head[-1], cfg.mask_head[-1], n),
        )
        self.net.transform = _transform(cfg.in_channels)

    @classmethod
    def from_config(cls, cfg: MaskRCNNConfig) -> MaskRCNNModel:
        """The model of ``cfg`` (backbone weights as ``cfg.weights`` says)."""
        return cls(cfg)

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The training losses: ``loss_classifier``, ``loss_box_reg``, ``loss_mask``, ``loss_objectness``, ...

        Args:
            images: normalised images; padding and invalid pixels 0.
            targets: per image ``boxes`` (N, 4) float x0 y0 x1 y1, ``labels`` (N,) int64
                (class index + 1) and ``masks`` (N, H, W) uint8.

        Shape:
            - images: (B, C_in, H, W)
        """
        losses: dict[str, torch.Tensor] = self.net(list(images), targets)
        return losses

    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections per image, masks not pasted (eval mode).

        Returns:
            Per image ``boxes`` (N, 4) in input pixels, ``scores`` (N,), ``labels`` (N,)
            (class index + 1) and ``masks`` (N, 1, M, M) probabilities in their box
            (M = 2 × ``mask_roi_size``), best score first.

        Shape:
            - images: (B, C_in, H, W), H and W any (padded to 32 inside)
        """
        net = self.net
        batch, _ = net.transform(list(images))
        features = net.backbone(batch.tensors)
        proposals, _ = net.rpn(batch, features)
        dets: list[dict[str, torch.Tensor]]
        dets, _ = net.roi_heads(features, proposals, batch.image_sizes)
        return dets
