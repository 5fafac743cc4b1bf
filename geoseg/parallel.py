"""Run Dask tasks on the scheduler the user chose, with a progress bar.

Every stage that fans out (tile, predict) builds a list of :func:`dask.delayed` tasks and
hands them to :func:`compute`. ``scheduler`` is one of Dask's local schedulers
(``threads``, ``processes``, ``sync``), the address of a running
``dask.distributed`` scheduler (``tcp://HOST:8786``), or a ``distributed.Client``
that the caller already holds (``geoseg run`` shares one client between stages).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import dask
from dask.callbacks import Callback
from tqdm.auto import tqdm

from geoseg.errors import ConfigError

LOCAL_SCHEDULERS = ("threads", "processes", "sync")
#: Seconds before a progress bar shows up (short runs stay quiet, as dask's ProgressBar).
PROGRESS_DELAY_S = 1.0


def check_scheduler(scheduler: Any) -> None:
    """Validate a scheduler name or address early, before any work.

    Raises:
        ConfigError: neither a local scheduler name, a tcp/tls address, nor a Client.
    """
    if not isinstance(scheduler, str):
        return
    if scheduler in LOCAL_SCHEDULERS or scheduler.startswith(("tcp://", "tls://", "inproc://")):
        return
    raise ConfigError(
        f"unknown scheduler '{scheduler}'; use one of {', '.join(LOCAL_SCHEDULERS)} "
        "or the address of a dask.distributed scheduler such as tcp://HOST:8786"
    )


class _TqdmCallback(Callback):  # type: ignore[misc]
    """Advance a tqdm bar each time one of the top-level task keys finishes."""

    def __init__(self, keys: set[Any], bar: tqdm) -> None:
        super().__init__()
        self._keys = keys
        self._bar = bar

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._keys:
            self._bar.update(1)


def _progress_bar(total: int, desc: str, progress: bool | None) -> tqdm:
    disable = (not sys.stderr.isatty()) if progress is None else (not progress)
    return tqdm(total=total, desc=desc, unit="task", file=sys.stderr, disable=disable,
                delay=PROGRESS_DELAY_S, dynamic_ncols=True)


def compute(
    tasks: Sequence[Any],
    *,
    scheduler: Any = "threads",
    desc: str = "geoseg",
    progress: bool | None = None,
    retries: int = 1,
) -> list[Any]:
    """Compute delayed tasks and return their results in order.

    Args:
        tasks: ``dask.delayed`` objects.
        scheduler: local scheduler name, ``tcp://`` address, or ``distributed.Client``.
        desc: label of the progress bar.
        progress: force the bar on/off; None shows it on a TTY only.
        retries: retries per task on a distributed cluster (a dead worker's tasks rerun).

    Returns:
        The task results, in the order of ``tasks``.
    """
    check_scheduler(scheduler)
    if not tasks:
        return []
    with _progress_bar(len(tasks), desc, progress) as bar:
        if isinstance(scheduler, str) and scheduler in LOCAL_SCHEDULERS:
            keys = {t.key for t in tasks}
            with _TqdmCallback(keys, bar):
                return list(dask.compute(*tasks, scheduler=scheduler))
        from distributed import Client, as_completed

        own = isinstance(scheduler, str)
        client = Client(scheduler, set_as_default=False) if own else scheduler
        try:
            futures = client.compute(list(tasks), retries=retries)
            with client.as_current():
                for _ in as_completed(futures):
                    bar.update(1)
            return list(client.gather(futures))
        finally:
            if own:
                client.close()
