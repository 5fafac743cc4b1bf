"""Chosen router cells merged into rectangular FF *regions*, and their gather.

FF on a single cell pays for a halo on every side: with cell 64 and halo 16, a tile is
96² pixels for 64² of output (2.25x). Neighbouring chosen cells run as one rectangle
with one halo instead (a 8x8-cell region is 544² for 512²: 1.13x), so the halo overhead
stops growing with the number of cells.

:func:`cover` turns a grid of chosen cells into regions, choosing per scene block the
cheapest (in input pixels) of:

- *dense*: the whole grid in aligned windows of at most ``max_side`` cells: the plain
  dense sliding window of the FF network (what a block whose cells are mostly chosen gets);
- per connected component of chosen cells (``scipy.ndimage.label``, 8-connected), the
  cheaper of its bounding box in aligned windows of at most ``max_side`` cells (each
  shrunk to the chosen cells it holds), or a greedy exact cover by rectangles.

Each region is then grown to a *bucket* shape (sides in :data:`BUCKETS`, inside the grid)
so that few distinct shapes reach the network and regions of one shape run as one batch.
A region writes only the chosen cells it owns (:attr:`Region.paste`): the fused output
keeps its meaning, chosen cells take FF maps and the others keep PV's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from geoseg.models.cells import pad_for_cells

#: Largest region side in cells (8 x 64 px = 512 px windows, as a plain dense sliding window).
MAX_SIDE = 8
#: Region sides (in cells) regions are grown to, so that same-shaped regions batch together.
BUCKETS = (1, 2, 3, 4, 6, 8)

Rect = tuple[int, int, int, int]  # row, col, rows, cols (in cells)


@dataclass(frozen=True)
class Region:
    """A rectangle of cells that FF runs on with one halo.

    Attributes:
        row: first cell row (in the grid given to :func:`cover`).
        col: first cell column.
        paste: (rows, cols) bool: the chosen cells this region writes (each chosen cell is
            written by exactly one region).
    """

    row: int
    col: int
    paste: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) in cells."""
        return int(self.paste.shape[0]), int(self.paste.shape[1])


def cost(rects: list[Rect], cell: int, halo: int) -> int:
    """Input pixels FF reads for ``rects``, plus one cell's worth per region for its read and call.

    ``sum((rows * cell + 2 halo) (cols * cell + 2 halo) + cell²)``.
    """
    return sum((h * cell + 2 * halo) * (w * cell + 2 * halo) + cell * cell for _, _, h, w in rects)


def _windows(mask: np.ndarray, max_side: int, shrink: bool) -> list[Rect]:
    """Aligned windows of at most ``max_side`` cells over ``mask`` (shrunk to its True cells)."""
    out = []
    h, w = mask.shape
    for r in range(0, h, max_side):
        for c in range(0, w, max_side):
            sub = mask[r:r + max_side, c:c + max_side]
            if not shrink:
                out.append((r, c, sub.shape[0], sub.shape[1]))
                continue
            rows, cols = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
            if len(rows):
                out.append((r + int(rows[0]), c + int(cols[0]), int(rows[-1] - rows[0] + 1),
                            int(cols[-1] - cols[0] + 1)))
    return out


def _greedy(mask: np.ndarray, max_side: int) -> list[Rect]:
    """Exact cover of ``mask`` by rectangles: widest run from the first free cell, then down."""
    free = mask.copy()
    h, w = free.shape
    out = []
    for r, c in zip(*np.nonzero(free), strict=True):
        if not free[r, c]:
            continue
        width = 1
        while c + width < w and width < max_side and free[r, c + width]:
            width += 1
        height = 1
        while r + height < h and height < max_side and free[r + height, c:c + width].all():
            height += 1
        free[r:r + height, c:c + width] = False
        out.append((int(r), int(c), height, width))
    return out


def _bucket(rect: Rect, grid: tuple[int, int], buckets: tuple[int, ...]) -> Rect:
    """Grow a rectangle to the next bucket sides, shifted to stay inside the grid."""
    r, c, h, w = rect
    out = []
    for start, side, size in ((r, h, grid[0]), (c, w, grid[1])):
        side = min(next((b for b in buckets if b >= side), side), max(side, size))
        out.append((max(0, min(start, size - side)), side))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def cover(chosen: np.ndarray, cell: int, halo: int, max_side: int = MAX_SIDE,
          buckets: tuple[int, ...] | None = BUCKETS) -> list[Region]:
    """Regions that cover the chosen cells of a grid, cheapest first (see the module docstring).

    Args:
        chosen: (gh, gw) bool, the cells FF must run on.
        cell: cell side in pixels.
        halo: FF context per side in pixels.
        max_side: largest region side in cells.
        buckets: region sides to grow to (None: exact shapes).

    Returns:
        Regions in row-major order of their first cell; every chosen cell is in the
        ``paste`` of exactly one.

    Examples:
        >>> m = np.zeros((4, 4), bool); m[:2, :3] = True; m[3, 3] = True
        >>> [(r.row, r.col, r.shape) for r in cover(m, 64, 16, buckets=None)]
        [(0, 0, (2, 3)), (3, 3, (1, 1))]
    """
    chosen = np.asarray(chosen, dtype=bool)
    if not chosen.any():
        return []
    dense = _windows(chosen, max_side, shrink=False)
    labels, _ = ndimage.label(chosen, structure=np.ones((3, 3), dtype=bool))
    sparse: list[tuple[int, Rect]] = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == k
        r0, c0 = sl[0].start, sl[1].start
        options = [_windows(comp, max_side, shrink=True), _greedy(comp, max_side)]
        best = min(options, key=lambda rects: cost(rects, cell, halo))
        sparse += [(k, (r0 + r, c0 + c, h, w)) for r, c, h, w in best]
    if cost(dense, cell, halo) <= cost([rect for _, rect in sparse], cell, halo):
        plan = [(0, rect) for rect in dense]
    else:
        plan = sparse
    owner = np.full(chosen.shape, -1, dtype=np.int64)
    out = []
    for i, (k, (r, c, h, w)) in enumerate(sorted(plan, key=lambda p: p[1][:2])):
        mine = chosen[r:r + h, c:c + w] if k == 0 else labels[r:r + h, c:c + w] == k
        view = owner[r:r + h, c:c + w]
        view[mine & (view < 0)] = i
        if buckets:
            r, c, h, w = _bucket((r, c, h, w), chosen.shape, buckets)
        out.append((r, c, h, w, i))
    return [Region(r, c, owner[r:r + h, c:c + w] == i) for r, c, h, w, i in out]


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
