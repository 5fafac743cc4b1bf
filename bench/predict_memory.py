"""Peak memory of `geoseg predict` on a 5000² and a 20000² scene: bounded by the block, not the scene?

One run:

1. trains the CPU preset's model briefly on generated boxes (as bench/predict.py does;
   ``--reuse`` keeps the model of ``--workdir``);
2. writes two synthetic scenes, tiled GeoTIFFs (512-px tiles, deflate) of the same content
   per area: dark noisy ground, bright building-like boxes in ``--occupied`` of the 64-px
   cells (mostly empty, as most of a large scene is); every 512-px tile repeats the same
   ground, so writing 20000² takes a minute, not ten;
3. predicts each scene in a fresh process (the default threads scheduler, ``--block``,
   ``--budget``) and prints its peak RSS (VmHWM), wall time, blocks and polygons, and the
   ratio of the peaks (target: the 20000² scene within 1.1x of the 5000² one). A sampler
   thread in each child records RSS every 0.5 s (``--profile`` prints the time line), to
   tell what grows with the scene; the children inherit the environment, so
   ``MALLOC_MMAP_THRESHOLD_=131072 python bench/predict_memory.py`` measures glibc with a
   fixed mmap threshold (docs/benchmarks.md).

    $ nice python bench/predict_memory.py                 # ~25 min on 2 cores (15 of them training)
    $ python bench/predict_memory.py --small 2000 --big 6000   # a quick look
    $ python bench/predict_memory.py --workdir W --reuse  # keep W's model and scenes
    $ python bench/predict_memory.py --workdir W --reuse --phases  # each block task's peak, one thread
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
BENCH = Path(__file__).resolve().parent
TILE = 512


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmHWM: peak RSS; VmRSS: now) in MB; NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def sparse_scene(path: Path, side: int, occupied: float, seed: int) -> int:
    """A side x side 3-band uint8 tiled GeoTIFF: noisy ground, boxes in ``occupied`` of the 64-px cells.

    Returns:
        The number of boxes.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    ground = (60 + rng.integers(0, 25, (3, TILE, TILE))).astype(np.uint8)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32636", "transform": from_origin(500000, 4000000, 0.3, 0.3), "tiled": True,
               "blockxsize": TILE, "blockysize": TILE, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    n = 0
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, TILE):
            for c in range(0, side, TILE):
                h, w = min(TILE, side - r), min(TILE, side - c)
                img = ground[:, :h, :w].copy()
                for cr in range(0, h - 63, 64):
                    for cc in range(0, w - 63, 64):
                        if rng.random() < occupied:
                            bw, bh = rng.integers(14, 36, 2)
                            r0, c0 = cr + rng.integers(0, 64 - bh), cc + rng.integers(0, 64 - bw)
                            img[:, r0:r0 + bh, c0:c0 + bw] = 190 + rng.integers(0, 30)
                            n += 1
                dst.write(img, window=Window(c, r, w, h))
    return n


def child(scene: str, model: str, out: str, budget: str, block: str) -> None:
    """Predict in this fresh process; print one JSON line: peak RSS, time, blocks, polygons, RSS samples."""
    from geoseg.predict import PredictConfig, predict

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((round(time.perf_counter() - t0, 1), round(_status_mb("VmRSS"))))

    threading.Thread(target=sample, daemon=True).start()
    base = _status_mb("VmRSS")
    s = predict([scene], model, out, PredictConfig(budget=float(budget), block=int(block)),
                overwrite=True, progress=False)
    stop.set()
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": _status_mb("VmHWM"),
                      "rss_before_mb": base, "rss_after_mb": _status_mb("VmRSS"),
                      "blocks": s.blocks, "ff_cells": s.ff_cells, "cells": s.cells,
                      "polygons": s.polygons, "samples": samples}))


