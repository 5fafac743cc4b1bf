"""Targets and losses of the reference detector: focal objectness + GIoU boxes (torchvision.ops)."""

from __future__ import annotations

import torch
from pydantic import Field
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from geoseg.config import Strict
from geoseg.models.refdet import STRIDE, centres, decode


class SearchLossConfig(Strict):
    """Loss weights (``loss:`` of a ``task: search`` config)."""

    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    giou: float = Field(2.0, ge=0, description="weight of the GIoU box loss")
    radius: float = Field(0.3, gt=0, le=1, description="positive cells: within radius x box side of the centre")
    similarity: float = Field(1.0, ge=0, description="weight of the focal loss on the similarity term alone")


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
