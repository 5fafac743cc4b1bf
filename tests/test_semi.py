"""Semi-supervised training with a mean teacher (issue #12)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, bright_boxes_scene, grid_boxes, shifted_domain, write_raster
from rasterio.transform import from_origin

from geoseg.bands import BandStats
from geoseg.cli.main import cli
from geoseg.config import load_config
from geoseg.errors import ConfigError
from geoseg.models.checkpoint import load_checkpoint
from geoseg.tile import TileConfig, tile
from geoseg.train import TrainConfig, train
from geoseg.train.augment import AugmentConfig
from geoseg.train.loop import Trainer
from geoseg.train.pseudo import pseudo_targets
from geoseg.train.semi import STRONG, SemiConfig, UnlabelledChips, d4, ramp_weight

TINY = REPO / "tests" / "conf" / "tiny.yaml"
QUIET = AugmentConfig(d4=0, shift_scale_rotate=0, haze=0, clouds_shadows=0, blur=0, noise=0, jpeg=0,
                      downscale=0, brightness_contrast_gamma=0)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chips of two scenes of the same kind as the labelled ones, tiled without labels."""
    root = tmp_path_factory.mktemp("unlabelled")
    scenes = [bright_boxes_scene(root / f"u{i}.tif", (64, 64), grid_boxes((64, 64), seed=10 + i), seed=20 + i,
                                 transform=from_origin(460000 + 100 * i, 40000, 0.5, 0.5))  # beside the val scene
              for i in range(2)]
    tile(scenes, None, root / "u", TileConfig(size=32, overlap=0), scheduler="sync")
    return root / "u"


def semi_cfg(unlabelled: Path, **semi: object) -> TrainConfig:
    rule = {} if semi.get("consistency") == "soft" or "keep" in semi else {"threshold": 0.6}
    over = {"semi": {"unlabelled": [str(unlabelled)], "burn_in_epochs": 0, "ramp_epochs": 0,
                     "weight": 1.0, **rule, **semi}}
    return load_config(TrainConfig, TINY, over)


def test_ramp_is_zero_in_burn_in_then_rises_to_the_weight() -> None:
    cfg = SemiConfig(weight=0.5, burn_in_epochs=2, ramp_epochs=3)
    w = [ramp_weight(cfg, e) for e in np.linspace(0, 8, 33)]
    assert all(x == 0 for x, e in zip(w, np.linspace(0, 8, 33)) if e < 2)
    assert np.all(np.diff(w) >= 0) and w[-1] == 0.5 and 0 < ramp_weight(cfg, 3.5) < 0.5


def test_confident_pixels_only_on_hand_made_maps() -> None:
    # extent probabilities 0.95 (object), 0.55 (unsure), 0.02 (background), and an invalid pixel
    p = torch.tensor([[0.95, 0.55, 0.02, 0.99]])
    logits = torch.logit(p).reshape(1, 1, 1, 4).repeat(1, 4, 1, 1)  # extent, boundary, contact, class
    valid = torch.tensor([[[True, True, True, False]]])
    t, share = pseudo_targets(logits, valid, threshold=0.9)
    assert t["valid"].tolist() == [[[True, False, True, False]]]
    assert t["extent"].tolist() == [[[1.0, 1.0, 0.0, 1.0]]]
    assert share == pytest.approx(2 / 3)
    assert t["classes"].tolist() == [[[0, -1, -1, -1]]]  # a class where confident object only


def test_keep_is_the_most_confident_share_of_each_pseudo_class() -> None:
    """2 building and 8 background pixels (one invalid): half of each, the surest, whatever p's scale."""
    p = torch.tensor([0.7, 0.6, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.28, 0.01])
    logits = torch.logit(p).reshape(1, 1, 1, 10).repeat(1, 3, 1, 1)
    valid = torch.ones(1, 1, 10, dtype=torch.bool)
    valid[..., 9] = False  # the surest background pixel is nodata: never kept
    t, share = pseudo_targets(logits, valid, keep_share=0.5)
    kept = t["valid"][0, 0].tolist()
    assert kept == [True, False, False, False, False, True, True, True, True, False]
    assert share == pytest.approx(5 / 9)
    t, _ = pseudo_targets(logits, valid, threshold=0.9)  # the fixed rule keeps nothing here
    assert not t["valid"].any()
    t, share = pseudo_targets(logits, torch.zeros_like(valid), keep_share=0.5)
    assert share == 0 and not t["valid"].any()


