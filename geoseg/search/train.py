"""Training of the reference detector (``geoseg train`` on a config with ``task: search``).

Episodes (:mod:`geoseg.search.episodes`) from a tile directory's train split; AdamW with
linear warm-up then cosine decay, gradient clipping; validation every ``val.every``
epochs = box AP50 of ``episodes.val_episodes`` fixed episodes of the val split (the train
split when there is no val chip), with the similarity threshold of `geoseg search`
calibrated on them (:func:`validate`); ``checkpoints/last.pt`` and ``best.pt`` (by AP50),
``metrics.csv``, ``curves.png``, ``config.yaml``. ``--resume`` continues from last.pt;
epochs are seeded by (seed, epoch), so a resumed run draws what the full run would.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from geoseg.bands import BandStats, load_stats
from geoseg.config import MAX_SEED, Strict, dump_yaml
from geoseg.config import validate as validate_config
from geoseg.errors import OutputExistsError
from geoseg.io.atomic import check_writable, write_text
from geoseg.models.checkpoint import load_checkpoint, save_checkpoint
from geoseg.models.refdet import RefDet, RefDetConfig
from geoseg.search.boxes import MIN_SCORE, average_precision, calibrate_similarity, detections, match
from geoseg.search.episodes import Episode, EpisodeConfig, EpisodeSource, draw_episode
from geoseg.search.losses import SearchLossConfig, kind_contrast, object_embeddings, search_loss
from geoseg.train.augment import AugmentConfig, build_augment
from geoseg.train.loop import TrainResult
from geoseg.train.resume import warn_ignored
from geoseg.train.runtime import lr_lambda, resolve_device

log = logging.getLogger(__name__)


class SearchOptimConfig(Strict):
    """AdamW, linear warm-up then cosine decay, clipping."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)


class SearchValConfig(Strict):
    """Validation: box AP50 of held-out episodes."""

    every: int = Field(1, ge=1)
    min_score: float = Field(0.05, ge=0, le=1)
    batch_size: int = Field(8, ge=1)


