"""The memory governor of predict: --ff-batch auto, halving after out-of-memory, --max-memory.

No GPU here: CUDA's out-of-memory error is raised by a monkeypatched FF call (torch's own
``torch.cuda.OutOfMemoryError`` class), and CUDA probes are fakes of
:class:`~geoseg.backends.governor.FfMemory`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import bright_boxes_scene, grid_boxes

from geoseg.backends import governor
from geoseg.backends.base import Backend
from geoseg.backends.cache import ModelKey, get_backend
from geoseg.backends.governor import FfMemory, FfMemoryError, is_out_of_memory, run_ff
from geoseg.backends.torch_backend import TorchBackend
from geoseg.cli.main import cli
from geoseg.errors import ConfigError
from geoseg.predict import PredictConfig, predict
from geoseg.predict import memory as memory_mod
from geoseg.predict.memory import block_bytes, parse_size, plan_ff

SHAPE = (96, 128)
MIB = 2**20


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("governor")
    return bright_boxes_scene(root / "scene.tif", SHAPE, grid_boxes(SHAPE, step=20, seed=5), seed=7)


#: Cells FF runs on in the halving test, whatever the router says (its choice moves with the
#: float sums of the CPU the tiny model trained on): two lone cells in each 64-px block of the
#: 6 x 8 cell grid, so that each block's FF call sends 2 tiles of one shape.
TWO_PER_BLOCK = np.array([(0, 0), (2, 2), (0, 4), (2, 6), (4, 0), (4, 2), (4, 5), (4, 7)])


def cfg(**kw: object) -> PredictConfig:
    # block 64, budget 0.25: FF calls of 1 or 2 tiles (cells, or 1x2 regions; see the spy below)
    base: dict[str, object] = {"block": 64, "watershed_halo": 16, "simplify": 0.0, "min_area": 1.0,
                               "budget": 0.25}
    return PredictConfig(**{**base, **kw})


def wkb(path: Path) -> list[bytes]:
    g = gpd.read_file(path)
    return sorted(g.geometry.to_wkb()) + sorted(map(str, g["score"].round(12)))


# ----------------------------------------------------------------------------- halving in predict
def test_out_of_memory_halves_the_batch_and_matches_the_small_batch(scene: Path, tiny_run: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = TorchBackend._ff
    sizes: list[int] = []
    ooms: list[int] = []

    def small_gpu(self: TorchBackend, tiles: np.ndarray) -> np.ndarray:
        if tiles.shape[0] > 1:  # a "GPU" that holds one tile (calls here have 1 or 2: TWO_PER_BLOCK)
            ooms.append(tiles.shape[0])
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        sizes.append(tiles.shape[0])
        return real(self, tiles)

    monkeypatch.setattr(TorchBackend, "_ff", small_gpu)
    monkeypatch.setattr("geoseg.predict.stage.choose_cells", lambda *a: TWO_PER_BLOCK.copy())
    ref = predict([scene], tiny_run, tmp_path / "ref.gpkg", cfg(ff_batch=1), progress=False)
    assert ref.lines()[-1] == "FF batch: 1 cell tiles per call (--ff-batch)"
    assert max(sizes) == 1 and not ooms
    sizes.clear()
    s = predict([scene], tiny_run, tmp_path / "oom.gpkg", cfg(ff_batch=8), progress=False)  # Dask threads
    assert ooms, "the fake never ran out of memory: the test lost its point"
    assert max(sizes) == 1
    assert s.lines()[-1] == ("FF batch: 8 cell tiles per call (--ff-batch); halved to 1 after running "
                             "out of memory")
    backend = get_backend(ModelKey(str(tiny_run.resolve()), "torch", "auto", 8))
    assert backend.ff_batch == 1
    assert backend.ff_halved == [(8, 1)]  # halved once (8 -> 1: batches of 4 or 2 would still send 2 tiles)
    assert len(ooms) <= 2  # kept for the run: at most the two Dask threads' first calls failed
    assert wkb(tmp_path / "oom.gpkg") == wkb(tmp_path / "ref.gpkg")
    assert s.ff_cells == ref.ff_cells == len(TWO_PER_BLOCK)
    # the next run starts from its own batch again (nothing halved is inherited silently)
    monkeypatch.setattr(TorchBackend, "_ff", real)
    again = predict([scene], tiny_run, tmp_path / "again.gpkg", cfg(ff_batch=8), progress=False)
    assert again.lines()[-1] == "FF batch: 8 cell tiles per call (--ff-batch)"


def test_out_of_memory_on_one_tile_is_one_line(scene: Path, tiny_run: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gpu(self: TorchBackend, tiles: np.ndarray) -> np.ndarray:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for "
                           "requested buffer of size 1048576")

    monkeypatch.setattr(TorchBackend, "_ff", no_gpu)
    with pytest.raises(FfMemoryError, match=r"out of cpu memory on a single \d+x\d+ tile at FF batch \d \("
                                            r"\[ONNXRuntimeError\].*\); free RAM"):
        predict([scene], tiny_run, tmp_path / "x.gpkg", cfg(ff_batch=4), scheduler="sync", progress=False)


# ----------------------------------------------------------------------------- run_ff with a fake backend
class FakeBackend(Backend):
    """FF = a per-tile function (the mean of each tile), on a fake GPU of ``capacity`` tiles."""

    name = "fake"

    def __init__(self, meta, device: str = "cuda", ff_batch: int = 16, capacity: int = 3) -> None:
        super().__init__(meta, Path("fake"), device, ff_batch)
        self.capacity, self.calls, self.inside, self.most_inside = capacity, [], 0, 0
        self.count_lock = threading.Lock()

    def _ff(self, tiles: np.ndarray) -> np.ndarray:
        with self.count_lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            time.sleep(0.002)
            if tiles.shape[0] > self.capacity:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            self.calls.append(tiles.shape[0])
            h = self.meta.tile_halo
            core = tiles[:, :, h:-h, h:-h].mean(axis=1, keepdims=True)
            return np.repeat(core, self.meta.n_outputs, axis=1)
        finally:
            with self.count_lock:
                self.inside -= 1


@pytest.fixture(scope="module")
def meta(tiny_run: Path):
    return get_backend(ModelKey(str(tiny_run.resolve()), "torch", "cpu", 8)).meta


def test_run_ff_halves_once_across_threads_and_gives_the_small_batch_output(meta) -> None:
    side = meta.tile
    x = np.random.default_rng(1).standard_normal((7, meta.band_count, side, side), dtype=np.float32)
    small = FakeBackend(meta, ff_batch=2)
    want = small.ff(x)
    assert small.calls == [2, 2, 2, 1]
    big = FakeBackend(meta, ff_batch=16, capacity=2)
    outs: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: outs.append(big.ff(x))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 4 and all(np.array_equal(o, want) for o in outs)
    # 16 -> 4 (a call of 7 tiles ran out: a batch of 8 would send 7 again), 4 -> 2; each once
    # (compare-and-swap), not once per thread
    assert big.ff_batch == 2 and big.ff_halved == [(16, 4), (4, 2)]
    assert big.most_inside == 1  # on CUDA one FF call at a time


def test_cpu_calls_run_concurrently_and_errors_that_are_not_memory_pass_through(meta) -> None:
    b = FakeBackend(meta, device="cpu", ff_batch=1)
    x = np.zeros((2, meta.band_count, meta.tile, meta.tile), np.float32)
    threads = [threading.Thread(target=b.ff, args=(x,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.most_inside > 1  # no device lock on the CPU

    def broken(tiles: np.ndarray) -> np.ndarray:
        raise ValueError("shape mismatch")

    b._ff = broken  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="shape mismatch"):
        run_ff(b, x)
    assert b.ff_batch == 1 and b.ff_halved == []


@pytest.mark.parametrize(("err", "oom"), [
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), True),
    (MemoryError(), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True),
    (RuntimeError("CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (ValueError("shape mismatch"), False),
    (FfMemoryError("FF ran out of cuda memory"), False),
])
def test_is_out_of_memory(err: BaseException, oom: bool) -> None:
    assert is_out_of_memory(err) is oom


# ----------------------------------------------------------------------------- --max-memory
@pytest.mark.parametrize(("text", "n"), [("8GiB", 8 * 2**30), ("8G", 8 * 2**30), ("8gb", 8 * 10**9),
                                         ("512 MiB", 512 * MIB), ("1.5G", 3 * 2**29), ("123", 123)])
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n
    assert PredictConfig(max_memory=text).max_memory == n


@pytest.mark.parametrize("text", ["lots", "8 parsecs", "-1G", "0", "", "8GiB8"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--max-memory .* (is not a size|more than 0)"):
        parse_size(text)


def test_cli_max_memory_and_ff_batch_are_usage_errors(scene: Path, tmp_path: Path) -> None:
    base = ["predict", str(scene), "--model", str(tmp_path), "--out", str(tmp_path / "o.gpkg")]
    res = CliRunner().invoke(cli, [*base, "--max-memory", "8 parsecs"])
    assert res.exit_code == 2 and "Invalid value for '--max-memory': '8 parsecs' is not a size" in res.output
    res = CliRunner().invoke(cli, [*base, "--ff-batch", "0"])
    assert res.exit_code == 2 and "'0' is neither a whole number >= 1 nor 'auto'" in res.output
    assert "[default: auto]" in CliRunner().invoke(cli, ["predict", "--help"]).output


def test_a_budget_below_one_block_is_one_line(scene: Path, tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--max-memory 64 MiB is below what predict needs: the model and "
                                          r"libraries hold .* one block task about .*; give at least"):
        predict([scene], tiny_run, tmp_path / "x.gpkg", cfg(max_memory="64MiB"), progress=False)
    assert not (tmp_path / ".x.gpkg.geoseg-cache").exists()  # failed before anything was written
    backend = get_backend(ModelKey(str(tiny_run.resolve()), "torch", "auto", "auto"))
    with pytest.raises(ConfigError, match="on a Dask cluster give each worker --memory-limit"):
        plan_ff(backend, cfg(max_memory="8GiB"), [], "tcp://10.0.0.5:8786")


def test_the_probe_picks_a_batch_within_the_budget(scene: Path, tiny_run: Path, tmp_path: Path) -> None:
    backend = get_backend(ModelKey(str(tiny_run.resolve()), "torch", "cpu", "auto"))
    mem = governor.measure_ff(backend)
    assert mem is not None and mem.device == "cpu" and mem.per_tile >= 4 * 24 * 24 * 6
    assert governor.measure_ff(backend) is mem  # probed once per backend
    plans = [memory_mod_plans(scene, backend.meta, tmp_path)]
    per_block = block_bytes(plans, backend.meta)
    for extra_mib in (8, 64, 512):
        budget = mem.in_use + 2 * per_block + extra_mib * MIB
        c = cfg(device="cpu", max_memory=budget)
        p = plan_ff(backend, c, plans, "threads")
        floor = memory_mod.region_tiles(backend, plans)
        assert p.threads is not None and 1 <= p.threads <= 2 and 1 <= p.batch <= memory_mod.CPU_MAX_BATCH
        assert mem.in_use + p.threads * (per_block + mem.call(max(p.batch, floor))) <= budget
        assert f"--max-memory {memory_mod.fmt(budget)}" in p.why and p.why.startswith("probe: ")
    s = predict([scene], tiny_run, tmp_path / "b.gpkg", cfg(device="cpu", max_memory=budget), progress=False)
    assert s.lines()[-1].startswith(f"FF batch: {p.batch} cell tiles per call (probe: ")


def memory_mod_plans(scene: Path, meta, tmp_path: Path, **kw: object):
    from geoseg.io.rasters import inspect_scenes
    from geoseg.predict.stage import _plan

    (info,), _ = inspect_scenes([scene])
    return _plan(info, meta, cfg(**kw), tmp_path)


def test_batch_and_threads_from_a_known_cost(scene: Path, tiny_run: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    backend = get_backend(ModelKey(str(tiny_run.resolve()), "torch", "cpu", "auto"))
    plans = [memory_mod_plans(scene, backend.meta, tmp_path)]
    per_block = block_bytes(plans, backend.meta)
    fake = FfMemory("cpu", fixed=MIB, per_tile=MIB, free=2**40, in_use=100 * MIB)
    monkeypatch.setattr(memory_mod, "measure_ff", lambda b: fake)
    monkeypatch.setattr(memory_mod, "local_threads", lambda s: 4)
    # room for 2 threads of block + 1 MiB fixed + 10 tiles each: 2 threads (not 4), and the
    # batch is the CPU cap (8 tiles per call are as fast as more there)
    budget = 100 * MIB + 2 * (per_block + 11 * MIB)
    p = plan_ff(backend, cfg(max_memory=budget), plans, "threads")
    floor = memory_mod.region_tiles(backend, plans)
    assert floor < 10
    assert (p.threads, p.batch) == (2, memory_mod.CPU_MAX_BATCH) == (2, 8)
    # below the cap the budget sets the batch: 6 tiles each (blocks of 2x2 cells: regions fit)
    small = [memory_mod_plans(scene, backend.meta, tmp_path, block=32)]
    assert memory_mod.region_tiles(backend, small) < 6
    monkeypatch.setattr(memory_mod, "local_threads", lambda s: 2)
    p = plan_ff(backend, cfg(max_memory=100 * MIB + 2 * (block_bytes(small, backend.meta) + 7 * MIB)), small,
                "threads")
    assert (p.threads, p.batch) == (2, 6)
    monkeypatch.setattr(memory_mod, "local_threads", lambda s: 4)
    # an explicit batch is checked against the budget, not probed into another
    p = plan_ff(backend, cfg(max_memory=budget, ff_batch=20), plans, "threads")
    assert (p.threads, p.batch) == (1, 20) and p.why.startswith("--ff-batch, probe: ")
    with pytest.raises(ConfigError, match="or a smaller --ff-batch"):
        plan_ff(backend, cfg(max_memory=budget, ff_batch=100), plans, "threads")
    # a CUDA probe: the batch from the free device memory; no --max-memory: no thread cap
    monkeypatch.setattr(memory_mod, "measure_ff", lambda b: FfMemory("cuda", 10 * MIB, 4 * MIB, 1000 * MIB, 0))
    p = plan_ff(backend, cfg(), plans, "threads")
    assert (p.batch, p.threads) == ((800 - 10) // 4, None) and "1000 MiB free on cuda" in p.why
    monkeypatch.setattr(memory_mod, "measure_ff", lambda b: FfMemory("cuda", 0, MIB, 2**40, 0))
    assert plan_ff(backend, cfg(), plans, "threads").batch == memory_mod.GPU_MAX_BATCH


def test_max_memory_bounds_the_dask_threads_of_the_run(scene: Path, tiny_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    backend = get_backend(ModelKey(str(tiny_run.resolve()), "torch", "auto", "auto"))
    plans = [memory_mod_plans(scene, backend.meta, tmp_path)]
    per_block = block_bytes(plans, backend.meta)
    monkeypatch.setattr(memory_mod, "measure_ff", lambda b: FfMemory("cpu", MIB, MIB, 2**40, 100 * MIB))
    monkeypatch.setattr(memory_mod, "local_threads", lambda s: 2)
    seen: set[int] = set()
    real = TorchBackend._ff

    def spy(self: TorchBackend, tiles: np.ndarray) -> np.ndarray:
        seen.add(threading.get_ident())
        return real(self, tiles)

    monkeypatch.setattr(TorchBackend, "_ff", spy)
    # one thread holds the block, 1 MiB per call and a 4x4-cell region (9 tiles): 2 threads do not fit
    s = predict([scene], tiny_run, tmp_path / "one.gpkg", cfg(max_memory=100 * MIB + per_block + 15 * MIB),
                progress=False)
    assert len(seen) == 1 and threading.get_ident() not in seen  # Dask's pool of 1 thread
    assert s.lines()[-1].startswith("FF batch: 8 cell tiles per call (probe: 1 MiB per cell tile")
    assert s.lines()[-1].endswith(": 1 of 2 threads)")


def test_the_block_estimate_covers_the_watershed_peak(tmp_path: Path) -> None:
    from geoseg.io.rasters import inspect_scenes
    from geoseg.models.postprocess import PostprocessConfig
    from geoseg.predict.instances import instances_from_probs
    from geoseg.predict.plan import BlockPlan

    if not governor._reset_peak():
        pytest.skip("no /proc/self/clear_refs: peak RSS cannot be reset here")
    n, block, halo = 1024, 768, 128
    rng = np.random.default_rng(0)
    probs = np.zeros((3, n, n), np.float32)
    for _ in range(600):  # buildings with outlines
        r, c = rng.integers(0, n - 30, 2)
        h, w = rng.integers(8, 30, 2)
        probs[0, r:r + h, c:c + w] = 0.95
        probs[1, r, c:c + w] = 0.6
    valid = np.ones((n, n), bool)
    path = bright_boxes_scene(tmp_path / "s.tif", (n, n), [(4, 4, 12, 12)])  # the estimate ends at its edge
    (info,), _ = inspect_scenes([path])

    class Meta:  # what block_bytes reads
        n_outputs = 3

    plan = BlockPlan(scene=info, block=block, watershed_halo=halo, cell=16, scale=2, tile_halo=4, multiple=16,
                     band_indexes=(1, 2, 3), cache=tmp_path)  # the watershed sees (block + 2 halo)² = n²
    estimate = block_bytes([plan], Meta())  # type: ignore[arg-type]
    base = governor.rss()
    governor._reset_peak()
    inst = instances_from_probs(probs, PostprocessConfig(), valid)
    peak = int(governor._status_kib("VmHWM") or 0) - base
    assert len(inst) > 300
    assert probs.nbytes + peak <= estimate, (peak, estimate)


def test_a_block_larger_than_the_scene_is_estimated_at_the_scene(tmp_path: Path) -> None:
    """--block 100000 on a 512 px scene warned of a block task of 1016 GiB: blocks end at the scene's edge."""
    from geoseg.io.rasters import inspect_scenes
    from geoseg.predict.plan import BlockPlan

    path = bright_boxes_scene(tmp_path / "s.tif", (48, 80), [(4, 4, 12, 12)])
    (info,), _ = inspect_scenes([path])

    class Meta:  # what block_bytes reads
        n_outputs = 3

    def plan(block: int, halo: int) -> BlockPlan:
        return BlockPlan(scene=info, block=block, watershed_halo=halo, cell=16, scale=2, tile_halo=4, multiple=16,
                         band_indexes=(1, 2, 3), cache=tmp_path)

    whole = block_bytes([plan(100_000, 256)], Meta())  # type: ignore[arg-type]
    assert whole == block_bytes([plan(96, 0)], Meta()) == 48 * 80 * (4 * 3 + 96)  # type: ignore[arg-type]
    assert block_bytes([plan(32, 0)], Meta()) == 32 * 32 * (4 * 3 + 96)  # type: ignore[arg-type]
