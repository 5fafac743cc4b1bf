"""Forward time of the routed model against budget, in one run.

    python bench/routed_forward.py [--size 1024] [--repeats 5] [--device cpu]

Eval mode, no grad, a random 3-band image, the default ModelConfig. Each budget is timed
``--repeats`` times after a warm-up, budgets interleaved within a repeat so that drift of a
shared machine hits all of them alike. The median (and the minimum, less sensitive to
other load on a shared machine) is printed with its ratio to budget 1.0: FF on every cell
through the same code path. The target: time(0.25) <= 0.4 x time(1.0).

Also printed, for context: the parts that do not depend on the budget (Enhance at full
resolution, PV at 1/scale) and plain FF on the whole image without cells and halos.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from geoseg.models import ModelConfig, RoutedModel, k_for_budget  # noqa: E402

BUDGETS = (0.1, 0.25, 0.5, 1.0)
TARGET = 0.4


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = ModelConfig()
    model = RoutedModel.from_config(cfg).to(device).eval()
    x = torch.randn(1, cfg.in_channels, args.size, args.size, device=device)
    t = timer(device)
    print(
        f"device={device} threads={torch.get_num_threads()} input=1x{cfg.in_channels}x"
        f"{args.size}x{args.size} pv={cfg.pv.arch}/{cfg.pv.encoder} ff={cfg.ff.arch}/"
        f"{cfg.ff.encoder} scale={cfg.scale} cell={cfg.cell} halo={cfg.halo}"
    )
    times: dict[float, list[float]] = {b: [] for b in BUDGETS}
    with torch.no_grad():
        for b in (0.1, 1.0):  # warm-up: allocator, oneDNN/cuDNN kernels for both batch sizes
            model(x, budget=b)
        for _ in range(args.repeats):
            for b in BUDGETS:
                times[b].append(t(partial(model, x, budget=b)))
        xp = model.pad(x)
        enh = statistics.median(t(lambda: model.enhance(model.downsample(xp))) for _ in range(args.repeats))
        pv = statistics.median(t(lambda: model.forward_pv(xp)) for _ in range(args.repeats))
        model.ff(x)
        ff_whole = statistics.median(t(lambda: model.ff(x)) for _ in range(args.repeats))

    base = statistics.median(times[1.0])
    n_cells = (xp.shape[-2] // cfg.cell) * (xp.shape[-1] // cfg.cell)
    best = min(times[1.0])
    print(f"{'budget':>7} {'cells':>6} {'median s':>9} {'ratio':>6} {'min s':>7} {'ratio':>6}")
    for b in BUDGETS:
        med, low = statistics.median(times[b]), min(times[b])
        k = k_for_budget(n_cells, b)
        print(f"{b:>7.2f} {k:>6d} {med:>9.3f} {med / base:>6.3f} {low:>7.3f} {low / best:>6.3f}")
    ratio = statistics.median(times[0.25]) / base
    print(f"enhance (1/scale) {enh:.3f} s | enhance + PV {pv:.3f} s | plain FF on the whole image {ff_whole:.3f} s")
    verdict = "met" if ratio <= TARGET else "MISSED"
    print(f"target time(0.25) <= {TARGET} x time(1.0): ratio {ratio:.3f} -> {verdict}")


if __name__ == "__main__":
    main()
