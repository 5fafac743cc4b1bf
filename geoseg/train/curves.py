"""``curves.png`` of a run: training losses and validation metrics per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoseg.io.atomic import atomic_path

#: Training-loss columns of metrics.csv drawn on the left (``unsup``: the mean teacher's).
LOSSES = ("loss", "pv_extent", "ff_extent", "utility", "unsup")
#: Validation columns drawn on the right (``confident``: share of pixels the teacher keeps).
METRICS = ("ap", "ap50", "iou", "f1", "confident")


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss and validation metrics per epoch, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in LOSSES:
        if any(key in r for r in history):
            ax1.plot(epochs, [r.get(key, np.nan) for r in history], label=key)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.legend()
    for key in METRICS:
        if any(key in r for r in history):
            ax2.plot(epochs, [r.get(key, np.nan) for r in history], marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation")
    ax2.set_ylim(0, 1)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
