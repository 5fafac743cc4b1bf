"""Benchmark of `geoseg predict`: routed vs a plain dense floor, overhead, memory, ONNX Runtime.

One run does all of it, and prints ratios measured in this run only:

1. trains the CPU preset's model briefly on a generated scene of building-like boxes;
2. generates a *sparse* test scene (objects in ``--occupied`` of the 64-px cells, 12 % by
   default, as rural scenes) of ``--side`` px with its truth;
3. the **plain dense floor**: the FF network over full windows (8x8 cells with one halo,
   the same windows, halo and batch as predict), windowed reads, the same watershed and
   vectorize (predict's own instance phase), no PV and no router, as one Dask graph of the
   same threads (and the same outline regularization when the model asks for it); then
   `geoseg predict` at budget 1.0, 0.25 and auto: wall time, ratios
   (budget 1.0 / floor, floor / routed) and F1@0.5 of each against the truth. The model
   is loaded once before the timed runs, as a Dask worker loads it once for all its blocks
   and scenes (the load is printed apart);
4. pipeline wall time over the time in the model (the floor: the same FF calls on arrays
   already in memory; predict: the seconds its summary counts in model calls);
5. with ``--extras``: peak RSS of predict (fresh processes) on a 2048² scene and on one of
   4x the area, and onnxruntime vs torch on the 2048² scene;
6. with ``--phases BUDGET``, only: one predict at BUDGET with its phases and model calls
   timed (seconds summed over the Dask threads);
   with ``--memory-format``, only: the torch backend's PV and FF calls on the CPU in
   channels-last memory format (what predict uses) over contiguous NCHW;
7. with ``--tta``: test-time augmentation (none, flip, d4) at budget 1.0 on a 2048² scene:
   wall time over the run without, and F1.

    $ python bench/predict.py                      # 8192² sparse scene, ~25 min on 2 cores
    $ python bench/predict.py --side 4096          # quicker
    $ python bench/predict.py --workdir W --reuse  # keep the model and scenes of W
    $ python bench/predict.py --workdir W --reuse --router --budgets 0.125,0.25,auto
    $ python bench/predict.py --workdir W2 --config bench/configs/ff-depth4-halo8.yaml  # another preset
    $ python bench/predict.py --workdir W --reuse --validate --layout villages --rural 0.12  # calibrate on rural too
    $ python bench/predict.py --model outputs/demo/run --scene data/sample/kampala_blockB_z20.tif \
          --truth data/sample/labels/buildings.gpkg --workdir W   # a real scene: floor vs 1.0 / 0.25 / auto

With ``--scene``, nothing is trained or generated: the floor and the budgets run with
``--model`` on that scene, and F1 is against ``--truth`` clipped to the scene's footprint
(as ``geoseg evaluate --clip``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]


def village_cells(rng: np.random.Generator, g: int, density_cells: float) -> np.ndarray:
    """Occupied cells in clusters (hamlets and villages of 8-80 cells) until ``density_cells`` of a g x g grid."""
    occupied = np.zeros((g, g), bool)
    while occupied.mean() < density_cells:
        n = int(rng.integers(8, 80))
        centre = rng.uniform(0, g, 2)
        rc = np.clip(np.rint(rng.normal(centre, np.sqrt(n) / 3, (n, 2))), 0, g - 1).astype(int)
        occupied[rc[:, 0], rc[:, 1]] = True
    return occupied


def boxes_scene(path: Path, side: int, density_cells: float, seed: int, cell: int = 64,
                layout: str = "scattered"):
    """A scene of dark ground with bright roofs; roofs fill `density_cells` of the cells.

    ``layout``: ``scattered``, each cell occupied independently (objects spread one or two per
    cell over the scene: the worst case for routing); ``villages``, occupied cells in clusters,
    as rural settlements are, each roof 3 px inside its cell so neighbours never touch.
    """
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    # each seed its own place (10 km apart): the scenes' labels go to one file for tile, and
    # scenes on one ground would each get the others' roofs as labels
    transform = from_origin(500000 + 10000 * seed, 4000000, 0.3, 0.3)
    g = side // cell
    occupied = (rng.random((g, g)) < density_cells if layout == "scattered"
                else village_cells(rng, g, density_cells))
    m = 0 if layout == "scattered" else 3  # margin of a roof inside its cell
    boxes: list[Any] = []
    for r, c in zip(*np.nonzero(occupied), strict=True):
        for _ in range(rng.integers(1, 3)):
            w, h = rng.integers(12, 36, 2)
            c0 = c * cell + m + rng.integers(0, max(1, cell - w - 2 * m))
            r0 = r * cell + m + rng.integers(0, max(1, cell - h - 2 * m))
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


# ----------------------------------------------------------------------------- the floor
def _floor_probs(plan, bi: int, bj: int, key, stats) -> int:
    """FF over the block in plain windows of 8x8 cells with one halo; probabilities as predict caches them."""
    import rasterio
    import torch
    from rasterio.windows import Window

    from geoseg.backends.cache import get_backend
    from geoseg.bands import normalize
    from geoseg.models.regions import MAX_SIDE
    from geoseg.predict.phases import _probabilities_u8
    from geoseg.predict.plan import read_window

    be = get_backend(key)
    core = plan.core(bi, bj)
    c, hl = plan.cell, plan.tile_halo
    h, w = int(core.height), int(core.width)
    gh, gw = -(-h // c), -(-w // c)
    logits = torch.zeros(be.meta.n_outputs, gh * c, gw * c)
    windows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r in range(0, gh, MAX_SIDE):
        for cc in range(0, gw, MAX_SIDE):
            windows.setdefault((min(MAX_SIDE, gh - r), min(MAX_SIDE, gw - cc)), []).append((r, cc))
    with rasterio.open(plan.scene.path) as src:
        for (rows, cols), starts in windows.items():
            tiles = []
            for r, cc in starts:
                win = Window(int(core.col_off) + cc * c - hl, int(core.row_off) + r * c - hl,
                             cols * c + 2 * hl, rows * c + 2 * hl)
                img, valid = read_window(src, plan, win)
                tiles.append(normalize(img, stats, valid=valid))
            maps = torch.from_numpy(be.ff(np.stack(tiles)))
            for (r, cc), m in zip(starts, maps, strict=True):
                logits[:, r * c:(r + rows) * c, cc * c:(cc + cols) * c] = m
    with open(plan.path("probs", bi, bj), "wb") as f:
        np.save(f, _probabilities_u8(logits[:, :h, :w].contiguous()))
    return len(windows)


def dense_floor(scene: Path, model: Path, out: Path, block: int = 2048) -> dict:
    """The plain dense floor: FF windows + predict's instance phase, one Dask graph, no PV, no router."""
    from dask.delayed import delayed

    from geoseg.backends.cache import ModelKey, get_backend
    from geoseg.io.rasters import inspect_scenes
    from geoseg.parallel import compute
    from geoseg.predict import PredictConfig
    from geoseg.predict.collect import write_polygons
    from geoseg.predict.phases import instances_block
    from geoseg.predict.plan import BlockPlan

    t0 = time.perf_counter()
    cfg = PredictConfig()
    key = ModelKey(str(model.resolve()), "torch", "auto", cfg.ff_batch)
    meta = get_backend(key).meta
    (info,), _ = inspect_scenes([scene.resolve()])
    cache = Path(tempfile.mkdtemp(prefix="floor-", dir=out.parent))
    plan = BlockPlan(scene=info, block=block, watershed_halo=cfg.watershed_halo, cell=meta.cell,
                     scale=meta.scale, tile_halo=meta.tile_halo, multiple=meta.multiple,
                     band_indexes=tuple(range(1, info.count + 1)), cache=cache)
    nbh, nbw = plan.blocks_shape
    ff = {(i, j): delayed(_floor_probs, pure=False)(plan, i, j, key, meta.band_stats)
          for i in range(nbh) for j in range(nbw)}
    polys = [delayed(instances_block, pure=False)(
        plan, i, j, meta.postprocess, meta.classes, cfg.simplify, cfg.min_area,
        *[ff[(a, b)] for a in range(i - 1, i + 2) for b in range(j - 1, j + 2) if (a, b) in ff])
        for (i, j) in ff]
    if meta.postprocess.regularize:  # predict squares outlines per block for such a model: so does the floor
        from geoseg.predict.regularize import regularize_file

        polys = [delayed(regularize_file, pure=False)(p, cfg.regularize_tolerance) for p in polys]
    res = compute(polys, scheduler="threads", desc="floor", progress=False)
    done = write_polygons([(info, r) for r in res], out, [info], once=False)  # as predict writes them
    shutil.rmtree(cache)
    return {"seconds": time.perf_counter() - t0, "polygons": done.polygons}


