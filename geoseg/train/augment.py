"""Training augmentations: albumentations per sample (any band count), kornia per batch.

:func:`build_augment` returns a callable over one sample: an (H, W, C) float32 image in
[0, 1] and a dict of (H, W) target maps. Geometric ops move the image and every map
together (maps with nearest interpolation); pixels shifted or rotated in from outside the
sample are 0 in the image and in every map, and ``valid`` (added when absent) is False
there. Photometric ops touch the image only. Ops that only exist for RGB (fog, JPEG, ISO
noise) act on the first three bands; a 1- or 2-band image is replicated to three bands
for them and averaged back. Everything else acts on all bands.

Op families, in the order they are applied (an imaging chain: geometry, atmosphere,
radiometry, optics, resolution, sensor noise, compression), each with its probability in
:class:`AugmentConfig` (0 disables it):

- ``d4``: one of the 8 flips/90° rotations (``SquareSymmetry``);
- ``shift_scale_rotate``: ``Affine`` shift, scale, rotation, constant 0 fill;
- ``haze``: ``RandomFog`` (first three bands);
- ``clouds_shadows``: one of ``RandomShadow``, ``PlasmaShadow``, :class:`CloudOverlay`;
- ``brightness_contrast_gamma``: ``RandomBrightnessContrast`` then ``RandomGamma``;
- ``blur``: one of gaussian, motion, defocus blur;
- ``downscale``: :class:`Downscale` (down then up again: lost resolution);
- ``noise``: one of gaussian, ISO (first three bands), multiplicative noise;
- ``jpeg``: ``ImageCompression`` JPEG, quality 30-90 (first three bands).

Before all of them, ``gsd`` (with ``gsd_range``) reads the crop at another ground sampling
distance (:mod:`geoseg.train.scale`): scale in metres, done by the dataset's windowed read.

With ``gpu=True`` the families ``d4``, ``brightness_contrast_gamma``, ``blur`` and
``noise`` leave the per-sample pipeline and run on the device in the module of
:func:`build_gpu_augment` instead, on normalised batches.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import kornia.augmentation as K  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import Field, model_validator  # noqa: E402
from torch import nn  # noqa: E402

from geoseg.config import Strict  # noqa: E402

GPU_FAMILIES = ("d4", "brightness_contrast_gamma", "blur", "noise")


class AugmentConfig(Strict):
    """Probabilities of the augmentation families (YAML section ``train.augment``)."""

    d4: float = Field(1.0, ge=0.0, le=1.0, description="flips and 90° rotations")
    shift_scale_rotate: float = Field(0.5, ge=0.0, le=1.0, description="affine warp")
    haze: float = Field(0.1, ge=0.0, le=1.0, description="fog over the first three bands")
    clouds_shadows: float = Field(0.2, ge=0.0, le=1.0, description="cloud or shadow overlay")
    blur: float = Field(0.2, ge=0.0, le=1.0, description="gaussian/motion/defocus blur")
    noise: float = Field(0.2, ge=0.0, le=1.0, description="gaussian/ISO/multiplicative noise")
    jpeg: float = Field(0.2, ge=0.0, le=1.0, description="JPEG artefacts, quality 30-90")
    downscale: float = Field(0.1, ge=0.0, le=1.0, description="resolution loss x0.25-0.75")
    brightness_contrast_gamma: float = Field(0.5, ge=0.0, le=1.0, description="radiometry")
    shift_limit: float = Field(0.1, ge=0.0, le=0.5, description="shift, fraction of the side")
    scale_limit: float = Field(0.2, ge=0.0, lt=1.0, description="scale in [1-l, 1+l]")
    rotate_limit: float = Field(45.0, ge=0.0, le=180.0, description="rotation in degrees")
    gpu: bool = Field(False, description="run d4/brightness/blur/noise on the device")
    gsd: float = Field(0.0, ge=0.0, le=1.0, description="read crops at a GSD drawn from gsd_range")
    gsd_range: tuple[float, float] | None = Field(
        None, description="metres per pixel [lo, hi] that gsd draws from (log-uniform)")

    @model_validator(mode="after")
    def _gsd_coherent(self) -> AugmentConfig:
        if self.gsd_range is not None:
            lo, hi = self.gsd_range
            if not 0 < lo <= hi:
                raise ValueError(f"gsd_range must be [lo, hi] metres with 0 < lo <= hi, not {list(self.gsd_range)}")
        if self.gsd > 0 and self.gsd_range is None:
            raise ValueError("gsd > 0 needs gsd_range: [lo, hi] in metres per pixel, e.g. [0.15, 0.6]")
        return self


class OnFirstThreeBands(A.ImageOnlyTransform):  # type: ignore[misc]  # albumentations is untyped
    """Apply an RGB-only transform to the first three bands; other bands pass unchanged.

    Images with fewer than three bands are replicated to three (band ``j % C``), and
    each band gets the mean of the output channels made from it.

    Args:
        transform: the RGB transform (its own ``p`` is ignored: it always applies).
        p: probability of applying.
    """

    def __init__(self, transform: A.ImageOnlyTransform, p: float = 1.0) -> None:
        super().__init__(p=p)
        transform.p = 1.0
        self.transform = transform

    def set_random_state(self, random_generator: np.random.Generator, py_random: Any) -> None:
        super().set_random_state(random_generator, py_random)
        if hasattr(self, "transform"):  # also called by the base __init__
            self.transform.set_random_state(random_generator, py_random)

    def set_random_seed(self, seed: int | None) -> None:
        super().set_random_seed(seed)
        if hasattr(self, "transform"):  # also called by the base __init__
            self.transform.set_random_seed(seed)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        c = img.shape[-1]
        if c >= 3:
            out = img.copy()
            out[..., :3] = self.transform(image=np.ascontiguousarray(img[..., :3]))["image"]
            return out
        idx = np.arange(3) % c
        rgb = self.transform(image=np.ascontiguousarray(img[..., idx]))["image"]
        return np.stack([rgb[..., idx == k].mean(axis=-1) for k in range(c)], axis=-1).astype(
            img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("transform",)


class CloudOverlay(A.ImageOnlyTransform):  # type: ignore[misc]  # albumentations is untyped
    """Semi-transparent bright clouds from smooth multi-octave noise, on all bands.

    Args:
        coverage_range: share of the image under cloud.
        opacity_range: peak opacity of the clouds.
        brightness_range: value the clouds blend towards (images are in [0, 1]).
        p: probability of applying.
    """

    def __init__(self, coverage_range: tuple[float, float] = (0.15, 0.5),
                 opacity_range: tuple[float, float] = (0.4, 0.9),
                 brightness_range: tuple[float, float] = (0.85, 1.0), p: float = 0.5) -> None:
        super().__init__(p=p)
        self.coverage_range = coverage_range
        self.opacity_range = opacity_range
        self.brightness_range = brightness_range

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]
                                     ) -> dict[str, Any]:
        h, w = params["shape"][:2]
        rng = self.random_generator
        field = np.zeros((h, w), dtype=np.float32)
        for cells, weight in ((3, 1.0), (6, 0.5), (12, 0.25), (24, 0.125)):
            grid = rng.random((cells, cells)).astype(np.float32)
            field += weight * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        coverage = rng.uniform(*self.coverage_range)
        thr = float(np.quantile(field, 1.0 - coverage))
        soft = max(float(field.max()) - thr, 1e-6) / 2
        alpha = np.clip((field - thr) / soft, 0.0, 1.0) * rng.uniform(*self.opacity_range)
        return {"alpha": alpha.astype(np.float32),
                "brightness": float(rng.uniform(*self.brightness_range))}

    def apply(self, img: np.ndarray, alpha: np.ndarray, brightness: float,
              **params: Any) -> np.ndarray:
        a = alpha[..., None]
        return (img * (1.0 - a) + brightness * a).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("coverage_range", "opacity_range", "brightness_range")


class Downscale(A.Downscale):  # type: ignore[misc]  # albumentations is untyped
    """``A.Downscale`` for any band count (OpenCV resizes at most 4 channels at once)."""

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.ndim < 3 or img.shape[-1] <= 4:
            return np.asarray(super().apply(img, **params))
        parts = [super(Downscale, self).apply(np.ascontiguousarray(img[..., i:i + 4]), **params)
                 for i in range(0, img.shape[-1], 4)]
        return np.concatenate([p.reshape(*img.shape[:2], -1) for p in parts], axis=-1)


def _families(cfg: AugmentConfig) -> dict[str, A.BasicTransform]:
    """One transform per family, in application order, probabilities from ``cfg``."""
    return {
        "d4": A.SquareSymmetry(p=cfg.d4),
        "shift_scale_rotate": A.Affine(
            translate_percent=(-cfg.shift_limit, cfg.shift_limit),
            scale=(1.0 - cfg.scale_limit, 1.0 + cfg.scale_limit),
            rotate=(-cfg.rotate_limit, cfg.rotate_limit),
            interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=cfg.shift_scale_rotate),
        "haze": OnFirstThreeBands(A.RandomFog(fog_coef_range=(0.3, 0.6), alpha_coef=0.12),
                                  p=cfg.haze),
        "clouds_shadows": A.OneOf([
            A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 3),
                           shadow_intensity_range=(0.3, 0.7), p=1.0),
            A.PlasmaShadow(shadow_intensity_range=(0.3, 0.7), p=1.0),
            CloudOverlay(p=1.0),
        ], p=cfg.clouds_shadows),
        "brightness_contrast_gamma": A.Sequential([
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
            A.RandomGamma(gamma_limit=(80, 120), p=1.0),
        ], p=cfg.brightness_contrast_gamma),
        "blur": A.OneOf([
            A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.5, 2.0), p=1.0),
            A.MotionBlur(blur_limit=(3, 7), p=1.0),
            A.Defocus(radius=(2, 4), alias_blur=(0.1, 0.3), p=1.0),
        ], p=cfg.blur),
        "downscale": Downscale(
            scale_range=(0.25, 0.75),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=cfg.downscale),
        "noise": A.OneOf([
            A.GaussNoise(std_range=(0.02, 0.08), p=1.0),
            OnFirstThreeBands(A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.1, 0.5))),
            A.MultiplicativeNoise(multiplier=(0.85, 1.15), per_channel=True, elementwise=True,
                                  p=1.0),
        ], p=cfg.noise),
        "jpeg": OnFirstThreeBands(A.ImageCompression(compression_type="jpeg",
                                                     quality_range=(30, 90)), p=cfg.jpeg),
    }


class Augment:
    """Per-sample augmentation (the callable of :func:`build_augment`); picklable.

    Args:
        compose: the albumentations pipeline.
        bands: band count the images must have.
    """

    def __init__(self, compose: A.Compose, bands: int, gsd_p: float = 0.0,
                 gsd_range: tuple[float, float] | None = None) -> None:
        self.compose = compose
        self.bands = bands
        self.gsd_p = gsd_p  # scale augmentation in metres: applied by the dataset's read
        self.gsd_range = gsd_range

    def reseed(self, seed: int | None) -> None:
        """Make the next draws a function of ``seed`` (None: fresh entropy)."""
        self.compose.set_random_seed(seed)

    def __call__(self, image: np.ndarray, masks: dict[str, np.ndarray]
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Augment one sample.

        Args:
            image: (H, W, C) float32 in [0, 1], ``C == bands``.
            masks: (H, W) maps of any dtype (bool, int, float); ``valid`` is added
                (all True) when absent.

        Returns:
            ``(image, masks)``: the image (H', W', C) float32 clipped to [0, 1] and the
            maps with their dtypes, aligned with it. Pixels from outside the input are 0
            in the image and every map (``valid`` False).

        Raises:
            ValueError: the image is not (H, W, bands) or a map not (H, W).
        """
        if image.ndim != 3 or image.shape[-1] != self.bands:
            raise ValueError(f"image must be (H, W, {self.bands}), got {image.shape}")
        h, w = image.shape[:2]
        masks = dict(masks)
        masks.setdefault("valid", np.ones((h, w), dtype=bool))
        for key, m in masks.items():
            if m.shape != (h, w):
                raise ValueError(f"map '{key}' has shape {m.shape}, expected {(h, w)}")
        keys = list(masks)
        stack = np.stack([masks[k].astype(np.float32) for k in keys], axis=-1)
        out = self.compose(image=image.astype(np.float32, copy=False), mask=stack)
        img = np.clip(out["image"], 0.0, 1.0).astype(np.float32, copy=False)
        res: dict[str, np.ndarray] = {}
        for i, key in enumerate(keys):
            m, dtype = out["mask"][..., i], masks[key].dtype
            if dtype.kind == "b":
                res[key] = m > 0.5
            elif np.issubdtype(dtype, np.integer):
                res[key] = np.rint(m).astype(dtype)
            else:
                res[key] = m.astype(dtype)
        return img, res


