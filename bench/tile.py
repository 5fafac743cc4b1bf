"""Benchmark of `geoseg tile` against the floor of a plain windowed read+write.

Prints, all measured in this one run (machines are noisy, so only ratios count):
- chips/s and MB/s of `geoseg tile` (default threads scheduler) on a generated
  8000x8000 4-band uint16 scene with ~20k building-like polygons;
- the floor: a plain single-threaded loop reading the same windows and writing them
  with the same creation options; the ratio tile throughput / floor throughput;
- peak RSS of `geoseg tile` on a 4000^2 scene and on the 8000^2 scene (4x the area,
  4x the polygons), each in a fresh process, and their ratio.

    $ python bench/tile.py              # full run (~several minutes on 2 cores)
    $ python bench/tile.py --size 2000  # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def make_scene(path: Path, side: int, n_polys: int, seed: int = 0) -> Path:
    """Write a side x side 4-band uint16 GeoTIFF (tiled, deflate) strip by strip, and labels."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    transform = from_origin(500000, 4000000, 0.3, 0.3)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 4, "dtype": "uint16",
               "crs": "EPSG:32636", "transform": transform, "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "deflate", "predictor": 2, "nodata": 0}
    strip = 512
    yy, xx = np.mgrid[0:strip, 0:side]
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, strip):
            h = min(strip, side - r)
            base = (1000 + 300 * np.sin((xx[:h] + r) / 97.0) + 300 * np.cos((yy[:h] + r) / 61.0))
            noise = rng.integers(0, 64, (4, h, side))
            dst.write((base[None] + noise).astype(np.uint16), window=Window(0, r, side, h))
    c = rng.uniform(0, side, (n_polys, 2))
    wh = rng.uniform(6, 40, (n_polys, 2))
    x0, y0 = transform @ (c[:, 0], c[:, 1])
    geoms = shapely.box(x0, y0 - wh[:, 1] * 0.3, x0 + wh[:, 0] * 0.3, y0)
    labels = path.with_suffix(".gpkg")
    gpd.GeoDataFrame({"class": ["building"] * n_polys}, geometry=geoms,
                     crs="EPSG:32636").to_file(labels)
    return labels


def floor_read_write(scene: Path, out: Path, size: int, overlap: int) -> tuple[float, int, int]:
    """Plain windowed read + write of the same windows, same creation options."""
    import rasterio

    from geoseg.io.rasters import inspect_scene
    from geoseg.tile.grid import window_grid
    from geoseg.tile.outputs import chip_profile as _chip_profile

    info = inspect_scene(scene)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = nbytes = 0
    with rasterio.open(scene) as src:
        for row in window_grid(info.width, info.height, size, overlap):
            for win in row:
                data = src.read(window=win)
                with rasterio.open(out / f"{n}.tif", "w", **_chip_profile(info, win, "deflate")) as d:
                    d.write(data)
                n += 1
                nbytes += data.nbytes
    return time.perf_counter() - t0, n, nbytes


def child(scene: str, labels: str, out: str) -> None:
    """Run geoseg tile in this (fresh) process; print seconds, chips and peak RSS as JSON."""
    from geoseg.tile import TileConfig, tile

    t0 = time.perf_counter()
    s = tile([scene], labels, out, TileConfig(min_valid=0.0), scheduler="threads", progress=False)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": dt, "chips": s.chips_written, "instances": s.instances,
                      "peak_rss_mb": rss}))


def run_child(scene: Path, labels: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, __file__, "--child", str(scene), str(labels), str(out)],
                         check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8000, help="side of the big scene in px")
    ap.add_argument("--polygons", type=int, default=20000, help="polygons on the big scene")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoseg-bench-tile-"))
    work.mkdir(parents=True, exist_ok=True)
    big, small = work / "big.tif", work / "small.tif"
    print(f"generating scenes in {work} ...", flush=True)
    big_labels = make_scene(big, args.size, args.polygons, seed=0)
    small_labels = make_scene(small, args.size // 2, args.polygons // 4, seed=1)

    floor_s, n, nbytes = floor_read_write(big, work / "floor", 512, 64)
    tile_big = run_child(big, big_labels, work / "tiles_big")
    tile_small = run_child(small, small_labels, work / "tiles_small")
    mb = nbytes / 1e6
    print(f"scene {args.size}x{args.size}x4 uint16, {args.polygons} polygons, {n} chips of 512 px")
    print(f"floor (plain read+write, 1 thread): {floor_s:6.2f} s  {n / floor_s:7.1f} chips/s  "
          f"{mb / floor_s:7.1f} MB/s")
    print(f"geoseg tile (threads)             : {tile_big['seconds']:6.2f} s  "
          f"{n / tile_big['seconds']:7.1f} chips/s  {mb / tile_big['seconds']:7.1f} MB/s  "
          f"({tile_big['instances']} instances)")
    print(f"throughput ratio tile/floor       : {floor_s / tile_big['seconds']:.2f}  (target >= 0.5)")
    print(f"peak RSS 1x area ({args.size // 2}^2): {tile_small['peak_rss_mb']:.0f} MB; "
          f"4x area ({args.size}^2): {tile_big['peak_rss_mb']:.0f} MB; "
          f"ratio {tile_big['peak_rss_mb'] / tile_small['peak_rss_mb']:.2f}  (target <= 1.10)")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
