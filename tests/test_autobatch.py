"""``data.batch_size: auto``: probing on (fake) CUDA OOM, the CPU memory budget, saved for resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO

from geoseg.cli.main import cli
from geoseg.config import load_config
from geoseg.errors import ConfigError
from geoseg.models.checkpoint import load_checkpoint
from geoseg.models.routed import RoutedModel
from geoseg.train import TrainConfig, autobatch, train
from geoseg.train.loop import Trainer

TINY = REPO / "tests" / "conf" / "tiny.yaml"


def tiny(**overrides) -> TrainConfig:
    return load_config(TrainConfig, TINY, overrides)


def oom_above(monkeypatch: pytest.MonkeyPatch, limit: int) -> list[int]:
    """The routed model raises CUDA's OOM on batches above ``limit``; returns the batches it saw."""
    seen: list[int] = []
    forward = RoutedModel.forward

    def fake(self, x, *args, **kwargs):
        seen.append(x.shape[0])
        if x.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError(f"fake: batch {x.shape[0]} > {limit}")
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(RoutedModel, "forward", fake)
    return seen


@pytest.mark.parametrize("limit", [1, 5, 8])
def test_probe_picks_the_largest_batch_that_does_not_raise(tiny_patches: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    trainer = Trainer(tiny(data={"batch_size": 1}), tiny_patches, tmp_path, torch.device("cpu"))
    seen = oom_above(monkeypatch, limit)
    chosen = autobatch.probe(trainer, 64)
    assert chosen == 1 << (limit.bit_length() - 1)  # the largest power of two <= limit
    assert seen[0] == 64 and seen[-1] == chosen  # from the cap down, halving


def test_probe_without_room_for_one_chip_is_a_config_error(tiny_patches: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(tiny(data={"batch_size": 1}), tiny_patches, tmp_path, torch.device("cpu"))
    oom_above(monkeypatch, 0)
    with pytest.raises(ConfigError, match="one chip"):
        autobatch.probe(trainer, 4)


def test_auto_is_chosen_once_and_saved_for_resume(tiny_patches: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(autobatch, "rule_for", lambda device: "probe")  # as on CUDA
    oom_above(monkeypatch, 6)
    run = tmp_path / "run"
    res = train(tiny(data={"batch_size": "auto"}), tiny_patches, run, epochs=1)
    assert "data.batch_size auto: 4" in capsys.readouterr().err
    assert load_config(TrainConfig, run / "config.yaml").data.batch_size == 4
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["data"]["batch_size"] == 4
    assert res.history[0]["epoch"] == 1
    # resume trains on with the saved batch, without choosing again
    monkeypatch.setattr(autobatch, "resolve_batch_size", lambda *a, **k: pytest.fail("chosen again"))
    resumed = train(tiny(data={"batch_size": "auto"}), tiny_patches, run, epochs=2, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2]


def test_cpu_budget_rule(tiny_patches: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny(data={"batch_size": 1}), tiny_patches, tmp_path, torch.device("cpu"))
    assert autobatch.rule_for(torch.device("cpu")) == "budget"
    assert autobatch.rule_for(torch.device("cuda", 0)) == "probe"
    assert autobatch.estimate(trainer, 64, 2**40) == 64  # a TiB: the cap
    with pytest.raises(ConfigError, match="one chip .* more than"):
        autobatch.estimate(trainer, 64, 10_000)
    # the tiny model: ~90 MB of weights (x5), ~1.7 MB saved per 32x32 chip (x2)
    small, large = (autobatch.estimate(trainer, 64, b) for b in (470e6, 600e6))
    assert 1 <= small < large < 64  # more memory, larger batches
    assert small & (small - 1) == 0 and large & (large - 1) == 0  # powers of two


def test_cpu_auto_through_the_cli(tiny_patches: Path, tmp_path: Path) -> None:
    config = tmp_path / "auto.yaml"
    config.write_text(TINY.read_text().replace("batch_size: 4", "batch_size: auto"))
    args = ["train", str(config), "--patches", str(tiny_patches), "--epochs", "1"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "run"), "--max-memory", "1GiB"])
    assert res.exit_code == 0, res.output
    assert "data.batch_size auto: 8" in res.output  # samples_per_epoch 8 caps it
    assert load_config(TrainConfig, tmp_path / "run" / "config.yaml").data.batch_size == 8
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r2"), "--max-memory", "10kB"])
    assert res.exit_code == 1 and "--max-memory" in res.output and len(res.output.splitlines()) == 1
    res = CliRunner().invoke(cli, ["train", str(TINY), "--patches", str(tiny_patches), "--out", str(tmp_path / "r3"),
                                   "--max-memory", "1GB"])
    assert res.exit_code == 1 and "batch_size 4" in res.output, res.output
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r4"), "--max-memory", "lots"])
    assert res.exit_code == 1 and "'lots'" in res.output, res.output


def test_parse_size() -> None:
    assert autobatch.parse_size("8GB") == 8 * 10**9
    assert autobatch.parse_size("512MiB") == 512 * 2**20
    assert autobatch.parse_size(" 2 gib ") == 2 * 2**30
    for bad in ("", "-1GB", "8 parsecs", "0"):
        with pytest.raises(ConfigError, match="--max-memory"):
            autobatch.parse_size(bad)
