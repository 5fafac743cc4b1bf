"""Scale augmentation in metres (augment.gsd, gsd_range) and the GSD range a checkpoint carries to predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tile_box_scenes

from geoseg.config import validate
from geoseg.errors import ConfigError
from geoseg.models.meta import ModelMeta
from geoseg.predict.config import PredictConfig
from geoseg.predict.gsd import target_gsd
from geoseg.train.augment import AugmentConfig, build_augment
from geoseg.train.dataset import ChipDataset

OFF = {k: 0.0 for k in ("d4", "shift_scale_rotate", "haze", "clouds_shadows", "blur", "noise", "jpeg",
                        "downscale", "brightness_contrast_gamma")}
BOX = (44, 40, 84, 90)  # col0, row0, col1, row1: 40 x 50 px at 0.5 m


@pytest.fixture(scope="module")
def one_box(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 128 x 128 chip at 0.5 m holding one 40 x 50 px building."""
    return tile_box_scenes(tmp_path_factory.mktemp("scale"), (128, 128), [BOX], size=128)


def _dataset(patches: Path, crop: int | None = None, **aug) -> ChipDataset:
    augment = build_augment(AugmentConfig(**{**OFF, **aug}), 3, seed=0)
    return ChipDataset(patches, "train", crop=crop, augment=augment)


@pytest.mark.parametrize("gsd, side", [(1.0, 64), (0.25, 256), (0.5, 128)])
def test_sample_read_at_the_drawn_gsd_with_aligned_targets(one_box: Path, gsd: float, side: int) -> None:
    s = _dataset(one_box, gsd=1.0, gsd_range=(gsd, gsd))[0]
    assert s["image"].shape[-2:] == (side, side)
    f = 0.5 / gsd  # sample pixels per chip pixel
    extent = s["extent"].numpy() > 0.5
    assert extent.sum() == pytest.approx(40 * 50 * f * f, rel=0.12)
    bright = s["image"][0].numpy() > 0  # normalised: the roof is far above the mean
    iou = (bright & extent).sum() / (bright | extent).sum()
    assert iou > 0.9, iou  # labels resampled on the image's own grid
    rows, cols = np.nonzero(extent)
    assert rows.min() == pytest.approx(BOX[1] * f, abs=1.5) and cols.min() == pytest.approx(BOX[0] * f, abs=1.5)


def test_random_crops_cover_the_drawn_ground_and_stay_deterministic(one_box: Path) -> None:
    ds = _dataset(one_box, crop=64, gsd=1.0, gsd_range=(0.25, 1.0))
    sides, windows = set(), set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        a, b = ds[0], ds[0]
        assert (a["image"] == b["image"]).all() and (a["extent"] == b["extent"]).all()
        assert a["extent"].shape == a["image"].shape[-2:] == a["valid"].shape
        sides.add(tuple(a["image"].shape[-2:]))
        windows.add(int(ds.window(0).width))
    # a crop of 64 sample px covers 64 x factor chip px, factor 0.5-2 here: 32-128 chip px
    assert all(h == w and 63 <= h <= 64 for h, w in sides), sides
    assert len(windows) >= 4 and min(windows) >= 32 and max(windows) <= 128, windows


def test_without_gsd_the_crops_are_unchanged(one_box: Path) -> None:
    plain = ChipDataset(one_box, "train", crop=48, augment=build_augment(AugmentConfig(**OFF), 3, seed=0))
    off = _dataset(one_box, crop=48, gsd=0.0, gsd_range=(0.25, 1.0))
    for epoch in range(3):
        plain.set_epoch(epoch)
        off.set_epoch(epoch)
        assert plain.window(0) == off.window(0) and plain.window(0).width == 48


def test_config_errors_and_chips_without_gsd(one_box: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gsd_range"):
        validate(AugmentConfig, {"gsd": 0.5}, "augment")
    with pytest.raises(ConfigError, match="0 < lo <= hi"):
        validate(AugmentConfig, {"gsd": 0.5, "gsd_range": [0.6, 0.3]}, "augment")
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(one_box, old)
    coco = json.loads((old / "annotations.json").read_text())
    for im in coco["images"]:
        im.pop("gsd", None)
    (old / "annotations.json").write_text(json.dumps(coco))
    stats = json.loads((old / "stats.json").read_text())
    stats.pop("gsd", None)
    (old / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ConfigError, match="rerun `geoseg tile`"):
        _dataset(old, gsd=1.0, gsd_range=(0.3, 0.6))
    _dataset(old)  # without scale augmentation the GSD is not needed


def _meta(gsd: float, gsd_range: tuple[float, float] | None) -> ModelMeta:
    return ModelMeta(bands=3, stats={"mean": [0.0] * 3, "std": [1.0] * 3, "gsd": gsd}, classes=("b",), scale=4,
                     cell=64, halo=16, tile=96, multiple=32, pv_multiple=8, gsd_range=gsd_range)


def test_predict_reads_scenes_inside_the_trained_range_on_their_own_grid() -> None:
    model = PredictConfig(gsd="model")
    ranged = _meta(0.15, (0.1, 0.4))
    assert target_gsd(model, ranged, 0.3) is None  # inside: native grid
    assert target_gsd(model, ranged, 0.5) == pytest.approx(0.4)  # coarser: up to the range's end
    assert target_gsd(model, ranged, 0.05) == pytest.approx(0.1)
    assert target_gsd(model, _meta(0.15, None), 0.3) == pytest.approx(0.15)  # one GSD: read at it
    assert target_gsd(PredictConfig(gsd="native"), ranged, 0.5) is None
    assert target_gsd(PredictConfig(gsd=0.2), ranged, 0.5) == pytest.approx(0.2)


def test_a_run_with_scale_augmentation_records_its_range(tiny_patches: Path, tmp_path: Path) -> None:
    from conftest import REPO

    from geoseg.config import load_config
    from geoseg.models.checkpoint import load_model
    from geoseg.train import TrainConfig, train

    cfg = load_config(TrainConfig, REPO / "tests" / "conf" / "tiny.yaml",
                      {"augment": {"gsd": 0.5, "gsd_range": [0.4, 0.8]}})
    train(cfg, tiny_patches, tmp_path / "run", epochs=1)
    net, meta = load_model(tmp_path / "run")
    m = ModelMeta.from_checkpoint(net.cfg, meta)
    assert m.gsd == pytest.approx(0.5, rel=1e-3) and m.gsd_range == (0.4, 0.8)
    assert target_gsd(PredictConfig(), m, 0.7) is None and target_gsd(PredictConfig(), m, 1.0) == 0.8


def test_scales_preset_is_the_cpu_preset_with_scale_augmentation() -> None:
    from conftest import REPO

    from geoseg.config import load_config
    from geoseg.train import TrainConfig

    base = load_config(TrainConfig, REPO / "configs" / "buildings-cpu.yaml")
    scales = load_config(TrainConfig, REPO / "configs" / "buildings-cpu-scales.yaml")
    assert scales.augment.gsd == 0.8 and scales.augment.gsd_range == (0.11, 0.2)
    assert scales.model_dump(exclude={"augment"}) == base.model_dump(exclude={"augment"})
