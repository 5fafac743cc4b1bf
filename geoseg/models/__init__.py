"""The routed instance-segmentation model: Enhance, PV stream, router, FF stream, fuse.

Map channels everywhere: 0 extent, 1 boundary, 2 contact, 3.. class logits (only when there
is more than one class). See :mod:`geoseg.models.routed` for the data flow.

Names are imported lazily (PEP 562), so ``from geoseg.models.config import ModelConfig``
does not import torch and segmentation-models-pytorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoseg.models.cells import all_cells, crop_centre, grid_shape, pack_cells, paste_cells
    from geoseg.models.config import (
        BOUNDARY,
        CONTACT,
        EXTENT,
        FIRST_CLASS,
        EnhanceConfig,
        ModelConfig,
        StreamConfig,
    )
    from geoseg.models.enhance import Enhance
    from geoseg.models.routed import RoutedModel, RoutedOutput
    from geoseg.models.router import k_for_budget, k_for_deadline, select_topk, select_topk_scene
    from geoseg.models.streams import build_stream

_WHERE = {
    "all_cells": "cells",
    "crop_centre": "cells",
    "grid_shape": "cells",
    "pack_cells": "cells",
    "paste_cells": "cells",
    "BOUNDARY": "config",
    "CONTACT": "config",
    "EXTENT": "config",
    "FIRST_CLASS": "config",
    "EnhanceConfig": "config",
    "ModelConfig": "config",
    "StreamConfig": "config",
    "Enhance": "enhance",
    "RoutedModel": "routed",
    "RoutedOutput": "routed",
    "k_for_budget": "router",
    "k_for_deadline": "router",
    "select_topk": "router",
    "select_topk_scene": "router",
    "build_stream": "streams",
}

__all__ = [
    "BOUNDARY",
    "CONTACT",
    "EXTENT",
    "Enhance",
    "EnhanceConfig",
    "FIRST_CLASS",
    "ModelConfig",
    "RoutedModel",
    "RoutedOutput",
    "StreamConfig",
    "all_cells",
    "build_stream",
    "crop_centre",
    "grid_shape",
    "k_for_budget",
    "k_for_deadline",
    "pack_cells",
    "paste_cells",
    "select_topk",
    "select_topk_scene",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'geoseg.models' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"geoseg.models.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
