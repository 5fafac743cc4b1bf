"""Instances from dense maps: marker-controlled watershed on extent, boundary and contact.

The network predicts per pixel the probability of ``extent`` (inside an object),
``boundary`` (on its outline) and ``contact`` (between two touching objects), the
3-channel target of the SpaceNet 4 winners, plus class probabilities when there are
several classes. Instances are cut from them in three steps:

1. **seeds**: connected components of ``extent * (1 - contact) * (1 - boundary) >
   seed_threshold``: object cores, kept apart by the contact and boundary bands;
2. **flood**: ``skimage.segmentation.watershed`` grows every seed over the energy
   ``(1 - extent) + boundary + contact`` inside ``extent > extent_threshold``, so two
   fronts meet on the contact line (its ridge) rather than half way between seeds;
3. **measure**: parts of the mask that no seed reached become instances of their own
   (a small object whose core is all boundary is not lost); instances under
   ``min_area`` pixels are dropped; the rest are numbered 1..n and measured with
   ``numpy.bincount``.

Seeds are found on the mask's pixels only; a connected piece of the mask with at most one
seed is one instance (a flood from one seed fills its piece) and is measured with the
others at once; only a piece with two seeds or more is flooded, in its bounding box (a
flood never leaves its piece, so this is one watershed over the window). Time and the
float maps scale with the area of the objects, not of the window, and a scene of
separate buildings costs no watershed at all.

See Also:
    :func:`geoseg.predict.vectorize.instances_to_frame`, which turns the labels into polygons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from geoseg.models.postprocess import PostprocessConfig

#: 4-connectivity: objects touching only at a corner stay apart (as in rasterio.features.shapes).
_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Instances:
    """Labelled instances of one raster window.

    Attributes:
        labels: int32 (H, W); 0 is background, instance ``i`` is ``labels == i`` (1..n).
        score: float64 (n,); mean extent probability of each instance's pixels.
        class_index: int64 (n,); index of the class with the highest mean probability.
        area: int64 (n,); pixels in each instance.
    """

    labels: np.ndarray
    score: np.ndarray
    class_index: np.ndarray
    area: np.ndarray

    def __post_init__(self) -> None:
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be 2-D (H, W), got shape {self.labels.shape}")
        n = len(self.score)
        if not (len(self.class_index) == len(self.area) == n):
            raise ValueError(
                f"score, class_index and area must have one value per instance; got lengths "
                f"{n}, {len(self.class_index)}, {len(self.area)}"
            )

    def __len__(self) -> int:
        return len(self.score)


def relabel(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Renumber labels so that kept ones become 1..k in order and the others 0.

    Args:
        labels: integer array of labels 0..n.
        keep: bool (n,); ``keep[i - 1]`` says whether label ``i`` survives.

    Returns:
        int32 array of the shape of ``labels``.

    Examples:
        >>> relabel(np.array([0, 1, 2, 3, 3]), np.array([True, False, True])).tolist()
        [0, 1, 0, 2, 2]
    """
    lut = np.zeros(len(keep) + 1, dtype=np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return np.asarray(lut[labels])


def instance_means(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` over the pixels of each label 1..n (0 for an empty label).

    Examples:
        >>> instance_means(np.array([0, 1, 1, 2]), np.array([9.0, 0.5, 1.0, 0.25]), 2).tolist()
        [0.75, 0.25]
    """
    flat = labels.ravel()
    sums = np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n + 1)[1:]
    counts = np.bincount(flat, minlength=n + 1)[1:]
    return np.divide(sums, counts, out=np.zeros(n), where=counts > 0)


def _check_maps(extent: np.ndarray, boundary: np.ndarray, contact: np.ndarray,
                class_probs: np.ndarray | None, valid: np.ndarray | None) -> None:
    shape = extent.shape
    if extent.ndim != 2:
        raise ValueError(f"extent must be a 2-D (H, W) probability map, got shape {shape}")
    for name, arr in (("boundary", boundary), ("contact", contact), ("valid", valid)):
        if arr is not None and arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape} but extent has {shape}; pass maps of one window")
    if class_probs is not None and (class_probs.ndim != 3 or class_probs.shape[1:] != shape):
        raise ValueError(
            f"class_probs must have shape (K, {shape[0]}, {shape[1]}), got {class_probs.shape}"
        )


def _probability(a: np.ndarray) -> np.ndarray:
    """float32 probabilities of a map given as floats, or as uint8 x 255 (predict's cache)."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    return np.asarray(a, dtype=np.float32)


def above(extent: np.ndarray, threshold: float) -> np.ndarray:
    """``extent > threshold`` where finite; for uint8 maps exactly as on their float32 values."""
    if extent.dtype == np.uint8:  # a 256-entry table: the same test as on a.astype(f32) / 255
        table = np.arange(256, dtype=np.float32) / np.float32(255.0) > threshold
        return np.asarray(table[extent])
    extent = np.asarray(extent, dtype=np.float32)
    return np.asarray(np.isfinite(extent) & (extent > threshold))


def watershed_instances(
    extent: np.ndarray,
    boundary: np.ndarray,
    contact: np.ndarray,
    class_probs: np.ndarray | None = None,
    *,
    valid: np.ndarray | None = None,
    extent_threshold: float = 0.5,
    seed_threshold: float = 0.7,
    min_area: int = 8,
    min_seed_area: int = 4,
    no_data: np.ndarray | None = None,
) -> Instances:
    """Cut instances out of probability maps by marker-controlled watershed.

    The maps may be float probabilities or uint8 (probability x 255, as predict caches
    them). The watershed runs on each connected piece of the mask (``extent >
    extent_threshold``) that holds two seeds or more, in its bounding box; a piece with one
    seed or none is one instance. Flooding never leaves a piece, so the result is that of
    one watershed over the window, and the work and the float maps scale with the
    objects' area, not the window's (a sparse block costs little).

    Args:
        extent: (H, W), probability that a pixel is inside an object.
        boundary: (H, W), probability that a pixel is on an object's outline.
        contact: (H, W), probability that a pixel lies between two touching objects.
        class_probs: (K, H, W) class probabilities, or None for a single class.
        valid: bool (H, W); pixels outside it (nodata, halo) are never part of an
            instance. Non-finite extent values are invalid too.
        extent_threshold: a pixel may belong to an instance where ``extent`` exceeds it.
        seed_threshold: seeds are where ``extent * (1 - contact) * (1 - boundary)`` exceeds it.
        min_area: instances with fewer pixels are dropped.
        min_seed_area: seeds with fewer pixels are ignored (noise); their pixels are
            flooded from the neighbouring seeds, or become an instance of their own.
        no_data: bool (H, W); pixels known to hold no data (outside ``valid`` because the
            scene masks them, not because they were not looked at). A patch of them that
            one instance encloses (every 4-neighbour of the patch is that instance's, and the
            patch does not touch the window's edge) joins it: a tiler's transparent shadow
            pixels or saturated pixels read as nodata inside a roof leave no hole in it. Other
            patches stay background, so an object never grows into a nodata collar.

    Returns:
        :class:`Instances` with labels 1..n, numbered piece by piece in raster order of
        the pieces' first pixels (in a piece: seeded instances in raster order of their
        seeds, then unseeded ones), and per instance the mean extent probability
        (``score``), the class of highest mean probability (``class_index``, 0 without
        ``class_probs``) and the pixel count (``area``, filled ``no_data`` pixels
        included; the score and the class are means over the pixels with data).

    Raises:
        ValueError: the maps do not have matching 2-D shapes.

    Examples:
        >>> ext = np.zeros((4, 9)); ext[1:3, 1:4] = 0.9; ext[1:3, 5:8] = 0.8
        >>> zero = np.zeros_like(ext)
        >>> inst = watershed_instances(ext, zero, zero, min_area=1, min_seed_area=1)
        >>> inst.labels[1].tolist(), inst.score.round(2).tolist(), inst.area.tolist()
        ([0, 1, 1, 1, 0, 2, 2, 2, 0], [0.9, 0.8], [6, 6])
    """
    _check_maps(extent, boundary, contact, class_probs, valid)
    mask = above(extent, extent_threshold)
    if valid is not None:
        mask &= valid.astype(bool)
    pieces, n_pieces = ndimage.label(mask, structure=_FOUR)
    labels = np.zeros(extent.shape, np.int32)
    keep_px = max(min_area, 1)
    # Per pixel of the mask only (never window-sized floats): its piece, extent and seed test.
    at = np.flatnonzero(mask)
    piece_at = pieces.ravel()[at]
    size = np.bincount(piece_at, minlength=n_pieces + 1)
    ext_at = _probability(extent.ravel()[at])
    core_at = ext_at * (1 - _probability(contact.ravel()[at])) * (1 - _probability(boundary.ravel()[at]))
    seeded = at[core_at > seed_threshold]
    seed_mask = np.zeros(extent.shape, bool)
    seed_mask.ravel()[seeded] = True
    seeds, n_seeds = ndimage.label(seed_mask, structure=_FOUR)  # a seed lies in one piece
    seed_of = seeds.ravel()[seeded]
    big = np.bincount(seed_of, minlength=n_seeds + 1)[1:] >= max(min_seed_area, 1)
    piece_of_seed = np.zeros(n_seeds + 1, np.int64)
    piece_of_seed[seed_of] = pieces.ravel()[seeded]
    seeds_in = np.bincount(piece_of_seed[1:][big], minlength=n_pieces + 1)
    # A piece with at most one seed is one instance (a flood from one seed fills its piece):
    # measured here at once. Only pieces with two seeds or more are flooded, each in its box.
    kept = size >= keep_px
    kept[0] = False
    flooded: dict[int, np.ndarray] = {}
    count = kept.astype(np.int64)
    boxes = ndimage.find_objects(pieces)
    for k in np.flatnonzero(kept & (seeds_in >= 2)):
        box = boxes[k - 1]
        piece = pieces[box] == k
        lab = _flood_piece(piece, _probability(extent[box]), _probability(boundary[box]),
                           _probability(contact[box]), seed_threshold, min_seed_area)
        area = np.bincount(lab.ravel())[1:]
        flooded[int(k)] = relabel(lab, area >= keep_px)
        count[k] = int(np.count_nonzero(area >= keep_px))
    first = np.cumsum(count) - count  # instances numbered before each piece's
    whole = kept & (seeds_in < 2)
    lut = np.zeros(n_pieces + 1, np.int32)
    lut[whole] = first[whole] + 1
    labels.ravel()[at] = lut[piece_at]
    for pid, lab in flooded.items():
        inside = lab > 0
        labels[boxes[pid - 1]][inside] = lab[inside] + first[pid]
    n = int(count.sum())
    # every instance's pixels, in raster order: the same sums as per piece
    lab_at = labels.ravel()[at]
    area_all = np.bincount(lab_at, minlength=n + 1)[1:].astype(np.int64)
    sums = np.bincount(lab_at, weights=ext_at.astype(np.float64), minlength=n + 1)[1:]
    score = np.divide(sums, area_all, out=np.zeros(n), where=area_all > 0)
    if class_probs is not None and n:
        means = np.stack([np.bincount(lab_at, weights=_probability(p.ravel()[at]).astype(np.float64),
                                      minlength=n + 1)[1:] for p in class_probs]) / np.maximum(area_all, 1)
        class_index = means.argmax(axis=0).astype(np.int64)
    else:
        class_index = np.zeros(n, dtype=np.int64)
    if no_data is not None and n:
        area_all += fill_enclosed(labels, no_data.astype(bool), n)
    return Instances(labels=labels, score=score, class_index=class_index, area=area_all)


def fill_enclosed(labels: np.ndarray, holes: np.ndarray, n: int) -> np.ndarray:
    """Give each 4-connected patch of ``holes`` (background there) that one instance encloses its label, in place.

    A patch is enclosed when every pixel 4-adjacent to it belongs to the same instance
    and it does not touch the window's edge (beyond which the enclosing is unknown).
    A window without such pixels costs one ``any()``; otherwise one ``ndimage.label`` of
    the window, then work on the patches' pixels only.

    Returns:
        int64 (n,): pixels added to each instance 1..n.

    Examples:
        >>> lab = np.zeros((5, 7), np.int32); lab[:, :5] = 1; lab[2, 2] = 0; lab[2, 4] = 0
        >>> holes = np.zeros((5, 7), bool); holes[2, 2] = holes[2, 4] = True
        >>> fill_enclosed(lab, holes, 1).tolist(), lab[2].tolist()
        ([1], [1, 1, 1, 1, 0, 0, 0])
    """
    if not holes.any():  # most scenes: no mask inside the imagery
        return np.zeros(n, np.int64)
    patches, n_patches = ndimage.label(holes & (labels == 0), structure=_FOUR)
    at = np.flatnonzero(patches)  # the patches' pixels only, from here on
    if not len(at):
        return np.zeros(n, np.int64)
    h, w = labels.shape
    own = patches.ravel()[at]
    rows, cols = np.divmod(at, w)
    lo = np.full(n_patches + 1, np.iinfo(np.int64).max, np.int64)
    hi = np.full(n_patches + 1, -1, np.int64)
    edge = np.zeros(n_patches + 1, bool)
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        edge[own[~inside]] = True  # touches the window's edge: never enclosed
        near = r[inside] * w + c[inside]
        other = patches.ravel()[near] != own[inside]  # a neighbour outside the patch (patches are 4-separated)
        ids, values = own[inside][other], labels.ravel()[near][other]
        np.minimum.at(lo, ids, values)
        np.maximum.at(hi, ids, values)
    enclosed = (lo == hi) & (lo > 0) & ~edge
    enclosed[0] = False
    lut = np.where(enclosed, lo, 0).astype(np.int32)
    got = lut[own]
    labels[np.unravel_index(at, labels.shape)] = got
    return np.bincount(got, minlength=n + 1)[1:].astype(np.int64)


def _flood_piece(piece: np.ndarray, extent: np.ndarray, boundary: np.ndarray, contact: np.ndarray,
                 seed_threshold: float, min_seed_area: int) -> np.ndarray:
    """Seeds, watershed and unseeded parts of one connected piece of the mask (labels 1..s+u)."""
    core = extent * (1 - contact) * (1 - boundary)
    seeds, n_seeds = ndimage.label(piece & (core > seed_threshold), structure=_FOUR)
    if n_seeds and min_seed_area > 1:
        big = np.bincount(seeds.ravel(), minlength=n_seeds + 1)[1:] >= min_seed_area
        seeds = relabel(seeds, big)
        n_seeds = int(big.sum())
    if n_seeds:
        energy = np.nan_to_num((1 - extent) + boundary + contact, nan=3.0).astype(np.float32)
        labels = np.asarray(watershed(energy, seeds, connectivity=1, mask=piece), dtype=np.int32)
    else:
        labels = np.zeros(piece.shape, np.int32)
    # Parts of the piece that no seed reached (their cores were all boundary or contact).
    orphans, _ = ndimage.label(piece & (labels == 0), structure=_FOUR)
    labels[orphans > 0] = orphans[orphans > 0] + n_seeds
    return labels


def instances_from_probs(
    probs: np.ndarray, cfg: PostprocessConfig, valid: np.ndarray | None = None,
    no_data: np.ndarray | None = None,
) -> Instances:
    """Watershed instances from probability maps (C, H, W) as made by :func:`probabilities`.

    ``no_data``: see :func:`watershed_instances` (None: ``~valid``, every invalid pixel
    having been looked at).
    """
    if no_data is None and valid is not None:
        no_data = ~valid.astype(bool)
    return watershed_instances(
        probs[0], probs[1], probs[2], probs[3:] if probs.shape[0] > 3 else None,
        valid=valid, extent_threshold=cfg.extent_threshold, seed_threshold=cfg.seed_threshold,
        min_area=cfg.min_area, min_seed_area=cfg.min_seed_area, no_data=no_data,
    )
