"""The watershed thresholds a model is trained and served with, and logits to probabilities."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from geoseg.config import Strict
from geoseg.models.config import FIRST_CLASS


class PostprocessConfig(Strict):
    """Postprocessing of the dense maps.

    The thresholds of the watershed that cuts instances, and whether predict
    regularizes the outlines by default.
    """

    extent_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    seed_threshold: float = Field(0.6, gt=0.0, lt=1.0)
    min_area: int = Field(16, ge=0, description="instances with fewer pixels are dropped")
    min_seed_area: int = Field(4, ge=1)
    regularize: bool = Field(False, description="geoseg predict squares the outlines by default "
                             "(--regularize / --no-regularize override it)")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float32)."""
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float32)))).astype(np.float32)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Map logits (C, H, W) to probabilities: sigmoid on extent/boundary/contact, softmax on classes.

    Examples:
        >>> probabilities(np.zeros((3, 1, 1)))[:, 0, 0].tolist()
        [0.5, 0.5, 0.5]
    """
    out = np.empty(logits.shape, dtype=np.float32)
    out[:FIRST_CLASS] = sigmoid(logits[:FIRST_CLASS])  # extent, boundary, contact
    if logits.shape[0] > FIRST_CLASS:
        z = logits[FIRST_CLASS:] - logits[FIRST_CLASS:].max(axis=0, keepdims=True)
        e = np.exp(z)
        out[FIRST_CLASS:] = e / e.sum(axis=0, keepdims=True)
    return out
