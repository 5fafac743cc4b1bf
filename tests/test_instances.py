import numpy as np
import pytest

from geoseg.predict.instances import Instances, instance_means, relabel, watershed_instances


def touching_squares() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two 8x8 squares side by side (columns 2-9 and 10-17) with a contact line at column 10."""
    extent = np.zeros((12, 20), np.float32)
    extent[2:10, 2:18] = 0.9
    boundary = np.zeros_like(extent)
    contact = np.zeros_like(extent)
    contact[2:10, 10] = 0.95
    return extent, boundary, contact


def test_contact_line_splits_touching_squares():
    extent, boundary, contact = touching_squares()
    inst = watershed_instances(extent, boundary, contact)
    assert len(inst) == 2
    assert inst.labels.dtype == np.int32
    assert set(np.unique(inst.labels[2:10, 2:10])) == {1}
    assert set(np.unique(inst.labels[2:10, 11:18])) == {2}
    assert inst.area.sum() == 8 * 16  # the contact line goes to one of the two
    assert inst.labels[0].max() == 0


def test_without_contact_they_merge():
    extent, boundary, _ = touching_squares()
    inst = watershed_instances(extent, boundary, np.zeros_like(extent))
    assert len(inst) == 1
    assert inst.area.tolist() == [128]


def test_contact_ridge_decides_where_fronts_meet():
    # Seeds of unequal size: the split still follows the contact line, not the midpoint.
    extent = np.zeros((6, 30), np.float32)
    extent[1:5, 1:29] = 0.9
    contact = np.zeros_like(extent)
    contact[1:5, 20] = 0.6  # ridge, below the seed threshold there: 0.9 * 0.4 < 0.7
    core = np.zeros_like(extent)
    core[1:5, 2:4] = 0.9    # seed A (small, far left)
    core[1:5, 22:28] = 0.9  # seed B
    boundary = np.where(core > 0, 0.0, 0.5).astype(np.float32)  # no seeds elsewhere
    inst = watershed_instances(extent, boundary, contact, min_seed_area=1)
    assert len(inst) == 2
    row = inst.labels[2]
    assert (row[1:20] == 1).all() and (row[21:29] == 2).all()


def test_thresholds():
    extent = np.zeros((10, 10), np.float32)
    extent[2:8, 2:8] = 0.6  # inside the extent, never a seed at 0.7
    zero = np.zeros_like(extent)
    # unseeded but above the extent threshold: still one instance
    assert len(watershed_instances(extent, zero, zero)) == 1
    assert len(watershed_instances(extent, zero, zero, extent_threshold=0.6)) == 0  # strict >
    assert len(watershed_instances(extent, zero, zero, extent_threshold=0.65)) == 0
    extent[4:6, 4:6] = 0.8
    inst = watershed_instances(extent, zero, zero, seed_threshold=0.75, min_seed_area=4)
    assert len(inst) == 1 and inst.area[0] == 36


def test_boundary_suppresses_seeds_but_object_survives():
    extent = np.zeros((10, 10), np.float32)
    extent[2:8, 2:8] = 0.9
    boundary = np.full_like(extent, 0.5)
    inst = watershed_instances(extent, boundary, np.zeros_like(extent))
    assert len(inst) == 1 and inst.area.tolist() == [36]


def test_min_area_and_relabelling():
    extent = np.zeros((10, 20), np.float32)
    extent[1:3, 1:4] = 0.9   # 6 px
    extent[5:9, 5:9] = 0.9   # 16 px
    extent[1:4, 12:15] = 0.9  # 9 px
    zero = np.zeros_like(extent)
    inst = watershed_instances(extent, zero, zero, min_area=8, min_seed_area=1)
    assert inst.area.tolist() == [9, 16]
    assert sorted(np.unique(inst.labels).tolist()) == [0, 1, 2]
    assert (inst.labels[1:3, 1:4] == 0).all()
    assert len(watershed_instances(extent, zero, zero, min_area=1, min_seed_area=1)) == 3
    assert len(watershed_instances(extent, zero, zero, min_area=17)) == 0


def test_score_and_class_exact():
    extent = np.zeros((6, 12), np.float32)
    extent[1:5, 1:5] = 0.75
    extent[1:3, 1:5] = 1.0       # object 1: 8 px at 1.0, 8 px at 0.75 -> mean 0.875
    extent[1:5, 7:11] = 0.875    # object 2: mean 0.875
    extent[1:5, 7:9] = 0.625     # -> 8 px at 0.625, 8 px at 0.875 -> mean 0.75
    zero = np.zeros_like(extent)
    probs = np.zeros((3, 6, 12), np.float32)
    probs[0, :, :6] = 0.5
    probs[2, :, :6] = 0.25
    probs[2, 1:3, 1:5] = 1.0     # class 2 mean over object 1 = (8 * 1 + 8 * .25) / 16 = .625 > .5
    probs[1, :, 6:] = 0.75
    inst = watershed_instances(extent, zero, zero, probs, seed_threshold=0.6, min_seed_area=1)
    assert len(inst) == 2
    assert inst.score.tolist() == [0.875, 0.75]
    assert inst.class_index.tolist() == [2, 1]
    assert inst.area.tolist() == [16, 16]


def test_single_class_index_is_zero():
    extent = np.zeros((6, 6), np.float32)
    extent[1:5, 1:5] = 0.9
    zero = np.zeros_like(extent)
    inst = watershed_instances(extent, zero, zero)
    assert inst.class_index.tolist() == [0]
    assert inst.score.dtype == np.float64 and inst.class_index.dtype == np.int64


def test_valid_mask_and_nan():
    extent = np.zeros((8, 8), np.float32)
    extent[1:7, 1:7] = 0.9
    zero = np.zeros_like(extent)
    valid = np.ones_like(extent, bool)
    valid[:, 4:] = False
    inst = watershed_instances(extent, zero, zero, valid=valid)
    assert inst.area.tolist() == [18]
    assert (inst.labels[:, 4:] == 0).all()
    extent[1:7, 4:] = np.nan
    assert watershed_instances(extent, zero, zero).area.tolist() == [18]


def test_empty_and_bad_shapes():
    zero = np.zeros((5, 5), np.float32)
    inst = watershed_instances(zero, zero, zero, np.zeros((2, 5, 5)))
    assert len(inst) == 0 and inst.labels.shape == (5, 5) and not inst.labels.any()
    with pytest.raises(ValueError, match="contact has shape"):
        watershed_instances(zero, zero, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="class_probs"):
        watershed_instances(zero, zero, zero, np.zeros((5, 5)))
    with pytest.raises(ValueError, match="one value per instance"):
        Instances(np.zeros((2, 2), np.int32), np.zeros(1), np.zeros(2), np.zeros(1))


def test_helpers():
    assert relabel(np.array([[0, 2], [2, 1]]), np.array([False, True])).tolist() == [[0, 1], [1, 0]]
    assert instance_means(np.array([1, 1, 3]), np.array([0.5, 1.5, 2.0]), 3).tolist() == [1.0, 0.0, 2.0]


def _one_watershed(extent, boundary, contact, min_area=8, min_seed_area=4, et=0.5, st=0.7):
    """The reference: one watershed over the whole window (instances as sets of pixels)."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    four = ndimage.generate_binary_structure(2, 1)
    mask = np.isfinite(extent) & (extent > et)
    seeds, n = ndimage.label(mask & (extent * (1 - contact) * (1 - boundary) > st), structure=four)
    big = np.bincount(seeds.ravel(), minlength=n + 1)[1:] >= min_seed_area
    seeds = relabel(seeds, big)
    labels = watershed((1 - extent) + boundary + contact, seeds, connectivity=1, mask=mask)
    orphans, _ = ndimage.label(mask & (labels == 0), structure=four)
    labels[orphans > 0] = orphans[orphans > 0] + labels.max()
    area = np.bincount(labels.ravel())[1:]
    return {frozenset(np.flatnonzero(labels == i)) for i in np.flatnonzero(area >= min_area) + 1}


