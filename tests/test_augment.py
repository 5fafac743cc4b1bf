"""Augmentations: alignment of image and maps, any band count, every family does something."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from geoseg.config import validate
from geoseg.errors import ConfigError
from geoseg.train.augment import AugmentConfig, build_augment, build_gpu_augment

FAMILIES = ("d4", "shift_scale_rotate", "haze", "clouds_shadows", "blur", "noise", "jpeg",
            "downscale", "brightness_contrast_gamma")
PHOTOMETRIC = FAMILIES[2:]
SIZE, CELL = 48, 6


def only(family: str | None, **extra: object) -> AugmentConfig:
    """A config where only ``family`` is on (probability 1)."""
    probs = {f: 0.0 for f in FAMILIES}
    if family is not None:
        probs[family] = 1.0
    return AugmentConfig(**probs, **extra)


def board(bands: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A checkerboard image whose second band encodes each cell's id, and its maps."""
    yy, xx = np.mgrid[:SIZE, :SIZE] // CELL
    n = SIZE // CELL
    ids = (yy * n + xx + 1).astype(np.int64)  # 1..64, unique per cell
    checker = (yy + xx) % 2 == 0
    img = np.empty((SIZE, SIZE, bands), dtype=np.float32)
    img[..., 0] = 0.25 + 0.5 * checker
    for b in range(1, bands):
        img[..., b] = 0.1 + 0.8 * ids / (n * n)
    return img, checker, ids


@pytest.mark.parametrize("family", ["d4", "shift_scale_rotate"])
@pytest.mark.parametrize("seed", range(4))
def test_checkerboard_stays_aligned_with_its_masks(family: str, seed: int) -> None:
    img, checker, ids = board(3)
    aug = build_augment(only(family), 3, seed=seed)
    out, maps = aug(img, {"checker": checker, "ids": ids})
    assert set(maps) == {"checker", "ids", "valid"}
    assert maps["checker"].dtype == bool and maps["ids"].dtype == np.int64
    valid = maps["valid"]
    if family == "d4":  # pure permutation of pixels: exact
        assert valid.all()
        assert np.array_equal(out[..., 0] > 0.5, maps["checker"])
        assert np.allclose(out[..., 1], 0.1 + 0.8 * maps["ids"] / 64, atol=1e-6)
        assert np.array_equal(np.sort(out[..., 1].ravel()), np.sort(img[..., 1].ravel()))
        return
    # linear interpolation for the image: compare where the image is a cell interior
    flat = (np.abs(out[..., 0] - 0.25) < 1e-4) | (np.abs(out[..., 0] - 0.75) < 1e-4)
    interior = valid & flat
    assert interior.sum() > 0.3 * SIZE * SIZE
    assert np.array_equal((out[..., 0] > 0.5)[interior], maps["checker"][interior])
    got_ids = np.rint((out[..., 1] - 0.1) / 0.8 * 64)
    assert np.array_equal(got_ids[interior], maps["ids"][interior])
    # what came from outside is invalid, black, and background in every map
    outside = ndi.binary_erosion(~valid, iterations=1)
    assert (out[outside] == 0).all()
    assert (maps["ids"][~valid] == 0).all() and not maps["checker"][~valid].any()


def test_shift_scale_rotate_makes_invalid_border() -> None:
    img, checker, _ = board(1)
    aug = build_augment(only("shift_scale_rotate", rotate_limit=45, shift_limit=0.2), 1, seed=0)
    fractions = [aug(img, {"m": checker})[1]["valid"].mean() for _ in range(6)]
    assert min(fractions) < 1.0


@pytest.mark.parametrize("bands", [1, 2, 3, 4, 5])
def test_band_count_dtype_and_range_kept(bands: int) -> None:
    img, checker, _ = board(bands)
    cfg = AugmentConfig(**{f: 1.0 for f in FAMILIES})
    aug = build_augment(cfg, bands, seed=1)
    for _ in range(3):
        out, maps = aug(img, {"checker": checker})
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert maps["checker"].shape == img.shape[:2]


