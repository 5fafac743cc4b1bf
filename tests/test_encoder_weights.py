"""Encoder weights: random, a local file, or smp's named weights through the Hub cache.

No test downloads: the Hugging Face cache is a folder each test fills in tmp_path, and
offline mode is on (``huggingface_hub.constants`` is what ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE`` set when the library is imported; the slow test sets the variables
themselves in a fresh process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from geoseg.config import validate
from geoseg.errors import ConfigError
from geoseg.models import ModelConfig, RoutedModel, StreamConfig, build_stream
from geoseg.models.checkpoint import model_from_checkpoint
from geoseg.models.pretrained import hub_weights, named_weights


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp_path, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def fill_smp(cache: Path, encoder: str, weights: str = "imagenet") -> dict[str, torch.Tensor]:
    """Put an smp-hub snapshot (random weights of the true layout) where smp looks."""
    from segmentation_models_pytorch.encoders import get_encoder

    src = hub_weights(encoder, weights)
    assert src.revision is not None
    snap = cache / f"models--{src.repo_id.replace('/', '--')}" / "snapshots" / src.revision
    snap.mkdir(parents=True)
    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in get_encoder(encoder, depth=5).state_dict().items()}
    save_file(state, snap / "model.safetensors")
    (snap / "config.json").write_text('{"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}')
    return state


def fill_timm(cache: Path, model: str) -> dict[str, torch.Tensor]:
    """Put a timm Hub snapshot on the main branch (refs/main -> a commit)."""
    import timm

    src = hub_weights(f"tu-{model}", "imagenet")
    repo = cache / f"models--{src.repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.manual_seed(8)
    state = {k: v.contiguous() for k, v in timm.create_model(model).state_dict().items()}
    save_file(state, repo / "snapshots" / commit / src.filenames[-1])
    return state


def test_names_validate_without_any_cache(hub: Path) -> None:
    assert "imagenet" in named_weights("resnet18") and "ssl" in named_weights("resnet18")
    assert named_weights("tu-regnety_002") == ("imagenet",)
    cfg = validate(ModelConfig, {"pv": {"encoder": "tu-regnety_002", "encoder_weights": "imagenet"},
                                 "ff": {"encoder": "resnet18", "encoder_weights": "swsl"}}, "x.yaml")
    assert (cfg.pv.encoder_weights, cfg.ff.encoder_weights) == ("imagenet", "swsl")
    with pytest.raises(ConfigError, match=r"'instagram'.*resnet18.*imagenet, ssl, swsl"):
        validate(ModelConfig, {"ff": {"encoder": "resnet18", "encoder_weights": "instagram"}}, "x.yaml")
    assert list(hub.iterdir()) == []  # validating fetched nothing


def test_local_file_still_loads(tmp_path: Path, hub: Path) -> None:
    torch.manual_seed(3)
    src = build_stream(StreamConfig(encoder="resnet18", encoder_depth=3), 3, 3)
    path = tmp_path / "enc.pt"
    torch.save(src.model.encoder.state_dict(), path)
    dst = build_stream(StreamConfig(encoder="resnet18", encoder_depth=3, encoder_weights=str(path)), 3, 3)
    assert all(torch.equal(a, b) for a, b in zip(src.model.encoder.state_dict().values(),
                                                 dst.model.encoder.state_dict().values(), strict=True))


def test_smp_named_weights_come_from_the_cache(hub: Path) -> None:
    state = fill_smp(hub, "resnet18")
    stream = build_stream(StreamConfig(encoder="resnet18", encoder_weights="imagenet"), 3, 3)
    got = stream.model.encoder.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in got.items())
    four = build_stream(StreamConfig(encoder="resnet18", encoder_weights="imagenet", encoder_depth=3), 4, 3)
    assert four.model.encoder.conv1.weight.shape[1] == 4  # smp adapts the first conv to 4 bands


def test_timm_named_weights_come_from_the_cache(hub: Path) -> None:
    state = fill_timm(hub, "regnety_002")
    cfg = StreamConfig(encoder="tu-regnety_002", encoder_weights="imagenet", encoder_depth=4,
                       decoder_channels=(16, 16, 8, 8))
    got: dict[str, Any] = build_stream(cfg, 3, 3).model.encoder.model.state_dict()
    same = [torch.equal(v, state[k]) for k, v in got.items() if k in state]
    assert same and all(same) and len(same) == len(got)


def test_offline_without_cache_is_one_fast_line(hub: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        build_stream(StreamConfig(encoder="resnet34", encoder_weights="imagenet"), 3, 3)
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("'resnet34'", "'imagenet'", str(hub), "HF_HUB_OFFLINE", "hf download smp-hub/resnet34.imagenet",
                 "--cache-dir", "null"):
        assert part in msg, part
    with pytest.raises(ConfigError, match=r"'tu-regnety_002'.*timm/regnety_002"):
        build_stream(StreamConfig(encoder="tu-regnety_002", encoder_weights="imagenet"), 3, 3)


def test_checkpoint_rebuild_never_fetches(hub: Path, tmp_path: Path) -> None:
    """A checkpoint holds every weight: predict rebuilds it offline with an empty cache."""
    model_cfg = {"scale": 2, "cell": 32, "halo": 16,
                 "pv": {"encoder": "tu-regnety_002", "encoder_depth": 4, "decoder_channels": [16, 16, 8, 8]},
                 "ff": {"encoder": "resnet18", "encoder_depth": 4, "decoder_channels": [16, 16, 8, 8]}}
    net = RoutedModel.from_config(validate(ModelConfig, model_cfg, "x"))
    model_cfg["ff"] = {**model_cfg["ff"], "encoder_weights": "imagenet"}
    model_cfg["pv"] = {**model_cfg["pv"], "encoder_weights": str(tmp_path / "moved-away.pt")}
    ckpt = {"config": {"model": model_cfg}, "model": net.state_dict()}
    rebuilt = model_from_checkpoint(ckpt)
    torch.testing.assert_close(rebuilt.state_dict(), net.state_dict(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.slow
def test_env_variables_choose_cache_and_offline(tmp_path: Path) -> None:
    """HF_HUB_CACHE and HF_HUB_OFFLINE as a user sets them, in a fresh process."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "c"), "HF_HUB_OFFLINE": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1"}
    code = ("from geoseg.models import StreamConfig, build_stream\n"
            "build_stream(StreamConfig(encoder='resnet18', encoder_weights='imagenet'), 3, 3)\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "ConfigError" in run.stderr and str(tmp_path / "c") in run.stderr
