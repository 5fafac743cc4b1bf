"""Multi-process training: DistributedDataParallel over ``torch.distributed``.

One run, ``W = devices x nodes`` processes (ranks), each with a replica of the model:

- the global batch is ``data.batch_size``; each rank trains on ``batch_size / W`` samples
  of it (:class:`ShardSampler`: every rank draws the epoch's sample from the same
  ``(seed, epoch)`` generator and keeps its share of each global batch), DDP averages the
  gradients, so the optimiser sees the gradient of the whole batch and the learning rate,
  the schedule and the number of steps do not depend on ``W``;
- every family: the routed model, Mask R-CNN, the mean teacher (its unlabelled batches are
  split like the labelled ones). DDP wraps a :class:`Step`, so each training step is one
  DDP forward whatever forward passes it makes (labelled and unlabelled), and after each
  optimiser step rank 0's buffers (batch-norm statistics) are copied to every rank, so the
  weights, the buffers and their EMA (the teacher) are the same on every rank;
- validation, ``metrics.csv``, ``curves.png``, the checkpoints and the log lines are rank
  0's; its epoch row (with the loss terms averaged over the ranks) is broadcast so every
  rank keeps the same history and runs the same hooks;
- ``--resume``: every rank loads rank 0's ``last.pt``; the checkpoint holds each rank's
  RNG state, so a resumed run equals an uninterrupted one (with the same ``W``);
- backends: gloo on CPU, NCCL on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``, batch norm
  synchronised across the ranks).

Launching: ``geoseg train --devices N`` spawns N local processes
(:func:`geoseg.train.ranks.spawn`, method ``spawn``); ``--nodes M
--node-rank R --master-addr HOST --master-port P`` on each of M machines makes
``N x M`` ranks; a process started by ``torchrun`` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` in its environment) is one rank already
and spawns nothing. A rank that fails ends the run: the others are terminated and the
first error raised in the parent; ``init_process_group`` and every collective time out
after ``GEOSEG_DIST_TIMEOUT`` seconds (default 600).
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from geoseg.errors import ConfigError, GeoSegWarning

log = logging.getLogger(__name__)

#: Environment variables of a rank started by torchrun (or by :func:`spawn`).
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size, local rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates, logs and writes."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process (collectives needed)."""
        return self.world > 1

    def device(self, device: torch.device) -> torch.device:
        """``cuda:LOCAL_RANK`` for CUDA; the CPU as it is."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.active else device

    def mean(self, terms: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (the epoch's loss terms)."""
        if not self.active:
            return terms
        every: list[Any] = [None] * self.world
        tdist.all_gather_object(every, terms)
        keys = [k for d in every for k in d]
        return {k: sum(d[k] for d in every if k in d) / sum(k in d for d in every)
                for k in dict.fromkeys(keys)}

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self, *modules: torch.nn.Module | None) -> None:
        """Rank 0's buffers (batch-norm statistics, the router threshold) on every rank.

        One broadcast per dtype (the buffers flattened into one tensor), as DDP does.
        """
        if not self.active:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for m in modules:
            for b in m.buffers() if m is not None else ():
                by_dtype.setdefault(b.dtype, []).append(b)
        for bufs in by_dtype.values():
            flat = torch.cat([b.detach().reshape(-1) for b in bufs])
            tdist.broadcast(flat, src=0)
            offset = 0
            for b in bufs:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active:
            tdist.barrier()

    def min(self, value: int) -> int:
        """The smallest ``value`` of the ranks."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        if tdist.get_backend() == "nccl":
            t = t.cuda(self.local_rank)
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
        return int(t.item())

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (a new tensor, on ``t``'s device)."""
        if not self.active:
            return t
        out = t.detach().clone()
        if tdist.get_backend() == "nccl":
            out = out.cuda(self.local_rank)
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        return out.to(t.device)

    def rng_states(self) -> dict[str, Any]:
        """The checkpoint's ``rng``: this rank's torch and CUDA states, and every rank's."""
        mine = {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        if not self.active:
            return mine
        every: list[Any] = [None] * self.world
        tdist.all_gather_object(every, mine)
        return {**every[0], "ranks": every}

    def restore_rng(self, rng: dict[str, Any]) -> None:
        """Set this rank's RNG state from a checkpoint's ``rng`` (rank 0's when it has no ``ranks``)."""
        ranks = rng.get("ranks") or [rng]
        if len(ranks) != self.world:
            warnings.warn(f"resuming a {len(ranks)}-process run with {self.world} processes: the "
                          "run goes on, but not exactly as it would have", GeoSegWarning, stacklevel=3)
        mine = ranks[self.rank] if len(ranks) == self.world else ranks[0]
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["cuda"])

    def fork_rng(self, seed: int) -> None:
        """Ranks above 0 draw their own random numbers (router exploration); rank 0 keeps the seed's."""
        if self.rank > 0:
            torch.manual_seed(seed * 1_000_003 + self.rank)

    def wrap(self, model: torch.nn.Module, device: torch.device,
             find_unused: bool = True) -> torch.nn.Module | None:
        """DistributedDataParallel over a :class:`Step` of ``model`` (None for one process).

        On CUDA ``model``'s batch norms become SyncBatchNorm (in place, same parameters).
        ``find_unused``: some parameters get no gradient in a step (DDP then looks for them
        after each forward). Buffers are rank 0's at the start and not broadcast at each
        forward: the loop copies rank 0's after each step (:meth:`sync_buffers`).
        """
        if not self.active:
            return None
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":  # SyncBatchNorm runs on GPUs only
            convert: Any = torch.nn.SyncBatchNorm.convert_sync_batchnorm  # untyped in torch
            model = convert(model)
        return DistributedDataParallel(Step(model), device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=find_unused, forward_sync_buffers=False)


