"""The Triton cell kernels give the torch reference's numbers (interpreter on CPU, or CUDA)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = r"""
import torch
from geoseg.models.cells import pack_cells, paste_cells
from geoseg.models.regions import pack_regions
from geoseg.models.triton_cells import pack_cells_triton, pack_regions_triton, paste_cells_triton
dev = "cuda" if torch.cuda.is_available() else "cpu"
g = torch.Generator().manual_seed(0)
for (b, c, h, w, cell, halo) in [(2, 3, 80, 96, 32, 16), (1, 4, 64, 64, 16, 0), (3, 1, 40, 72, 16, 4)]:
    x = torch.randn(b, c, h, w, generator=g).to(dev)
    gh, gw = -(-h // cell), -(-w // cell)
    allc = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(gh), torch.arange(gw),
                                      indexing="ij"), -1).reshape(-1, 3)
    cells = allc[torch.randperm(len(allc), generator=g)[: max(1, len(allc) // 2)]].to(dev)
    ref = pack_cells(x, cells, cell, halo)
    got = pack_cells_triton(x, cells, cell, halo)
    assert torch.equal(ref, got), "pack differs"
    tiles = torch.randn(ref.shape, generator=g).to(dev)
    maps = torch.randn(b, c, h, w, generator=g).to(dev)
    assert torch.equal(paste_cells(maps, cells, tiles, cell, halo),
                       paste_cells_triton(maps, cells, tiles, cell, halo)), "paste differs"
    for rows, cols in [(1, 2), (2, 3)]:  # regions of cells, one halo each
        boxes = torch.tensor([[0, 0, 0], [b - 1, gh - rows, gw - cols]]).to(dev)
        assert torch.equal(pack_regions(x, boxes, rows, cols, cell, halo),
                           pack_regions_triton(x, boxes, rows, cols, cell, halo)), "regions differ"
    empty = cells[:0]
    assert pack_cells_triton(x, empty, cell, halo).shape[0] == 0
    assert torch.equal(paste_cells_triton(maps, empty, tiles[:0], cell, halo), maps)
print("ok")
"""


def test_kernels_match_torch_reference() -> None:
    pytest.importorskip("triton")
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"  # must be set before triton is imported
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_not_used_on_cpu_or_with_autograd() -> None:
    from geoseg.models.triton_cells import use_triton

    assert not use_triton(torch.zeros(1))
    if torch.cuda.is_available():
        with torch.no_grad():
            assert use_triton(torch.zeros(1, device="cuda"))
        assert not use_triton(torch.zeros(1, device="cuda"))
