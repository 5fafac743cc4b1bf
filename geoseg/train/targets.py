"""Dense training targets from instance masks: extent, boundary, contact, SDF, classes.

The network of geoseg predicts per-pixel maps, not boxes (see docs/architecture.md, "The routed model"): the
three-channel target of the SpaceNet 4 winners (``extent``, ``boundary``, ``contact``), a
clipped signed distance to the object outline (``sdf``) and a class index per pixel.
Instances are later cut by watershed from seeds ``extent·(1−contact)·(1−boundary)``, so
``boundary`` and ``contact`` must separate touching and nearly touching objects.

Everything here is vectorised: the neighbourhood tests are grey-level maximum/minimum
filters over the instance *label image* with a disk footprint, and the SDF is two
Euclidean distance transforms. Only masks with overlapping instances take a (per
instance, not per pixel) loop for the boundary.

Image edges are not object edges: an instance cut by the edge of the array (a chip or a
crop) gets no boundary there (filters replicate the edge). Callers that crop should
compute targets on the crop plus a halo of :func:`halo` pixels and crop the result, so
that neighbours just outside the crop still count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

TARGET_KEYS = ("extent", "boundary", "contact", "sdf")


def disk(radius: float, *, strict: bool = False) -> np.ndarray:
    """Boolean disk footprint of offsets within ``radius`` (Euclidean, centre included).

    Args:
        radius: radius in pixels.
        strict: keep offsets with distance ``< radius`` instead of ``<= radius``.

    Returns:
        A square boolean array of odd side.

    Examples:
        >>> disk(1).astype(int).tolist()
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """
    r = max(0, math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    d2 = yy * yy + xx * xx
    return np.asarray(d2 < radius * radius if strict else d2 <= radius * radius)


def halo(boundary_width: int = 2, contact_distance: float = 3, sdf_clip: float = 20.0) -> int:
    """Pixels of context around a crop that make its targets exact (see module doc)."""
    return int(math.ceil(max(boundary_width, contact_distance, sdf_clip))) + 1


def labels_from_masks(
    instance_masks: Sequence[np.ndarray], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Label image and per-pixel instance count of a list of boolean masks.

    Args:
        instance_masks: boolean masks of ``shape``, one per instance.
        shape: (height, width).

    Returns:
        ``(labels, count)``: int32 labels (0 background, ``k + 1`` for mask ``k``; the last
        mask wins where masks overlap) and the uint16 number of masks covering each pixel.

    Raises:
        ValueError: a mask does not have ``shape``.
    """
    labels = np.zeros(shape, dtype=np.int32)
    count = np.zeros(shape, dtype=np.uint16)
    for k, m in enumerate(instance_masks):
        m = np.asarray(m, dtype=bool)
        if m.shape != tuple(shape):
            raise ValueError(f"instance mask {k} has shape {m.shape}, expected {tuple(shape)}")
        labels[m] = k + 1
        count += m
    return labels, count


