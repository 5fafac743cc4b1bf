"""A small domain shift that only unlabelled chips can bridge: supervised vs mean teacher (issue #12).

Labelled: one 64x64 scene (4 chips) of grey boxes. Validation (4 scenes) and 40 unlabelled
chips (10 scenes): the same kind of boxes, bright in the first band only, as another sensor
would see them (`tests/conftest.py: shifted_domain`, which the tests use too). Both runs
train the tests' tiny model (`tests/conf/tiny.yaml`), same seed and epochs; prints F1, AP
and the share of unlabelled pixels the teacher kept, per epoch.

    $ python bench/semi_tiny.py [--epochs 12] [--seed 0] [--keep 0.5 | --threshold 0.7] [--burn-in 4]
                                [--weight 1] [--ramp 2] [--consistency hard|soft] [--photometric]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=float, help="semi.keep (default 0.5 unless --threshold is given)")
    ap.add_argument("--threshold", type=float, help="semi.threshold instead of semi.keep")
    ap.add_argument("--burn-in", type=float, default=4)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--ramp", type=float, default=2)
    ap.add_argument("--consistency", choices=["hard", "soft"], default="hard")
    ap.add_argument("--photometric", action="store_true",
                    help="the supervised run gets the strong view's photometric augmentations too")
    args = ap.parse_args()
    from conftest import shifted_domain

    from geoseg.config import load_config
    from geoseg.train import TrainConfig, train
    from geoseg.train.semi import STRONG

    root = Path(tempfile.mkdtemp(prefix="geoseg-semi-tiny-"))
    patches, unlabelled = shifted_domain(root)
    semi: dict[str, object] = {"unlabelled": [str(unlabelled)], "burn_in_epochs": args.burn_in,
                               "ramp_epochs": args.ramp, "weight": args.weight, "consistency": args.consistency}
    if args.threshold is not None:
        semi["threshold"] = args.threshold
    else:
        semi["keep"] = 0.5 if args.keep is None else args.keep
    augment = {"augment": STRONG.model_copy(update={"d4": 1.0}).model_dump()} if args.photometric else {}
    for name, over in (("supervised", augment), ("semi", {"semi": semi})):
        cfg = load_config(TrainConfig, REPO / "tests" / "conf" / "tiny.yaml",
                          {"seed": args.seed, "data": {"samples_per_epoch": 16}, "val": {"every": 1}, **over})
        res = train(cfg, patches, root / name, epochs=args.epochs, progress=False)
        print(name + (" (photometric augmentations)" if name == "supervised" and augment else ""))
        for h in res.history:
            print(f"  epoch {int(h['epoch']):2d}: F1 {h.get('f1', float('nan')):.3f} AP {h.get('ap', float('nan')):.3f}"
                  + (f" confident {h['confident']:.3f}" if "confident" in h else ""))


if __name__ == "__main__":
    main()
