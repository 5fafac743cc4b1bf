"""bench/gpu_check.sh: shell syntax, and its Python part on a machine without CUDA (skips, with reasons)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_shell_script_parses() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    res = subprocess.run([bash, "-n", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_without_cuda_every_section_is_skipped_with_its_reason(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = tmp_path / "report.json"
    res = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out),
                          "--budget-s", "60"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    sections = json.loads(out.read_text())["sections"]
    assert list(sections) == ["env", "train_amp", "kornia", "triton", "ort_cuda", "tensorrt", "predict"]
    assert sections["env"]["status"] == "skipped" and "sees no CUDA GPU" in sections["env"]["reason"]
    for name, sec in sections.items():
        assert sec["status"] == "skipped" and sec["reason"], (name, sec)
    assert "needs env" in sections["kornia"]["reason"] and "needs train_amp" in sections["predict"]["reason"]


def test_sections_and_model_options_keep_the_report_order_and_say_why(tmp_path: Path) -> None:
    """--sections skips the others by name; --model-epochs puts a `model` section before the rest."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = tmp_path / "report.json"
    res = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out),
                          "--budget-s", "60", "--model-epochs", "2", "--sections", "env,model,predict"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    sections = json.loads(out.read_text())["sections"]
    assert list(sections) == ["env", "model", "train_amp", "kornia", "triton", "ort_cuda", "tensorrt", "predict"]
    assert sections["kornia"]["reason"] == "not in --sections"
    assert "needs env" in sections["model"]["reason"] and "needs model" in sections["predict"]["reason"]


@pytest.mark.slow
def test_cpu_dry_run_runs_every_section_that_needs_no_cuda(tiny_run: Path, tmp_path: Path) -> None:
    """``--cpu`` runs the sections' code at toy sizes, so a broken call is found before a GPU is lent.

    Only Triton and TensorRT need CUDA itself; everything else must come out ``ok``. The
    region tiles of ``ort_cuda`` follow the model's cell and halo (a fixed 544 px failed
    for any model whose halo is not 16).
    """
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = tmp_path / "report.json"
    res = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out), "--cpu",
                          "--model", str(tiny_run), "--side", "512", "--budget-s", "400"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "dry_run" in report
    sections = report["sections"]
    status = {name: sec["status"] for name, sec in sections.items()}
    assert status == {"env": "ok", "train_amp": "ok", "kornia": "ok", "triton": "skipped", "ort_cuda": "ok",
                      "tensorrt": "skipped", "predict": "ok"}, {n: s.get("reason") for n, s in sections.items()}
    assert sections["ort_cuda"]["ff_max_abs_diff_vs_torch"] < 1e-3
    pred = sections["predict"]
    assert set(pred["torch_fp32"]) == {"routed_auto", "routed_0.25", "routed_1.0", "dense_floor", "phases_auto"}
    assert pred["torch_fp16_compile"]["routed_0.25"]["ff_share"] == pytest.approx(0.25, abs=0.05)