def floor_model_seconds(model: Path, side: int) -> float:
    """The floor's FF calls alone, on arrays already in memory (same windows, same batches)."""
    from geoseg.backends.cache import ModelKey, get_backend
    from geoseg.models.regions import MAX_SIDE
    from geoseg.predict import PredictConfig

    be = get_backend(ModelKey(str(model.resolve()), "torch", "auto", PredictConfig().ff_batch))
    m = be.meta
    t = MAX_SIDE * m.cell + 2 * m.tile_halo
    n = math.ceil(side / (MAX_SIDE * m.cell)) ** 2
    x = np.random.default_rng(0).standard_normal((1, m.band_count, t, t)).astype(np.float32)
    be.ff(x)
    t0 = time.perf_counter()
    for _ in range(n):
        be.ff(x)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=8192, help="side of the sparse test scene (px)")
    ap.add_argument("--occupied", type=float, default=0.12, help="share of 64-px cells holding objects")
    ap.add_argument("--layout", choices=["scattered", "villages"], default="scattered",
                    help="occupied cells independent (the worst case) or in clusters, as rural settlements")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the quick training")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "buildings-cpu.yaml",
                    help="the preset trained (and validated with --validate)")
    ap.add_argument("--rural", type=float, default=None, metavar="SHARE",
                    help="validate also on a 1024² villages scene with objects in SHARE of the cells (empty land "
                         "for the auto calibration; e.g. the --occupied of the test scene); with --reuse --validate "
                         "the chips are made again and the run validated on them")
    ap.add_argument("--rural-train", action="store_true", help="with --rural: train on such a scene too")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep the model and scenes of --workdir")
    ap.add_argument("--extras", action="store_true", help="also peak RSS and onnxruntime (2048² scenes)")
    ap.add_argument("--only-tta", action="store_true", help="with --tta: skip the routed/floor runs")
    ap.add_argument("--tta", action="store_true", help="also the cost of --tta flip and d4 (2048² scene)")
    ap.add_argument("--validate", action="store_true",
                    help="validate W/run's best.pt once before the runs (sets its --budget auto threshold)")
    ap.add_argument("--scene", type=Path, default=None, help="a real scene instead of the generated one")
    ap.add_argument("--truth", type=Path, default=None, help="with --scene: its true polygons (clipped to it)")
    ap.add_argument("--model", type=Path, default=None, help="with --scene: the run directory to use")
    ap.add_argument("--fractions", default=None, metavar="LIST",
                    help="only: the auto threshold calibration would set at these fractions of FF's top gain "
                         "(e.g. 0.1,0.2,0.3; geoseg.train.calibrate), and what each keeps of the scene")
    ap.add_argument("--budgets", default="1.0,0.25,auto", help="predict budgets to run against the floor")
    ap.add_argument("--router", action="store_true",
                    help="also the router's precision: occupied cells vs cells over the auto threshold")
    ap.add_argument("--phases", metavar="BUDGET", default=None,
                    help="only: where one predict at BUDGET spends its time (seconds per phase, summed over threads)")
    ap.add_argument("--memory-format", action="store_true",
                    help="only: the torch backend's model calls on the CPU, channels-last vs contiguous")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    import geopandas as gpd

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoseg-bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    if args.memory_format:
        if not (work / "run" / "checkpoints" / "best.pt").exists() and args.model is None:
            prepare_model(work, args.epochs, args.config)
        memory_format(args.model or work / "run")
        return
    if args.scene is not None:
        if args.truth is None or args.model is None:
            ap.error("--scene needs --truth and --model")
        run_benchmarks(work, args.scene, args.truth, model=args.model, budgets=_budgets(args.budgets))
        return
    if not (args.reuse and (work / "run" / "checkpoints" / "best.pt").exists()):
        prepare_model(work, args.epochs, args.config, args.rural, args.rural_train)
    elif args.validate and args.rural is not None:
        prepare_data(work, args.rural, args.rural_train)
    if args.validate:
        validate_run(work, args.epochs, args.config)
    scene = work / (f"sparse{args.side}.tif" if args.layout == "scattered" else f"villages{args.side}.tif")
    if not (args.reuse and scene.exists()):
        t0 = time.perf_counter()
        _, occ = boxes_scene(scene, args.side, args.occupied, seed=2, layout=args.layout)
        print(f"generated the scene in {time.perf_counter() - t0:.0f} s", flush=True)
    truth = scene.with_suffix(".gpkg")
    print(f"sparse scene ({args.layout}) {args.side}^2, objects in ~{args.occupied:.0%} of the 64-px cells, "
          f"{len(gpd.read_file(truth))} objects", flush=True)
    if args.router:
        router_precision(work / "run", scene, truth)
    if args.fractions:
        fraction_sweep(work, args.config, scene, truth, [float(x) for x in args.fractions.split(",")])
        return
    if args.phases is not None:
        phases(args.model or work / "run", scene, work, _budgets(args.phases)[0])
        return
    if not args.only_tta:
        run_benchmarks(work, scene, truth, budgets=_budgets(args.budgets))
    if args.extras:
        extras(work)
    if args.tta:
        tta_costs(work)


