"""geoseg.parallel: results in order, and a tqdm bar that counts the caller's tasks."""

import dask
import pytest

import geoseg.parallel as parallel
from geoseg.errors import ConfigError
from geoseg.parallel import check_scheduler, compute


def _inc(x: int) -> int:
    return x + 1


def _nested(x: int) -> int:
    """A task that runs a compute of its own (the bar must ignore its graph)."""
    return dask.compute(dask.delayed(_inc)(x), scheduler="sync")[0]


def _tasks(n: int) -> list:
    # two graph nodes per task: the bar must still count n
    return [dask.delayed(_inc)(dask.delayed(_inc)(i)) for i in range(n)]


@pytest.fixture
def bars(monkeypatch):
    """Every tqdm bar parallel.py makes, as the kwargs it got and its final count."""
    made = []

    class Recording(parallel.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(parallel, "tqdm", Recording)
    monkeypatch.setattr(parallel, "PROGRESS_DELAY_S", 0.0)
    return made


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_bar_counts_tasks_not_graph_nodes(bars, capsys, scheduler):
    assert compute(_tasks(5), scheduler=scheduler, desc="tiles", progress=True) == [2, 3, 4, 5, 6]
    assert len(bars) == 1
    bar = bars[0]
    assert (bar.desc, bar.total, bar.n, bar.unit) == ("tiles", 5, 5, "task")
    err = capsys.readouterr().err
    assert "tiles" in err and "5/5" in err


def test_nested_compute_in_a_task_keeps_one_bar(bars):
    tasks = [dask.delayed(_nested)(i) for i in range(4)]
    assert compute(tasks, scheduler="threads", desc="predict", progress=True) == [1, 2, 3, 4]
    assert [(b.desc, b.total, b.n) for b in bars] == [("predict", 4, 4)]


def test_progress_off_is_silent(bars, capsys):
    assert compute(_tasks(3), scheduler="threads", progress=False) == [2, 3, 4]
    assert all(b.disable for b in bars)
    assert capsys.readouterr().err == ""


def test_empty_and_bad_scheduler():
    assert compute([], scheduler="threads") == []
    with pytest.raises(ConfigError, match="unknown scheduler"):
        check_scheduler("gpu")
    check_scheduler("tcp://localhost:8786", connect=False)


def test_unreachable_scheduler_fails_at_once_in_one_line(tmp_path):
    """Issue #9: nobody listening at the address is one line in seconds, not 30 s then 'unexpected'."""
    import socket
    import time

    from click.testing import CliRunner

    from geoseg.cli.main import cli
    from geoseg.errors import SchedulerError

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with pytest.raises(SchedulerError, match="cannot reach the Dask scheduler"):
        check_scheduler(address)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ConfigError, match="bad scheduler address"):
        check_scheduler("tcp://localhost:notaport")
    import numpy as np
    from conftest import write_raster
    from rasterio.transform import from_origin

    scene = write_raster(tmp_path / "scene.tif", np.ones((3, 64, 64), np.uint8), "EPSG:32636",
                         from_origin(500000, 10000, 0.5, 0.5))
    res = CliRunner().invoke(cli, ["tile", str(scene), "--out", str(tmp_path / "p"), "--scheduler", address])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [res.output.strip()]
    assert res.output.startswith("geoseg: error: cannot reach the Dask scheduler at " + address)
    assert not (tmp_path / "p").exists()


def test_distributed_client_bar(bars):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        assert compute(_tasks(3), scheduler=client, desc="dist", progress=True) == [2, 3, 4]
    assert [(b.desc, b.total, b.n) for b in bars] == [("dist", 3, 3)]


def _interleaved(i: int, a_in, b_in, a_out) -> int:  # noqa: ANN001
    """Task 0 enters catch_warnings, then task 1, then task 0 leaves, then task 1: the unsafe order."""
    import warnings

    if i == 1:
        assert a_in.wait(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as rasterio's rasterize does inside
        if i == 0:
            a_in.set()
            assert b_in.wait(10)
        else:
            b_in.set()
            assert a_out.wait(10)
    if i == 0:
        a_out.set()
    return i


def test_warnings_after_threads_that_caught_warnings_interleaved_are_shown():
    """Threads entering and leaving warnings.catch_warnings interleaved left "ignore" as the process's
    filter, so every later warning of the run was lost (a GeoSegWarning of tile, exit 0 and no word)."""
    import threading
    import warnings

    from dask.delayed import delayed

    from geoseg.errors import GeoSegWarning

    events = [threading.Event() for _ in range(3)]
    with dask.config.set(num_workers=2):
        tasks = [delayed(_interleaved, pure=False)(i, *events) for i in range(2)]
        with pytest.warns(GeoSegWarning, match="still said"):
            assert compute(tasks, scheduler="threads", progress=False) == [0, 1]
            warnings.warn("still said", GeoSegWarning, stacklevel=1)
    assert all(e.is_set() for e in events)
