"""The mean teacher's targets for the student: hard pseudo-targets or a soft consistency.

Both take the fused logits of the teacher on the weak view and of the student on the
strong view of the same pixels (see :mod:`geoseg.train.semi`); :func:`cutmix` mixes the
views and the teacher's maps of two samples alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from geoseg.models.config import BOUNDARY, CONTACT, EXTENT, FIRST_CLASS

#: Confidence bins (over [0.5, 1]) of the histogram that places the ``keep`` cut of each class.
BINS = 4096


def extent_confidence(teacher_logits: torch.Tensor, valid: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The teacher's extent probability ``p``, its confidence and each pseudo-class's pixels.

    The confidence is ``max(p, 1 - p)``; the classes are the valid pixels with ``p > 0.5``
    (building) and the others (background).
    """
    ext = torch.sigmoid(teacher_logits.detach()[:, EXTENT].float())
    return ext, torch.maximum(ext, 1 - ext), (valid & (ext > 0.5), valid & (ext <= 0.5))


def class_histograms(teacher_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(2, BINS) counts of the confidence of each pseudo-class's valid pixels over [0.5, 1].

    A histogram rather than a sort, so that several processes agree on the ``keep`` cut:
    summed over their shares of a batch (an all-reduce), it is the whole batch's.
    """
    _, conf, sides = extent_confidence(teacher_logits, valid)
    return _histograms(conf, sides)


def _histograms(conf: torch.Tensor, sides: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.histc(conf[side], bins=BINS, min=0.5, max=1.0) for side in sides])


def class_cuts(hist: torch.Tensor, share: float) -> list[float]:
    """Per pseudo-class, the confidence above which its surest ``share`` of pixels lie.

    The lower edge of the bin the cut falls in (whole bins are kept); a class with no pixel
    gets 2.0, which keeps nothing.
    """
    cuts = []
    for h in hist:
        n = float(h.sum())
        if n == 0:
            cuts.append(2.0)
            continue
        from_top = torch.cumsum(h.flip(0), 0)
        top_bins = int(torch.searchsorted(from_top, torch.tensor(max(1.0, round(share * n)))))
        cuts.append(0.5 + 0.5 * (BINS - 1 - top_bins) / BINS)
    return cuts


def pseudo_targets(teacher_logits: torch.Tensor, valid: torch.Tensor, threshold: float | None = None,
                   keep_share: float | None = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> tuple[dict[str, torch.Tensor], float]:
    """Hard targets from the teacher's maps, kept where it is most confident about extent.

    A Lovász-trained extent is not calibrated (its probabilities may never pass 0.8), so
    the default rule is relative: among the valid pixels the teacher calls building
    (``p > 0.5``), the ``keep_share`` with the highest ``p``; among the others, the share
    with the lowest (to 1/4096 of the confidence range, whole bins kept). Both classes keep
    the same share however few buildings there are, so the student is not taught to erase them.

    Args:
        teacher_logits: (B, C, H, W) fused logits of the teacher on the weak view.
        valid: (B, H, W) bool, valid data.
        threshold: keep pixels where ``max(p, 1 - p) >= threshold`` for extent (when
            ``keep_share`` is None).
        keep_share: the share of each pseudo-class to keep, most confident first.
        reduce: sums the :func:`class_histograms` over the processes, or None.

    Returns:
        ``extent``, ``boundary``, ``contact`` (float 0/1), ``sdf`` (0: no boundary-aware
        term), ``valid`` (bool) [, ``classes``], and the share of valid pixels kept.

    Examples:
        >>> logits = torch.tensor([4.0, 0.1, -4.0]).reshape(1, 1, 1, 3).expand(1, 3, 1, 3)
        >>> t, share = pseudo_targets(logits, torch.ones(1, 1, 3, dtype=torch.bool), 0.9)
        >>> t["extent"].tolist(), t["valid"].tolist(), round(share, 3)
        ([[[1.0, 1.0, 0.0]]], [[[True, False, True]]], 0.667)
        >>> logits = torch.tensor([3.0, 1.0, -1.0, -2.0, -3.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
        >>> t, share = pseudo_targets(logits, torch.ones(1, 1, 5, dtype=torch.bool), keep_share=0.5)
        >>> t["valid"].tolist(), share  # the surer of 2 buildings, the 2 surest of 3 background pixels
        ([[[True, False, False, True, True]]], 0.6)
    """
    p = torch.sigmoid(teacher_logits.detach().float())
    ext, conf, sides = extent_confidence(teacher_logits, valid)
    if keep_share is None:
        if threshold is None:
            raise ValueError("pseudo_targets needs threshold or keep_share")
        keep = valid & (conf >= threshold)
    else:
        hist = _histograms(conf, sides)
        keep = torch.zeros_like(valid)
        for side, cut in zip(sides, class_cuts(hist if reduce is None else reduce(hist), keep_share), strict=True):
            keep |= side & (conf >= cut)
    targets = {"extent": (ext > 0.5).float(), "boundary": (p[:, BOUNDARY] > 0.5).float(),
               "contact": (p[:, CONTACT] > 0.5).float(), "sdf": torch.zeros_like(ext), "valid": keep}
    if teacher_logits.shape[1] > FIRST_CLASS:
        cls = teacher_logits[:, FIRST_CLASS:].argmax(1)
        targets["classes"] = cls.masked_fill(~(keep & (ext > 0.5)), -1)
    share = float(keep.sum()) / max(1, int(valid.sum()))
    return targets, share


def soft_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor
                     ) -> torch.Tensor:
    """Mean squared difference of the fused probabilities over valid pixels and channels.

    Extent, boundary and contact through a sigmoid, the classes (if any) through a softmax,
    as :func:`geoseg.models.postprocess.probabilities`; the teacher's are constants.

    Examples:
        >>> s = torch.zeros(1, 3, 1, 2)  # p = 0.5 everywhere
        >>> t = torch.tensor([100.0, -100.0]).reshape(1, 1, 1, 2).expand(1, 3, 1, 2)  # p = 1, 0
        >>> float(soft_consistency(s, t, torch.tensor([[[True, False]]])))
        0.25
    """

    def probs(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        maps = [torch.sigmoid(logits[:, :FIRST_CLASS])]
        if logits.shape[1] > FIRST_CLASS:
            maps.append(torch.softmax(logits[:, FIRST_CLASS:], dim=1))
        return torch.cat(maps, dim=1)

    diff = (probs(student_logits) - probs(teacher_logits.detach())) ** 2
    weight = valid[:, None].to(diff.dtype)
    return (diff * weight).sum() / (weight.sum() * diff.shape[1]).clamp_min(1.0)


def mix_mask(shape: tuple[int, int], p: float, rng: np.random.Generator) -> np.ndarray:
    """CutMix's mask: False in a box of half the area (aspect 1:2 to 2:1, anywhere) with probability ``p``.

    Examples:
        >>> m = mix_mask((40, 40), 1.0, np.random.default_rng(0))
        >>> m.dtype, bool(abs((~m).mean() - 0.5) < 0.05)
        (dtype('bool'), True)
        >>> bool(mix_mask((40, 40), 0.0, np.random.default_rng(0)).all())
        True
    """
    h, w = shape
    mask = np.ones(shape, dtype=bool)
    if rng.random() >= p:
        return mask
    aspect = math.exp(rng.uniform(-math.log(2), math.log(2)))
    bh, bw = min(h, round(h * math.sqrt(0.5 * aspect))), min(w, round(w * math.sqrt(0.5 / aspect)))
    y, x = int(rng.integers(h - bh + 1)), int(rng.integers(w - bw + 1))
    mask[y:y + bh, x:x + bw] = False
    return mask


def cutmix(mix: torch.Tensor, *maps: torch.Tensor) -> list[torch.Tensor]:
    """Each map (B, ..., H, W) where ``mix`` (B, H, W) is True, the next sample's (cyclically) elsewhere.

    Student inputs, the teacher's maps and the valid masks mixed by one rule, so that the
    targets still line up with the student's view pixel for pixel (French et al., 2020).

    Examples:
        >>> x = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 1, 2)
        >>> cutmix(torch.tensor([[[True, False]], [[True, True]]]), x)[0].flatten().tolist()
        [0.0, 1.0, 1.0, 1.0]
    """
    out = []
    for m in maps:
        keep = mix.reshape(mix.shape[0], *([1] * (m.dim() - 3)), *mix.shape[1:])
        out.append(torch.where(keep, m, m.roll(1, dims=0)))
    return out