def prepare_model(work: Path, epochs: int, config: Path = REPO / "configs" / "buildings-cpu.yaml",
                  rural: float | None = None, rural_train: bool = False) -> None:
    """Train ``config`` (the CPU preset) briefly on generated boxes (train and val scenes; see :func:`prepare_data`)."""
    from geoseg.config import load_config
    from geoseg.train import TrainConfig, train

    patches = prepare_data(work, rural, rural_train)
    cfg = load_config(TrainConfig, config, {"val": {"every": epochs}})
    t0 = time.perf_counter()
    res = train(cfg, patches, work / "run", epochs=epochs, overwrite=True)
    print(f"trained {epochs} epochs in {time.perf_counter() - t0:.0f} s: "
          f"val ap50 {res.history[-1].get('ap50', float('nan')):.2f}", flush=True)


def validate_run(work: Path, epochs: int, config: Path = REPO / "configs" / "buildings-cpu.yaml") -> None:
    """Validate the run (its last.pt, no training): metrics, and the calibrated auto threshold in best.pt."""
    import torch

    from geoseg.config import load_config
    from geoseg.models.checkpoint import inference_payload, load_checkpoint, save_checkpoint
    from geoseg.train import TrainConfig
    from geoseg.train.loop import Trainer

    cfg = load_config(TrainConfig, config, {"epochs": epochs})
    tr = Trainer(cfg, work / "patches", work / "run", torch.device("cpu"), progress=False)
    best = work / "run" / "checkpoints" / "best.pt"
    tr.load_state(load_checkpoint(work / "run" / "checkpoints" / "last.pt"))  # val every --epochs: last = best
    m = tr.validate()
    save_checkpoint(best, inference_payload(tr.state()))
    print(f"validated {best}: ap50 {m.get('ap50', float('nan')):.2f}, f1 {m.get('f1', float('nan')):.2f}, "
          f"auto threshold {float(cast(torch.Tensor, tr.eval_model().utility_threshold)):.3g} "
          f"({m.get('auto_share', float('nan')):.0%} of the validation cells)", flush=True)


