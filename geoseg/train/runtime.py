"""What a training run sets up before its loop: the device, seeds, the learning-rate schedule, the mean teacher."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoseg.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Python's and numpy's RNG seeded from the worker's torch seed."""
    info = torch.utils.data.get_worker_info()
    seed = int(info.seed % 2**32) if info is not None else int(torch.initial_seed() % 2**32)
    random.seed(seed)
    np.random.seed(seed)


def lr_lambda(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``min_ratio``.

    Examples:
        >>> [round(lr_lambda(s, 10, 2, 0.0), 3) for s in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def warmup_steps(optim: Any, steps_per_epoch: int, total: int) -> int:
    """The warm-up steps of ``optim.warmup_epochs``; warns when they outlast the run.

    ``--set optim.warmup_epochs=100`` with 2 epochs: the learning rate rises for the whole run
    and never reaches ``optim.lr``, without a word before.
    """
    warmup = int(optim.warmup_epochs * steps_per_epoch)
    if warmup > total > 0:
        import logging

        logging.getLogger("geoseg.train").warning(
            "optim.warmup_epochs (%g: %d steps) is longer than the run (%d steps): the learning rate rises "
            "throughout and never reaches optim.lr (%g); lower optim.warmup_epochs or train more epochs",
            optim.warmup_epochs, warmup, total, optim.lr)
    return warmup


def mean_teacher_of(cfg: Any, has_ema: bool, batch: int, dist: Any = None) -> Any:
    """The :class:`~geoseg.train.semi.MeanTeacher` of ``cfg.semi`` (a TrainConfig), or None.

    ``dist`` (a :class:`~geoseg.train.distributed.Dist`): the teacher's batches are this rank's share.
    """
    if not cfg.semi.enabled:
        return None
    if not has_ema:
        raise ConfigError("semi needs a teacher: set semi.teacher_decay (or optim.ema_decay)")
    from geoseg.bands import load_stats
    from geoseg.train.dataset import load_stats_gsd
    from geoseg.train.semi import MeanTeacher

    assert cfg.patches is not None
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    gsd = load_stats_gsd(Path(cfg.patches))
    return MeanTeacher(cfg.semi, load_stats(cfg.patches), cfg.data.crop, batch, cfg.seed,
                       Path(cfg.patches), rank, world, gsd=gsd if math.isfinite(gsd) else None,
                       gsd_range=cfg.augment.gsd_range if cfg.augment.gsd > 0 else None,
                       reduce=dist.sum if dist is not None and dist.active else None)
