"""Triton kernels for the cell/region gather (pack) and scatter (paste) of the routed model.

Same semantics and numbers as :func:`geoseg.models.cells.pack_cells` and
:func:`geoseg.models.cells.paste_cells` (the torch reference, used for training and on
CPU), for inference on a CUDA GPU: one kernel launch gathers every chosen cell, or every
same-shaped region of cells (:func:`geoseg.models.regions.pack_regions`), with its halo
into the FF batch, one writes the FF centre crops back over the PV maps, with no
intermediate strided views or index tensors. Padding (reflect, or zeros where reflect is
impossible) is done by torch first, exactly as in the reference.

The kernels are plain index arithmetic, so they also run under Triton's interpreter
(``TRITON_INTERPRET=1``) on CPU tensors: that is how ``tests/test_triton_cells.py``
checks them against the torch reference without a GPU. No autograd: inference only.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from geoseg.models.cells import _check, check_tiles, grid_shape, pad_for_cells

BLOCK = 1024


@functools.cache
def available() -> bool:
    """Whether Triton imports (it ships with torch's CUDA builds on Linux)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels() -> tuple[Any, Any]:
    import triton
    import triton.language as tl

    @triton.jit
    def gather(src, cells, out, C, Hp, Wp, CELL: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
               BLOCK: tl.constexpr):
        nc = tl.program_id(0)
        n = nc // C
        ch = nc % C
        b = tl.load(cells + n * 3)
        r = tl.load(cells + n * 3 + 1)
        c = tl.load(cells + n * 3 + 2)
        k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = k < TH * TW
        i = k // TW
        j = k % TW
        s = ((b * C + ch) * Hp + r * CELL + i) * Wp + c * CELL + j
        tl.store(out + nc * TH * TW + k, tl.load(src + s, mask=m), mask=m)

    @triton.jit
    def scatter(tiles, cells, out, C, Hg, Wg, CELL: tl.constexpr, T: tl.constexpr,
                HALO: tl.constexpr, BLOCK: tl.constexpr):
        nc = tl.program_id(0)
        n = nc // C
        ch = nc % C
        b = tl.load(cells + n * 3)
        r = tl.load(cells + n * 3 + 1)
        c = tl.load(cells + n * 3 + 2)
        k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = k < CELL * CELL
        i = k // CELL
        j = k % CELL
        s = (nc * T + HALO + i) * T + HALO + j
        d = ((b * C + ch) * Hg + r * CELL + i) * Wg + c * CELL + j
        tl.store(out + d, tl.load(tiles + s, mask=m), mask=m)

    return gather, scatter


def pack_cells_triton(x: torch.Tensor, cells: torch.Tensor, cell: int, halo: int) -> torch.Tensor:
    """:func:`~geoseg.models.cells.pack_cells` as one Triton kernel launch.

    Shape:
        - x: (B, C, H, W)
        - cells: (N, 3) int64
        - output: (N, C, cell + 2 * halo, cell + 2 * halo)
    """
    _check(x, cells, cell, halo)
    return pack_regions_triton(x, cells, 1, 1, cell, halo)


def pack_regions_triton(x: torch.Tensor, boxes: torch.Tensor, rows: int, cols: int, cell: int,
                        halo: int) -> torch.Tensor:
    """:func:`~geoseg.models.regions.pack_regions` (same-shaped regions of cells) as one launch.

    Shape:
        - x: (B, C, H, W)
        - boxes: (N, 3) int64 (batch, first cell row, first cell col)
        - output: (N, C, rows * cell + 2 * halo, cols * cell + 2 * halo)
    """
    import triton

    _check(x, boxes, cell, halo)
    ch = x.shape[1]
    th, tw = rows * cell + 2 * halo, cols * cell + 2 * halo
    x = pad_for_cells(x, cell, halo).contiguous()
    n = boxes.shape[0]
    out = torch.empty((n, ch, th, tw), dtype=x.dtype, device=x.device)
    if n:
        gather, _ = _kernels()
        grid = (n * ch, triton.cdiv(th * tw, BLOCK))
        gather[grid](x, boxes.contiguous(), out, ch, x.shape[2], x.shape[3],
                     CELL=cell, TH=th, TW=tw, BLOCK=BLOCK)
    return out


def paste_cells_triton(maps: torch.Tensor, cells: torch.Tensor, tiles: torch.Tensor, cell: int,
                       halo: int) -> torch.Tensor:
    """:func:`~geoseg.models.cells.paste_cells` as one Triton kernel launch (no autograd).

    Shape:
        - maps: (B, C, H, W)
        - cells: (N, 3) int64, unique
        - tiles: (N, C, cell + 2 * halo, cell + 2 * halo)
        - output: (B, C, H, W)
    """
    import triton

    _check(maps, cells, cell, halo)
    bsz, ch, h, w = maps.shape
    side = cell + 2 * halo
    check_tiles(tiles, cells, ch, side)
    gh, gw = grid_shape(h, w, cell)
    out = F.pad(maps, (0, gw * cell - w, 0, gh * cell - h)).contiguous()
    n = cells.shape[0]
    if n:
        _, scatter = _kernels()
        grid = (n * ch, triton.cdiv(cell * cell, BLOCK))
        scatter[grid](tiles.to(maps.dtype).contiguous(), cells.contiguous(), out, ch,
                      out.shape[2], out.shape[3], CELL=cell, T=side, HALO=halo, BLOCK=BLOCK)
    return out[..., :h, :w]


def use_triton(x: torch.Tensor) -> bool:
    """Use the kernels: CUDA tensors, no autograd (inference), and Triton available."""
    return x.is_cuda and not torch.is_grad_enabled() and available()
