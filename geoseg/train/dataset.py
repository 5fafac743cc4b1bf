"""Training samples from the output of `geoseg tile`: chips, targets, normalisation.

A :class:`ChipDataset` reads ``DIR/annotations.json`` (COCO) and ``DIR/stats.json`` once
and keeps a compact index (numpy arrays and one bytes blob of RLE counts, so DataLoader
workers share it without copy-on-write growth); rasters are opened in ``__getitem__``.

One sample, in order:

1. a window of the chip (a random ``crop`` × ``crop`` window for ``train``, the whole
   chip for ``val``) read with rasterio; ``valid`` = ``dataset_mask() > 0`` and finite;
2. targets by :func:`geoseg.train.targets.make_targets` on the instances of the chip in that
   window plus a halo (so neighbours just outside the window count), then cropped;
3. raw values scaled to [0, 1] per band by :func:`scale_to_unit`, the augmentation
   applied to image, targets and ``valid`` together;
4. standardised by :func:`unit_to_normalized`; invalid pixels are 0 in the image and
   background in the targets (``extent`` = ``boundary`` = ``contact`` = 0, ``sdf`` = 1,
   ``classes`` = −1); losses should be masked by ``valid``.

Steps 3 and 4 together are :func:`normalize`, which is what the predictor applies to raw
values: ``clip((x − mean) / std, −3, 3)`` per band, with the train-split band statistics
of ``stats.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import rasterio
import torch
from pycocotools import mask as mask_utils
from rasterio.errors import RasterioError
from rasterio.windows import Window
from torch.utils.data import Dataset

from geoseg.bands import load_stats, scale_to_unit, unit_to_normalized
from geoseg.errors import ConfigError, InputRasterError
from geoseg.io.encoding import recorded_scaling
from geoseg.train.scale import (
    ScaledWindow,
    draw_factor,
    label_region,
    read_scaled,
    resample_labels,
    scaled_window,
)
from geoseg.train.targets import halo, make_targets

PAD = {"image": 0.0, "extent": 0.0, "boundary": 0.0, "contact": 0.0, "sdf": 1.0,
       "valid": False, "classes": -1}
"""Fill of each key outside the data: in padding (:func:`collate`) and invalid pixels."""

Array = TypeVar("Array", np.ndarray, torch.Tensor)
AugmentFn = Callable[[np.ndarray, dict[str, np.ndarray]], tuple[np.ndarray, dict[str, np.ndarray]]]


def read_stats(patches: Path) -> dict[str, Any]:
    """``stats.json`` of a tile directory, checked (bands, classes, finite mean and std).

    Raises:
        ConfigError: no stats.json in ``patches``.
        InputRasterError: stats.json is malformed; the message says to re-run tile.
    """
    path = patches / "stats.json"
    if not patches.is_dir():
        raise ConfigError(f"--patches {patches} does not exist or is not a folder; pass the --out "
                          "folder of geoseg tile")
    if not path.is_file():
        raise ConfigError(f"{patches} has no stats.json; run geoseg tile first (--patches DIR)")
    stats = load_stats(patches)  # malformed JSON, missing keys, NaN: one line naming it
    raw = json.loads(path.read_text(encoding="utf-8"))
    classes = raw.get("classes", list(stats.classes))
    if (raw.get("bands", stats.bands) != stats.bands or not isinstance(classes, list)
            or not classes or not all(isinstance(c, str) for c in classes)):
        raise InputRasterError(f"{path} is not valid band statistics (bands {raw.get('bands')!r} "
                               f"for {stats.bands} means, classes {classes!r}); "
                               "rerun `geoseg tile` with --overwrite")
    gsd = raw.get("gsd")  # absent in tile outputs before GSDs were recorded
    ok = isinstance(gsd, int | float) and math.isfinite(gsd) and gsd > 0
    scaling = recorded_scaling(raw)  # absent before declared scales/offsets were recorded: None
    return {"bands": stats.bands, "dtype": stats.dtype, "mean": list(stats.mean),
            "std": list(stats.std), "classes": classes, "gsd": float(gsd) if ok else None,
            "scaling": None if scaling is None else [list(p) for p in scaling], "meaning": raw.get("meaning")}


def same_chips(ckpt: dict[str, Any], stats: dict[str, Any], patches: Path, last: Path) -> None:
    """Refuse to resume a run on chips other than those it was trained on.

    The run normalises with the chips' statistics and records them in its checkpoints: chips
    tiled again from other scenes (other means, another data type, GSD or classes) would
    change the input of the weights halfway, and the checkpoint would record only the new ones.

    Raises:
        ConfigError: bands, data type, mean, std, GSD, classes or declared scales/offsets
            differ from ``last``'s.
    """
    had = {**ckpt.get("stats", {}), "classes": ckpt.get("classes")}

    def changed(a: Any, b: Any, numbers: bool) -> bool:
        if not numbers:
            return bool(a != b)
        return np.shape(a) != np.shape(b) or not np.allclose(a, b, rtol=1e-6, atol=0)

    keys = ("bands", "dtype", "mean", "std", "gsd", "classes", "scaling", "meaning")
    differ = [k for k in keys  # unrecorded (None): not compared
              if had.get(k) is not None and stats.get(k) is not None
              and changed(had[k], stats[k], k in ("mean", "std", "gsd"))]
    if differ:
        raise ConfigError(f"--patches {patches} are not the chips {last} was trained on ({', '.join(differ)} "
                          "differ): resume with those chips, or train a new run (--overwrite, or another --out)")


class _Index:
    """Compact per-split index of a COCO file: numpy arrays, RLE counts in one blob."""

    def __init__(self, coco: dict[str, Any], split: str) -> None:
        cat_pos = {c["id"]: i for i, c in enumerate(coco.get("categories", []))}
        images = [im for im in coco["images"] if im.get("split") == split]
        self.ids = np.array([im["id"] for im in images], dtype=np.int64)
        self.files = np.array([im["file_name"] for im in images], dtype=str)
        self.hw = np.array([(im["height"], im["width"]) for im in images], dtype=np.int64)
        self.hw = self.hw.reshape(-1, 2)
        self.gsd = np.array([float(im.get("gsd") or "nan") for im in images], dtype=np.float64)
        row_of = {int(i): r for r, i in enumerate(self.ids)}
        per: list[list[dict[str, Any]]] = [[] for _ in images]
        for ann in coco.get("annotations", []):
            r = row_of.get(int(ann["image_id"]))
            if r is not None:
                per[r].append(ann)
        anns = [a for group in per for a in group]
        self.start = np.cumsum([0] + [len(g) for g in per], dtype=np.int64)
        self.bbox = np.array([a["bbox"] for a in anns], dtype=np.int64).reshape(-1, 4)
        self.cat = np.array([cat_pos.get(a["category_id"], a["category_id"] - 1) for a in anns],
                            dtype=np.int64)
        counts = [a["segmentation"]["counts"].encode("ascii") for a in anns]
        self.rle_start = np.cumsum([0] + [len(c) for c in counts], dtype=np.int64)
        self.blob = np.frombuffer(b"".join(counts), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self, i: int, rows: tuple[int, int], cols: tuple[int, int]
               ) -> tuple[np.ndarray, list[int]]:
        """Instance label image of chip ``i`` in a window, and the class of each label."""
        h, w = (int(v) for v in self.hw[i])
        (r0, r1), (c0, c1) = rows, cols
        labels = np.zeros((r1 - r0, c1 - c0), dtype=np.int32)
        cats: list[int] = []
        for a in range(self.start[i], self.start[i + 1]):
            x, y, bw, bh = self.bbox[a]
            if x >= c1 or y >= r1 or x + bw <= c0 or y + bh <= r0:
                continue
            rle = {"size": [h, w],
                   "counts": self.blob[self.rle_start[a]:self.rle_start[a + 1]].tobytes()}
            m = mask_utils.decode(rle)[r0:r1, c0:c1].astype(bool)
            cats.append(int(self.cat[a]))
            labels[m] = len(cats)
        return labels, cats


class ChipDataset(Dataset[dict[str, Any]]):
    """Samples of one split of a tile directory (see the module doc for the steps).

    Args:
        root: output directory of `geoseg tile`.
        split: ``"train"`` (random crops) or ``"val"`` (whole chips).
        crop: side of the random training crops (None: whole chips); chips smaller than
            ``crop`` are used whole.
        augment: per-sample augmentation, e.g. :func:`geoseg.train.augment.build_augment`;
            reseeded per sample when it has a ``reseed`` method. Its ``gsd_p`` and
            ``gsd_range`` attributes, when present, turn on scale augmentation in metres
            for ``train`` (:mod:`geoseg.train.scale`).
        boundary_width: see :func:`geoseg.train.targets.make_targets`.
        contact_distance: see :func:`geoseg.train.targets.make_targets`.
        sdf_clip: see :func:`geoseg.train.targets.make_targets`.
        seed: crops and augmentations are a function of (seed, epoch, index), whatever
            the number of DataLoader workers; call :meth:`set_epoch` (or :meth:`reseed`)
            each epoch before creating the DataLoader iterator (with persistent workers
            the change would not reach them).

    Raises:
        InputRasterError: ``annotations.json`` or ``stats.json`` missing or unreadable, or
            a chip it lists missing on disk.
        ConfigError: unknown split, or no chip in the split; train chips without any object;
            scale augmentation on chips whose GSD is unknown.
    """

    def __init__(self, root: str | Path, split: Literal["train", "val"] = "train", *,
                 crop: int | None = 512, augment: AugmentFn | None = None,
                 boundary_width: int = 2, contact_distance: float = 3, sdf_clip: float = 20.0,
                 seed: int = 0) -> None:
        self.root = Path(root)
        if split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', not {split!r}")
        if crop is not None and crop < 1:
            raise ConfigError(f"crop must be a positive number of pixels or None, not {crop}")
        ann_path = self.root / "annotations.json"
        if not ann_path.is_file():
            raise InputRasterError(f"{ann_path} not found: {self.root} is not a tile directory; "
                                   "run `geoseg tile SCENES --labels LABELS --out DIR` first")
        self.stats = load_stats(self.root)
        try:
            with ann_path.open(encoding="utf-8") as f:
                coco = json.load(f)
            self.index = _Index(coco, split)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise InputRasterError(f"{ann_path} is not COCO as written by geoseg tile ({err!r}); "
                                   "rerun `geoseg tile` with --overwrite") from None
        self.classes: tuple[str, ...] = tuple(c["name"] for c in coco.get("categories", []))
        del coco
        if len(self.index) == 0:
            hint = ("tile with val_fraction > 0 or val_scenes set" if split == "val"
                    else "tile more scenes or lower val_fraction")
            raise ConfigError(f"no '{split}' chips in {ann_path}; {hint}")
        if split == "train" and len(self.index.bbox) == 0:  # a model of empty masks, with exit 0
            raise ConfigError(
                f"the {len(self.index)} train chips of {ann_path} hold no labelled object (tiled without "
                "--labels, or with labels outside the train scenes); tile with --labels, or give chips "
                "without labels to train as --unlabelled")
        missing = [str(f) for f in self.index.files if not (self.root / "images" / str(f)).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more chips)" if len(missing) > 1 else ""
            raise InputRasterError(
                f"chip {self.root / 'images' / missing[0]} is listed in {ann_path} but missing"
                f"{more}; re-run the same `geoseg tile` command to write it again")
        bands = getattr(augment, "bands", self.stats.bands)
        if bands != self.stats.bands:
            raise ConfigError(f"the augmentation is built for {bands} bands but the chips in "
                              f"{self.root} have {self.stats.bands}; build it with "
                              f"bands={self.stats.bands}")
        self.split = split
        self.crop = crop
        self.augment = augment
        self.boundary_width = boundary_width
        self.contact_distance = contact_distance
        self.sdf_clip = sdf_clip
        self.seed = seed
        self.epoch = 0
        self.gsd_p = float(getattr(augment, "gsd_p", 0.0)) if split == "train" else 0.0
        self.gsd_range: tuple[float, float] | None = getattr(augment, "gsd_range", None)
        if self.gsd_p > 0:
            fallback = load_stats_gsd(self.root)
            self.index.gsd = np.where(np.isfinite(self.index.gsd), self.index.gsd, fallback)
            if not np.isfinite(self.index.gsd).all():
                raise ConfigError(f"augment.gsd needs the ground sampling distance of the chips, and "
                                  f"{ann_path} does not record it; rerun `geoseg tile` with --overwrite")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids of the chips, in dataset order."""
        return [int(i) for i in self.index.ids]

    def set_epoch(self, epoch: int) -> None:
        """Draw other crops and augmentations (deterministically) for ``epoch``."""
        self.epoch = int(epoch)

    def reseed(self, key: int) -> None:
        """Select the crops and augmentations of the next samples (same as :meth:`set_epoch`).

        Args:
            key: any int that changes per epoch, e.g. drawn from a seeded generator.
        """
        self.set_epoch(key)

    def window(self, i: int, rng: np.random.Generator | None = None) -> Window:
        """The window of chip ``i`` that sample ``i`` reads (random for train crops)."""
        return self.scaled_window(i, rng if rng is not None else self._rng(i)).window

    def scaled_window(self, i: int, rng: np.random.Generator) -> ScaledWindow:
        """The window of chip ``i`` that sample ``i`` reads and the grid it is read into."""
        hw = (int(self.index.hw[i][0]), int(self.index.hw[i][1]))
        crop = None if self.split == "val" else self.crop
        factor = draw_factor(rng, self.gsd_p, self.gsd_range, float(self.index.gsd[i]))
        return scaled_window(hw, crop, factor, rng)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, i])

    def _read(self, path: Path, sw: ScaledWindow) -> tuple[np.ndarray, np.ndarray]:
        try:
            with rasterio.open(path) as src:
                if src.count != self.stats.bands:
                    raise InputRasterError(
                        f"{path} has {src.count} bands but stats.json {self.stats.bands}; "
                        "rerun `geoseg tile` with --overwrite")
                raw, valid = read_scaled(src, sw)
        except RasterioError as err:
            raise InputRasterError(f"cannot read chip {path}: {err}; "
                                   "rerun `geoseg tile` to rewrite it") from None
        return raw, valid

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample ``i``.

        Returns:
            ``image`` (C, H, W) float32 normalised; ``extent``, ``boundary``,
            ``contact``, ``sdf`` (H, W) float32; ``valid`` (H, W) bool; ``classes``
            (H, W) int64; ``image_id`` int (the COCO id).

        Raises:
            InputRasterError: the chip cannot be read.
        """
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} chips")
        rng = self._rng(i)
        sw = self.scaled_window(i, rng)
        raw, valid = self._read(self.root / "images" / str(self.index.files[i]), sw)
        labels, cats, (top, left) = self._labels(i, sw, halo(self.boundary_width, self.contact_distance,
                                                             self.sdf_clip))
        t = make_targets(labels, cats, boundary_width=self.boundary_width,
                         contact_distance=self.contact_distance, sdf_clip=self.sdf_clip)
        ch, cw = sw.shape
        maps: dict[str, np.ndarray] = {k: v[top:top + ch, left:left + cw] for k, v in t.items()}
        out, maps, valid = self._augmented(raw, valid, maps, rng)
        for key in ("extent", "boundary", "contact", "sdf", "classes"):
            dtype = np.int64 if key == "classes" else np.float32
            out[key] = torch.from_numpy(np.where(valid, maps[key], PAD[key]).astype(dtype))
        out["valid"] = torch.from_numpy(valid)
        out["image_id"] = int(self.index.ids[i])
        return out

    def _labels(self, i: int, sw: ScaledWindow, pad: int) -> tuple[np.ndarray, list[int], tuple[int, int]]:
        """Instance labels of sample ``i`` on its grid, their classes, and where its window starts.

        The labels reach ``pad`` sample pixels beyond the window (within the chip); the start
        is the (row, col) of the window's first pixel in them.
        """
        hw = (int(self.index.hw[i][0]), int(self.index.hw[i][1]))
        region = label_region(sw, hw, pad)
        labels, cats = self.index.labels(i, *region)
        labels, start = resample_labels(labels, sw, region)
        return labels, cats, start

    def _augmented(self, raw: np.ndarray, valid: np.ndarray, maps: dict[str, np.ndarray],
                   rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
        """Steps 3-4 of the module doc: scale, augment (image, ``maps`` and ``valid`` together), standardise.

        Returns:
            ``({"image": (C, H, W) float32 tensor}, augmented maps, valid (H, W) bool)``.
        """
        maps = {**maps, "valid": valid}
        unit = scale_to_unit(raw, self.stats, channel_axis=0).transpose(1, 2, 0)
        unit = np.where(valid[..., None], unit, 0.0).astype(np.float32)
        if self.augment is not None:
            if hasattr(self.augment, "reseed"):
                self.augment.reseed(int(rng.integers(2**31)))
            unit, maps = self.augment(unit, maps)
        valid = maps["valid"].astype(bool)
        image = unit_to_normalized(unit) * valid[..., None]
        return ({"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))},
                maps, valid)


def load_stats_gsd(root: Path) -> float:
    """``gsd`` of ``root/stats.json`` (NaN when not recorded)."""
    gsd = json.loads((root / "stats.json").read_text(encoding="utf-8")).get("gsd")
    return float(gsd) if isinstance(gsd, int | float) and gsd > 0 else math.nan


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack samples, padding bottom/right to the largest H and W of the batch.

    Padding is invalid (``valid`` False) and background (see ``PAD``).

    Args:
        batch: samples of :class:`ChipDataset`.

    Returns:
        The same keys; ``image_id`` as an int64 tensor.

    Shape:
        - image: (B, C, H, W)
        - extent, boundary, contact, sdf, valid, classes: (B, H, W)
        - image_id: (B,)
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    hmax = max(int(s["valid"].shape[-2]) for s in batch)
    wmax = max(int(s["valid"].shape[-1]) for s in batch)
    out: dict[str, torch.Tensor] = {}
    for key in batch[0]:
        if key == "image_id":
            out[key] = torch.tensor([int(s[key]) for s in batch], dtype=torch.int64)
            continue
        first = batch[0][key]
        shape = (len(batch), *first.shape[:-2], hmax, wmax)
        stacked = torch.full(shape, PAD.get(key, 0), dtype=first.dtype)
        for b, s in enumerate(batch):
            v = s[key]
            stacked[b, ..., : v.shape[-2], : v.shape[-1]] = v
        out[key] = stacked
    return out