def prepare_data(work: Path, rural: float | None = None, rural_train: bool = False) -> Path:
    """Chips of generated boxes: a 1024² train scene and a 512² val scene; returns the patches folder.

    Both are dense (objects in half of the cells, scattered). With ``rural``, a 1024²
    villages scene with objects in that share of the cells is added to val (other seeds
    than the test scene's): chips with empty land around settlements, as a validation set
    drawn from rural scenes has, for ``--budget auto`` to be calibrated on; with
    ``rural_train`` another one to train, for the router to learn on.
    """
    import geopandas as gpd

    from geoseg.tile import TileConfig, tile

    scenes = [boxes_scene(work / "train.tif", 1024, 0.5, seed=0)[0], boxes_scene(work / "val.tif", 512, 0.5, seed=1)[0]]
    if rural is not None:
        scenes.append(boxes_scene(work / "val_rural.tif", 1024, rural, seed=11, layout="villages")[0])
        if rural_train:
            scenes.append(boxes_scene(work / "train_rural.tif", 1024, rural, seed=10, layout="villages")[0])
    both = gpd.GeoDataFrame(geometry=[g for lab in scenes for g in gpd.read_file(lab).geometry], crs="EPSG:32636")
    both["class"] = "building"
    both.to_file(work / "labels.gpkg")
    tile([lab.with_suffix(".tif") for lab in scenes], work / "labels.gpkg", work / "patches",
         TileConfig(val_fraction=0.0, val_scenes=("val*",), overlap=0), overwrite=True)
    return work / "patches"


