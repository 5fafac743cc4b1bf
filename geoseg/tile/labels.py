"""Vector instances to per-chip instance masks, encoded as COCO RLE.

Each instance is rasterized on its own (``rasterio.features.rasterize``, pixel-centre
rule), so overlapping labels keep their own masks, and the mask stored in COCO is exactly
the rasterized truth (RLE is lossless, unlike COCO polygons re-rasterized by pycocotools).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pycocotools import mask as mask_utils
from rasterio.features import rasterize
from rasterio.windows import Window

from geoseg.io.rasters import window_footprint


def _pixel_bounds(
    polygon: shapely.Geometry, transform: Affine, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the pixels a polygon's bounds cover, clipped to the grid."""
    h, w = shape
    minx, miny, maxx, maxy = polygon.bounds
    inv = ~transform
    cols, rows = zip(*(inv @ (x, y) for x, y in ((minx, miny), (maxx, maxy),
                                                 (minx, maxy), (maxx, miny))), strict=True)
    c0, c1 = max(0, math.floor(min(cols))), min(w, math.ceil(max(cols)))
    r0, r1 = max(0, math.floor(min(rows))), min(h, math.ceil(max(rows)))
    return r0, max(r0, r1), c0, max(c0, c1)


def instance_window(
    polygon: shapely.Geometry, transform: Affine, shape: tuple[int, int]
) -> tuple[np.ndarray, int, int]:
    """Rasterize one polygon on its bounding window of a grid.

    Args:
        polygon: a Polygon in the CRS of ``transform``.
        transform: affine transform of the target grid.
        shape: (height, width) of the target grid.

    Returns:
        ``(sub, row_off, col_off)``: the boolean mask of the polygon's pixel window
        (possibly empty) and where that window starts in the grid.
    """
    r0, r1, c0, c1 = _pixel_bounds(polygon, transform, shape)
    if c1 <= c0 or r1 <= r0:
        return np.zeros((0, 0), dtype=bool), 0, 0
    sub = rasterize(
        [(polygon, 1)], out_shape=(r1 - r0, c1 - c0),
        transform=transform @ Affine.translation(c0, r0), fill=0, dtype="uint8",
    )
    return sub.view(bool), r0, c0


def instance_mask(polygon: shapely.Geometry, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Rasterize one polygon into a boolean mask of ``shape`` (pixel-centre rule).

    Only the polygon's bounding window is rasterized, then pasted into the full mask.
    """
    out = np.zeros(shape, dtype=bool)
    sub, r0, c0 = instance_window(polygon, transform, shape)
    out[r0:r0 + sub.shape[0], c0:c0 + sub.shape[1]] = sub
    return out


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a boolean mask, JSON-ready (``counts`` as str).

    Examples:
        >>> m = np.zeros((4, 4), bool); m[1:3, 1:3] = True
        >>> encode_rle(m)["size"]
        [4, 4]
    """
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": rle["counts"].decode("ascii")}


def decode_rle(segmentation: dict[str, Any]) -> np.ndarray:
    """Boolean mask of a COCO RLE (as written by :func:`encode_rle`)."""
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return np.asarray(mask_utils.decode(rle), dtype=bool)


def chip_annotations(
    geoms: np.ndarray,
    category_ids: np.ndarray,
    label_ids: np.ndarray,
    transform: Affine,
    shape: tuple[int, int],
    tree: shapely.STRtree | None = None,
    met: set[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO annotations of the instance parts inside one chip.

    Each polygon is clipped to the chip's footprint (its four corners through
    ``transform``, so rotated and skewed grids are right); every polygonal part of the clip that covers at
    least one pixel centre becomes one annotation (RLE ``segmentation``, ``bbox``,
    ``area`` in pixels, ``iscrowd=0``, ``category_id`` and the source ``label_id``).

    Args:
        geoms: Polygons in the chip's CRS.
        category_ids: COCO category id of each polygon.
        label_ids: id of the source feature of each polygon (kept for traceability).
        transform: the chip's affine transform.
        shape: (height, width) of the chip.
        tree: an STRtree over ``geoms`` (built here when None).
        met: when given, the ``label_ids`` of the polygons with an area in the chip are
            added to it, whether or not they cover a pixel centre (so the caller can tell
            the labels smaller than the pixels).

    Returns:
        Annotations without ``id``/``image_id`` (assigned when COCO is assembled).
    """
    h, w = shape
    # the chip's true outline: an axis-aligned box of two corners is wrong on a rotated grid
    chip_box = window_footprint(Window(0, 0, w, h), transform)
    tree = tree if tree is not None else shapely.STRtree(geoms)
    hits = np.sort(tree.query(chip_box, predicate="intersects"))
    if len(hits) == 0:
        return []
    parts, which = shapely.get_parts(shapely.intersection(geoms[hits], chip_box), return_index=True)
    keep = (shapely.get_type_id(parts) == shapely.GeometryType.POLYGON) & (shapely.area(parts) > 0)
    parts, src = parts[keep], hits[which[keep]]
    if met is not None:
        met.update(np.asarray(label_ids)[src].tolist())
    # Parts that touch or overlap no other part can share one rasterize call (same pixels
    # as alone); the others are rasterized one by one so each keeps its own mask.
    pairs = shapely.STRtree(parts).query(parts, predicate="intersects")
    shared = np.zeros(len(parts), dtype=bool)
    shared[pairs[0][pairs[0] != pairs[1]]] = True
    alone = np.flatnonzero(~shared)
    burnt = (rasterize(zip(parts[alone], alone + 1, strict=True), out_shape=shape,
                       transform=transform, fill=0, dtype="int32")
             if len(alone) else None)
    anns: list[dict[str, Any]] = []
    full = np.zeros(shape, dtype=np.uint8, order="F")  # reused: RLE encodes Fortran order
    for i, part in enumerate(parts):
        if shared[i]:
            sub, r0, c0 = instance_window(part, transform, shape)
        else:
            r0, r1, c0, c1 = _pixel_bounds(part, transform, shape)
            sub = burnt[r0:r1, c0:c1] == i + 1 if burnt is not None else np.zeros((0, 0), bool)
        area = int(np.count_nonzero(sub))
        if area == 0:
            continue
        rows = np.flatnonzero(sub.any(axis=1))
        cols = np.flatnonzero(sub.any(axis=0))
        sl = (slice(r0, r0 + sub.shape[0]), slice(c0, c0 + sub.shape[1]))
        full[sl] = sub
        rle = mask_utils.encode(full)
        full[sl] = 0
        anns.append({
            "category_id": int(category_ids[src[i]]),
            "label_id": int(label_ids[src[i]]),
            "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            "area": area,
            "bbox": [c0 + int(cols[0]), r0 + int(rows[0]),
                     int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)],
            "iscrowd": 0,
        })
    return anns
