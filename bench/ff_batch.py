"""FF cell tiles per call on the CPU: time per tile and peak memory of one call, by batch.

Backs ``geoseg.predict.memory.CPU_MAX_BATCH``: on the CPU a larger FF batch is no faster
per tile, and each call holds memory in proportion to it. The model is the CPU preset's
(``configs/buildings-cpu.yaml``, random weights: speed and memory do not depend on them)
or ``--model RUN``; tiles are single cells with their halo (96² for the preset), run
through the torch backend as predict runs them. Peak memory of a call is the rise of the
process's peak RSS over its RSS before the call, the heap's free pages given back first as
predict does after each block task (``VmHWM`` reset through ``/proc/self/clear_refs``;
Linux only, NaN elsewhere).

    $ python bench/ff_batch.py                  # batches 4 8 16 32, twice each, interleaved
    $ python bench/ff_batch.py --model outputs/demo/run
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]


def _status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def backend_of(model: Path | None):
    from geoseg.backends.torch_backend import TorchBackend

    if model is not None:
        return TorchBackend(model, device="cpu")
    from geoseg.config import load_config
    from geoseg.models import ModelConfig, RoutedModel
    from geoseg.train import TrainConfig

    cfg = load_config(TrainConfig, REPO / "configs" / "buildings-cpu.yaml")
    mcfg = cfg.model.model_copy(update={"in_channels": 3, "classes": ("building",)})
    assert isinstance(mcfg, ModelConfig), "the CPU preset is a routed model"
    net = RoutedModel.from_config(mcfg)
    meta = {"config": cfg.model_copy(update={"model": mcfg}).model_dump(mode="json"),
            "stats": {"bands": 3, "mean": [0.0] * 3, "std": [1.0] * 3, "classes": ["building"]},
            "classes": ["building"]}
    return TorchBackend.from_model(net, meta, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a run directory (default: the CPU preset, random)")
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--tiles", type=int, default=64, help="tiles per timed run")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from geoseg.predict.heap import release

    be = backend_of(args.model)
    side = be.meta.tile
    x = np.random.default_rng(0).standard_normal((args.tiles, be.meta.band_count, side, side)).astype(np.float32)
    times: dict[int, list[float]] = {b: [] for b in args.batches}
    peaks: dict[int, list[float]] = {b: [] for b in args.batches}
    for _ in range(args.repeat):
        for b in args.batches:
            be.ff_batch = b
            be.ff(x[:b])  # warm: kernels
            release()  # free heap pages back, as predict does after each block task
            _reset_peak()
            before = _status_mb("VmRSS")
            be.ff(x[:b])
            peaks[b].append(_status_mb("VmHWM") - before)
            t0 = time.perf_counter()
            be.ff(x)
            times[b].append((time.perf_counter() - t0) / args.tiles * 1000)
    base = min(min(times[b]) for b in args.batches)
    print(f"FF tiles {side}x{side}, {args.tiles} per run, torch threads {__import__('torch').get_num_threads()}")
    print(f"{'batch':>6} {'ms per tile':>14} {'vs best':>8} {'call peak MB':>13}")
    for b in args.batches:
        ms = min(times[b])
        print(f"{b:>6} {', '.join(f'{t:.2f}' for t in times[b]):>14} {ms / base:>7.2f}x "
              f"{max(peaks[b]):>13.0f}")


if __name__ == "__main__":
    main()
