"""The window grid of a scene and its split into train/val by spatial blocks."""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import shapely
from rasterio import windows
from rasterio.windows import Window

from geoseg.errors import ConfigError, GeoSegWarning, listed
from geoseg.io.rasters import SceneInfo, window_footprint
from geoseg.tile.config import TileConfig

log = logging.getLogger(__name__)


def axis_offsets(length: int, size: int, stride: int) -> list[int]:
    """Window offsets along one axis: a regular stride, the last one flush with the edge.

    Examples:
        >>> axis_offsets(1536, 512, 448)
        [0, 448, 896, 1024]
        >>> axis_offsets(300, 512, 448)
        [0]
    """
    if length <= size:
        return [0]
    offs = list(range(0, length - size, stride))
    if offs[-1] != length - size:
        offs.append(length - size)
    return offs


def window_grid(width: int, height: int, size: int, overlap: int) -> list[list[Window]]:
    """Rows of windows covering a ``width`` × ``height`` raster.

    Windows are ``size`` square (smaller only when the raster is), with at least
    ``overlap`` pixels shared by neighbours; the last row and column are flush with the
    raster edge, so no chip needs padding.
    """
    stride = size - overlap
    rows = axis_offsets(height, size, stride)
    cols = axis_offsets(width, size, stride)
    h, w = min(size, height), min(size, width)
    return [[Window(c, r, w, h) for c in cols] for r in rows]


def check_val_scenes(patterns: Sequence[str], names: Sequence[str], skipped: Mapping[str, str] | None = None) -> None:
    """Refuse a ``--val-scenes`` pattern that matches none of the scenes tiled.

    A typo would silently give a random split, with the scene meant to be held out in train.

    Args:
        patterns: the ``val_scenes`` globs.
        names: the names of the scenes tiled.
        skipped: scenes given but not tiled, name -> why (``--aoi``, ``--skip-bad``): a
            pattern matching only those is told so.

    Raises:
        ConfigError: naming the pattern, the scenes tiled, and the skipped ones it matches.
    """
    for pat in patterns:
        if any(fnmatch.fnmatch(n, pat) for n in names):
            continue
        away = [f"{n} ({why})" for n, why in (skipped or {}).items() if fnmatch.fnmatch(n, pat)]
        if away:
            raise ConfigError(f"--val-scenes '{pat}' matches only scenes that are not tiled: "
                              f"{listed(away, 4)}; hold out a scene "
                              "that is tiled, or --val-fraction for blocks of every scene")
        shown = listed(names)
        raise ConfigError(f"--val-scenes '{pat}' matches none of the scenes tiled ({shown}); patterns match "
                          "scene names, the file names without extension (case-sensitive)")


def plan_splits(
    scenes: Sequence[SceneInfo], blocks: dict[str, list[tuple[int, int]]], cfg: TileConfig,
    sizes: Mapping[tuple[str, tuple[int, int]], int] | None = None,
) -> dict[tuple[str, tuple[int, int]], Literal["train", "val"]]:
    """Assign each split block to train or val.

    Scenes matching ``val_scenes`` go wholly to val. Of the other blocks, taken in a seeded
    shuffle, each goes to val while the val chips stay within ``round(val_fraction × chips)``
    (``sizes``: chips per block; None: one each); when none fits, with ``val_fraction`` > 0,
    no forced val scene and at least two blocks, the first of the smallest does. Counting
    chips, not blocks: a scene of 12 chips in one block beside one of 1 chip put 12 of 13
    chips in val (one block of two, drawn at random), and trained on one.

    Raises:
        ConfigError: a ``val_scenes`` pattern that matches no scene.
    """
    check_val_scenes(cfg.val_scenes, [s.name for s in scenes])
    out: dict[tuple[str, tuple[int, int]], Literal["train", "val"]] = {}
    pool: list[tuple[str, tuple[int, int]]] = []
    for s in scenes:
        forced = any(fnmatch.fnmatch(s.name, pat) for pat in cfg.val_scenes)
        for b in blocks[s.name]:
            if forced:
                out[(s.name, b)] = "val"
            else:
                pool.append((s.name, b))
    size = [1 if sizes is None else sizes[k] for k in pool]
    target = round(cfg.val_fraction * sum(size))
    order = np.random.default_rng(cfg.seed).permutation(len(pool))
    val, chips = set(), 0
    for k in order:
        if chips + size[k] <= target:
            val.add(int(k))
            chips += size[k]
    if not val and cfg.val_fraction > 0 and len(pool) >= 2 and not any(v == "val" for v in out.values()):
        val.add(int(min(order, key=lambda k: size[k])))  # the first of the smallest, in the shuffle
    for k, key in enumerate(pool):
        out[key] = "val" if k in val else "train"
    return out


