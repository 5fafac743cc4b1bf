"""Checks of the inputs of `geoseg tile` that reading them does not make: before any output.

- :func:`drop_small_scenes`: scenes too small for a chip.
- :func:`same_kind`: scenes whose pixels one set of band statistics cannot normalise.
- :func:`warn_upsampling`: ``--gsd`` far finer than the scenes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from geoseg.errors import InputRasterError
from geoseg.io.encoding import grouped, one_encoding
from geoseg.io.rasters import SceneInfo

log = logging.getLogger(__name__)

#: Scenes resampled more than this many times finer than stored are warned about (as predict does).
UPSAMPLE_WARN = 4.0

#: The smallest chip side (``TileConfig.size`` >= 8): a scene narrower is too small.
MIN_SCENE_SIDE = 8


def same_kind(scenes: Sequence[SceneInfo]) -> None:
    """Refuse scenes of one run with other band counts, data types or declared scales/offsets.

    Raises:
        InputRasterError: naming the scenes of each kind and what to do.
    """
    if len({s.count for s in scenes}) > 1:
        n = min(s.count for s in scenes)
        more = next(s for s in scenes if s.count > n)
        bands = " ".join(f"-b {b}" for b in range(1, n + 1))
        counts = grouped(scenes, lambda s: s.count, str)
        raise InputRasterError(
            f"scenes have different band counts ({counts}); tile them into separate folders, or read the same "
            f"bands of each: a VRT beside each scene of more bands, such as gdalbuildvrt {bands} "
            f"{more.name}_b{''.join(str(b) for b in range(1, n + 1))}.vrt {more.source} (in the scenes' folder "
            "it stands for the scene)")
    one_encoding(scenes)


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
        at = f" at {s.gsd:.3g} m/px (--gsd)" if s.moved else ""
        fix = "tile it at a finer --gsd, or pass --skip-bad" if s.resample > 1.0 else "remove it or pass --skip-bad"
        msg = (f"{s.source} is {s.width}x{s.height} pixels{at}, too small for a chip (at least "
               f"{MIN_SCENE_SIDE}x{MIN_SCENE_SIDE}); {fix}")
        if not skip_bad:
            raise InputRasterError(msg)
        bad.append((s.source, msg))
    return keep


def warn_upsampling(before: Sequence[SceneInfo], after: Sequence[SceneInfo]) -> None:
    """Warn, before any work, of scenes ``--gsd`` resamples over :data:`UPSAMPLE_WARN` times finer.

    Chips of a 0.3 m scene at 0.05 m hold no detail the scene lacks: 36 times the pixels
    (and the disk), and a model trained on them learns blur at the scale it will be asked
    to find sharp roofs at.
    """
    square = [(a, b) for a, b in zip(before, after, strict=True) if b.moved and a.pixel_text != b.pixel_text
              and " x " in a.pixel_text]
    if square:
        a, b = square[0]
        log.info("%d scene(s) have pixels that are not square on the ground, e.g. %s: %s m (width x height); "
                 "their chips are on square pixels of %.3g m, as predict reads such scenes", len(square), a.name,
                 a.pixel_text, b.gsd)
    far = [(a, b) for a, b in zip(before, after, strict=True) if b.resample < 1 / UPSAMPLE_WARN]
    if far:
        a, b = far[0]
        log.warning("%d scene(s) are resampled over %gx finer than stored by --gsd, e.g. %s: %.3g m to %.3g m a "
                    "pixel, %.0fx the pixels, with no detail the scene lacks; tile at the scenes' own pixel size "
                    "(no --gsd) or near it", len(far), UPSAMPLE_WARN, a.name, a.gsd, b.gsd, (a.gsd / b.gsd) ** 2)