def build_augment(cfg: AugmentConfig, bands: int, *, seed: int | None = None) -> Augment:
    """The per-sample augmentation of ``cfg`` for images of ``bands`` bands.

    Args:
        cfg: probabilities per family (see the module table).
        bands: band count of the images (any, 1 and up).
        seed: seed of the random draws (None: fresh entropy); see :meth:`Augment.reseed`.

    Returns:
        An :class:`Augment` callable ``(image, masks) -> (image, masks)``.

    Raises:
        ValueError: ``bands < 1``.
    """
    if bands < 1:
        raise ValueError(f"bands must be at least 1, got {bands}")
    fam = _families(cfg)
    skip = set(GPU_FAMILIES) if cfg.gpu else set()
    chosen = [t for name, t in fam.items() if name not in skip and getattr(cfg, name) > 0]
    compose = A.Compose(chosen, p=1.0, seed=seed, strict=False)
    return Augment(compose, bands, cfg.gsd, cfg.gsd_range)


class GpuAugment(nn.Module):
    """Batch augmentation on the device (kornia): D4, brightness/contrast, noise, blur.

    It works on normalised images (zero mean, unit std per band), so intensity changes
    are in std units and never clipped: brightness ±0.3, contrast ×[0.8, 1.2], gaussian
    noise std 0.1, gaussian blur sigma 0.1-1.5. D4 is a horizontal flip then a 90° turn
    (square batches) or a vertical flip (other batches: the four shape-keeping elements).

    Args:
        cfg: probabilities per family (``d4``, ``brightness_contrast_gamma``, ``noise``,
            ``blur``; the others are per-sample only).
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.flip: nn.Module | None = None
        self.vflip: nn.Module | None = None
        self.rot90: nn.Module | None = None
        if cfg.d4 > 0:
            self.flip = K.RandomHorizontalFlip(p=cfg.d4 / 2)
            self.vflip = K.RandomVerticalFlip(p=cfg.d4 / 2)
            self.rot90 = K.RandomRotation90(times=(0, 3), resample="nearest", p=cfg.d4)
        photo: list[nn.Module] = []
        if cfg.brightness_contrast_gamma > 0:
            q = cfg.brightness_contrast_gamma
            photo += [K.RandomBrightness((0.7, 1.3), clip_output=False, p=q),
                      K.RandomContrast((0.8, 1.2), clip_output=False, p=q)]
        if cfg.blur > 0:
            photo.append(K.RandomGaussianBlur((5, 5), (0.1, 1.5), p=cfg.blur))
        if cfg.noise > 0:
            photo.append(K.RandomGaussianNoise(mean=0.0, std=0.1, p=cfg.noise))
        self.photo = K.ImageSequential(*photo) if photo else None

    def forward(self, image: torch.Tensor, targets: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Augment a batch; every target map follows the geometric ops exactly.

        Args:
            image: normalised images.
            targets: maps of any dtype (bool, int, float); with ``valid``, invalid
                pixels of the output image are set to 0.

        Returns:
            ``(image, targets)`` with the same shapes and dtypes.

        Shape:
            - image: (B, C, H, W)
            - targets: each (B, H, W)
        """
        keys = list(targets)
        if keys:
            maps = torch.stack([targets[k].to(image.dtype) for k in keys], dim=1)
            both = torch.cat([image, maps], dim=1)
        else:
            both = image
        # flips and 90° turns move pixels without resampling, so image and maps are
        # transformed as one tensor: alignment is exact by construction.
        if self.flip is not None:
            both = self.flip(both)
            square = both.shape[-1] == both.shape[-2]
            assert self.rot90 is not None and self.vflip is not None
            both = self.rot90(both) if square else self.vflip(both)
        c = image.shape[1]
        image = both[:, :c]
        out: dict[str, torch.Tensor] = {}
        for i, k in enumerate(keys):
            m, dtype = both[:, c + i], targets[k].dtype
            if dtype == torch.bool:
                out[k] = m > 0.5
            elif not dtype.is_floating_point:
                out[k] = torch.round(m).to(dtype)
            else:
                out[k] = m.to(dtype)
        if self.photo is not None:
            image = self.photo(image)
        if "valid" in out:
            image = image * out["valid"].unsqueeze(1).to(image.dtype)
        return image, out


def build_gpu_augment(cfg: AugmentConfig) -> GpuAugment:
    """The device-side batch augmentation of ``cfg`` (see :class:`GpuAugment`).

    Args:
        cfg: probabilities per family.

    Returns:
        A module ``(image, targets) -> (image, targets)``; move it with ``.to(device)``.
    """
    return GpuAugment(cfg)
