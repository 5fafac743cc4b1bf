"""OpenTelemetry spans of a batch job: one per command, per Dask computation, scene and task.

Optional: ``pip install -c constraints.txt 'geoseg[otel]'`` (the OpenTelemetry API, SDK and
OTLP/HTTP exporter). Without them every function here is a no-op and nothing is recorded.

Switch it on with the global option ``--trace console|otlp|off`` or ``GEOSEG_TRACE``; with
neither, a set ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) means ``otlp``.
``otlp`` exports with the standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers,
protocol http/protobuf), the resource from ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (service ``geoseg`` by default); ``OTEL_SDK_DISABLED=true``
turns it off. ``console`` writes one JSON object per span to stderr.

Used as a library (``geoseg.tile.tile``, ``geoseg.predict.predict``), geoseg sends its
spans to the application's global tracer provider, as any instrumented library does, or to
the one given to :func:`use_provider`.

The spans (docs/dask.md):

- ``geoseg.<command>`` (``geoseg.tile``, ``geoseg.predict``, ...): the whole command;
- ``geoseg.compute``: one :func:`geoseg.parallel.compute` call (``geoseg.desc``: tile,
  predict, ...; ``geoseg.tasks``; ``dask.scheduler``);
- ``geoseg.scene``: the tasks of one scene in that computation, from the first one's start
  to the last one's end (``geoseg.scene``, ``geoseg.tasks``);
- one span per Dask task, named by its phase (``tile_block``, ``pv_block``, ``ff_block``,
  ``instances_block``, ...; ``geoseg.phase``, ``geoseg.scene``, ``dask.key``,
  ``dask.worker``). On the local schedulers the times are those of the scheduler's
  callbacks in this process; on a distributed cluster they are the workers' compute times
  from the scheduler's task stream, as the client sees it (worker clocks).

Task, scene and computation spans are written when the computation ends (with their real
start and end times), so a trace shows a computation once it is over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from geoseg.errors import ConfigError, DependencyError

log = logging.getLogger(__name__)

ENV = "GEOSEG_TRACE"
MODES = ("off", "console", "otlp")
TRACER = "geoseg"
INSTALL = "pip install -c constraints.txt 'geoseg[otel]'"

#: The provider geoseg's spans go to (None: OpenTelemetry's global one).
_provider: Any = None


def _api() -> Any:
    """``opentelemetry.trace``, or None when the API is not importable."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


def tracer() -> Any:
    """The tracer of geoseg's spans, or None when they would go nowhere (no API, no provider set)."""
    trace = _api()
    if trace is None:
        return None
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    from geoseg import __version__

    return provider.get_tracer(TRACER, __version__)


def enabled() -> bool:
    """Whether spans are recorded now."""
    return tracer() is not None


@contextlib.contextmanager
def use_provider(provider: Any) -> Iterator[None]:
    """Send geoseg's spans to ``provider`` (an SDK ``TracerProvider``) while inside."""
    global _provider
    old, _provider = _provider, provider
    try:
        yield
    finally:
        _provider = old


def mode_from(value: str | None) -> str:
    """The tracing mode of a command.

    ``--trace``, else ``$GEOSEG_TRACE``, else ``otlp`` when an OTLP endpoint is set in the
    environment, else ``off``.

    Raises:
        ConfigError: ``GEOSEG_TRACE`` is not one of :data:`MODES`.
    """
    if value is None:
        value = os.environ.get(ENV, "").strip().lower() or None
        if value is not None and value not in MODES:
            raise ConfigError(f"{ENV}={value!r} is not one of {', '.join(MODES)}")
    if value is None:
        endpoint = any(os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        if endpoint and _api() is None:
            log.info("an OTLP endpoint is set but OpenTelemetry is not installed (%s): no spans", INSTALL)
        value = "otlp" if endpoint and _api() is not None else "off"
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "off"
    return value


def _exporter(mode: str) -> Any:
    """The span exporter of a mode (``console``: JSON lines on stderr; ``otlp``: OTLP/HTTP)."""
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        out: Any = _Stderr()  # a file-like object, not an IO
        return ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise DependencyError("--trace otlp needs the OTLP exporter: pip install "
                              "opentelemetry-exporter-otlp-proto-http (or geoseg[otel])") from None
    return OTLPSpanExporter()  # endpoint, headers, timeout: the OTEL_EXPORTER_OTLP_* variables


class _Stderr:
    """Whatever ``sys.stderr`` is when a span is written (the CLI swaps it while it runs)."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def _sdk_provider(mode: str) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        raise DependencyError(f"--trace {mode} needs OpenTelemetry: {INSTALL}") from None
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "geoseg"}))
    provider = TracerProvider(resource=resource)
    exporter = _exporter(mode)
    provider.add_span_processor(SimpleSpanProcessor(exporter) if mode == "console"
                                else BatchSpanProcessor(exporter))
    return provider


@contextlib.contextmanager
def command(mode: str, name: str) -> Iterator[None]:
    """The CLI's scope: a provider for ``mode`` (none for ``off``) and the command's span.

    The span ends with an error status when the command fails; the provider is flushed
    and shut down on the way out.

    Raises:
        DependencyError: ``mode`` is not ``off`` and OpenTelemetry is not installed.
    """
    if mode == "off":
        yield
        return
    provider = _sdk_provider(mode)
    try:
        with use_provider(provider), span(f"geoseg.{name}", **{"geoseg.command": name}):
            yield
    finally:
        provider.shutdown()  # flushes what the batch processor holds


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span made current while inside (None, and nothing recorded, when tracing is off).

    An exception leaving it marks it as an error, except a click exit with code 0.
    """
    t = tracer()
    if t is None:
        yield None
        return
    trace = _api()
    with t.start_as_current_span(name, attributes=attributes, record_exception=False,
                                 set_status_on_exception=False) as sp:
        try:
            yield sp
        except BaseException as err:
            if getattr(err, "exit_code", 1) not in (0, None):
                sp.record_exception(err)
                sp.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(err).__name__}: {err}"))
            raise