def _neighbour_extremes(labels: np.ndarray, footprint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest label and smallest *non-zero* label in each pixel's neighbourhood."""
    big = np.iinfo(np.int32).max
    mx = ndi.maximum_filter(labels, footprint=footprint, mode="nearest")
    mn = ndi.minimum_filter(np.where(labels > 0, labels, big), footprint=footprint, mode="nearest")
    return mx, mn


def boundary_map(labels: np.ndarray, width: int) -> np.ndarray:
    """Inner band of ``width`` px of each instance of a label image.

    A pixel of instance ``k`` is boundary when a pixel of another label (background or
    another instance) lies within Euclidean distance ``width``: its distance to the
    outside of ``k`` is at most ``width``. Touching instances both get a band at the seam.

    Args:
        labels: int label image, 0 is background.
        width: band width in pixels (0: no boundary).

    Returns:
        Boolean array of ``labels.shape``.
    """
    if width <= 0:
        return np.zeros(labels.shape, dtype=bool)
    fp = disk(width)
    mx = ndi.maximum_filter(labels, footprint=fp, mode="nearest")
    mn = ndi.minimum_filter(labels, footprint=fp, mode="nearest")
    return np.asarray((labels > 0) & ((mx != labels) | (mn != labels)))


def _boundary_overlapping(masks: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Per-instance inner band for masks that overlap (one erosion per instance bbox)."""
    shape = np.asarray(masks[0]).shape
    out = np.zeros(shape, dtype=bool)
    if width <= 0:
        return out
    fp = disk(width)
    for m in masks:
        m = np.asarray(m, dtype=bool)
        sl = ndi.find_objects(m.astype(np.uint8))
        if not sl or sl[0] is None:
            continue
        rs, cs = sl[0]
        r0, r1 = max(rs.start - width - 1, 0), min(rs.stop + width + 1, shape[0])
        c0, c1 = max(cs.start - width - 1, 0), min(cs.stop + width + 1, shape[1])
        sub = m[r0:r1, c0:c1]
        inner = ndi.binary_erosion(sub, structure=fp, border_value=1)
        out[r0:r1, c0:c1] |= sub & ~inner
    return out


def contact_map(labels: np.ndarray, distance: float) -> np.ndarray:
    """Pixels between or at the seam of two distinct instances.

    A background pixel is contact when pixels of two or more distinct instances lie
    closer than ``distance`` px (Euclidean, strict); an instance pixel is contact when a
    4-neighbour belongs to another instance (instances touch there).

    Args:
        labels: int label image, 0 is background.
        distance: contact distance in pixels (0: only touching seams).

    Returns:
        Boolean array of ``labels.shape``.
    """
    out = np.zeros(labels.shape, dtype=bool)
    if distance > 0:
        mx, mn = _neighbour_extremes(labels, disk(distance, strict=True))
        out |= (labels == 0) & (mx > 0) & (mn != mx)
    mx, mn = _neighbour_extremes(labels, disk(1))
    out |= (labels > 0) & ((mx > labels) | (mn < labels))
    return out


def signed_distance(extent: np.ndarray, clip: float = 20.0) -> np.ndarray:
    """Signed distance to the outline of ``extent``, clipped and scaled to [-1, 1].

    Outside pixels get the distance to the nearest object pixel (positive), inside
    pixels minus the distance to the nearest background pixel (so the outline is at
    ±1 px, never 0). Without any object (or without background) the map is +1 (−1).

    Args:
        extent: boolean mask of all objects.
        clip: distances are clipped to ``±clip`` px, then divided by ``clip``.

    Returns:
        float32 array of ``extent.shape`` in [-1, 1].
    """
    extent = np.asarray(extent, dtype=bool)
    if not extent.any():
        return np.ones(extent.shape, dtype=np.float32)
    if extent.all():
        return -np.ones(extent.shape, dtype=np.float32)
    outside = ndi.distance_transform_edt(~extent)
    inside = ndi.distance_transform_edt(extent)
    sdf = np.clip(outside - inside, -clip, clip) / clip
    return np.asarray(sdf, dtype=np.float32)


def make_targets(
    instance_masks: Sequence[np.ndarray] | np.ndarray,
    category_index: Sequence[int],
    shape: tuple[int, int] | None = None,
    *,
    boundary_width: int = 2,
    contact_distance: float = 3,
    sdf_clip: float = 20.0,
) -> dict[str, np.ndarray]:
    """Dense targets of one image from its instances.

    Args:
        instance_masks: a list of boolean (H, W) masks, one per instance (they may
            overlap), or an int (H, W) label image (0 background, ``k`` instance ``k``).
        category_index: 0-based class of each instance (of mask ``k``, or of label
            ``k + 1``).
        shape: (H, W); required for an empty list, checked otherwise.
        boundary_width: width in px of the inner band of each instance.
        contact_distance: background pixels closer than this (px) to two or more
            instances are contact; pixels where instances touch or overlap are too.
        sdf_clip: the SDF is clipped to ±``sdf_clip`` px and divided by it.

    Returns:
        ``extent``, ``boundary``, ``contact`` (float32 0/1), ``sdf`` (float32 in [-1, 1],
        negative inside), ``classes`` (int64, -1 where no object; where instances
        overlap the last one wins).

    Raises:
        ValueError: wrong shapes, or fewer classes than instances.

    Examples:
        >>> m = np.zeros((6, 6), bool); m[1:5, 1:5] = True
        >>> t = make_targets([m], [0], boundary_width=1)
        >>> int(t["boundary"].sum()), int(t["extent"].sum())
        (12, 16)
    """
    count: np.ndarray | None = None
    if isinstance(instance_masks, np.ndarray) and instance_masks.ndim == 2 and \
            np.issubdtype(instance_masks.dtype, np.integer):
        labels = instance_masks.astype(np.int32, copy=False)
        if shape is not None and labels.shape != tuple(shape):
            raise ValueError(f"label image has shape {labels.shape}, expected {tuple(shape)}")
        n = int(labels.max(initial=0))
        if labels.min(initial=0) < 0:
            raise ValueError("label image has negative labels; use 0 for background")
    else:
        if isinstance(instance_masks, np.ndarray) and instance_masks.ndim == 2:
            raise ValueError("a 2-D boolean array is ambiguous: pass a list of masks, or an "
                             "integer label image (0 background, k instance k)")
        masks = list(instance_masks)
        if shape is None:
            if not masks:
                raise ValueError("shape is required when there are no instance masks")
            shape = np.asarray(masks[0]).shape
        labels, count = labels_from_masks(masks, shape)
        n = len(masks)
    if len(category_index) < n:
        raise ValueError(f"{n} instances but only {len(category_index)} class indices")

    extent = labels > 0
    overlap = count is not None and bool((count > 1).any())
    if overlap:
        assert count is not None
        extent = np.asarray(count > 0)
        boundary = _boundary_overlapping(masks, boundary_width)
    else:
        boundary = boundary_map(labels, boundary_width)
    contact = contact_map(labels, contact_distance)
    if overlap:
        assert count is not None
        contact |= count > 1
    lut = np.concatenate([[-1], np.asarray(category_index[:n], dtype=np.int64)])
    classes = lut[labels]
    return {
        "extent": extent.astype(np.float32),
        "boundary": boundary.astype(np.float32),
        "contact": contact.astype(np.float32),
        "sdf": signed_distance(extent, sdf_clip),
        "classes": classes.astype(np.int64, copy=False),
    }
