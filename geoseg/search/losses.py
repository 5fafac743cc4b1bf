"""Losses of the reference detector: focal objectness, GIoU boxes, kind-embedding contrast.

Focal loss and GIoU from torchvision.ops; the supervised contrastive loss
(:func:`kind_contrast`) on the kind embeddings of templates and objects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from pydantic import Field
from torchvision.ops import generalized_box_iou_loss, roi_align, sigmoid_focal_loss

from geoseg.config import Strict
from geoseg.models.refdet import STRIDE, centres, decode


class SearchLossConfig(Strict):
    """Loss weights (``loss:`` of a ``task: search`` config)."""

    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    giou: float = Field(2.0, ge=0, description="weight of the GIoU box loss")
    radius: float = Field(0.3, gt=0, le=1, description="positive cells: within radius x box side of the centre")
    similarity: float = Field(1.0, ge=0, description="weight of the focal loss on the similarity term alone")
    contrast: float = Field(1.0, ge=0, description="weight of the kind-embedding contrastive loss")
    temperature: float = Field(0.1, gt=0, description="temperature of the contrastive loss")


def assign(boxes: torch.Tensor, h: int, w: int, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive cells of the (h, w) head grid and the box each regresses.

    A cell is positive for a box when its centre lies inside the box and within
    ``max(radius × the box's shorter side, 1.5 × stride)`` of the box centre (the
    smallest such box wins).

    Returns:
        ``(positive (h*w,) bool, target boxes (h*w, 4))``.
    """
    c = centres(h, w, boxes.device)
    pos = torch.zeros(h * w, dtype=torch.bool, device=boxes.device)
    tgt = torch.zeros(h * w, 4, device=boxes.device)
    if len(boxes) == 0:
        return pos, tgt
    mid = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).min(1).values
    r = torch.clamp(side * radius, min=1.5 * STRIDE)
    inside = ((c[:, None, 0] > boxes[None, :, 0]) & (c[:, None, 0] < boxes[None, :, 2])
              & (c[:, None, 1] > boxes[None, :, 1]) & (c[:, None, 1] < boxes[None, :, 3]))
    near = (torch.abs(c[:, None, :] - mid[None]) <= r[None, :, None]).all(-1)
    ok = inside & near
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(h * w, -1)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best = area.argmin(1)
    pos = ok.any(1)
    tgt = boxes[best]
    return pos, tgt


def search_loss(obj: torch.Tensor, dist: torch.Tensor, boxes: list[torch.Tensor],
                cfg: SearchLossConfig, sim: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Focal loss on objectness (normalised by positives) + weighted GIoU on positives.

    Args:
        obj: (B, 1, h, w) logits.
        dist: (B, 4, h, w) box distances in pixels.
        boxes: per image, (n, 4) truth boxes in pixels.
        cfg: loss weights.
        sim: (B, 1, h, w) the similarity term of ``obj`` (template and search correlation only),
            supervised alone too, with weight ``cfg.similarity``: the one part of the
            objectness that cannot find objects without telling kinds apart.

    Returns:
        ``{"loss", "focal", "giou", "positives"}``.
    """
    b, _, h, w = obj.shape
    focal = obj.new_zeros(())
    giou = obj.new_zeros(())
    sim_loss = obj.new_zeros(())
    npos = 0
    for i in range(b):
        pos, tgt = assign(boxes[i].to(obj.device), h, w, cfg.radius)
        target = pos.float().reshape(1, h, w)
        focal = focal + sigmoid_focal_loss(obj[i], target, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma,
                                           reduction="sum")
        if sim is not None:
            sim_loss = sim_loss + sigmoid_focal_loss(sim[i], target, alpha=cfg.focal_alpha,
                                                     gamma=cfg.focal_gamma, reduction="sum")
        if pos.any():
            pred = decode(dist[i])[pos]
            giou = giou + generalized_box_iou_loss(pred, tgt[pos], reduction="sum")
        npos += int(pos.sum())
    n = max(npos, 1)
    focal, giou, sim_loss = focal / n, giou / n, sim_loss / n
    return {"loss": focal + cfg.giou * giou + cfg.similarity * sim_loss, "focal": focal.detach(),
            "giou": giou.detach(), "similarity": sim_loss.detach(),
            "positives": torch.tensor(float(npos))}


def object_embeddings(emb: torch.Tensor, boxes: list[torch.Tensor], radius: float) -> torch.Tensor:
    """Unit embeddings (N, D) of the objects of a batch.

    ``emb`` (B, D, h, w) at stride :data:`STRIDE` averaged (``torchvision.ops.roi_align``) over the centre of each box,
    the region whose cells :func:`assign` makes positive. ``boxes``: per image, (n, 4) px.
    """
    rois = []
    for i, b in enumerate(boxes):
        if len(b):
            b = b.to(emb.device, torch.float32)
            mid = (b[:, :2] + b[:, 2:]) / 2
            r = torch.clamp((b[:, 2:] - b[:, :2]).min(1).values * radius, min=1.5 * STRIDE)[:, None]
            lo, hi = torch.maximum(mid - r, b[:, :2]), torch.minimum(mid + r, b[:, 2:])
            rois.append(torch.cat([torch.full((len(b), 1), float(i), device=emb.device), lo, hi], 1))
    if not rois:
        return emb.new_zeros((0, emb.shape[1]))
    pooled = roi_align(emb, torch.cat(rois), output_size=2, spatial_scale=1 / STRIDE, sampling_ratio=2,
                       aligned=True)
    return F.normalize(pooled.mean(dim=(-2, -1)), dim=1)


def kind_contrast(emb: torch.Tensor, cls: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over the objects of a batch.

    ``emb`` (M, D) holds unit embeddings of the batch's templates and of the objects of
    every kind in its search crops, ``cls`` (M,) their classes. Each one is an anchor
    whose positives are the others of its class: ``-mean over positives of log softmax
    over all others (cos / temperature)``, averaged over the anchors that have a positive
    and a negative. Without it nothing asks the encoder (trained from random weights) to
    give two kinds of similar size and brightness different features, and the similarity
    term (the cosine to the templates' mean embedding) cannot tell them apart.

    Returns:
        The loss (0 when no anchor has both a positive and a negative).
    """
    m = len(emb)
    eye = torch.eye(m, dtype=torch.bool, device=emb.device)
    cls = cls.to(emb.device)
    pos = (cls[:, None] == cls[None]) & ~eye
    ok = pos.any(1) & (cls[:, None] != cls[None]).any(1)
    if not bool(ok.any()):
        return emb.sum() * 0.0
    logits = (emb @ emb.T / temperature).masked_fill(eye, float("-inf"))
    logp = torch.log_softmax(logits, dim=1).masked_fill(eye, 0.0)
    p = pos[ok].float()
    return -((logp[ok] * p).sum(1) / p.sum(1)).mean()