def test_keep_is_the_default_and_excludes_threshold() -> None:
    assert SemiConfig().keep_share == 0.5 and SemiConfig(keep=0.2).keep_share == 0.2
    assert SemiConfig(threshold=0.8).keep_share is None
    with pytest.raises(ValueError, match="keep or threshold, not both"):
        SemiConfig(keep=0.5, threshold=0.8)
    SemiConfig(consistency="soft", threshold=0.9)  # a soft run's config.yaml of an earlier revision loads


def test_strong_view_must_not_move_pixels() -> None:
    with pytest.raises(ValueError, match="must not move pixels"):
        SemiConfig(strong=STRONG.model_copy(update={"shift_scale_rotate": 0.5}))
    with pytest.raises(ConfigError, match="teacher_dcay"):
        load_config(TrainConfig, TINY, {"semi": {"teacher_dcay": 0.9}})


def test_weak_and_strong_views_line_up_on_a_checkerboard(tmp_path: Path) -> None:
    """The strong view is the weak view's pixels (one D4 element of the chip), only recoloured."""
    board = ((np.indices((32, 32)) // 4).sum(0) % 2).astype(np.uint8) * 150 + 50
    board[:3, :5] = 255  # breaks the symmetry: the D4 element is identifiable
    chip = np.stack([board, board // 2, 255 - board])
    (tmp_path / "u" / "images").mkdir(parents=True)
    write_raster(tmp_path / "u" / "images" / "c.tif", chip, "EPSG:32636", from_origin(0, 0, 1, 1))
    stats = BandStats(mean=(120.0, 60.0, 130.0), std=(60.0, 30.0, 60.0), dtype="uint8")
    monotonic = QUIET.model_copy(update={"brightness_contrast_gamma": 1.0})
    seen = set()
    for seed in range(12):
        ds = UnlabelledChips([tmp_path / "u"], stats, crop=None, strong=monotonic, seed=seed)
        s = ds[0]
        weak, strong = s["weak"].numpy(), s["strong"].numpy()
        ks = [k for k in range(8) if np.array_equal(d4(chip[0], k) > 200, weak[0] > weak[0].max() - 1e-6)]
        assert len(ks) == 1  # the weak view is exactly one D4 element of the chip
        seen.add(ks[0])
        hi, lo = d4(chip[0], ks[0]) == 200, d4(chip[0], ks[0]) == 50
        assert (strong[0][hi].min() > strong[0][lo].max())  # same pixels, monotonic recolouring
    assert len(seen) >= 4
    same = UnlabelledChips([tmp_path / "u"], stats, crop=None, strong=QUIET, seed=0)[0]
    np.testing.assert_array_equal(same["weak"].numpy(), same["strong"].numpy())


def test_cutmix_mixes_the_student_view_and_the_teacher_maps_alike(tmp_path: Path) -> None:
    """With CutMix the teacher's maps still line up with the student's (mixed) view, pixel for pixel."""
    from types import SimpleNamespace

    from geoseg.train.dataset import collate
    from geoseg.train.semi import MeanTeacher

    (tmp_path / "u" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        write_raster(tmp_path / "u" / "images" / f"c{i}.tif", rng.integers(0, 255, (3, 32, 32), dtype=np.uint8),
                     "EPSG:32636", from_origin(0, 0, 1, 1))
    stats = BandStats(mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0), dtype="uint8")
    ds = UnlabelledChips([tmp_path / "u"], stats, crop=None, strong=QUIET, seed=0, cutmix=1.0)
    batch = collate([ds[0], ds[1]])
    assert abs(float((~batch["mix"]).float().mean()) - 0.5) < 0.05  # half of each sample is the other's

    class Maps(torch.nn.Module):  # a "model" whose maps are its input: any misalignment shows
        def forward(self, x: torch.Tensor, budget: float = 1.0) -> SimpleNamespace:
            return SimpleNamespace(logits=x * 3.0)

    cfg = SemiConfig(unlabelled=[str(tmp_path / "u")], consistency="soft", cutmix=1.0, strong=QUIET)
    mt = MeanTeacher(cfg, stats, None, 2, seed=0)
    loss, _ = mt.loss(Maps(), Maps(), batch, None, 0.0)
    assert float(loss) == 0.0  # the student's mixed view and the teacher's mixed maps agree everywhere
    seen: list[torch.Tensor] = []

    class Spy(Maps):
        def forward(self, x: torch.Tensor, budget: float = 1.0) -> SimpleNamespace:
            seen.append(x)
            return super().forward(x)

    mt.loss(Spy(), Maps(), batch, None, 0.0)
    box = ~batch["mix"][0]
    assert torch.equal(seen[0][0][:, box], batch["strong"][1][:, box])  # the box is the next sample's
    assert torch.equal(seen[0][0][:, ~box], batch["strong"][0][:, ~box])
    from geoseg.train.pseudo import soft_consistency

    assert float(soft_consistency(seen[0] * 3.0, batch["weak"] * 3.0, batch["valid"])) > 0  # unmixed: misaligned


def test_unlabelled_chips_are_read_at_the_labelled_gsd(tmp_path: Path) -> None:
    """A 0.25 m scene for a model of 0.5 m chips is read at 0.5 m, as predict would read it."""
    board = ((np.indices((64, 64)) // 8).sum(0) % 2).astype(np.uint8) * 150 + 50  # 8-px squares at 0.25 m
    scene = write_raster(tmp_path / "fine.tif", np.stack([board, board, board]), "EPSG:32636",
                         from_origin(500000, 40000, 0.25, 0.25))
    tile([scene], None, tmp_path / "u", TileConfig(size=32, overlap=0), scheduler="sync")
    stats = BandStats(mean=(120.0,) * 3, std=(60.0,) * 3, dtype="uint8")

    def weak(**grid: object) -> np.ndarray:
        return UnlabelledChips([tmp_path / "u"], stats, crop=None, strong=QUIET, seed=0, **grid)[0]["weak"][0].numpy()

    coarse = weak(gsd=0.5)
    assert coarse.shape == (16, 16)  # 32 chip pixels of 0.25 m read into 16 of 0.5 m
    squares = ((np.indices((16, 16)) // 4).sum(0) % 2).astype(bool)  # 4-px squares at 0.5 m
    assert any(np.array_equal(coarse > coarse.mean(), d4(sq, k)) for sq in (squares, ~squares) for k in range(8))
    assert weak(gsd=None).shape == (32, 32)  # no labelled GSD: the chip's own grid
    assert weak(gsd=0.5, gsd_range=(0.2, 0.6)).shape == (32, 32)  # inside a scale-augmented range
    assert weak(gsd=0.26).shape == (32, 32)  # within 5 %: its own grid
    assert UnlabelledChips([tmp_path / "u"], stats, crop=8, strong=QUIET, seed=0, gsd=0.5)[0]["weak"].shape == (3, 8, 8)


def test_teacher_is_the_ema_of_the_student_after_a_step(tiny_patches: Path, unlabelled: Path,
                                                         tmp_path: Path) -> None:
    cfg = semi_cfg(unlabelled, teacher_decay=0.7)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"samples_per_epoch": 4})})
    trainer = Trainer(cfg, tiny_patches, tmp_path / "run", torch.device("cpu"), progress=False)
    trainer.train_epoch()
    trainer.epoch += 1
    teacher_1 = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    terms = trainer.train_epoch()
    assert terms["unsup"] > 0 and 0 < terms["confident"] <= 1 and terms["unsup_weight"] == 1.0
    student, teacher = trainer.model.state_dict(), trainer.ema.module.state_dict()
    for key, value in teacher.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.7 * teacher_1[key] + 0.3 * student[key], msg=key,
                                       equal_nan=True)


def test_soft_consistency_pulls_the_student_to_the_teacher_on_valid_pixels(tiny_patches: Path, unlabelled: Path,
                                                                          tmp_path: Path) -> None:
    from geoseg.train.pseudo import soft_consistency

    teacher = torch.randn(2, 5, 8, 8)  # extent, boundary, contact and two classes
    valid = torch.rand(2, 8, 8) > 0.3
    assert float(soft_consistency(teacher, teacher, valid)) == 0.0
    student = torch.zeros_like(teacher, requires_grad=True)
    loss = soft_consistency(student, teacher.requires_grad_(), valid)
    loss.backward()
    assert teacher.grad is None  # the teacher's maps are constants
    assert student.grad is not None
    g = student.grad.permute(1, 0, 2, 3)  # (C, B, H, W): zero wherever the pixel is invalid
    assert float(g[:, ~valid].abs().sum()) == 0 and float(g[:, valid].abs().sum()) > 0
    # a training epoch in soft mode: every valid pixel counts (confident 1), no threshold
    cfg = semi_cfg(unlabelled, consistency="soft")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"samples_per_epoch": 4})})
    trainer = Trainer(cfg, tiny_patches, tmp_path / "run", torch.device("cpu"), progress=False)
    terms = trainer.train_epoch()
    assert terms["unsup"] > 0 and terms["confident"] == 1.0


