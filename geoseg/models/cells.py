"""Gather and scatter of router cells (pure torch; the reference for a later Triton kernel).

Semantics, which any other implementation must reproduce bit for bit:

* The image ``x`` of shape (B, C, H, W) is cut into a grid of square cells of side ``cell``:
  cell ``(b, i, j)`` covers rows ``[i * cell, (i + 1) * cell)`` and columns
  ``[j * cell, (j + 1) * cell)`` of image ``b``. The grid has
  ``Gh, Gw = ceil(H / cell), ceil(W / cell)`` cells; the last row/column of cells may stick
  out of the image.
* :func:`pack_cells` pads ``x`` by ``halo`` on every side, plus ``Gh * cell - H`` more rows
  at the bottom and ``Gw * cell - W`` more columns on the right, then returns for each cell
  the square of side ``T = cell + 2 * halo`` centred on it. Padding is ``reflect``
  (mirror without repeating the edge pixel, as :func:`torch.nn.functional.pad`) when every
  pad amount is smaller than H and W, else zeros. The choice is made once per call.
* :func:`paste_cells` writes the centre ``cell x cell`` crop of each tile over the cell in a
  copy of ``maps`` (clipped at the image edge) and leaves every other pixel untouched.
  Cells must be unique (the router guarantees it): with duplicates the winner is undefined.

Both are vectorised: one strided view plus one advanced-indexing gather (pack), one
``index_put`` (paste); no Python loop over cells. Both are differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_shape(height: int, width: int, cell: int) -> tuple[int, int]:
    """Cells per column and per row of an image.

    Examples:
        >>> grid_shape(256, 200, 64)
        (4, 4)
    """
    return -(-height // cell), -(-width // cell)


def all_cells(batch: int, gh: int, gw: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every cell of a batch, in (batch, row, col) row-major order.

    Args:
        batch: images in the batch.
        gh: grid rows.
        gw: grid columns.
        device: device of the result.

    Returns:
        LongTensor of shape (batch * gh * gw, 3).

    Examples:
        >>> all_cells(1, 1, 2).tolist()
        [[0, 0, 0], [0, 0, 1]]
    """
    b, r, c = torch.meshgrid(
        torch.arange(batch, device=device),
        torch.arange(gh, device=device),
        torch.arange(gw, device=device),
        indexing="ij",
    )
    return torch.stack([b.reshape(-1), r.reshape(-1), c.reshape(-1)], dim=1)


def pad_mode(height: int, width: int, pads: tuple[int, ...]) -> str:
    """``"reflect"`` when every pad is smaller than both sides, else ``"constant"`` (zeros)."""
    return "reflect" if max(pads, default=0) < min(height, width) else "constant"


def pad_for_cells(x: torch.Tensor, cell: int, halo: int) -> torch.Tensor:
    """Pad images so every cell of the grid has a full halo (reflect, else zeros).

    Shared by the torch and Triton gathers so that both see the same pixels at the edges.

    Shape:
        - x: (B, C, H, W)
        - output: (B, C, Gh * cell + 2 * halo, Gw * cell + 2 * halo)
    """
    h, w = x.shape[-2:]
    gh, gw = grid_shape(h, w, cell)
    pads = (halo, halo + gw * cell - w, halo, halo + gh * cell - h)
    return F.pad(x, pads, mode=pad_mode(h, w, pads)) if any(pads) else x


def check_tiles(tiles: torch.Tensor, cells: torch.Tensor, channels: int, side: int) -> None:
    """Raise ValueError unless ``tiles`` is (N, channels, side, side) with N = len(cells)."""
    if tiles.shape != (cells.shape[0], channels, side, side):
        raise ValueError(f"expected tiles of shape {(cells.shape[0], channels, side, side)}, "
                         f"got {tuple(tiles.shape)}")


def _check(x: torch.Tensor, cells: torch.Tensor, cell: int, halo: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    if cells.dim() != 2 or cells.shape[1] != 3:
        raise ValueError(f"expected cells of shape (N, 3) (batch, row, col), got {tuple(cells.shape)}")
    if cell < 1 or halo < 0:
        raise ValueError(f"cell must be >= 1 and halo >= 0, got cell={cell}, halo={halo}")


def pack_cells(x: torch.Tensor, cells: torch.Tensor, cell: int, halo: int) -> torch.Tensor:
    """Gather the chosen cells of a batch of images, each with a halo, into one batch.

    Args:
        x: images (or maps).
        cells: (batch, grid row, grid col) of each cell, int64, on the device of ``x``;
            rows below ``Gh`` and columns below ``Gw`` (see the module docstring).
        cell: cell side in pixels.
        halo: context pixels added on each side.

    Returns:
        The tiles, a new contiguous tensor.

    Raises:
        ValueError: wrong shapes.

    Shape:
        - x: (B, C, H, W)
        - cells: (N, 3)
        - output: (N, C, cell + 2 * halo, cell + 2 * halo)
    """
    _check(x, cells, cell, halo)
    side = cell + 2 * halo
    x = pad_for_cells(x, cell, halo)
    # (B, C, Gh, Gw, T, T): a strided view, no copy
    windows = x.unfold(2, side, cell).unfold(3, side, cell)
    b, r, c = cells[:, 0], cells[:, 1], cells[:, 2]
    return windows[b, :, r, c].contiguous()


def crop_centre(tiles: torch.Tensor, halo: int) -> torch.Tensor:
    """Drop the halo of packed tiles.

    Shape:
        - tiles: (N, C, cell + 2 * halo, cell + 2 * halo)
        - output: (N, C, cell, cell)
    """
    if halo == 0:
        return tiles
    return tiles[..., halo:-halo, halo:-halo]


def paste_cells(maps: torch.Tensor, cells: torch.Tensor, tiles: torch.Tensor, cell: int, halo: int) -> torch.Tensor:
    """Write the centre crop of each tile over its cell, in a copy of ``maps``.

    Args:
        maps: the base maps (e.g. upsampled PV logits); not modified.
        cells: unique (batch, grid row, grid col) of each tile, int64.
        tiles: one tile per cell, with or without halo (``halo`` says which).
        cell: cell side in pixels.
        halo: halo of ``tiles`` per side (0 for already-cropped tiles).

    Returns:
        A new tensor: ``maps`` with the cells replaced (autograd flows to both inputs).

    Raises:
        ValueError: wrong shapes.

    Shape:
        - maps: (B, C, H, W)
        - cells: (N, 3)
        - tiles: (N, C, cell + 2 * halo, cell + 2 * halo)
        - output: (B, C, H, W)
    """
    _check(maps, cells, cell, halo)
    bsz, ch, h, w = maps.shape
    check_tiles(tiles, cells, ch, cell + 2 * halo)
    centre = crop_centre(tiles, halo).to(maps.dtype)
    gh, gw = grid_shape(h, w, cell)
    base = maps
    if gh * cell != h or gw * cell != w:
        base = F.pad(maps, (0, gw * cell - w, 0, gh * cell - h))
    # (B, Gh, Gw, C, cell, cell) view of the maps, cells addressed by (b, row, col)
    grid = base.reshape(bsz, ch, gh, cell, gw, cell).permute(0, 2, 4, 1, 3, 5)
    b, r, c = cells[:, 0], cells[:, 1], cells[:, 2]
    grid = grid.index_put((b, r, c), centre)
    out = grid.permute(0, 3, 1, 4, 2, 5).reshape(bsz, ch, gh * cell, gw * cell)
    return out[:, :, :h, :w]
