"""``geoseg predict --aoi FILE``: only the blocks near an area of interest, only the objects that meet it.

A city's boundary over a country's mosaic: the blocks that, grown by ``--watershed-halo``
pixels, meet the area *own* objects; a ring of one block around them is
computed too, as their context (the watershed of a block sees ``--watershed-halo`` pixels
into its neighbours, and FF's fusion reads the edge of its neighbours' PV); no other
block is read. An object that meets the area has its centroid within half its size of
it, so a block that owns it is computed whenever the object is under twice the halo
(the rule the halo has anyway). The objects written are those whose polygon meets the
area, whole: a roof across a city boundary stays one building. (`geoseg evaluate --aoi`
clips both sides instead: it compares areas.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from geoseg.predict.plan import BlockPlan


@dataclasses.dataclass(frozen=True)
class AoiPlan:
    """The scenes' plans restricted to an area, and the area in each scene's CRS.

    Attributes:
        plans: the plans of the scenes the area comes near (``only``/``owners`` set).
        areas: the area in each plan's scene CRS (clipped to near the scene), same order.
        outside: names of the scenes the area does not come near (skipped whole).
        blocks: blocks of all the scenes (``computed`` of them are in ``plans``).
    """

    plans: list[BlockPlan]
    areas: list[shapely.Geometry]
    outside: list[str]
    blocks: int

    @property
    def computed(self) -> int:
        """Blocks computed (owners and their ring)."""
        return sum(len(p.blocks()) for p in self.plans)

    @property
    def owners(self) -> int:
        """Blocks whose objects are written."""
        return sum(len(p.owned()) for p in self.plans)


Blocks = frozenset[tuple[int, int]]


def block_sets(plan: BlockPlan, area: shapely.Geometry) -> tuple[Blocks, Blocks]:
    """``(computed, owners)`` of ``area`` (the scene's CRS).

    Owners are the blocks that, grown by ``watershed_halo`` px, meet it; computed adds a
    ring of one block around them.
    """
    from geoseg.aoi import windows_meeting

    nbh, nbw = plan.blocks_shape
    ids = [(i, j) for i in range(nbh) for j in range(nbw)]
    hit = windows_meeting(area, [plan.grown(i, j, plan.watershed_halo) for i, j in ids], plan.scene.affine)
    owners = frozenset(ij for ij, h in zip(ids, hit, strict=True) if h)
    ring = {(i + di, j + dj) for i, j in owners for di in (-1, 0, 1) for dj in (-1, 0, 1)}
    computed = frozenset(ij for ij in ring if 0 <= ij[0] < nbh and 0 <= ij[1] < nbw)
    return computed, owners


def restrict(plans: Sequence[BlockPlan], aoi: str | Path) -> AoiPlan:
    """The plans of the scenes near the AOI file's polygons, each with only its near blocks.

    Raises:
        InputVectorError: the AOI cannot be read, holds no polygon, or comes near no scene
            (the message gives both extents: most often a file whose declared CRS is not
            the one of its coordinates).
    """
    from geoseg.aoi import area_on_scene, read_aoi
    from geoseg.errors import InputVectorError
    from geoseg.io.vectors import bounds_text

    area = read_aoi(aoi)
    kept, areas, outside = [], [], []
    for plan in plans:
        geom = area_on_scene(area, plan.scene, plan.block + plan.watershed_halo, f"--aoi {aoi}")
        computed, owners = block_sets(plan, geom)
        if not owners:
            outside.append(plan.scene.name)
            continue
        kept.append(dataclasses.replace(plan, only=computed, owners=owners))
        areas.append(geom)
    total = sum(int(np.prod(p.blocks_shape)) for p in plans)
    if not kept:
        s = plans[0].scene
        raise InputVectorError(
            f"--aoi {aoi} comes near none of the {len(plans)} scene(s) (AOI {bounds_text(area)} in {area.crs}; "
            f"scene {s.name} {bounds_text([s.footprint])} in {s.crs}); check that the AOI's CRS is the one of its "
            "coordinates, or pass the scenes that cover it")
    return AoiPlan(kept, areas, outside, total)


def meeting(gdf: gpd.GeoDataFrame, area: shapely.Geometry) -> gpd.GeoDataFrame:
    """The features of ``gdf`` (in the area's CRS) whose geometry meets ``area``, whole.

    Examples:
        >>> g = gpd.GeoDataFrame({"n": [1, 2]}, geometry=[shapely.box(0, 0, 2, 2), shapely.box(5, 5, 6, 6)])
        >>> meeting(g, shapely.box(1, 1, 3, 3))["n"].tolist()
        [1]
    """
    if not len(gdf):
        return gdf
    shapely.prepare(area)
    return gdf.iloc[np.flatnonzero(shapely.intersects(area, gdf.geometry.to_numpy()))]


def near_owners(plan: BlockPlan) -> np.ndarray | None:
    """Cells FF may run on under ``--aoi``: those of the owner blocks grown by the watershed halo.

    The ring of context blocks is computed for the owners' watershed halo and PV's seams;
    FF on a ring cell farther than the halo from every owner block changes no object that
    is written, so the budget (and ``auto``) is spent on the owners' cells only.

    Returns:
        bool (rows, cols) of the scene's cells; None without ``--aoi`` (every cell).
    """
    if plan.owners is None:
        return None
    gh, gw = plan.cells_shape
    per = plan.block // plan.cell
    grow = -(-plan.watershed_halo // plan.cell)  # the halo in cells, rounded up
    near = np.zeros((gh, gw), dtype=bool)
    for i, j in plan.owners:
        near[max(0, i * per - grow):(i + 1) * per + grow, max(0, j * per - grow):(j + 1) * per + grow] = True
    return near
