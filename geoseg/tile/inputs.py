"""Checks of the inputs of `geoseg tile` that reading them does not make: before any output.

- :func:`check_label_layer`: the label file has a geometry column (not an attribute-only
  GeoPackage table, not a CSV);
- :func:`drop_small_scenes`: scenes too small for a chip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyogrio

from geoseg.errors import InputRasterError, InputVectorError
from geoseg.io.rasters import SceneInfo

#: The smallest chip side (``TileConfig.size`` >= 8): a scene narrower is too small.
MIN_SCENE_SIDE = 8


def check_label_layer(path: str | Path, layer: str | None = None) -> None:
    """Fail when the label layer has no geometry column.

    Unreadable or missing files are left to :func:`geoseg.io.vectors.read_labels`, whose
    errors say what is wrong with them.

    Raises:
        InputVectorError: the layer is a table without geometry.
    """
    path = Path(path)
    if not path.exists():
        return
    try:
        info = pyogrio.read_info(path, layer=layer)
    except Exception:  # noqa: BLE001 - read_labels reports unreadable files
        return
    if info.get("geometry_type") is None:
        raise InputVectorError(
            f"label file {path} has no geometry column (layer '{info.get('layer_name')}' is a "
            f"table of {info.get('driver')} without geometry); pass a polygon layer "
            "(GeoPackage, GeoJSON or Shapefile of polygons)"
        )


def drop_small_scenes(
    scenes: Sequence[SceneInfo], skip_bad: bool, bad: list[tuple[Path, str]]
) -> list[SceneInfo]:
    """The scenes at least :data:`MIN_SCENE_SIDE` pixels on each side.

    Args:
        scenes: inspected scenes.
        skip_bad: skip a too small scene (appended to ``bad``) instead of failing.
        bad: (path, reason) of skipped scenes, appended to.

    Raises:
        InputRasterError: a scene is too small and ``skip_bad`` is False.
    """
    keep: list[SceneInfo] = []
    for s in scenes:
        if min(s.width, s.height) >= MIN_SCENE_SIDE:
            keep.append(s)
            continue
        msg = (f"{s.path} is {s.width}x{s.height} pixels, too small for a chip (at least "
               f"{MIN_SCENE_SIDE}x{MIN_SCENE_SIDE}); remove it or pass --skip-bad")
        if not skip_bad:
            raise InputRasterError(msg)
        bad.append((s.path, msg))
    return keep
