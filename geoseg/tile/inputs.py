"""Checks of the inputs of `geoseg tile` that reading them does not make: before any output.

- :func:`drop_small_scenes`: scenes too small for a chip.
"""

from __future__ import annotations

from collections.abc import Sequence

from geoseg.errors import InputRasterError
from geoseg.io.rasters import SceneInfo

#: The smallest chip side (``TileConfig.size`` >= 8): a scene narrower is too small.
MIN_SCENE_SIDE = 8


def drop_small_scenes(
    scenes: Sequence[SceneInfo], skip_bad: bool, bad: list[tuple[str, str]]
) -> list[SceneInfo]:
    """The scenes at least :data:`MIN_SCENE_SIDE` pixels on each side.

    Args:
        scenes: inspected scenes.
        skip_bad: skip a too small scene (appended to ``bad``) instead of failing.
        bad: (source, reason) of skipped scenes, appended to.

    Raises:
        InputRasterError: a scene is too small and ``skip_bad`` is False.
    """
    keep: list[SceneInfo] = []
    for s in scenes:
        if min(s.width, s.height) >= MIN_SCENE_SIDE:
            keep.append(s)
            continue
        msg = (f"{s.source} is {s.width}x{s.height} pixels, too small for a chip (at least "
               f"{MIN_SCENE_SIDE}x{MIN_SCENE_SIDE}); remove it or pass --skip-bad")
        if not skip_bad:
            raise InputRasterError(msg)
        bad.append((s.source, msg))
    return keep
