"""Mask R-CNN to ONNX: the detect graph, its parity with torch, predict --backend onnx, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, bright_boxes_scene

from geoseg.cli.main import cli
from geoseg.config import load_config
from geoseg.errors import ConfigError, GeoSegWarning
from geoseg.models.checkpoint import save_checkpoint
from geoseg.models.maskrcnn import MaskRCNNModel
from geoseg.predict import predict
from geoseg.predict.config import PredictConfig
from geoseg.train import TrainConfig

TINY = REPO / "tests" / "conf" / "tiny-maskrcnn.yaml"
BOXES = [(10, 10, 30, 30), (50, 40, 80, 70), (100, 5, 140, 25), (120, 60, 150, 90)]


def _checkpoint(path: Path, cls_bias: float = 3.0, cls_scale: float = 1.0) -> Path:
    """A tiny Mask R-CNN (random backbone) whose heads are made confident, so it detects.

    The class logit of ``building`` gets ``cls_bias`` (scores ~0.95 for 3, varying with the
    features, so no ties), and the mask logits +4 (box-filling masks far from the 0.5
    threshold): every window has detections, and torch and ONNX Runtime must agree on them.
    ``cls_scale`` multiplies the class weights (how much the score depends on the image).
    """
    cfg = load_config(TrainConfig, TINY, {"model": {"classes": ["building"]}})
    torch.manual_seed(0)
    model = MaskRCNNModel.from_config(cfg.model)  # type: ignore[arg-type]
    heads = model.net.roi_heads
    with torch.no_grad():
        heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, cls_bias]))
        heads.box_predictor.cls_score.weight.mul_(cls_scale)
        heads.mask_predictor.mask_fcn_logits.bias.fill_(4.0)
        heads.mask_predictor.mask_fcn_logits.weight.mul_(0.1)
    save_checkpoint(path / "checkpoints" / "best.pt", {
        "config": cfg.model_dump(mode="json"), "classes": ["building"], "model": model.state_dict(),
        "ema": None, "stats": {"bands": 3, "dtype": "uint8", "mean": [100.0] * 3, "std": [60.0] * 3}})
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(run, export directory, what `geoseg export` printed)."""
    root = tmp_path_factory.mktemp("mrcnn-export")
    run = _checkpoint(root / "run")
    res = CliRunner().invoke(cli, ["export", "--model", str(run), "--out", str(root / "exp")])
    assert res.exit_code == 0, res.output
    return run, root / "exp", res.output


def test_export_writes_a_verified_detect_graph(exported: tuple[Path, Path, str]) -> None:
    run, exp, output = exported
    assert sorted(p.name for p in exp.iterdir()) == ["detect.onnx", "geoseg-export.json"]
    info = json.loads((exp / "geoseg-export.json").read_text())
    assert info["arch"] == "maskrcnn" and info["files"] == {"onnx": {"detect": "detect.onnx"}}
    assert info["inputs"] == {"detect": "image"} and info["outputs"]["detect"] == ["boxes", "scores", "labels", "masks"]
    assert info["exporter"] == {"detect": "torchscript"} and info["opset"] >= 11 and info["fp16"] is False
    assert info["stats"]["mean"] == [100.0] * 3  # predict normalises with these, as with torch
    ver = info["verification"]["onnx"]
    assert ver["reference"] == "torch" and ver["detections"] > 0, ver
    assert ver["max_abs_diff"]["scores"] <= 1e-3 and ver["max_abs_diff"]["masks"] <= 1e-3
    assert ver["max_abs_diff"]["boxes"] <= 1e-2
    assert "over" in output and "detections" in output and "boxes" in output and "detect.onnx" in output


@pytest.mark.parametrize("shape", [(77, 201), (256, 64)])
def test_onnx_runtime_equals_torch_on_other_sizes(exported: tuple[Path, Path, str], shape: tuple[int, int]) -> None:
    """The graph's height and width are dynamic: windows of sizes it was neither traced nor verified on."""
    from geoseg.backends import open_backend

    run, exp, _ = exported
    x = np.random.default_rng(3).normal(-0.5, 0.5, (1, 3, *shape)).astype(np.float32)
    x[:, :, 20:50, 10:40] += 2
    with open_backend(run, "torch", "cpu") as ref, open_backend(exp, "onnx", "cpu") as onnx:
        (a,), (b,) = ref.detect(x), onnx.detect(x)  # type: ignore[attr-defined]
    assert len(a["scores"]) == len(b["scores"]) > 0
    assert torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(b["boxes"], a["boxes"], rtol=0, atol=1e-2)
    torch.testing.assert_close(b["scores"], a["scores"], rtol=0, atol=1e-3)
    torch.testing.assert_close(b["masks"], a["masks"], rtol=0, atol=1e-3)


