"""The Python part of `bench/gpu_check.sh`: everything that needs CUDA, one JSON report.

Sections (each ``{"status": "ok" | "skipped" | "failed", "reason": ..., figures}``; a
missing GPU, package or time budget skips a section with its reason, never fails the run):

- ``env``: torch, CUDA, GPU name, Triton, ONNX Runtime providers, TensorRT import;
- ``train_amp``: `geoseg train` of the GPU preset (random init, AMP, kornia on the
  device) for a few epochs on generated boxes: seconds per step, samples/s, finite loss;
- ``kornia``: the batch augmentation (`GpuAugment`) on a CUDA batch, ms per batch;
- ``triton``: the compiled region/cell gather and scatter against the torch reference
  (equality) and their times;
- ``ort_cuda``: `geoseg export` to ONNX, then the FF/PV graphs in ONNX Runtime's CUDA
  provider against torch;
- ``tensorrt``: FP16 engines built and verified (`geoseg export --format tensorrt`);
- ``predict``: km²/s at 0.3 m on a generated sparse scene: routed auto and 0.25 and the
  plain dense floor (torch FP32), routed 0.25 in torch FP16 + torch.compile, and
  TensorRT FP16, with F1@0.5 of each against the truth.

    python bench/gpu_check.py --out report.json [--budget-s 420] [--side 8192]
    python bench/gpu_check.py --out dry.json --cpu    # the same code on the CPU, toy sizes

``--cpu`` is a dry run for a machine without a GPU: every section that does not need
CUDA itself (all but ``triton`` and ``tensorrt``) runs its code on the CPU at toy sizes, so
a broken call is found before a GPU is lent (``tests/test_gpu_check.py``). Its figures
mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

Section = dict[str, Any]


class Check:
    """Runs sections under one time budget and collects the report."""

    def __init__(self, budget_s: float, work: Path, out: Path, only: set[str] | None = None,
                 cpu: bool = False) -> None:
        self.t0, self.budget_s, self.work, self.out = time.perf_counter(), budget_s, work, out
        self.only = only
        self.cpu = cpu
        self.device = "cpu" if cpu else "cuda"
        self.report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       "budget_s": budget_s, "sections": {}}
        if cpu:
            self.report["dry_run"] = "--cpu: the sections' code on the CPU at toy sizes; the figures mean nothing"
        self.state: dict[str, Any] = {}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def run(self, name: str, fn: Callable[[], Section], needs: tuple[str, ...] = (), min_s: float = 20) -> None:
        sections = self.report["sections"]
        missing = [n for n in needs if sections.get(n, {}).get("status") != "ok"]
        if self.only is not None and name not in self.only:
            sections[name] = {"status": "skipped", "reason": "not in --sections"}
        elif missing:
            sections[name] = {"status": "skipped", "reason": f"needs {', '.join(missing)}: "
                              + "; ".join(sections.get(n, {}).get("reason", "not run") for n in missing)}
        elif self.left() < min_s:
            sections[name] = {"status": "skipped", "reason": f"time budget spent ({self.left():.0f} s left)"}
        else:
            t0 = time.perf_counter()
            sections[name] = {"status": "running"}
            try:
                sections[name] = {"status": "ok", **fn()}
            except Skip as why:
                sections[name] = {"status": "skipped", "reason": str(why)}
            except Exception as err:  # noqa: BLE001 - a failed section is reported, the run goes on
                sections[name] = {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:500],
                                  "traceback": traceback.format_exc()[-2000:]}
            sections[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {sections[name]['status']} {sections[name].get('reason', '')}", flush=True)
        self.write()

    def partial(self, name: str, figures: Section) -> None:
        """Figures of a section still running, written now (the run may be cut short before it ends)."""
        self.report["sections"][name] = {"status": "running", **figures}
        self.write()

    def write(self) -> None:
        """The report so far (rewritten after every section: a run cut short keeps what it measured)."""
        self.report["seconds"] = round(time.perf_counter() - self.t0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.report, indent=2, default=str))
        tmp.replace(self.out)


class Skip(Exception):
    """A section cannot run here (its reason is the message)."""


def env(chk: Check) -> Section:
    import torch

    from geoseg.models.triton_cells import available as triton_available

    out: Section = {"python": platform.python_version(), "torch": torch.__version__,
                    "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                    "triton": triton_available()}
    try:
        from geoseg.backends.onnx_backend import import_onnxruntime

        ort = import_onnxruntime()
        out["onnxruntime"], out["ort_providers"] = ort.__version__, ort.get_available_providers()
    except Exception as err:  # noqa: BLE001
        out["onnxruntime"] = f"unavailable: {err}"
    try:
        from geoseg.backends.tensorrt_backend import import_tensorrt

        out["tensorrt"] = str(import_tensorrt().__version__)
    except Exception as err:  # noqa: BLE001
        out["tensorrt"] = f"unavailable: {err}"
    if chk.cpu:
        return out
    if not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA GPU; "
                   f"onnxruntime: {out.get('onnxruntime')}; tensorrt: {out['tensorrt']}")
    out["gpu"] = torch.cuda.get_device_name()
    return out


def train_amp(chk: Check) -> Section:
    import csv

    from predict import prepare_data

    from geoseg.config import load_config
    from geoseg.train import TrainConfig, train

    patches = prepare_data(chk.work)
    epochs = 3
    data: dict[str, Any] = {"samples_per_epoch": 128, "workers": 4}
    if chk.cpu:  # toy sizes: the code path, not the figures
        epochs, data = 2, {"samples_per_epoch": 4, "batch_size": 2, "crop": 128, "workers": 0}
    cfg = load_config(TrainConfig, REPO / "configs" / "buildings-gpu.yaml", {
        "device": chk.device, "data": data,
        "val": {"every": epochs}, "model": {"pv": {"encoder_weights": None}, "ff": {"encoder_weights": None}}})
    res = train(cfg, patches, chk.work / "run", epochs=epochs, overwrite=True)
    with (chk.work / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    bs, spe = cfg.data.batch_size, cfg.data.samples_per_epoch
    assert isinstance(bs, int) and isinstance(spe, int), "the GPU preset's batch and epoch are numbers"
    steps = spe // bs
    sec = [float(r["seconds"]) for r in rows[1:-1] or rows[-1:]]  # not the first (warm-up) nor the validated one
    loss = float(rows[-1]["loss"])
    if loss != loss:
        raise RuntimeError("the training loss is NaN under AMP")
    chk.state.setdefault("run", chk.work / "run")
    return {"amp": cfg.optim.amp, "kornia_on_device": cfg.augment.gpu, "batch": cfg.data.batch_size,
            "crop": cfg.data.crop, "s_per_step": sum(sec) / len(sec) / steps,
            "samples_per_s": steps * bs * len(sec) / sum(sec), "final_loss": loss,
            "val": {k: v for k, v in res.history[-1].items() if k in ("ap", "ap50", "f1", "auto_share")}}


def predict_model(chk: Check, epochs: int) -> Section:
    """bench/predict.py's model: the CPU preset on its generated boxes, trained here on the GPU."""
    from predict import prepare_model

    t0 = time.perf_counter()
    (chk.work / "preset").mkdir(parents=True, exist_ok=True)
    prepare_model(chk.work / "preset", epochs)
    chk.state["run"] = chk.work / "preset" / "run"
    return {"epochs": epochs, "train_s": time.perf_counter() - t0}


