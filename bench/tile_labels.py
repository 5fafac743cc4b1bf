"""Benchmark of `geoseg tile` and `geoseg evaluate --clip` with a country's labels for one small scene.

Prints, measured in this one run (only the ratio counts): the wall time and peak RSS of
`geoseg tile` with a labels file of N polygons of which a few hundred lie on the scene
(the rest spread over 100 km around it), against the baseline a user would otherwise run:
the same tile with the labels clipped to the scene first (what ``ogr2ogr -spat`` gives);
then the same for `geoseg evaluate --clip` with that file as the truth (the predictions:
the scene's own labels). Each command runs in a fresh process.

    $ python bench/tile_labels.py                 # 500 000 labels
    $ python bench/tile_labels.py --labels 50000  # quick run
    $ python bench/tile_labels.py --spread        # two scenes 125 km apart, at the file's corners
    $ python bench/tile_labels.py --parquet       # the country as GeoParquet, as Overture ships it

``--parquet``: the country's file is GeoParquet sorted in space (Hilbert order) in row groups
of 50 000, with a bbox covering (GeoParquet 1.1: Overture's), and the same without one (read
whole: what geoseg did with any GeoParquet before its covering was read).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `geoseg tile` in a fresh process."""
    code = ("import resource, sys; from geoseg.cli.main import cli\n"
            "try:\n    cli.main(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    rss = float(next(ln for ln in out.splitlines() if ln.startswith("RSS")).split()[1])
    return time.perf_counter() - t0, rss


def make(root: Path, labels: int, spread: bool = False) -> None:
    """The scene(s), their labels (``near.gpkg``) and the country's (``country.gpkg``), in ``root``.

    ``spread``: a second scene, near the opposite corner of the country's extent from the first.
    """
    import geopandas as gpd
    import pandas as pd
    import shapely
    from conftest import bright_boxes_scene, grid_boxes, labels_for
    from rasterio.transform import from_origin

    (root / "s").mkdir()
    boxes = grid_boxes((512, 512), step=20)
    origins = [(402000.0, -8000.0 + 256), (498000.0 - 256, 88000.0)] if spread else [(450000.0, 40000.0)]
    parts = []
    for k, (x0, y0) in enumerate(origins):
        scene = bright_boxes_scene(root / "s" / f"scene{k}.tif", (512, 512), boxes,
                                   transform=from_origin(x0, y0, 0.5, 0.5))
        parts.append(gpd.read_file(labels_for(scene, root / f"near{k}.gpkg", boxes, crs="EPSG:32636")))
    near = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs="EPSG:32636")
    near.to_file(root / "near.gpkg")
    rng = np.random.default_rng(0)
    n = labels - len(near)
    x, y = rng.uniform(400000, 500000, n), rng.uniform(-10000, 90000, n)
    far = shapely.box(x, y, x + 8, y + 10)
    for p in parts:
        far = far[~shapely.intersects(far, shapely.box(*p.total_bounds).buffer(500))]
    country = gpd.GeoDataFrame({"class": ["building"] * (len(far) + len(near))},
                               geometry=np.concatenate([far, near.geometry.to_numpy()]), crs="EPSG:32636")
    country.to_file(root / "country.gpkg")
    country = country.iloc[np.argsort(country.geometry.hilbert_distance(), kind="stable")]
    for name, covering in (("country.parquet", True), ("nocover.parquet", False)):
        country.to_parquet(root / name, write_covering_bbox=covering, row_group_size=50_000)
    print(f"labels: {len(country)} in the file, {len(near)} on the {len(parts)} scene(s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--labels", type=int, default=500_000, help="polygons in the country file")
    ap.add_argument("--spread", action="store_true", help="two scenes at opposite corners of the country")
    ap.add_argument("--parquet", action="store_true", help="the country as GeoParquet, with and without a covering")
    ap.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # the data, in a child: RSS stays the tiles'
    a = ap.parse_args()
    if a.make is not None:
        make(a.make, a.labels, a.spread)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, __file__, "--make", str(root), "--labels", str(a.labels),
                        *(["--spread"] if a.spread else [])], check=True)
        base = ["tile", str(root / "s"), "--size", "256", "--overlap", "0", "--scheduler", "sync"]
        files = [("the country's labels (GeoParquet with a bbox covering)", "country.parquet"),
                 ("the country's labels (GeoParquet, no covering: read whole)", "nocover.parquet")] if a.parquet \
            else [("the country's labels", "country.gpkg")]
        clipped = run([*base, "--labels", str(root / "near.gpkg"), "--out", str(root / "p1")])
        print(f"labels clipped to the scene first: {clipped[0]:.1f} s, {clipped[1]:.0f} MB peak RSS")
        for k, (what, name) in enumerate(files):
            whole = run([*base, "--labels", str(root / name), "--out", str(root / f"p{k + 2}")])
            print(f"{what}: {whole[0]:.1f} s, {whole[1]:.0f} MB peak RSS; ratio (country / clipped): "
                  f"time {whole[0] / clipped[0]:.2f}x, peak RSS {whole[1] / clipped[1]:.2f}x")
        ev = ["evaluate", str(root / "near.gpkg"), "--scenes", str(root / "s"), "--clip"]
        clipped = run([*ev[:2], str(root / "near.gpkg"), *ev[2:]])
        print(f"evaluate --clip, truth clipped first: {clipped[0]:.1f} s, {clipped[1]:.0f} MB peak RSS")
        for what, name in files:
            whole = run([*ev[:2], str(root / name), *ev[2:]])
            print(f"evaluate --clip, {what}: {whole[0]:.1f} s, {whole[1]:.0f} MB peak RSS; ratio (country / "
                  f"clipped): time {whole[0] / clipped[0]:.2f}x, peak RSS {whole[1] / clipped[1]:.2f}x")

if __name__ == "__main__":
    main()
