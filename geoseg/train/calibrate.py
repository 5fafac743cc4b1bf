"""Calibration of the router's utility threshold for ``geoseg predict --budget auto``.

On the validation chips, FF runs on every cell (budget 1.0), and each cell gets its
*actual* gain, the router's training target: PV's loss there minus FF's loss there.
Cells are ranked by *predicted* utility; the threshold is the predicted utility below
which the remaining cells add less than ``1 - CAPTURE`` of the largest gain FF can give
(the peak of the cumulative gain along that ranking). So a dense scene gets a dense FF
pass and a sparse one a sparse pass, without the user choosing a budget.

The threshold lives in the model's ``utility_threshold`` buffer (saved with the weights,
NaN until calibrated; checkpoints from before it load as uncalibrated, and predict then
falls back to the model's budget).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geoseg.models.cells import pack_cells
from geoseg.train.losses import RoutedLoss, prepare_targets

#: Share of the largest achievable validation gain the chosen cells must capture.
CAPTURE = 0.95


def choose_threshold(predicted: np.ndarray, gain: np.ndarray, capture: float = CAPTURE) -> tuple[float, float]:
    """The utility threshold that captures ``capture`` of the peak cumulative gain.

    Args:
        predicted: predicted utility per cell.
        gain: actual gain per cell (PV loss minus FF loss).
        capture: share of the peak cumulative gain to reach.

    Returns:
        ``(threshold, share of cells above it)``; ``(inf, 0)`` when FF never pays.

    Examples:
        >>> choose_threshold(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1.0, 1.0, -0.5, 0.0]))
        (1.5, 0.5)
    """
    order = np.argsort(-predicted, kind="stable")
    cum = np.cumsum(gain[order])
    if not len(cum) or cum.max() <= 0:
        return float("inf"), 0.0
    k = int(np.argmax(cum >= capture * cum.max())) + 1  # cells kept
    ranked = predicted[order]
    thr = float(-np.inf) if k == len(ranked) else float((ranked[k - 1] + ranked[k]) / 2)
    return thr, k / len(ranked)


@torch.no_grad()
def calibrate_router(model: Any, loader: Iterable[dict[str, Any]], loss: RoutedLoss, device: torch.device,
                     also: Sequence[torch.nn.Module] = ()) -> dict[str, float]:
    """Set ``utility_threshold`` of ``model`` (and of ``also``) from the validation batches.

    Args:
        model: the routed model validated (e.g. the EMA weights).
        loader: validation batches with targets.
        loss: the training loss (its per-cell loss defines the gain).
        device: where the model runs.
        also: other models to give the same threshold (the raw weights behind an EMA).

    Returns:
        ``{"auto_share": share of validation cells above the threshold}`` (empty when no
        cell holds valid pixels).
    """
    was_training = model.training
    model.eval()
    preds, gains = [], []
    ba = loss.cfg.boundary_aware.weight(1.0)  # the router's target at the end of training
    for batch in loader:
        out = model(batch["image"].to(device), budget=1.0)
        targets = prepare_targets({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)},
                                  out.logits.dtype)
        cell = out.ff_logits.shape[-1]
        padded = (out.utility.shape[-2] * cell, out.utility.shape[-1] * cell)
        pv_full = F.interpolate(out.pv_logits, size=padded, mode="bilinear", align_corners=False)
        cell_t = loss.cell_targets(targets, out.cells, cell, padded)
        keep = cell_t["valid"].flatten(1).any(1)
        gain = (loss.per_sample_loss(pack_cells(pv_full, out.cells, cell, 0), cell_t, ba)
                - loss.per_sample_loss(out.ff_logits, cell_t, ba))
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