def _cuda_ms(fn: Callable[[], object], repeats: int = 20) -> float:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1000 / repeats


def kornia(chk: Check) -> Section:
    import torch

    from geoseg.train.augment import AugmentConfig, GpuAugment

    n, side = (2, 128) if chk.cpu else (16, 512)
    aug = GpuAugment(AugmentConfig(d4=1.0, brightness_contrast_gamma=0.5, blur=0.2, noise=0.2)).to(chk.device)
    x = torch.randn(n, 3, side, side, device=chk.device)
    tg = {"extent": torch.rand(n, side, side, device=chk.device) > 0.5,
          "valid": torch.ones(n, side, side, dtype=torch.bool, device=chk.device)}
    img, out = aug(x, tg)
    assert img.device == x.device and out["extent"].dtype == torch.bool
    return {"batch": list(x.shape), "ms_per_batch": _cuda_ms(lambda: aug(x, tg), 2 if chk.cpu else 20)}


def triton_kernels(chk: Check) -> Section:
    import torch

    from geoseg.models.cells import pack_cells, paste_cells
    from geoseg.models.regions import pack_regions
    from geoseg.models.triton_cells import available, pack_cells_triton, pack_regions_triton, paste_cells_triton

    if chk.cpu:
        raise Skip("the Triton kernels run on CUDA only (their CPU twins are tests/test_triton_cells.py)")
    if not available():
        raise Skip("triton does not import")
    x = torch.randn(2, 3, 2048, 2048, device="cuda")
    cells = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(32), torch.arange(32), indexing="ij"),
                        -1).reshape(-1, 3)[::3].cuda()
    boxes = torch.tensor([[0, 0, 0], [1, 8, 16], [1, 24, 24]], device="cuda")
    out: Section = {}
    for name, ref, got in (
            ("pack_cells", lambda: pack_cells(x, cells, 64, 16), lambda: pack_cells_triton(x, cells, 64, 16)),
            ("pack_regions_8x8", lambda: pack_regions(x, boxes, 8, 8, 64, 16),
             lambda: pack_regions_triton(x, boxes, 8, 8, 64, 16))):
        assert torch.equal(ref(), got()), f"{name}: Triton differs from torch"
        out[name] = {"equal": True, "torch_ms": _cuda_ms(ref), "triton_ms": _cuda_ms(got)}
    tiles = torch.randn(len(cells), 3, 64, 64, device="cuda")
    assert torch.equal(paste_cells(x, cells, tiles, 64, 0), paste_cells_triton(x, cells, tiles, 64, 0))
    out["paste_cells"] = {"equal": True, "torch_ms": _cuda_ms(lambda: paste_cells(x, cells, tiles, 64, 0)),
                          "triton_ms": _cuda_ms(lambda: paste_cells_triton(x, cells, tiles, 64, 0))}
    return out