@pytest.mark.parametrize("bands", [1, 3, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_changes_the_image(family: str, bands: int) -> None:
    rng = np.random.default_rng(0)
    img = (0.2 + 0.6 * rng.random((SIZE, SIZE, bands))).astype(np.float32)
    aug = build_augment(only(family), bands, seed=0)
    results = [aug(img, {})[0] for _ in range(8)]
    changed = [not np.allclose(r, img, atol=1e-3) for r in results]
    if family == "d4":  # the identity is one of the eight
        assert sum(changed) >= 4
    else:
        assert all(changed), f"{family} left the image unchanged"


@pytest.mark.parametrize("family", PHOTOMETRIC)
def test_photometric_ops_leave_maps_alone(family: str) -> None:
    img, checker, ids = board(4)
    out, maps = build_augment(only(family), 4, seed=2)(img, {"checker": checker, "ids": ids})
    assert np.array_equal(maps["checker"], checker) and np.array_equal(maps["ids"], ids)
    assert maps["valid"].all()


@pytest.mark.parametrize("family", ["haze", "jpeg"])
def test_rgb_only_ops_leave_extra_bands_unchanged(family: str) -> None:
    img, _, _ = board(5)
    out, _ = build_augment(only(family), 5, seed=0)(img, {})
    assert not np.allclose(out[..., :3], img[..., :3], atol=1e-3)
    assert np.array_equal(out[..., 3:], img[..., 3:])


def test_no_family_is_identity_and_reseed_is_deterministic() -> None:
    img, checker, _ = board(3)
    out, maps = build_augment(only(None), 3)(img, {"checker": checker})
    assert np.array_equal(out, img) and np.array_equal(maps["checker"], checker)
    aug = build_augment(AugmentConfig(), 3)
    clone = pickle.loads(pickle.dumps(aug))  # DataLoader workers get a copy
    aug.reseed(7)
    clone.reseed(7)
    assert np.array_equal(aug(img, {})[0], clone(img, {})[0])


def test_bad_inputs_and_config() -> None:
    aug = build_augment(AugmentConfig(), 3)
    with pytest.raises(ValueError, match="image must be"):
        aug(np.zeros((8, 8, 4), np.float32), {})
    with pytest.raises(ValueError, match="map 'm'"):
        aug(np.zeros((8, 8, 3), np.float32), {"m": np.zeros((4, 4))})
    with pytest.raises(ConfigError, match="unknown key 'fog'"):
        validate(AugmentConfig, {"fog": 0.5}, "x.yaml")
    with pytest.raises(ConfigError, match="blur"):
        validate(AugmentConfig, {"blur": 1.5}, "x.yaml")


def test_gpu_family_moves_to_the_device_pipeline() -> None:
    img, _, _ = board(3)
    cpu = build_augment(only("blur", gpu=True), 3, seed=0)
    assert np.array_equal(cpu(img, {})[0], img)  # blur is done by build_gpu_augment


def _batch(b: int, h: int, w: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids = torch.arange(h * w, dtype=torch.int64).reshape(1, h, w).repeat(b, 1, 1)
    ids = ids + 1000 * torch.arange(b).reshape(b, 1, 1)
    image = torch.stack([ids.float(), -ids.float(), torch.ones(b, h, w)], dim=1)
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[:, :, : w // 4] = False
    return image, {"ids": ids, "valid": valid, "sdf": ids.float() / 7}


@pytest.mark.parametrize("shape", [(16, 16), (12, 20)])
def test_gpu_augment_keeps_image_and_maps_aligned(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    image, targets = _batch(6, *shape)
    module = build_gpu_augment(only("d4"))
    seen = set()
    for _ in range(10):
        out, maps = module(image, targets)
        assert out.shape == image.shape and maps["ids"].dtype == torch.int64
        assert maps["valid"].dtype == torch.bool
        got = torch.where(maps["valid"], out[:, 0], maps["ids"].float())
        assert torch.equal(got, maps["ids"].float())
        assert torch.equal(maps["sdf"], maps["ids"].float() / 7)
        assert (out * ~maps["valid"].unsqueeze(1) == 0).all()
        seen.update(tuple(m.ravel()[:3].tolist()) for m in maps["ids"] % 1000)
    assert len(seen) == (8 if shape[0] == shape[1] else 4)  # all of D4 (or its shape-keeping half)


def test_gpu_augment_photometric_changes_image_not_maps() -> None:
    torch.manual_seed(0)
    image, targets = _batch(2, 16, 16)
    module = build_gpu_augment(AugmentConfig(d4=0.0, brightness_contrast_gamma=1.0, blur=1.0,
                                             noise=1.0))
    out, maps = module(image, targets)
    assert out.dtype == torch.float32 and out.shape == image.shape
    assert not torch.allclose(out[targets["valid"].unsqueeze(1).expand_as(out)],
                              image[targets["valid"].unsqueeze(1).expand_as(image)])
    for k in targets:
        assert torch.equal(maps[k], targets[k])
    assert (out[:, :, :, :4] == 0).all()  # invalid pixels stay 0
