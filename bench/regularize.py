"""Outline regularization against the truth: pixel-traced vs squared polygons, per scene.

Issue #11's target: with `--regularize`, median corners per building <= 8 and
rectangularity >= 0.85 on Kampala block B, with F1 not lower than without. One
`geoseg predict --no-regularize` per scene (and per `--tta`), then the same polygons
squared in-process by :func:`geoseg.predict.regularize.regularize` (what `--regularize`
runs per block) and both scored like `geoseg evaluate --clip` (truth clipped to the scene).
Besides block B, the other zooms of block B and block A (its training scene) from the
development data beside the clone, when present, give more polygon sets: whether squaring
gains or loses a match at IoU 0.5 is a matter of a few borderline pairs per scene.

    $ geoseg run pipelines/kampala.yaml        # the demo's model: outputs/demo/run
    $ python bench/regularize.py outputs/demo/run [--tta none,flip,d4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import geopandas as gpd  # noqa: E402

from geoseg.aoi import restrict  # noqa: E402
from geoseg.evaluate import evaluate_frames  # noqa: E402
from geoseg.predict.regularize import regularize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "kampala_oam_buildings" / "scenes"
TRUTH = REPO / "data" / "sample" / "labels" / "buildings.gpkg"
SCENES = [REPO / "data" / "sample" / "kampala_blockB_z20.tif", SHARED / "kampala_blockB_z19.tif",
          SHARED / "kampala_blockB_z21.tif", REPO / "data" / "sample" / "kampala_blockA_z20.tif"]
KEYS = ("tp", "f1", "vertices", "rectangularity", "mean_iou")


def score(pred: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, scene: Path) -> dict[str, float]:
    p, t, _ = restrict(pred, truth, scenes=[scene], clip=True)
    report = evaluate_frames(p, t)
    return {k: float(report[k]) for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--tta", default="none", help="comma-separated --tta values to predict with")
    ap.add_argument("--budget", default="1.0")
    a = ap.parse_args()
    truth = gpd.read_file(TRUTH)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scene in (s for s in SCENES if s.exists()):
            for tta in a.tta.split(","):
                out = Path(tmp) / f"{scene.stem}_{tta}.gpkg"
                subprocess.run([sys.executable, "-m", "geoseg", "predict", str(scene), "--model", str(a.model),
                                "--budget", a.budget, "--tta", tta, "--no-regularize", "--out", str(out)],
                               check=True, capture_output=True)
                raw = gpd.read_file(out)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    before, after = score(raw, truth, scene), score(regularize(raw), truth, scene)
                rows.append((scene.stem, tta, before, after))
                print(f"{scene.stem:20s} {tta:5s} traced: tp {before['tp']:.0f} F1 {before['f1']:.3f} "
                      f"corners {before['vertices']:.1f} rect {before['rectangularity']:.3f} | squared: "
                      f"tp {after['tp'] - before['tp']:+.0f} F1 {after['f1']:.3f} corners {after['vertices']:.1f} "
                      f"rect {after['rectangularity']:.3f} mean IoU {before['mean_iou']:.3f} -> "
                      f"{after['mean_iou']:.3f}", flush=True)
    print(f"matches gained by squaring, over {len(rows)} polygon sets: "
          f"{sum(r[3]['tp'] - r[2]['tp'] for r in rows):+.0f}")


if __name__ == "__main__":
    main()
