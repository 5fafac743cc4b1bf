"""Chosen router cells merged into rectangular FF *regions*, and their gather.

FF on a single cell pays for a halo on every side: with cell 64 and halo 16, a tile is
96² pixels for 64² of output (2.25x). Neighbouring chosen cells run as one rectangle
with one halo instead (a 8x8-cell region is 544² for 512²: 1.13x), so the halo overhead
stops growing with the number of cells.

:func:`cover` turns a grid of chosen cells into regions: the grid is cut into aligned
windows of ``max_side`` (8) cells, and each window runs whole, or is cut in two halves
(top/bottom or left/right), each half covered the same way recursively down to single
cells (a guillotine cut), whichever costs fewer input pixels (plus :data:`REGION_COST` of a
cell's pixels per region, for its read and call). Two chosen neighbours thus share one 1x2 region and one
halo. A window whose cells are mostly chosen runs whole, so a block that is mostly
chosen runs as the plain dense sliding window of the FF network (8x8-cell windows with
one halo), and budget 1.0 *is* that network. Region sides are 1, 2, 4 or 8 cells
(clipped at the grid edge): few shapes reach the network (at most 16), same-shaped
regions run as one batch, and fixed-shape engines need few profiles. :attr:`Region.paste`
marks the chosen cells of a region (each chosen cell is in exactly one); predict writes
FF's maps over the whole region, the unchosen cells it covers too (FF computed them: no
PV/FF seam inside a region, at no cost), and PV's stay on the cells no region covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from geoseg.models.cells import pad_for_cells

#: Largest region side in cells (8 x 64 px = 512 px windows, as a plain dense sliding window).
MAX_SIDE = 8
#: What a region costs beyond its input pixels (its windowed read, its share of a call), in
#: cells' worth of pixels. On the CPU, FF costs about the same per input pixel from 1x1 to
#: 8x8-cell regions (1.11-1.27 us, bench/ff_regions.py), so covering an unchosen cell to save
#: a region rarely pays: at a quarter (one cell before), routed auto on the sparse bench
#: scene is 2.94-3.05x the dense floor against 2.93-2.96x, same F1 (docs/benchmarks.md,
#: "Cheaper regions").
REGION_COST = 0.25

Rect = tuple[int, int, int, int]  # row, col, rows, cols (in cells)


@dataclass(frozen=True)
class Region:
    """A rectangle of cells that FF runs on with one halo.

    Attributes:
        row: first cell row (in the grid given to :func:`cover`).
        col: first cell column.
        paste: (rows, cols) bool: the chosen cells of this region (regions are disjoint:
            each chosen cell is in exactly one); training takes FF's maps of these, predict
            of the whole region.
    """

    row: int
    col: int
    paste: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) in cells."""
        return int(self.paste.shape[0]), int(self.paste.shape[1])


def cost(rects: list[Rect], cell: int, halo: int) -> float:
    """Input pixels FF reads for ``rects``, plus :data:`REGION_COST` cells' worth per region for its read and call.

    ``sum((rows * cell + 2 halo) (cols * cell + 2 halo) + REGION_COST cell²)``.
    """
    return sum((h * cell + 2 * halo) * (w * cell + 2 * halo) + REGION_COST * cell * cell for _, _, h, w in rects)


