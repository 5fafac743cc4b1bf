"""Kampala: supervised vs mean-teacher training, polygon F1 on block B (issue #12).

Both runs train the CPU preset (`configs/buildings-cpu.yaml`) on the labels of block A
only (block B is the validation split, as in the demo), same epochs and seed; the
mean-teacher run adds unlabelled chips of the other zooms of block A (z19, z21) and of the
NEON OSBS scene from ../shared/data (never block B's pixels). Each model predicts block B
at budget 1.0; its polygons are scored against OpenStreetMap clipped to block B. Prints
F1, AP50 and the training wall time of each, and the difference.

    $ python bench/semi.py [--epochs 30] [--out outputs/bench-semi] [--consistency soft --weight 10] [--seed 1]
          [--ratio 0.5]   # half an unlabelled sample per labelled one: a cheaper step
          [--keep 0.5]    # hard pseudo-targets: the most confident half of each pseudo-class
          [--block-b]     # diagnostic only: unlabelled = block B's other zooms (breaks the target's rule)
          [--burn-in 15]  # supervised epochs before the unlabelled chips count (the config's: 5)
    $ python bench/semi.py --only supervised --epochs 46   # about the semi run's time (run folder gets -e46)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-semi")
    ap.add_argument("--only", choices=["supervised", "semi"], help="run one of the two")
    ap.add_argument("--consistency", choices=["hard", "soft"], default="hard", help="semi.consistency")
    ap.add_argument("--weight", type=float, help="semi.weight (default: the config's, 0.5)")
    ap.add_argument("--keep", type=float, help="semi.keep: the most confident share of each pseudo-class "
                    "instead of semi.threshold (hard consistency; run folder gets -keepK)")
    ap.add_argument("--block-b", action="store_true",
                    help="a diagnostic, not the target: the unlabelled chips are block B's other zooms (z19, "
                         "z21), the scene validated on (run folder gets -blockB)")
    ap.add_argument("--burn-in", type=float, help="semi.burn_in_epochs: supervised epochs before the unlabelled "
                    "chips count (default: the config's, 5; run folder gets -burnB)")
    ap.add_argument("--cutmix", type=float, help="semi.cutmix: share of the student's samples that are a CutMix "
                    "of two (run folder gets -cutmixC)")
    ap.add_argument("--seed", type=int, default=0, help="training seed of both runs (run folders get -seedN)")
    ap.add_argument("--ratio", type=float, default=1.0,
                    help="semi.ratio: unlabelled samples per labelled one per step (run folder gets -ratioR)")
    args = ap.parse_args()

    from geoseg.aoi import clip_to, footprint
    from geoseg.config import load_config
    from geoseg.evaluate import evaluate_frames, read_polygons
    from geoseg.predict import PredictConfig, predict
    from geoseg.tile import TileConfig, tile
    from geoseg.train import TrainConfig, train

    kampala = SHARED / "kampala_oam_buildings" / "scenes"
    if not kampala.is_dir():
        raise SystemExit(f"needs the shared data set beside the repository ({SHARED})")
    sample = REPO / "data" / "sample"
    labels = sample / "labels" / "buildings.gpkg"
    block_b = sample / "kampala_blockB_z20.tif"
    out = args.out
    patches, unlabelled = out / "patches", out / ("unlabelled-blockB" if args.block_b else "unlabelled")
    if not (patches / "annotations.json").exists():
        tile([sample], labels, patches, TileConfig(size=512, overlap=64, val_fraction=0.0,
                                                    val_scenes=("kampala_blockB*",)), progress=False)
    if args.block_b and not (unlabelled / "annotations.json").exists():
        tile([kampala / "kampala_blockB_z19.tif", kampala / "kampala_blockB_z21.tif"], None, unlabelled,
             TileConfig(size=512, overlap=64), progress=False)
    if not (unlabelled / "annotations.json").exists():
        tile([kampala / "kampala_blockA_z19.tif", kampala / "kampala_blockA_z21.tif",
              SHARED / "neon_osbs_trees" / "OSBS_029.tif"], None, unlabelled,
             TileConfig(size=512, overlap=64), progress=False)
    truth = read_polygons(labels, "truth")
    area = footprint([block_b])
    results = {}
    for name in ("supervised", "semi"):
        if args.only and name != args.only:
            continue
        semi: dict[str, object] = {"unlabelled": [str(unlabelled)], "consistency": args.consistency}
        if args.weight is not None:
            semi["weight"] = args.weight
        if args.ratio != 1.0:
            semi["ratio"] = args.ratio
        if args.keep is not None:
            semi["keep"] = args.keep
        if args.burn_in is not None:
            semi["burn_in_epochs"] = args.burn_in
        if args.cutmix is not None:
            semi["cutmix"] = args.cutmix
        over: dict[str, object] = {"semi": semi} if name == "semi" else {}
        cfg = load_config(TrainConfig, REPO / "configs" / "buildings-cpu.yaml", {**over, "seed": args.seed})
        run = out / (name if name == "supervised" else f"semi-{args.consistency}-{semi.get('weight', 'default')}")
        if name == "semi" and args.ratio != 1.0:
            run = run.with_name(f"{run.name}-ratio{args.ratio:g}")
        if name == "semi" and args.keep is not None:
            run = run.with_name(f"{run.name}-keep{args.keep:g}")
        if name == "semi" and args.block_b:
            run = run.with_name(f"{run.name}-blockB")
        if name == "semi" and args.burn_in is not None:
            run = run.with_name(f"{run.name}-burn{args.burn_in:g}")
        if name == "semi" and args.cutmix is not None:
            run = run.with_name(f"{run.name}-cutmix{args.cutmix:g}")
        if args.epochs != 30:  # another run than the 30-epoch one (resume would extend it)
            run = run.with_name(f"{run.name}-e{args.epochs}")
        if args.seed:
            run = run.with_name(f"{run.name}-seed{args.seed}")
        result = train(cfg, patches, run, epochs=args.epochs, resume=True, progress=False)  # resumes a cut run
        seconds = sum(r["seconds"] for r in result.history)
        polys = run.parent / f"{run.name}.gpkg"  # not with_suffix: "ratio0.5" has a dot
        predict([block_b], run, polys, PredictConfig(budget=1.0), overwrite=True, progress=False)
        pred = read_polygons(polys, "prediction")
        rep = evaluate_frames(clip_to(pred, area), clip_to(truth, area), iou=0.5)
        results[name] = rep
        print(f"{name} (seed {args.seed}): train {seconds:.0f} s, block B polygon F1 {rep['f1']:.3f}, AP50 "
              f"{rep['ap50']:.3f}, precision {rep['precision']:.3f}, recall {rep['recall']:.3f}")
    if len(results) == 2:
        print(f"semi - supervised: F1 {results['semi']['f1'] - results['supervised']['f1']:+.3f}, "
              f"AP50 {results['semi']['ap50'] - results['supervised']['ap50']:+.3f}")


if __name__ == "__main__":
    main()