def test_detections_are_not_frozen_by_the_trace(tmp_path: Path) -> None:
    """A model that finds nothing in the window the graph is traced on, but something elsewhere.

    The trace must keep the data-dependent branches (torchvision's batched_nms with no boxes):
    ONNX Runtime then agrees with torch on both windows.
    """
    from geoseg.backends import open_backend
    from geoseg.export.maskrcnn import TRACE_SIDE

    run = _checkpoint(tmp_path / "run", cls_bias=-2.5, cls_scale=5.0)  # best scores 0.037 and 0.083
    res = CliRunner().invoke(cli, ["export", "--model", str(run), "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    traced = torch.randn(1, 3, TRACE_SIDE, TRACE_SIDE, generator=torch.Generator().manual_seed(0)).numpy()
    bright = np.full((1, 3, 96, 96), 5.0, dtype=np.float32)
    with open_backend(run, "torch", "cpu") as ref, open_backend(tmp_path / "exp", "onnx", "cpu") as onnx:
        for x, found in ((traced, False), (bright, True)):
            (a,), (b,) = ref.detect(x), onnx.detect(x)  # type: ignore[attr-defined]
            assert (len(a["scores"]) > 0) == found and len(b["scores"]) == len(a["scores"])
            torch.testing.assert_close(b["scores"], a["scores"], rtol=0, atol=1e-3)


def test_predict_backend_onnx_equals_torch(exported: tuple[Path, Path, str], tmp_path: Path) -> None:
    run, exp, _ = exported
    scene = bright_boxes_scene(tmp_path / "s.tif", (96, 160), BOXES, seed=5)
    got = {}
    for backend, model in (("torch", run), ("onnx", exp)):
        out = tmp_path / f"{backend}.gpkg"
        summary = predict([scene], model, out, PredictConfig(backend=backend, block=64, watershed_halo=32,
                                                             min_area=0, simplify=0, device="cpu"), scheduler="sync")
        assert summary.blocks == 6 and "Mask R-CNN: no routing" in summary.routing  # the same block plan
        lines = summary.lines()  # no cells, no FF: the summary does not speak of them
        assert lines[0] == "scenes: 1, blocks: 6 (resumed: detections 0)"
        assert lines[1] == "Mask R-CNN: no routing, detections on every block"
        got[backend] = gpd.read_file(out)
    a, b = got["torch"], got["onnx"]
    assert len(a) == len(b) > 0
    for geom, score in zip(a.geometry, a["score"], strict=True):  # each torch polygon has an ONNX twin
        iou = b.geometry.intersection(geom).area / b.geometry.union(geom).area
        k = int(np.argmax(iou.to_numpy()))
        assert iou.iloc[k] > 0.99 and abs(b["score"].iloc[k] - score) < 1e-3
    assert set(b["class"]) == {"building"} and b.crs == a.crs


def test_refusals_are_one_line(exported: tuple[Path, Path, str], tmp_path: Path) -> None:
    run, exp, _ = exported
    scene = bright_boxes_scene(tmp_path / "s.tif", (32, 32), [(4, 4, 12, 12)])
    runner = CliRunner()

    def one_line_error(*args: str) -> str:
        res = runner.invoke(cli, list(args))
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("geoseg: error:"), res.output
        return lines[0]

    line = one_line_error("export", "--model", str(run), "--format", "tensorrt", "--out", str(tmp_path / "t"))
    assert "Mask R-CNN" in line and "ONNX only" in line
    line = one_line_error("export", "--model", str(exp), "--format", "tensorrt", "--out", str(tmp_path / "t"))
    assert "Mask R-CNN" in line and not (tmp_path / "t").exists()
    assert "--fp16" in one_line_error("export", "--model", str(run), "--fp16", "--out", str(tmp_path / "f"))
    line = one_line_error("predict", str(scene), "--model", str(exp), "--backend", "tensorrt",
                          "--out", str(tmp_path / "o.gpkg"))
    assert "Mask R-CNN" in line and "TensorRT" in line and "--backend onnx" in line
    line = one_line_error("predict", str(scene), "--model", str(run), "--backend", "onnx",
                          "--out", str(tmp_path / "o.gpkg"))
    assert "geoseg export" in line  # a run directory: export it first
    line = one_line_error("predict", str(scene), "--model", str(exp), "--backend", "onnx",
                          "--prob-out", str(tmp_path / "p.tif"), "--out", str(tmp_path / "o.gpkg"))
    assert "--prob-out" in line and "probability map" in line and not (tmp_path / "p.tif").exists()


def test_routing_options_do_not_apply_said_once(exported: tuple[Path, Path, str], tmp_path: Path) -> None:
    run, _, _ = exported
    scene = bright_boxes_scene(tmp_path / "s.tif", (32, 32), [(4, 4, 12, 12)])
    cfg = PredictConfig(budget=0.5, ff_batch=8, tta="flip", device="cpu", min_area=0)
    with pytest.warns(GeoSegWarning) as record:
        predict([scene], run, tmp_path / "o.gpkg", cfg, scheduler="sync")
    messages = [str(w.message) for w in record if issubclass(w.category, GeoSegWarning)]
    assert messages == ["--budget, --ff-batch, --tta do not apply to a Mask R-CNN model (no routing, no FF, "
                        "no dense maps to average): ignored"]
    with pytest.warns(GeoSegWarning, match=r"^--deadline-ms does not apply"):
        predict([scene], run, tmp_path / "o2.gpkg", PredictConfig(deadline_ms=50, device="cpu"), scheduler="sync")
    predict([scene], run, tmp_path / "o3.gpkg", PredictConfig(device="cpu"), scheduler="sync")  # no warning


@pytest.mark.slow
def test_dynamo_exporter_fails_on_torchvision_nms(tmp_path: Path) -> None:
    """Pins why the TorchScript exporter is used: torch.export (dynamo) cannot trace torchvision's batched_nms.

    ~30 s. If a newer torch/torchvision exports it, this fails: then try dynamo for Mask R-CNN.
    """
    from geoseg.export import ExportError
    from geoseg.export.maskrcnn import export_detect
    from geoseg.models.checkpoint import load_model

    model, _ = load_model(_checkpoint(tmp_path / "run"))
    with pytest.raises(ExportError, match="dynamo ONNX exporter cannot export Mask R-CNN "
                                          r"\(GuardOnDataDependentSymNode: Could not guard on data-dependent"):
        export_detect(model, tmp_path / "d.onnx", 3, None, "dynamo")
    assert not (tmp_path / "d.onnx").exists()
    assert export_detect(model, tmp_path / "d11.onnx", 3, 11, "auto") == "torchscript"  # opset 11 too


def test_export_api_refuses_fp16_before_work(tmp_path: Path) -> None:
    from geoseg.export.maskrcnn import export_maskrcnn_onnx

    with pytest.raises(ConfigError, match="--fp16 is not supported for a Mask R-CNN export"):
        export_maskrcnn_onnx(tmp_path / "nowhere", tmp_path / "e", fp16=True)


def test_differing_counts_or_classes_are_a_mismatch_not_a_tolerance() -> None:
    from geoseg.export.maskrcnn import compare_detections

    def dets(n: int, label: int = 1, shift: float = 0.0) -> dict[str, torch.Tensor]:
        return {"boxes": torch.arange(4 * n, dtype=torch.float32).reshape(n, 4) + shift,
                "scores": torch.linspace(0.9, 0.5, n), "labels": torch.full((n,), label),
                "masks": torch.zeros(n, 1, 8, 8)}

    class Fake:
        def __init__(self, *per_window: dict[str, torch.Tensor]) -> None:
            self.out = iter(per_window)

        def detect(self, x: np.ndarray) -> list[dict[str, torch.Tensor]]:
            return [next(self.out)]

    windows = [np.zeros((1, 3, 64, 64), np.float32), np.zeros((1, 3, 96, 80), np.float32)]
    diffs, n, mismatch = compare_detections(Fake(dets(2), dets(3)), Fake(dets(2, shift=0.25), dets(3)), windows)
    assert mismatch is None and n == 5 and diffs["boxes"] == 0.25 and diffs["scores"] == 0.0
    _, n, mismatch = compare_detections(Fake(dets(2), dets(3)), Fake(dets(2), dets(1)), windows)
    assert n == 2 and mismatch == "1 detections against torch's 3 on a 96x80 window"
    _, _, mismatch = compare_detections(Fake(dets(2)), Fake(dets(2, label=2)), windows[:1])
    assert mismatch == "other classes than torch's for the same ranks on a 64x64 window"


def test_export_refuses_a_count_mismatch_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geoseg.export.maskrcnn as mx

    monkeypatch.setattr(mx, "compare_detections", lambda *a: ({"boxes": 0.0, "scores": 0.0, "masks": 0.0}, 0,
                                                               "1 detections against torch's 3 on a 96x80 window"))
    run = _checkpoint(tmp_path / "run")
    res = CliRunner().invoke(cli, ["export", "--model", str(run), "--out", str(tmp_path / "exp")])
    assert res.exit_code != 0 and not (tmp_path / "exp").exists()
    msg = res.output.strip().splitlines()[-1]
    assert "1 detections against torch's 3" in msg and "--tolerance does not relax" in msg, res.output
