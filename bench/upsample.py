"""PV's upsampling in ff_block: contiguous maps against channels-last, per number of maps.

``geoseg.predict.phases.upsampled`` upsamples 3 maps (one class: extent, boundary,
contact) channels-last and more maps contiguous. This prints both layouts' time for one
block's worth of PV logits (514² low-resolution pixels, x4 bilinear, as at ``--block 2048``
with scale 4), one torch thread, and whether they give the same values.

    $ python bench/upsample.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


def _ms(x: torch.Tensor, n: int = 5) -> float:
    """Milliseconds per upsampling of ``x`` (after one warm-up call)."""
    _up(x)
    t0 = time.perf_counter()
    for _ in range(n):
        _up(x)
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    torch.set_num_threads(1)
    for maps in (3, 4, 5, 6):
        pv = torch.randn(1, maps, 514, 514, generator=torch.Generator().manual_seed(maps))
        last = pv.contiguous(memory_format=torch.channels_last)
        a, b = _ms(pv), _ms(last)
        same = torch.equal(_up(pv), _up(last))
        print(f"{maps} maps: contiguous {a:6.1f} ms, channels-last {b:6.1f} ms, "
              f"channels-last / contiguous {b / a:.2f}x, same values: {same}")


if __name__ == "__main__":
    main()
