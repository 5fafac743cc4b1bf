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


def instance_mask(polygon: shapely.Geometry, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Rasterize one polygon into a boolean mask of ``shape``.

    Only the polygon's bounding window is rasterized, then pasted into the full mask.

    Args:
        polygon: a Polygon in the CRS of ``transform``.
        transform: affine transform of the target grid.
        shape: (height, width) of the target grid.

    Returns:
        Boolean array of ``shape``.
    """
    h, w = shape
    out = np.zeros(shape, dtype=bool)
    minx, miny, maxx, maxy = polygon.bounds
    inv = ~transform
    cols, rows = zip(*(inv @ (x, y) for x, y in ((minx, miny), (maxx, maxy),
                                                 (minx, maxy), (maxx, miny))), strict=True)
    c0, c1 = max(0, math.floor(min(cols))), min(w, math.ceil(max(cols)))
    r0, r1 = max(0, math.floor(min(rows))), min(h, math.ceil(max(rows)))
    if c1 <= c0 or r1 <= r0:
        return out
    sub = rasterize(
        [(polygon, 1)], out_shape=(r1 - r0, c1 - c0),
        transform=transform @ Affine.translation(c0, r0), fill=0, dtype="uint8",
    )
    out[r0:r1, c0:c1] = sub.astype(bool)
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
    return mask_utils.decode(rle).astype(bool)


def chip_annotations(
    geoms: np.ndarray,
    category_ids: np.ndarray,
    label_ids: np.ndarray,
    transform: Affine,
    shape: tuple[int, int],
    tree: shapely.STRtree | None = None,
) -> list[dict[str, Any]]:
    """COCO annotations of the instance parts inside one chip.

    Each polygon is clipped to the chip; every polygonal part of the clip that covers at
    least one pixel centre becomes one annotation (RLE ``segmentation``, ``bbox``,
    ``area`` in pixels, ``iscrowd=0``, ``category_id`` and the source ``label_id``).

    Args:
        geoms: Polygons in the chip's CRS.
        category_ids: COCO category id of each polygon.
        label_ids: id of the source feature of each polygon (kept for traceability).
        transform: the chip's affine transform.
        shape: (height, width) of the chip.
        tree: an STRtree over ``geoms`` (built here when None).

    Returns:
        Annotations without ``id``/``image_id`` (assigned when COCO is assembled).
    """
    h, w = shape
    west, north = transform @ (0, 0)
    east, south = transform @ (w, h)
    chip_box = shapely.box(min(west, east), min(south, north), max(west, east), max(south, north))
    tree = tree if tree is not None else shapely.STRtree(geoms)
    anns: list[dict[str, Any]] = []
    for k in sorted(tree.query(chip_box, predicate="intersects")):
        clipped = shapely.intersection(geoms[k], chip_box)
        for part in shapely.get_parts(clipped):
            if shapely.get_type_id(part) != shapely.GeometryType.POLYGON or part.area <= 0:
                continue
            mask = instance_mask(part, transform, shape)
            area = int(mask.sum())
            if area == 0:
                continue
            ys, xs = np.nonzero(mask)
            anns.append({
                "category_id": int(category_ids[k]),
                "label_id": int(label_ids[k]),
                "segmentation": encode_rle(mask),
                "area": area,
                "bbox": [int(xs.min()), int(ys.min()),
                         int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                "iscrowd": 0,
            })
    return anns
