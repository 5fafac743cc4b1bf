"""Backends: torch and ONNX Runtime give the same maps; dispatch and its one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import onnx_export, requires_trt, trained_run  # noqa: F401 - shared session fixtures

from geoseg.backends import BACKENDS, Backend, open_backend
from geoseg.errors import CheckpointError, ConfigError, DependencyError

pytestmark = pytest.mark.export
TOL = 1e-3


@pytest.fixture(scope="module")
def pair(onnx_export: tuple[Path, str], trained_run: Path):  # noqa: F811
    """(torch backend on the run, onnx backend on its export), both on the CPU, small FF chunks."""
    with open_backend(trained_run, "torch", "cpu", ff_batch=16) as t, \
            open_backend(onnx_export[0], "onnx", "cpu", ff_batch=16) as o:
        yield t, o


def test_onnx_equals_torch_on_pv_and_ff(pair: tuple[Backend, Backend]) -> None:
    tb, ob = pair
    assert (tb.name, ob.name) == ("torch", "onnx") and tb.device == ob.device == "cpu"
    rng = np.random.default_rng(7)
    for shape in [(1, 3, 24, 40), (3, 3, 8, 16)]:  # sizes the export's own check did not use
        small = rng.standard_normal(shape, dtype=np.float32)
        (tl, tu), (ol, ou) = tb.pv(small), ob.pv(small)
        assert tl.shape == ol.shape == (shape[0], 3, *shape[2:]) and tl.dtype == np.float32
        assert tu.shape == ou.shape == (shape[0], shape[2] // 8, shape[3] // 8)  # cell 16 / scale 2
        np.testing.assert_allclose(ol, tl, atol=TOL, rtol=0)
        np.testing.assert_allclose(ou, tu, atol=TOL, rtol=0)
    tiles = rng.standard_normal((37, 3, 24, 24), dtype=np.float32)  # 3 chunks of <= 16
    tf, of = tb.ff(tiles), ob.ff(tiles)
    assert tf.shape == of.shape == (37, 3, 16, 16)
    np.testing.assert_allclose(of, tf, atol=TOL, rtol=0)
    regions = rng.standard_normal((5, 3, 40, 56), dtype=np.float32)  # 2x3 cells + halo, 2 chunks
    tf, of = tb.ff(regions), ob.ff(regions)
    assert tf.shape == of.shape == (5, 3, 32, 48) and tb.region_side == ob.region_side == 8
    np.testing.assert_allclose(of, tf, atol=TOL, rtol=0)


def test_routed_logits_assembled_by_hand_match(pair: tuple[Backend, Backend]) -> None:
    """pad -> downsample -> pv -> top-K -> regions -> ff -> fuse, once per backend, and eager forward."""
    from geoseg.models.cells import grid_shape
    from geoseg.models.regions import run_regions
    from geoseg.models.router import k_for_budget, mask_to_cells, topk_mask

    tb, ob = pair
    model = tb.model
    x = torch.from_numpy(np.random.default_rng(8).standard_normal((1, 3, 40, 56), dtype=np.float32))
    xp = model.pad(x)
    small = model.downsample(xp).numpy()
    ih, iw = grid_shape(40, 56, 16)
    fused, chosen = [], []
    for backend in (tb, ob):
        pv_logits, utility = backend.pv(small)
        gh, gw = utility.shape[-2:]
        allowed = torch.zeros(1, gh, gw, dtype=torch.bool)
        allowed[:, :ih, :iw] = True
        mask = topk_mask(torch.from_numpy(utility).reshape(1, -1), k_for_budget(ih * iw, 0.5),
                         allowed.reshape(1, -1)).reshape(1, gh, gw)
        cells = mask_to_cells(mask)
        ff_logits = run_regions(lambda t, b=backend: torch.from_numpy(b.ff(t.numpy())), xp, cells, 16, 4)
        fused.append(model.fuse(torch.from_numpy(pv_logits), cells, ff_logits, (40, 56)))
        chosen.append(cells)
    assert torch.equal(chosen[0], chosen[1]) and len(chosen[0]) == k_for_budget(ih * iw, 0.5)
    assert fused[0].shape == (1, 3, 40, 56)
    torch.testing.assert_close(fused[1], fused[0], atol=TOL, rtol=0)
    with torch.inference_mode():
        eager = model(x, budget=0.5)
    assert torch.equal(eager.cells, chosen[0])
    torch.testing.assert_close(fused[0], eager.logits, atol=1e-5, rtol=0)


def test_meta_is_the_same_for_both(pair: tuple[Backend, Backend]) -> None:
    tb, ob = pair
    for key in ("band_count", "stats", "classes", "scale", "cell", "tile_halo", "tile", "multiple",
                "pv_multiple", "pv_stride", "n_outputs", "budget", "postprocess", "model", "checkpoint"):
        assert getattr(tb.meta, key) == getattr(ob.meta, key), key
    assert tb.source.name == "best.pt" and ob.source.name == "geoseg-export.json"


def test_shapes_are_checked_and_empty_ff_works(pair: tuple[Backend, Backend]) -> None:
    for b in pair:
        assert b.ff(np.zeros((0, 3, 24, 24), np.float32)).shape == (0, 3, 16, 16)
        with pytest.raises(ValueError, match="3 bands"):
            b.pv(np.zeros((1, 4, 8, 8), np.float32))
        with pytest.raises(ValueError, match="multiples of 8"):
            b.pv(np.zeros((1, 3, 12, 8), np.float32))
        with pytest.raises(ValueError, match="24x24"):
            b.ff(np.zeros((2, 3, 16, 16), np.float32))
        assert b.ms_per_cell(4, repeats=1) > 0


def test_onnx_session_does_not_spin(pair: tuple[Backend, Backend]) -> None:
    from geoseg.backends.onnx_backend import session_options

    so = session_options(threads=3)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert pair[1].providers[-1] == "CPUExecutionProvider"


def test_bad_backend_name_lists_valid_ones(trained_run: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="unknown backend 'tflite'; valid backends: torch, onnx, tensorrt"):
        open_backend(trained_run, "tflite")
    assert list(BACKENDS) == ["torch", "onnx", "tensorrt"]
    with pytest.raises(ConfigError, match="valid devices"):
        open_backend(trained_run, "torch", "tpu")


@pytest.mark.parametrize("backend", ["onnx", "tensorrt"])
def test_run_dir_for_exported_backend_says_export_first(trained_run: Path, backend: str) -> None:  # noqa: F811
    for model in (trained_run, trained_run / "checkpoints" / "best.pt"):
        with pytest.raises(ConfigError, match="run `geoseg export --model") as err:
            open_backend(model, backend)
        assert "\n" not in str(err.value) and str(model) in str(err.value)


def test_export_dir_for_torch_names_the_checkpoint(onnx_export: tuple[Path, str], trained_run: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="best.pt"):
        open_backend(onnx_export[0], "torch")
    with open_backend(onnx_export[0] / "geoseg-export.json", "onnx", "cpu") as b:  # the JSON names the dir
        assert b.meta.cell == 16


def test_missing_model_and_missing_graph(onnx_export: tuple[Path, str], tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(CheckpointError, match="does not exist"):
        open_backend(tmp_path / "nope", "onnx")
    import shutil

    copy = tmp_path / "exp"
    shutil.copytree(onnx_export[0], copy)
    (copy / "ff.onnx").unlink()
    with pytest.raises(CheckpointError, match="no onnx ff graph"):
        open_backend(copy, "onnx", "cpu")
    (copy / "ff.onnx").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load"):
        open_backend(copy, "onnx", "cpu")


def test_onnx_cuda_without_cuda_provider(onnx_export: tuple[Path, str]) -> None:  # noqa: F811
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(DependencyError, match="onnxruntime-gpu"):
        open_backend(onnx_export[0], "onnx", "cuda")


def test_tensorrt_backend_errors_without_gpu(onnx_export: tuple[Path, str],  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="CUDA GPU only"):
        open_backend(onnx_export[0], "tensorrt", "cpu")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DependencyError, match=r'pip install -c constraints.txt "geoseg\[gpu\]"'):
        open_backend(onnx_export[0], "tensorrt")


def test_trt_profiles_cover_predict_defaults() -> None:
    from geoseg.export.tensorrt import TrtProfiles
    from geoseg.models.meta import ModelMeta

    meta = ModelMeta.model_validate({"bands": 4, "stats": {"mean": [0.0] * 4, "std": [1.0] * 4},
                                     "classes": ["object"], "pv_multiple": 32, "multiple": 128,
                                     "scale": 4, "cell": 64, "halo": 16, "tile": 96})
    lo, opt, hi = TrtProfiles().pv(meta)
    assert lo == (1, 4, 32, 32) and opt == (1, 4, 576, 576) and hi == (2, 4, 1024, 1024)
    assert TrtProfiles().ff(meta) == ((1, 4, 96, 96), (32, 4, 96, 96), (128, 4, 544, 544))
    assert TrtProfiles(ff_max_cells=1).ff(meta)[2] == (128, 4, 96, 96)
    assert TrtProfiles(pv_max_side=100).pv(meta)[1][2] == 96  # opt clipped to a multiple <= max


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_backend_on_cuda_matches_cpu(trained_run: Path) -> None:  # noqa: F811
    tiles = np.random.default_rng(1).standard_normal((5, 3, 24, 24), dtype=np.float32)
    with open_backend(trained_run, "torch", "cuda") as g, open_backend(trained_run, "torch", "cpu") as c:
        np.testing.assert_allclose(g.ff(tiles), c.ff(tiles), atol=TOL, rtol=0)


def test_torch_precision_option_is_checked(trained_run: Path) -> None:  # noqa: F811
    from geoseg.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        open_backend(trained_run, "torch", "cpu", precision="fp8")
    tiles = np.random.default_rng(2).standard_normal((2, 3, 24, 24), dtype=np.float32)
    with open_backend(trained_run, "torch", "cpu", precision="fp16") as half, \
            open_backend(trained_run, "torch", "cpu") as full:  # fp16 is CUDA-only: the CPU keeps fp32
        np.testing.assert_array_equal(half.ff(tiles), full.ff(tiles))


def test_cpu_backend_runs_channels_last_with_the_same_maps(trained_run: Path) -> None:  # noqa: F811
    """Predict's CPU model is channels-last (faster convolutions); the maps equal those of NCHW, C-ordered."""
    from geoseg.backends.torch_backend import TorchBackend
    from geoseg.models.checkpoint import load_model

    fast = TorchBackend(trained_run, "cpu")
    net, meta = load_model(trained_run)
    plain = TorchBackend.from_model(net, meta, "cpu")  # training's and export's wrapper: model left as it is
    assert fast.channels_last and not plain.channels_last
    assert next(p for p in fast.model.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    rng = np.random.default_rng(3)
    tiles = rng.standard_normal((3, 3, 40, 72), dtype=np.float32)
    small = rng.standard_normal((1, 3, 32, 48), dtype=np.float32)
    got, want = fast.ff(tiles), plain.ff(tiles)
    assert got.flags.c_contiguous and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    for a, b in zip(fast.pv(small), plain.pv(small), strict=True):
        assert a.flags.c_contiguous
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
