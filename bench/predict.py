"""Benchmark of `geoseg predict`: routed vs dense, overhead, memory, ONNX Runtime.

One run does all of it, and prints ratios measured in this run only:

1. trains the CPU preset's model briefly on a generated scene of building-like boxes;
2. generates a *sparse* test scene (objects in <= 25 % of the cells) with its truth;
3. predicts it dense (budget 1.0) and routed (0.25, 0.1): wall time, speed-up over dense,
   and F1@0.5 against the truth (`geoseg.evaluate`). The model is loaded once before the
   timed runs, as a Dask worker loads it once for all its blocks and scenes (the load,
   ~2 s on CPU, is printed apart);
4. pipeline wall time over the model-only time (the same PV and FF calls on arrays
   already in memory, without I/O, stitching, watershed or vectorizing);
5. peak RSS of predict (fresh processes) on the scene and on a scene of 4x the area;
6. onnxruntime vs torch backend, wall time of the same routed predict (both warm).

    $ python bench/predict.py                 # ~10 min on 2 cores
    $ python bench/predict.py --side 1024     # quicker, smaller scenes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]


def boxes_scene(path: Path, side: int, density_cells: float, seed: int, cell: int = 64):
    """A scene of dark ground with bright roofs; roofs fill `density_cells` of the cells."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    transform = from_origin(500000, 4000000, 0.3, 0.3)
    g = side // cell
    occupied = rng.random((g, g)) < density_cells
    boxes = []
    for r, c in zip(*np.nonzero(occupied), strict=True):
        for _ in range(rng.integers(1, 3)):
            w, h = rng.integers(12, 36, 2)
            c0 = c * cell + rng.integers(0, max(1, cell - w))
            r0 = r * cell + rng.integers(0, max(1, cell - h))
            box = (int(c0), int(r0), int(c0 + w), int(r0 + h))
            if all(shapely.box(*box).distance(shapely.box(*b)) > 3 for b in boxes[-4:]):
                boxes.append(box)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32636", "transform": transform, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, 512):
            h = min(512, side - r)
            img = 60 + rng.integers(0, 25, (3, h, side))
            for c0, r0, c1, r1 in boxes:
                if r0 < r + h and r1 > r:
                    img[:, max(r0 - r, 0):min(r1 - r, h), c0:c1] = 190 + rng.integers(0, 30)
            dst.write(img.astype(np.uint8), window=Window(0, r, side, h))
    geoms = [shapely.box(*(transform @ (c0, r1)), *(transform @ (c1, r0))) for c0, r0, c1, r1 in boxes]
    labels = path.with_suffix(".gpkg")
    gpd.GeoDataFrame({"class": ["building"] * len(geoms)}, geometry=geoms, crs="EPSG:32636").to_file(labels)
    return labels, float(occupied.mean())


