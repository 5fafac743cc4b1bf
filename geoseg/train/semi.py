"""Semi-supervised training on unlabelled chips: a mean teacher (Tarvainen & Valpola, 2017).

The teacher is the exponential moving average of the student (the trainer's EMA weights,
with decay ``semi.teacher_decay``), so it is saved in ``last.pt`` with them, resumed with
them, and is the model that validation scores and ``best.pt`` holds. Each training step,
beside the labelled batch:

1. an unlabelled batch: random crops of chips written by ``geoseg tile`` without labels,
   scaled with the *labelled* band statistics (the model's) and read on the grid predict
   reads a scene of their GSD on (``--gsd model``: the labelled chips' GSD, or natively
   inside a scale-augmented ``augment.gsd_range``), so the teacher sees objects at the
   size it learned them (a 0.075 m chip for a model of 0.15 m chips is read at 0.15 m);
2. a weak view (one of the 8 flips/90° rotations) goes to the teacher, a strong view of
   the same pixels (the weak view plus photometric satellite augmentations: haze, clouds,
   radiometry, blur, resolution loss, noise, JPEG; nothing that moves a pixel) to the
   student, so the teacher's maps line up with the student's pixel for pixel; with
   ``cutmix`` (a share of the samples), a box of half the student's view comes from the
   next sample's strong view, and the teacher's maps and valid masks are mixed alike
   (French et al., 2020: a stronger perturbation for segmentation);
3. ``consistency: hard`` (the default): the teacher's fused maps (PV + FF at
   ``teacher_budget``) become hard pseudo-targets (extent, boundary, contact > 0.5; the
   class of highest probability), kept where the data is valid and the teacher is most
   sure about extent (``max(p, 1 − p)``): the ``keep`` share of each pseudo-class (building,
   background) in the batch (default 0.5, class-balanced, whatever the calibration), or
   above a fixed ``threshold``;
4. the student's output on the strong view is scored against them with the same
   :class:`~geoseg.train.losses.RoutedLoss` as labelled data, router utility included (its
   target: how much FF lowers the loss against the teacher's maps, per cell).
   ``consistency: soft`` (the original mean teacher's): instead of 3-4, the squared
   difference between the student's and the teacher's fused probabilities, on every valid
   pixel (no threshold; the router then learns from labelled chips only);
5. that loss, times a weight ramped up over ``ramp_epochs`` after ``burn_in_epochs`` of
   supervised training only (``weight · exp(−5 (1 − t)²)``), is added to the labelled one.

Everything drawn is a function of (seed, epoch, index), so ``--resume`` is exact. With
several processes the unlabelled batch is the global one, split like the labelled batch
(each rank its share of the same (seed, epoch) sample); the teacher is the same on every
rank (the same weights and rank 0's buffers after each step, the same EMA), and
``unsup``/``confident`` are averaged over the ranks like the other loss terms.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from pydantic import Field, model_validator
from rasterio.errors import RasterioError
from rasterio.windows import Window
from torch.utils.data import Dataset

from geoseg.bands import BandStats, scale_to_unit, unit_to_normalized
from geoseg.config import Strict
from geoseg.errors import ConfigError, GeoSegWarning, InputRasterError
from geoseg.io.encoding import band_meaning, band_scaling, describe, reordered
from geoseg.io.rasters import GSD_TOLERANCE
from geoseg.train.augment import AugmentConfig, build_augment
from geoseg.train.pseudo import cutmix, mix_mask, pseudo_targets, soft_consistency
from geoseg.train.scale import read_scaled, scaled_window

#: Consecutive steps in which the teacher keeps no pixel before a warning (hard consistency).
EMPTY_STEPS = 20
#: The strong view's default: photometric families only (the weak view's D4 is shared).
STRONG = AugmentConfig(d4=0.0, shift_scale_rotate=0.0, haze=0.3, clouds_shadows=0.3, blur=0.5,
                       noise=0.5, jpeg=0.3, downscale=0.2, brightness_contrast_gamma=0.8)


class SemiConfig(Strict):
    """Mean-teacher training on unlabelled chips (YAML section ``semi``)."""

    unlabelled: list[str] = Field(default_factory=list,
                                  description="output folders of `geoseg tile` without labels")
    teacher_decay: float | None = Field(
        None, gt=0, lt=1, description="EMA decay of the teacher (None: optim.ema_decay)")
    weight: float = Field(0.5, ge=0, description="weight of the unsupervised loss after the ramp")
    ramp_epochs: float = Field(3.0, ge=0, description="sigmoid ramp-up of the weight, in epochs")
    burn_in_epochs: float = Field(5.0, ge=0, description="supervised-only epochs first")
    keep: float | None = Field(
        None, gt=0, le=1, description="hard: the most confident share of each pseudo-class (building, "
                                      "background) kept per batch (None: 0.5 unless threshold is set)")
    threshold: float | None = Field(
        None, ge=0.5, lt=1.0, description="hard, instead of keep: teacher confidence max(p, 1-p) to keep a pixel")
    ratio: float = Field(1.0, gt=0, description="unlabelled samples per labelled one per step")
    teacher_budget: float = Field(1.0, gt=0, le=1, description="router budget of the teacher")
    consistency: Literal["hard", "soft"] = Field(
        "hard", description="hard: thresholded pseudo-targets through the training loss; soft: squared "
                            "difference of the fused probabilities on every valid pixel")
    strong: AugmentConfig = Field(default_factory=lambda: STRONG.model_copy(),
                                  description="the student's extra, photometric, augmentation")
    cutmix: float = Field(
        0.0, ge=0, le=1, description="share of the student's samples that are a CutMix: a box of half the area "
                                     "from the next sample of the batch, the teacher's maps mixed the same way")

    @model_validator(mode="after")
    def _no_geometry_in_strong(self) -> SemiConfig:
        if self.strong.d4 > 0 or self.strong.shift_scale_rotate > 0:
            raise ValueError("semi.strong must not move pixels (set d4 and shift_scale_rotate "
                             "to 0): the teacher's targets must line up with the student's view")
        return self

    @model_validator(mode="after")
    def _one_confidence_rule(self) -> SemiConfig:
        # soft ignores both (runs of earlier revisions saved threshold: 0.9 with every consistency)
        if self.keep is not None and self.threshold is not None:
            raise ValueError("semi: give keep or threshold, not both")
        return self

    @property
    def keep_share(self) -> float | None:
        """The share of each pseudo-class kept, or None when a fixed ``threshold`` is set."""
        return None if self.threshold is not None else (0.5 if self.keep is None else self.keep)

    @property
    def enabled(self) -> bool:
        """Whether any unlabelled folder is given."""
        return bool(self.unlabelled)


def ramp_weight(cfg: SemiConfig, epoch: float) -> float:
    """Weight of the unsupervised loss at a (fractional) epoch.

    Examples:
        >>> cfg = SemiConfig(weight=2.0, burn_in_epochs=1, ramp_epochs=4)
        >>> [round(ramp_weight(cfg, e), 3) for e in (0.5, 1.0, 3.0, 5.0, 9.0)]
        [0.0, 0.013, 0.573, 2.0, 2.0]
    """
    if epoch < cfg.burn_in_epochs:
        return 0.0
    t = 1.0 if cfg.ramp_epochs == 0 else min(1.0, (epoch - cfg.burn_in_epochs) / cfg.ramp_epochs)
    return cfg.weight * math.exp(-5.0 * (1.0 - t) ** 2)


def d4(array: np.ndarray, k: int) -> np.ndarray:
    """Element ``k`` (0-7) of the dihedral group on the last two axes of ``array``."""
    out = np.rot90(array, k % 4, axes=(-2, -1))
    return np.flip(out, axis=-1) if k >= 4 else out


def chips_of(root: Path) -> list[Path]:
    """The chips of a `geoseg tile` output folder (every split: none of them is labelled).

    Raises:
        ConfigError: ``root`` holds no ``images/*.tif``.
    """
    images = root / "images"
    chips = sorted(p for p in images.glob("*.tif") if not p.name.startswith(".")) if images.is_dir() else []
    if not chips:
        raise ConfigError(f"unlabelled folder {root} holds no chips (images/*.tif); write one "
                          f"with `geoseg tile SCENES --out {root}` (no --labels needed)")
    return chips


def chip_grid(root: Path, gsd: float | None, gsd_range: tuple[float, float] | None
              ) -> list[tuple[Path, float]]:
    """The chips of ``root`` and the factor each is read at (chip pixels per sample pixel).

    A chip's GSD is its entry in ``root/annotations.json`` (else ``root/stats.json``'s);
    the target grid is :func:`geoseg.predict.gsd.model_grid`'s; 1.0 (its own grid) when
    either is unknown or they differ by at most 5 %.
    """
    from geoseg.predict.gsd import model_grid
    from geoseg.train.dataset import load_stats_gsd

    coco = root / "annotations.json"
    images = json.loads(coco.read_text(encoding="utf-8")).get("images", []) if coco.is_file() else []
    by_name = {im.get("file_name"): im.get("gsd") for im in images}
    fallback = load_stats_gsd(root) if (root / "stats.json").is_file() else math.nan
    out = []
    for chip in chips_of(root):
        g = by_name.get(chip.name)
        g = float(g) if isinstance(g, int | float) and g > 0 else fallback
        target = model_grid(gsd, gsd_range, g) if math.isfinite(g) else None
        factor = 1.0 if target is None else target / g
        out.append((chip, 1.0 if abs(factor - 1.0) <= GSD_TOLERANCE else factor))
    return out


def _footprints(coco_path: Path, split: str | None) -> Any:
    """Footprints of the chips of a COCO file of `geoseg tile` (one split or all), by CRS."""
    from affine import Affine

    from geoseg.io.rasters import window_footprint

    by_crs: dict[str, list[Any]] = {}
    with coco_path.open(encoding="utf-8") as f:
        images = json.load(f).get("images", [])
    for im in images:
        if split is None or im.get("split") == split:
            poly = window_footprint(Window(0, 0, im["width"], im["height"]), Affine(*im["transform"][:6]))
            by_crs.setdefault(im["crs"], []).append(poly)
    return by_crs


def warn_if_overlapping_val(unlabelled: Sequence[str | Path], patches: Path) -> None:
    """Warn when unlabelled chips cover pixels of the validation split (optimistic scores)."""
    import geopandas as gpd
    import shapely

    val = _footprints(patches / "annotations.json", "val")
    if not val:
        return
    val_parts = [gpd.GeoSeries([shapely.union_all(polys)], crs=crs) for crs, polys in val.items()]
    for root in unlabelled:
        coco = Path(root) / "annotations.json"
        if not coco.is_file():
            continue
        for crs, polys in _footprints(coco, None).items():
            area = gpd.GeoSeries([shapely.union_all(polys)], crs=crs)
            for v in val_parts:
                inter = area.to_crs(v.crs).intersection(v).area.iloc[0]
                if inter > 0.01 * v.area.iloc[0]:
                    warnings.warn(
                        f"unlabelled chips in {root} cover pixels of the validation split of {patches}: "
                        "its scores will be optimistic; tile other scenes as unlabelled",
                        GeoSegWarning, stacklevel=2)
                    return


class UnlabelledChips(Dataset[dict[str, Any]]):
    """Weak and strong views of random crops of unlabelled chips.

    Args:
        roots: output folders of `geoseg tile`.
        stats: the band statistics of the *labelled* chips (the model's normalisation).
        crop: side of the random crops (chips smaller are used whole).
        strong: the strong view's augmentation config (photometric only).
        seed: crops, D4 elements and strong augmentations are f(seed, epoch, index).
        gsd, gsd_range: the labelled chips' GSD and the scale augmentation's range (None:
            off): the grid the chips are read on (:func:`chip_grid`).
        cutmix: when > 0, each sample also holds ``mix`` (H, W) bool: with this
            probability a box of half the area is False (those pixels come from the next
            sample of the batch, :func:`cutmix`), else all True.

    Raises:
        ConfigError: a folder without chips, or chips of another band count, data type or
            declared scale/offset than ``stats``.
    """

    def __init__(self, roots: Sequence[str | Path], stats: BandStats, crop: int | None,
                 strong: AugmentConfig, seed: int = 0, gsd: float | None = None,
                 gsd_range: tuple[float, float] | None = None, cutmix: float = 0.0) -> None:
        grids = {Path(r): chip_grid(Path(r), gsd, gsd_range) for r in roots}
        self.chips = [c for grid in grids.values() for c, _ in grid]
        self.factors = [f for grid in grids.values() for _, f in grid]
        for root, grid in grids.items():
            with rasterio.open(grid[0][0]) as src:
                if src.count != stats.bands:
                    raise ConfigError(f"unlabelled chips in {root} have {src.count} bands but the "
                                      f"labelled ones {stats.bands}; tile scenes of the same sensor")
                if stats.dtype and src.dtypes[0] != stats.dtype:  # normalised by the labelled chips' stats
                    raise ConfigError(f"unlabelled chips in {root} are {src.dtypes[0]} but the labelled ones "
                                      f"{stats.dtype}: the labelled chips' statistics would normalise them "
                                      "wrongly; tile scenes of the same sensor and processing")
                if reordered(band_meaning(src.colorinterp, src.descriptions, src.count), stats.meaning or ()):
                    raise ConfigError(f"unlabelled chips in {root} declare the labelled chips' bands in another "
                                      "order; tile scenes of the same sensor and band order")
                declared = band_scaling(src.scales, src.offsets, range(1, src.count + 1))
                if stats.scaling is not None and declared != stats.scaling:  # chips keep their scenes' own
                    raise ConfigError(f"unlabelled chips in {root} declare {describe(declared)} but the labelled "
                                      f"ones {describe(stats.scaling)}: their stored values mean another quantity; "
                                      "tile scenes of the same sensor and processing")
        self.stats, self.crop, self.seed, self.epoch, self.cutmix = stats, crop, seed, 0, cutmix
        self.strong = build_augment(strong, stats.bands, seed=seed)

    def __len__(self) -> int:
        return len(self.chips)

    def set_epoch(self, epoch: int) -> None:
        """Draw other crops and views (deterministically) for ``epoch``."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """``weak`` and ``strong`` (C, H, W) float32 normalised; ``valid`` (H, W) bool."""
        rng = np.random.default_rng([self.seed, self.epoch, i, 0x5E41])
        path = self.chips[i]
        try:
            with rasterio.open(path) as src:
                raw, valid = read_scaled(src, scaled_window((src.height, src.width), self.crop,
                                                            self.factors[i], rng))
        except RasterioError as err:
            raise InputRasterError(f"cannot read chip {path}: {err}; rerun `geoseg tile` to rewrite it") from None
        k = int(rng.integers(8))
        unit = np.where(valid, scale_to_unit(raw, self.stats, channel_axis=0), 0.0)
        unit, valid = d4(unit, k), d4(valid, k)
        weak = np.ascontiguousarray(unit.transpose(1, 2, 0), dtype=np.float32)
        self.strong.reseed(int(rng.integers(2**31)))
        strong, maps = self.strong(weak.copy(), {"valid": valid.copy()})
        valid = valid & maps["valid"].astype(bool)
        out = {"weak": self._tensor(weak, valid), "strong": self._tensor(strong, valid),
               "valid": torch.from_numpy(np.ascontiguousarray(valid))}
        if self.cutmix > 0:  # drawn after the rest: runs without cutmix draw as before
            out["mix"] = torch.from_numpy(mix_mask(valid.shape, self.cutmix, rng))
        return out

    @staticmethod
    def _tensor(unit: np.ndarray, valid: np.ndarray) -> torch.Tensor:
        image = unit_to_normalized(unit) * valid[..., None]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


class MeanTeacher:
    """The unlabelled half of each training step (see the module doc).

    Args:
        cfg: the ``semi`` section.
        stats: the labelled chips' band statistics.
        crop: crop side of the labelled samples (the same here).
        batch_size: the (global) labelled batch size; the unlabelled one is ``ratio`` times it.
        seed: the run's seed.
        patches: the labelled tile folder: a warning when unlabelled chips cover its
            validation split.
        rank, world: this process's share of each unlabelled batch (``rank`` of ``world``).
        gsd, gsd_range: the grid of the labelled chips (see :class:`UnlabelledChips`).
        reduce: sums a tensor over the processes, so that ``keep`` cuts the global batch.

    Raises:
        ConfigError: the unlabelled batch is not a multiple of ``world``.
    """

    def __init__(self, cfg: SemiConfig, stats: BandStats, crop: int | None, batch_size: int,
                 seed: int, patches: Path | None = None, rank: int = 0, world: int = 1,
                 gsd: float | None = None, gsd_range: tuple[float, float] | None = None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        from geoseg.train.distributed import check_unlabelled_batch

        self.cfg = cfg
        self.batch_size = max(1, round(cfg.ratio * batch_size))
        check_unlabelled_batch(self.batch_size, world)
        self.data = UnlabelledChips(cfg.unlabelled, stats, crop, cfg.strong, seed, gsd, gsd_range, cfg.cutmix)
        if patches is not None:
            warn_if_overlapping_val(cfg.unlabelled, patches)
        self.seed, self.rank, self.world, self.empty, self.reduce = seed, rank, world, 0, reduce

    def weight(self, epoch: float) -> float:
        """Weight of the unsupervised loss at a (fractional) epoch (:func:`ramp_weight`)."""
        return ramp_weight(self.cfg, epoch)

    def batches(self, epoch: int, steps: int) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's share of ``steps`` unlabelled batches of ``epoch`` (sampled with replacement, seeded)."""
        from geoseg.train.dataset import collate
        from geoseg.train.distributed import ShardSampler

        self.data.set_epoch(epoch)
        gen = torch.Generator().manual_seed(self.seed * 100019 + epoch)
        sample = torch.utils.data.RandomSampler(self.data, replacement=True,
                                                num_samples=steps * self.batch_size, generator=gen)
        sampler = ShardSampler(sample, self.batch_size, self.rank, self.world)
        loader = torch.utils.data.DataLoader(self.data, batch_size=sampler.share, sampler=sampler,
                                             drop_last=True, num_workers=0, collate_fn=collate)
        yield from loader

    def loss(self, student: torch.nn.Module, teacher: torch.nn.Module, batch: dict[str, torch.Tensor],
             loss_fn: Any, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The unsupervised loss of one batch, and ``unsup`` / ``confident`` to log."""
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            t_out = teacher(batch["weak"], budget=self.cfg.teacher_budget)
        teacher.train(was_training)
        strong, t_logits, valid = batch["strong"], t_out.logits, batch["valid"]
        if "mix" in batch:  # CutMix: the student's view and the teacher's maps mixed alike
            strong, t_logits, valid = cutmix(batch["mix"], strong, t_logits, valid)
        out = student(strong)
        if self.cfg.consistency == "soft":
            total = soft_consistency(out.logits, t_logits, valid)
            return total, {"unsup": float(total.detach()), "confident": 1.0}
        targets, share = pseudo_targets(t_logits, valid, self.cfg.threshold, self.cfg.keep_share, self.reduce)
        self.empty = self.empty + 1 if share < 1e-3 and self.cfg.threshold is not None else 0
        if self.empty == EMPTY_STEPS:  # once per run of empty steps
            warnings.warn(f"semi: the teacher kept no unlabelled pixel in {EMPTY_STEPS} steps (extent max(p, 1-p) "
                          f">= semi.threshold {self.cfg.threshold}), so the unsupervised loss teaches nothing; "
                          "a Lovász-trained extent seldom passes 0.8: remove semi.threshold (the default keeps "
                          "the most confident half of each class) or lower it", GeoSegWarning, stacklevel=2)
        total, _ = loss_fn(out, targets, progress=progress)
        return total, {"unsup": float(total.detach()), "confident": share}
