"""Objects found twice where scenes overlap: one polygon kept, from the scene that sees it deeper inside.

Scenes of one predict run are predicted one by one, so an object in the overlap of two
scenes (adjacent acquisitions, tiles of a mosaic cut with an overlap) comes out once per
scene. With ``--overlaps once`` (the default) such copies are merged:

1. only scenes whose outlines overlap are looked at (nothing is read otherwise); their
   footprints (where they hold valid pixels, :func:`geoseg.aoi.scene_footprint`) are
   brought to the output CRS;
2. two polygons of different scenes are copies of one object when their intersection
   covers more than half of the smaller one (an object cut by one scene's edge is a copy
   of the whole one the other scene sees);
3. copies are grouped (connected pairs): where the scenes segment an object differently
   (one polygon in A, two in B), the group holds all three. Each group is kept from one
   scene only, the one that sees it deeper inside its footprint: the scene whose least
   deep point of the group (a point of each pair's intersection, measured to the
   footprint's edge) is the deepest, the view with the most context around the object;
   on a tie, the scene given first. Deciding pair by pair could keep a part from each
   scene (overlapping copies) or drop both parts of an object.

Polygons of one scene are never merged with each other: the block phases already keep
each object once per scene.
"""

from __future__ import annotations

from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS

from geoseg.io.rasters import SceneInfo

#: Two polygons of different scenes are copies of one object above this intersection / smaller area.
SAME_OBJECT = 0.5


def outline(scene: SceneInfo, crs: CRS | str) -> shapely.Polygon:
    """The scene's outline (:attr:`SceneInfo.footprint`, rotated scenes too) in ``crs``, densified to stay true."""
    quad = scene.footprint
    return gpd.GeoSeries([shapely.segmentize(quad, quad.length / 400)], crs=scene.crs).to_crs(crs).iloc[0]


def overlapping(scenes: Sequence[SceneInfo], crs: CRS | str) -> list[int]:
    """Indices of the scenes whose outline overlaps another's (with area), in ``crs``."""
    quads = np.array([outline(s, crs) for s in scenes], dtype=object)
    tree = shapely.STRtree(quads)
    left, right = tree.query(quads, predicate="intersects")
    pairs = [(int(i), int(j)) for i, j in zip(left, right, strict=True) if i < j]
    return sorted({k for i, j in pairs if shapely.intersection(quads[i], quads[j]).area > 0 for k in (i, j)})


def drop_copies(gdf: gpd.GeoDataFrame, scenes: Sequence[SceneInfo]) -> tuple[gpd.GeoDataFrame, int]:
    """``gdf`` with one polygon per object found by several overlapping scenes (see the module docstring).

    Args:
        gdf: predict's polygons, with a ``scene`` column holding each scene's name.
        scenes: the scenes of the run, in the order given (first wins a tie).

    Returns:
        The polygons kept (the input when no scenes overlap), and how many were dropped.
    """
    if len(scenes) < 2 or len(gdf) < 2:
        return gdf, 0
    over = overlapping(scenes, gdf.crs)
    if not over:
        return gdf, 0
    from geoseg.aoi import scene_footprint

    rank = {s.name: k for k, s in enumerate(scenes)}
    feet = {scenes[k].name: scene_footprint(scenes[k].source).to_crs(gdf.crs).iloc[0] for k in over}
    geoms = gdf.geometry.to_numpy().copy()
    bad = ~shapely.is_valid(geoms)
    geoms[bad] = shapely.make_valid(geoms[bad])  # GEOS cannot intersect an invalid polygon
    names = gdf["scene"].to_numpy()
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pick = (left < right) & (names[left] != names[right])
    pick &= np.isin(names[left], list(feet)) & np.isin(names[right], list(feet))
    left, right = left[pick], right[pick]
    if not len(left):
        return gdf, 0
    inter = shapely.intersection(geoms[left], geoms[right])
    smaller = np.minimum(shapely.area(geoms[left]), shapely.area(geoms[right]))
    same = shapely.area(inter) > SAME_OBJECT * smaller
    left, right, inter = left[same], right[same], inter[same]
    if not len(left):
        return gdf, 0
    point = shapely.point_on_surface(inter)
    drop = _losers(left, right, point, names, feet, rank, len(geoms))
    return gdf.drop(index=gdf.index[drop]), len(drop)


def _losers(left: np.ndarray, right: np.ndarray, point: np.ndarray, names: np.ndarray,
            feet: dict[str, shapely.Geometry], rank: dict[str, int], n: int) -> np.ndarray:
    """Polygons to drop: in each group of copies, those not of the group's deepest scene.

    Args:
        left: first polygon of each copy pair.
        right: second polygon of each pair.
        point: a point of each pair's intersection.
        names: scene name of every polygon.
        feet: footprint of each overlapping scene, in the polygons' CRS.
        rank: order of each scene as given (first wins a tie).
        n: number of polygons.

    Returns:
        Sorted indices of the polygons dropped.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, comp = connected_components(coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n)), directed=False)
    scenes = sorted(feet, key=rank.__getitem__)  # argmax takes the first of equal depths: the first given
    col = {name: k for k, name in enumerate(scenes)}
    groups, group_of_pair = np.unique(comp[left], return_inverse=True)
    members = np.unique(np.concatenate([left, right]))
    group_of = np.searchsorted(groups, comp[members])
    scene_of = np.array([col[name] for name in names[members]], dtype=np.int64)
    present = np.zeros((len(groups), len(scenes)), dtype=bool)  # the scenes with a polygon in each group
    present[group_of, scene_of] = True
    least = np.full(present.shape, -np.inf)  # the group's least deep point in each scene; -inf: not present
    for k, name in enumerate(scenes):  # each scene over the pairs of its groups only (a mosaic has many)
        sel = np.flatnonzero(present[group_of_pair, k])
        if len(sel):
            foot = feet[name]
            depth = shapely.distance(point[sel], shapely.boundary(foot)) * shapely.contains(foot, point[sel])
            column = np.full(len(groups), np.inf)
            np.minimum.at(column, group_of_pair[sel], depth)
            least[:, k] = np.where(present[:, k], column, -np.inf)
    winner = np.argmax(least, axis=1)
    losers: np.ndarray = members[scene_of != winner[group_of]]
    return losers
