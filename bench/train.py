"""Training throughput of the CPU preset, and routed forward time against budget.

Prints, measured in this one run:
- samples/s and seconds per step of `configs/buildings-cpu.yaml` on the bundled Kampala
  sample (a few steps after a warm-up step; data loading included);
- the forward-time ratios of the routed model at budgets 0.1/0.25/0.5/1.0 on a 1024^2
  input (`bench/routed_forward.py`; target: time(0.25) <= 0.4 x time(1.0)).

    $ python bench/train.py [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    import torch

    from geoseg.config import load_config
    from geoseg.tile import TileConfig, tile
    from geoseg.train import TrainConfig
    from geoseg.train.loop import Trainer
    from geoseg.train.runtime import resolve_device

    work = Path(tempfile.mkdtemp(prefix="geoseg-bench-train-"))
    sample = REPO / "data" / "sample"
    tile([sample], sample / "labels" / "buildings.gpkg", work / "patches",
         TileConfig(val_fraction=0.0, val_scenes=("kampala_blockB*",)), progress=False)
    cfg = load_config(TrainConfig, REPO / "configs" / "buildings-cpu.yaml",
                      {"data": {"samples_per_epoch": (args.steps + 1) * 4}})
    trainer = Trainer(cfg, work / "patches", work / "run", resolve_device("cpu"), progress=False)
    loader = iter(trainer._loader(True))
    times = []
    bs = cfg.data.batch_size
    assert isinstance(bs, int), "the CPU preset's batch size is a number"
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        batch = next(loader)
        out = trainer.model(batch["image"])
        total, _ = trainer.loss(out, batch, progress=0.0)
        trainer.optimizer.zero_grad()
        total.backward()
        trainer.optimizer.step()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    step = sum(times) / len(times)
    print(f"CPU preset ({cfg.data.crop} px crops, batch {bs}, torch threads "
          f"{torch.get_num_threads()}): {step:.2f} s/step, {bs / step:.1f} samples/s")
    sys.argv = [str(REPO / "bench" / "routed_forward.py")]
    runpy.run_path(str(REPO / "bench" / "routed_forward.py"), run_name="__main__")


if __name__ == "__main__":
    main()