#: One process, no collectives.
SINGLE = Dist()


class Step(torch.nn.Module):
    """What DDP wraps: ``net``, and a forward that runs a training step's forward passes.

    ``Step(net)(fn)`` returns ``fn()``: the labelled and unlabelled passes of the mean teacher
    (or Mask R-CNN's one) are one DDP forward, so DDP prepares one backward per step.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, fn: Callable[[], Any]) -> Any:
        return fn()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel and its :class:`Step` (or ``model``)."""
    from torch.nn.parallel import DistributedDataParallel

    inner = model.module if isinstance(model, DistributedDataParallel) else model
    return inner.net if isinstance(inner, Step) else inner


class ShardSampler(torch.utils.data.Sampler[int]):
    """This rank's share of every global batch that ``base`` draws.

    Global batch ``k`` is ``base``'s indices ``[k B, (k + 1) B)``; rank ``r`` of ``W`` takes
    ``[k B + r B/W, k B + (r + 1) B/W)`` of it. With ``W = 1`` it is ``base`` itself.

    Examples:
        >>> [list(ShardSampler(range(8), 4, r, 2)) for r in (0, 1)]
        [[0, 1, 4, 5], [2, 3, 6, 7]]
    """

    def __init__(self, base: Sequence[int] | torch.utils.data.Sampler[int], batch: int, rank: int,
                 world: int) -> None:
        self.base, self.batch, self.rank, self.world = base, batch, rank, world
        self.share = batch // world

    def __iter__(self) -> Iterator[int]:
        idx = list(self.base)  # drawn on the first next(), as RandomSampler draws
        for start in range(0, len(idx) - self.batch + 1, self.batch):
            yield from idx[start + self.rank * self.share:start + (self.rank + 1) * self.share]

    def __len__(self) -> int:
        return (len(self.base) // self.batch) * self.share  # type: ignore[arg-type]


def from_env() -> Dist | None:
    """This process's :class:`Dist` when torchrun (or :func:`spawn`) started it with ``WORLD_SIZE > 1``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} not: launch with torchrun, "
                          "or unset WORLD_SIZE and use --devices")
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    return Dist(int(os.environ["RANK"]), world, local, int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def check_supported(cfg: Any, world: int) -> None:
    """Refuse a global batch (labelled, or unlabelled with ``semi``) that the processes cannot share."""
    if world <= 1:
        return
    b = cfg.data.batch_size
    if isinstance(b, int) and b % world:
        raise ConfigError(f"data.batch_size {b} is the global batch and must be a multiple of the "
                          f"{world} processes (--devices x --nodes); e.g. {max(world, b // world * world)}")
    if isinstance(b, int) and cfg.semi.enabled:
        check_unlabelled_batch(max(1, round(cfg.semi.ratio * b)), world)


def check_unlabelled_batch(batch: int, world: int) -> None:
    """The unlabelled batch (``semi.ratio`` x the global batch) is shared by the processes too."""
    if batch % world:
        raise ConfigError(f"semi.ratio gives an unlabelled batch of {batch}, which must be a multiple of "
                          f"the {world} processes (--devices x --nodes); change semi.ratio or data.batch_size")


@dataclass(frozen=True)
class Nodes:
    """The machines of a multi-node run, torchrun's names (None: ``$NODE_RANK``, ``$MASTER_ADDR``...)."""

    count: int = 1
    rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None


@dataclass(frozen=True)
class Launch:
    """How to start the ranks of a run from this machine (``--devices``, ``--nodes``, ...)."""

    devices: int
    nodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0

    @property
    def world(self) -> int:
        """Ranks in all."""
        return self.devices * self.nodes


def plan(devices: int, device: str, machines: Nodes | None = None) -> Launch:
    """Check the launch options (torchrun's environment variables as defaults) and pick a port.

    Raises:
        ConfigError: too few GPUs for ``--devices`` with CUDA, ``--nodes`` without a master
            address, a node rank out of range, a master port in use.
    """
    m = machines or Nodes()
    nodes = m.count
    node_rank = int(os.environ.get("NODE_RANK", 0)) if m.rank is None else m.rank
    master_addr = m.master_addr or os.environ.get("MASTER_ADDR")
    port = m.master_port or (int(os.environ["MASTER_PORT"]) if "MASTER_PORT" in os.environ else None)
    if devices < 1 or nodes < 1:
        raise ConfigError(f"--devices {devices} --nodes {nodes}: both must be at least 1")
    if not 0 <= node_rank < nodes:
        raise ConfigError(f"--node-rank {node_rank} must be in 0..{nodes - 1} (--nodes {nodes})")
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and devices * nodes > 1 and torch.cuda.device_count() < devices:
        raise ConfigError(f"--devices {devices} with CUDA needs {devices} GPUs, torch sees "
                          f"{torch.cuda.device_count()}; lower --devices or use --device cpu")
    if nodes > 1 and (not master_addr or not port):
        raise ConfigError(f"--nodes {nodes} needs --master-addr HOST and --master-port PORT (the "
                          "node of --node-rank 0), or MASTER_ADDR/MASTER_PORT in the environment")
    if nodes == 1 and devices > 1:
        master_addr = master_addr or "127.0.0.1"
        port = port or free_port()
    if port and node_rank == 0 and devices * nodes > 1 and not _can_bind(port):
        raise ConfigError(f"--master-port {port} is in use on this machine: pick another, or leave "
                          "it out to use a free one (single node)")
    return Launch(devices, nodes, node_rank, master_addr or "127.0.0.1", port or 0)


def start(cfg: Any, relaunch: Callable[..., Any], kwargs: dict[str, Any], devices: int | None,
          nodes: Nodes | None) -> Dist | None:
    """This process's :class:`Dist`, or None once the ranks it spawned (``relaunch(**kwargs)``) ended.

    A process torchrun started is its rank; another one with ``cfg.devices x nodes > 1``
    spawns the ranks of this machine and waits for them (:func:`spawn`).
    """
    rank = from_env()
    if rank is None:
        launch = plan(cfg.devices, cfg.device, nodes)
        check_supported(cfg, launch.world)
        if launch.world == 1:
            return SINGLE
        from geoseg.train.ranks import spawn

        spawn(relaunch, kwargs, launch)
        return None
    if devices not in (None, rank.local_world):
        raise ConfigError(f"--devices {devices}: the launcher started {rank.local_world} processes "
                          "per node (LOCAL_WORLD_SIZE); drop --devices under torchrun")
    check_supported(cfg, rank.world)
    return rank


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _can_bind(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def timeout() -> datetime.timedelta:
    """``GEOSEG_DIST_TIMEOUT`` seconds (default 600): how long a rank waits for the others."""
    raw = os.environ.get("GEOSEG_DIST_TIMEOUT", "600")
    try:
        return datetime.timedelta(seconds=float(raw))
    except ValueError:
        raise ConfigError(f"GEOSEG_DIST_TIMEOUT={raw!r} must be a number of seconds") from None


@contextmanager
def process_group(dist: Dist, device: torch.device) -> Iterator[Dist]:
    """Join the run's process group (gloo on CPU, NCCL on CUDA) for the ``with`` block."""
    if not dist.active:
        yield dist
        return
    if device.type == "cuda":
        torch.cuda.set_device(dist.local_rank)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                             rank=dist.rank, world_size=dist.world, timeout=timeout())
    try:
        yield dist
        # every rank done before any tears down: a rank that closes its connections while a
        # peer still uses them can abort in gloo's connection threads
        tdist.barrier()
    finally:
        gc.collect()  # DDP's reducer holds the group: released before it is destroyed
        tdist.destroy_process_group()
