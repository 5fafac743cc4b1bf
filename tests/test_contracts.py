"""Typed contracts between the stages: ModelMeta, one source per default, --ff-batch, deadlines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes

from geoseg.backends.torch_backend import TorchBackend
from geoseg.cli.main import cli
from geoseg.errors import CheckpointError
from geoseg.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from geoseg.models.meta import ModelMeta
from geoseg.predict import PredictConfig, predict

SHAPE = (96, 128)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("contracts")
    boxes = [b for b in grid_boxes(SHAPE, step=20, seed=5) if shapely.box(*b).area > 0]
    return bright_boxes_scene(root / "scene.tif", SHAPE, boxes, seed=7)


def test_model_meta_roundtrips_with_the_keys_on_disk(tiny_run: Path) -> None:
    model, ckpt_meta = load_model(tiny_run)
    meta = ModelMeta.from_checkpoint(model.cfg, ckpt_meta)
    raw = meta.to_json()
    assert raw["bands"] == meta.band_count == 3 and raw["halo"] == meta.tile_halo
    assert "band_count" not in raw and "tile_halo" not in raw  # the JSON keys did not change
    again = ModelMeta.from_mapping(json.loads(json.dumps(raw)), "x.json")
    assert again == meta
    with pytest.raises(Exception, match="frozen"):
        meta.cell = 3  # type: ignore[misc]
    extra = ModelMeta.from_mapping({**raw, "exporter": {"pv": "dynamo"}}, "x.json")
    assert extra.to_json()["exporter"] == {"pv": "dynamo"}  # export-only keys survive


def test_model_meta_errors_name_the_file_and_the_key(tiny_run: Path, tmp_path: Path) -> None:
    model, ckpt_meta = load_model(tiny_run)
    raw = ModelMeta.from_checkpoint(model.cfg, ckpt_meta).to_json()
    bad = tmp_path / "geoseg-export.json"
    bad.write_text(json.dumps({k: v for k, v in raw.items() if k != "cell"}))
    with pytest.raises(CheckpointError, match=r"missing key 'cell' in .*geoseg-export\.json.*re-run geoseg export"):
        ModelMeta.from_json(bad)
    bad.write_text(json.dumps({**raw, "stats": {"mean": [0.0], "std": [1.0]}}))
    with pytest.raises(CheckpointError, match="statistics of 1 bands for a 3-band model"):
        ModelMeta.from_json(bad)


def test_ff_batch_reaches_the_backend(scene: Path, tiny_run: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    backends: set[int] = set()
    real = TorchBackend._ff

    def spy(self: TorchBackend, tiles: np.ndarray) -> np.ndarray:
        sizes.append(int(np.prod(tiles.shape[::2])))  # tiles x height: regions of one width here
        backends.add(self.ff_batch)
        return real(self, tiles)

    monkeypatch.setattr(TorchBackend, "_ff", spy)
    # block 32: one 2x2-cell region (40 px with the halo) per block, one call each (chunking by
    # ff_batch's worth of pixels is tested in test_backends)
    s = predict([scene], tiny_run, tmp_path / "b.gpkg",
                PredictConfig(block=32, budget=1.0, ff_batch=8), progress=False)
    assert s.ff_cells == 48 and s.ff_regions == 12
    assert sizes == [40] * 12
    assert backends == {8}  # the backend itself was opened with the option, not its default


def test_cli_options_left_out_take_the_config_defaults(scene: Path, tiny_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[PredictConfig] = []
    import geoseg.predict as predict_pkg

    def fake(scenes: object, model: object, out: object, cfg: PredictConfig, **kw: object) -> None:
        seen.append(cfg)
        raise SystemExit(0)  # stop before any work

    monkeypatch.setattr(predict_pkg, "predict", fake)
    res = CliRunner().invoke(cli, ["predict", str(scene), "--model", str(tiny_run), "--out", str(tmp_path / "o.gpkg")])
    assert res.exit_code == 0, res.output
    assert seen == [PredictConfig()]
    res = CliRunner().invoke(cli, ["predict", "--help"])
    assert "[default: 2048]" in res.output and "[default: auto]" in res.output  # --ff-batch


def test_a_deadline_trained_model_predicts_by_its_deadline(scene: Path, tiny_run: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "best.pt")
    ckpt["config"]["model"]["deadline_ms"] = 5.0
    model = tmp_path / "deadline.pt"
    save_checkpoint(model, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    monkeypatch.setattr(TorchBackend, "ms_per_cell", lambda self, ff_batch=None, repeats=3: 1.0)
    s = predict([scene], model, tmp_path / "d.gpkg", PredictConfig(block=256), progress=False)
    assert s.ff_cells == 5 and "the model's deadline 5 ms" in s.routing  # K = floor(5 ms / 1 ms per cell)
    s = predict([scene], model, tmp_path / "b.gpkg", PredictConfig(block=256, budget=0.5), progress=False)
    assert s.ff_cells == 24 and "--budget 0.5" in s.routing  # an explicit budget wins
    s = predict([scene], model, tmp_path / "e.gpkg", PredictConfig(block=256, deadline_ms=12.0), progress=False)
    assert s.ff_cells == 12 and "--deadline-ms 12" in s.routing
    s = predict([scene], tiny_run, tmp_path / "m.gpkg", PredictConfig(block=256), progress=False)
    assert s.routing.startswith("--budget auto (the default for a calibrated model)"), s.routing  # no deadline
    ckpt = load_checkpoint(tiny_run / "checkpoints" / "best.pt")
    ckpt["model"].pop("utility_threshold")  # a checkpoint from before calibration: its trained budget
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    s = predict([scene], tmp_path / "old.pt", tmp_path / "o.gpkg", PredictConfig(block=256), progress=False)
    assert "the model's budget 0.5" in s.routing and s.ff_cells == 24  # tiny.yaml trains with budget 0.5
