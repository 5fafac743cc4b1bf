"""Test-time augmentation of the dense maps (``geoseg predict --tta flip|d4``).

Every view is a flip and/or a quarter turn of the model's input; the outputs are turned
back and averaged (as logits) before anything downstream sees them, so the router's
utilities, the PV/FF fusion, the seams and the watershed work as without augmentation.
Views run one after the other: memory stays that of one view, time grows with their
number (2 for ``flip``, 8 for ``d4``).

The maps come back on the input's grid because every model input side is padded to
the model's multiple, itself a multiple of the router cell: a turned input keeps cells
on cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

Tta = Literal["none", "flip", "d4"]

#: (quarter turns, mirrored) of each view, the identity first.
VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "d4": tuple((k, m) for m in (False, True) for k in range(4)),
}


def view(a: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    """``a`` (..., H, W) mirrored left-right, then turned ``turns`` quarter turns.

    Examples:
        >>> a = np.arange(6).reshape(2, 3)
        >>> view(a, 1, True).tolist()
        [[0, 3], [1, 4], [2, 5]]
        >>> np.array_equal(unview(view(a, 3, True), 3, True), a)
        True
    """
    if mirror:
        a = a[..., ::-1]
    return np.rot90(a, turns, axes=(-2, -1))


def unview(a: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    """The inverse of :func:`view`."""
    a = np.rot90(a, -turns, axes=(-2, -1))
    return a[..., ::-1] if mirror else a


def averaged(run: Callable[[np.ndarray], tuple[np.ndarray, ...]], x: np.ndarray,
             tta: str) -> tuple[np.ndarray, ...]:
    """The outputs of ``run`` (maps on ``x``'s grid, last two axes) averaged over the views.

    Args:
        run: the model call; returns arrays whose last two axes are on the grid of its
            input (at any integer stride).
        x: the input, (..., H, W).
        tta: ``none``, ``flip`` or ``d4``.

    Returns:
        ``run(x)`` for ``none``; else the mean of the views, turned back, float32.
    """
    views = VIEWS[tta]
    if len(views) == 1:
        return run(x)
    sums: list[np.ndarray] | None = None
    for turns, mirror in views:
        outs = run(np.ascontiguousarray(view(x, turns, mirror)))
        back = [unview(o, turns, mirror).astype(np.float32) for o in outs]
        sums = back if sums is None else [s + b for s, b in zip(sums, back, strict=True)]
    assert sums is not None
    return tuple(np.ascontiguousarray(s / len(views)) for s in sums)
