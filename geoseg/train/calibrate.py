"""Calibration of the router's utility threshold for ``geoseg predict --budget auto``.

On the validation chips, FF runs on every cell (budget 1.0), and each cell gets its
*actual* gain: what FF changes of the decisions predict takes from the maps there, the
share of valid pixels whose thresholded extent, boundary and contact (and argmax class)
PV gets wrong minus the share FF gets wrong (:func:`decision_errors`). Not the router's
training target (PV's loss minus FF's loss): a loss also rewards FF for being surer where
PV is already right (the Lovász hinge of an empty cell is PV's most confident negative
pixel inside the margin), so with the loss every empty cell of one model looked worth FF
(docs/benchmarks.md). The
gain FF can be expected to bring at a predicted utility is the isotonic (non-decreasing)
regression of the actual gains on the predicted utilities; the threshold is the predicted
utility below which that expected gain falls under ``FRACTION`` of FF's gain on the most
useful cells (the best mean gain of the top cells by predicted utility, at least
``TOP_CELLS`` of them and ``TOP_SHARE`` of all, so that one lucky cell is not the
reference and a few paying cells among many empty ones are not diluted). It is a rule per cell: a
cell runs FF when its own expected gain is worth it, whatever share of the validation
chips is empty land, so a dense scene gets a dense FF pass and a sparse one a sparse
pass without the user choosing a budget. Validation chips where FF pays on every cell
(no empty land) give no place to cut: the threshold then keeps every cell, and training
says so at its end when that holds for ``best.pt`` (not for an early epoch's).

The threshold lives in the model's ``utility_threshold`` buffer (saved with the weights,
NaN until calibrated; checkpoints from before it load as uncalibrated, and predict then
falls back to the model's budget).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import isotonic_regression

from geoseg.models.cells import pack_cells
from geoseg.models.config import BOUNDARY, CONTACT, EXTENT, FIRST_CLASS
from geoseg.train.losses import IGNORE, RoutedLoss, prepare_targets

#: A cell runs FF under ``--budget auto`` when FF's expected gain there is at least this
#: share of its gain on the most useful validation cells.
FRACTION = 0.2
#: The reference: the best mean gain of the top k cells by predicted utility, k at least
#: ``TOP_CELLS`` and ``TOP_SHARE`` of the validation cells.
TOP_CELLS, TOP_SHARE = 5, 0.02


def decision_errors(logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Share of each sample's valid pixels whose thresholded maps disagree with the targets.

    Extent, boundary and contact at probability 0.5 (logit 0), each counted (so up to 3
    per pixel), plus the argmax class where the class target is set.

    Shape:
        - logits: (N, C, H, W)
        - targets: (N, H, W) each
        - output: (N,)
    """
    valid = targets["valid"]
    wrong = torch.zeros_like(logits[:, EXTENT])
    for channel, name in ((EXTENT, "extent"), (BOUNDARY, "boundary"), (CONTACT, "contact")):
        wrong += ((logits[:, channel] > 0) != (targets[name] > 0.5)).to(wrong.dtype)
    if logits.shape[1] > FIRST_CLASS and "classes" in targets:
        cls = targets["classes"]
        wrong += ((logits[:, FIRST_CLASS:].argmax(1) != cls) & (cls != IGNORE)).to(wrong.dtype)
    v = valid.to(wrong.dtype).flatten(1)
    return (wrong.flatten(1) * v).sum(1) / v.sum(1).clamp_min(1.0)


