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

import logging
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS

from geoseg.io.rasters import SceneInfo

log = logging.getLogger(__name__)

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


def abutting(scenes: Sequence[SceneInfo], crs: CRS | str) -> list[tuple[int, int]]:
    """Pairs of scenes whose outlines share an edge without overlapping: tiles of a mosaic cut edge to edge.

    An object across their seam is cut in two, a piece from each scene, and the pieces do
    not overlap, so :func:`drop_copies` cannot join them. "Share" allows for the float
    noise of reprojecting the outlines (a millionth of a scene's side); a shared corner is
    not an edge.

    Examples:
        >>> from geoseg.io.rasters import SceneInfo
        >>> def at(x): return SceneInfo(f"{x}.tif", f"s{x}", 8, 8, 3, "uint8", "EPSG:32636",
        ...                             (1.0, 0, 450000 + x, 0, -1.0, 40000), None, False)
        >>> abutting([at(0), at(8), at(16), at(4), at(100)], "EPSG:32636")  # s4 overlaps s0 and s8
        [(0, 1), (1, 2)]
    """
    quads = np.array([outline(s, crs) for s in scenes], dtype=object)
    side = np.sqrt(shapely.area(quads))
    left, right = shapely.STRtree(quads).query(quads, predicate="dwithin", distance=1e-6 * float(side.max()))
    out = []
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        d = 1e-6 * float(min(side[i], side[j]))
        if i >= j or shapely.intersection(quads[i], quads[j]).area > d * float(side[i] + side[j]):
            continue  # the same pair twice, or an overlap: drop_copies' work
        seam = shapely.intersection(shapely.buffer(quads[i], d), shapely.buffer(quads[j], d))
        if seam.length > 200 * d:  # a strip along an edge, not the blob of a shared corner
            out.append((i, j))
    return sorted(out)


def warn_abutting(scenes: Sequence[SceneInfo], crs: CRS | str, verb: str = "predict") -> None:
    """Warn that objects across the seams of scenes that abut are cut in two, and how to predict them whole."""
    pairs = abutting(scenes, crs) if len(scenes) > 1 else []
    if pairs:
        names = [scenes[k].name for k in sorted({k for p in pairs for k in p})]
        log.warning("scenes %s and %s abut without overlap (%d such pairs): an object across a seam is cut in two, "
                    "a piece from each scene; to find such objects whole, %s one mosaic of the %d scenes: "
                    "gdalbuildvrt mosaic.vrt <their files>, or QGIS: Raster > Miscellaneous > Build Virtual Raster "
                    "(read by windows like one scene; in the scenes' folder it stands for them)",
                    scenes[pairs[0][0]].name, scenes[pairs[0][1]].name, len(pairs), verb, len(names))


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
