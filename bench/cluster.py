"""`geoseg tile` and `geoseg predict` on a distributed.LocalCluster of 1 vs 2 worker processes.

One run, all numbers from it (only ratios mean much on a shared machine):

1. generates ``--scenes`` synthetic scenes of ``--side`` px with building-like boxes and their
   labels (bench/predict.py's scenes);
2. a model: ``--model DIR`` (a run directory), else the CPU preset trained for a few steps
   (random-like weights: the timing, not the accuracy, is measured);
3. for each stage (tile, predict) and each cluster size (1, 2 worker processes of one thread
   each, a fresh ``LocalCluster`` per run so that each worker's peak is that stage's): wall
   time of the stage's call (the cluster's start and the workers' imports not counted;
   predict's model load on each worker counted), Dask tasks by phase, the seconds each
   worker spent computing (task stream), and each worker's peak RSS (VmHWM, asked with
   ``client.run``);
4. prints a table: wall s, the 1-worker / 2-worker speed-up, tasks per scene, input bytes per
   task, peak RSS per worker.

    $ python bench/cluster.py                 # 4 scenes of 2048², ~10 min on 2 cores
    $ python bench/cluster.py --quick         # 4 scenes of 1024², a short run
    $ python bench/cluster.py --model runs/b1 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _vmhwm_mb() -> float:
    """This process's peak RSS in MB (runs on each worker through client.run)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _warm(stage: str) -> None:
    """Import what the stage's tasks import (rasterio; torch for predict), on a worker, before the timing."""
    import importlib

    importlib.import_module("geoseg.tile.stage" if stage == "tile" else "geoseg.predict.phases")


def _tasks() -> dict[str, float]:
    """Dask tasks finished so far, by phase (the client counts them: geoseg.metrics)."""
    from geoseg import metrics

    out: dict[str, float] = {}
    for fam in metrics.REGISTRY.collect():
        for s in fam.samples:
            if s.name == "geoseg_tasks_total":
                out[s.labels["phase"]] = out.get(s.labels["phase"], 0.0) + s.value
    return out


def quick_model(work: Path, patches: Path) -> Path:
    """The CPU preset trained for a few steps: the real network's cost, not its accuracy."""
    from geoseg.config import load_config
    from geoseg.train import TrainConfig, train

    cfg = load_config(TrainConfig, REPO / "configs" / "buildings-cpu.yaml",
                      {"data": {"samples_per_epoch": 8}, "val": {"every": 1}})
    t0 = time.perf_counter()
    train(cfg, patches, work / "run", epochs=1, overwrite=True, progress=False)
    print(f"model: the CPU preset after 2 steps ({time.perf_counter() - t0:.0f} s)", flush=True)
    return work / "run"


def run_stage(stage: str, workers: int, scenes: list[Path], labels: Path, model: Path | None,
              work: Path, budget: float) -> dict:
    """One stage on a fresh LocalCluster of ``workers`` processes of one thread each."""
    from distributed import Client, LocalCluster, get_task_stream

    from geoseg.pipeline.scheduler import KeptEnviron
    from geoseg.predict import PredictConfig, predict
    from geoseg.tile import TileConfig, tile

    env = KeptEnviron()  # the Nanny leaves OMP_NUM_THREADS=1 etc. in this process's environment
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        client.run(_warm, stage)
        before = _tasks()
        t0 = time.perf_counter()
        with get_task_stream(client) as stream:
            if stage == "tile":
                tile(scenes, labels, work / f"patches_{workers}", TileConfig(), scheduler=client,
                     overwrite=True, progress=False)
            else:
                assert model is not None
                predict(scenes, model, work / f"pred_{workers}.gpkg", PredictConfig(budget=budget),
                        scheduler=client, overwrite=True, progress=False)
        seconds = time.perf_counter() - t0
        busy: dict[str, float] = {}  # seconds each worker spent computing tasks
        for rec in stream.data:
            for ss in rec.get("startstops", ()):
                if ss.get("action") == "compute":
                    busy[rec["worker"]] = busy.get(rec["worker"], 0.0) + ss["stop"] - ss["start"]
        rss = sorted(client.run(_vmhwm_mb).values())
    env.close()
    after = _tasks()
    tasks = {k: after[k] - before.get(k, 0.0) for k in after if after[k] > before.get(k, 0.0)}
    return {"seconds": seconds, "rss_mb": rss, "tasks": tasks, "busy_s": sorted(busy.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4, help="number of scenes")
    ap.add_argument("--side", type=int, default=2048, help="side of each scene (px)")
    ap.add_argument("--quick", action="store_true", help="scenes of 1024² (a short run)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes to compare")
    ap.add_argument("--stages", nargs="+", default=["tile", "predict"], choices=["tile", "predict"])
    ap.add_argument("--model", type=Path, default=None, help="a run directory (default: a quick model)")
    ap.add_argument("--budget", type=float, default=0.25, help="predict --budget")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(BENCH))
    import predict as bench_predict  # bench/predict.py: scenes of boxes, chips

    side = 1024 if args.quick else args.side
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoseg-bench-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}; {args.scenes} scenes of {side}², {os.cpu_count()} CPU cores", flush=True)
    scenes = [work / f"scene{i}.tif" for i in range(args.scenes)]
    import geopandas as gpd
    import pandas as pd

    frames = []
    for i, s in enumerate(scenes):
        lab, _ = bench_predict.boxes_scene(s, side, 0.2, seed=10 + i)
        frames.append(gpd.read_file(lab))
    labels = work / "labels.gpkg"
    gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs).to_file(labels)
    model = args.model
    if "predict" in args.stages and model is None:
        from geoseg.tile import TileConfig, tile

        tile(scenes[:1], labels, work / "train_patches", TileConfig(val_fraction=0.0), overwrite=True,
             progress=False)
        model = quick_model(work, work / "train_patches")
    rows = []
    for stage in args.stages:
        for n in args.workers:
            r = run_stage(stage, n, scenes, labels, model, work, args.budget)
            rows.append((stage, n, r))
            print(f"{stage} on {n} worker(s): {r['seconds']:.1f} s, tasks {r['tasks']}, "
                  f"busy s per worker {[round(b, 1) for b in r['busy_s']]}, "
                  f"peak RSS per worker {[round(m) for m in r['rss_mb']]} MB", flush=True)
    raw = side * side * 3  # uint8, 3 bands
    print(f"\n{'stage':>8} {'workers':>7} {'wall s':>7} {'speed-up':>8} {'tasks/scene':>11} "
          f"{'KiB in/task':>11} {'peak RSS/worker MB':>19}")
    for stage, n, r in rows:
        base = next(x for s, k, x in rows if s == stage and k == args.workers[0])
        ntasks = sum(r["tasks"].values())
        print(f"{stage:>8} {n:>7} {r['seconds']:>7.1f} {base['seconds'] / r['seconds']:>7.2f}x "
              f"{ntasks / args.scenes:>11.1f} {raw * args.scenes / max(ntasks, 1) / 1024:>11.0f} "
              f"{' '.join(str(round(m)) for m in r['rss_mb']):>19}")
    for stage, _, r in rows[:: len(args.workers)]:
        print(f"{stage} tasks by phase: {r['tasks']}")


if __name__ == "__main__":
    main()
