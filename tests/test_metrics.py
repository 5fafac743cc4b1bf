"""Prometheus metrics of batch jobs (issue #15): task counts and times, errors, summaries."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes, labels_for
from dask import delayed

from geoseg import metrics
from geoseg.cli.main import cli
from geoseg.errors import ConfigError
from geoseg.parallel import compute


def value(metric: str, **labels: str) -> float:
    v = metrics.REGISTRY.get_sample_value(metric, labels)
    return 0.0 if v is None else v


def _square(x: int) -> int:
    return x * x


def _boom(x: int) -> int:
    raise ZeroDivisionError("on purpose")


def test_served_over_http_while_inside() -> None:
    with metrics.serving(0, "test") as port:
        assert port
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "geoseg_rss_bytes" in body and "geoseg_tasks_total" in body
    rss = [ln for ln in body.splitlines() if ln.startswith("geoseg_rss_bytes ")]
    assert float(rss[0].split()[1]) > 10e6
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)  # stopped on exit


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_tasks_counted_and_timed_by_phase(scheduler: str) -> None:
    with metrics.serving(None, "unit"):
        before = value("geoseg_tasks_total", command="unit", phase="square")
        hist = value("geoseg_task_seconds_count", command="unit", phase="square")
        assert compute([delayed(_square)(i) for i in range(5)], scheduler=scheduler) == [0, 1, 4, 9, 16]
        assert value("geoseg_tasks_total", command="unit", phase="square") == before + 5
        assert value("geoseg_task_seconds_count", command="unit", phase="square") == hist + 5
        errors = value("geoseg_errors_total", command="unit", kind="ZeroDivisionError")
        with pytest.raises(ZeroDivisionError):
            compute([delayed(_boom)(1)], scheduler=scheduler)
        assert value("geoseg_errors_total", command="unit", kind="ZeroDivisionError") == errors + 1


def test_distributed_counts_and_worker_times() -> None:
    distributed = pytest.importorskip("distributed")
    with metrics.serving(None, "dist"), distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                                                           dashboard_address=None) as client:
        assert compute([delayed(_square)(i) for i in range(4)], scheduler=client) == [0, 1, 4, 9]
    assert value("geoseg_tasks_total", command="dist", phase="square") == 4
    assert value("geoseg_task_seconds_count", command="dist", phase="square") == 4


def test_cli_tile_and_train_with_metrics_port(tmp_path: Path, tiny_patches: Path) -> None:
    from conftest import REPO

    boxes = grid_boxes((64, 64))
    scene = bright_boxes_scene(tmp_path / "s.tif", (64, 64), boxes)
    labels = labels_for(scene, tmp_path / "l.gpkg", boxes)
    tasks = value("geoseg_tasks_total", command="tile", phase="tile_block")
    res = CliRunner().invoke(cli, ["--metrics-port", "0", "tile", str(scene), "--labels", str(labels),
                                   "--out", str(tmp_path / "p"), "--size", "32", "--overlap", "0"])
    assert res.exit_code == 0, res.output
    assert "metrics of tile: http://localhost:" in res.output
    assert value("geoseg_tasks_total", command="tile", phase="tile_block") > tasks
    assert value("geoseg_summary", command="tile", name="chips_written") == 4
    res = CliRunner().invoke(cli, ["--metrics-port", "0", "train", str(REPO / "tests" / "conf" / "tiny.yaml"),
                                   "--patches", str(tiny_patches), "--out", str(tmp_path / "run"),
                                   "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert value("geoseg_epoch") == 1 and value("geoseg_train_value", name="loss") > 0


def test_port_in_use_and_bad_variable_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = CliRunner().invoke(cli, ["--metrics-port", str(port), "tile", str(tmp_path), "--out",
                                       str(tmp_path / "p")])
    assert res.exit_code == 1
    assert res.output.strip().startswith(f"geoseg: error: --metrics-port {port}: cannot listen")
    assert len(res.output.strip().splitlines()) == 1
    monkeypatch.setenv("GEOSEG_METRICS_PORT", "ninety")
    with pytest.raises(ConfigError, match="GEOSEG_METRICS_PORT"):
        metrics.port_from(None)
    monkeypatch.setenv("GEOSEG_METRICS_PORT", "0")
    assert metrics.port_from(None) == 0 and metrics.port_from(9100) == 9100


def test_memory_and_reads_count_the_processes_started_here(tmp_path) -> None:
    # train --devices N: the ranks are children of the process that serves the metrics
    import subprocess
    import sys

    data = tmp_path / "blob"
    data.write_bytes(os.urandom(8 << 20))
    alone = metrics._rss()
    code = ("import sys, time; b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); "
            "open(sys.argv[1], 'rb').read(); print('ok', flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code, str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        assert metrics._rss() > alone + 150e6  # the child's 200 MiB are counted
        import psutil

        family = metrics._read_bytes()
        assert family - psutil.Process().io_counters().read_chars >= 7 << 20  # the child's 8 MiB read
    finally:
        child.kill()
        child.wait()
    assert metrics._rss() < alone + 100e6  # gone with it
