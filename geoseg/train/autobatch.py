"""``data.batch_size: auto``: the largest training batch that fits, chosen once at the start.

The batch is the largest power of two up to :data:`CAP` (64), and up to the samples of
an epoch, for which a training step fits:

- on CUDA it is probed: a throwaway trainer runs whole training steps (forward, loss,
  backward, optimiser step) on batches of the train chips (repeated when there are fewer),
  from the cap down, halving on ``torch.cuda.OutOfMemoryError``; the first that runs wins;
- on the CPU it is estimated against a memory budget, ``--max-memory`` or else
  :data:`CPU_SHARE` of the memory psutil reports available, shared by the training
  processes of the machine: a batch ``b`` needs ``5 x`` the weights (weights, gradients,
  AdamW's two moments, the EMA) ``+ 2 x`` the tensors autograd saves for backward at
  ``b`` (the activations and their gradients), measured with
  :func:`torch.autograd.graph.saved_tensors_hooks` at batches 1 and 2 and extrapolated
  linearly.

With several processes each rank chooses its own and the smallest wins; the global batch
(``data.batch_size``) is it times the number of processes. The choice is printed on
stderr, logged, and saved in the run's ``config.yaml`` and ``last.pt``, so ``--resume``
trains on with it.
"""

from __future__ import annotations

import gc
import logging
import re
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch

from geoseg.errors import ConfigError, GeoSegWarning
from geoseg.train.distributed import SINGLE, Dist

if TYPE_CHECKING:
    from geoseg.train.config import TrainConfig
    from geoseg.train.loop import Trainer

log = logging.getLogger(__name__)

#: The largest batch ``auto`` picks (per process).
CAP = 64
#: Share of the available memory the CPU rule may use when ``--max-memory`` is not given.
CPU_SHARE = 0.5

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str, option: str = "--max-memory") -> int:
    """Bytes of a size such as ``8GB``, ``512MiB`` or ``1e9``.

    Examples:
        >>> parse_size("8GB"), parse_size("1.5 GiB"), parse_size("4096")
        (8000000000, 1610612736, 4096)
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"{option} {text!r}: give a size such as 8GB, 512MiB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def rule_for(device: torch.device) -> Literal["probe", "budget"]:
    """How ``auto`` decides on ``device``: probing for OOM on CUDA, a memory budget elsewhere."""
    return "probe" if device.type == "cuda" else "budget"


def resolve_batch_size(cfg: TrainConfig, make: Callable[[TrainConfig, Dist], Trainer], dist: Dist,
                       max_memory: int | None = None) -> TrainConfig:
    """``cfg`` with ``data.batch_size: auto`` replaced by the chosen global batch.

    Args:
        cfg: the run's config (``data.batch_size == "auto"``).
        make: builds a trainer of a config for a :class:`Dist` (a throwaway one probes).
        dist: this process's place in the run.
        max_memory: the CPU rule's budget in bytes for the whole machine (None: psutil's).

    Raises:
        ConfigError: not even one chip fits.
    """
    probe_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"batch_size": 1})})
    with warnings.catch_warnings():  # the real trainer says it again
        warnings.simplefilter("ignore", GeoSegWarning)
        trainer = make(probe_cfg, SINGLE)  # alone: a rank's OOM must not stall the others
    cap = _pow2_floor(min(CAP, max(1, trainer.samples // dist.world)))
    if rule_for(trainer.device) == "probe":
        per_rank, why = probe(trainer, cap), "the largest training step that ran on the GPU"
    else:
        import psutil

        budget = (max_memory or int(psutil.virtual_memory().available * CPU_SHARE)) // dist.local_world
        per_rank = estimate(trainer, cap, budget)
        why = f"estimated to fit in {budget / 2**30:.2f} GiB per process"
    del trainer
    _free()
    per_rank = dist.min(per_rank)
    batch = per_rank * dist.world
    if dist.main:
        line = (f"data.batch_size auto: {batch}" + (f" ({per_rank} per process)" if dist.active else "")
                + f", {why}; cap {CAP}")
        log.info(line)
        print(f"geoseg train: {line}", file=sys.stderr)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"batch_size": batch})})


def probe(trainer: Trainer, cap: int) -> int:
    """The largest power of two up to ``cap`` whose training step does not raise CUDA OOM."""
    b = cap
    chips = _chips(trainer, cap)
    while True:
        try:
            _train_step(trainer, trainer.collate([chips[i % len(chips)] for i in range(b)]))
            return b
        except torch.cuda.OutOfMemoryError:
            if b == 1:
                raise ConfigError(f"data.batch_size auto: one chip (data.crop {trainer.cfg.data.crop}) "
                                  "does not fit in the GPU's memory; lower data.crop") from None
            log.debug("batch %d: out of memory, trying %d", b, b // 2)
            b //= 2
        finally:
            trainer.optimizer.zero_grad(set_to_none=True)
            _free()


def estimate(trainer: Trainer, cap: int, budget: float) -> int:
    """The largest power of two up to ``cap`` whose estimated memory fits in ``budget`` bytes."""
    chips = _chips(trainer, 2)
    a1, a2 = (_saved_bytes(trainer, trainer.collate([chips[i % len(chips)] for i in range(b)])) for b in (1, 2))
    weights = sum(p.numel() * p.element_size() for p in trainer.net.parameters())

    def need(b: int) -> int:
        return 5 * weights + 2 * (a1 + (b - 1) * max(0, a2 - a1))

    b = cap
    while need(b) > budget:
        if b == 1:
            raise ConfigError(f"data.batch_size auto: one chip (data.crop {trainer.cfg.data.crop}) needs "
                              f"about {need(1) / 2**30:.2f} GiB, more than the {budget / 2**30:.2f} GiB "
                              "budget per process; raise --max-memory or lower data.crop")
        b //= 2
    log.debug("batch %d: about %.2f GiB of %.2f", b, need(b) / 2**30, budget / 2**30)
    return b


def _chips(trainer: Trainer, n: int) -> list[dict[str, Any]]:
    ds = trainer.train_ds
    return [ds[i] for i in range(min(n, len(ds)))]


def _train_step(trainer: Trainer, batch: dict[str, Any]) -> None:
    trainer.net.train()
    with torch.autocast(trainer.device.type, enabled=trainer.amp):
        total, _ = trainer.batch_loss(batch)
    total.backward()
    trainer.optimizer.step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)


def _saved_bytes(trainer: Trainer, batch: dict[str, Any]) -> int:
    """Bytes of the tensors autograd keeps for backward over one training forward and loss."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    trainer.net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _ = trainer.batch_loss(batch)
    del total
    return sum(storages.values())


def _pow2_floor(n: int) -> int:
    """The largest power of two at most ``n`` (n >= 1).

    Examples:
        >>> [_pow2_floor(n) for n in (1, 2, 3, 64, 100)]
        [1, 2, 2, 64, 64]
    """
    return 1 << (n.bit_length() - 1)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
