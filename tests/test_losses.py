"""Losses of the routed model on hand-made masks with known values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import LovaszLoss

from geoseg.config import validate
from geoseg.errors import ConfigError
from geoseg.models import RoutedOutput, pack_cells
from geoseg.train.losses import BoundaryAwareConfig, LossConfig, RoutedLoss, lovasz_hinge_per_sample, per_sample_terms

H = W = 16


def masks(b: int = 2) -> dict[str, torch.Tensor]:
    """A square object per image, its 1-px boundary, no contact, a simple sdf, all valid."""
    extent = torch.zeros(b, H, W)
    extent[:, 4:12, 4:12] = 1.0
    eroded = -F.max_pool2d(-extent[:, None], 3, 1, 1)[:, 0]
    boundary = extent - eroded
    contact = torch.zeros(b, H, W)
    contact[:, 4:12, 7] = 1.0
    sdf = torch.where(extent > 0, -torch.ones(b, H, W), torch.ones(b, H, W))
    return {
        "extent": extent,
        "boundary": boundary,
        "contact": contact,
        "sdf": sdf,
        "valid": torch.ones(b, H, W, dtype=torch.bool),
    }


def logits_from(t: dict[str, torch.Tensor], s: float) -> torch.Tensor:
    """Logits s * (2t - 1) for extent, boundary, contact (s < 0: all wrong)."""
    return torch.stack([s * (2 * t[k] - 1) for k in ("extent", "boundary", "contact")], dim=1)


def test_perfect_and_all_wrong_dense_terms() -> None:
    t = masks()
    crit = RoutedLoss()
    good = crit.dense_terms(logits_from(t, 20.0), t)
    assert good["extent"].item() == 0.0
    assert good["boundary"].item() < 1e-6 and good["contact"].item() < 1e-6
    bad = crit.dense_terms(logits_from(t, -2.0), t)
    # every hinge error is 1 + 2 and the Lovász weights sum to 1
    assert bad["extent"].item() == pytest.approx(3.0, rel=1e-6)
    # BCE = softplus(2) everywhere; Dice = 1 - 2 * sum(p t) / sum(p + t) with p = sigmoid(-2) on t
    p_on, p_off = torch.sigmoid(torch.tensor(-2.0)).item(), torch.sigmoid(torch.tensor(2.0)).item()
    n_pos = t["contact"].sum().item()
    n_neg = t["contact"].numel() - n_pos
    dice = 1 - 2 * p_on * n_pos / (p_on * n_pos + p_off * n_neg + n_pos)
    assert bad["contact"].item() == pytest.approx(math.log1p(math.exp(2.0)) + dice, rel=1e-5)
    zero = crit.dense_terms(torch.zeros(2, 3, H, W), t)
    assert zero["extent"].item() == pytest.approx(1.0)


def test_boundary_aware_is_mean_of_sigmoid_times_sdf() -> None:
    t = masks()
    t["valid"][:, :, :4] = False
    logits = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    got = RoutedLoss().dense_terms(logits, t)["boundary_aware"]
    v = t["valid"]
    expected = (torch.sigmoid(logits[:, 0])[v] * t["sdf"][v]).mean()
    torch.testing.assert_close(got, expected)
    per = per_sample_terms(logits, t)["boundary_aware"]
    torch.testing.assert_close(per.mean(), expected)  # same valid count per sample


def test_invalid_pixels_change_nothing() -> None:
    t = masks()
    t["valid"][:, :, 10:] = False
    t["classes"] = torch.where(t["extent"] > 0, 1, -1).long()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, H, W, generator=g).requires_grad_(True)
    other = logits.detach().clone()
    other[..., 10:] = torch.randn(2, 5, H, 6, generator=g) * 50
    crit = RoutedLoss()
    a, b = crit.dense_terms(logits, t), crit.dense_terms(other, t)
    assert set(a) == {"extent", "boundary", "contact", "boundary_aware", "classes"}
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    pa, pb = per_sample_terms(logits, t), per_sample_terms(other, t)
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], msg=k)
    sum(a.values()).backward()
    assert logits.grad is not None
    assert logits.grad[..., 10:].abs().max() == 0 and logits.grad[..., :10].abs().max() > 0


def test_per_sample_lovasz_matches_smp() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 8, 8, generator=g)
    labels = (torch.rand(5, 8, 8, generator=g) > 0.6).float()
    valid = torch.rand(5, 8, 8, generator=g) > 0.2
    valid[3] = False  # a fully invalid sample: loss 0
    got = lovasz_hinge_per_sample(logits, labels, valid)
    smp = LovaszLoss("binary", per_image=True, ignore_index=-1)
    for i in range(5):
        ref = smp(logits[i : i + 1], labels[i : i + 1].masked_fill(~valid[i : i + 1], -1))
        torch.testing.assert_close(got[i], torch.as_tensor(ref, dtype=got.dtype), msg=str(i))
    assert got[3] == 0


def test_class_cross_entropy() -> None:
    t = masks(1)
    t["classes"] = torch.where(t["extent"] > 0, 2, -1).long()
    logits = torch.cat([logits_from(t, 20.0), torch.zeros(1, 3, H, W)], dim=1)
    logits[:, 5] = 30.0 * t["extent"]  # class 2 where there is an object
    assert RoutedLoss().dense_terms(logits, t)["classes"].item() < 1e-6
    logits[:, 5] = 0.0
    got = RoutedLoss().dense_terms(logits, t)["classes"].item()
    assert got == pytest.approx(math.log(3.0), rel=1e-6)


def test_ramp_schedules() -> None:
    lin, cos = BoundaryAwareConfig(), BoundaryAwareConfig(schedule="cosine")
    assert lin.weight(0.0) == 0.05 and lin.weight(1.0) == 0.5 and lin.weight(2.0) == 0.5
    assert lin.weight(0.5) == pytest.approx(0.275) and cos.weight(0.5) == pytest.approx(0.275)
    assert cos.weight(0.25) == pytest.approx(0.05 + 0.45 * (1 - math.cos(math.pi / 4)) / 2)
    with pytest.raises(ConfigError, match="unknown key 'boundary_aware.stop'"):
        validate(LossConfig, {"boundary_aware": {"stop": 1}}, "x")


def fake_output(t: dict[str, torch.Tensor], cells: torch.Tensor, utility: torch.Tensor) -> RoutedOutput:
    """PV says 0 everywhere (scale 2, cell 8); FF is perfect on its cells."""
    b = t["extent"].shape[0]
    perfect = logits_from(t, 20.0)
    ff = pack_cells(perfect, cells, 8, 0)
    pv = torch.zeros(b, 3, H // 2, W // 2)
    logits = perfect.clone()
    return RoutedOutput(logits, pv, utility, cells, ff)


def test_routed_loss_terms_and_utility_target() -> None:
    t = masks()
    cells = torch.tensor([[0, 0, 0], [0, 1, 1], [1, 0, 1]])
    utility = torch.zeros(2, 2, 2, requires_grad=True)
    crit = RoutedLoss()
    total, terms = crit(fake_output(t, cells, utility), t, progress=1.0)
    assert terms["boundary_aware_weight"].item() == pytest.approx(0.5)
    assert terms["ff_extent"].item() == 0.0 and terms["pv_extent"].item() == pytest.approx(1.0)
    # utility target: the PV cell loss minus the (near-zero) FF cell loss, per cell
    crops = crit.cell_targets(t, cells, 8, (H, W))
    gain = crit.per_sample_loss(torch.zeros(3, 3, 8, 8), crops, 0.5) - crit.per_sample_loss(
        pack_cells(logits_from(t, 20.0), cells, 8, 0), crops, 0.5
    )
    assert (gain > 0).all()
    torch.testing.assert_close(terms["utility"], F.smooth_l1_loss(torch.zeros(3), gain))
    weighted = 0.5 * terms["pv"] + 1.0 * terms["ff"] + 0.1 * terms["utility"]
    torch.testing.assert_close(total.detach(), weighted)
    total.backward()
    assert utility.grad is not None
    assert utility.grad[0, 0, 1] == 0 and utility.grad[0, 0, 0] < 0  # only FF cells regress


def test_routed_loss_with_no_ff_cells_and_padding() -> None:
    t = masks(1)
    t = {k: v[:, :14, :13] for k, v in t.items()}  # input smaller than the padded 16 x 16
    cells = torch.zeros(0, 3, dtype=torch.long)
    out = RoutedOutput(
        torch.zeros(1, 3, 14, 13),
        torch.zeros(1, 3, 8, 8),
        torch.zeros(1, 2, 2, requires_grad=True),
        cells,
        torch.zeros(0, 3, 8, 8),
    )
    total, terms = RoutedLoss()(out, t, progress=0.0)
    assert terms["ff"].item() == 0.0 and terms["utility"].item() == 0.0
    assert math.isfinite(total.item())
    crops = RoutedLoss.cell_targets(t, torch.tensor([[0, 1, 1]]), 8, (16, 16))
    assert crops["valid"][0, 6:, :].sum() == 0 and crops["valid"][0, :6, :5].all()
