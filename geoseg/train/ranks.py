"""Spawning the ranks of a run on this machine, and their epoch rows on the parent's ``--metrics-port``.

``geoseg train --devices N`` starts N processes (:func:`spawn`, method ``spawn``); the
parent waits for them. ``--metrics-port`` is served by the parent (the CLI opened it before
the command ran), so the epoch rows of the ranks must reach it: local rank 0 puts each row
in a queue (:func:`report`) and the parent, while it waits, records them
(:func:`geoseg.metrics.epoch_done`) in the registry it serves. Under torchrun there is no
parent of ours: each process is a rank, the one with ``LOCAL_RANK`` 0 serves the port
(:func:`geoseg.metrics.serving`) and records the rows itself.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from geoseg import metrics
from geoseg.errors import GeoSegError, GeoSegWarning
from geoseg.train.distributed import Launch

#: Where a spawned local rank 0 sends its epoch rows (the parent's queue); None elsewhere.
_sink: Callable[[dict[str, float]], None] | None = None

#: How often (seconds) the parent looks for rows while the ranks run.
POLL = 0.5


def report(row: Mapping[str, float]) -> None:
    """Record an epoch's row for ``--metrics-port``: here, and in the parent that spawned this rank."""
    metrics.epoch_done(row)
    if _sink is not None:
        _sink(dict(row))


def _drain(rows: Any) -> None:
    while not rows.empty():
        metrics.epoch_done(rows.get())


def _picklable(formatter: logging.Formatter | None) -> logging.Formatter | None:
    """``formatter`` if it can go to a spawned process (a test runner's may hold a stream), else the default."""
    import pickle

    try:
        pickle.dumps(formatter)
    except Exception:
        return None
    return formatter


def spawn(fn: Callable[..., Any], kwargs: dict[str, Any], launch: Launch) -> None:
    """Run ``fn(**kwargs)`` in ``launch.devices`` local processes, one rank each.

    While they run, the epoch rows of local rank 0 are recorded here (:func:`report`).

    Raises:
        The first exception a rank raised (the others are terminated), or
        :class:`GeoSegError` when a rank died without one (killed, out of memory).
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException, start_processes

    ctx = mp.get_context("spawn")
    errors, rows = ctx.SimpleQueue(), ctx.SimpleQueue()
    root = logging.getLogger()
    logs = (root.level, [_picklable(h.formatter) for h in root.handlers])
    try:
        launcher: Any = start_processes  # untyped in torch
        procs = launcher(_rank_main, args=(fn, kwargs, launch, errors, logs, rows), nprocs=launch.devices,
                         join=False, start_method="spawn")
        while not procs.join(timeout=POLL):
            _drain(rows)
        _drain(rows)
    except ProcessException as err:
        _drain(rows)
        try:
            first = errors.get() if not errors.empty() else None
        except Exception:  # an exception that does not unpickle
            first = None
        if isinstance(first, BaseException):
            raise first from None
        raise GeoSegError(f"training rank {launch.node_rank * launch.devices + err.error_index} "
                          f"failed: {first or str(err).strip().splitlines()[-1]}") from None


def _rank_main(local_rank: int, fn: Callable[..., Any], kwargs: dict[str, Any], launch: Launch,
               errors: Any, logs: tuple[int, list[logging.Formatter | None]], rows: Any) -> None:
    """A spawned rank: torchrun's environment, the parent's logging, then ``fn``."""
    global _sink
    import faulthandler

    faulthandler.enable()  # a rank killed by a signal (SIGABRT, SIGSEGV) leaves its Python stack on stderr
    rank = launch.node_rank * launch.devices + local_rank
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(launch.world), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(launch.devices), MASTER_ADDR=launch.master_addr,
                      MASTER_PORT=str(launch.master_port))
    if local_rank == 0:
        _sink = rows.put
    level, formatters = logs
    root = logging.getLogger()
    root.setLevel(level if rank == 0 else max(level, logging.WARNING))
    for f in formatters:
        h = logging.StreamHandler()
        h.setFormatter(f)
        root.addHandler(h)
    logging.captureWarnings(True)
    if rank > 0:  # rank 0 says it
        warnings.simplefilter("ignore", GeoSegWarning)
    try:
        fn(**kwargs)
    except BaseException as err:
        try:
            errors.put(err)
        except Exception:  # not picklable: its line
            errors.put(f"{type(err).__name__}: {err}")
        raise
