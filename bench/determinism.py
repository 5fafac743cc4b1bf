"""Polygons of predict on a local threaded scheduler vs a 2-process LocalCluster vs torch 1 thread.

Prints how many polygons differ in geometry and in score between the runs (docs/errors.md).
Uses a model directory given as the first argument, or trains the tests' tiny model.

    python bench/determinism.py [RUN_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import geopandas as gpd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def compare(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> tuple[int, int, float]:
    """(geometries only in one, scores that differ, largest score difference)."""
    a, b = a.assign(k=a.geometry.to_wkb()), b.assign(k=b.geometry.to_wkb())
    both = a.merge(b, on="k")
    diff = (both.score_x - both.score_y).abs()
    return len(a) + len(b) - 2 * len(both), int((diff > 0).sum()), float(diff.max() if len(diff) else 0)


def main() -> None:
    import torch
    from conftest import REPO, bright_boxes_scene, grid_boxes, labels_for
    from distributed import LocalCluster

    from geoseg.config import load_config
    from geoseg.predict import PredictConfig, predict
    from geoseg.tile import TileConfig, tile
    from geoseg.train import TrainConfig, train

    tmp = Path(tempfile.mkdtemp(prefix="geoseg-det-"))
    if len(sys.argv) > 1:
        run = Path(sys.argv[1])
    else:  # the tests' tiny model
        boxes = grid_boxes((64, 64))
        bright_boxes_scene(tmp / "train.tif", (64, 64), boxes, seed=0)
        bright_boxes_scene(tmp / "val.tif", (64, 64), boxes, seed=1)
        labels_for(tmp / "train.tif", tmp / "l.gpkg", boxes)
        tile([tmp / "train.tif", tmp / "val.tif"], tmp / "l.gpkg", tmp / "p",
             TileConfig(size=32, overlap=0, val_fraction=0.0, val_scenes=("val*",)), scheduler="sync")
        cfg = load_config(TrainConfig, REPO / "tests" / "conf" / "tiny.yaml",
                          {"data": {"samples_per_epoch": 32}, "val": {"every": 8}})
        run = tmp / "run"
        train(cfg, tmp / "p", run, epochs=8)
    scene = bright_boxes_scene(tmp / "big.tif", (1024, 1024), grid_boxes((1024, 1024), seed=5), seed=2)
    pcfg = PredictConfig(block=128, watershed_halo=32, simplify=0.5, min_area=1.0, budget=0.5)
    out = {}
    predict([scene], run, tmp / "threads.gpkg", pcfg, progress=False)
    out["threads"] = gpd.read_file(tmp / "threads.gpkg")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        predict([scene], run, tmp / "cluster.gpkg", pcfg, scheduler=cl.scheduler_address, progress=False)
    out["cluster"] = gpd.read_file(tmp / "cluster.gpkg")
    torch.set_num_threads(1)
    predict([scene], run, tmp / "one.gpkg", pcfg, scheduler="sync", progress=False)
    out["torch 1 thread"] = gpd.read_file(tmp / "one.gpkg")
    print(f"polygons (threads): {len(out['threads'])}")
    for name in ("cluster", "torch 1 thread"):
        geoms, scores, worst = compare(out["threads"], out[name])
        print(f"threads vs {name}: {geoms} geometries differ, {scores} scores differ (max {worst:.2g})")


if __name__ == "__main__":
    main()
