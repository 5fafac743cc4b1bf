"""The training loop: overfitting, exact resume, outputs, safe checkpoints, config errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, labels_for, write_raster
from rasterio.transform import from_origin

from geoseg.checkpoint import load_checkpoint
from geoseg.cli.main import cli
from geoseg.config import load_config
from geoseg.errors import CheckpointError, OutputExistsError
from geoseg.tiling import TileConfig, tile
from geoseg.train import TrainConfig, train

TINY = REPO / "tests" / "conf" / "tiny.yaml"


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bright rectangles on a dark field; the val scene has the same layout (overfit set)."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    img = np.full((3, 64, 64), 40, np.uint8)
    boxes = []
    for r in range(4, 60, 16):
        for c in range(4, 60, 16):
            w, h = rng.integers(6, 11, 2)
            img[:, r:r + h, c:c + w] = 200
            boxes.append((c, r, c + int(w), r + int(h)))
    for name in ("train_scene", "val_scene"):
        noisy = img + rng.integers(0, 10, img.shape, dtype=np.uint8)
        write_raster(root / f"{name}.tif", noisy, "EPSG:32636", from_origin(450000, 40000, 0.5, 0.5))
    labels_for(root / "train_scene.tif", root / "l.gpkg", boxes)
    tile([root / "train_scene.tif", root / "val_scene.tif"], root / "l.gpkg", root / "p",
         TileConfig(size=32, overlap=0, val_fraction=0.0, val_scenes=("val*",)), scheduler="sync")
    return root / "p"


def tiny(**overrides) -> TrainConfig:
    return load_config(TrainConfig, TINY, overrides)


@pytest.mark.slow
def test_tiny_set_overfits(patches: Path, tmp_path: Path) -> None:
    cfg = tiny(data={"samples_per_epoch": 32}, val={"every": 4})
    res = train(cfg, patches, tmp_path / "run", epochs=8)
    last = res.history[-1]
    assert last["ap"] > 0.9 and last["f1"] > 0.9 and last["iou"] > 0.9
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_outputs_and_checkpoint(patches: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = train(tiny(), patches, run, epochs=2)
    assert res.epochs == 2
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("loss", "lr", "ap", "ap50", "iou", "f1", "seconds", "pv_extent", "ff_extent",
                "utility"):
        assert key in rows[0], key
    assert (run / "curves.png").stat().st_size > 1000
    resolved = load_config(TrainConfig, run / "config.yaml")
    assert resolved.model.in_channels == 3 and resolved.model.classes == ("building",)
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")  # weights_only=True inside
    assert ckpt["classes"] == ["building"] and ckpt["stats"]["bands"] == 3
    assert ckpt["ema"] is not None and ckpt["epoch"] in (1, 2)
    assert set(ckpt["model"]) == set(ckpt["ema"])
    # a plain torch.load with weights_only=True works too
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


class Crash(Exception):
    pass


def crash_after_first_epoch(trainer, row) -> None:
    if row["epoch"] == 1:
        raise Crash


def test_resume_equals_uninterrupted(patches: Path, tmp_path: Path) -> None:
    full = train(tiny(), patches, tmp_path / "full", epochs=3)
    with pytest.raises(Crash):  # killed after the first epoch of a 3-epoch run
        train(tiny(), patches, tmp_path / "part", epochs=3, hooks=[crash_after_first_epoch])
    resumed = train(tiny(), patches, tmp_path / "part", epochs=3, resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=0, msg=key)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_existing_run_needs_resume_or_overwrite(patches: Path, tmp_path: Path) -> None:
    train(tiny(), patches, tmp_path / "run", epochs=1)
    with pytest.raises(OutputExistsError, match="--resume"):
        train(tiny(), patches, tmp_path / "run", epochs=1)
    train(tiny(), patches, tmp_path / "run", epochs=1, overwrite=True)


def test_corrupt_and_foreign_checkpoints(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a geoseg checkpoint"):
        load_checkpoint(foreign)


def test_cli_train_and_resume_errors(patches: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(cli, ["train", str(TINY), "--patches", str(patches), "--out", str(run),
                              "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "trained 1 epochs" in res.output
    # a corrupt last.pt: one line, exit 1, no traceback
    (run / "checkpoints" / "last.pt").write_bytes(b"garbage")
    res = runner.invoke(cli, ["train", str(TINY), "--patches", str(patches), "--out", str(run),
                              "--resume", "--epochs", "2"])
    assert res.exit_code == 1
    assert res.output.startswith("geoseg: error:") and "last.pt" in res.output
    assert "Traceback" not in res.output


def test_unknown_config_key_is_one_line(patches: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    shutil.copy(TINY, cfg)
    cfg.write_text(cfg.read_text().replace("halo: 4", "halo: 4\n  encodr: resnet18"))
    res = CliRunner().invoke(cli, ["train", str(cfg), "--patches", str(patches), "--out",
                                   str(tmp_path / "r")])
    assert res.exit_code == 1
    assert "unknown key 'model.encodr'" in res.output and "c.yaml" in res.output


def test_presets_are_valid() -> None:
    for name in ("buildings-cpu.yaml", "buildings-gpu.yaml"):
        cfg = load_config(TrainConfig, REPO / "configs" / name)
        assert cfg.model.pv.encoder_weights is None and cfg.model.ff.encoder_weights is None


def test_load_model_uses_ema_weights(patches: Path, tmp_path: Path) -> None:
    from geoseg.checkpoint import load_model

    train(tiny(), patches, tmp_path / "run", epochs=1)
    model, meta = load_model(tmp_path / "run")
    ckpt = load_checkpoint(meta["path"])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ckpt["ema"][k], rtol=0, atol=0)
    assert not model.training and meta["stats"]["bands"] == 3