def run_child(scene: Path, model: Path, out: Path, budget: float, block: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", str(scene), str(model), str(out),
                          str(budget), str(block)], check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def phases_child(scene: str, model: str, budget: str, what: str) -> None:
    """Predict with the sync scheduler; print the peak RSS of each block task (``what="tasks"``)
    or model call (``"calls"``) over the RSS before it (one kind per process: a reset of the peak
    inside a task would hide the task's own)."""
    import geoseg.predict.stage as stage
    from geoseg.backends.torch_backend import TorchBackend
    from geoseg.predict import PredictConfig, predict

    peaks: dict[str, list[float]] = {}
    overall = 0.0  # the run's peak: every reset starts from the RSS of that moment

    def measured(name: str, fn):
        def run(*args, **kwargs):
            nonlocal overall
            overall = max(overall, _status_mb("VmHWM"))
            Path("/proc/self/clear_refs").write_text("5")
            before = _status_mb("VmRSS")
            out = fn(*args, **kwargs)
            peak = _status_mb("VmHWM")
            overall = max(overall, peak)
            peaks.setdefault(name, []).append(peak - before)
            return out
        return run

    if what == "tasks":
        for name in ("pv_block", "ff_block", "instances_block"):
            setattr(stage, name, measured(name, getattr(stage, name)))
    else:
        TorchBackend._ff = measured("one FF call", TorchBackend._ff)  # type: ignore[method-assign]
        TorchBackend._pv = measured("one PV call", TorchBackend._pv)  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        predict([scene], model, Path(tmp) / "p.gpkg", PredictConfig(budget=float(budget)), scheduler="sync",
                overwrite=True, progress=False)
    print(f"{'task':>16} {'runs':>5} {'max MB':>7} {'median MB':>10}")
    for name, v in peaks.items():
        print(f"{name:>16} {len(v):>5} {max(v):>7.0f} {float(np.median(v)):>10.0f}")
    if what == "tasks":
        print(f"peak RSS of the run: {max(overall, _status_mb('VmHWM')):.0f} MB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=5000, help="side of the small scene (px)")
    ap.add_argument("--big", type=int, default=20000, help="side of the big scene (px)")
    ap.add_argument("--occupied", type=float, default=0.03, help="share of 64-px cells holding a building")
    ap.add_argument("--budget", type=float, default=0.05, help="predict --budget (share of cells for FF)")
    ap.add_argument("--block", type=int, default=2048, help="predict --block")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the quick training")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep the model and scenes of --workdir")
    ap.add_argument("--profile", action="store_true", help="print each run's RSS time line")
    ap.add_argument("--phases", action="store_true",
                    help="only the peak memory of each block task (sync scheduler), per scene")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--phases-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.phases_child:
        phases_child(*args.phases_child)
        return
    sys.path.insert(0, str(BENCH))
    import predict as bench_predict  # bench/predict.py: the quick model

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoseg-bench-predict-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    model = work / "run"
    if not (args.reuse and (model / "checkpoints" / "best.pt").exists()):
        bench_predict.prepare_model(work, args.epochs)
    if args.phases:  # one fresh process per scene
        for side in (args.small, args.big):
            scene = work / f"sparse{side}.tif"
            if not scene.exists():
                sparse_scene(scene, side, args.occupied, seed=side)
            for what in ("tasks", "calls"):
                print(f"{side}², one thread, {what}:", flush=True)
                subprocess.run([sys.executable, __file__, "--phases-child", str(scene), str(model),
                                str(args.budget), what], check=True)
        return
    rows = {}
    for side in (args.small, args.big):
        scene = work / f"sparse{side}.tif"
        if not (args.reuse and scene.exists()):
            t0 = time.perf_counter()
            n = sparse_scene(scene, side, args.occupied, seed=side)
            print(f"wrote {side}² ({n} boxes, {scene.stat().st_size / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        r = run_child(scene, model, work / f"pred{side}.gpkg", args.budget, args.block)
        rows[side] = r
        print(f"{side}²: peak RSS {r['peak_rss_mb']:.0f} MB (after imports {r['rss_before_mb']:.0f} MB, "
              f"at the end {r['rss_after_mb']:.0f} MB), {r['seconds']:.0f} s, {r['blocks']} blocks, "
              f"FF {r['ff_cells']} of {r['cells']} cells, {r['polygons']} polygons", flush=True)
        if args.profile:
            print("  RSS time line (s, MB):", " ".join(f"{t}:{m}" for t, m in r["samples"]), flush=True)
    small, big = rows[args.small], rows[args.big]
    area = (args.big / args.small) ** 2
    print(f"\n{'scene':>8} {'blocks':>7} {'polygons':>9} {'wall s':>7} {'peak RSS MB':>12}")
    for side, r in rows.items():
        print(f"{str(side) + '²':>8} {r['blocks']:>7} {r['polygons']:>9} {r['seconds']:>7.0f} "
              f"{r['peak_rss_mb']:>12.0f}")
    print(f"peak RSS {args.big}² / {args.small}² ({area:.0f}x the area): "
          f"{big['peak_rss_mb'] / small['peak_rss_mb']:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
