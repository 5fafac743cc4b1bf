"""Losses of the routed model: dense terms on PV and FF, and the router's utility term.

Targets are full-resolution tensors of the *input* size (B, H, W):

* ``extent``, ``boundary``, ``contact``: float 0/1;
* ``sdf``: float signed distance to the extent boundary, negative inside objects,
  positive outside, already normalised;
* ``valid``: bool; False (nodata, padding) pixels are excluded from every term;
* ``classes`` (optional): long class index, -1 where there is no object.

Dense terms, each on PV (logits upsampled to full resolution, weight ``pv``) and on FF
(its cells against the target crops of the same cells, weight ``ff``):

* extent: Lovász hinge (smp ``LovaszLoss``; invalid pixels ignored);
* boundary, contact: BCE + Dice (smp ``DiceLoss``), masked;
* boundary_aware: mean over valid pixels of ``sigmoid(extent) * sdf`` (Kervadec et al.,
  "Boundary loss for highly unbalanced segmentation", MIDL 2019), weight ramped from
  ``start`` to ``end`` over training progress;
* classes: cross-entropy, when the model has class channels and ``classes`` is given.

Router: for each FF cell the target is ``per_sample_loss(PV cell) - per_sample_loss(FF
cell)`` (detached); the utility predicted at that cell is regressed onto it (smooth L1).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss

from geoseg.config import Strict
from geoseg.models.cells import pack_cells
from geoseg.models.config import BOUNDARY, CONTACT, EXTENT, FIRST_CLASS
from geoseg.models.routed import RoutedOutput

IGNORE = -1
_TARGETS = ("extent", "boundary", "contact", "sdf", "valid", "classes")


class BoundaryAwareConfig(Strict):
    """Weight of the boundary loss, ramped over training progress 0..1."""

    start: float = Field(0.05, ge=0.0)
    end: float = Field(0.5, ge=0.0)
    schedule: Literal["linear", "cosine"] = "linear"

    def weight(self, progress: float) -> float:
        """The weight at ``progress`` (clipped to [0, 1]).

        Examples:
            >>> BoundaryAwareConfig().weight(0.5)
            0.275
        """
        p = min(1.0, max(0.0, float(progress)))
        if self.schedule == "cosine":
            p = (1.0 - math.cos(math.pi * p)) / 2.0
        return self.start + (self.end - self.start) * p


class LossConfig(Strict):
    """Weights of the loss terms (YAML section ``loss``)."""

    extent: float = Field(1.0, ge=0.0)
    boundary: float = Field(0.5, ge=0.0)
    contact: float = Field(0.5, ge=0.0)
    classes: float = Field(1.0, ge=0.0)
    pv: float = Field(0.5, ge=0.0, description="weight of every dense term on PV")
    ff: float = Field(1.0, ge=0.0, description="weight of every dense term on FF cells")
    utility: float = Field(0.1, ge=0.0, description="router utility regression")
    boundary_aware: BoundaryAwareConfig = BoundaryAwareConfig()


def prepare_targets(targets: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Targets with the dtypes the losses use: float maps, bool ``valid``, long ``classes``.

    Raises:
        KeyError: a required target is missing (the message names it).
    """
    missing = [k for k in _TARGETS[:5] if k not in targets]
    if missing:
        raise KeyError(f"targets lack {missing}; give extent, boundary, contact, sdf, valid")
    out = {k: targets[k].to(dtype) for k in ("extent", "boundary", "contact", "sdf")}
    out["valid"] = targets["valid"].bool()
    if "classes" in targets and targets["classes"] is not None:
        out["classes"] = targets["classes"].long()
    return out