Splits = dict[tuple[str, tuple[int, int]], Literal["train", "val"]]


def split_scenes(
    scenes: Sequence[SceneInfo], grids: dict[str, list[list[Window]]], cfg: TileConfig,
    keep: Mapping[str, set[tuple[int, int]]] | None = None,
) -> tuple[int, dict[str, list[tuple[int, int]]], Splits]:
    """Split blocks and their train/val split, with a validation split whenever possible.

    Blocks are ``split_block`` chips square; while ``val_fraction`` > 0 would leave val
    empty (too few blocks: one small scene), the block side is halved, down to single
    chips. Val blocks stay whole, so val chips still never share a block with train ones
    (they overlap train chips by at most ``overlap`` pixels at block edges, as before).
    With a single chip in all, val stays empty and a warning says so.

    ``keep``: per scene, the (row, col) of the windows to tile (``--aoi``; None: all);
    blocks without one are left out.

    Returns:
        The block side used, the blocks of each scene (sorted (row, col) of blocks), and
        the split of each (scene, block).
    """
    sb = cfg.split_block
    while True:
        blocks = {name: sorted({(i // sb, j // sb) for i, row in enumerate(g) for j in range(len(row))
                                if keep is None or (i, j) in keep[name]}) for name, g in grids.items()
                  if keep is None or name in keep}
        sizes = Counter((name, (i // sb, j // sb)) for name, g in grids.items() for i, row in enumerate(g)
                        for j in range(len(row)) if keep is None or (name in keep and (i, j) in keep[name]))
        splits = plan_splits(scenes, blocks, cfg, sizes)
        if cfg.val_fraction == 0 or "val" in splits.values() or sb == 1:
            break
        sb = max(1, sb // 2)
    if sb != cfg.split_block:
        log.info("split blocks of %d chips leave no validation chip; using blocks of %d",
                    cfg.split_block, sb)
    if cfg.val_fraction > 0 and "val" not in splits.values():
        warnings.warn("a single chip to tile: no validation split; geoseg train will run "
                      "without validation (tile more or larger scenes, or set val_scenes)",
                      GeoSegWarning, stacklevel=3)
    return sb, blocks, splits


def chips_beyond_labels(scene: SceneInfo, windows: Sequence[Window], geoms: np.ndarray) -> int:
    """Chips of a scene farther than one chip from the bounding box of the labels (in the scene's CRS).

    Such chips are written as negatives. Where the land beyond the labels is unlabelled rather
    than empty (labels of one district over a city's scene, of 3 scenes of 10), they teach the
    model that its buildings are background: tile warns (it cannot know which is the case).

    Args:
        scene: the scene.
        windows: its chip windows.
        geoms: the labels in the scene's CRS (none: every chip is beyond).
    """
    if not len(windows):
        return 0
    if not len(geoms):
        return len(windows)
    side = max(int(w.width) for w in windows) * float(np.hypot(scene.affine.a, scene.affine.d))
    near = shapely.box(*shapely.total_bounds(geoms)).buffer(side)
    feet = np.array([window_footprint(w, scene.affine) for w in windows], dtype=object)
    return int((~shapely.intersects(feet, near)).sum())


def held_out(grid: list[list[Window]], sb: int, split_of: Mapping[tuple[int, int], str],
             block: tuple[int, int]) -> tuple[Window, ...]:
    """The val windows of a scene that overlap the windows of train ``block`` (none for a val block).

    Neighbouring chips share ``overlap`` pixels, so the train chips at a val block's edge
    hold a strip of val pixels (and the val chips one of train pixels): the validation
    scores would count pixels the model trained on. Tile masks them out of the train
    chips (:func:`held_mask`). An overlap is under a chip, so only the eight neighbouring
    blocks are looked at.
    """
    if split_of[block] != "train":
        return ()
    bi, bj = block
    rows = range(max(0, (bi - 1) * sb), min(len(grid), (bi + 2) * sb))
    cols = range(max(0, (bj - 1) * sb), min(len(grid[0]), (bj + 2) * sb))
    mine = [grid[i][j] for i in rows for j in cols if (i // sb, j // sb) == block]
    return tuple(grid[i][j] for i in rows for j in cols if split_of.get((i // sb, j // sb)) == "val"
                 and any(windows.intersect(grid[i][j], w) for w in mine))


def held_mask(win: Window, held: Sequence[Window]) -> np.ndarray:
    """Pixels of ``win`` inside any of the ``held`` windows (the val chips' pixels), as bool.

    Examples:
        >>> held_mask(Window(0, 0, 4, 3), [Window(2, 1, 8, 8)]).astype(int).tolist()
        [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    out = np.zeros((int(win.height), int(win.width)), dtype=bool)
    for v in held:
        if windows.intersect(win, v):  # the shared part, in the pixels of ``win``
            part = windows.intersection(win, v)
            r0, c0 = int(part.row_off - win.row_off), int(part.col_off - win.col_off)
            out[r0:r0 + int(part.height), c0:c0 + int(part.width)] = True
    return out


def warn_shared_ground(scenes: Sequence[SceneInfo], grids: dict[str, list[list[Window]]], sb: int,
                       splits: Splits, keep: Mapping[str, set[tuple[int, int]]] | None = None) -> None:
    """Warn when train chips of one scene cover the ground of another scene's val chips.

    Two zooms or dates of one place, one of them in ``--val-scenes``: the model trains on
    the very roofs it is validated on, and the validation scores (the best checkpoint,
    ``calibrate``'s threshold) are optimistic. Within one scene the val blocks' pixels are
    masked out of the train chips (:func:`held_mask`); across scenes tile can only say so.
    Pairs are found on the footprints' boxes in degrees (two for a footprint across the
    antimeridian, :func:`geoseg.io.near.area_boxes`); the share is measured in the val
    scene's CRS, where a footprint across 180° stays one polygon.
    """
    import geopandas as gpd

    from geoseg.io.near import area_boxes

    def ground(split: str) -> list[tuple[str, str, shapely.Geometry, list[shapely.Geometry]]]:
        out = []
        for s in scenes:
            feet = [window_footprint(w, s.affine) for i, row in enumerate(grids[s.name])
                    for j, w in enumerate(row) if splits.get((s.name, (i // sb, j // sb))) == split
                    and (keep is None or (i, j) in keep[s.name])]  # --aoi: the windows tiled
            if feet:
                foot = shapely.union_all(feet)
                out.append((s.name, s.crs, foot, area_boxes("EPSG:4326", [(s.crs, foot)]) or []))
        return out

    val, train = ground("val"), ground("train")
    boxes = [(k, b) for k, t in enumerate(train) for b in t[3]]
    if not val or not boxes:
        return
    tree = shapely.STRtree([b for _, b in boxes])
    pairs = sorted({(i, boxes[j][0]) for i, v in enumerate(val) for b in v[3] for j in tree.query(b, "intersects")})
    found = []
    for i, k in pairs:
        (vname, vcrs, vfoot, _), (tname, tcrs, tfoot, _) = val[i], train[k]
        if vname != tname:
            there = tfoot if tcrs == vcrs else gpd.GeoSeries([tfoot], crs=tcrs).to_crs(vcrs).iloc[0]
            share = shapely.area(shapely.intersection(vfoot, there)) / shapely.area(vfoot)
            if share > 0.01:
                found.append((tname, share, vname))
    if found:
        tname, share, vname = found[0]
        log.warning("train chips of scene %s cover %.0f%% of the ground of scene %s's validation chips (%d such "
                    "pairs): the model would be validated on roofs it trained on (another zoom or date of one "
                    "place?); put every scene of a place in one split (--val-scenes)", tname, 100 * share, vname,
                    len(found))
