"""geoseg export: ONNX graphs verified against torch, the export directory, errors, TensorRT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO

from geoseg.backends import EXPORT_FILE, read_export_meta
from geoseg.cli.main import cli
from geoseg.errors import CheckpointError, DependencyError, OutputExistsError

pytestmark = pytest.mark.export

TINY = REPO / "tests" / "conf" / "tiny.yaml"
PIP = 'pip install -c constraints.txt "geoseg[gpu]"'
_CACHE: dict[str, object] = {}  # shared with test_backends, which imports these fixtures


def _has_trt_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means no TensorRT here
        return False
    import torch

    return torch.cuda.is_available()


requires_trt = pytest.mark.skipif(not _has_trt_gpu(), reason="needs tensorrt and a CUDA GPU")


@pytest.fixture(scope="session")
def trained_run(tiny_patches: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory from one short epoch of geoseg train on the tiny config."""
    if "run" not in _CACHE:
        from geoseg.config import load_config
        from geoseg.train import TrainConfig, train

        cfg = load_config(TrainConfig, TINY, {"data": {"samples_per_epoch": 4}})
        run = tmp_path_factory.mktemp("export_run") / "run"
        train(cfg, tiny_patches, run, epochs=1)
        _CACHE["run"] = run
    return _CACHE["run"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def onnx_export(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`geoseg export` of the trained run through the CLI: (export dir, stderr)."""
    if "export" not in _CACHE:
        out = tmp_path_factory.mktemp("export") / "onnx"
        res = CliRunner().invoke(cli, ["export", "--model", str(trained_run), "--out", str(out)])
        assert res.exit_code == 0, res.output
        _CACHE["export"] = (out, res.stderr)
    return _CACHE["export"]  # type: ignore[return-value]


def test_cli_export_writes_verified_onnx(onnx_export: tuple[Path, str]) -> None:
    out, stderr = onnx_export
    assert sorted(p.name for p in out.iterdir()) == ["ff.onnx", EXPORT_FILE, "pv.onnx"]
    assert [p.name for p in out.parent.iterdir()] == ["onnx"]  # no staging leftovers
    assert "max |difference| vs torch: pv" in stderr and f"wrote {out / 'pv.onnx'}" in stderr
    ver = json.loads((out / EXPORT_FILE).read_text())["verification"]["onnx"]
    assert ver["reference"] == "torch" and ver["tolerance"] == 1e-3
    assert set(ver["max_abs_diff"]) == {"pv", "ff"}
    assert all(0 <= d <= 1e-3 for d in ver["max_abs_diff"].values()), ver


def test_onnx_axes_are_dynamic(onnx_export: tuple[Path, str]) -> None:
    out, _ = onnx_export

    def dims(path: Path) -> list[str | int]:
        shape = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
        return [d.dim_param or d.dim_value for d in shape.dim]

    pv, ff = dims(out / "pv.onnx"), dims(out / "ff.onnx")
    assert isinstance(pv[0], str) and pv[1] == 3 and isinstance(pv[2], str) and isinstance(pv[3], str)
    assert isinstance(ff[0], str) and ff[1] == 3  # regions of any number of cells
    assert isinstance(ff[2], str) and isinstance(ff[3], str)


def test_export_json_has_what_predict_needs(onnx_export: tuple[Path, str], trained_run: Path) -> None:
    from geoseg.config import validate
    from geoseg.models.checkpoint import load_checkpoint
    from geoseg.models.config import ModelConfig

    out, _ = onnx_export
    meta = read_export_meta(out)
    ckpt = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    raw = json.loads((out / EXPORT_FILE).read_text())  # the keys on disk (docs/export.md)
    assert raw["format"] == "geoseg-export" and raw["format_version"] == 1 and raw["geoseg_version"]
    assert raw["bands"] == 3 and raw["halo"] == 4 and raw["exporter"]["pv"] in ("dynamo", "torchscript")
    assert meta.to_json() == {k: v for k, v in raw.items()}  # nothing lost on the way through ModelMeta
    assert meta.band_count == 3 and list(meta.classes) == ckpt["classes"]
    assert meta.band_stats.mean == tuple(ckpt["stats"]["mean"])
    assert (meta.scale, meta.cell, meta.tile_halo, meta.tile) == (2, 16, 4, 24)
    assert meta.multiple == 16 and meta.pv_multiple == 8 and meta.n_outputs == 3
    assert meta.budget == 0.5
    post = meta.postprocess
    assert post.seed_threshold == 0.5 and post.min_area == 4  # from tiny.yaml, not the defaults
    assert validate(ModelConfig, meta.model, "export").cell == 16
    assert meta.files == {"onnx": {"pv": "pv.onnx", "ff": "ff.onnx"}}
    assert meta.inputs == {"pv": "small", "ff": "tiles"}
    assert meta.outputs == {"pv": ["pv_logits", "utility"], "ff": ["ff_logits"]}
    assert isinstance(meta.opset, int)
    assert Path(meta.checkpoint) == (trained_run / "checkpoints" / "best.pt").resolve()
    assert meta.fp16 is False


@pytest.mark.parametrize(("thr", "every"), [(float("-inf"), True), (float("inf"), False), (0.25, None)])
def test_an_infinite_auto_threshold_survives_the_export_json(onnx_export: tuple[Path, str], thr: float,
                                                              every: bool | None) -> None:
    """-inf (FF paid on every validation cell) is not 'never calibrated' after a trip through JSON."""
    from geoseg.models.meta import ModelMeta
    from geoseg.predict.choose import _auto_rule

    meta = read_export_meta(onnx_export[0]).model_copy(update={"utility_threshold": thr})
    back = ModelMeta.from_mapping(json.loads(json.dumps(meta.to_json(), allow_nan=False)), "test")
    rule = _auto_rule(back)
    assert rule is not None
    count, why = rule
    util = np.array([-5.0, 0.0, 0.5, 5.0])
    assert count(4, util) == {True: 4, False: 0, None: 2}[every]
    assert ("every cell" in why) == bool(every)


def test_an_export_whose_checkpoint_changed_since_warns(trained_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Recalibrating (or retraining) the run after export left predict on the export's old threshold, silently."""
    import shutil

    import geoseg.backends.base as base
    from geoseg.models.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    out = tmp_path / "onnx"
    res = CliRunner().invoke(cli, ["export", "--model", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    warned: list[str] = []
    monkeypatch.setattr(base.log, "warning", warned.append)  # the CLI's logging setup is not caplog's
    base.open_backend(out, "onnx", device="cpu").close()
    assert warned == [] and base.stale_export(out) is None
    best = run / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    ckpt["model"]["utility_threshold"] = torch.tensor(0.123)  # as `geoseg calibrate` rewrites it
    save_checkpoint(best, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    base.open_backend(out, "onnx", device="cpu").close()
    assert len(warned) == 1, warned
    assert f"{out} was exported from {best.resolve()}, which has changed since" in warned[0]
    assert f"geoseg export --model {best.resolve()} --out {out} --overwrite" in warned[0]


def test_failed_export_leaves_nothing(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geoseg.export as ex
    import geoseg.export.onnx as ex_onnx

    def half_then_fail(module, example, path, graph, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        path.write_bytes(b"partial")
        if graph == "ff":
            raise ex.ExportError("ONNX export of the ff graph failed (simulated)")
        return "dynamo"

    monkeypatch.setattr(ex_onnx, "_export_graph", half_then_fail)
    out = tmp_path / "sub" / "exp"
    with pytest.raises(ex.ExportError, match="simulated"):
        ex.export_onnx(trained_run, out)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_the_opset_asked_for_is_written_or_refused(trained_run: Path, tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """--opset 13 wrote opset 18 with exit 0 (the dynamo exporter keeps its own opset where it
    cannot convert), and a failing TorchScript export dumped its IR graph to stdout."""
    for opset in (13, 99):
        out = tmp_path / f"o{opset}"
        res = CliRunner().invoke(cli, ["export", "--model", str(trained_run), "--out", str(out),
                                       "--opset", str(opset)])
        if res.exit_code == 0:  # the TorchScript exporter can write this model at 13
            assert opset == 13
            for graph in ("pv", "ff"):
                got = onnx.load(str(out / f"{graph}.onnx"), load_external_data=False).opset_import
                assert [o.version for o in got if o.domain in ("", "ai.onnx")] == [opset]
            assert read_export_meta(out).opset == opset
            continue
        lines = [ln for ln in res.output.splitlines() if ln.startswith("geoseg: error:")]
        assert len(lines) == 1 and "ONNX export" in lines[0], res.output
        assert "Please feel free" not in lines[0]
        assert not out.exists()
    assert "IR graph" not in capfd.readouterr().out


def test_tolerance_failure_names_graph_and_fix() -> None:
    from geoseg.export import ExportError
    from geoseg.export.verify import _check

    _check({"pv": 1e-6, "ff": 5e-4}, 1e-3, "ONNX Runtime", Path("o"))
    with pytest.raises(ExportError, match=r"ff 2\.00e-03 > tolerance 1e-03; nothing written to o") as err:
        _check({"pv": 1e-6, "ff": 2e-3}, 1e-3, "ONNX Runtime", Path("o"))
    assert "--tolerance" in str(err.value)
    with pytest.raises(ExportError, match="pv inf"):  # NaN or a shape mismatch never passes
        _check({"pv": float("inf"), "ff": 0.0}, 1e-3, "TensorRT", Path("o"))


def test_export_refuses_existing_out_and_own_run(trained_run: Path, tmp_path: Path) -> None:
    from geoseg.errors import ConfigError
    from geoseg.export import export_onnx

    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_onnx(trained_run, tmp_path / "taken")
    with pytest.raises(ConfigError, match="would replace the model"):
        export_onnx(trained_run, trained_run, overwrite=True)
    with pytest.raises(ConfigError, match="--tolerance must be > 0"):
        export_onnx(trained_run, tmp_path / "new", tolerance=0)


def test_cli_export_corrupt_checkpoint_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip archive" * 10)
    out = tmp_path / "exp"
    res = CliRunner().invoke(cli, ["export", "--model", str(bad), "--out", str(out)])
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("geoseg: error: ")
    assert str(bad) in res.stderr and "not a loadable checkpoint" in res.stderr
    assert not out.exists()


def test_cli_export_missing_model_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "does not exist" in res.stderr


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def test_export_tensorrt_without_tensorrt_names_pip(no_tensorrt: None, tmp_path: Path) -> None:
    from geoseg.export.tensorrt import export_tensorrt

    with pytest.raises(DependencyError) as err:
        export_tensorrt(tmp_path / "onnx", tmp_path / "trt")
    assert PIP in str(err.value) and "tensorrt is not installed" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "trt").exists()


def test_cli_export_tensorrt_without_tensorrt(no_tensorrt: None, trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "trt"
    res = CliRunner().invoke(cli, ["export", "--model", str(trained_run), "--format", "tensorrt", "--out", str(out)])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and PIP in res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_onnx_dir_is_not_a_model_for_onnx_export(onnx_export: tuple[Path, str], tmp_path: Path) -> None:
    from geoseg.errors import ConfigError
    from geoseg.export import export_onnx

    with pytest.raises(ConfigError, match="already an export directory"):
        export_onnx(onnx_export[0], tmp_path / "x")


def test_read_export_meta_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="run `geoseg export"):
        read_export_meta(tmp_path)
    (tmp_path / EXPORT_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        read_export_meta(tmp_path)
    (tmp_path / EXPORT_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a geoseg export"):
        read_export_meta(tmp_path)
    (tmp_path / EXPORT_FILE).write_text(json.dumps({"format": "geoseg-export", "format_version": 99}))
    with pytest.raises(CheckpointError, match="upgrade geoseg"):
        read_export_meta(tmp_path)


@pytest.mark.slow
def test_fp16_export_within_fp16_tolerance(trained_run: Path, tmp_path: Path) -> None:
    from geoseg.backends import open_backend
    from geoseg.export import FP16_TOLERANCE, export_onnx

    rep = export_onnx(trained_run, tmp_path / "fp16", fp16=True)
    assert rep.fp16 and rep.tolerance == FP16_TOLERANCE
    assert all(d <= FP16_TOLERANCE for d in rep.max_abs_diff.values())
    assert max(rep.max_abs_diff.values()) > 1e-6  # it really computes in half precision
    with open_backend(tmp_path / "fp16", "onnx", "cpu") as b:
        out = b.ff(np.zeros((2, 3, 24, 24), np.float32))
    assert out.dtype == np.float32 and out.shape == (2, 3, 16, 16)


@pytest.mark.gpu
@requires_trt
def test_tensorrt_engines_match_onnxruntime(onnx_export: tuple[Path, str], tmp_path: Path) -> None:
    from geoseg.backends import open_backend
    from geoseg.export.tensorrt import export_tensorrt

    rep = export_tensorrt(onnx_export[0], tmp_path / "trt", fp16=False)
    assert rep.reference == "onnxruntime" and all(d <= 1e-3 for d in rep.max_abs_diff.values())
    meta = read_export_meta(tmp_path / "trt")
    assert meta.files["tensorrt"] == {"pv": "pv.engine", "ff": "ff.engine"}
    tiles = np.random.default_rng(3).standard_normal((40, 3, 24, 24), dtype=np.float32)
    with open_backend(tmp_path / "trt", "tensorrt") as trt, open_backend(tmp_path / "trt", "onnx", "cpu") as ort:
        np.testing.assert_allclose(trt.ff(tiles), ort.ff(tiles), atol=1e-3, rtol=0)
    rep16 = export_tensorrt(onnx_export[0], tmp_path / "trt16", fp16=True)
    assert all(d <= 5e-2 for d in rep16.max_abs_diff.values())


@pytest.mark.slow
def test_export_writes_nothing_outside_out(trained_run: Path, tmp_path: Path) -> None:
    # onnxruntime's telemetry once wrote a device id under ~/.cache and a file in TMPDIR
    import os
    import subprocess
    import sys

    home, tmp, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    for d in (home, tmp, cwd):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), TMPDIR=str(tmp))
    geoseg_cmd = Path(sys.executable).parent / "geoseg"
    res = subprocess.run([str(geoseg_cmd), "export", "--model", str(trained_run), "--out", str(tmp_path / "x")],
                         env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and p.relative_to(tmp_path).parts[0] != "x"]
    assert outside == []