def _budgets(text: str) -> list[float | str]:
    return [b if b == "auto" else float(b) for b in text.split(",")]


def _scene_cells(model: Path, scene: Path, truth: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """PV's utility per cell of the scene, which cells hold a true object, and the model's auto threshold."""
    import geopandas as gpd
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.features import rasterize

    from geoseg.backends.cache import ModelKey, get_backend
    from geoseg.bands import normalize

    be = get_backend(ModelKey(str(model.resolve()), "torch", "cpu", 8))
    meta = be.meta
    s, c = meta.scale, meta.cell
    with rasterio.open(scene) as src:
        h, w = src.height // c * c, src.width // c * c
        small = src.read(out_shape=(src.count, h // s, w // s), window=((0, h), (0, w)),
                         resampling=Resampling.average).astype(np.float32)
        occ_px = rasterize(((g, 1) for g in gpd.read_file(truth).to_crs(src.crs).geometry),
                           out_shape=(h, w), transform=src.transform)
    _, util = be.pv(normalize(small, meta.band_stats)[None])
    util = util[0, :h // c, :w // c]
    occ = occ_px.reshape(h // c, c, w // c, c).any(axis=(1, 3))
    return util, occ, float((meta.model_extra or {}).get("utility_threshold", float("nan")))


def router_precision(model: Path, scene: Path, truth: Path) -> None:
    """Which cells clear the auto threshold: the occupied ones, and which others (PV over the scene)."""
    from scipy import ndimage

    util, occ, thr = _scene_cells(model, scene, truth)
    chosen = util > thr
    near = ndimage.binary_dilation(occ, structure=np.ones((3, 3)))
    top = util >= np.sort(util.ravel())[::-1][max(int(occ.sum()), 1) - 1]
    print(f"router: {occ.size} cells, {occ.mean():.1%} occupied; auto threshold {thr:.3f} keeps {chosen.mean():.1%} "
          f"(occupied kept {chosen[occ].mean():.1%}; {int((chosen & ~occ).sum())} empty cells, "
          f"{int((chosen & ~occ & near).sum())} of them next to an occupied one); the top {occ.mean():.1%} "
          f"by utility hold {top[occ].mean():.1%} of the occupied cells", flush=True)


def fraction_sweep(work: Path, config: Path, scene: Path, truth: Path, fractions: list[float]) -> None:
    """The auto threshold calibration would set at each ``fraction``, and what it keeps of the scene.

    The validation of ``W/run``'s last.pt is run again on ``W/patches`` (nothing is
    written); its per-cell predicted utilities and gains are those ``geoseg.train.calibrate``
    ranks. Also what the rule of an earlier revision (keep the ranked cells until they hold
    95 % of the peak cumulative gain) would keep, for comparison.
    """
    import torch

    import geoseg.train.calibrate as cal
    from geoseg.config import load_config
    from geoseg.models.checkpoint import load_checkpoint
    from geoseg.train import TrainConfig
    from geoseg.train.loop import Trainer

    seen: dict[str, np.ndarray] = {}
    choose = cal.choose_threshold

    def keep(predicted: np.ndarray, gain: np.ndarray, fraction: float = cal.FRACTION) -> tuple[float, float]:
        seen.update(predicted=predicted, gain=gain)
        return choose(predicted, gain, fraction)

    cfg = load_config(TrainConfig, config, {"epochs": 1})
    tr = Trainer(cfg, work / "patches", work / "run", torch.device("cpu"), progress=False)
    tr.load_state(load_checkpoint(work / "run" / "checkpoints" / "last.pt"))
    cal.choose_threshold = keep
    try:
        tr.validate()
    finally:
        cal.choose_threshold = choose
    util, occ, _ = _scene_cells(work / "run", scene, truth)
    print(f"calibration: {len(seen['gain'])} validation cells, FF's gain positive in "
          f"{(seen['gain'] > 0).mean():.0%}; the scene's cells {occ.mean():.1%} occupied", flush=True)

    def line(name: str, thr: float, share: float) -> None:
        chosen = util > thr
        print(f"  {name}: threshold {thr:.3f}, validation cells kept {share:.0%}, scene cells kept "
              f"{chosen.mean():.1%}, occupied kept {chosen[occ].mean():.1%}", flush=True)

    for fraction in fractions:
        line(f"fraction {fraction:.2f}", *choose(seen["predicted"], seen["gain"], fraction))
    order = np.argsort(-seen["predicted"], kind="stable")
    cum = np.cumsum(seen["gain"][order])
    k = int(np.argmax(cum >= 0.95 * cum.max())) + 1
    ranked = seen["predicted"][order]
    thr = float(-np.inf) if k == len(ranked) else float((ranked[k - 1] + ranked[k]) / 2)
    line("earlier rule (95 % of the gain)", thr, k / len(ranked))
    # The gain of an earlier revision: PV's loss minus FF's loss (the router's training target).
    decision = cal.decision_errors
    ba = tr.loss.cfg.boundary_aware.weight(1.0)
    cal.decision_errors = lambda logits, t: tr.loss.per_sample_loss(logits, t, ba)  # type: ignore[assignment]
    cal.choose_threshold = keep
    try:
        tr.validate()
    finally:
        cal.choose_threshold, cal.decision_errors = choose, decision
    line(f"loss gain (earlier revision), fraction {cal.FRACTION:.2f}", *choose(seen["predicted"], seen["gain"]))


def run_benchmarks(work: Path, scene: Path, truth: Path, model: Path | None = None,
                   budgets: list[float | str] | None = None) -> None:
    """The floor, budget 1.0, 0.25 and auto on a scene, in this process (truth clipped to the scene)."""
    import geopandas as gpd

    from geoseg.aoi import clip_to, footprint
    from geoseg.backends.cache import ModelKey, get_backend
    from geoseg.evaluate import evaluate_frames
    from geoseg.predict import PredictConfig, predict

    truth_gdf = clip_to(gpd.read_file(truth), footprint([scene]))
    print(f"truth: {len(truth_gdf)} polygons in the scene", flush=True)
    model = model if model is not None else work / "run"
    t0 = time.perf_counter()
    get_backend(ModelKey(str(model.resolve()), "torch", "auto", PredictConfig().ff_batch))
    print(f"model load (once per worker): {time.perf_counter() - t0:.1f} s", flush=True)

    def scores(out: Path) -> dict:
        r = evaluate_frames(gpd.read_file(out), truth_gdf, iou=0.5)
        return {"f1": float(r["f1"]), "miou": float(r["mean_iou"]), "biou": float(r["boundary_iou"])}

    def routed(budget: float | str, out: Path) -> dict:
        t0 = time.perf_counter()
        s = predict([scene], model, out, PredictConfig(budget=budget), overwrite=True, progress=False)
        res = {"seconds": time.perf_counter() - t0, "ff_cells": s.ff_cells, "cells": s.cells,
               "model_s": s.model_seconds, "routing": s.routing, "polygons": s.polygons,
               "regions": s.ff_regions}
        return {**res, **scores(out)}

    routed(0.1, work / "warmup.gpkg")  # kernels, allocator
    rows: dict[str, dict] = {}
    fl = dense_floor(scene, model, work / "floor.gpkg")
    rows["floor"] = {**fl, **scores(work / "floor.gpkg"), "ff_cells": -1}
    for b in budgets or [1.0, 0.25, "auto"]:
        try:
            rows[str(b)] = routed(b, work / f"pred_{b}.gpkg")
        except Exception as err:  # noqa: BLE001 - e.g. a predict without --budget auto
            print(f"budget {b}: {err}")
    floor = rows["floor"]["seconds"]
    print(f"{'run':>8} {'FF cells':>9} {'regions':>8} {'wall s':>7} {'floor/run':>9} {'F1@0.5':>7} "
          f"{'mean IoU':>8} {'bnd IoU':>8} {'polygons':>8}")
    for name, r in rows.items():
        cells = "all" if r["ff_cells"] < 0 else str(r["ff_cells"])
        print(f"{name:>8} {cells:>9} {r.get('regions', '-'):>8} {r['seconds']:>7.1f} "
              f"{floor / r['seconds']:>8.2f}x {r['f1']:>7.3f} {r['miou']:>8.3f} {r['biou']:>8.3f} {r['polygons']:>8}")
    if "1.0" in rows:
        print(f"budget 1.0 / floor: {rows['1.0']['seconds'] / floor:.2f} (target <= 1.10)")
    for b in [k for k in rows if k not in ("floor", "1.0")]:
        if b in rows:
            r = rows[b]
            print(f"floor / routed {b}: {floor / r['seconds']:.2f}x (target >= 3x), F1 "
                  f"{100 * (r['f1'] - rows['floor']['f1']):+.1f} points (target >= -1); {r['routing']}")
    mo = floor_model_seconds(model, _side(scene))
    print(f"floor: pipeline / model-only {floor:.1f} s / {mo:.1f} s = {floor / mo:.2f} (target <= 1.3)")
    for b in ("0.25", "auto"):
        if b in rows:
            r = rows[b]
            print(f"routed {b}: pipeline / time in model calls {r['seconds']:.1f} s / {r['model_s']:.1f} s "
                  f"= {r['seconds'] / max(r['model_s'], 1e-9):.2f} (model seconds summed over threads)")


def _side(scene: Path) -> int:
    import rasterio

    with rasterio.open(scene) as src:
        return int(src.width)


def extras(work: Path) -> None:
    """Peak RSS on 1x and 4x the area, and onnxruntime vs torch, on 2048² scenes."""
    import geopandas as gpd

    from geoseg.evaluate import evaluate_frames
    from geoseg.predict import PredictConfig, predict

    scene, big = work / "sparse2048.tif", work / "sparse4096.tif"
    if not scene.exists():
        boxes_scene(scene, 2048, 0.2, seed=4)
    if not big.exists():
        boxes_scene(big, 4096, 0.2, seed=3)
    # --block 1024: both scenes have several blocks per thread, so what is compared is the
    # scene size, not how many blocks run at once (a 2048-px scene is one 2048-px block).
    r1 = run_child(str(scene), str(work / "run"), str(work / "pred1x.gpkg"), "0.25", "torch", "1024")
    r4 = run_child(str(big), str(work / "run"), str(work / "pred4x.gpkg"), "0.25", "torch", "1024")
    print(f"peak RSS (fresh process, --block 1024) 1x area {r1['peak_rss_mb']:.0f} MB, "
          f"4x area {r4['peak_rss_mb']:.0f} MB: ratio {r4['peak_rss_mb'] / r1['peak_rss_mb']:.2f} "
          "(target <= 1.1)")
    from geoseg.export import export_onnx

    export_onnx(work / "run", work / "export", overwrite=True)
    truth = gpd.read_file(scene.with_suffix(".gpkg"))

    def timed(model: Path, backend: str, out: Path) -> tuple[float, float]:
        t0 = time.perf_counter()
        predict([scene], model, out, PredictConfig(budget=0.25, backend=backend), overwrite=True, progress=False)
        return time.perf_counter() - t0, evaluate_frames(gpd.read_file(out), truth, iou=0.5)["f1"]

    timed(work / "export", "onnx", work / "warmup_onnx.gpkg")
    to, fo = timed(work / "export", "onnx", work / "pred_onnx.gpkg")
    tt, ft = timed(work / "run", "torch", work / "pred_torch.gpkg")
    print(f"onnxruntime vs torch (routed 0.25, 2048²): {to:.1f} s vs {tt:.1f} s = {tt / to:.2f}x "
          f"(target >= 1.0); F1 {fo:.3f} vs {ft:.3f}")


def phases(model: Path, scene: Path, work: Path, budget: float | str, warmup: bool = True) -> dict[str, Any]:
    """One predict (after a warm-up run) with each phase and model call timed, seconds summed over threads.

    Prints them and returns ``{"wall_s", "ff_cells", "regions", "seconds": {phase: s}}``; the
    timers are removed again before it returns.
    """
    import threading
    from collections import defaultdict

    import geoseg.predict.regularize as reg
    import geoseg.predict.stage as stage
    from geoseg.backends.torch_backend import TorchBackend
    from geoseg.predict import PredictConfig, predict

    spent: dict[str, float] = defaultdict(float)
    lock = threading.Lock()
    saved: list[tuple[Any, str, Any]] = []

    def timed(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)
        saved.append((owner, name, owner.__dict__[name]))

        def run(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    spent[label] += time.perf_counter() - t0
        setattr(owner, name, run)

    if warmup:
        predict([scene], model, work / "phases.gpkg", PredictConfig(budget=budget), overwrite=True, progress=False)
    for name in ("pv_block", "choose_cells", "ff_block", "instances_block"):
        timed(stage, name, name)
    timed(reg, "regularize_file", "regularize_file")
    timed(TorchBackend, "_pv", "pv_model")
    timed(TorchBackend, "_ff", "ff_model")
    try:
        t0 = time.perf_counter()
        s = predict([scene], model, work / "phases.gpkg", PredictConfig(budget=budget), overwrite=True,
                    progress=False)
        wall = time.perf_counter() - t0
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    print(f"predict --budget {budget}: wall {wall:.1f} s, FF on {s.ff_cells} cells in {s.ff_regions} regions; "
          "seconds per phase, summed over the Dask threads:", flush=True)
    labels = {"pv_block": "pv_block", "pv_model": "  of which PV model calls", "choose_cells": "choose_cells",
              "ff_block": "ff_block", "ff_model": "  of which FF model calls",
              "instances_block": "instances_block", "regularize_file": "regularize_file"}
    for key, label in labels.items():
        print(f"  {label:<28} {spent[key]:7.1f}", flush=True)
    return {"wall_s": wall, "ff_cells": s.ff_cells, "regions": s.ff_regions,
            "seconds": {key: spent[key] for key in labels}}


def memory_format(model: Path) -> None:
    """PV and FF calls of the torch backend on the CPU: channels-last (predict's) over contiguous NCHW."""
    import torch

    from geoseg.backends.torch_backend import TorchBackend

    be = TorchBackend(model, "cpu")
    rng = np.random.default_rng(0)
    m = be.meta
    c, hl = m.cell, m.tile_halo
    pv_side = 2048 // m.scale + 64  # a 2048-px block at 1/4 with its halo, as predict's PV calls on the CPU preset
    calls = {"PV, one 2048-px block at 1/4": (be._pv, (1, m.band_count, pv_side, pv_side)),
             "FF, 8 single cells with halo": (be._ff, (8, m.band_count, c + 2 * hl, c + 2 * hl)),
             "FF, 2 windows of 8x8 cells": (be._ff, (2, m.band_count, 8 * c + 2 * hl, 8 * c + 2 * hl))}

    def timed(fn: Any, x: np.ndarray) -> float:
        fn(x)
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t0)
        return best

    for what, (fn, shape) in calls.items():
        x = rng.standard_normal(shape, dtype=np.float32)
        be.channels_last = True
        be.model.to(memory_format=torch.channels_last)
        nhwc = timed(fn, x)
        be.channels_last = False
        be.model.to(memory_format=torch.contiguous_format)
        nchw = timed(fn, x)
        print(f"{what} {tuple(shape)}: contiguous {1000 * nchw:.0f} ms, channels-last {1000 * nhwc:.0f} ms: "
              f"{nchw / nhwc:.2f}x faster", flush=True)


def tta_costs(work: Path) -> None:
    """``--tta none|flip|d4`` at budget 1.0 on a 2048² scene: time ratios and F1, one run each."""
    import geopandas as gpd

    from geoseg.evaluate import evaluate_frames
    from geoseg.predict import PredictConfig, predict

    scene = work / "sparse2048.tif"
    if not scene.exists():
        boxes_scene(scene, 2048, 0.2, seed=4)
    truth = gpd.read_file(scene.with_suffix(".gpkg"))
    times: dict[str, float] = {}
    for tta in ("none", "none", "flip", "d4"):  # the first run warms up
        out = work / f"tta_{tta}.gpkg"
        t0 = time.perf_counter()
        predict([scene], work / "run", out, PredictConfig(budget=1.0, tta=tta), overwrite=True, progress=False)
        times[tta] = time.perf_counter() - t0
        f1 = evaluate_frames(gpd.read_file(out), truth, iou=0.5)["f1"]
        print(f"--tta {tta:>4}: {times[tta]:6.1f} s = {times[tta] / times['none']:.2f}x the run "
              f"without, F1@0.5 {f1:.3f}", flush=True)


if __name__ == "__main__":
    main()
