"""Predict's polygons, block file by block file, into the output: memory bounded by a block, not the run.

The block phases leave one small GeoPackage per output block in the cache. They are read
one at a time, filtered (``--aoi``: the objects meeting the area), brought to the output
CRS and appended to the output (:class:`geoseg.io.formats.VectorSink`), so a run over a
country never holds its millions of polygons at once.

With ``--overlaps once`` an object seen by two overlapping scenes must be kept once
(:func:`geoseg.predict.overlaps.drop_copies`). Only polygons near another scene can be
such a copy: those whose envelope meets the outline of another overlapping scene are held
back and merged at the end; the rest go straight out. Memory then grows with the area
where scenes overlap, not with the scenes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geoseg.io.datums import to_crs
from geoseg.io.formats import VectorSink
from geoseg.io.rasters import SceneInfo
from geoseg.parallel import progress_bar
from geoseg.predict.area import meeting
from geoseg.predict.plan import CUT


@dataclass
class Collected:
    """What :func:`write_polygons` wrote."""

    polygons: int = 0
    copies: int = 0  # dropped as copies of one object seen by overlapping scenes
    outside_aoi: int = 0  # objects of the blocks near the area that do not meet it
    cut: dict[str, int] = field(default_factory=dict)  # per scene, objects cut by their instance window


class _NearOthers:
    """Which polygons of a scene lie near another overlapping scene (could be copies of one object)."""

    def __init__(self, scenes: Sequence[SceneInfo], crs: Any) -> None:
        from geoseg.predict.overlaps import outline, overlapping

        over = overlapping(scenes, crs) if len(scenes) > 1 else []
        self.names = np.array([scenes[k].name for k in over], dtype=object)
        self.tree = shapely.STRtree([outline(scenes[k], crs) for k in over])

    def split(self, gdf: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
        """``gdf`` as (polygons no other scene sees, polygons to hold for :func:`drop_copies`)."""
        if not len(self.names) or not len(gdf):
            return gdf, gdf.iloc[:0]
        boxes = shapely.envelope(gdf.geometry.to_numpy())  # valid whatever the polygon: a safe superset
        poly, scene = self.tree.query(boxes, predicate="intersects")
        other = self.names[scene] != gdf["scene"].to_numpy()[poly]
        held = np.zeros(len(gdf), dtype=bool)
        held[poly[other]] = True
        return gdf[~held], gdf[held]


def empty_polygons(crs: Any) -> gpd.GeoDataFrame:
    """The output of a run that found nothing: its columns, no row."""
    return gpd.GeoDataFrame({"class": [], "score": [], "area_m2": [], "scene": []},
                            geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def write_polygons(blocks: Sequence[tuple[SceneInfo, str | Path | gpd.GeoDataFrame]], out: Path,
                   scenes: Sequence[SceneInfo], *, once: bool,
                   areas: dict[str, Any] | None = None, progress: bool | None = False,
                   crs: Any = None) -> Collected:
    """Write the polygons of every block to ``out`` in ``crs`` (the first scene's), block by block.

    Args:
        blocks: per output block, its scene and its polygons (a cache file or a frame), in order.
        out: the output (:data:`geoseg.io.formats.DRIVERS`).
        scenes: the scenes of the run, in the order given (the first's CRS is the output's;
            it wins ties between copies).
        once: drop copies of objects seen by overlapping scenes (``--overlaps once``).
        areas: ``--aoi``: per scene name, the area in the scene's CRS; the objects of a block
            that do not meet it are dropped.
        progress: a progress bar over the blocks (None: on a TTY), as predict's own.
        crs: the output's CRS (``--crs``); None: the first scene's. Copies are found in the
            first scene's either way.

    Returns:
        A :class:`Collected`.
    """
    work = scenes[0].crs
    crs = work if crs is None else crs
    near = _NearOthers(scenes, work) if once else None
    done = Collected()
    held: list[gpd.GeoDataFrame] = []

    def output(g: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        return g if g.crs == crs else to_crs(g, crs, "the polygons (--crs)")

    with VectorSink(out, empty_polygons(crs), layer=out.stem) as sink:
        for scene, res in progress_bar(blocks, "write", progress, unit="block"):
            g = res if isinstance(res, gpd.GeoDataFrame) else gpd.read_file(res, use_arrow=True)
            if areas is not None and scene.name in areas:
                n = len(g)
                g = meeting(g, areas[scene.name])
                done.outside_aoi += n - len(g)
            if CUT in g:
                for name, k in g.loc[g.pop(CUT).astype(bool), "scene"].value_counts().items():
                    done.cut[str(name)] = done.cut.get(str(name), 0) + int(k)
            if not len(g):
                continue
            if g.crs != work:
                g = to_crs(g, work, f"polygons of scenes in {g.crs.to_string()}")
            if near is not None:
                g, hold = near.split(g)
                if len(hold):
                    held.append(hold)
            sink.append(output(g))
        if held:
            from geoseg.predict.overlaps import drop_copies

            kept, done.copies = drop_copies(gpd.GeoDataFrame(pd.concat(held, ignore_index=True), crs=work), scenes)
            sink.append(output(kept))
        sink.commit()
    done.polygons = sink.count
    return done
