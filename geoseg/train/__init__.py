"""`geoseg train`: chips to a run directory of checkpoints, metrics and curves.

- :mod:`geoseg.train.targets`: instance labels to extent/boundary/contact/sdf maps;
- :mod:`geoseg.train.augment`: satellite augmentations (albumentations, kornia);
- :mod:`geoseg.train.dataset`: samples of a tile directory;
- :mod:`geoseg.train.losses`: the routed model's losses;
- :mod:`geoseg.train.config`: :class:`TrainConfig`;
- :mod:`geoseg.train.loop`: :func:`train`, the loop;
- :mod:`geoseg.train.metrics`: validation (COCO mask AP, F1).
"""

from geoseg.train.config import TrainConfig
from geoseg.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
