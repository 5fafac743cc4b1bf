"""The routed model: Enhance, cells gather/scatter, router, streams, RoutedModel."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from geoseg.config import deep_update, validate
from geoseg.errors import CheckpointError, ConfigError
from geoseg.models import (
    Enhance,
    EnhanceConfig,
    ModelConfig,
    RoutedModel,
    StreamConfig,
    all_cells,
    build_stream,
    k_for_budget,
    k_for_deadline,
    pack_cells,
    paste_cells,
    select_topk,
    select_topk_scene,
)
from geoseg.models.router import random_extra_mask, topk_mask
from geoseg.train.losses import RoutedLoss

# tiny but real: cell 32 + 2 * 16 halo = 64 for FF; PV at 1/2 with depth 4 -> multiple 32
TINY: dict[str, Any] = {
    "scale": 2,
    "cell": 32,
    "halo": 16,
    "pv": {"encoder": "tu-regnety_002", "encoder_depth": 4, "decoder_channels": [16, 16, 8, 8]},
    "ff": {"encoder": "resnet18", "encoder_depth": 4, "decoder_channels": [16, 16, 8, 8]},
}


def tiny_cfg(**overrides: Any) -> ModelConfig:
    return validate(ModelConfig, deep_update(TINY, overrides), "test")


def tiny_model(**overrides: Any) -> RoutedModel:
    torch.manual_seed(0)
    return RoutedModel.from_config(tiny_cfg(**overrides))


def targets_for(b: int, h: int, w: int, n_classes: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    extent = torch.zeros(b, h, w)
    extent[:, h // 4 : h // 2, w // 4 : 3 * w // 4] = 1.0
    out = {
        "extent": extent,
        "boundary": (torch.rand(b, h, w, generator=g) > 0.9).float(),
        "contact": (torch.rand(b, h, w, generator=g) > 0.95).float(),
        "sdf": torch.randn(b, h, w, generator=g),
        "valid": torch.ones(b, h, w, dtype=torch.bool),
    }
    if n_classes > 1:
        cls = torch.randint(0, n_classes, (b, h, w), generator=g)
        out["classes"] = cls.masked_fill(extent == 0, -1)
    return out


# ----------------------------------------------------------------- Enhance
@pytest.mark.parametrize("bands", [1, 3, 4])
def test_enhance_is_identity_at_init(bands: int) -> None:
    x = torch.randn(2, bands, 37, 29)
    enh = Enhance(bands, EnhanceConfig(hidden=8))
    assert torch.equal(enh(x), x)
    assert sum(p.numel() for p in enh.parameters() if p.requires_grad) > 0


def test_enhance_learns_and_can_be_disabled() -> None:
    x = torch.randn(1, 3, 16, 16)
    enh = Enhance(3)
    (enh(x) * torch.randn_like(x)).sum().backward()
    assert enh.amount is not None and enh.amount.grad is not None
    assert enh.amount.grad.abs().sum() > 0
    off = Enhance(3, EnhanceConfig(enabled=False))
    assert off(x) is x and not list(off.parameters())


# ----------------------------------------------------------------- cells
def naive_pack(x: torch.Tensor, cells: torch.Tensor, cell: int, halo: int) -> torch.Tensor:
    """Loop reference of pack_cells (the semantics any kernel must match)."""
    h, w = x.shape[-2:]
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    pads = (halo, halo + gw * cell - w, halo, halo + gh * cell - h)
    mode = "reflect" if max(pads) < min(h, w) else "constant"
    xp = F.pad(x, pads, mode=mode)
    side = cell + 2 * halo
    return torch.stack([xp[b, :, r * cell : r * cell + side, c * cell : c * cell + side] for b, r, c in cells.tolist()])


@pytest.mark.parametrize(("h", "w", "cell", "halo"), [(96, 128, 32, 8), (100, 70, 32, 16), (8, 8, 4, 8)])
def test_pack_matches_loop_and_paste_round_trips(h: int, w: int, cell: int, halo: int) -> None:
    x = torch.randn(2, 3, h, w)
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    cells = all_cells(2, gh, gw)
    tiles = pack_cells(x, cells, cell, halo)
    assert tiles.shape == (2 * gh * gw, 3, cell + 2 * halo, cell + 2 * halo)
    torch.testing.assert_close(tiles, naive_pack(x, cells, cell, halo), rtol=0, atol=0)
    back = paste_cells(torch.zeros_like(x), cells, tiles, cell, halo)
    torch.testing.assert_close(back, x, rtol=0, atol=0)


def test_paste_touches_only_chosen_cells_and_is_differentiable() -> None:
    x = torch.randn(1, 2, 64, 64)
    cells = torch.tensor([[0, 0, 1], [0, 1, 0]])
    tiles = pack_cells(x, cells, 32, 4).requires_grad_(True)
    base = torch.full_like(x, 7.0).requires_grad_(True)
    out = paste_cells(base, cells, tiles, 32, 4)
    assert torch.equal(out[..., :32, 32:], x[..., :32, 32:])
    assert torch.equal(out[..., 32:, :32], x[..., 32:, :32])
    assert (out[..., :32, :32] == 7).all() and (out[..., 32:, 32:] == 7).all()
    out.sum().backward()
    assert base.grad is not None and tiles.grad is not None
    assert base.grad.sum() == 2 * 2 * 32 * 32  # only the two untouched cells
    assert tiles.grad[..., 4:-4, 4:-4].eq(1).all() and tiles.grad[..., :4, :].eq(0).all()


def test_border_cells_get_reflected_halo() -> None:
    x = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64)
    tile = pack_cells(x, torch.tensor([[0, 0, 0]]), 32, 4)[0, 0]
    # row above the image = row 1 of the image (reflect, edge not repeated)
    torch.testing.assert_close(tile[3, 4:36], x[0, 0, 1, :32])
    torch.testing.assert_close(tile[0, 4:36], x[0, 0, 4, :32])
    torch.testing.assert_close(tile[4:36, 4:36], x[0, 0, :32, :32])


# ----------------------------------------------------------------- router
@pytest.mark.parametrize("budget", [0.01, 0.1, 0.25, 0.5, 1.0])
def test_select_topk_picks_exactly_k(budget: float) -> None:
    utility = torch.randn(3, 5, 7)
    k = k_for_budget(35, budget)
    assert k == max(1, math.ceil(round(budget * 35, 9)))
    cells = select_topk(utility, k)
    assert cells.shape == (3 * k, 3)
    for b in range(3):
        mine = cells[cells[:, 0] == b]
        best = utility[b].flatten().topk(k).values
        got = utility[b, mine[:, 1], mine[:, 2]]
        torch.testing.assert_close(got.sort().values, best.sort().values)


def test_router_ties_nan_allowed_and_scene() -> None:
    utility = torch.zeros(1, 2, 3)
    utility[0, 1, 2] = float("nan")
    assert select_topk(utility, 2).tolist() == [[0, 0, 0], [0, 0, 1]]  # ties: lower index
    allowed = torch.tensor([[[False, True, True], [False, False, False]]])
    assert select_topk(utility, 5, allowed).tolist() == [[0, 0, 1], [0, 0, 2]]
    scene = torch.tensor([[0.1, 0.9], [0.5, 0.2]])
    assert select_topk_scene(scene, 2).tolist() == [[0, 1], [1, 0]]
    chosen = topk_mask(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), 1)
    extra = random_extra_mask(chosen.reshape(1, 2, 2), 2)
    assert extra.sum() == 3 and extra[0, 0, 0]


def test_budget_and_deadline_k() -> None:
    assert k_for_budget(30, 0.1) == 3 and k_for_budget(256, 0.25) == 64
    assert k_for_budget(10, 1e-6) == 1 and k_for_budget(10, 1.0) == 10
    with pytest.raises(ValueError, match="budget"):
        k_for_budget(10, 0.0)
    assert k_for_deadline(100.0, 7.0, fixed_ms=30.0) == 10
    assert k_for_deadline(20.0, 7.0, fixed_ms=30.0) == 0
    assert k_for_deadline(1000.0, 1.0, n_cells=16) == 16


# ----------------------------------------------------------------- config and streams
def test_bad_names_and_unknown_weights_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown encoder 'resnet_nope'"):
        validate(ModelConfig, {"ff": {"encoder": "resnet_nope"}}, "cfg.yaml")
    with pytest.raises(ConfigError, match="neither a local file nor"):
        validate(ModelConfig, {"pv": {"encoder": "resnet18", "encoder_weights": "imagenet21k"}}, "x")
    with pytest.raises(ConfigError, match="'unet'"):
        validate(ModelConfig, {"pv": {"encoder": "resnet18", "arch": "segformerz"}}, "x")
    with pytest.raises(ConfigError, match="unknown key 'pv.encodr'"):
        validate(ModelConfig, {"pv": {"encoder": "resnet18", "encodr": "x"}}, "x")
    with pytest.raises(ConfigError, match="halo=16"):
        validate(ModelConfig, {"cell": 64, "halo": 10}, "x")
    with pytest.raises(ConfigError, match="multiple of scale"):
        validate(ModelConfig, {"cell": 66, "halo": 15}, "x")
    sneaky = StreamConfig.model_construct(
        arch="unet", encoder="resnet18", encoder_weights="imagenet21k", encoder_depth=5, decoder_channels=None
    )
    with pytest.raises(ConfigError, match="neither a local file nor"):
        build_stream(sneaky, 3, 3)
    with pytest.raises(ValidationError):
        StreamConfig(encoder="resnet18", encoder_weights=str(tmp_path / "missing.pt"))


def test_local_encoder_weights_load(tmp_path: Path) -> None:
    torch.manual_seed(3)
    src = build_stream(StreamConfig(encoder="resnet18", encoder_depth=3), 4, 3)
    path = tmp_path / "enc.pt"
    torch.save(src.model.encoder.state_dict(), path)
    cfg = StreamConfig(encoder="resnet18", encoder_depth=3, encoder_weights=str(path))
    dst = build_stream(cfg, 4, 3)
    for a, b in zip(src.model.encoder.state_dict().values(), dst.model.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_stream(StreamConfig(encoder="resnet18", encoder_weights=str(bad)), 3, 3)
    with pytest.raises(CheckpointError, match="do not fit"):
        build_stream(StreamConfig(encoder="resnet18", encoder_depth=3, encoder_weights=str(path)), 3, 3)


@pytest.mark.parametrize("arch", ["fpn", "linknet", "deeplabv3plus", "unetplusplus"])
def test_other_architectures_build(arch: str) -> None:
    cfg = StreamConfig(arch=arch, encoder="resnet18", encoder_depth=4 if arch != "fpn" else 5)
    stream = build_stream(cfg, 2, 3).eval()  # deeplab's image pooling needs eval at batch 1
    logits, feats = stream.forward_features(torch.randn(1, 2, 64, 64))
    assert logits.shape == (1, 3, 64, 64) and feats.shape[1] == stream.feature_channels


# ----------------------------------------------------------------- the routed model
def test_budget_one_is_the_plain_dense_network() -> None:
    model = tiny_model().eval()
    with torch.no_grad():  # a non-trivial Enhance, so FF must see the enhanced input
        model.enhancer.amount.fill_(0.5)
        model.enhancer.bias.fill_(0.1)
        x = torch.randn(2, 3, 80, 96)
        out = model(x, budget=1.0)
        cells = all_cells(2, 3, 3)
        assert torch.equal(out.cells, cells)
        dense = model.fuse(out.pv_logits, cells, model.forward_ff_regions(model.pad(x), cells), (80, 96))
        torch.testing.assert_close(out.logits, dense, rtol=0, atol=0)
        # independent reference: Enhance + FF on the whole reflect-padded image, one halo
        xp = F.pad(model.pad(x), (16, 16, 16, 16), mode="reflect")
        ref = model.ff(model.enhance(xp))[..., 16:-16, 16:-16]
        torch.testing.assert_close(out.logits, ref[..., :80, :96], rtol=1e-4, atol=1e-4)
        # the cell path (training) is FF on each cell's own window
        per_cell = model.forward_ff(model.pad(x), cells)
        b, r, c = cells[4].tolist()
        tile = model.enhance(xp[b : b + 1, :, r * 32 : r * 32 + 64, c * 32 : c * 32 + 64])
        torch.testing.assert_close(per_cell[4], model.ff(tile)[0, :, 16:48, 16:48], rtol=1e-4, atol=1e-4)


def test_routed_regions_write_only_chosen_cells() -> None:
    model = tiny_model().eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 96, 128)
        xp = model.pad(x)
        cells = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 2, 3]])
        got = model.forward_ff_regions(xp, cells)
        assert got.shape == (4, 3, 32, 32)
        # cell (2, 3) is alone: its region is the cell itself, as on the cell path
        torch.testing.assert_close(got[3], model.forward_ff(xp, cells[3:])[0], rtol=1e-5, atol=1e-5)
        out = model(x, budget=0.25)
        assert len(out.cells) == 3 and out.ff_logits.shape == (3, 3, 32, 32)


def test_eval_picks_top_k_and_never_padding_cells() -> None:
    model = tiny_model(scale=4, pv={"encoder_depth": 5, "decoder_channels": [16, 16, 8, 8, 8]}).eval()
    assert model.cfg.multiple == 128
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 70), budget=1.0)
        assert out.utility.shape == (1, 4, 4) and out.logits.shape == (1, 3, 40, 70)
        assert out.cells.tolist() == [[0, r, c] for r in range(2) for c in range(3)]
        out = model(torch.randn(1, 3, 40, 70), budget=0.5)
        assert out.cells.shape == (3, 3)
        best = out.utility[0, :2, :3].flatten().topk(3).values.sort().values
        got = out.utility[0, out.cells[:, 1], out.cells[:, 2]].sort().values
        torch.testing.assert_close(got, best)


def test_training_adds_random_cells() -> None:
    model = tiny_model(budget=0.25, train_random_cells=0.25).train()
    out = model(torch.randn(2, 3, 128, 128))  # 16 cells per image: 4 top + 4 random
    assert out.cells.shape == (16, 3)
    assert out.ff_logits.shape == (16, 3, 32, 32)


@pytest.mark.parametrize(("bands", "classes"), [(1, ("a",)), (3, ("a", "b", "c")), (4, ("a",))])
def test_bands_and_classes(bands: int, classes: tuple[str, ...]) -> None:
    model = tiny_model(in_channels=bands, classes=list(classes)).train()
    n_out = 3 + (len(classes) if len(classes) > 1 else 0)
    out = model(torch.randn(2, bands, 64, 96))
    assert out.logits.shape == (2, n_out, 64, 96)
    assert out.pv_logits.shape == (2, n_out, 32, 48) and out.utility.shape == (2, 2, 3)
    loss, terms = RoutedLoss()(out, targets_for(2, 64, 96, len(classes)), progress=0.5)
    loss.backward()
    assert ("pv_classes" in terms) == (len(classes) > 1)
    assert model.ff.model.encoder.conv1.weight.grad is not None


def test_one_step_lowers_the_loss() -> None:
    model = tiny_model(train_random_cells=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    tgt = targets_for(2, 64, 64)
    crit = RoutedLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    before, _ = crit(model(x, budget=1.0), tgt, progress=0.0)
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _ = crit(model(x, budget=1.0), tgt, progress=0.0)
    assert after < before


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randn(1, 3, 64, 64)
    tgt = targets_for(1, 64, 64)
    grads = []
    for flag in (False, True):
        model = tiny_model(gradient_checkpointing=flag, train_random_cells=0.0).train()
        loss, _ = RoutedLoss()(model(x, budget=1.0), tgt, progress=0.0)
        loss.backward()
        grads.append(model.ff.model.encoder.conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_deadline_uses_measured_cost() -> None:
    model = tiny_model(deadline_ms=1e-6).eval()
    ms = model.measure_ms_per_cell("cpu", n=2, repeats=1)
    assert ms > 0 and model.pv_ms_per_cell > 0
    assert model.cells_per_image(16, 1) == 0  # nothing fits: PV only
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.cells.shape == (0, 3) and out.logits.shape == (1, 3, 64, 64)
    model.ms_per_cell, model.pv_ms_per_cell = 1.0, 0.0
    assert tiny_model(deadline_ms=5.0).cells_per_image(16, 1) == 4  # not measured: budget
    model.cfg = tiny_cfg(deadline_ms=5.0)
    assert model.cells_per_image(16, 1) == 5
