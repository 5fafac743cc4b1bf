"""Multi-process training (gloo on CPU, 2 processes): one process's losses, rank 0 writes, exact resume, errors."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO

from geoseg.cli.main import cli
from geoseg.config import dump_yaml, load_config
from geoseg.models.checkpoint import load_checkpoint
from geoseg.train import TrainConfig, train
from geoseg.train import distributed as dd
from geoseg.train.loop import Trainer

TINY = REPO / "tests" / "conf" / "tiny.yaml"
#: No random FF cells: the run then draws no random numbers, and 2 ranks are comparable with 1 process.
NO_RANDOM = {"model": {"train_random_cells": 0.0}}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "utility_threshold")


def tiny(**overrides) -> TrainConfig:
    return load_config(TrainConfig, TINY, {**NO_RANDOM, **overrides})


class Crash(Exception):
    pass


def crash_rank1_after_epoch1(trainer: Trainer, row: dict[str, float]) -> None:
    """A hook (module-level: the spawned ranks import it) that kills rank 1 after epoch 1."""
    if trainer.dist.rank == 1 and row["epoch"] == 1:
        raise Crash("rank 1 died after epoch 1")


def halves(original):
    """``Trainer.batch_loss`` over the two halves of the batch, averaged: what 2 DDP ranks compute.

    Each rank's batch norm sees its half only, so this, not the plain 1-process loss, is the
    reference; DDP averages the two ranks' gradients as the mean of the two losses does.
    """
    def batch_loss(self, batch):
        n = batch["image"].shape[0] // 2
        parts = [original(self, {k: v[s] if torch.is_tensor(v) else v for k, v in batch.items()})
                 for s in (slice(0, n), slice(n, None))]
        return (parts[0][0] + parts[1][0]) / 2, {k: (parts[0][1][k] + parts[1][1][k]) / 2 for k in parts[0][1]}
    return batch_loss


def losses(run: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader((run / "metrics.csv").open())]


@pytest.mark.slow
def test_two_processes_train_as_one_and_resume_exactly(tiny_patches: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the ranks' threads
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_yaml(tiny()))
    res = CliRunner().invoke(cli, ["train", str(config), "--patches", str(tiny_patches), "--out", str(tmp_path / "two"),
                                   "--devices", "2", "--epochs", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    # the reference: one process, the same global batches, each half normalised on its own
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with monkeypatch.context() as m:
            m.setattr(Trainer, "batch_loss", halves(Trainer.batch_loss))
            one = train(tiny(), tiny_patches, tmp_path / "one", epochs=2)
    finally:
        torch.set_num_threads(threads)
    # the same loss curve: gloo's all-reduce sums in another order than autograd, hence a tolerance
    assert losses(tmp_path / "two") == pytest.approx([r["loss"] for r in one.history], rel=1e-4)
    a, b = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt"), two
    # the weights too (not the buffers: BN running statistics are rank 0's in DDP, both halves' here,
    # and the router threshold validation calibrates depends on them)
    weights = [k for k in a["model"] if not k.endswith(BUFFERS)]
    assert len(weights) > 50
    for key in weights:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-3, atol=1e-5, msg=key)
    # written once, by rank 0: one row per epoch, every rank's RNG state in last.pt
    assert [r["epoch"] for r in csv.DictReader((tmp_path / "two" / "metrics.csv").open())] == ["1", "2"]
    assert len(b["rng"]["ranks"]) == 2 and (tmp_path / "two" / "checkpoints" / "best.pt").exists()
    assert load_config(TrainConfig, tmp_path / "two" / "config.yaml").devices == 2

    # rank 1 dies after epoch 1: the run fails with its error (no hang), rank 0's last.pt resumes exactly
    part = tmp_path / "part"
    with pytest.raises(Crash, match="rank 1 died"):
        train(tiny(), tiny_patches, part, epochs=2, devices=2, hooks=[crash_rank1_after_epoch1])
    assert load_checkpoint(part / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = train(tiny(), tiny_patches, part, epochs=2, resume=True)  # devices: 2 from the checkpoint
    assert [r["loss"] for r in resumed.history] == pytest.approx(losses(tmp_path / "two"), rel=1e-6)
    c = load_checkpoint(part / "checkpoints" / "last.pt")
    for key in b["model"]:
        torch.testing.assert_close(c["model"][key], b["model"][key], rtol=1e-5, atol=1e-7, msg=key)


def test_shards_partition_every_global_batch() -> None:
    gen = torch.Generator().manual_seed(3)
    base = list(torch.utils.data.RandomSampler(range(10), replacement=True, num_samples=12, generator=gen))
    shards = [list(dd.ShardSampler(base, 4, r, 2)) for r in (0, 1)]
    assert all(len(s) == 6 for s in shards)
    for k in range(3):  # global batch k = rank 0's 2 then rank 1's 2
        assert shards[0][2 * k:2 * k + 2] + shards[1][2 * k:2 * k + 2] == base[4 * k:4 * k + 4]
    assert list(dd.ShardSampler(base, 4, 0, 1)) == base  # one process: today's sampler


def test_only_rank_0_writes(tiny_patches: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(tiny(), tiny_patches, tmp_path / "run", torch.device("cpu"))
    monkeypatch.setattr(dd.Dist, "rng_states", lambda self: {"torch": torch.get_rng_state(), "cuda": []})
    monkeypatch.setattr(dd.Dist, "barrier", lambda self: None)
    row = {"epoch": 1.0, "loss": 1.0, "ap": 0.5}
    trainer.dist = dd.Dist(rank=1, world=2)
    trainer.write_outputs(row)
    assert not (tmp_path / "run").exists() and trainer.history == [row]
    trainer.dist = dd.Dist(rank=0, world=2)
    trainer.write_outputs(row)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists() and (tmp_path / "run" / "metrics.csv").exists()


def test_each_rank_resumes_its_own_rng() -> None:
    states = [torch.Generator().manual_seed(s).get_state() for s in (1, 2)]
    rng = {"torch": states[0], "cuda": [], "ranks": [{"torch": s, "cuda": []} for s in states]}
    saved = torch.get_rng_state()
    try:
        dd.Dist(rank=1, world=2).restore_rng(rng)
        assert torch.equal(torch.get_rng_state(), states[1])
        dd.Dist(rank=0, world=2).restore_rng(rng)
        assert torch.equal(torch.get_rng_state(), states[0])
        with pytest.warns(UserWarning, match="not exactly"):  # 2 ranks' states, 3 ranks now
            dd.Dist(rank=2, world=3).restore_rng(rng)
    finally:
        torch.set_rng_state(saved)


def run_cli(args: list[str]):
    return CliRunner().invoke(cli, ["train", str(TINY), *args])


def one_line_error(res, *words: str) -> None:
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("geoseg: error:"), res.output
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_launch_errors_are_one_line(tiny_patches: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--patches", str(tiny_patches), "--out", str(tmp_path / "run")]
    if torch.cuda.device_count() < 2:
        one_line_error(run_cli([*base, "--devices", "2", "--device", "cuda"]), "--devices 2", "GPUs")
    with socket.socket() as s:  # a port in use
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(run_cli([*base, "--devices", "2", "--master-port", str(port)]), str(port), "in use")
    one_line_error(run_cli([*base, "--devices", "2", "--nodes", "2"]), "--master-addr")
    one_line_error(run_cli([*base, "--nodes", "2", "--node-rank", "2", "--master-addr", "h", "--master-port", "1"]),
                   "--node-rank 2")
    odd = tmp_path / "odd.yaml"
    odd.write_text(TINY.read_text().replace("batch_size: 4", "batch_size: 3"))
    one_line_error(CliRunner().invoke(cli, ["train", str(odd), *base, "--devices", "2"]), "batch_size 3", "multiple")
    semi = tmp_path / "semi.yaml"  # the unlabelled batch (semi.ratio x 4 = 3) is split too
    semi.write_text(TINY.read_text() + f"semi: {{unlabelled: [{tmp_path}], ratio: 0.75}}\n")
    one_line_error(CliRunner().invoke(cli, ["train", str(semi), *base, "--devices", "2"]),
                   "unlabelled batch of 3", "multiple")
    # under torchrun the launcher decides the processes
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(k, v)
    one_line_error(run_cli([*base, "--devices", "3"]), "LOCAL_WORLD_SIZE")
    assert not (tmp_path / "run").exists()


def test_free_port_is_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASTER_PORT", raising=False)
    launch = dd.plan(2, "cpu")
    assert launch.world == 2 and launch.master_port > 0 and launch.master_addr == "127.0.0.1"
    assert dd.plan(1, "cpu").world == 1