def _cut(chosen: np.ndarray, r: int, c: int, h: int, w: int, cell: int, halo: int,
         memo: dict[Rect, list[Rect]]) -> list[Rect]:
    """Cheapest cover of the chosen cells of one aligned rectangle (a guillotine cut).

    The rectangle itself, or its two halves (top/bottom or left/right), each covered the same way.
    """
    key = (r, c, h, w)
    if key in memo:
        return memo[key]
    sub = chosen[r:r + h, c:c + w]
    if not sub.any():
        best: list[Rect] = []
    elif sub.all() or h == w == 1:  # full: any cut only adds halos
        best = [(r, c, sub.shape[0], sub.shape[1])]
    else:
        best = [(r, c, sub.shape[0], sub.shape[1])]
        options = []
        if h > 1:
            options.append(_cut(chosen, r, c, h // 2, w, cell, halo, memo)
                           + _cut(chosen, r + h // 2, c, h // 2, w, cell, halo, memo))
        if w > 1:
            options.append(_cut(chosen, r, c, h, w // 2, cell, halo, memo)
                           + _cut(chosen, r, c + w // 2, h, w // 2, cell, halo, memo))
        for parts in options:
            if cost(parts, cell, halo) < cost(best, cell, halo):
                best = parts
    memo[key] = best
    return best


def cover(chosen: np.ndarray, cell: int, halo: int, max_side: int = MAX_SIDE) -> list[Region]:
    """Regions that cover the chosen cells of a grid (see the module docstring).

    Args:
        chosen: (gh, gw) bool, the cells FF must run on.
        cell: cell side in pixels.
        halo: FF context per side in pixels.
        max_side: largest region side in cells (rounded down to a power of two).

    Returns:
        Disjoint regions in row-major order of their first cell; every chosen cell is in
        the ``paste`` of exactly one.

    Examples:
        >>> m = np.zeros((4, 4), bool); m[:2, :2] = True; m[3, 3] = True
        >>> [(r.row, r.col, r.shape) for r in cover(m, 64, 16)]
        [(0, 0, (2, 2)), (3, 3, (1, 1))]
    """
    chosen = np.asarray(chosen, dtype=bool)
    side = 1 << (max(1, max_side).bit_length() - 1)
    memo: dict[Rect, list[Rect]] = {}
    rects = [rect for r in range(0, chosen.shape[0], side) for c in range(0, chosen.shape[1], side)
             for rect in _cut(chosen, r, c, side, side, cell, halo, memo)]
    return [Region(r, c, chosen[r:r + h, c:c + w].copy()) for r, c, h, w in sorted(rects)]


def group_by_shape(regions: list[Region]) -> dict[tuple[int, int], list[int]]:
    """Indices of ``regions`` per shape, for batching (shapes in first-seen order)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, reg in enumerate(regions):
        groups.setdefault(reg.shape, []).append(i)
    return groups


# ----------------------------------------------------------------------------- torch
def pack_regions(x: torch.Tensor, boxes: torch.Tensor, rows: int, cols: int, cell: int,
                 halo: int) -> torch.Tensor:
    """Gather same-shaped regions of a batch of images, each with a halo, into one batch.

    The image is padded as :func:`geoseg.models.cells.pack_cells` pads it, so a 1x1
    region is exactly a packed cell.

    Args:
        x: images.
        boxes: (batch, first cell row, first cell col) of each region, inside the grid.
        rows: region height in cells.
        cols: region width in cells.
        cell: cell side in pixels.
        halo: context per side in pixels.

    Shape:
        - x: (B, C, H, W)
        - boxes: (N, 3) int64
        - output: (N, C, rows * cell + 2 * halo, cols * cell + 2 * halo)
    """
    th, tw = rows * cell + 2 * halo, cols * cell + 2 * halo
    xp = pad_for_cells(x, cell, halo)
    windows = xp.unfold(2, th, cell).unfold(3, tw, cell)  # a strided view, no copy
    return windows[boxes[:, 0], :, boxes[:, 1], boxes[:, 2]].contiguous()


def region_cells(maps: torch.Tensor, rows: int, cols: int, cell: int) -> torch.Tensor:
    """Regions' FF maps (halo cropped) seen as cells.

    Shape:
        - maps: (N, C, rows * cell, cols * cell)
        - output: (N, rows, cols, C, cell, cell) (a view)
    """
    n, ch = maps.shape[:2]
    return maps.reshape(n, ch, rows, cell, cols, cell).permute(0, 2, 4, 1, 3, 5)


def run_regions(graph: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, cells: torch.Tensor,
                cell: int, halo: int, pack: Callable[..., torch.Tensor] = pack_regions,
                max_pixels: int = 32 * 96 * 96) -> torch.Tensor:
    """FF maps of the chosen cells, computed on regions (see :func:`cover`).

    Args:
        graph: FF on raw tiles with halo, returning the centre crops (``RoutedModel.ff_graph``).
        x: padded images.
        cells: (batch, row, col) of the chosen cells, unique.
        cell: cell side in pixels.
        halo: FF halo per side.
        pack: :func:`pack_regions` or its Triton twin (same numbers).
        max_pixels: most input pixels per call of ``graph`` (at least one region per call).

    Returns:
        The FF maps of each cell, in the order of ``cells``.

    Shape:
        - x: (B, C_in, H, W)
        - cells: (N, 3) int64
        - output: (N, C, cell, cell)
    """
    bsz = x.shape[0]
    gh, gw = -(-x.shape[2] // cell), -(-x.shape[3] // cell)
    index = torch.full((bsz, gh, gw), -1, dtype=torch.long)
    cpu_cells = cells.cpu()
    index[cpu_cells[:, 0], cpu_cells[:, 1], cpu_cells[:, 2]] = torch.arange(len(cells))
    regions = [(b, reg) for b in range(bsz) for reg in cover(index[b].numpy() >= 0, cell, halo)]
    out: torch.Tensor | None = None
    for (rows, cols), members in group_by_shape([reg for _, reg in regions]).items():
        per_call = max(1, max_pixels // ((rows * cell + 2 * halo) * (cols * cell + 2 * halo)))
        for k in range(0, len(members), per_call):
            chunk = [regions[i] for i in members[k:k + per_call]]
            boxes = torch.tensor([(b, reg.row, reg.col) for b, reg in chunk], device=x.device)
            maps = region_cells(graph(pack(x, boxes, rows, cols, cell, halo)), rows, cols, cell)
            if out is None:
                out = maps.new_empty((len(cells), maps.shape[3], cell, cell))
            for j, (b, reg) in enumerate(chunk):
                pr, pc = (torch.from_numpy(a) for a in np.nonzero(reg.paste))
                ids = index[b, reg.row + pr, reg.col + pc].to(x.device)
                out[ids] = maps[j, pr.to(x.device), pc.to(x.device)]
    if out is None:
        return graph(x.new_zeros((0, x.shape[1], cell + 2 * halo, cell + 2 * halo)))
    return out