def _onnx(chk: Check) -> Any:
    from geoseg.export import export_onnx

    if "onnx" not in chk.state:
        chk.state["onnx_report"] = export_onnx(chk.state["run"], chk.work / "onnx", overwrite=True)
        chk.state["onnx"] = chk.work / "onnx"
    return chk.state["onnx_report"]


def ort_cuda(chk: Check) -> Section:
    import numpy as np

    from geoseg.backends import open_backend

    rep = _onnx(chk)
    try:
        be = open_backend(chk.work / "onnx", "onnx", chk.device)
    except Exception as err:  # noqa: BLE001 - DependencyError without the CUDA provider
        raise Skip(str(err)) from None
    ref = open_backend(chk.state["run"], "torch", chk.device)
    m = ref.meta
    rows = 2 if chk.cpu else min(8, be.region_side)  # a region as predict runs them: rows x rows cells + one halo
    side = rows * m.cell + 2 * m.tile_halo  # 544 for the GPU preset (cell 64, halo 16), 528 for the CPU one
    n, repeats = (2, 1) if chk.cpu else (8, 5)
    tiles = np.random.default_rng(0).standard_normal((n, m.band_count, side, side), dtype=np.float32)
    diff = float(np.abs(be.ff(tiles) - ref.ff(tiles)).max())
    t0 = time.perf_counter()
    for _ in range(repeats):
        be.ff(tiles)
    ort_s = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        ref.ff(tiles)
    return {"providers": getattr(be, "providers", None), "export_max_abs_diff_cpu": rep.max_abs_diff,
            "tiles": list(tiles.shape), "ff_max_abs_diff_vs_torch": diff,
            "ff_s_ort": ort_s, "ff_s_torch": (time.perf_counter() - t0) / repeats}


def tensorrt(chk: Check) -> Section:
    from geoseg.backends.tensorrt_backend import import_tensorrt
    from geoseg.export.tensorrt import export_tensorrt

    if chk.cpu:
        raise Skip("TensorRT engines are built and run on CUDA only")
    try:
        trt = import_tensorrt()
    except Exception as err:  # noqa: BLE001
        raise Skip(str(err)) from None
    _onnx(chk)
    rep = export_tensorrt(chk.state["onnx"], chk.work / "trt", fp16=True, overwrite=True)
    chk.state["trt"] = chk.work / "trt"
    return {"version": str(trt.__version__), "max_abs_diff_vs_ort": rep.max_abs_diff, "tolerance": rep.tolerance}


