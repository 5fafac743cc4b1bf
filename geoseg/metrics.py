"""Prometheus metrics of a batch job: ``geoseg --metrics-port 9100 predict ...``.

While a command runs with ``--metrics-port`` (or ``GEOSEG_METRICS_PORT``), an HTTP server
on that port serves, at ``/metrics``, in Prometheus' text format:

- ``geoseg_tasks_total{command, phase}``: Dask tasks finished, by phase (``tile_block``,
  ``pv_block``, ``ff_block``, ``instances_block``, ...);
- ``geoseg_task_seconds{command, phase}``: a histogram of the time of each task;
- ``geoseg_errors_total{command, kind}``: errors that ended a task or the command, by
  exception class;
- ``geoseg_epoch``, ``geoseg_train_value{name}``: the last epoch of `geoseg train` and its
  row of ``metrics.csv`` (losses, lr, AP, F1, seconds, ...);
- ``geoseg_summary{command, name}``: the numbers of a command's summary when it ends
  (chips, blocks, FF cells and their share, polygons, model seconds);
- ``geoseg_rss_bytes``, ``geoseg_read_bytes``: resident memory and bytes read of this
  process plus the processes it started and that are alive (the ranks that
  ``train --devices N`` spawns; the sum counts pages two processes share twice);
- ``geoseg_gpu_memory_bytes``: CUDA memory allocated by torch in this process.

On the local schedulers every task runs in this process, so the numbers are the job's.
On a Dask cluster (``--scheduler tcp://...``) the task counts and times come from the
scheduler's task stream (the workers' compute times, gathered by the client, which serves
them); memory and read bytes are the client's own: watch the workers on the Dask dashboard.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from geoseg.errors import ConfigError

#: The registry of geoseg's metrics (not prometheus_client's global one).
REGISTRY = CollectorRegistry()
TASKS = Counter("geoseg_tasks", "Dask tasks finished", ["command", "phase"], registry=REGISTRY)
TASK_SECONDS = Histogram("geoseg_task_seconds", "Seconds of each Dask task", ["command", "phase"],
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                         registry=REGISTRY)
ERRORS = Counter("geoseg_errors", "Errors by kind", ["command", "kind"], registry=REGISTRY)
EPOCH = Gauge("geoseg_epoch", "Last finished training epoch", registry=REGISTRY)
TRAIN = Gauge("geoseg_train_value", "Last metrics.csv row of geoseg train", ["name"], registry=REGISTRY)
SUMMARY = Gauge("geoseg_summary", "Numbers of a command's summary", ["command", "name"], registry=REGISTRY)
RSS = Gauge("geoseg_rss_bytes", "Resident memory of this process and its children", registry=REGISTRY)
READ = Gauge("geoseg_read_bytes", "Bytes read by this process and its children", registry=REGISTRY)
GPU = Gauge("geoseg_gpu_memory_bytes", "CUDA memory allocated by torch in this process", registry=REGISTRY)

#: The command whose numbers are being recorded (a label of most metrics).
_command = "geoseg"


def _family() -> list[Any]:
    """This process and the processes it started, alive now (``train --devices N``'s ranks...)."""
    import psutil

    me = psutil.Process()
    try:
        return [me, *me.children(recursive=True)]
    except psutil.Error:
        return [me]


def _rss() -> float:
    import psutil

    total = 0.0
    for proc in _family():
        with contextlib.suppress(psutil.Error):  # a child that ended meanwhile
            total += proc.memory_info().rss
    return total


def _read_bytes() -> float:
    import psutil

    total, seen = 0.0, False
    for proc in _family():
        io = getattr(proc, "io_counters", None)
        if io is None:
            continue
        with contextlib.suppress(psutil.Error):
            total += io().read_chars
            seen = True
    return total if seen else float("nan")


def _gpu() -> float:
    import sys

    torch = sys.modules.get("torch")  # never import torch for this
    if torch is None or not torch.cuda.is_available():
        return 0.0
    return float(torch.cuda.memory_allocated())


RSS.set_function(_rss)
READ.set_function(_read_bytes)
GPU.set_function(_gpu)


def port_from(value: int | None) -> int | None:
    """The port asked for by ``--metrics-port`` or else ``GEOSEG_METRICS_PORT`` (None: off).

    Raises:
        ConfigError: the variable is not a port number.
    """
    if value is not None:
        return value
    env = os.environ.get("GEOSEG_METRICS_PORT")
    if not env:
        return None
    try:
        port = int(env)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"GEOSEG_METRICS_PORT={env!r} is not a port number (0-65535)")
    return port


@contextlib.contextmanager
def serving(port: int | None, command: str, addr: str = "0.0.0.0") -> Iterator[int | None]:  # noqa: S104
    """Serve :data:`REGISTRY` on ``port`` while inside (nothing when ``port`` is None).

    A process torchrun started with ``LOCAL_RANK`` > 0 serves nothing: its node's local
    rank 0 serves the port (every rank records the same epoch rows, see
    :mod:`geoseg.train.ranks`).

    Yields:
        The port served (the one chosen by the system when ``port`` is 0), or None.

    Raises:
        ConfigError: the port cannot be bound (in use, privileged).
    """
    global _command
    _command = command
    local_rank = os.environ.get("LOCAL_RANK", "0")
    if port is None or (local_rank.isdigit() and int(local_rank) > 0):
        yield None
        return
    try:
        server, thread = start_http_server(port, addr=addr, registry=REGISTRY)
    except OSError as err:
        raise ConfigError(f"--metrics-port {port}: cannot listen there ({err.strerror or err}); "
                          "choose a free port or 0 for any") from None
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def task_done(phase: str, seconds: float | None = None) -> None:
    """Count one finished task of ``phase`` (and record its time when known)."""
    TASKS.labels(_command, phase).inc()
    if seconds is not None:
        task_time(phase, seconds)


def task_time(phase: str, seconds: float) -> None:
    """Record the time of one task of ``phase`` (counted already)."""
    TASK_SECONDS.labels(_command, phase).observe(seconds)


def error(kind: str) -> None:
    """Count one error of ``kind`` (an exception class name)."""
    ERRORS.labels(_command, kind).inc()


def epoch_done(row: Mapping[str, Any]) -> None:
    """Record a training epoch's row of ``metrics.csv``."""
    EPOCH.set(float(row.get("epoch", 0)))
    for name, value in row.items():
        if name != "epoch" and isinstance(value, int | float):
            TRAIN.labels(name).set(float(value))


def summary(values: Mapping[str, Any]) -> None:
    """Record the numbers of a command's summary (non-numbers are skipped)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        SUMMARY.labels(_command, name).set(float(value))


class Timer:
    """Per-key start times of the tasks a local Dask scheduler runs (see parallel.compute).

    Each finished task is counted and timed for Prometheus, and handed to ``on_task``
    (``geoseg.tracing``'s span recorder) with its start and end in ns since the epoch.
    """

    def __init__(self, on_task: Callable[[Any, int, int, Any], None] | None = None) -> None:
        self._start: dict[Any, tuple[float, int]] = {}
        self._on_task = on_task

    def start(self, key: Any) -> None:
        self._start[key] = (time.perf_counter(), time.time_ns())

    def stop(self, key: Any, worker: Any = None) -> None:
        from dask.utils import key_split

        t0 = self._start.pop(key, None)
        task_done(key_split(key), None if t0 is None else time.perf_counter() - t0[0])
        if t0 is not None and self._on_task is not None:
            self._on_task(key, t0[1], time.time_ns(), worker)
