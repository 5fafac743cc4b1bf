"""`geoseg calibrate`: the --budget auto threshold set again on validation chips, without training."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import bright_boxes_scene, labels_for

from geoseg.cli.main import cli
from geoseg.models.checkpoint import load_checkpoint, save_checkpoint


def _threshold(run: Path) -> float:
    return float(load_checkpoint(run / "checkpoints" / "best.pt")["model"]["utility_threshold"])


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_calibrating_on_the_runs_own_chips_gives_the_threshold_training_set(run_copy: Path,
                                                                             tiny_patches: Path) -> None:
    """The same weights on the same validation chips: the threshold training wrote, exactly."""
    trained = _threshold(run_copy)
    ckpt = load_checkpoint(run_copy / "checkpoints" / "best.pt")
    ckpt["model"]["utility_threshold"] = torch.tensor(float("nan"))  # as an uncalibrated checkpoint
    save_checkpoint(run_copy / "checkpoints" / "best.pt", {k: v for k, v in ckpt.items() if k not in ("format",)})
    res = CliRunner().invoke(cli, ["calibrate", str(run_copy), "--patches", str(tiny_patches), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert _threshold(run_copy) == trained or (math.isinf(trained) and _threshold(run_copy) == trained)
    assert "(was never calibrated)" in res.output and "of the cells of 4 validation chips run FF" in res.output


def test_calibrating_on_chips_with_empty_land_keeps_fewer_cells(run_copy: Path, tiny_patches: Path,
                                                                tmp_path: Path) -> None:
    """Validation chips like a rural scene (roofs in one corner) give auto fewer cells than dense chips."""
    from geoseg.tile import TileConfig, tile
    from geoseg.train.recalibrate import recalibrate

    boxes = [(4 + 12 * i, 4 + 12 * j, 12 + 12 * i, 12 + 12 * j) for i in range(2) for j in range(2)]
    scene = bright_boxes_scene(tmp_path / "val_rural.tif", (128, 128), boxes, seed=3)
    labels_for(scene, tmp_path / "rural.gpkg", boxes)
    tile([scene], tmp_path / "rural.gpkg", tmp_path / "rural", TileConfig(size=32, overlap=0, val_fraction=1.0),
         scheduler="sync")
    dense = recalibrate(run_copy, tiny_patches)
    rural = recalibrate(run_copy, tmp_path / "rural")
    assert rural.chips == 16 and dense.before == dense.after  # own chips: the threshold training set
    assert rural.share < dense.share and rural.share <= 0.25, (dense, rural)
    assert _threshold(run_copy) == rural.after


def test_chips_unlike_the_model_are_refused_and_nothing_is_written(run_copy: Path, tmp_path: Path) -> None:
    from geoseg.tile import TileConfig, tile

    before = (run_copy / "checkpoints" / "best.pt").read_bytes()
    boxes = [(4, 4, 12, 12)]
    scene = bright_boxes_scene(tmp_path / "s16.tif", (64, 64), boxes, dtype="uint16")
    labels_for(scene, tmp_path / "l.gpkg", boxes)
    tile([scene], tmp_path / "l.gpkg", tmp_path / "p16", TileConfig(size=32, overlap=0, val_fraction=1.0),
         scheduler="sync")
    res = CliRunner().invoke(cli, ["calibrate", str(run_copy), "--patches", str(tmp_path / "p16")])
    assert res.exit_code != 0 and "uint16" in res.output and str(tmp_path / "p16") in res.output
    tile([bright_boxes_scene(tmp_path / "t.tif", (64, 64), boxes)], tmp_path / "l.gpkg", tmp_path / "train_only",
         TileConfig(size=32, overlap=0, val_fraction=0.0), scheduler="sync")
    res = CliRunner().invoke(cli, ["calibrate", str(run_copy), "--patches", str(tmp_path / "train_only")])
    assert res.exit_code != 0 and "no 'val' chips" in res.output
    # chips at another ground pixel size than predict reads such scenes at (the model's 0.5 m)
    tile([bright_boxes_scene(tmp_path / "t1m.tif", (128, 128), boxes)], tmp_path / "l.gpkg", tmp_path / "p1m",
         TileConfig(size=32, overlap=0, val_fraction=1.0, gsd=1.0), scheduler="sync")
    res = CliRunner().invoke(cli, ["calibrate", str(run_copy), "--patches", str(tmp_path / "p1m")])
    assert res.exit_code != 0 and "are at 1 m a pixel" in res.output and "--gsd 0.5" in res.output, res.output
    assert (run_copy / "checkpoints" / "best.pt").read_bytes() == before
