"""What ``geoseg train --resume`` continues with: the run's own config, checked against the chips and CONFIG."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from geoseg.config import differences, validate
from geoseg.train.config import TrainConfig
from geoseg.train.dataset import read_stats, same_chips

log = logging.getLogger("geoseg.train")

#: Keys that ``--resume`` takes from the command line (the epochs to reach, where to train), and keys the
#: trainer fills in from the chips (``patches``, bands, classes): never said to be ignored. The seed is
#: the run's: a resumed run draws what the uninterrupted one would.
RESUME_OWN = frozenset({"epochs", "device", "devices", "patches", "model.in_channels", "model.classes"})


def resumed_config(given: TrainConfig, ckpt: dict[str, Any], patches: Path, last: Path) -> TrainConfig:
    """The config of the run in ``last`` (a checkpoint), once the chips are checked to be the run's.

    A run resumes with its own config, so that it ends as an uninterrupted one would. Where
    the config given (a YAML edited since: the learning rate, a loss weight) differs from
    it, the edits would be ignored without a word; they are named in a warning.

    Raises:
        ConfigError: the checkpoint's config is not valid.
        InputRasterError: the chips are not the run's (:func:`geoseg.train.dataset.same_chips`).
    """
    saved = validate(TrainConfig, ckpt["config"], str(last))
    same_chips(ckpt, read_stats(patches), patches, last)
    warn_ignored(given.model_dump(mode="json"), saved.model_dump(mode="json"), last.parent.parent, RESUME_OWN)
    return saved


def warn_ignored(given: dict[str, Any], saved: dict[str, Any], run: Path, own: frozenset[str]) -> None:
    """Warn of the keys of the config given that differ from the run's (but ``own``): --resume ignores them."""
    ignored = [(k, a, b) for k, a, b in differences(given, saved)
               if k not in own and not (k == "data.batch_size" and a == "auto")]  # auto: the run's number
    if ignored:
        log.warning("the config given differs from the one of the run in %s in %s: --resume continues with the "
                    "run's, so %s ignored; train a new --out to use %s", run,
                    ", ".join(f"{k} ({a!r} given, {b!r} in the run)" for k, a, b in ignored[:4])
                    + (f" and {len(ignored) - 4} more" if len(ignored) > 4 else ""),
                    "these edits are" if len(ignored) > 1 else "this edit is",
                    "them" if len(ignored) > 1 else "it")
