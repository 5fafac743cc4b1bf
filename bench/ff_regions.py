"""What FF costs per region shape, and how a scene's objects cut into regions (issue #10's 4x goal).

Two measurements, both with one model (a run directory or checkpoint):

1. FF time per region shape (1x1 ... 8x8 cells, each with the model's halo), on random
   tiles, 64 cells' worth per call, best of 3: milliseconds per cell and microseconds per
   *input* pixel. A flat cost per input pixel means that region shapes cost only their halo
   pixels, not per-call overhead;
2. with ``--truth``: the cells of a scene that hold a polygon of the truth, covered by
   predict's region cover (:func:`geoseg.models.regions.cover`, per ``--block``): regions
   per shape and FF input pixels per occupied cell, against the plain dense floor's
   (8x8-cell windows with one halo). This bounds what routing can save in FF calls.

    $ python bench/ff_regions.py --model W/run --scene W/villages8192.tif --truth W/villages8192.gpkg
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHAPES = [(1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="run directory or checkpoint")
    ap.add_argument("--scene", help="with --truth: the scene whose occupied cells are covered")
    ap.add_argument("--truth", help="polygons of the scene (its occupied cells)")
    ap.add_argument("--block", type=int, default=2048, help="predict's --block (regions never cross blocks)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from geoseg.backends.cache import ModelKey, get_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    backend = get_backend(ModelKey(args.model, "torch", "cpu", 64))
    meta = backend.meta
    c, h = meta.cell, meta.tile_halo
    print(f"cell {c} px, halo {h} px, torch threads {torch.get_num_threads()}")
    rng = np.random.default_rng(0)
    print(f"{'shape':>6} {'tiles':>5} {'input':>9} {'ms/cell':>8} {'us/input px':>12}")
    for rows, cols in SHAPES:
        th, tw = rows * c + 2 * h, cols * c + 2 * h
        n = max(1, 64 // (rows * cols))
        x = rng.standard_normal((n, meta.band_count, th, tw), dtype=np.float32)
        backend.ff(x)  # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            backend.ff(x)
            best = min(best, time.perf_counter() - t0)
        print(f"{rows}x{cols:<4} {n:5d} {th:4d}x{tw:<4} {1e3 * best / (n * rows * cols):8.2f} "
              f"{1e6 * best / (n * th * tw):12.3f}")
    if not (args.scene and args.truth):
        return
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    from geoseg.models.regions import cover

    with rasterio.open(args.scene) as src:
        shape, transform, crs = (src.height, src.width), src.transform, src.crs
    truth = gpd.read_file(args.truth).to_crs(crs)
    mask = rasterize(truth.geometry, out_shape=shape, transform=transform) > 0
    gh, gw = -(-shape[0] // c), -(-shape[1] // c)
    mask = np.pad(mask, ((0, gh * c - shape[0]), (0, gw * c - shape[1])))
    occupied = np.asarray(mask.reshape(gh, c, gw, c).any(axis=(1, 3)))
    step = args.block // c
    shapes: Counter[tuple[int, int]] = Counter()
    pixels = covered = 0
    for r in range(0, gh, step):
        for q in range(0, gw, step):
            for reg in cover(occupied[r:r + step, q:q + step], c, h):
                rows, cols = reg.shape
                shapes[reg.shape] += 1
                pixels += (rows * c + 2 * h) * (cols * c + 2 * h)
                covered += rows * cols
    n_occ = int(occupied.sum())
    floor = (8 * c + 2 * h) ** 2 / 64
    print(f"occupied cells: {n_occ} of {gh * gw} ({n_occ / (gh * gw):.1%}); {sum(shapes.values())} regions "
          f"covering {covered} cells")
    print("regions per shape: " + ", ".join(f"{a}x{b} {k}" for (a, b), k in shapes.most_common()))
    print(f"FF input px per occupied cell: {pixels / max(n_occ, 1):.0f} ({pixels / max(n_occ, 1) / c**2:.2f}x "
          f"its {c * c} px); the dense floor's per cell: {floor:.0f} ({floor / c**2:.2f}x)")
    print(f"FF input px, floor / routed: {floor * gh * gw / max(pixels, 1):.2f}")


if __name__ == "__main__":
    main()
