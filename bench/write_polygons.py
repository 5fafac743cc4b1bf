"""Peak memory of writing predict's polygons: streamed block by block against gathered then written.

predict leaves one small GeoPackage per output block in its cache. Before, they were all
read into one GeoDataFrame, concatenated, merged for ``--overlaps once`` and written
(``gather``); now ``geoseg.predict.collect.write_polygons`` appends them to the output one
at a time (``stream``). This writes ``--blocks`` cache files of building-like polygons
(rotated rectangles, an L-shape every third, attributes as predict writes them), then runs
each way in a fresh process and prints its peak RSS (VmHWM) above the process's baseline,
its wall time, and the ratios stream / gather.

    $ python bench/write_polygons.py                      # 200 blocks x 2500 = 500k polygons, ~4 min
    $ python bench/write_polygons.py --blocks 40          # a quick look
    $ python bench/write_polygons.py --format parquet     # the output format (gpkg, fgb, parquet, ...)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

UTM = "EPSG:32636"


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_blocks(folder: Path, blocks: int, per: int, seed: int = 0) -> list[Path]:
    """``blocks`` cache GPKGs of ``per`` polygons each, as predict's instance phase writes them."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.transform import from_origin

    from geoseg.io.formats import write_vector

    rng = np.random.default_rng(seed)
    with rasterio.open(folder / "scene_000.tif", "w", driver="GTiff", width=1, height=1, count=1, dtype="uint8",
                       crs=UTM, transform=from_origin(400000, 30000, 0.5, 0.5)) as dst:
        dst.write(np.zeros((1, 1, 1), np.uint8))
    side = int(np.ceil(np.sqrt(blocks)))
    paths = []
    for k in range(blocks):
        x0, y0 = 400000 + (k % side) * 1024.0, 30000 + (k // side) * 1024.0  # a 1024-m block at 0.5 m
        cx, cy = x0 + rng.uniform(10, 1014, per), y0 + rng.uniform(10, 1014, per)
        w, h, ang = rng.uniform(6, 20, per), rng.uniform(6, 16, per), rng.uniform(0, np.pi, per)
        geoms = []
        for i in range(per):
            box = shapely.box(-w[i] / 2, -h[i] / 2, w[i] / 2, h[i] / 2)
            if i % 3 == 0:  # an L: more vertices, as traced outlines have
                box = box.difference(shapely.box(0, 0, w[i], h[i]))
            c, s = np.cos(ang[i]), np.sin(ang[i])
            geoms.append(shapely.affinity.affine_transform(box, [c, -s, s, c, cx[i], cy[i]]))
        g = gpd.GeoDataFrame({"class": "building", "score": rng.uniform(0.5, 1, per),
                              "area_m2": shapely.area(np.array(geoms)), "scene": "scene_000.tif",
                              "_cut": np.zeros(per, bool)}, geometry=geoms, crs=UTM)
        paths.append(write_vector(g, folder / f"polys_{k // side}_{k % side}.gpkg"))
    return paths


def child(way: str, folder: Path, out: Path) -> dict:
    """One way in this process: its peak RSS above the start, time, polygons written."""
    import geopandas as gpd
    import pandas as pd

    from geoseg.io.formats import write_vector
    from geoseg.io.rasters import inspect_scene
    from geoseg.predict.collect import write_polygons

    paths = sorted(folder.glob("polys_*.gpkg"))
    gpd.read_file(paths[0])  # imports and GDAL loaded before the baseline
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if way == "gather":  # predict before: every block read, concatenated, written at once
        frames = [gpd.read_file(p, use_arrow=True) for p in paths]  # the faster read, as stream does
        gdf = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs).drop(columns="_cut")
        write_vector(gdf, out, layer=out.stem)
        n = len(gdf)
    else:
        scene = inspect_scene(folder / "scene_000.tif")  # the scene the blocks are of (one: no overlap merge)
        n = write_polygons([(scene, p) for p in paths], out, [scene], once=False).polygons
    return {"peak_mb": _status_mb("VmHWM") - base, "seconds": time.perf_counter() - t0, "polygons": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=200)
    ap.add_argument("--per-block", type=int, default=2500)
    ap.add_argument("--format", default="gpkg", help="output extension: gpkg, fgb, geojson, shp, parquet")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", nargs=3, metavar=("WAY", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), Path(a.child[2]))))
        return
    work = a.workdir or Path(tempfile.mkdtemp(prefix="geoseg-write-"))
    blocks = work / "blocks"
    blocks.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_blocks(blocks, a.blocks, a.per_block)
    print(f"{a.blocks} block files of {a.per_block} polygons written in {time.perf_counter() - t0:.0f} s ({work})",
          flush=True)
    res = {}
    for way in ("gather", "stream"):
        out = work / f"{way}.{a.format}"
        run = subprocess.run([sys.executable, __file__, "--child", way, str(blocks), str(out)],
                             check=True, capture_output=True, text=True)
        res[way] = json.loads(run.stdout.strip().splitlines()[-1])
        r = res[way]
        print(f"{way:6s}: peak +{r['peak_mb']:7.0f} MB  {r['seconds']:6.1f} s  {r['polygons']} polygons", flush=True)
    g, s = res["gather"], res["stream"]
    print(f"stream / gather: peak memory {s['peak_mb'] / g['peak_mb']:.2f}x, time {s['seconds'] / g['seconds']:.2f}x")


if __name__ == "__main__":
    main()
