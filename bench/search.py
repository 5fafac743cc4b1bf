"""Benchmark of `geoseg search`: find one kind of object from three examples of it.

Generated scenes hold round tanks and rectangular roofs of similar size and brightness
(:mod:`geoseg.search.synthetic`). Train scenes are tiled with ``--class-field kind`` and a
reference detector is trained with a config (``configs/search-cpu.yaml`` by default);
then, on a separate test scene, three examples of one kind are drawn and
``geoseg search`` runs. Printed and written as JSON: recall and precision of that kind at
IoU 0.5, the share of the other kind returned (matched at IoU 0.5 by a returned box),
training minutes, for each kind as the searched one.

    .venv/bin/python bench/search.py --out outputs/bench-search            # the documented run
    .venv/bin/python bench/search.py --out /tmp/bs --epochs 2 --quick       # a smoke run
    .venv/bin/python bench/search.py --out outputs/bench-search --reuse --min-similarity -1
                                        # search again with the trained run, without the similarity gate
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import geopandas as gpd  # noqa: E402
import pandas as pd  # noqa: E402

from geoseg.search.synthetic import draw_scene, pick_examples, score  # noqa: E402

GEOSEG = [sys.executable, "-m", "geoseg"]
#: torch threads of the geoseg processes (--threads); on a shared machine 1 is fastest
THREADS = 1


def _run(args: list[str]) -> float:
    t0 = time.perf_counter()
    print("$ geoseg " + " ".join(args[3:]), flush=True)
    subprocess.run(args, check=True, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="configs/search-cpu.yaml")
    ap.add_argument("--epochs", type=int, help="override the config's epochs")
    ap.add_argument("--train-scenes", type=int, default=8)
    ap.add_argument("--min-score", type=float, default=0.3)
    ap.add_argument("--min-similarity", default="auto", help="auto (calibrated in training), -1 (none) or a cosine")
    ap.add_argument("--reuse", action="store_true", help="reuse OUT's scenes, tiles and trained run")
    ap.add_argument("--quick", action="store_true", help="one small test scene")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the geoseg processes")
    a = ap.parse_args()
    global THREADS
    THREADS = a.threads
    out = a.out.resolve()
    scenes = out / "scenes"
    train = [draw_scene(scenes / f"train{i}.tif", 512, 24, seed=i, origin=(500000.0 + 600 * i, 100000.0))
             for i in range(a.train_scenes)]
    labels = gpd.GeoDataFrame(pd.concat([s.objects for s in train], ignore_index=True), crs=train[0].objects.crs)
    labels.to_file(out / "labels.gpkg")
    size, n = (512, 24) if a.quick else (1024, 80)
    test = draw_scene(out / "test" / "test.tif", size, n, seed=1234, origin=(510000.0, 100000.0))
    train_s = float("nan")
    if not (a.reuse and (out / "run" / "checkpoints" / "best.pt").is_file()):
        _run(GEOSEG + ["tile", str(scenes), "--labels", str(out / "labels.gpkg"), "--class-field", "kind",
                       "--size", "256", "--overlap", "32", "--val-scenes", f"train{a.train_scenes - 1}",
                       "--out", str(out / "patches"), "--overwrite"])
        train_args = ["train", a.config, "--patches", str(out / "patches"), "--out", str(out / "run"),
                      "--overwrite"]
        if a.epochs:
            train_args += ["--epochs", str(a.epochs)]
        train_s = _run(GEOSEG + train_args)
    report: dict[str, object] = {"train_minutes": train_s / 60, "config": a.config, "threads": a.threads,
                                 "test_scene": f"{size}x{size}, {n} objects", "min_score": a.min_score,
                                 "min_similarity": a.min_similarity}
    for kind in ("tank", "roof"):
        ex = pick_examples(test, kind, 3).to_crs("EPSG:4326")  # examples in another CRS than the scene
        ex.to_file(out / f"{kind}_examples.gpkg")
        found_path = out / f"{kind}_found.gpkg"
        search_s = _run(GEOSEG + ["search", str(test.path), "--examples", str(out / f"{kind}_examples.gpkg"),
                                  "--model", str(out / "run"), "--out", str(found_path), "--min-score",
                                  str(a.min_score), "--min-similarity", a.min_similarity, "--block", "512",
                                  "--overwrite"])
        res = score(gpd.read_file(found_path), test.objects, kind)
        res["search_seconds"] = search_s
        report[kind] = res
        print(kind, json.dumps(res), flush=True)
    name = "report.json" if a.min_similarity == "auto" else f"report_min_similarity_{a.min_similarity}.json"
    (out / name).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