def predict_throughput(chk: Check, side: int) -> Section:
    import geopandas as gpd
    from predict import boxes_scene, dense_floor, phases

    from geoseg.backends import cache
    from geoseg.backends.torch_backend import TorchBackend
    from geoseg.evaluate import evaluate_frames
    from geoseg.predict import PredictConfig, predict

    scene, warm = chk.work / f"sparse{side}.tif", chk.work / "warm.tif"
    boxes_scene(scene, side, 0.12, seed=2)
    boxes_scene(warm, min(side, 1024), 0.12, seed=3)  # warm-up runs (CUDA context, cudnn, compile): a small scene
    truth = gpd.read_file(scene.with_suffix(".gpkg"))
    km2 = (side * 0.3) ** 2 / 1e6
    run = chk.state["run"]

    def one(model: Path, budget: Any, backend: str = "torch", warmup: Path = warm) -> Section:
        out = chk.work / "pred.gpkg"
        predict([warmup], model, out, PredictConfig(budget=budget, backend=backend), overwrite=True, progress=False)
        t0 = time.perf_counter()
        s = predict([scene], model, out, PredictConfig(budget=budget, backend=backend), overwrite=True,
                    progress=False)
        sec = time.perf_counter() - t0
        return {"seconds": sec, "km2_per_s": km2 / sec, "ff_share": s.ff_cells / max(s.cells, 1),
                "routing": s.routing, "f1": float(evaluate_frames(gpd.read_file(out), truth, iou=0.5)["f1"])}

    res: Section = {"scene_px": side, "km2": km2, "torch_fp32": {}}
    # the baseline first, then routed auto and 0.25: a run cut short by its time budget keeps a ratio
    dense_floor(warm, run, chk.work / "floor.gpkg")
    t0 = time.perf_counter()
    dense_floor(scene, run, chk.work / "floor.gpkg")
    sec = time.perf_counter() - t0
    res["torch_fp32"]["dense_floor"] = {
        "seconds": sec, "km2_per_s": km2 / sec,
        "f1": float(evaluate_frames(gpd.read_file(chk.work / "floor.gpkg"), truth, iou=0.5)["f1"])}
    chk.partial("predict", res)
    for b in ("auto", 0.25, 1.0):  # 1.0: FF alone, no PV (the dense network through predict)
        if b == 1.0 and chk.left() < 60:
            continue
        res["torch_fp32"][f"routed_{b}"] = one(run, b)
        chk.partial("predict", res)
    if chk.left() > 90:  # where routed auto's time goes on the GPU (warm: auto ran above)
        res["torch_fp32"]["phases_auto"] = phases(run, scene, chk.work, "auto", warmup=False)
        chk.partial("predict", res)
    if chk.left() > 60:  # FP16 + torch.compile: the cached backend of this process, swapped in
        cfg = PredictConfig()
        key = cache.ModelKey(str(Path(run).resolve()), cfg.backend, cfg.device, cfg.ff_batch)  # predict's own key
        # --cpu: no compile (minutes of C++ builds for nothing), and fp16 is off on the CPU; the swap still runs
        fast = TorchBackend(run, chk.device, precision="fp16", compile=not chk.cpu)
        with cache._LOCK:
            cache._BACKENDS[(key, cache._model_mtime(key.model))] = fast
        # warmed up on the scene itself: a compiled graph meets the scene's batch shapes before the timed run
        res["torch_fp16_compile"] = {"routed_0.25": one(run, 0.25, warmup=scene)}
        if cache.get_backend(key) is not fast:
            raise RuntimeError("predict did not run the FP16 backend swapped into its cache: its key changed")
        chk.partial("predict", res)
        with cache._LOCK:
            cache._BACKENDS.clear()
    if "trt" in chk.state and chk.left() > 30:
        res["tensorrt_fp16"] = {"routed_0.25": one(chk.state["trt"], 0.25, "tensorrt", warmup=scene)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the JSON report")
    ap.add_argument("--budget-s", type=float, default=420, help="time for all sections")
    ap.add_argument("--side", type=int, default=8192, help="side of the predict scene in px (0.3 m)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: next to --out)")
    ap.add_argument("--model", type=Path, default=None,
                    help="a trained run for ort_cuda/tensorrt/predict instead of train_amp's few steps")
    ap.add_argument("--model-epochs", type=int, default=0,
                    help="train bench/predict.py's model (CPU preset, device auto) this many epochs for "
                         "ort_cuda/tensorrt/predict: one that finds the boxes (train_amp's few steps do not)")
    ap.add_argument("--sections", default=None,
                    help="comma-separated sections to run (default all; the ones they need must be listed too)")
    ap.add_argument("--cpu", action="store_true",
                    help="a dry run without a GPU: the sections' code on the CPU at toy sizes (figures meaningless)")
    args = ap.parse_args()
    if args.cpu and args.side == ap.get_default("side"):
        args.side = 1024
    work = args.work or args.out.parent / "gpu-check-work"
    work.mkdir(parents=True, exist_ok=True)
    chk = Check(args.budget_s, work, args.out, set(args.sections.split(",")) if args.sections else None,
                cpu=args.cpu)
    if args.model is not None:
        chk.state["run"] = args.model
    model_from = ("env",) if args.model is not None else ("train_amp",)
    chk.run("env", lambda: env(chk), min_s=0)
    if args.model_epochs and args.model is None:
        chk.run("model", lambda: predict_model(chk, args.model_epochs), needs=("env",), min_s=60)
        model_from = ("model",)
    chk.run("train_amp", lambda: train_amp(chk), needs=("env",), min_s=120)
    chk.run("kornia", lambda: kornia(chk), needs=("env",))
    chk.run("triton", lambda: triton_kernels(chk), needs=("env",))
    chk.run("ort_cuda", lambda: ort_cuda(chk), needs=model_from)
    chk.run("tensorrt", lambda: tensorrt(chk), needs=model_from, min_s=120)
    chk.run("predict", lambda: predict_throughput(chk, args.side), needs=model_from, min_s=60)
    chk.write()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
