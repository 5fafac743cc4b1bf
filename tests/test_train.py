"""The training loop: overfitting, exact resume, outputs, safe checkpoints, config errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO

from geoseg.cli.main import cli
from geoseg.config import load_config
from geoseg.errors import CheckpointError, ConfigError, OutputExistsError
from geoseg.models.checkpoint import load_checkpoint
from geoseg.train import TrainConfig, train

TINY = REPO / "tests" / "conf" / "tiny.yaml"


@pytest.fixture
def patches(tiny_patches: Path) -> Path:
    return tiny_patches


def tiny(**overrides) -> TrainConfig:
    return load_config(TrainConfig, TINY, overrides)


def test_tiny_set_overfits(tiny_run: Path) -> None:
    rows = list(csv.DictReader((tiny_run / "metrics.csv").open()))
    last = {k: float(v) for k, v in rows[-1].items() if v}
    assert last["ap"] > 0.9 and last["f1"] > 0.9 and last["iou"] > 0.9
    assert last["loss"] < float(rows[0]["loss"])


def test_outputs_and_checkpoint(patches: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    import geoseg.train.calibrate as cal

    monkeypatch.setattr(cal, "choose_threshold", lambda p, g: (float("-inf"), 1.0))  # FF pays everywhere
    run = tmp_path / "run"
    with caplog.at_level("WARNING", logger="geoseg.train.loop"):
        res = train(tiny(), patches, run, epochs=2)
    assert res.epochs == 2
    dense = [r.message for r in caplog.records if "FF pays on every validation cell" in r.message]
    assert dense == [cal.dense_auto_note(res.history, res.best["epoch"])]  # once, at the end, for best.pt
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
    assert ckpt["epoch"] in (1, 2) and "ema" not in ckpt and "optimizer" not in ckpt
    # a plain torch.load with weights_only=True works too
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["ema"] is not None and set(last["model"]) == set(last["ema"])
    # best.pt holds what predict needs, the EMA weights once (last.pt: raw, EMA, Adam moments)
    assert (run / "checkpoints" / "best.pt").stat().st_size < 0.55 * (run / "checkpoints" / "last.pt").stat().st_size


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
    # validating (every epoch in `full`) does not change the training that follows it
    rare = train(tiny(val={"every": 3}), patches, tmp_path / "rare", epochs=3)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in rare.history]


def test_existing_run_needs_resume_or_overwrite(patches: Path, tmp_path: Path) -> None:
    train(tiny(), patches, tmp_path / "run", epochs=1)
    with pytest.raises(OutputExistsError, match="--resume"):
        train(tiny(), patches, tmp_path / "run", epochs=1)
    train(tiny(), patches, tmp_path / "run", epochs=1, overwrite=True)
    # resuming on other chips (tiled again: another mean) once went on with the new normalisation halfway
    other = Path(shutil.copytree(patches, tmp_path / "other"))
    stats = json.loads((other / "stats.json").read_text())
    stats["mean"] = [m + 10 for m in stats["mean"]]
    (other / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ConfigError, match=r"are not the chips .*last.pt was trained on \(mean differ\)"):
        train(tiny(), other, tmp_path / "run", epochs=2, resume=True)
    assert train(tiny(), patches, tmp_path / "run", epochs=2, resume=True).epochs == 2


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
                              "--epochs", "1", "--set", "optim.lr=0.0123", "--set", "augment.d4=0.5"])
    assert res.exit_code == 0, res.output
    assert "trained 1 epochs" in res.output
    saved = load_config(TrainConfig, run / "config.yaml")  # --set is recorded in the run
    assert saved.optim.lr == 0.0123 and saved.augment.d4 == 0.5
    assert saved.optim.ema_decay == 0.9 and saved.model.halo == 4  # the rest as in the file
    # --set cannot change a run it resumes: said, not ignored
    res = runner.invoke(cli, ["train", str(TINY), "--patches", str(patches), "--out", str(run),
                              "--resume", "--epochs", "2", "--set", "optim.lr=0.1"])
    assert res.exit_code == 1 and "--set does not apply with --resume" in res.output
    # a corrupt last.pt: one line, exit 1, no traceback
    (run / "checkpoints" / "last.pt").write_bytes(b"garbage")
    res = runner.invoke(cli, ["train", str(TINY), "--patches", str(patches), "--out", str(run),
                              "--resume", "--epochs", "2"])
    assert res.exit_code == 1
    assert res.output.startswith("geoseg: error:") and "last.pt" in res.output
    assert "Traceback" not in res.output


def test_resume_names_the_edits_of_config_it_ignores(patches: Path, tmp_path: Path) -> None:
    """A run resumes with its own config: an lr edited in CONFIG since was ignored without a word."""
    cfg, run = tmp_path / "c.yaml", tmp_path / "run"
    shutil.copy(TINY, cfg)
    runner = CliRunner()
    res = runner.invoke(cli, ["train", str(cfg), "--patches", str(patches), "--out", str(run), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["train", str(cfg), "--patches", str(patches), "--out", str(run), "--resume",
                              "--epochs", "2"])
    assert res.exit_code == 0 and "differs from the one of the run" not in res.output, res.output
    cfg.write_text(cfg.read_text().replace("halo: 4", "halo: 8").replace("lr: 0.003", "lr: 0.0015"))
    res = runner.invoke(cli, ["train", str(cfg), "--patches", str(patches), "--out", str(run), "--resume",
                              "--epochs", "3", "--device", "auto", "--seed", "7"])
    assert res.exit_code == 0, res.output
    assert "model.halo (8 given, 4 in the run), optim.lr (0.0015 given, 0.003 in the run)" in res.output
    assert "seed (7 given, 0 in the run)" in res.output and "device" not in res.output  # --device is taken
    assert "--resume continues with the run's, so these edits are ignored" in res.output
    resumed = load_config(TrainConfig, run / "config.yaml")
    assert resumed.model.halo == 4 and resumed.seed == 0 and resumed.device == "auto"  # what it says it did


def test_unknown_config_key_is_one_line(patches: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    shutil.copy(TINY, cfg)
    cfg.write_text(cfg.read_text().replace("halo: 4", "halo: 4\n  encodr: resnet18"))
    res = CliRunner().invoke(cli, ["train", str(cfg), "--patches", str(patches), "--out",
                                   str(tmp_path / "r")])
    assert res.exit_code == 1
    assert "unknown key 'model.encodr'" in res.output and "c.yaml" in res.output
    # a key given twice: PyYAML kept the last one silently, so an edit above was lost
    text = TINY.read_text()
    cfg.write_text(text.replace("halo: 4", "halo: 4\n  halo: 8"))
    line = text[:text.index("halo: 4")].count("\n") + 1
    res = CliRunner().invoke(cli, ["train", str(cfg), "--patches", str(patches), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert f"c.yaml: key 'halo' is given twice (lines {line} and {line + 1}); keep one" in res.output
    # YAML merge keys still override: an anchor's key given again is not a duplicate
    from geoseg.config import read_yaml

    (tmp_path / "m.yaml").write_text("a: &a {lr: 1, wd: 2}\nb:\n  <<: *a\n  lr: 3\n")
    assert read_yaml(tmp_path / "m.yaml")["b"] == {"lr": 3, "wd": 2}
    # the same through --set: the key and where it came from
    for sets, said in ((["model.encodr=resnet18"], "unknown key 'model.encodr' in"),
                       (["model.halo=-3"], "invalid value for 'model.halo'"),
                       (["model.halo"], "expected KEY=VALUE"),
                       (["model..halo=4"], "expected KEY=VALUE"),
                       (["model.halo=4", "model.halo=8"], "set twice"),
                       (["model=1", "model.halo=8"], "'model' is also set to a value"),
                       (["optim.lr=[1, 2"], "the value is not YAML"),
                       (["seed=-5"], "invalid value for 'seed'"),  # was 'unexpected ValueError'
                       (["optim.lr=.nan"], "'optim.lr': Input should be a finite number"),  # NaN trained to NaN
                       (["optim.grad_clip=.inf"], "'optim.grad_clip': Input should be a finite number")):
        args = [a for s in sets for a in ("--set", s)]
        res = CliRunner().invoke(cli, ["train", str(TINY), "--patches", str(patches), "--out",
                                       str(tmp_path / "r"), *args])
        assert res.exit_code == 1 and said in res.output, (sets, res.output)
        assert res.output.count("\n") == 1 and not (tmp_path / "r").exists()
    res = CliRunner().invoke(cli, ["train", str(TINY), "--patches", str(patches), "--out",
                                   str(tmp_path / "r"), "--seed", "-5"])
    assert res.exit_code == 2 and "--seed" in res.output and "unexpected" not in res.output


def test_presets_are_valid() -> None:
    cpu = load_config(TrainConfig, REPO / "configs" / "buildings-cpu.yaml")  # the offline demo
    assert cpu.model.pv.encoder_weights is None and cpu.model.ff.encoder_weights is None
    gpu = load_config(TrainConfig, REPO / "configs" / "buildings-gpu.yaml")  # fetched when trained
    assert gpu.model.pv.encoder_weights == "imagenet" and gpu.model.ff.encoder_weights == "imagenet"
    assert cpu.postprocess.regularize and gpu.postprocess.regularize  # predict squares buildings


def test_load_model_uses_ema_weights(patches: Path, tmp_path: Path) -> None:
    from geoseg.models.checkpoint import load_model

    train(tiny(), patches, tmp_path / "run", epochs=1)
    model, meta = load_model(tmp_path / "run")
    ckpt = load_checkpoint(meta["path"])  # best.pt: the EMA weights as "model"
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, last["ema"][k], rtol=0, atol=0)
        torch.testing.assert_close(v, ckpt["model"][k], rtol=0, atol=0)
    # a full training state loads too, with its EMA weights
    model2, _ = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    for k, v in model2.state_dict().items():
        torch.testing.assert_close(v, last["ema"][k], rtol=0, atol=0)
    assert not model.training and meta["stats"]["bands"] == 3


def test_greedy_match_is_the_evaluation_matcher() -> None:
    import numpy as np

    from geoseg.matching import match_by_iou
    from geoseg.train.metrics import greedy_match

    ious = np.array([[0.9, 0.6, 0.0], [0.7, 0.8, 0.55], [0.0, 0.5, 0.4]])
    assert greedy_match(ious, 0.5) == [(0, 0, 0.9), (1, 1, 0.8)]  # truth 1 is taken before (2, 1)
    p, t = np.nonzero(ious > 0)
    hit = match_by_iou(p, t, ious[p, t], 0.5)
    pairs = {(int(i), int(j)) for i, j in zip(p[hit], t[hit], strict=True)}
    assert {(i, j) for i, j, _ in greedy_match(ious, 0.5)} == pairs
    assert greedy_match(np.zeros((0, 2)), 0.5) == []
    assert greedy_match(np.array([[2 / 3]]), 80 / 120) == [(0, 0, 2 / 3)]  # same tolerance


def test_set_overrides_are_dotted_keys_with_yaml_values() -> None:
    from geoseg.config import parse_sets

    got = parse_sets(["model.ff.encoder_depth=5", "model.halo=16", "augment.d4=0.5",
                      "model.ff.decoder_channels=[128, 64, 32, 16, 16]", "device=cpu", "model.pv.encoder_weights=null"])
    assert got == {"model": {"ff": {"encoder_depth": 5, "decoder_channels": [128, 64, 32, 16, 16]}, "halo": 16,
                             "pv": {"encoder_weights": None}},
                   "augment": {"d4": 0.5}, "device": "cpu"}
    cfg = load_config(TrainConfig, TINY, sets=["model.halo=8", "optim.lr=1e-3"])
    assert cfg.model.halo == 8 and cfg.optim.lr == 1e-3 and cfg.model.cell == tiny().model.cell


def test_set_null_applies_and_cli_options_win(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(TINY.read_text() + "\npatches: chips/\n")
    assert load_config(TrainConfig, cfg_file).patches == "chips/"
    # a null through --set is applied (a None CLI option means "not given" and is skipped)
    assert load_config(TrainConfig, cfg_file, sets=["patches=null"]).patches is None
    both = load_config(TrainConfig, cfg_file, {"epochs": 7, "seed": None}, sets=["epochs=3", "seed=5"])
    assert both.epochs == 7 and both.seed == 5  # an explicit option beats --set, which beats the file


def test_a_preset_squaring_a_class_the_chips_lack_warns(tiny_patches: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The buildings presets' ``regularize: [building]`` on chips of trees: said when training starts."""
    from geoseg.train.loop import Trainer

    for names, warned in ((["tree"], True), (["building"], False), (True, False)):
        cfg = load_config(TrainConfig, REPO / "tests" / "conf" / "tiny.yaml", {"postprocess": {"regularize": names}})
        caplog.clear()
        with caplog.at_level("WARNING"):
            Trainer(cfg, tiny_patches, tmp_path / "run", torch.device("cpu"))
        assert ("postprocess.regularize names tree, not a class of the chips (building): predict will square "
                "no outline" in caplog.text) is warned, caplog.text
    with pytest.raises(ConfigError, match="regularize"):
        load_config(TrainConfig, REPO / "tests" / "conf" / "tiny.yaml", {"postprocess": {"regularize": [" "]}})


