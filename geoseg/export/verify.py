"""Verification of exported graphs: the same random inputs through two backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoseg.backends.base import Backend
from geoseg.errors import ConfigError, GeoSegError, first_line
from geoseg.models.meta import ModelMeta

#: Largest max-abs difference accepted by default (FP32 graphs).
DEFAULT_TOLERANCE = 1e-3
#: Default when a graph computes in FP16 (``--fp16``).
FP16_TOLERANCE = 5e-2


class ExportError(GeoSegError, RuntimeError):
    """An export failed: the exporter refused the model, or its outputs differ from the reference."""



def _tolerance(tolerance: float | None, fp16: bool) -> float:
    if tolerance is None:
        return FP16_TOLERANCE if fp16 else DEFAULT_TOLERANCE
    if not tolerance > 0:
        raise ConfigError(f"--tolerance must be > 0, got {tolerance}")
    return float(tolerance)



def random_inputs(meta: ModelMeta, pv_max: tuple[int, ...] | None = None,
                  ff_max: int | None = None) -> dict[str, list[np.ndarray]]:
    """Random normalised inputs for both graphs: two batch sizes, two PV image sizes.

    Args:
        meta: the model's backend metadata.
        pv_max: largest PV input shape allowed (a TensorRT profile maximum).
        ff_max: largest FF batch allowed.

    Returns:
        ``{"pv": [small, ...], "ff": [tiles, ...]}``, float32, seeded (the same every time).
    """
    rng = np.random.default_rng(0)
    b, m, t = meta.band_count, meta.pv_multiple, meta.tile
    big_b, rows, cols, n = 2, 2 * m, 3 * m, 5
    if pv_max is not None:
        big_b = min(big_b, pv_max[0])
        rows, cols = max(m, min(rows, pv_max[2] // m * m)), max(m, min(cols, pv_max[3] // m * m))
    if ff_max is not None:
        n = min(n, ff_max)
    shapes = {"pv": [(1, b, m, m), (big_b, b, rows, cols)], "ff": [(1, b, t, t), (n, b, t, t)]}
    return {g: [rng.standard_normal(s, dtype=np.float32) for s in ss] for g, ss in shapes.items()}


def max_abs_diff(reference: Backend, candidate: Backend, cases: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Largest absolute difference per graph between two backends on the same inputs.

    Args:
        reference: the backend taken as truth.
        candidate: the backend checked.
        cases: inputs per graph (see :func:`random_inputs`).

    Returns:
        ``{"pv": diff, "ff": diff}``; ``inf`` where outputs differ in shape or are not finite.

    Raises:
        Exception: whatever the candidate raises when it cannot run an input.
    """
    diffs = {}
    for graph, inputs in cases.items():
        worst = 0.0
        for x in inputs:
            ref, got = getattr(reference, graph)(x), getattr(candidate, graph)(x)
            ref, got = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
            for a, c in zip(ref, got, strict=True):
                d = np.abs(a.astype(np.float64) - c) if a.shape == c.shape else np.array([np.inf])
                worst = max(worst, float(d.max()) if np.isfinite(d).all() else float("inf"))
        diffs[graph] = worst
    return diffs


def _check(diffs: dict[str, float], tolerance: float, what: str, out: Path) -> None:
    bad = {g: d for g, d in diffs.items() if not d <= tolerance}
    if bad:
        worst = ", ".join(f"{g} {d:.2e}" for g, d in bad.items())
        raise ExportError(f"{what} differs by {worst} > tolerance {tolerance:.0e}; nothing written to {out}: "
                          "pass a larger --tolerance if that is acceptable (FP16 needs ~5e-2), else report it")


def _verify(reference: Backend, candidate: Backend, cases: dict[str, list[np.ndarray]], tolerance: float,
            what: str, out: Path) -> dict[str, float]:
    try:
        diffs = max_abs_diff(reference, candidate, cases)
    except GeoSegError:
        raise
    except Exception as err:  # noqa: BLE001 - runtimes raise their own types
        raise ExportError(f"the exported graphs fail in {what} ({first_line(err)}); nothing written to "
                          f"{out}: re-export with another --opset") from None
    _check(diffs, tolerance, what, out)
    return diffs