def blobs(seed: int, side: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random touching and separate rectangles with contact lines and noisy boundaries."""
    rng = np.random.default_rng(seed)
    extent = rng.uniform(0, 0.45, (side, side)).astype(np.float32)
    contact = np.zeros_like(extent)
    for _ in range(25):
        r, c = rng.integers(0, side - 20, 2)
        h, w = rng.integers(3, 20, 2)
        extent[r:r + h, c:c + w] = rng.uniform(0.55, 1.0)
        contact[r:r + h, c] = rng.uniform(0, 1)
    boundary = rng.uniform(0, 0.3, extent.shape).astype(np.float32)
    return extent, boundary, contact


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_piecewise_watershed_is_one_watershed_over_the_window(seed):
    extent, boundary, contact = blobs(seed)
    inst = watershed_instances(extent, boundary, contact)
    got = {frozenset(np.flatnonzero(inst.labels == i)) for i in range(1, len(inst) + 1)}
    assert len(got) > 5
    assert got == _one_watershed(extent, boundary, contact)
    assert inst.area.tolist() == [len(np.flatnonzero(inst.labels == i)) for i in range(1, len(inst) + 1)]
    assert np.allclose(inst.score, instance_means(inst.labels, extent, len(inst)))


def test_uint8_maps_are_their_float_probabilities():
    # predict caches probabilities as uint8 x 255: the same instances as from u8 / 255,
    # thresholds included (128 / 255 > 0.5, 127 / 255 is not)
    extent, boundary, contact = blobs(3)
    extent[0, :4] = [127 / 255, 128 / 255, 0.0, 0.0]
    q = [np.round(a * 255).astype(np.uint8) for a in (extent, boundary, contact)]
    f = [a.astype(np.float32) / np.float32(255.0) for a in q]
    a, b = watershed_instances(*q, min_area=1, min_seed_area=1), watershed_instances(*f, min_area=1, min_seed_area=1)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.score, b.score)
    assert a.labels[0, 1] > 0 and a.labels[0, 0] == 0


def _flooded_piece_by_piece(extent, boundary, contact, class_probs, valid, min_area, min_seed_area):
    """The reference: every connected piece of the mask flooded on its own, in raster order of the pieces."""
    from scipy import ndimage

    from geoseg.predict.instances import _FOUR, _flood_piece

    mask = (extent > 0.5) & valid
    pieces, _ = ndimage.label(mask, structure=_FOUR)
    labels = np.zeros(extent.shape, np.int32)
    score, area, cls = [], [], []
    for k, box in enumerate(ndimage.find_objects(pieces), start=1):
        lab = _flood_piece(pieces[box] == k, extent[box], boundary[box], contact[box], 0.7, min_seed_area)
        sizes = np.bincount(lab.ravel())[1:]
        lab = relabel(lab, sizes >= min_area)
        m = int((sizes >= min_area).sum())
        labels[box][lab > 0] = lab[lab > 0] + labels.max()
        area += sizes[sizes >= min_area].tolist()
        score += instance_means(lab, extent[box], m).tolist()
        cls += np.stack([instance_means(lab, p[box], m) for p in class_probs]).argmax(0).tolist()
    return labels, score, area, cls


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("min_area", "min_seed_area"), [(1, 1), (8, 4), (30, 9)])
def test_whole_window_equals_flooding_every_piece_on_its_own(seed: int, min_area: int, min_seed_area: int) -> None:
    # pieces with no seed, one seed (measured without a flood) and several (flooded), touching or not
    rng = np.random.default_rng(seed)
    extent = np.zeros((96, 120), np.float32)
    contact = np.zeros_like(extent)
    for _ in range(40):
        r, c = rng.integers(0, 90), rng.integers(0, 112)
        h, w = rng.integers(2, 14), rng.integers(2, 14)
        extent[r:r + h, c:c + w] = rng.uniform(0.55, 1.0)
        contact[r:r + h, c + w // 2] = rng.choice([0.0, 0.9])  # some split in two
    boundary = (rng.random(extent.shape) < 0.1).astype(np.float32) * 0.8
    classes = rng.random((3, *extent.shape)).astype(np.float32)
    valid = rng.random(extent.shape) > 0.02
    inst = watershed_instances(extent, boundary, contact, classes, valid=valid, min_area=min_area,
                               min_seed_area=min_seed_area)
    labels, score, area, cls = _flooded_piece_by_piece(extent, boundary, contact, classes, valid, min_area,
                                                       min_seed_area)
    assert len(inst) > 10 and inst.labels.max() == len(inst)
    np.testing.assert_array_equal(inst.labels, labels)
    assert inst.area.tolist() == area and inst.class_index.tolist() == cls
    np.testing.assert_allclose(inst.score, score, rtol=1e-12)


def test_nodata_patches_join_only_the_one_instance_that_encloses_them():
    extent = np.zeros((14, 30), np.float32)
    extent[2:12, 2:12] = 0.9  # roof 1
    extent[2:12, 17:28] = 0.9  # roof 2
    extent[0:6, 13:16] = 0.9  # a roof between them, cut by the window's top edge
    zero = np.zeros_like(extent)
    no_data = np.zeros(extent.shape, bool)
    no_data[6:8, 6:8] = True  # inside roof 1: filled
    no_data[2:12, 21] = True  # a strip across roof 2 (it reaches the background): not filled
    no_data[0, 14] = True  # at the window's edge, its in-window neighbours all that roof's: not filled
    no_data[12:14, 5] = True  # in the background below roof 1: not filled
    valid = ~no_data
    inst = watershed_instances(extent, zero, zero, valid=valid, no_data=no_data, min_area=1, min_seed_area=1)
    one = inst.labels[4, 4]
    assert one > 0 and (inst.labels[6:8, 6:8] == one).all() and inst.area[one - 1] == 100
    assert (inst.labels[2:12, 21] == 0).all()  # roof 2 stays two pieces, the strip is nobody's
    assert len({int(inst.labels[5, 18]), int(inst.labels[5, 25])}) == 2
    assert inst.labels[0, 13] > 0 and inst.labels[0, 14] == 0  # beyond the edge, the roof may not enclose it
    assert (inst.labels[12:14, 5] == 0).all()
    assert inst.score[one - 1] == pytest.approx(0.9)  # over the pixels with data
    # without no_data, every invalid pixel stays background (the hole of before)
    plain = watershed_instances(extent, zero, zero, valid=valid, min_area=1, min_seed_area=1)
    assert (plain.labels[6:8, 6:8] == 0).all() and plain.area[plain.labels[4, 4] - 1] == 96


def test_a_nodata_patch_between_two_instances_joins_neither():
    extent, boundary, contact = touching_squares()
    no_data = np.zeros(extent.shape, bool)
    no_data[5:7, 9:11] = True  # on the contact line: 4-adjacent to both squares
    inst = watershed_instances(extent, boundary, contact, valid=~no_data, no_data=no_data)
    assert len(inst) == 2 and (inst.labels[5:7, 9:11] == 0).all()