def test_a_warmup_longer_than_the_run_is_warned_of(caplog) -> None:
    """--set optim.warmup_epochs=100 with 2 epochs: the learning rate never reached optim.lr, without a word."""
    from types import SimpleNamespace

    from geoseg.train.runtime import lr_lambda, warmup_steps

    o = SimpleNamespace(warmup_epochs=100.0, lr=1e-3)
    with caplog.at_level("WARNING", logger="geoseg.train"):
        assert warmup_steps(o, 4, 8) == 400
    assert "optim.warmup_epochs (100: 400 steps) is longer than the run (8 steps)" in caplog.text
    assert max(lr_lambda(s, 8, 400, 0.05) for s in range(8)) < 0.05  # what it warns of
    caplog.clear()
    with caplog.at_level("WARNING", logger="geoseg.train"):
        warmup_steps(SimpleNamespace(warmup_epochs=1.0, lr=1e-3), 4, 4)  # a 1-epoch run of a preset: peaks at its end
    assert not caplog.text


def test_a_config_in_another_encoding_is_read_or_named(tmp_path: Path) -> None:
    """A config saved as UTF-16 (Windows' Notepad) or with a byte-order mark is read; Latin-1 text is one
    line naming the file (it stopped with 'unexpected UnicodeDecodeError')."""
    from geoseg.config import read_yaml

    (tmp_path / "u16.yaml").write_bytes("epochs: 3\n".encode("utf-16"))
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbfepochs: 3\n")
    assert read_yaml(tmp_path / "u16.yaml") == read_yaml(tmp_path / "bom.yaml") == {"epochs": 3}
    (tmp_path / "latin.yaml").write_bytes("# caf\xe9\nepochs: 3\n".encode("latin-1"))
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "latin.yaml"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "latin.yaml is not UTF-8 text (byte 5" in res.output, res.output
    assert "unexpected" not in res.output and not (tmp_path / "r").exists()
