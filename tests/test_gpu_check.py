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