def choose_threshold(predicted: np.ndarray, gain: np.ndarray, fraction: float = FRACTION) -> tuple[float, float]:
    """The utility threshold above which FF's expected gain is at least ``fraction`` of its top gain.

    Args:
        predicted: predicted utility per cell.
        gain: actual gain per cell (PV's decision errors minus FF's).
        fraction: share of FF's gain on the most useful cells (see the module) that a
            cell's expected gain must reach.

    Returns:
        ``(threshold, share of cells above it)``; ``(inf, 0)`` when FF does not pay even on
        the top cells, ``(-inf, 1)`` when every cell's expected gain clears the bar.

    Examples:
        >>> choose_threshold(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1.0, 1.0, -0.5, 0.0]))
        (1.5, 0.5)
    """
    if not len(predicted):
        return float("inf"), 0.0
    order = np.argsort(predicted, kind="stable")  # ascending
    ranked, ranked_gain = predicted[order], gain[order].astype(np.float64)
    top_means = np.cumsum(ranked_gain[::-1]) / np.arange(1, len(ranked) + 1)  # mean of the top k, k = 1..n
    ref = float(top_means[min(max(TOP_CELLS, math.ceil(TOP_SHARE * len(ranked))), len(ranked)) - 1:].max())
    if ref <= 0:
        return float("inf"), 0.0
    expected = isotonic_regression(ranked_gain, increasing=True).x
    pays = expected >= fraction * ref  # the last is True: the top block's mean is the largest top-k mean
    if not pays.any():
        return float("inf"), 0.0
    first = int(np.argmax(pays))
    if first == 0:
        return float("-inf"), 1.0
    return float((ranked[first - 1] + ranked[first]) / 2), (len(ranked) - first) / len(ranked)


def dense_auto_note(history: Sequence[dict[str, float]], best_epoch: int) -> str | None:
    """The warning training ends with when ``best.pt``'s threshold is -inf, else None.

    An early epoch's dense calibration (an untrained router ranks nothing) is not worth a
    word: only the epoch that ``best.pt`` holds decides what ``--budget auto`` does.
    """
    best = next((r for r in history if r.get("epoch") == best_epoch), {})
    if best.get("auto_share") != 1.0:  # 1.0 only for the -inf threshold (a finite one leaves a cell out)
        return None
    return (f"--budget auto: FF pays on every validation cell for best.pt (epoch {best_epoch}), so auto will run "
            "FF on every cell (a dense pass); if the scenes to predict have empty land the validation chips "
            "lack, run `geoseg calibrate RUN --patches DIR` on chips like them")


@torch.no_grad()
def calibrate_router(model: Any, loader: Iterable[dict[str, Any]], loss: RoutedLoss, device: torch.device,
                     also: Sequence[torch.nn.Module] = ()) -> dict[str, float]:
    """Set ``utility_threshold`` of ``model`` (and of ``also``) from the validation batches.

    Args:
        model: the routed model validated (e.g. the EMA weights).
        loader: validation batches with targets.
        loss: the training loss (for its per-cell targets).
        device: where the model runs.
        also: other models to give the same threshold (the raw weights behind an EMA).

    Returns:
        ``{"auto_share": share of validation cells above the threshold}`` (empty when no
        cell holds valid pixels).
    """
    was_training = model.training
    model.eval()
    preds, gains = [], []
    for batch in loader:
        out = model(batch["image"].to(device), budget=1.0)
        targets = prepare_targets({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)},
                                  out.logits.dtype)
        cell = out.ff_logits.shape[-1]
        padded = (out.utility.shape[-2] * cell, out.utility.shape[-1] * cell)
        pv_full = F.interpolate(out.pv_logits, size=padded, mode="bilinear", align_corners=False)
        cell_t = loss.cell_targets(targets, out.cells, cell, padded)
        keep = cell_t["valid"].flatten(1).any(1)
        gain = (decision_errors(pack_cells(pv_full, out.cells, cell, 0), cell_t)
                - decision_errors(out.ff_logits, cell_t))
        b, r, c = out.cells.unbind(1)
        preds.append(out.utility[b, r, c][keep].float().cpu())
        gains.append(gain[keep].float().cpu())
    model.train(was_training)
    if not preds or not sum(len(p) for p in preds):
        return {}
    thr, share = choose_threshold(torch.cat(preds).numpy(), torch.cat(gains).numpy())
    for m in (model, *also):
        m.utility_threshold.fill_(thr)
    return {"auto_share": share}
