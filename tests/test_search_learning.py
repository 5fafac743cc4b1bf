"""A tiny reference detector learns, through `geoseg tile`, `geoseg train` and `geoseg search`,
to find the objects of generated scenes, to embed the kind of its examples (round tanks)
closer to them than the other (rectangular roofs), and, through the similarity threshold
calibrated in training, to return that kind and not the other (issue #14's target: an
expected failure when this tiny model misses it)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from geoseg.cli.main import cli
from geoseg.models.checkpoint import load_checkpoint
from geoseg.search.synthetic import draw_scene, pick_examples, score

CONFIG = """task: search
epochs: {epochs}
seed: 0
device: cpu
model: {{encoder: convnext_atto, encoder_dims: [24, 48, 96, 192], encoder_depths: [1, 1, 1, 1],
         fpn_channels: 32, template_size: 32, heads: 4}}
episodes: {{crop: 64, batch_size: 8, steps_per_epoch: {steps}, val_episodes: 16, positive: 0.6}}
augment: {{haze: 0, clouds_shadows: 0, blur: 0, noise: 0, jpeg: 0, downscale: 0}}
optim: {{lr: 0.003, warmup_epochs: 0.2}}
"""


def _cli(*args: object) -> str:
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.slow
def test_tiny_model_finds_the_kind_of_its_examples(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and CI shares its cores
    try:
        scenes = [draw_scene(tmp_path / "scenes" / f"s{i}.tif", 384, 16, seed=i,
                             origin=(500000.0 + 400 * i, 100000.0)) for i in range(3)]
        labels = gpd.GeoDataFrame(pd.concat([s.objects for s in scenes], ignore_index=True), crs=scenes[0].objects.crs)
        labels.to_file(tmp_path / "labels.gpkg")
        _cli("tile", tmp_path / "scenes", "--labels", tmp_path / "labels.gpkg", "--class-field", "kind",
             "--size", "192", "--overlap", "0", "--val-scenes", "s2", "--out", tmp_path / "patches")
        (tmp_path / "cfg.yaml").write_text(CONFIG.format(epochs=16, steps=30))
        _cli("train", tmp_path / "cfg.yaml", "--patches", tmp_path / "patches", "--out", tmp_path / "run")
        best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
        metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
        row = metrics[metrics["epoch"] == best["best"]["epoch"]].iloc[0]
        # validation calibrated the similarity threshold that search applies, on the best epoch
        assert best["calibration"]["min_similarity"] == pytest.approx(row["min_similarity"])
        assert -1 <= row["min_similarity"] < 1 and row["f1"] >= row["f1_ungated"]
        test = draw_scene(tmp_path / "test" / "t.tif", 384, 16, seed=77)
        pick_examples(test, "tank", 3).to_crs("EPSG:4326").to_file(tmp_path / "ex.gpkg")
        res = {}
        for gate in ("-1", "auto"):  # every box, then the threshold calibrated in training
            out = tmp_path / f"found{gate}.gpkg"
            _cli("search", test.path, "--examples", tmp_path / "ex.gpkg", "--model", tmp_path / "run",
                 "--out", out, "--block", "192", "--min-score", "0.2", "--min-similarity", gate)
            res[gate] = score(gpd.read_file(out), test.objects, "tank")
    finally:
        torch.set_num_threads(threads)
    assert res["-1"]["recall"] >= 0.75, res  # its boxes find the objects at IoU 0.5
    # the kind embeddings tell the kinds apart: the examples' kind is more similar to them
    assert res["-1"]["similarity_kind"] > res["-1"]["similarity_other"] + 0.05, res
    assert res["auto"]["recall"] >= 0.75 and res["auto"]["precision"] > res["-1"]["precision"], res
    if res["auto"]["precision"] < 0.8 or res["auto"]["other_returned"] >= 0.1:
        pytest.xfail(f"the other kind still passes the calibrated threshold (docs/benchmarks.md): {res}")


def test_resume_continues_with_the_run_config_and_names_the_edits(tmp_path: Path) -> None:
    """A search run resumed with an edited model (fpn_channels) stopped with 'unexpected RuntimeError:
    size mismatch'; an edited lr applied silently. It continues with the run's config, as geoseg train does."""
    scene = draw_scene(tmp_path / "scenes" / "s0.tif", 192, 8, seed=0)
    scene.objects.to_file(tmp_path / "labels.gpkg")
    _cli("tile", tmp_path / "scenes", "--labels", tmp_path / "labels.gpkg", "--class-field", "kind",
         "--size", "96", "--overlap", "0", "--out", tmp_path / "patches")
    (tmp_path / "cfg.yaml").write_text(CONFIG.format(epochs=1, steps=2).replace("val_episodes: 16", "val_episodes: 2"))
    _cli("train", tmp_path / "cfg.yaml", "--patches", tmp_path / "patches", "--out", tmp_path / "run")
    edited = (tmp_path / "cfg.yaml").read_text().replace("fpn_channels: 32", "fpn_channels: 24")
    (tmp_path / "cfg.yaml").write_text(edited.replace("lr: 0.003", "lr: 0.001"))
    out = _cli("train", tmp_path / "cfg.yaml", "--patches", tmp_path / "patches", "--out", tmp_path / "run",
               "--resume", "--epochs", "2")
    assert "model.fpn_channels (24 given, 32 in the run), optim.lr (0.001 given, 0.003 in the run)" in out
    assert "trained 2 epochs" in out
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["config"]["model"]["fpn_channels"] == 32 and last["config"]["epochs"] == 2
