"""Run Dask tasks on the scheduler the user chose, with a progress bar.

Every stage that fans out (tile, predict) builds a list of :func:`dask.delayed` tasks and
hands them to :func:`compute`. ``scheduler`` is one of Dask's local schedulers
(``threads``, ``processes``, ``sync``), the address of a running
``dask.distributed`` scheduler (``tcp://HOST:8786``), or a ``distributed.Client``
that the caller already holds (``geoseg run`` shares one client between stages).

Every task is counted and timed for Prometheus (:mod:`geoseg.metrics`) and, when tracing is
on, becomes an OpenTelemetry span under its scene's (:mod:`geoseg.tracing`).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import dask
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback

from geoseg.errors import ConfigError, SchedulerError

LOCAL_SCHEDULERS = ("threads", "processes", "sync")
#: Seconds to wait for a distributed scheduler to accept a connection.
CONNECT_TIMEOUT_S = 5.0
#: Seconds before a progress bar shows up (short runs stay quiet, as dask's ProgressBar).
PROGRESS_DELAY_S = 1.0
T = TypeVar("T")


def check_scheduler(scheduler: Any, *, connect: bool = True) -> None:
    """Validate a scheduler name or address early, before any work.

    With ``connect``, a ``tcp://`` or ``tls://`` address must accept a connection within
    :data:`CONNECT_TIMEOUT_S` (a scheduler nobody listens on fails now, not after
    Dask's 30 s connect timeout and in the middle of a run).

    Raises:
        ConfigError: neither a local scheduler name, a tcp/tls address, nor a Client.
        SchedulerError: nothing listens at the address.
    """
    if not isinstance(scheduler, str):
        return
    if scheduler in LOCAL_SCHEDULERS or scheduler.startswith("inproc://"):
        return
    if scheduler.startswith(("tcp://", "tls://")):
        if connect:
            _probe(scheduler)
        return
    raise ConfigError(
        f"unknown scheduler '{scheduler}'; use one of {', '.join(LOCAL_SCHEDULERS)} "
        "or the address of a dask.distributed scheduler such as tcp://HOST:8786"
    )


def _probe(address: str) -> None:
    """Open and close a TCP connection to a scheduler address."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port or 8786
    except ValueError as err:  # a port that is not a number
        raise ConfigError(f"bad scheduler address '{address}' ({err}); use tcp://HOST:PORT") from None
    if not host:
        raise ConfigError(f"bad scheduler address '{address}'; use tcp://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__.replace("Error", " error").lower()
        raise SchedulerError(
            f"cannot reach the Dask scheduler at {address} ({reason}); start one "
            f"(`dask scheduler`, then `dask worker {address}`) or check the address"
        ) from None


class _KeysCallback(TqdmCallback):  # type: ignore[misc]  # tqdm.dask is untyped
    """tqdm's Dask callback, counting the caller's tasks rather than every graph node.

    ``TqdmCallback`` totals and advances on each node of the graph (a tile task may be
    several nodes); here the bar counts only the top-level keys, one per task handed in.
    """

    def __init__(self, keys: set[Any], spans: Any = None, **tqdm_kwargs: Any) -> None:
        from geoseg.metrics import Timer

        super().__init__(**tqdm_kwargs)
        self._keys = keys
        self._probe = next(iter(keys))
        self.pbar: Any = None
        # the caller's tasks, for geoseg.metrics and (when tracing) geoseg.tracing's spans
        self.timer = Timer(on_task=None if spans is None else spans.task)

    def _ours(self, dsk: Any) -> bool:
        """Whether a graph is the caller's (a task may run a nested compute of its own)."""
        return self._probe in dsk

    def _start_state(self, dsk: Any, state: Any) -> None:
        if self.pbar is None and self._ours(dsk):
            self.pbar = self.tqdm_class(total=len(self._keys))

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self.pbar is not None and self._ours(dsk):
            self.pbar.close()

    def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
        if key in self._keys:
            self.timer.start(key)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._keys:
            self.timer.stop(key, worker_id)
            if self.pbar is not None:
                self.pbar.update(1)


def _bar_kwargs(desc: str, progress: bool | None, unit: str = "task") -> dict[str, Any]:
    disable = (not sys.stderr.isatty()) if progress is None else (not progress)
    return {"desc": desc, "unit": unit, "file": sys.stderr, "disable": disable,
            "delay": PROGRESS_DELAY_S, "dynamic_ncols": True}


def progress_bar(items: Sequence[T], desc: str, progress: bool | None, unit: str = "task") -> Iterator[T]:
    """``items`` with the progress bar :func:`compute` shows (stderr, after a second, on a TTY by default)."""
    return iter(tqdm(items, total=len(items), **_bar_kwargs(desc, progress, unit)))


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
    from geoseg import metrics, tracing

    check_scheduler(scheduler)
    if not tasks:
        return []
    spans = tracing.task_spans(desc, tasks, scheduler)  # a no-op unless tracing is on
    try:
        # warnings.catch_warnings is not thread-safe, and libraries enter it in the tasks
        # (rasterio's rasterize sets "ignore" for every warning inside): two threads that
        # enter and leave it interleaved leave the process's filters at the inner state, so
        # every later warning of the run was lost. The filters are put back as they were.
        with warnings.catch_warnings():
            results = _compute(tasks, scheduler, _bar_kwargs(desc, progress), retries, spans)
    except Exception as err:
        metrics.error(type(err).__name__)
        spans.end(err)
        raise
    spans.end()
    return results


def _compute(tasks: Sequence[Any], scheduler: Any, bar_kwargs: dict[str, Any], retries: int,
             spans: Any) -> list[Any]:
    from dask.utils import key_split

    from geoseg import metrics

    keys = {t.key for t in tasks}
    if isinstance(scheduler, str) and scheduler in LOCAL_SCHEDULERS:
        with _KeysCallback(keys, spans, tqdm_class=tqdm, **bar_kwargs):
            return list(dask.compute(*tasks, scheduler=scheduler))
    from distributed import Client, as_completed, get_task_stream

    own = isinstance(scheduler, str)
    client = Client(scheduler, set_as_default=False) if own else scheduler
    try:
        with get_task_stream(client) as stream:  # the workers' compute times
            futures = client.compute(list(tasks), retries=retries)
            with client.as_current(), tqdm(total=len(futures), **bar_kwargs) as bar:
                for fut in as_completed(futures):  # erred ones too: gather raises below
                    metrics.task_done(key_split(fut.key))
                    bar.update(1)
        _stream_times(stream.data, keys, spans)  # the stream is gathered on leaving its block
        return list(client.gather(futures))
    finally:
        if own:
            client.close()


def _stream_times(records: Sequence[dict[str, Any]], keys: set[Any], spans: Any) -> None:
    """Task times from a distributed scheduler's task stream: Prometheus and spans.

    A task's span is its worker's compute (start, stop: the worker's clock, seconds since
    the epoch), as the client receives it; a retried task has one span per try.
    """
    from dask.utils import key_split

    from geoseg import metrics

    for rec in records:
        if rec.get("key") in keys:
            for ss in rec.get("startstops", ()):
                if ss.get("action") == "compute":
                    metrics.task_time(key_split(rec["key"]), float(ss["stop"] - ss["start"]))
                    spans.task(rec["key"], int(ss["start"] * 1e9), int(ss["stop"] * 1e9), rec.get("worker"))