def failed(message: str) -> None:
    """Give the current span (the command's, in the CLI) an error status."""
    if tracer() is None:
        return
    trace = _api()
    sp = trace.get_current_span()
    if sp.is_recording():
        sp.set_status(trace.Status(trace.StatusCode.ERROR, message))


def _scene_of(task: Any) -> str | None:
    """The name of the scene a Dask task works on: its argument with a ``scene.name``."""
    args = getattr(task, "args", None)
    if args is None and isinstance(task, tuple):  # the older tuple task spec
        args = task[1:]
    for a in args or ():
        a = getattr(a, "value", a) if type(a).__name__ == "DataNode" else a
        name = getattr(getattr(a, "scene", None), "name", None)
        if isinstance(name, str):
            return name
    return None


@dataclass
class _Task:
    key: str
    phase: str
    scene: str | None
    start_ns: int
    end_ns: int
    worker: str


class TaskSpans:
    """The spans of one :func:`geoseg.parallel.compute` call, written when it ends.

    Tasks are recorded as they finish (:meth:`task`); :meth:`end` writes the computation's
    span, a span per scene (its tasks' first start to last end) and one per task.
    """

    def __init__(self, tracer_: Any, desc: str, tasks: Sequence[Any], scheduler: Any) -> None:
        trace = _api()
        self._trace = trace
        self._tracer = tracer_
        self._scene: dict[str, str | None] = {}
        for t in tasks:
            with contextlib.suppress(Exception):  # a task we cannot look into: no scene
                self._scene[str(t.key)] = _scene_of(t.dask[t.key])
        sched = scheduler if isinstance(scheduler, str) else type(scheduler).__name__
        self._attrs = {"geoseg.desc": desc, "geoseg.tasks": len(tasks), "dask.scheduler": sched}
        self._parent = trace.get_current_span()  # the command's, in the CLI
        self._start_ns = time.time_ns()
        self._done: list[_Task] = []

    def task(self, key: Any, start_ns: int, end_ns: int, worker: Any = None) -> None:
        """Record one finished task (times in ns since the epoch)."""
        from dask.utils import key_split

        k = str(key)
        self._done.append(_Task(k, key_split(key), self._scene.get(k), int(start_ns), int(end_ns),
                                "" if worker is None else str(worker)))

    def end(self, error: BaseException | None = None) -> None:
        """Write the scene and task spans and end the computation's span."""
        trace = self._trace
        # workers' clocks may run ahead of this one: the computation's span covers its tasks
        done = self._done
        self._span = self._tracer.start_span(
            "geoseg.compute", context=trace.set_span_in_context(self._parent), attributes=self._attrs,
            start_time=min([self._start_ns] + [r.start_ns for r in done]))
        end_ns = max([time.time_ns()] + [r.end_ns for r in done])
        parent = trace.set_span_in_context(self._span)
        by_scene: dict[str | None, list[_Task]] = {}
        for rec in self._done:
            by_scene.setdefault(rec.scene, []).append(rec)
        for scene, recs in by_scene.items():
            ctx = parent
            if scene is not None:
                sp = self._tracer.start_span("geoseg.scene", context=parent,
                                             start_time=min(r.start_ns for r in recs),
                                             attributes={"geoseg.scene": scene, "geoseg.tasks": len(recs)})
                ctx = trace.set_span_in_context(sp)
            for r in recs:
                attrs = {"geoseg.phase": r.phase, "dask.key": r.key}
                if r.worker:  # a thread or process id, a worker's address; none on `sync`
                    attrs["dask.worker"] = r.worker
                if scene is not None:
                    attrs["geoseg.scene"] = scene
                ts = self._tracer.start_span(r.phase, context=ctx, start_time=r.start_ns, attributes=attrs)
                ts.end(end_time=r.end_ns)
            if scene is not None:
                sp.end(end_time=max(r.end_ns for r in recs))
        self._span.set_attribute("geoseg.tasks_done", len(self._done))
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self._span.end(end_time=end_ns)


class _NoSpans:
    """What :func:`task_spans` returns when tracing is off: records nothing."""

    def task(self, key: Any, start_ns: int, end_ns: int, worker: Any = None) -> None:
        pass

    def end(self, error: BaseException | None = None) -> None:
        pass


def task_spans(desc: str, tasks: Sequence[Any], scheduler: Any) -> TaskSpans | _NoSpans:
    """The recorder of a computation's spans (a no-op one when tracing is off)."""
    t = tracer()
    return _NoSpans() if t is None else TaskSpans(t, desc, tasks, scheduler)


def now_ns() -> int:
    """Nanoseconds since the epoch (the clock of span times)."""
    return time.time_ns()
