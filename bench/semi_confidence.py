"""How sure a trained model is on unlabelled chips: the extent probability the mean teacher thresholds (issue #12).

Runs a run's ``best.pt`` (its EMA weights: the teacher) over the weak views of unlabelled
chips, read as training reads them (at the labelled chips' GSD, or ``--native``), and
prints quantiles of the extent probability and the share of valid pixels that each
``semi.threshold`` would keep (``max(p, 1 - p) >= t``).

    $ python bench/semi_confidence.py --model RUN --patches PATCHES --unlabelled UNLABELLED [--native] [--chips 24]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a run folder or checkpoint")
    ap.add_argument("--patches", type=Path, required=True, help="the labelled tile folder (band stats, GSD)")
    ap.add_argument("--unlabelled", type=Path, required=True, help="a `geoseg tile` folder without labels")
    ap.add_argument("--native", action="store_true", help="read the chips on their own grid")
    ap.add_argument("--chips", type=int, default=24, help="how many chips (drawn with seed 0)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from geoseg.bands import load_stats
    from geoseg.models.checkpoint import load_model
    from geoseg.models.config import EXTENT
    from geoseg.train.dataset import load_stats_gsd
    from geoseg.train.semi import STRONG, UnlabelledChips

    net, _ = load_model(args.model)
    gsd = load_stats_gsd(args.patches)
    grid = None if args.native or not math.isfinite(gsd) else gsd
    ds = UnlabelledChips([args.unlabelled], load_stats(args.patches), 256, STRONG, seed=0, gsd=grid)
    picks = np.random.default_rng(0).choice(len(ds), min(args.chips, len(ds)), replace=False)
    probs = []
    with torch.no_grad():
        for i in picks:
            sample = ds[int(i)]
            out = net(sample["weak"][None], budget=1.0)
            probs.append(torch.sigmoid(out.logits[0, EXTENT])[sample["valid"]].numpy())
    p = np.concatenate(probs)
    q = np.quantile(p, [0.01, 0.1, 0.5, 0.9, 0.99])
    print(f"{len(picks)} chips at {'their own grid' if grid is None else f'{grid:g} m'}: extent probability "
          f"quantiles 1/10/50/90/99 %: {' '.join(f'{v:.3f}' for v in q)}")
    conf = np.maximum(p, 1 - p)
    print("share kept by semi.threshold: " + ", ".join(f"{t}: {np.mean(conf >= t):.3f}" for t in (0.6, 0.7, 0.8, 0.9)))


if __name__ == "__main__":
    main()