def test_a_teacher_that_keeps_no_pixel_is_reported(tiny_patches: Path, unlabelled: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Hard pseudo-targets above what the extent ever reaches teach nothing: say so, once, not silently."""
    import warnings

    from geoseg.errors import GeoSegWarning
    from geoseg.train import semi

    monkeypatch.setattr(semi, "EMPTY_STEPS", 2)

    def epoch(threshold: float) -> tuple[dict[str, float], list[str]]:
        cfg = semi_cfg(unlabelled, threshold=threshold)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"samples_per_epoch": 8})})
        trainer = Trainer(cfg, tiny_patches, tmp_path / f"run{threshold}", torch.device("cpu"), progress=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            terms = trainer.train_epoch()
        return terms, [str(w.message) for w in caught if issubclass(w.category, GeoSegWarning)]

    terms, said = epoch(0.999)
    assert terms["confident"] == 0.0
    assert len([m for m in said if "kept no unlabelled pixel" in m and "semi.threshold 0.999" in m]) == 1
    terms, said = epoch(0.5)  # every pixel kept: no warning
    assert terms["confident"] == 1.0 and not [m for m in said if "kept no unlabelled pixel" in m]


def test_resume_with_semi_equals_uninterrupted(tiny_patches: Path, unlabelled: Path, tmp_path: Path) -> None:
    class Crash(Exception):
        pass

    def crash(trainer, row) -> None:
        if row["epoch"] == 1:
            raise Crash

    full = train(semi_cfg(unlabelled), tiny_patches, tmp_path / "full", epochs=2)
    with pytest.raises(Crash):
        train(semi_cfg(unlabelled), tiny_patches, tmp_path / "part", epochs=2, hooks=[crash])
    resumed = train(semi_cfg(unlabelled), tiny_patches, tmp_path / "part", epochs=2, resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=key)
    assert [r["unsup"] for r in full.history] == [r["unsup"] for r in resumed.history]
    rows = list(csv.DictReader((tmp_path / "full" / "metrics.csv").open()))
    assert {"unsup", "confident", "unsup_weight"} <= set(rows[0])


def test_cli_unlabelled_folder_and_its_errors(tiny_patches: Path, unlabelled: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["train", str(TINY), "--patches", str(tiny_patches), "--out",
                                   str(tmp_path / "run"), "--epochs", "1", "--unlabelled", str(unlabelled)])
    assert res.exit_code == 0, res.output
    saved = load_config(TrainConfig, tmp_path / "run" / "config.yaml")
    assert saved.semi.unlabelled == [str(unlabelled)]
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["train", str(TINY), "--patches", str(tiny_patches), "--out",
                                   str(tmp_path / "r2"), "--unlabelled", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "holds no chips" in res.output and str(tmp_path / "empty") in res.output
    one_band = tmp_path / "one"
    scene = write_raster(tmp_path / "pan.tif", np.ones((1, 40, 40), np.uint8), "EPSG:32636",
                         from_origin(470000, 40000, 1, 1))
    tile([scene], None, one_band, TileConfig(size=32, overlap=0), scheduler="sync")
    res = CliRunner().invoke(cli, ["train", str(TINY), "--patches", str(tiny_patches), "--out",
                                   str(tmp_path / "r3"), "--unlabelled", str(one_band)])
    assert res.exit_code == 1 and "1 bands but the labelled ones 3" in res.output
    # uint16 chips normalised with uint8 statistics: trained on without a word before
    wide = tmp_path / "u16"
    scene = write_raster(tmp_path / "u16.tif", np.full((3, 40, 40), 900, np.uint16), "EPSG:32636",
                         from_origin(470000, 40000, 1, 1))
    tile([scene], None, wide, TileConfig(size=32, overlap=0), scheduler="sync")
    res = CliRunner().invoke(cli, ["train", str(TINY), "--patches", str(tiny_patches), "--out",
                                   str(tmp_path / "r4"), "--unlabelled", str(wide)])
    assert res.exit_code == 1 and "are uint16 but the labelled ones uint8" in res.output, res.output
    assert not (tmp_path / "r4" / "checkpoints").exists()


def test_unlabelled_chips_over_the_validation_split_warn(tiny_patches: Path, tmp_path: Path) -> None:
    """The val scene of tiny_patches tiled again without labels: its pixels would leak."""
    from geoseg.errors import GeoSegWarning
    from geoseg.train.semi import warn_if_overlapping_val

    val_scene = tiny_patches.parent / "val_scene.tif"
    tile([val_scene], None, tmp_path / "leak", TileConfig(size=32, overlap=0), scheduler="sync")
    with pytest.warns(GeoSegWarning, match="cover pixels of the validation split"):
        warn_if_overlapping_val([tmp_path / "leak"], tiny_patches)
    far = bright_boxes_scene(tmp_path / "far.tif", (64, 64), [], transform=from_origin(0, 0, 0.5, 0.5))
    tile([far], None, tmp_path / "ok", TileConfig(size=32, overlap=0), scheduler="sync")
    warn_if_overlapping_val([tmp_path / "ok"], tiny_patches)  # no warning (an error under pytest)


@pytest.mark.slow
def test_unlabelled_chips_of_another_sensor_help(tmp_path: Path) -> None:
    """4 labelled chips of grey boxes; validation and 40 unlabelled chips of red-only boxes.

    The supervised model learns "bright in every band" and loses the red boxes as it fits
    the grey ones; the mean teacher, taught on the unlabelled chips by its own surest
    pixels, keeps them (``python bench/semi_tiny.py`` prints both runs per epoch).
    """
    patches, unlabelled = shifted_domain(tmp_path)

    def run(name: str, over: dict[str, object]) -> list[dict[str, float]]:
        cfg = load_config(TrainConfig, TINY, {"data": {"samples_per_epoch": 16}, **over})
        return train(cfg, patches, tmp_path / name, epochs=12).history

    sup = run("supervised", {})
    semi = run("semi", {"semi": {"unlabelled": [str(unlabelled)], "burn_in_epochs": 4, "ramp_epochs": 2,
                                 "weight": 1.0}})
    assert [h["ap"] for h in semi[:4]] == [h["ap"] for h in sup[:4]]  # burn-in: the same run
    assert all(h["confident"] == pytest.approx(0.5, abs=0.02) for h in semi[4:])
    assert semi[-1]["ap"] > sup[-1]["ap"] + 0.3 and semi[-1]["f1"] > 0.9
    assert max(h["ap"] for h in semi) > max(h["ap"] for h in sup) + 0.15
