"""A model at a scale it was not trained at: predict a coarser copy of a scene, with and without resampling.

Issue #11's target: a model trained on the Kampala sample (0.15 m) predicting a 0.5 m scene
gets within 10 F1 points of its F1 at native resolution. This script makes the coarser
scene itself (the test scene averaged down to ``--gsd`` metres per pixel, same CRS and
footprint, so the same labels are its truth), then runs `geoseg predict` and
`geoseg evaluate --clip` (truth clipped to the scene, as the demo does) for:

- ``native scene``: the scene as it is (the reference F1);
- ``coarse, --gsd model``: the coarse scene read at the model's GSD (the default);
- ``coarse, --gsd native``: the coarse scene as it is (what predict did before GSD awareness);

and, with ``--tta``, the native scene with ``--tta flip`` and ``--tta d4`` (their cost and gain).
Every predict runs in its own process; seconds are wall time of the command.

    $ geoseg run pipelines/kampala.yaml        # the demo's model: outputs/demo/run
    $ python bench/gsd.py outputs/demo/run --gsd 0.5 --tta
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]


def coarse_copy(scene: Path, gsd: float, out: Path) -> float:
    """``scene`` averaged to ``gsd`` metres per pixel (same CRS and bounds); returns the factor."""
    import rasterio
    from rasterio.enums import Resampling

    from geoseg.io.rasters import inspect_scene

    info = inspect_scene(scene)
    factor = gsd / info.gsd
    with rasterio.open(scene) as src:
        h, w = round(src.height / factor), round(src.width / factor)
        data = src.read(out_shape=(src.count, h, w), resampling=Resampling.average)
        profile = {**src.profile, "height": h, "width": w,
                   "transform": src.transform * src.transform.scale(src.width / w, src.height / h),
                   "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
        profile.pop("photometric", None)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(data)
            if src.nodata is None and src.count in (3, 4):
                dst.write_mask(src.read_masks(1, out_shape=(h, w), resampling=Resampling.nearest))
    return factor


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - t0


def score(pred: Path, truth: Path, scene: Path, work: Path) -> dict[str, float]:
    out = work / f"{pred.stem}.json"
    run([sys.executable, "-m", "geoseg", "evaluate", str(pred), str(truth), "--scenes", str(scene), "--clip",
         "--json", str(out)])
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="run directory (or .pt) of a model trained at the scene's GSD")
    ap.add_argument("--scene", type=Path, default=REPO / "data/sample/kampala_blockB_z20.tif")
    ap.add_argument("--truth", type=Path, default=REPO / "data/sample/labels/buildings.gpkg")
    ap.add_argument("--gsd", type=float, default=0.5, help="GSD of the coarse copy, metres")
    ap.add_argument("--tta", action="store_true", help="also --tta flip and d4 on the native scene")
    ap.add_argument("--predict-args", default="--budget 1.0", help="extra `geoseg predict` options")
    ap.add_argument("--work", type=Path, help="keep the files here (default: a temp folder)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="geoseg-gsd-"))
    work.mkdir(parents=True, exist_ok=True)
    coarse = work / f"{args.scene.stem}_{args.gsd:g}m.tif"
    factor = coarse_copy(args.scene, args.gsd, coarse)
    print(f"{coarse.name}: {factor:.2f}x coarser than {args.scene.name}", flush=True)
    cases = [("native scene", args.scene, []),
             (f"{args.gsd:g} m scene, --gsd model", coarse, ["--gsd", "model"]),
             (f"{args.gsd:g} m scene, --gsd native", coarse, ["--gsd", "native"])]
    if args.tta:
        cases += [("native scene, --tta flip", args.scene, ["--tta", "flip"]),
                  ("native scene, --tta d4", args.scene, ["--tta", "d4"])]
    rows = []
    for i, (name, scene, extra) in enumerate(cases):
        pred = work / f"pred{i}.gpkg"
        seconds = run([sys.executable, "-m", "geoseg", "predict", str(scene), "--model", str(args.run),
                       "--out", str(pred), "--overwrite", "--no-progress", *args.predict_args.split(), *extra])
        ev = score(pred, args.truth, scene, work)
        rows.append((name, ev, seconds))
        print(f"{name:<32} F1 {ev['f1']:.3f}  P {ev['precision']:.3f}  R {ev['recall']:.3f}  "
              f"{seconds:6.1f} s", flush=True)
    base = rows[0][1]["f1"]
    print("\n| case | F1@0.5 | precision | recall | predict s | F1 vs native |\n| --- | --- | --- | --- | --- | --- |")
    for name, ev, seconds in rows:
        print(f"| {name} | {ev['f1']:.3f} | {ev['precision']:.3f} | {ev['recall']:.3f} | {seconds:.1f} | "
              f"{100 * (ev['f1'] - base):+.1f} pt |")


if __name__ == "__main__":
    main()