def child(args: list[str]) -> None:
    """Predict in a fresh process; print seconds and peak RSS."""
    from geoseg.predict import PredictConfig, predict

    scene, model, out, budget, backend, block = args
    t0 = time.perf_counter()
    s = predict([scene], model, out, PredictConfig(budget=float(budget), backend=backend,
                                                   block=int(block)),
                overwrite=True, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "model_s": s.model_seconds,
                      "ff_cells": s.ff_cells, "cells": s.cells, "polygons": s.polygons,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(*args: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def model_only_seconds(model: Path, scene: Path, budget: float) -> float:
    """PV over every block and FF over K tiles, on arrays already in memory."""
    import rasterio

    from geoseg.backends.cache import ModelKey, get_backend
    from geoseg.models.router import k_for_budget

    be = get_backend(ModelKey(str(model), "torch", "cpu", 32))
    m = be.meta
    with rasterio.open(scene) as src:
        side = src.width
    s, cell, halo = m.scale, m.cell, m.tile_halo
    rng = np.random.default_rng(0)
    block = 2048 if side >= 2048 else side
    n_blocks = (side // block) ** 2
    small = rng.standard_normal((1, m.band_count, (block + 2 * m.multiple) // s,
                                 (block + 2 * m.multiple) // s)).astype(np.float32)
    k = k_for_budget((side // cell) ** 2, budget)
    tiles = rng.standard_normal((32, m.band_count, cell + 2 * halo, cell + 2 * halo)).astype(np.float32)
    be.pv(small)
    be.ff(tiles)
    t0 = time.perf_counter()
    for _ in range(n_blocks):
        be.pv(small)
    for i in range(0, k, 32):
        be.ff(tiles[: min(32, k - i)])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=2048, help="side of the sparse test scene")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the quick training")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep the model and scenes of --workdir")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    import geopandas as gpd

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoseg-bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    reuse = args.reuse and (work / "run" / "checkpoints" / "best.pt").exists()
    if not reuse:
        prepare_model(work, args.epochs)
    scene = work / "sparse.tif"
    big = work / "sparse4x.tif"
    if not reuse:
        boxes_scene(scene, args.side, 0.2, seed=2)
        boxes_scene(big, args.side * 2, 0.2, seed=3)
    truth = scene.with_suffix(".gpkg")
    occ = len(gpd.read_file(truth))
    print(f"sparse scene {args.side}^2 (objects in ~20 % of the cells), {occ} objects", flush=True)
    run_benchmarks(work, scene, big, truth)


def prepare_model(work: Path, epochs: int) -> None:
    """Train the CPU preset briefly on generated boxes (train and val scenes)."""
    import geopandas as gpd

    from geoseg.config import load_config
    from geoseg.tile import TileConfig, tile
    from geoseg.train import TrainConfig, train

    tr_labels, _ = boxes_scene(work / "train.tif", 1024, 0.5, seed=0)
    boxes_scene(work / "val.tif", 512, 0.5, seed=1)
    va_labels = work / "val.gpkg"
    both = gpd.GeoDataFrame(
        geometry=list(gpd.read_file(tr_labels).geometry) + list(gpd.read_file(va_labels).geometry),
        crs="EPSG:32636")
    both["class"] = "building"
    both.to_file(work / "labels.gpkg")
    tile([work / "train.tif", work / "val.tif"], work / "labels.gpkg", work / "patches",
         TileConfig(val_fraction=0.0, val_scenes=("val",), overlap=0), overwrite=True)
    cfg = load_config(TrainConfig, REPO / "configs" / "buildings-cpu.yaml",
                      {"val": {"every": epochs}})
    t0 = time.perf_counter()
    res = train(cfg, work / "patches", work / "run", epochs=epochs, overwrite=True)
    print(f"trained {epochs} epochs in {time.perf_counter() - t0:.0f} s: "
          f"val ap50 {res.history[-1].get('ap50', float('nan')):.2f}", flush=True)


def run_benchmarks(work: Path, scene: Path, big: Path, truth: Path) -> None:
    """Routed vs dense, overhead, memory and ONNX Runtime, in this process."""
    import geopandas as gpd

    from geoseg.evaluate import evaluate_frames

    truth_gdf = gpd.read_file(truth)
    from geoseg.backends.cache import ModelKey, get_backend
    from geoseg.predict import PredictConfig, predict

    t0 = time.perf_counter()
    get_backend(ModelKey(str((work / "run").resolve()), "torch", "auto", PredictConfig().ff_batch))
    print(f"model load (once per worker): {time.perf_counter() - t0:.1f} s")

    def timed(model: Path, budget: float, backend: str, out: Path) -> dict:
        t0 = time.perf_counter()
        s = predict([scene], model, out, PredictConfig(budget=budget, backend=backend),
                    overwrite=True, progress=False)
        return {"seconds": time.perf_counter() - t0, "ff_cells": s.ff_cells,
                "f1": evaluate_frames(gpd.read_file(out), truth_gdf, iou=0.5)["f1"]}

    timed(work / "run", 0.1, "torch", work / "warmup.gpkg")  # kernels, allocator
    rows = {b: timed(work / "run", b, "torch", work / f"pred_{b}.gpkg") for b in (1.0, 0.25, 0.1)}
    dense = rows[1.0]
    print(f"{'budget':>7} {'FF cells':>9} {'wall s':>7} {'speed-up':>9} {'F1@0.5':>7}")
    for b, r in rows.items():
        print(f"{b:>7.2f} {r['ff_cells']:>9d} {r['seconds']:>7.1f} "
              f"{dense['seconds'] / r['seconds']:>8.2f}x {r['f1']:>7.3f}")
    print(f"routed 0.25: {dense['seconds'] / rows[0.25]['seconds']:.2f}x faster than dense "
          f"(target >= 3x), F1 {100 * (rows[0.25]['f1'] - dense['f1']):+.1f} points (target >= -1)")
    mo = model_only_seconds(work / "run", scene, 0.25)
    print(f"pipeline / model-only at 0.25: {rows[0.25]['seconds']:.1f} s / {mo:.1f} s = "
          f"{rows[0.25]['seconds'] / mo:.2f} (target <= 1.3)")
    # --block 1024: both scenes have several blocks per thread, so what is compared is the
    # scene size, not how many blocks run at once (a 2048-px scene is one 2048-px block).
    r1 = run_child(str(scene), str(work / "run"), str(work / "pred1x.gpkg"), "0.25", "torch", "1024")
    r4 = run_child(str(big), str(work / "run"), str(work / "pred4x.gpkg"), "0.25", "torch", "1024")
    print(f"peak RSS (fresh process, --block 1024) 1x area {r1['peak_rss_mb']:.0f} MB, "
          f"4x area {r4['peak_rss_mb']:.0f} MB: ratio {r4['peak_rss_mb'] / r1['peak_rss_mb']:.2f} "
          "(target <= 1.1)")
    from geoseg.export import export_onnx

    export_onnx(work / "run", work / "export", overwrite=True)
    timed(work / "export", 0.1, "onnx", work / "warmup_onnx.gpkg")
    ro = timed(work / "export", 0.25, "onnx", work / "pred_onnx.gpkg")
    print(f"onnxruntime vs torch (routed 0.25): {ro['seconds']:.1f} s vs "
          f"{rows[0.25]['seconds']:.1f} s = {rows[0.25]['seconds'] / ro['seconds']:.2f}x "
          f"(target >= 1.0); F1 {ro['f1']:.3f} vs {rows[0.25]['f1']:.3f}")


if __name__ == "__main__":
    main()
