"""`geoseg train`: the training loop of the routed model.

A short loop with named steps (no god trainer): build data, model, loss and optimiser
from one validated :class:`TrainConfig`; per epoch, train on random crops, update an EMA
of the weights, validate the EMA weights (COCO mask AP, pixel IoU, instance F1), save
``last.pt`` and ``best.pt`` (without validation chips: a warning, and ``best.pt`` is the
last epoch, its value NaN), append ``metrics.csv`` and redraw ``curves.png``.
``resume=True`` restores everything needed to end with the same weights as a run that
was never interrupted. ``devices``/``nodes`` > 1 train in several processes
(:mod:`geoseg.train.distributed`); ``data.batch_size: auto`` picks the batch that fits
(:mod:`geoseg.train.autobatch`).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from geoseg.config import dump_yaml, validate
from geoseg.errors import ConfigError, OutputExistsError
from geoseg.io.atomic import atomic_path, check_writable, write_text
from geoseg.models.checkpoint import inference_payload, load_checkpoint, save_checkpoint
from geoseg.models.config import ModelConfig
from geoseg.models.postprocess import check_regularize
from geoseg.models.routed import RoutedModel
from geoseg.train import distributed
from geoseg.train.augment import build_augment
from geoseg.train.config import TrainConfig
from geoseg.train.curves import plot_curves
from geoseg.train.dataset import ChipDataset, collate, read_stats
from geoseg.train.losses import RoutedLoss
from geoseg.train.ranks import report
from geoseg.train.resume import resumed_config
from geoseg.train.runtime import lr_lambda, mean_teacher_of, resolve_device, seed_everything, seed_worker, warmup_steps

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    epochs: int
    best: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


#: Called after each epoch's outputs are written: ``hook(trainer, row)``.
Hook = Callable[["Trainer", dict[str, float]], None]


class Trainer:
    """Everything one run needs, built from a :class:`TrainConfig` (``from_config``).

    The model family's parts are hooks (``dataset_class``, ``collate``, :meth:`build_model`,
    :meth:`batch_loss`, :meth:`validate`); :class:`geoseg.train.maskrcnn.MaskRCNNTrainer`
    overrides them for ``model.arch: maskrcnn``. ``model`` (also ``net``) is the model; with
    ``dist.world > 1`` ``ddp`` is the DistributedDataParallel that runs each step's
    :meth:`step_loss` (:class:`geoseg.train.distributed.Step`).
    """

    dataset_class: type[ChipDataset] = ChipDataset
    collate = staticmethod(collate)
    find_unused = True  #: DDP's find_unused_parameters: the routed encoder's stages past encoder_depth get no grad

    def __init__(self, cfg: TrainConfig, patches: Path, run_dir: Path, device: torch.device,
                 progress: bool | None = None, hooks: Sequence[Hook] = (),
                 dist: distributed.Dist = distributed.SINGLE) -> None:
        from pycocotools.coco import COCO

        self.patches, self.run_dir, self.device, self.progress, self.dist = patches, run_dir, device, progress, dist
        self.hooks = list(hooks)
        self.stats = read_stats(patches)
        if dist.main:  # a preset's [building] on trees: said once
            check_regularize(cfg.postprocess.regularize, self.stats["classes"])
        model_cfg = cfg.model.model_copy(update={
            "in_channels": int(self.stats["bands"]), "classes": tuple(self.stats["classes"])})
        self.cfg = cfg.model_copy(update={"model": model_cfg, "patches": str(patches)})
        # Re-validate: the update above bypassed validation.
        self.cfg = validate(TrainConfig, self.cfg.model_dump(mode="json"), "resolved config")
        d = self.cfg.data
        if not isinstance(d.batch_size, int):
            raise ConfigError("data.batch_size: auto is resolved by train(); pass a number here")
        self.batch = d.batch_size  # the global batch; each rank trains on batch / world of it
        aug = build_augment(self.cfg.augment, int(self.stats["bands"]), seed=self.cfg.seed)
        self.train_ds = self.dataset_class(patches, "train", crop=d.crop, augment=aug,
                                           boundary_width=d.boundary_width,
                                           contact_distance=d.contact_distance, seed=self.cfg.seed)
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(patches / "annotations.json"))
        from geoseg.train.metrics import val_image_ids

        self.val_ids = val_image_ids(self.coco, patches / "annotations.json")  # [] (warned): no validation
        self.val_ds = (self.dataset_class(patches, "val", crop=None, augment=None,
                                          boundary_width=d.boundary_width,
                                          contact_distance=d.contact_distance, seed=self.cfg.seed)
                       if self.val_ids else None)
        self.samples = d.samples_per_epoch or len(self.train_ds)
        self.steps_per_epoch = max(1, self.samples // self.batch)
        self.total_steps = self.steps_per_epoch * self.cfg.epochs

        torch.manual_seed(self.cfg.seed)
        self.model = self.build_model().to(device)
        self.loss = RoutedLoss(self.cfg.loss)
        o = self.cfg.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        warmup = warmup_steps(o, self.steps_per_epoch, self.total_steps)  # warns when it outlasts the run
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, self.total_steps, warmup, o.min_lr_ratio))
        decay = (self.cfg.semi.teacher_decay or o.ema_decay) if self.cfg.semi.enabled else o.ema_decay
        self.ema = (torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay),
            use_buffers=True) if decay else None)
        self.semi = mean_teacher_of(self.cfg, self.ema is not None, self.batch, dist)
        self.ddp = dist.wrap(self.model, device, self.find_unused)
        self.model = distributed.unwrap(self.ddp) if self.ddp is not None else self.model  # SyncBN on CUDA
        self.amp = bool(o.amp and device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch, self.step = 0, 0
        self.best: dict[str, Any] = {"metric": self.cfg.val.metric, "value": -1.0, "epoch": -1}
        self.history: list[dict[str, float]] = []

    @property
    def net(self) -> torch.nn.Module:
        """The model itself (``model``; outside DistributedDataParallel)."""
        return self.model

    # -- state -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The checkpoint payload (see :mod:`geoseg.models.checkpoint`)."""
        return {
            "config": self.cfg.model_dump(mode="json"),
            "stats": {k: self.stats.get(k) for k in ("bands", "dtype", "mean", "std", "gsd", "scaling", "meaning")},
            "classes": list(self.stats["classes"]),
            "model": self.net.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_n_averaged": self.ema.n_averaged if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "best": self.best,
            "history": self.history,
            "rng": self.dist.rng_states(),  # every rank's, gathered (a collective)
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore a :meth:`state` payload (``--resume``)."""
        self.net.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.copy_(ckpt["ema_n_averaged"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.best, self.history = dict(ckpt["best"]), list(ckpt["history"])
        self.dist.restore_rng(ckpt["rng"])

    # -- steps -------------------------------------------------------------------------
    def _loader(self, train: bool) -> torch.utils.data.DataLoader[dict[str, Any]]:
        d = self.cfg.data
        if train:
            gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + self.epoch)
            epoch_sample = torch.utils.data.RandomSampler(
                self.train_ds, replacement=True, num_samples=self.steps_per_epoch * self.batch, generator=gen)
            sampler = distributed.ShardSampler(epoch_sample, self.batch, self.dist.rank, self.dist.world)
            self.train_ds.set_epoch(self.epoch)  # crops/augmentations: f(seed, epoch, index)
            return torch.utils.data.DataLoader(
                self.train_ds, batch_size=sampler.share, sampler=sampler, drop_last=True,
                num_workers=d.workers, collate_fn=self.collate, worker_init_fn=seed_worker,
                generator=gen, persistent_workers=False)
        assert self.val_ds is not None, "no validation chips"
        # its own generator: a loader without one draws its base seed from the global RNG, and
        # validating would then change the training that follows (dropout, augmentation draws)
        return torch.utils.data.DataLoader(self.val_ds, batch_size=self.cfg.val.batch_size,
                                           shuffle=False, num_workers=0, collate_fn=self.collate,
                                           generator=torch.Generator().manual_seed(self.cfg.seed))

    def train_epoch(self) -> dict[str, float]:
        """One epoch of optimisation; returns the mean of every logged loss term."""
        self.model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        n = 0
        unlabelled = self.semi.batches(self.epoch, self.steps_per_epoch) if self.semi else None
        bar = tqdm(self._loader(True), total=self.steps_per_epoch, file=sys.stderr,
                   desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=not self.dist.main or (
                       (not sys.stderr.isatty()) if self.progress is None else not self.progress))
        for batch in bar:
            weight = self.semi_weight()
            ub = next(unlabelled) if unlabelled is not None and weight > 0 else None
            with torch.autocast(self.device.type, enabled=self.amp):
                step = functools.partial(self.step_loss, batch, ub, weight)
                total, terms = self.ddp(step) if self.ddp is not None else step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if self.cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.dist.sync_buffers(self.model)  # rank 0's batch-norm statistics: the same EMA on every rank
            if self.ema is not None:
                self.ema.update_parameters(self.net)
            self.step += 1
            n += 1
            sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
            bar.set_postfix(loss=f"{sums['loss'] / n:.3f}")
        return self.dist.mean({k: v / max(counts.get(k, n), 1) for k, v in sums.items()})

    def build_model(self) -> torch.nn.Module:
        """The model of ``cfg.model`` (random or configured encoder weights)."""
        assert isinstance(self.cfg.model, ModelConfig)
        return RoutedModel.from_config(self.cfg.model)

    def step_loss(self, batch: dict[str, Any], ub: dict[str, Any] | None, weight: float) -> tuple[Any, dict[str, Any]]:
        """A step's loss: the labelled batch's, plus ``weight`` x the unlabelled batch's ``ub`` (semi)."""
        total, terms = self.batch_loss(batch)
        if ub is not None:
            ub = {k: v.to(self.device, non_blocking=True) for k, v in ub.items()}
            u_total, u_terms = self.semi.loss(self.model, self.eval_model(), ub, self.loss,
                                              self.step / max(1, self.total_steps))
            total, terms = total + weight * u_total, {**terms, **u_terms, "unsup_weight": weight}
        return total, terms

    def batch_loss(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The loss of one training batch (a scalar tensor) and its logged terms (under autocast)."""
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in batch.items()}
        out = self.model(batch["image"])
        total, terms = self.loss(out, batch, progress=self.step / max(1, self.total_steps))
        return total, terms

    def semi_weight(self) -> float:
        """Weight of the unlabelled loss at this step (0 without ``semi``)."""
        return self.semi.weight(self.step / self.steps_per_epoch) if self.semi else 0.0

    def eval_model(self) -> torch.nn.Module:
        """The weights used for validation and best.pt: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, float]:
        """Validation metrics of the EMA weights on the val chips."""
        from geoseg.train.calibrate import calibrate_router
        from geoseg.train.metrics import run_validation

        if not self.val_ids:
            return {}
        metrics = run_validation(self.eval_model(), self._loader(False), self.coco, self.val_ids,
                                 self.cfg.postprocess, self.device, self.cfg.val.budget)
        # --budget auto: the utility threshold, saved with the weights (both EMA and raw)
        return {**metrics, **calibrate_router(self.eval_model(), self._loader(False), self.loss,
                                              self.device, also=[self.net])}

    # -- outputs -----------------------------------------------------------------------
    def write_outputs(self, row: dict[str, float]) -> None:
        """Append the epoch's row: metrics.csv, curves.png, last.pt, best.pt (rank 0 writes)."""
        self.history.append(row)
        ckdir = self.run_dir / "checkpoints"
        metric = self.cfg.val.metric
        improved = metric in row and row[metric] > self.best["value"]
        if improved:
            self.best = {"metric": metric, "value": row[metric], "epoch": int(row["epoch"])}
        elif self.val_ds is None:  # nothing to choose by: best is the last, unscored
            improved = True
            self.best = {"metric": metric, "value": float("nan"), "epoch": int(row["epoch"])}
        state = self.state()
        if not self.dist.main:
            return
        save_checkpoint(ckdir / "last.pt", state)
        if improved or not (ckdir / "best.pt").exists():
            save_checkpoint(ckdir / "best.pt", inference_payload(state))
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        with atomic_path(self.run_dir / "metrics.csv") as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        plot_curves(self.history, self.run_dir / "curves.png")

    def fit(self) -> TrainResult:
        """Train from the current epoch to ``cfg.epochs``."""
        while self.epoch < self.cfg.epochs:
            t0 = time.perf_counter()
            terms = self.train_epoch()
            self.epoch += 1
            row: dict[str, float] = {"epoch": self.epoch,
                                     "lr": self.optimizer.param_groups[0]["lr"], **terms}
            if self.epoch % self.cfg.val.every == 0 or self.epoch == self.cfg.epochs:
                row.update(self.validate() if self.dist.main else {})
                self.dist.sync_buffers(self.net, self.eval_model())  # the threshold validation set
            row["seconds"] = time.perf_counter() - t0
            row = self.dist.broadcast(row)  # rank 0's: every rank keeps the same history
            self.write_outputs(row)
            self.dist.barrier()  # hooks run once the epoch's outputs are written
            report(row)  # --metrics-port (every rank: torchrun's local rank 0 on each node serves it)
            if self.dist.main:
                log.info("epoch %d: %s", self.epoch,
                         ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            for hook in self.hooks:
                hook(self, row)
        from geoseg.train.calibrate import dense_auto_note
        if self.dist.main and (note := dense_auto_note(self.history, self.best["epoch"])):
            log.warning(note)
        return TrainResult(self.run_dir, self.epoch, self.best, self.history)


def train(cfg: TrainConfig, patches: str | Path, run_dir: str | Path, *, epochs: int | None = None,
          resume: bool = False, overwrite: bool = False, device: str | None = None,
          seed: int | None = None, progress: bool | None = None, hooks: Sequence[Hook] = (),
          devices: int | None = None, nodes: distributed.Nodes | None = None,
          max_memory: int | None = None) -> TrainResult:
    """Train the model of ``cfg.model`` (routed or Mask R-CNN) on the output of `geoseg tile`.

    Args:
        cfg: the training config.
        patches: directory written by `geoseg tile`.
        run_dir: where checkpoints, metrics.csv, curves.png and config.yaml go.
        epochs: overrides ``cfg.epochs`` (with ``resume``: train on up to this epoch).
        resume: continue from ``run_dir/checkpoints/last.pt`` exactly.
        overwrite: start afresh even if ``run_dir`` holds a run.
        device: overrides ``cfg.device``.
        seed: overrides ``cfg.seed``.
        progress: progress bar per epoch (None: on a TTY).
        hooks: callables run after each epoch (e.g. early stopping, logging to a tracker); with
            several processes on every rank, so picklable (module-level functions).
        devices: processes on this machine (overrides ``cfg.devices``), see :mod:`geoseg.train.distributed`.
        nodes: the machines of a multi-node run (None: this one).
        max_memory: bytes ``data.batch_size: auto`` may use on CPU (:mod:`geoseg.train.autobatch`).

    Raises:
        OutputExistsError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite``.
        ConfigError: bad config, no stats.json, CUDA asked for without a GPU (or too few for
            ``devices``), a master port in use, a global batch the processes cannot share.
        CheckpointError: ``resume`` with a corrupt checkpoint.
    """
    updates = {k: v for k, v in (("epochs", epochs), ("device", device), ("seed", seed),
                                 ("devices", devices)) if v is not None}
    cfg = validate(TrainConfig, {**cfg.model_dump(mode="json"), **updates}, "options")
    patches, run_dir = Path(patches), check_writable(run_dir, "--out", directory=True)
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and not resume and not overwrite:
        raise OutputExistsError(f"{run_dir} holds a run; pass --resume to continue it or "
                                "--overwrite to start again")
    ckpt = load_checkpoint(last) if resume and last.exists() else None
    if ckpt is not None:
        saved = resumed_config(cfg, ckpt, patches, last)  # the chips checked, the config given compared
        cfg = saved.model_copy(update={"epochs": cfg.epochs, "device": cfg.device, "devices": devices or saved.devices})
    rank = distributed.start(cfg, train, {"cfg": cfg, "patches": patches, "run_dir": run_dir, "resume": resume,
                                          "overwrite": overwrite, "progress": progress, "hooks": list(hooks),
                                          "max_memory": max_memory},
                             devices, nodes)
    if rank is None:  # the ranks this process spawned have trained
        done = load_checkpoint(last)
        return TrainResult(run_dir, int(done["epoch"]), done["best"], done["history"])
    cfg = cfg.model_copy(update={"devices": rank.local_world})
    trainer_class = Trainer
    if cfg.model.arch == "maskrcnn":
        from geoseg.train.maskrcnn import MaskRCNNTrainer

        trainer_class = MaskRCNNTrainer
    dev = rank.device(resolve_device(cfg.device))
    with distributed.process_group(rank, dev) as dist:
        def make(c: TrainConfig, d: distributed.Dist = dist) -> Trainer:
            return trainer_class(c, patches, run_dir, dev, progress, hooks, d)

        if cfg.data.batch_size == "auto":
            from geoseg.train.autobatch import resolve_batch_size

            cfg = resolve_batch_size(cfg, make, dist, max_memory)
        seed_everything(cfg.seed)
        trainer = make(cfg)
        dist.fork_rng(cfg.seed)
        if ckpt is not None:
            trainer.load_state(ckpt)
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", dump_yaml(trainer.cfg))
        result = trainer.fit()
        del trainer  # its DDP model holds the process group, destroyed when the block ends
    return result
