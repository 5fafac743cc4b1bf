"""`geoseg calibrate`: set a trained model's ``--budget auto`` threshold again, without training.

Training calibrates the threshold on its own validation chips at every validation
(:mod:`geoseg.train.calibrate`). This does the same for a finished run on any labelled
chips of `geoseg tile` (their ``val`` split): chips like the scenes to predict (empty land
included, which a dense training area lacks), or the run's own chips again after an
upgrade of geoseg changed the rule. The chips are normalised with the model's band
statistics, not their own, exactly as predict reads scenes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from geoseg.bands import BandStats
from geoseg.errors import CheckpointError, ConfigError
from geoseg.io.encoding import describe, recorded_meaning, recorded_scaling, reordered
from geoseg.io.rasters import GSD_TOLERANCE


@dataclass(frozen=True)
class Recalibration:
    """What :func:`recalibrate` did."""

    checkpoint: Path
    """The checkpoint rewritten (a run's ``checkpoints/best.pt``, or the ``.pt`` given)."""
    before: float
    """The threshold it held (NaN: never calibrated)."""
    after: float
    """The new threshold (-inf: FF on every cell; inf: on none)."""
    share: float
    """Share of the validation cells over the new threshold."""
    chips: int
    """Validation chips it was calibrated on."""


def recalibrate(model: str | Path, patches: str | Path | None = None, device: str = "cpu") -> Recalibration:
    """Calibrate the ``--budget auto`` threshold of a run's best weights on ``patches`` (val split).

    Args:
        model: a run directory (its ``checkpoints/best.pt``) or a ``.pt`` checkpoint.
        patches: a `geoseg tile` output with validation chips (default: the run's own
            chips, ``patches`` of its config).
        device: where the model runs (``cpu``, ``cuda`` or ``auto``).

    Returns:
        The :class:`Recalibration`; the checkpoint is rewritten atomically.

    Raises:
        CheckpointError: not a routed model's checkpoint.
        ConfigError: no chips, no validation chips, or chips with other bands or data type.
    """
    import geoseg.train.calibrate as cal
    from geoseg.config import validate
    from geoseg.models.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint, save_checkpoint
    from geoseg.train.config import TrainConfig
    from geoseg.train.dataset import ChipDataset, collate, read_stats
    from geoseg.train.losses import RoutedLoss

    path = resolve_checkpoint(model)
    ckpt = load_checkpoint(path)
    if ckpt["config"].get("model", {}).get("arch") == "maskrcnn":
        raise CheckpointError(f"{path} is a Mask R-CNN model: it has no router and no --budget auto to calibrate")
    cfg = validate(TrainConfig, ckpt["config"], f"config in {path}")
    root = Path(patches) if patches is not None else (Path(cfg.patches) if cfg.patches else None)
    if root is None:
        raise ConfigError(f"{path} does not record its chips; pass --patches DIR (an output of geoseg tile)")
    have, want = read_stats(root), BandStats.from_dict(ckpt["stats"])
    if have["bands"] != len(want.mean) or have["dtype"] != want.dtype:
        raise ConfigError(f"the chips in {root} have {have['bands']} {have['dtype']} bands, the model in {path} "
                          f"{len(want.mean)} {want.dtype}: tile scenes like those it was trained on")
    declared = recorded_scaling(have)  # None: not recorded (chips or model of an earlier version)
    if declared is not None and want.scaling is not None and declared != want.scaling:
        raise ConfigError(f"the chips in {root} declare {describe(declared)}, the model in "
                          f"{path} was trained on chips of {describe(want.scaling)}: tile scenes like those it "
                          "was trained on")
    if (order := reordered(recorded_meaning(have) or (), want.meaning or ())) is not None:
        raise ConfigError(f"the chips in {root} hold the model's bands in another order (read them as "
                          f"{','.join(map(str, order))} to match {path}): tile scenes like those it was trained on")
    _check_gsd(root, have, ckpt, path)
    d = cfg.data
    ds = ChipDataset(root, "val", crop=None, augment=None, boundary_width=d.boundary_width,
                     contact_distance=d.contact_distance, seed=cfg.seed)
    ds.stats = want  # normalised as predict reads scenes: with the model's statistics
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.val.batch_size, shuffle=False, num_workers=0,
                                         collate_fn=collate)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    net = model_from_checkpoint(ckpt).to(dev)
    buffer = cast(torch.Tensor, net.utility_threshold)
    before = float(buffer)
    res = cal.calibrate_router(net, loader, RoutedLoss(cfg.loss), dev)
    if not res:
        raise ConfigError(f"the validation chips in {root} hold no valid pixel: nothing to calibrate on")
    after = float(buffer)
    # the weights that ran (EMA when the file has them, as predict uses) and the others alike
    new = {k: {**ckpt[k], "utility_threshold": buffer.detach().cpu().clone()}
           for k in ("model", "ema") if ckpt.get(k) is not None}
    save_checkpoint(path, {**ckpt, **new})
    return Recalibration(path, before, after, float(res["auto_share"]), len(ds))


def _check_gsd(root: Path, have: dict[str, Any], ckpt: dict[str, Any], path: Path) -> None:
    """Refuse chips of another ground pixel size than the one predict reads such scenes at.

    A threshold set on chips at 0.15 m for a model that reads scenes at 0.3 m would route
    the cells of 0.3 m reads by the utilities of images twice as fine: silently off.
    """
    from geoseg.models.meta import trained_range
    from geoseg.predict.gsd import model_grid

    chips, trained = have.get("gsd"), ckpt.get("stats", {}).get("gsd")
    if not (isinstance(chips, int | float) and chips > 0 and isinstance(trained, int | float) and trained > 0):
        return  # one of them not recorded (older files): nothing to compare
    rng = trained_range(ckpt["config"])
    target = model_grid(float(trained), rng, float(chips))
    if target is not None and abs(float(chips) / target - 1.0) > GSD_TOLERANCE:
        raise ConfigError(f"the chips in {root} are at {chips:g} m a pixel, but the model in {path} reads scenes like "
                          f"them at {target:g} m (its training GSD): tile them again with --gsd {target:g}")

