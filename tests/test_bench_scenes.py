"""The benchmarks' generated scenes: each on its own ground, its labels on its own roofs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import geopandas as gpd
import rasterio
import shapely

REPO = Path(__file__).resolve().parents[1]


def _bench_predict():
    spec = importlib.util.spec_from_file_location("bench_predict", REPO / "bench" / "predict.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_predict", module)
    spec.loader.exec_module(module)
    return module


def test_generated_scenes_of_two_seeds_do_not_share_ground(tmp_path: Path) -> None:
    """They did: tiled with one labels file, each scene's chips got the other's roofs as labels."""
    bench = _bench_predict()
    outlines = []
    for seed in (0, 1):
        labels, _ = bench.boxes_scene(tmp_path / f"s{seed}.tif", 256, 0.3, seed=seed)
        with rasterio.open(tmp_path / f"s{seed}.tif") as src:
            outline = shapely.box(*src.bounds)
        roofs = gpd.read_file(labels)
        assert len(roofs) and roofs.geometry.within(outline).all()  # the labels lie on their scene
        outlines.append(outline)
    assert not outlines[0].intersects(outlines[1])
