"""The router: how many cells FF may take (budget or deadline) and which ones (top-K).

Selection is deterministic: utilities are ranked with a stable sort, so among equal
utilities the cell with the lower row-major index wins; NaN counts as the lowest utility.
Selected cells are returned in (batch, row, col) row-major order, whatever their rank.
"""

from __future__ import annotations

import math

import torch


def k_for_budget(n_cells: int, budget: float) -> int:
    """Cells FF may run on under a budget: ``ceil(budget * n_cells)``, at least 1.

    A relative tolerance of 1e-9 absorbs float noise (``0.1 * 30`` is 3, not 4).

    Args:
        n_cells: cells to choose from (of one image, or of a scene).
        budget: share of cells, in (0, 1].

    Returns:
        K in ``[1, n_cells]`` (0 when ``n_cells`` is 0).

    Raises:
        ValueError: budget outside (0, 1].

    Examples:
        >>> k_for_budget(256, 0.25), k_for_budget(30, 0.1), k_for_budget(10, 0.01)
        (64, 3, 1)
    """
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}; 1.0 runs FF everywhere")
    if n_cells <= 0:
        return 0
    k = math.ceil(budget * n_cells * (1.0 - 1e-9))
    return min(n_cells, max(1, k))


def k_for_deadline(deadline_ms: float, ms_per_cell: float, fixed_ms: float = 0.0, n_cells: int | None = None) -> int:
    """Cells FF can run on within a latency deadline.

    ``K = floor((deadline_ms - fixed_ms) / ms_per_cell)``, clipped to ``[0, n_cells]``.

    Args:
        deadline_ms: the time allowed for the whole forward.
        ms_per_cell: measured FF cost of one cell (see ``RoutedModel.measure_ms_per_cell``).
        fixed_ms: cost paid whatever K is (Enhance, PV, fuse).
        n_cells: upper bound on K, if given.

    Returns:
        K >= 0 (0 when the fixed cost already exceeds the deadline: PV only).

    Raises:
        ValueError: non-positive ``deadline_ms`` or ``ms_per_cell``.

    Examples:
        >>> k_for_deadline(100.0, 7.0, fixed_ms=30.0), k_for_deadline(100.0, 1.0, n_cells=16)
        (10, 16)
    """
    if deadline_ms <= 0 or ms_per_cell <= 0:
        raise ValueError(f"deadline_ms ({deadline_ms}) and ms_per_cell ({ms_per_cell}) must be positive")
    k = max(0, math.floor((deadline_ms - fixed_ms) / ms_per_cell))
    return k if n_cells is None else min(k, n_cells)


def topk_mask(scores: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Mark the ``k`` highest scores of each row, ties to the lower index.

    Args:
        scores: one row of scores per image.
        k: cells per row; rows with fewer allowed cells get all of them.
        allowed: cells that may be chosen (e.g. not wholly padding); None for all.

    Returns:
        Boolean mask of the chosen cells.

    Shape:
        - scores: (B, G)
        - allowed: (B, G)
        - output: (B, G)
    """
    if scores.dim() != 2:
        raise ValueError(f"expected scores of shape (B, G), got {tuple(scores.shape)}")
    bsz, g = scores.shape
    k = max(0, min(k, g))
    mask = torch.zeros(bsz, g, dtype=torch.bool, device=scores.device)
    if k == 0:
        return mask
    s = scores.detach().float().nan_to_num(nan=-torch.inf)
    if allowed is not None:
        s = s.masked_fill(~allowed, -torch.inf)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    mask.scatter_(1, order, True)
    if allowed is not None:
        mask &= allowed
    return mask


def mask_to_cells(mask: torch.Tensor) -> torch.Tensor:
    """The (batch, row, col) of every True cell, in row-major order.

    Shape:
        - mask: (B, Gh, Gw) bool
        - output: (N, 3) int64
    """
    return mask.nonzero()


def select_topk(utility: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image top-K cells by utility.

    Args:
        utility: predicted utility of each cell (higher: FF helps more).
        k: cells per image.
        allowed: cells that may be chosen; None for all.

    Returns:
        The chosen cells, ``min(k, allowed cells)`` per image, row-major order.

    Shape:
        - utility: (B, Gh, Gw)
        - allowed: (B, Gh, Gw) bool
        - output: (N, 3) int64 (batch, row, col), N = B * k when all are allowed
    """
    if utility.dim() != 3:
        raise ValueError(f"expected utility of shape (B, Gh, Gw), got {tuple(utility.shape)}")
    bsz, gh, gw = utility.shape
    flat_allowed = allowed.reshape(bsz, -1) if allowed is not None else None
    mask = topk_mask(utility.reshape(bsz, -1), k, flat_allowed)
    return mask_to_cells(mask.reshape(bsz, gh, gw))


def select_topk_scene(utility: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Scene-wide top-K: for a predictor that has the utility map of a whole scene.

    Args:
        utility: utility of every cell of the scene.
        k: cells to choose in the whole scene (e.g. ``k_for_budget(utility.numel(), b)``).
        allowed: cells that may be chosen (e.g. not wholly nodata); None for all.

    Returns:
        (row, col) of the chosen cells, row-major order.

    Shape:
        - utility: (Gh, Gw)
        - allowed: (Gh, Gw) bool
        - output: (K, 2) int64
    """
    if utility.dim() != 2:
        raise ValueError(f"expected a scene utility map (Gh, Gw), got {tuple(utility.shape)}")
    return select_topk(utility[None], k, None if allowed is None else allowed[None])[:, 1:]


def random_extra_mask(
    chosen: torch.Tensor,
    n_extra: int,
    allowed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add up to ``n_extra`` random not-yet-chosen cells per image (training exploration).

    Args:
        chosen: cells already chosen.
        n_extra: random cells to add per image.
        allowed: cells that may be chosen; None for all.
        generator: random generator (default: torch's global one).

    Returns:
        ``chosen`` or the extra cells.

    Shape:
        - chosen: (B, Gh, Gw) bool
        - allowed: (B, Gh, Gw) bool
        - output: (B, Gh, Gw) bool
    """
    if n_extra <= 0:
        return chosen
    bsz = chosen.shape[0]
    free = ~chosen if allowed is None else (~chosen & allowed)
    noise = torch.rand(chosen.shape, generator=generator, device=chosen.device)
    extra = topk_mask(noise.reshape(bsz, -1), n_extra, free.reshape(bsz, -1))
    return chosen | extra.reshape(chosen.shape)
