"""Which cells the heavy FF stream runs on: the K rule (deadline, budget, ``auto``) and the scene-wide top-K."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from geoseg.models.meta import ModelMeta
from geoseg.predict.config import PredictConfig
from geoseg.predict.phases import PvResult
from geoseg.predict.plan import BlockPlan


def k_rule(cfg: PredictConfig, meta: ModelMeta, backend: Any) -> tuple[Any, str]:
    """How many cells FF runs per scene: ``(k_of(valid cells), a line saying why)``.

    Precedence: ``--deadline-ms``, then ``--budget``, then the model's own deadline, then
    ``auto`` when the model has a calibrated utility threshold (training sets one when it
    validates), then the model's budget.
    """
    from geoseg.models.router import k_for_budget, k_for_deadline

    deadline = cfg.deadline_ms if cfg.deadline_ms is not None else (
        meta.deadline_ms if cfg.budget is None else None)
    if deadline is not None:
        ms_per_cell = backend.ms_per_cell(cfg.ff_batch)
        whose = "--deadline-ms" if cfg.deadline_ms is not None else "the model's deadline"
        why = f"{whose} {deadline:g} ms at {ms_per_cell:.2f} ms per cell"

        def by_deadline(n: int, util: Any = None) -> int:
            return k_for_deadline(float(deadline), ms_per_cell, n_cells=n)
        return by_deadline, why
    if cfg.budget in ("auto", None):  # no --budget: auto for a calibrated model
        auto = _auto_rule(meta, given=cfg.budget == "auto")
        if auto is not None:
            return auto
    budget = meta.budget if cfg.budget in (None, "auto") else float(cfg.budget)
    why = f"{'--budget' if cfg.budget not in (None, 'auto') else 'the model' + chr(39) + 's budget'} {budget:g}"
    if cfg.budget == "auto":
        why = (f"--budget auto, but the model has no calibrated utility threshold (trained before "
               f"calibration, or without validation chips): {why}")

    def by_budget(n: int, util: Any = None) -> int:
        return k_for_budget(n, budget) if n else 0
    return by_budget, why


def dense_run(cfg: PredictConfig, meta: ModelMeta) -> bool:
    """Whether the K rule of :func:`k_rule` takes every valid cell whatever PV says (budget 1.0).

    Then predict is the plain dense network: PV and its upsampling are skipped (its
    utilities would rank cells that all run anyway, and FF overwrites its maps).
    """
    if cfg.deadline_ms is not None:
        return False
    if cfg.budget is None:
        return meta.deadline_ms is None and _threshold(meta) is None and meta.budget >= 1.0
    return cfg.budget != "auto" and float(cfg.budget) >= 1.0


def _threshold(meta: ModelMeta) -> float | None:
    """The model's calibrated utility threshold; None when it has none (NaN, or absent)."""
    thr = (meta.model_extra or {}).get("utility_threshold")
    if thr in ("inf", "-inf"):  # an export's geoseg-export.json (JSON has no infinity)
        thr = float(thr)
    if thr is None or not isinstance(thr, int | float) or math.isnan(thr):
        return None
    return float(thr)


def _auto_rule(meta: ModelMeta, given: bool = True) -> tuple[Any, str] | None:
    """``--budget auto``: the cells whose utility clears the model's calibrated threshold (None: none).

    ``given``: the user passed ``--budget auto`` (else it is the default, and the line says so).
    """
    thr = _threshold(meta)
    if thr is None:
        return None

    def by_threshold(n: int, util: Any = None) -> int:
        return int(np.count_nonzero(np.asarray(util) > thr)) if util is not None else n
    name = "--budget auto" if given else "--budget auto (the default for a calibrated model)"
    if thr == -math.inf:
        return by_threshold, f"{name}: every cell (FF paid on every validation cell)"
    return by_threshold, (f"{name}: predicted utility > {thr:.3g}, the threshold calibrated on "
                          "validation (where FF's expected gain stops paying)")


def choose_cells(pv_results: list[PvResult], plan: BlockPlan, k_of: Any) -> np.ndarray:
    """Scene-wide top-K cells from the per-block utilities; (K, 2) rows and cols.

    Under ``--aoi`` only the cells near the blocks that own objects compete
    (:func:`geoseg.predict.area.near_owners`); the budget is a share of those.
    """
    import torch

    from geoseg.models.router import select_topk_scene
    from geoseg.predict.area import near_owners

    gh, gw = plan.cells_shape
    util = np.full((gh, gw), -np.inf, dtype=np.float32)
    allowed = np.zeros((gh, gw), dtype=bool)
    for res in pv_results:
        r, c = res.cell0
        h, w = res.utility.shape
        util[r:r + h, c:c + w] = res.utility
        allowed[r:r + h, c:c + w] = res.allowed
    near = near_owners(plan)
    if near is not None:  # --aoi: the owners' cells and their halo; the ring beyond is context only
        allowed &= near
    k = min(k_of(int(allowed.sum()), util[allowed]), int(allowed.sum()))
    if k <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    chosen = select_topk_scene(torch.from_numpy(util), k, torch.from_numpy(allowed))
    return chosen.numpy()


def cells_of_block(chosen: np.ndarray, plan: BlockPlan, bi: int, bj: int) -> np.ndarray:
    """The chosen cells (rows of ``chosen``) that lie in block ``(bi, bj)``."""
    per = plan.block // plan.cell
    sel = (chosen[:, 0] // per == bi) & (chosen[:, 1] // per == bj)
    return np.asarray(chosen[sel])
