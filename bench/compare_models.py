"""Routed model (budgets 1.0 and 0.25) vs Mask R-CNN, from the same `geoseg tile` output, in one run.

Two datasets, each: tile once, train both families on the same chips (the CPU presets
``configs/buildings-cpu.yaml`` and ``configs/maskrcnn-cpu.yaml``, ``--epochs`` each), then
predict the test scene in fresh processes and score the polygons against the truth:

1. **sparse**: the generated scenes of ``bench/predict.py`` (bright roofs of 12-36 px at
   0.3 m on dark ground); trained on its 1024² train / 512² val scenes, tested on a
   ``--side`` px scene whose roofs fill ``--occupied`` of the 64-px cells (Mask R-CNN's
   anchors are set to those sizes: 8-128 px);
2. **kampala**: the bundled Kampala sample (``data/sample``): trained on block A, validated
   and tested on block B (labels clipped to it), as ``pipelines/kampala.yaml``.

Columns: F1@0.5 and AP (COCO AP@[.5:.95] of the polygons, ranked by ``score``) from
:func:`geoseg.evaluate.evaluate_frames`; wall seconds of `geoseg predict` per km²
(model load included, one process per run); peak RSS of that process.

    $ python bench/compare_models.py                         # ~1 h on 2 shared cores
    $ python bench/compare_models.py --epochs 4 --side 2048 --skip kampala   # reduced
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from predict import boxes_scene, prepare_data  # noqa: E402  # bench/predict.py: the sparse scenes

#: runs per test scene: name -> (family, predict budget)
RUNS = {"routed 1.0": ("routed", 1.0), "routed 0.25": ("routed", 0.25), "maskrcnn": ("maskrcnn", None)}
PRESETS = {"routed": REPO / "configs" / "buildings-cpu.yaml", "maskrcnn": REPO / "configs" / "maskrcnn-cpu.yaml"}
#: preset overrides per dataset: the generated roofs are 12-36 px (0.3 m), Kampala's 30-300 px (0.15 m)
OVERRIDES = {"sparse": {"maskrcnn": {"model": {"anchor_sizes": [8, 16, 32, 64, 128]},
                                     "postprocess": {"min_area": 20}}}}


def child(scene: str, model: str, out: str, budget: str) -> None:
    """Predict in a fresh process; print seconds, summary numbers and peak RSS as JSON."""
    from geoseg.predict import PredictConfig, predict

    t0 = time.perf_counter()
    s = predict([scene], model, out, PredictConfig(budget=None if budget == "none" else float(budget)),
                overwrite=True, progress=False)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would be the parent's peak
    hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:")]
    rss = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": time.perf_counter() - t0, "model_s": s.model_seconds,
                      "polygons": s.polygons, "peak_rss_mb": rss}))


def train_family(family: str, dataset: str, patches: Path, run: Path, epochs: int, reuse: bool = False
                 ) -> dict[str, float]:
    from geoseg.config import load_config
    from geoseg.train import TrainConfig, train

    if reuse and (run / "checkpoints" / "best.pt").exists():
        return {}
    cfg = load_config(TrainConfig, PRESETS[family], {**OVERRIDES.get(dataset, {}).get(family, {}),
                                                     "val": {"every": epochs}})
    t0 = time.perf_counter()
    res = train(cfg, patches, run, epochs=epochs, overwrite=True, progress=False)
    last = res.history[-1]
    print(f"{dataset}: trained {family} {epochs} epochs in {time.perf_counter() - t0:.0f} s: val ap "
          f"{last.get('ap', float('nan')):.3f}, f1 {last.get('f1', float('nan')):.3f}", flush=True)
    return {"train_s": time.perf_counter() - t0, "val_ap": last.get("ap", float("nan"))}


def score(scene: Path, truth: Path, work: Path, runs: dict[str, Path], clip: bool) -> list[dict]:
    import geopandas as gpd
    import rasterio

    from geoseg.evaluate import evaluate_frames

    with rasterio.open(scene) as src:
        km2 = src.width * src.height * abs(src.transform.a * src.transform.e) / 1e6
        bounds = src.bounds
        crs = src.crs
    truth_gdf = gpd.read_file(truth).to_crs(crs)
    if clip:  # the labels cover other scenes too
        import shapely

        truth_gdf = truth_gdf[truth_gdf.intersects(shapely.box(*bounds))].clip(shapely.box(*bounds))
    rows = []
    for name, (family, budget) in RUNS.items():
        out = work / f"{name.replace(' ', '_')}.gpkg"
        res = subprocess.run([sys.executable, __file__, "--child", str(scene), str(runs[family]), str(out),
                              "none" if budget is None else str(budget)],
                             check=True, capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        ev = evaluate_frames(gpd.read_file(out), truth_gdf, iou=0.5)
        rows.append({"run": name, "f1": float(ev["f1"]), "ap": float(ev["ap"]), "s_per_km2": r["seconds"] / km2,
                     "seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"], "polygons": r["polygons"]})
        print(f"  {name}: {rows[-1]}", flush=True)
    return rows


def table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n| run | F1@0.5 | AP | s/km² | wall s | peak RSS MB | polygons |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['run']} | {r['f1']:.3f} | {r['ap']:.3f} | {r['s_per_km2']:.0f} | {r['seconds']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['polygons']} |")
    by = {r["run"]: r for r in rows}
    if "routed 0.25" in by and "maskrcnn" in by:
        a, b = by["routed 0.25"], by["maskrcnn"]
        print(f"routed 0.25 vs Mask R-CNN: {b['seconds'] / a['seconds']:.2f}x faster, F1 {a['f1']:.3f} vs "
              f"{b['f1']:.3f}")


def sparse(work: Path, args: argparse.Namespace) -> list[dict]:
    patches = work / "patches" if args.reuse and (work / "patches").exists() else prepare_data(work)
    runs = {}
    for family in ("routed", "maskrcnn"):
        runs[family] = work / f"run_{family}"
        train_family(family, "sparse", patches, runs[family], args.epochs, args.reuse)
    truth, occ = boxes_scene(work / "sparse.tif", args.side, args.occupied, seed=7)
    print(f"sparse scene {args.side}² px, {occ:.0%} of the 64-px cells occupied", flush=True)
    return score(work / "sparse.tif", truth, work, runs, clip=False)


def kampala(work: Path, args: argparse.Namespace) -> list[dict]:
    from geoseg.tile import TileConfig, tile

    sample = REPO / "data" / "sample"
    labels = sample / "labels" / "buildings.gpkg"
    tile([sample], labels, work / "patches", TileConfig(size=512, overlap=64, val_scenes=("kampala_blockB*",),
                                                         val_fraction=0.0), overwrite=True)
    runs = {}
    for family in ("routed", "maskrcnn"):
        runs[family] = work / f"run_{family}"
        train_family(family, "kampala", work / "patches", runs[family], args.kampala_epochs, args.reuse)
    return score(sample / "kampala_blockB_z20.tif", labels, work, runs, clip=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=4096, help="side of the sparse test scene (px)")
    ap.add_argument("--occupied", type=float, default=0.12, help="share of 64-px cells holding objects")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of each training (sparse)")
    ap.add_argument("--kampala-epochs", type=int, default=30, help="epochs of each training on Kampala")
    ap.add_argument("--skip", choices=["sparse", "kampala"], action="append", default=[])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep the trained runs of --workdir")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoseg-compare-"))
    print(f"workdir {work}", flush=True)
    for name, fn in (("sparse", sparse), ("kampala", kampala)):
        if name not in args.skip:
            (work / name).mkdir(parents=True, exist_ok=True)
            table(f"{name}:", fn(work / name, args))


if __name__ == "__main__":
    main()