# --------------------------------------------------------------------- per sample
def lovasz_hinge_per_sample(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary Lovász hinge of each sample, invalid pixels ignored (vectorised).

    Equals smp ``LovaszLoss("binary", per_image=True)`` sample by sample: invalid pixels
    get an error of -inf, so they sort last and add nothing.

    Shape:
        - logits, labels, valid: (N, P) (or (N, H, W), flattened)
        - output: (N,)
    """
    n = logits.shape[0]
    logits, labels, valid = logits.reshape(n, -1), labels.reshape(n, -1), valid.reshape(n, -1)
    labels = labels.to(logits.dtype) * valid
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors = torch.where(valid, errors, torch.full_like(errors, -math.inf))
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    gt = torch.gather(labels, 1, perm)
    gts = gt.sum(1, keepdim=True)
    jaccard = 1.0 - (gts - gt.cumsum(1)) / (gts + (1.0 - gt).cumsum(1))
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors_sorted) * grad).sum(1)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid pixels per sample; (N, ...) -> (N,)."""
    n = values.shape[0]
    v = valid.reshape(n, -1).to(values.dtype)
    return (values.reshape(n, -1) * v).sum(1) / v.sum(1).clamp_min(1.0)


def bce_dice_per_sample(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Masked BCE plus soft Dice of each sample (Dice 0 where the target is empty, as smp).

    Shape:
        - logits, target, valid: (N, H, W)
        - output: (N,)
    """
    n = logits.shape[0]
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    v = valid.reshape(n, -1).to(logits.dtype)
    p = F.logsigmoid(logits).exp().reshape(n, -1) * v
    t = target.reshape(n, -1) * v
    dice = 1.0 - 2.0 * (p * t).sum(1) / (p + t).sum(1).clamp_min(1e-7)
    dice = dice * (t.sum(1) > 0).to(dice.dtype)
    return _masked_mean(bce, valid) + dice


def per_sample_terms(logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every dense term for each sample (cell or image), unweighted.

    Args:
        logits: maps with channels extent, boundary, contact[, classes].
        targets: ``extent``, ``boundary``, ``contact``, ``sdf``, ``valid`` [, ``classes``]
            of the same samples.

    Returns:
        ``extent``, ``boundary``, ``contact``, ``boundary_aware`` [, ``classes``], each (N,).

    Shape:
        - logits: (N, C, H, W)
        - targets: (N, H, W) each
    """
    valid = targets["valid"]
    ext = logits[:, EXTENT]
    terms = {
        "extent": lovasz_hinge_per_sample(ext, targets["extent"], valid),
        "boundary": bce_dice_per_sample(logits[:, BOUNDARY], targets["boundary"], valid),
        "contact": bce_dice_per_sample(logits[:, CONTACT], targets["contact"], valid),
        "boundary_aware": _masked_mean(torch.sigmoid(ext) * targets["sdf"], valid),
    }
    if logits.shape[1] > FIRST_CLASS and "classes" in targets:
        cls = targets["classes"].masked_fill(~valid, IGNORE)
        ce = F.cross_entropy(logits[:, FIRST_CLASS:], cls, ignore_index=IGNORE, reduction="none")
        terms["classes"] = _masked_mean(ce, cls != IGNORE)
    return terms


# --------------------------------------------------------------------- the loss
class RoutedLoss(torch.nn.Module):
    """Total loss of a :class:`~geoseg.models.routed.RoutedOutput` against full-res targets.

    Args:
        cfg: term weights and the boundary-aware ramp.
    """

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.lovasz = LovaszLoss("binary", per_image=False, ignore_index=IGNORE)
        self.dice = DiceLoss("binary", from_logits=True, ignore_index=IGNORE)

    def _weights(self, ba_weight: float) -> dict[str, float]:
        c = self.cfg
        return {
            "extent": c.extent,
            "boundary": c.boundary,
            "contact": c.contact,
            "classes": c.classes,
            "boundary_aware": ba_weight,
        }

    def per_sample_loss(self, logits: torch.Tensor, targets: dict[str, torch.Tensor], ba_weight: float) -> torch.Tensor:
        """Weighted sum of the dense terms for each sample (the router's cell loss).

        Shape:
            - logits: (N, C, H, W)
            - targets: (N, H, W) each
            - output: (N,)
        """
        w = self._weights(ba_weight)
        terms = per_sample_terms(logits, targets)
        return sum((w[k] * v for k, v in terms.items()), torch.zeros_like(terms["extent"]))

    def dense_terms(self, logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The dense terms over a batch (images or cells), unweighted, invalid ignored.

        Shape:
            - logits: (N, C, H, W)
            - targets: (N, H, W) each
        """
        valid = targets["valid"]
        ext = logits[:, EXTENT]
        with_classes = logits.shape[1] > FIRST_CLASS and "classes" in targets
        if logits.shape[0] == 0:  # no FF cells: zero terms that keep the graph
            names = ["extent", "boundary", "contact", "boundary_aware"]
            return dict.fromkeys(names + ["classes"] * with_classes, logits.sum() * 0.0)
        n_valid = valid.sum().clamp_min(1)

        def bce_dice(channel: int, name: str) -> torch.Tensor:
            x, t = logits[:, channel], targets[name]
            bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            dice = self.dice(x[:, None], t.masked_fill(~valid, IGNORE)[:, None])
            loss: torch.Tensor = (bce * valid).sum() / n_valid + dice
            return loss

        terms = {
            "extent": self.lovasz(ext, targets["extent"].masked_fill(~valid, IGNORE)),
            "boundary": bce_dice(BOUNDARY, "boundary"),
            "contact": bce_dice(CONTACT, "contact"),
            "boundary_aware": (torch.sigmoid(ext) * targets["sdf"] * valid).sum() / n_valid,
        }
        if with_classes:
            cls = targets["classes"].masked_fill(~valid, IGNORE)
            ce = F.cross_entropy(logits[:, FIRST_CLASS:], cls, ignore_index=IGNORE, reduction="none")
            terms["classes"] = ce.sum() / (cls != IGNORE).sum().clamp_min(1)
        return terms

    @staticmethod
    def cell_targets(
        targets: dict[str, torch.Tensor], cells: torch.Tensor, cell: int, size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """Crops of the targets at the given cells (targets zero-padded, invalid, to ``size``).

        Shape:
            - targets: (B, H, W) each
            - cells: (N, 3)
            - output: (N, cell, cell) each
        """
        names = [k for k in _TARGETS if k in targets]
        h, w = targets["valid"].shape[-2:]
        ref = targets["sdf"]
        stack = torch.stack([targets[k].to(ref.dtype) for k in names], dim=1)
        stack = F.pad(stack, (0, size[1] - w, 0, size[0] - h))
        crops = pack_cells(stack, cells, cell, 0)
        out = {k: crops[:, i] for i, k in enumerate(names)}
        out["valid"] = out["valid"] > 0.5
        if "classes" in out:
            out["classes"] = out["classes"].round().long().masked_fill(~out["valid"], IGNORE)
        return out

    def forward(
        self, out: RoutedOutput, targets: dict[str, torch.Tensor], progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and every term (detached) for logging.

        Args:
            out: the model's output.
            targets: full-resolution targets of the input size (see the module docstring).
            progress: training progress in [0, 1] (drives the boundary-aware ramp).

        Returns:
            ``(total, terms)``; terms hold ``pv_<term>``, ``ff_<term>``, ``pv``, ``ff``,
            ``utility``, ``boundary_aware_weight``.

        Shape:
            - out.logits: (B, C, H, W)
            - targets: (B, H, W) each
        """
        c = self.cfg
        targets = prepare_targets(targets, out.logits.dtype)
        h, w = targets["valid"].shape[-2:]
        ba_weight = c.boundary_aware.weight(progress)
        weights = self._weights(ba_weight)
        # the padded input: utility grid x cell side (ff_logits keeps it even with 0 cells)
        cell = out.ff_logits.shape[-1]
        padded = (out.utility.shape[-2] * cell, out.utility.shape[-1] * cell)
        pv_full = F.interpolate(out.pv_logits, size=padded, mode="bilinear", align_corners=False)

        pv_terms = self.dense_terms(pv_full[..., :h, :w], targets)
        cell_t = self.cell_targets(targets, out.cells, cell, padded)
        ff_terms = self.dense_terms(out.ff_logits, cell_t)

        log: dict[str, torch.Tensor] = {}
        total = out.logits.sum() * 0.0
        for stream, terms, sw in (("pv", pv_terms, c.pv), ("ff", ff_terms, c.ff)):
            sub = sum((weights[k] * v for k, v in terms.items()), torch.zeros_like(total))
            total = total + sw * sub
            log[stream] = sub.detach()
            log.update({f"{stream}_{k}": v.detach() for k, v in terms.items()})

        if out.cells.shape[0]:
            pv_cells = pack_cells(pv_full, out.cells, cell, 0)
            with torch.no_grad():
                gain = self.per_sample_loss(pv_cells, cell_t, ba_weight) - self.per_sample_loss(
                    out.ff_logits, cell_t, ba_weight
                )
            b, r, col = out.cells.unbind(1)
            utility = F.smooth_l1_loss(out.utility[b, r, col], gain)
        else:
            utility = out.utility.sum() * 0.0
        total = total + c.utility * utility
        log["utility"] = utility.detach()
        log["boundary_aware_weight"] = torch.tensor(ba_weight)
        return total, log
