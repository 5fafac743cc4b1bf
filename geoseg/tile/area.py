"""``geoseg tile --aoi FILE``: chips only where the labels are complete, the rest of each chip masked.

Labels often cover part of the scenes: the task polygons of a mapping campaign, one
district of a city's scene. Land outside them is unlabelled, not empty, and chips of it
would teach the model that its roofs are background. With the labelled area's polygons,
tile writes only the windows that meet it, masks the pixels outside it in every chip (no
loss, no statistics, no validation score is taken there), and keeps only the labels that
meet it, whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from rasterio.features import geometry_mask
from rasterio.windows import Window, transform

from geoseg.errors import listed
from geoseg.io.rasters import SceneInfo

log = logging.getLogger(__name__)

Grid = list[list[Window]]


@dataclass
class TileArea:
    """The AOI on each scene: its geometry in the scene's CRS and the windows that meet it.

    Attributes:
        geoms: scene name -> the area in the scene's CRS.
        keep: scene name -> (row, col) of the grid windows that meet it.
        outside: scenes it does not meet (not tiled).
    """

    geoms: dict[str, shapely.Geometry] = field(default_factory=dict)
    keep: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)


def place(aoi: str | Path, scenes: Sequence[SceneInfo], grids: dict[str, Grid]) -> TileArea:
    """The AOI file's polygons on each scene, and the windows of each grid that meet them.

    Raises:
        InputVectorError: the AOI cannot be read, holds no polygon, or meets no scene
            (both extents given: most often a file whose declared CRS is not the one of
            its coordinates).
    """
    from geoseg.aoi import area_on_scene, read_aoi, windows_meeting
    from geoseg.errors import InputVectorError
    from geoseg.io.vectors import bounds_text

    area = read_aoi(aoi)
    out = TileArea()
    for s in scenes:
        geom = area_on_scene(area, s, 1, f"--aoi {aoi}")
        ids = [(i, j) for i, row in enumerate(grids[s.name]) for j in range(len(row))]
        hit = windows_meeting(geom, [grids[s.name][i][j] for i, j in ids], s.affine)
        keep = {ij for ij, h in zip(ids, hit, strict=True) if h}
        if not keep:
            out.outside.append(s.name)
            continue
        out.geoms[s.name], out.keep[s.name] = geom, keep
    if not out.keep:
        s = scenes[0]
        raise InputVectorError(
            f"--aoi {aoi} meets none of the {len(scenes)} scene(s) (AOI {bounds_text(area)} in {area.crs}; "
            f"scene {s.name} {bounds_text([s.footprint])} in {s.crs}); check that the AOI's CRS is the one of its "
            "coordinates, or pass the scenes that cover it")
    if out.outside:
        log.info("%d scene(s) lie away from --aoi %s and are not tiled: %s", len(out.outside), aoi,
                 listed(out.outside, 5))
    return out


def outside(win: Window, area: shapely.Geometry, scene: SceneInfo) -> np.ndarray:
    """Pixels of ``win`` whose centre lies outside ``area`` (scene CRS), as bool (rotated grids too)."""
    shape = (int(win.height), int(win.width))
    return np.asarray(geometry_mask([area], out_shape=shape, transform=transform(win, scene.affine)), dtype=bool)
