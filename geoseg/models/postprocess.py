"""The watershed thresholds a model is trained and served with, and logits to probabilities."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydantic import Field, field_validator

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
    regularize: bool | tuple[str, ...] = Field(
        False, description="geoseg predict squares outlines by default: true for every class, or the "
        "classes to square (the buildings presets: [building]; trees or fields stay as traced); "
        "--regularize (every class) / --no-regularize override it")

    @field_validator("regularize")
    @classmethod
    def _names(cls, value: bool | tuple[str, ...]) -> bool | tuple[str, ...]:
        if isinstance(value, tuple) and not all(c.strip() for c in value):
            raise ValueError("give true, false, or a list of class names")
        return value


log = logging.getLogger(__name__)


def squared_classes(regularize: bool | Sequence[str], classes: Sequence[str]) -> list[str]:
    """The classes whose outlines predict squares: all of ``classes`` for True, those named otherwise.

    Examples:
        >>> squared_classes(("building",), ["building", "tree"]), squared_classes(True, ["tree"])
        (['building'], ['tree'])
    """
    if isinstance(regularize, bool):
        return list(classes) if regularize else []
    return [c for c in classes if c in regularize]


def check_regularize(regularize: bool | Sequence[str], classes: Sequence[str]) -> None:
    """Warn (training) when ``postprocess.regularize`` names a class the chips do not have.

    The buildings presets square ``building``: with chips of trees or of a class named
    otherwise (``object``: labels tiled without a class field) nothing would be squared,
    or another class left as traced, silently.
    """
    if isinstance(regularize, bool):
        return
    missing = [c for c in regularize if c not in classes]
    if missing:
        kept = squared_classes(regularize, classes)
        log.warning("postprocess.regularize names %s, not a class of the chips (%s): predict will square %s; "
                    "set postprocess.regularize to the classes whose outlines are square (true: every class, "
                    "false: none)", ", ".join(missing), ", ".join(classes),
                    ", ".join(kept) if kept else "no outline")


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
