"""Dense targets: known answers on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.train.targets import disk, halo, make_targets, signed_distance


def _square(shape: tuple[int, int], r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def _contact_brute_force(masks: list[np.ndarray], distance: float) -> np.ndarray:
    """Background pixels with >= 2 instances closer than ``distance`` (per-pixel reference)."""
    shape = masks[0].shape
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    out = np.zeros(shape, dtype=bool)
    union = np.any(masks, axis=0)
    for r, c in zip(*np.nonzero(~union)):
        near = sum(bool((np.hypot(yy[m] - r, xx[m] - c) < distance).any()) for m in masks)
        out[r, c] = near >= 2
    return out


def test_two_squares_two_px_apart_contact_exactly_between() -> None:
    shape = (20, 24)
    a = _square(shape, 5, 3, 15, 10)   # columns 3..9
    b = _square(shape, 5, 12, 15, 19)  # columns 12..18: gap = columns 10, 11
    t = make_targets([a, b], [0, 0], shape, contact_distance=3)
    contact = t["contact"].astype(bool)
    # the whole gap, and nothing outside the gap's columns
    assert contact[5:15, 10:12].all()
    assert not contact[:, :10].any() and not contact[:, 12:].any()
    # plus the mouth of the gap: rows 3-4 and 15-16 are < 3 px from a corner of each square
    want = np.zeros(shape, dtype=bool)
    want[3:17, 10:12] = True
    assert np.array_equal(contact, want)
    assert np.array_equal(contact, _contact_brute_force([a, b], 3))
    assert t["contact"].dtype == np.float32
    assert np.array_equal(t["extent"].astype(bool), a | b)


def test_contact_distance_is_strict_and_needs_two_instances() -> None:
    shape = (20, 24)
    a = _square(shape, 5, 3, 15, 10)
    b = _square(shape, 5, 13, 15, 19)  # gap of 3 columns: 10, 11, 12
    t = make_targets([a, b], [0, 0], shape, contact_distance=2)
    # column 11 is 2 px from both: not closer than 2; columns 10 and 12 are 3 px from the other
    assert not t["contact"].any()
    t = make_targets([a, b], [0, 0], shape, contact_distance=3)
    # column 11 is 2 px from both; columns 10 and 12 are 3 px from the farther square
    assert t["contact"][5:15, 11].all() and not t["contact"][:, [10, 12]].any()
    assert np.array_equal(t["contact"].astype(bool), _contact_brute_force([a, b], 3))
    t = make_targets([a, b], [0, 0], shape, contact_distance=4)
    assert t["contact"][5:15, 10:13].all()
    assert np.array_equal(t["contact"].astype(bool), _contact_brute_force([a, b], 4))
    # a single instance never makes contact
    assert not make_targets([a], [0], shape, contact_distance=5)["contact"].any()


def test_touching_instances_get_contact_and_boundary_at_the_seam() -> None:
    shape = (16, 20)
    a = _square(shape, 4, 2, 12, 10)   # columns 2..9
    b = _square(shape, 4, 10, 12, 18)  # columns 10..17, touching a
    t = make_targets([a, b], [0, 1], shape, boundary_width=2)
    contact = t["contact"].astype(bool)
    # the seam: the last column of a and the first of b
    assert contact[4:12, 9:11].all()
    assert not contact[4:12, :9].any() and not contact[4:12, 11:].any()
    # and the background at both ends of the seam
    seam = np.zeros(shape, dtype=bool)
    seam[4:12, 9:11] = True
    assert np.array_equal(contact & ~(a | b), _contact_brute_force([a, b], 3))
    assert np.array_equal(contact & (a | b), seam)
    boundary = t["boundary"].astype(bool)
    assert boundary[8, 8] and boundary[8, 9] and boundary[8, 10] and boundary[8, 11]
    assert not boundary[8, 7] and not boundary[8, 12]
    assert np.array_equal(t["classes"][8, 2:18], [0] * 8 + [1] * 8)
    assert t["classes"][0, 0] == -1 and t["classes"].dtype == np.int64


@pytest.mark.parametrize("width", [1, 2, 3])
def test_boundary_is_an_inner_band_of_width(width: int) -> None:
    shape = (20, 20)
    m = _square(shape, 4, 4, 16, 16)  # 12 x 12
    t = make_targets([m], [0], shape, boundary_width=width)
    inner = 12 - 2 * width
    want = m.copy()
    want[4 + width:16 - width, 4 + width:16 - width] = False
    assert np.array_equal(t["boundary"].astype(bool), want)
    assert t["boundary"].sum() == 144 - inner * inner
    assert not (t["boundary"].astype(bool) & ~m).any()  # inner: never outside the object


def test_no_boundary_along_the_array_edge() -> None:
    shape = (10, 10)
    m = _square(shape, 0, 0, 10, 5)  # cut by the top, bottom and left edges
    b = make_targets([m], [0], shape, boundary_width=1)["boundary"].astype(bool)
    assert np.array_equal(np.nonzero(b.any(axis=0))[0], [4])


def test_sdf_sign_scale_and_clip() -> None:
    shape = (60, 60)
    m = _square(shape, 20, 20, 40, 40)
    sdf = make_targets([m], [0], shape, sdf_clip=5.0)["sdf"]
    assert sdf.dtype == np.float32
    assert (sdf[m] < 0).all() and (sdf[~m] > 0).all()
    assert sdf[30, 30] == -1.0 and sdf[0, 0] == 1.0  # clipped
    assert sdf[20, 30] == pytest.approx(-1 / 5)   # outline pixel: 1 px inside
    assert sdf[18, 30] == pytest.approx(2 / 5)    # 2 px outside
    assert sdf[30, 42] == pytest.approx(3 / 5)
    assert sdf.min() >= -1 and sdf.max() <= 1
    assert (signed_distance(np.zeros(shape, bool)) == 1).all()


def test_label_image_and_mask_list_agree() -> None:
    rng = np.random.default_rng(0)
    shape = (40, 50)
    labels = np.zeros(shape, dtype=np.int32)
    boxes = [(2, 2, 12, 15), (2, 16, 12, 30), (14, 5, 30, 20), (20, 23, 38, 48)]
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        labels[r0:r1, c0:c1] = k + 1
    cats = rng.integers(0, 3, len(boxes)).tolist()
    from_labels = make_targets(labels, cats)
    from_masks = make_targets([labels == k + 1 for k in range(len(boxes))], cats, shape)
    for key in from_labels:
        assert np.array_equal(from_labels[key], from_masks[key]), key


def test_overlapping_masks_keep_their_own_boundary() -> None:
    shape = (20, 20)
    a = _square(shape, 2, 2, 12, 12)
    b = _square(shape, 8, 8, 18, 18)
    t = make_targets([a, b], [0, 0], shape, boundary_width=1)
    assert t["contact"][9, 9] == 1  # overlap is contact
    # a's bottom-right edge pixels lie inside b but are still a's boundary
    assert t["boundary"][11, 9] == 1 and t["boundary"][9, 11] == 1


def test_empty_and_errors() -> None:
    t = make_targets([], [], (5, 7))
    assert t["extent"].shape == (5, 7) and not t["extent"].any()
    assert (t["classes"] == -1).all() and (t["sdf"] == 1).all()
    with pytest.raises(ValueError, match="shape"):
        make_targets([], [])
    with pytest.raises(ValueError, match="ambiguous"):
        make_targets(np.ones((3, 3), bool), [0])
    with pytest.raises(ValueError, match="class"):
        make_targets([np.ones((3, 3), bool)], [], (3, 3))


def test_helpers() -> None:
    assert disk(1).sum() == 5 and disk(2, strict=True).sum() == 9
    assert halo(2, 3, 20.0) == 21
