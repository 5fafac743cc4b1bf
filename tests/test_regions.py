"""Chosen cells merged into FF regions: cover, ownership, buckets, gather."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoseg.models.cells import pack_cells
from geoseg.models.regions import cost, cover, group_by_shape, pack_regions, region_cells


def _check_cover(mask: np.ndarray, regions: list) -> None:
    written = np.zeros(mask.shape, dtype=int)
    for reg in regions:
        h, w = reg.shape
        assert 0 <= reg.row and reg.row + h <= mask.shape[0] and 0 <= reg.col and reg.col + w <= mask.shape[1]
        written[reg.row:reg.row + h, reg.col:reg.col + w] += reg.paste
    assert np.array_equal(written, mask.astype(int)), "each chosen cell written exactly once, no other"


@pytest.mark.parametrize("share", [0.02, 0.1, 0.3, 0.7, 1.0])
def test_every_chosen_cell_is_written_once(share: float) -> None:
    rng = np.random.default_rng(int(share * 100))
    mask = rng.random((21, 19)) < share
    regions = cover(mask, 64, 16)
    _check_cover(mask, regions)
    # aligned squares of 1, 2, 4 or 8 cells, clipped only at the grid edge
    for r in regions:
        h, w = r.shape
        assert h in (1, 2, 4, 8) or r.row + h == 21, r
        assert w in (1, 2, 4, 8) or r.col + w == 19, r
        side = max(s for s in (1, 2, 4, 8) if s >= max(h, w) or s == 8)
        assert r.row % min(side, 8) == 0 or h < side, r


def test_a_full_grid_is_the_plain_dense_windows() -> None:
    regions = cover(np.ones((16, 12), bool), 64, 16)
    assert [(r.row, r.col, r.shape) for r in regions] == [
        (0, 0, (8, 8)), (0, 8, (8, 4)), (8, 0, (8, 8)), (8, 8, (8, 4))]
    assert all(r.paste.all() for r in regions)
    assert [r.shape for r in cover(np.ones((8, 8), bool), 64, 16, max_side=3)] == [(2, 2)] * 16


def test_clusters_share_one_halo_and_isolated_cells_stay_cells() -> None:
    mask = np.zeros((32, 32), bool)
    mask[4:8, 12:16] = True  # one 4x4 cluster
    mask[20, 3] = mask[25, 30] = True  # two lonely cells
    regions = cover(mask, 64, 16)
    _check_cover(mask, regions)
    assert sorted(r.shape for r in regions) == [(1, 1), (1, 1), (4, 4)]
    # the halo overhead no longer scales with the cells: 18 cells, 3 halos
    assert cost([(r.row, r.col, *r.shape) for r in regions], 64, 16) < 0.6 * cost(
        [(0, 0, 1, 1)] * 18, 64, 16)


def _quad_cost(mask: np.ndarray, r: int, c: int, side: int) -> int:
    """Cost of the cover by aligned squares only (whole, or its four quarters)."""
    sub = mask[r:r + side, c:c + side]
    if not sub.any():
        return 0
    whole = cost([(r, c, *sub.shape)], 64, 16)
    if side == 1:
        return whole
    h = side // 2
    return min(whole, sum(_quad_cost(mask, r + a, c + b, h) for a in (0, h) for b in (0, h)))


def test_neighbour_pairs_share_a_halo_and_cuts_never_cost_more_than_squares() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2, 2:4] = True  # a horizontal pair: one 1x2 region (squares only: a 2x2 or two cells)
    mask[4:6, 6] = True  # a vertical pair: one 2x1 region
    regions = cover(mask, 64, 16)
    assert sorted((r.row, r.col, r.shape) for r in regions) == [(2, 2, (1, 2)), (4, 6, (2, 1))]
    rng = np.random.default_rng(1)
    for share in (0.05, 0.15, 0.3, 0.5):
        m = rng.random((16, 16)) < share
        got = cost([(r.row, r.col, *r.shape) for r in cover(m, 64, 16)], 64, 16)
        assert got <= sum(_quad_cost(m, r, c, 8) for r in (0, 8) for c in (0, 8))


def test_mostly_chosen_windows_run_whole_and_shapes_are_few() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((32, 32)) < 0.75
    regions = cover(mask, 64, 16)
    assert len(regions) == 16 and {r.shape for r in regions} == {(8, 8)}
    sparse = cover(rng.random((32, 32)) < 0.15, 64, 16)
    shapes = group_by_shape(sparse)
    assert len(shapes) <= 16 and all(h in (1, 2, 4, 8) and w in (1, 2, 4, 8) for h, w in shapes)
    assert not cover(np.zeros((4, 4), bool), 64, 16)


def test_pack_regions_is_pack_cells_for_one_cell_and_crops_back() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 72, 100, generator=g)
    boxes = torch.tensor([[0, 0, 0], [1, 2, 3], [1, 4, 6]])
    torch.testing.assert_close(pack_regions(x, boxes, 1, 1, 16, 4), pack_cells(x, boxes, 16, 4), rtol=0, atol=0)
    tiles = pack_regions(x, boxes[:2], 2, 3, 16, 4)
    assert tiles.shape == (2, 3, 40, 56)
    torch.testing.assert_close(tiles[1, :, 4:-4, 4:-4], x[1, :, 32:64, 48:96], rtol=0, atol=0)
    cells = region_cells(tiles[:, :, 4:-4, 4:-4], 2, 3, 16)
    torch.testing.assert_close(cells[1, 1, 2], x[1, :, 48:64, 80:96], rtol=0, atol=0)


def test_threshold_keeps_the_cells_where_ff_pays() -> None:
    from geoseg.train.calibrate import choose_threshold

    rng = np.random.default_rng(0)
    gain = np.where(rng.random(1000) < 0.1, 1.0, -0.01)  # FF pays on 10 % of the cells
    predicted = gain + rng.normal(0, 0.1, 1000)
    thr, share = choose_threshold(predicted, gain)
    assert 0.08 < share < 0.12 and (predicted > thr).mean() == share
    assert (predicted[gain > 0] > thr).mean() > 0.98 and (predicted[gain < 0] > thr).mean() < 0.02
    assert choose_threshold(predicted, -np.abs(gain)) == (float("inf"), 0.0)


def test_threshold_is_a_rule_per_cell_whatever_the_share_of_empty_cells() -> None:
    """Validation chips mostly empty or mostly dense: the same cut between paying and empty cells."""
    from geoseg.train.calibrate import choose_threshold

    rng = np.random.default_rng(1)

    def cells(n_paying: int, n_empty: int) -> tuple[np.ndarray, np.ndarray]:
        gain = np.r_[rng.uniform(0.5, 1.5, n_paying), rng.normal(0.0, 0.02, n_empty)]
        util = np.r_[rng.uniform(0.3, 0.6, n_paying), rng.uniform(-0.1, 0.2, n_empty)]
        return util, gain

    thr_dense, share_dense = choose_threshold(*cells(90, 10))
    thr_sparse, share_sparse = choose_threshold(*cells(10, 900))
    assert 0.2 <= thr_dense <= 0.3 and 0.2 <= thr_sparse <= 0.3  # between the two groups, either way
    assert share_dense == 0.9 and abs(share_sparse - 10 / 910) < 1e-9
    # no empty cell at all: nowhere to cut, every cell runs FF
    assert choose_threshold(*cells(50, 0)) == (float("-inf"), 1.0)


def test_threshold_follows_the_expected_gain_not_single_cells() -> None:
    """A noisy cell among low-utility ones does not drag the cut down; a paying group does."""
    from geoseg.train.calibrate import choose_threshold

    util = np.linspace(0.0, 1.0, 100)
    gain = np.where(util > 0.7, 1.0, 0.0)
    gain[10] = 1.0  # one lucky low-utility cell: the fit pools it with its neighbours
    thr, share = choose_threshold(util, gain)
    assert 0.69 < thr < 0.71 and share == 0.3


def _cell_targets(extent: torch.Tensor) -> dict[str, torch.Tensor]:
    zeros = torch.zeros_like(extent)
    return {"extent": extent, "boundary": zeros, "contact": zeros, "valid": torch.ones_like(extent, dtype=torch.bool)}


def test_decision_errors_count_the_thresholded_pixels_that_disagree() -> None:
    from geoseg.train.calibrate import decision_errors

    extent = torch.zeros(2, 8, 8)
    extent[:, :4] = 1.0  # a roof on the top half
    t = _cell_targets(extent)
    right = torch.full((2, 3, 8, 8), -3.0)
    right[:, 0, :4] = 3.0
    assert decision_errors(right, t).tolist() == [0.0, 0.0]
    wrong = right.clone()
    wrong[0, 0, :2] = -3.0  # a quarter of the roof missed
    wrong[1, 1, :, :4] = 3.0  # half the cell called boundary
    assert decision_errors(wrong, t).tolist() == [0.25, 0.5]
    t["valid"][0, :2] = False  # the missed rows are outside the scene: not counted
    assert decision_errors(wrong, t)[0] == 0.0


def test_a_surer_ff_where_pv_is_already_right_is_no_gain() -> None:
    """An empty cell, PV below 0.5 everywhere and FF far below: the loss drops, the decisions do not change."""
    from geoseg.train.calibrate import decision_errors
    from geoseg.train.losses import RoutedLoss

    t = {**_cell_targets(torch.zeros(1, 16, 16)), "sdf": torch.ones(1, 16, 16)}
    pv, ff = torch.full((1, 3, 16, 16), -0.5), torch.full((1, 3, 16, 16), -6.0)
    loss = RoutedLoss()
    assert loss.per_sample_loss(pv, t, 0.5) - loss.per_sample_loss(ff, t, 0.5) > 0.3
    assert decision_errors(pv, t) - decision_errors(ff, t) == 0.0


def test_calibration_sets_the_buffer_and_old_weights_load_uncalibrated() -> None:
    from test_models import targets_for, tiny_model

    from geoseg.train.calibrate import calibrate_router
    from geoseg.train.losses import RoutedLoss

    model = tiny_model()
    assert torch.isnan(model.utility_threshold)
    batch = {"image": torch.randn(2, 3, 64, 64), **targets_for(2, 64, 64)}
    other = tiny_model()
    res = calibrate_router(model, [batch], RoutedLoss(), torch.device("cpu"), also=[other])
    assert 0 <= res["auto_share"] <= 1 and not torch.isnan(model.utility_threshold)
    assert torch.equal(model.utility_threshold, other.utility_threshold)
    state = {k: v for k, v in model.state_dict().items() if k != "utility_threshold"}
    fresh = tiny_model()
    fresh.load_state_dict(state)  # strict: a checkpoint from before the buffer still loads
    assert torch.isnan(fresh.utility_threshold)


def test_a_dense_calibration_is_said_for_best_pt_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """FF paying on every validation cell: auto is a dense pass (threshold -inf); training warns
    only when that is best.pt's epoch, not for an early epoch's untrained router."""
    from test_models import targets_for, tiny_model

    import geoseg.train.calibrate as cal
    from geoseg.train.losses import RoutedLoss

    monkeypatch.setattr(cal, "choose_threshold", lambda p, g: (float("-inf"), 1.0))
    model = tiny_model()
    batch = {"image": torch.randn(2, 3, 64, 64), **targets_for(2, 64, 64)}
    assert cal.calibrate_router(model, [batch], RoutedLoss(), torch.device("cpu")) == {"auto_share": 1.0}
    assert model.utility_threshold == float("-inf")
    history = [{"epoch": 1.0}, {"epoch": 2.0, "auto_share": 1.0}, {"epoch": 4.0, "auto_share": 0.875}]
    assert cal.dense_auto_note(history, 4) is None  # the demo's case: dense at epoch 2, 87.5 % at best
    note = cal.dense_auto_note(history, 2)
    assert note is not None and "best.pt (epoch 2)" in note and "geoseg calibrate" in note
    assert cal.dense_auto_note(history, 1) is None  # no validation that epoch


def test_predict_writes_ff_over_the_whole_region_clipped_at_the_block() -> None:
    """The unchosen cell a region covers takes FF's maps too (FF computed it): no seam inside a region."""
    from geoseg.models.regions import Region
    from geoseg.predict.phases import _paste

    logits = torch.zeros(3, 128, 192)
    assert _paste(logits, torch.ones(3, 64, 128), Region(0, 1, np.array([[True, False]])), 64) == 2
    assert logits[:, :64, 64:].eq(1).all() and logits[:, 64:].eq(0).all() and logits[:, :, :64].eq(0).all()
    edge = torch.zeros(3, 100, 100)  # a block whose last cells are partial
    maps = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 64, 64).expand(3, 64, 64)
    assert _paste(edge, maps, Region(1, 1, np.array([[True]])), 64) == 1
    torch.testing.assert_close(edge[:, 64:, 64:], maps[:, :36, :36])
    assert edge[:, :64].eq(0).all()
