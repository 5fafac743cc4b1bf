"""Kampala block B on pixels that are not square on the ground: polygon F1 against its original pixels.

A scene in EPSG:4326 with equal steps in degrees has pixels ``cos(latitude)`` times as wide
as tall on the ground. This resamples block B (bilinear) to pixels ``--ratio`` times as
wide as tall over the same ground, predicts it and the original with one model, and
scores both against the OpenStreetMap truth inside the scene (``geoseg evaluate --clip``).
geoseg reads such a scene on square ground pixels (``geoseg.io.ground``); the gap left is
the bilinear resampling there and back.

    $ python bench/square_pixels.py --model outputs/demo/run    # after `make demo`
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO / "data" / "sample" / "kampala_blockB_z20.tif"
TRUTH = REPO / "data" / "sample" / "labels" / "buildings.gpkg"


def narrow_pixels(src_path: Path, out: Path, ratio: float) -> Path:
    """``src_path`` over the same ground with pixels ``ratio`` times as wide as tall (more columns)."""
    with rasterio.open(src_path) as src:
        width = int(round(src.width / ratio))
        data = src.read(out_shape=(src.count, src.height, width), resampling=Resampling.bilinear)
        mask = src.dataset_mask(out_shape=(src.height, width))
        profile = {**src.profile, "width": width, "transform": src.transform * Affine.scale(src.width / width, 1),
                   "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.write_mask(mask)
    return out


def f1(scene: Path, model: Path, work: Path) -> tuple[float, str]:
    """Polygon F1@0.5 of ``model`` on ``scene`` against the truth inside it, and predict's `read at` line."""
    geoseg = [sys.executable, "-c", "from geoseg.cli.main import cli; cli()"]
    out, js = work / f"{scene.stem}.gpkg", work / f"{scene.stem}.json"
    res = subprocess.run([*geoseg, "predict", str(scene), "--model", str(model), "--out", str(out), "--overwrite",
                          "--no-progress"], capture_output=True, text=True, check=True)
    read_at = next((ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("read at")), "read as stored")
    subprocess.run([*geoseg, "evaluate", str(out), str(TRUTH), "--scenes", str(scene), "--clip", "--json", str(js)],
                   capture_output=True, text=True, check=True)
    return float(json.loads(js.read_text())["f1"]), read_at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "outputs" / "demo" / "run")
    ap.add_argument("--ratio", type=float, default=0.6, help="pixel width over height on the ground")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="square-pixels-"))
    narrow = narrow_pixels(SCENE, work / "blockB_narrow.tif", args.ratio)
    with rasterio.open(narrow) as src:
        print(f"block B at {abs(src.transform.a):.4g} x {abs(src.transform.e):.4g} m pixels "
              f"(EPSG:3857 metres; width / height {np.float64(src.transform.a / -src.transform.e):.2f})")
    base, _ = f1(SCENE, args.model, work)
    got, line = f1(narrow, args.model, work)
    print(f"F1@0.5 original pixels {base:.3f}; narrow pixels {got:.3f} ({got - base:+.3f}); predict: {line}")


if __name__ == "__main__":
    main()
