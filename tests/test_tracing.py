"""OpenTelemetry spans (issue #15): per command, computation, scene and Dask task; a no-op without it."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes, labels_for
from dask import delayed

from geoseg import tracing
from geoseg.cli.main import cli
from geoseg.errors import ConfigError
from geoseg.parallel import compute

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402


@pytest.fixture
def spans() -> Any:
    """Spans geoseg writes while the test runs, in an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.use_provider(provider):
        yield exporter


def _two_scenes(tmp_path: Path) -> tuple[list[Path], Path]:
    boxes = grid_boxes((64, 64))
    a = bright_boxes_scene(tmp_path / "a.tif", (64, 64), boxes)
    b = bright_boxes_scene(tmp_path / "b.tif", (64, 64), boxes, seed=1)
    return [a, b], labels_for(a, tmp_path / "l.gpkg", boxes)


def _by_name(exporter: Any, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def _check_tree(exporter: Any, desc: str, scenes: set[str], phases: set[str], worker: bool = True) -> None:
    """One computation span; a scene span per scene under it; every task span under its scene's."""
    (comp,) = [s for s in _by_name(exporter, "geoseg.compute") if s.attributes["geoseg.desc"] == desc]
    scene_spans = {s.attributes["geoseg.scene"]: s for s in _by_name(exporter, "geoseg.scene")
                   if s.parent.span_id == comp.context.span_id}
    assert set(scene_spans) == scenes
    tasks = [s for s in exporter.get_finished_spans() if "geoseg.phase" in s.attributes]
    assert {t.name for t in tasks} == phases
    assert len(tasks) == comp.attributes["geoseg.tasks"] == comp.attributes["geoseg.tasks_done"]
    for name, sc in scene_spans.items():
        mine = [t for t in tasks if t.parent.span_id == sc.context.span_id]
        assert mine and all(t.attributes["geoseg.scene"] == name for t in mine)
        assert all(bool(t.attributes.get("dask.worker")) == worker for t in mine)
        assert sc.attributes["geoseg.tasks"] == len(mine)
        assert sc.start_time == min(t.start_time for t in mine) and sc.end_time == max(t.end_time for t in mine)
        assert all(t.end_time >= t.start_time for t in mine)
        assert comp.start_time <= sc.start_time and sc.end_time <= comp.end_time
    assert sum(s.attributes["geoseg.tasks"] for s in scene_spans.values()) == len(tasks)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_tile_spans_per_scene_and_task(tmp_path: Path, spans: Any, scheduler: str) -> None:
    from geoseg.tile import TileConfig, tile

    scenes, labels = _two_scenes(tmp_path)
    tile(scenes, labels, tmp_path / "p", TileConfig(size=16, overlap=0), scheduler=scheduler)
    _check_tree(spans, "tile", {"a", "b"}, {"tile_block"}, worker=scheduler != "sync")
    assert all(s.attributes["dask.scheduler"] == scheduler for s in _by_name(spans, "geoseg.compute"))


def test_predict_spans_by_phase(tmp_path: Path, tiny_run: Path, spans: Any) -> None:
    from geoseg.predict import PredictConfig, predict

    scenes, _ = _two_scenes(tmp_path)
    predict(scenes, tiny_run, tmp_path / "b.gpkg", PredictConfig(block=32), scheduler="sync")
    _check_tree(spans, "predict", {"a", "b"}, {"pv_block", "choose_cells", "ff_block", "instances_block"},
                worker=False)
    assert len([s for s in _by_name(spans, "pv_block") if s.attributes["geoseg.scene"] == "a"]) == 4


@dataclass(frozen=True)
class _Scene:
    name: str


@dataclass(frozen=True)
class _Job:
    scene: _Scene
    n: int


def double(job: _Job) -> int:
    return job.n * 2


def explode(job: _Job, *after: Any) -> int:
    raise ZeroDivisionError("on purpose")


def test_distributed_spans_from_the_task_stream(spans: Any) -> None:
    distributed = pytest.importorskip("distributed")
    jobs = [_Job(_Scene("s1" if i < 2 else "s2"), i) for i in range(5)]
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        assert compute([delayed(double)(j) for j in jobs], scheduler=client, desc="unit") == [0, 2, 4, 6, 8]
        workers = set(client.scheduler_info()["workers"])
    _check_tree(spans, "unit", {"s1", "s2"}, {"double"})
    assert {s.attributes["dask.worker"] for s in _by_name(spans, "double")} == workers
    assert _by_name(spans, "geoseg.compute")[0].attributes["dask.scheduler"] == "Client"


def test_failed_computation_span_is_an_error(spans: Any) -> None:
    ok, bad = _Job(_Scene("s"), 1), _Job(_Scene("s"), 2)
    with pytest.raises(ZeroDivisionError):
        first = delayed(double)(ok)
        compute([first, delayed(explode)(bad, first)], scheduler="sync", desc="unit")  # explode runs second
    (comp,) = _by_name(spans, "geoseg.compute")
    assert comp.status.status_code == StatusCode.ERROR and "on purpose" in comp.status.description
    assert comp.events[0].name == "exception"
    assert [s.name for s in spans.get_finished_spans() if "geoseg.phase" in s.attributes] == ["double"]


def test_untraced_tasks_record_nothing() -> None:
    """No provider set (OpenTelemetry's default): compute runs without a recorder."""
    assert tracing.tracer() is None
    assert isinstance(tracing.task_spans("x", [delayed(double)(_Job(_Scene("s"), 1))], "sync"), tracing._NoSpans)


def _cli_tile(tmp_path: Path, *opts: str, out: str = "p") -> Any:
    scenes, labels = _two_scenes(tmp_path)
    return CliRunner().invoke(cli, [*opts, "tile", *map(str, scenes), "--labels", str(labels),
                                    "--out", str(tmp_path / out), "--size", "16", "--overlap", "0"])


def test_cli_command_span_over_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[InMemorySpanExporter] = []  # one per command: the CLI shuts its exporter down
    monkeypatch.setattr(tracing, "_exporter", lambda mode: made.append(InMemorySpanExporter()) or made[-1])
    res = _cli_tile(tmp_path, "--trace", "console")
    exporter = made[-1]
    assert res.exit_code == 0, res.output
    (cmd,) = _by_name(exporter, "geoseg.tile")
    assert cmd.parent is None and cmd.attributes["geoseg.command"] == "tile"
    assert cmd.resource.attributes["service.name"] == "geoseg"
    assert cmd.status.status_code == StatusCode.UNSET
    (comp,) = _by_name(exporter, "geoseg.compute")
    assert comp.parent.span_id == cmd.context.span_id
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {cmd.context.trace_id}
    _check_tree(exporter, "tile", {"a", "b"}, {"tile_block"})
    res = CliRunner().invoke(cli, ["--trace", "console", "tile", str(tmp_path / "missing"),
                                   "--out", str(tmp_path / "q")])
    assert res.exit_code == 1 and len(made) == 2
    (cmd,) = made[-1].get_finished_spans()
    assert cmd.status.status_code == StatusCode.ERROR and "missing" in cmd.status.description


def test_cli_console_writes_json_lines_to_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOSEG_TRACE", "console")
    res = _cli_tile(tmp_path)
    assert res.exit_code == 0, res.output
    lines = [json.loads(ln) for ln in res.stderr.splitlines() if ln.startswith("{")]
    names = [d["name"] for d in lines]
    assert names[-1] == "geoseg.tile" and "geoseg.compute" in names and names.count("geoseg.scene") == 2
    assert "{" not in res.stdout


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        self.bodies.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_endpoint_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("GEOSEG_TRACE", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "geoseg-test")
    try:
        res = _cli_tile(tmp_path)
    finally:
        server.shutdown()
    assert res.exit_code == 0, res.output
    body = b"".join(b for path, b in _Collector.bodies if path == "/v1/traces")
    assert b"geoseg.tile" in body and b"tile_block" in body and b"geoseg-test" in body


def test_mode_from_options_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GEOSEG_TRACE", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    assert tracing.mode_from(None) == "off"
    assert tracing.mode_from("console") == "console"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces")
    assert tracing.mode_from(None) == "otlp"
    monkeypatch.setenv("GEOSEG_TRACE", "Console")
    assert tracing.mode_from(None) == "console"
    assert tracing.mode_from("off") == "off"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.mode_from("console") == "off"
    monkeypatch.setenv("GEOSEG_TRACE", "jaeger")
    with pytest.raises(ConfigError, match="GEOSEG_TRACE='jaeger' is not one of off, console, otlp"):
        tracing.mode_from(None)


def test_without_opentelemetry_everything_runs_and_nothing_is_emitted(
        tmp_path: Path, spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import opentelemetry...` raises ImportError
    assert tracing.tracer() is None and tracing.mode_from(None) == "off"
    with tracing.span("x") as sp:
        assert sp is None
    assert compute([delayed(double)(_Job(_Scene("s"), 3))], scheduler="threads") == [6]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # set for others: ignored
    res = _cli_tile(tmp_path)
    assert res.exit_code == 0, res.output
    res = _cli_tile(tmp_path, "--trace", "console", out="q")
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        "geoseg: error: --trace console needs OpenTelemetry: pip install -c constraints.txt 'geoseg[otel]'")
    assert spans.get_finished_spans() == ()