class SearchTrainConfig(Strict):
    """A ``task: search`` training config (``configs/search-cpu.yaml``)."""

    task: Literal["search"]
    epochs: int = Field(20, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    patches: str | None = None
    time_limit_min: float | None = Field(None, gt=0, description="stop after the epoch that passes it")
    model: RefDetConfig = RefDetConfig()
    episodes: EpisodeConfig = EpisodeConfig()
    augment: AugmentConfig = AugmentConfig(shift_scale_rotate=0.0)
    loss: SearchLossConfig = SearchLossConfig()
    optim: SearchOptimConfig = SearchOptimConfig()
    val: SearchValConfig = SearchValConfig()


#: What a search training run produced: the same record as the routed model's.
SearchTrainResult = TrainResult


def _batch(src: EpisodeSource, rng: np.random.Generator, cfg: SearchTrainConfig, aug: Any, n: int) -> list[Episode]:
    k = int(rng.integers(cfg.episodes.min_examples, max(cfg.episodes.examples, cfg.episodes.min_examples) + 1))
    return [draw_episode(src, rng, cfg.episodes, cfg.model.template_size, k, aug) for _ in range(n)]


def batch_losses(model: RefDet, eps: list[Episode], cfg: SearchLossConfig, dev: torch.device
                 ) -> dict[str, torch.Tensor]:
    """The losses of a batch of episodes.

    Detection (:func:`search_loss`) + ``contrast`` x :func:`kind_contrast` between the
    fused templates and every object of the crops.
    """
    out = model.forward_train(torch.stack([e.search for e in eps]).to(dev),
                              torch.stack([e.templates for e in eps]).to(dev))
    boxes = [e.boxes for e in eps]
    losses = search_loss(out.logits, out.dist, boxes, cfg, out.sim)
    objects = object_embeddings(out.search_emb, [torch.cat([e.boxes, e.others]) for e in eps], cfg.radius)
    object_cls = torch.cat([torch.cat([torch.full((len(e.boxes),), e.cls), e.other_cls]) for e in eps])
    template_cls = torch.tensor([e.cls for e in eps]).repeat_interleave(out.templates.shape[1])
    contrast = kind_contrast(torch.cat([out.templates.flatten(0, 1), objects]),
                             torch.cat([template_cls, object_cls]), cfg.temperature)
    losses["loss"] = losses["loss"] + cfg.contrast * contrast
    losses["contrast"] = contrast
    return losses


def val_episodes(src: EpisodeSource, cfg: SearchTrainConfig) -> list[Episode]:
    """The fixed validation episodes: ``examples`` templates each, no augmentation."""
    rng = np.random.default_rng(10_000 + cfg.seed)
    return [draw_episode(src, rng, cfg.episodes, cfg.model.template_size, cfg.episodes.examples)
            for _ in range(cfg.episodes.val_episodes)]


@torch.no_grad()
def validate(model: RefDet, episodes: list[Episode], device: torch.device, min_score: float = 0.05,
             batch: int = 8) -> dict[str, float]:
    """Box AP50 of the model over episodes, and its similarity threshold.

    ``ap50``: detections from ``min_score`` pooled over all episodes (the other kinds'
    boxes count as false positives). The threshold on the cosine of a
    box's kind embedding with the examples' prototype that maximises F1 of the detections
    at the search's default ``--min-score`` (:func:`calibrate_similarity`; -1 when no
    threshold helps), which `geoseg search --min-similarity auto` applies, is
    ``min_similarity``; ``f1`` that F1, ``f1_ungated`` the F1 without it.
    """
    model.eval()
    scores: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    n_truth = 0
    for i in range(0, len(episodes), batch):
        part = episodes[i:i + batch]
        obj, dist, sim = model(torch.stack([e.search for e in part]).to(device),
                               torch.stack([e.templates for e in part]).to(device))
        for j, truth in enumerate(e.boxes for e in part):
            det = detections(obj[j].cpu(), dist[j].cpu(), sim[j].cpu(), min_score=min(min_score, MIN_SCORE))
            hits.append(match(det.boxes, truth))
            scores.append(det.scores.numpy())
            sims.append(det.similarity.numpy())
            n_truth += len(truth)
    if not scores:
        return {"ap50": 0.0, "min_similarity": -1.0, "f1": 0.0, "f1_ungated": 0.0}
    sc, hit, cos = np.concatenate(scores), np.concatenate(hits), np.concatenate(sims)
    above = sc >= min_score
    out = {"ap50": average_precision(sc[above], hit[above], n_truth)}
    at = sc >= MIN_SCORE
    threshold, f1 = calibrate_similarity(cos[at], hit[at], n_truth)
    out["min_similarity"] = -1.0 if threshold is None else threshold
    out["f1"] = f1
    out["f1_ungated"] = 2 * float(hit[at].sum()) / max(int(at.sum()) + n_truth, 1)
    return out


def _payload(cfg: SearchTrainConfig, stats: BandStats, classes: list[str], model: RefDet, opt: Any,
             epoch: int, best: dict[str, Any], history: list[dict[str, float]]) -> dict[str, Any]:
    return {"config": cfg.model_dump(mode="json"), "stats": stats.to_dict(), "classes": classes,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "best": best,
            "history": history, "calibration": {"min_similarity": best.get("min_similarity"),
                                                  "min_score": MIN_SCORE}}


def _write_metrics(run: Path, history: list[dict[str, float]]) -> None:
    keys = list(history[0]) if history else ["epoch"]
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    write_text(run / "metrics.csv", buf.getvalue())
    try:
        from geoseg.train.curves import plot_curves

        plot_curves(history, run / "curves.png")
    except Exception as err:  # noqa: BLE001 - curves are a convenience, never fatal
        log.warning("curves.png not drawn: %s", err)


#: Keys that --resume takes from the command line, or that training fills in from the chips: not said to be ignored.
SEARCH_OWN = frozenset({"epochs", "device", "patches", "model.bands"})


def train_search(cfg: SearchTrainConfig, patches: str | Path, out: str | Path, *, epochs: int | None = None,
                 resume: bool = False, overwrite: bool = False, device: str | None = None,
                 seed: int | None = None, progress: bool | None = None) -> SearchTrainResult:
    """Train a reference detector on the chips of ``patches`` into run directory ``out``.

    Raises:
        OutputExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite``.
        InputRasterError: ``patches`` is no tile directory, or holds no instance.
    """
    from tqdm.auto import tqdm

    updates = {k: v for k, v in (("seed", seed), ("epochs", epochs)) if v is not None}
    cfg = validate_config(type(cfg), {**cfg.model_dump(mode="json"), **updates}, "options")
    run = Path(out)
    last = run / "checkpoints" / "last.pt"
    if last.exists() and not resume and not overwrite:
        raise OutputExistsError(f"{run} holds a run; pass --resume to continue it or --overwrite to replace it")
    check_writable(run, "--out", directory=True)
    ck = load_checkpoint(last) if resume and last.exists() else None
    if ck is not None:  # the run's own config, as geoseg train resumes (a model edited since would not load)
        saved = validate_config(type(cfg), ck["config"], str(last))
        warn_ignored(cfg.model_dump(mode="json"), saved.model_dump(mode="json"), run, SEARCH_OWN)
        cfg = saved.model_copy(update={"epochs": cfg.epochs, "device": cfg.device})
    stats = load_stats(patches)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"bands": stats.bands})})
    dev = resolve_device(device or cfg.device)
    train_src = EpisodeSource(patches, "train", stats)
    val_src = EpisodeSource(patches, "val", stats)
    if not val_src.instances:
        log.warning("%s has no val instance: validating on fixed train episodes", patches)
        val_src = train_src
    torch.manual_seed(cfg.seed)
    model = RefDet(cfg.model).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"metric": "ap50", "value": -1.0, "epoch": 0}
    start = 1
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, best, history = int(ck["epoch"]) + 1, dict(ck["best"]), list(ck["history"])
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_text(run / "config.yaml", dump_yaml(cfg))
    photometric = cfg.augment.model_copy(update={"d4": 0.0, "shift_scale_rotate": 0.0})
    aug = build_augment(photometric, stats.bands)
    val = val_episodes(val_src, cfg)
    steps = cfg.episodes.steps_per_epoch
    total, warm = cfg.epochs * steps, int(cfg.optim.warmup_epochs * steps)
    t0 = time.perf_counter()
    classes = train_src.classes
    for epoch in range(start, cfg.epochs + 1):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        aug.reseed(int(rng.integers(2**31)))
        te = time.perf_counter()
        sums = {"loss": 0.0, "focal": 0.0, "giou": 0.0, "similarity": 0.0, "contrast": 0.0}
        bar = tqdm(range(steps), desc=f"epoch {epoch}", disable=not progress, leave=False)
        for step in bar:
            lr = cfg.optim.lr * lr_lambda((epoch - 1) * steps + step, total, warm, cfg.optim.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            losses = batch_losses(model, _batch(train_src, rng, cfg, aug, cfg.episodes.batch_size), cfg.loss, dev)
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(losses["loss"])
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            for key in sums:
                sums[key] += float(losses[key].detach()) / steps
        row: dict[str, float] = {"epoch": epoch, **sums, "lr": lr, "seconds": time.perf_counter() - te}
        over = cfg.time_limit_min is not None and time.perf_counter() - t0 > 60 * cfg.time_limit_min
        if epoch % cfg.val.every == 0 or epoch == cfg.epochs or over:
            row.update(validate(model, val, dev, cfg.val.min_score, cfg.val.batch_size))
            if row["ap50"] > best["value"]:
                best = {"metric": "ap50", "value": row["ap50"], "epoch": epoch,
                        "min_similarity": row["min_similarity"]}
                save_checkpoint(run / "checkpoints" / "best.pt",
                                _payload(cfg, stats, classes, model, opt, epoch, best, history + [row]))
        history.append(row)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
        save_checkpoint(last, _payload(cfg, stats, classes, model, opt, epoch, best, history))
        _write_metrics(run, history)
        if over:
            log.warning("time limit of %.1f min reached after epoch %d", cfg.time_limit_min, epoch)
            break
    return SearchTrainResult(run_dir=run, epochs=int(history[-1]["epoch"]) if history else 0,
                             best=best, history=history)
