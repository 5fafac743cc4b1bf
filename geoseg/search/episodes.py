"""Training episodes of search by example from the output of ``geoseg tile``.

An episode picks a class and K of its instances; the chips under them give the K
templates (a square around each instance, resized to the template side); a crop of
another chip is the search image, whose instances of that class are the positives and
whose instances of other classes are hard negatives (objectness 0 on them, like the
background). Search crops are drawn, with probability ``positive``, around an instance
of the class, else around an instance of another class. An episode keeps the boxes and
classes of every instance in its crop: the kind-embedding loss uses the other classes'
objects as negatives of the templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import rasterio
import torch
import torch.nn.functional as F  # noqa: N812
from pydantic import Field

from geoseg.bands import BandStats, normalize, scale_to_unit, unit_to_normalized
from geoseg.config import Strict
from geoseg.errors import InputRasterError


class EpisodeConfig(Strict):
    """How episodes are drawn (``episodes:`` of a ``task: search`` config)."""

    crop: int = Field(128, ge=32, multiple_of=8, description="search crop side in px")
    batch_size: int = Field(8, ge=1)
    steps_per_epoch: int = Field(50, ge=1)
    examples: int = Field(3, ge=1, description="templates per episode (at most)")
    min_examples: int = Field(1, ge=1, description="templates per episode (at least)")
    context: float = Field(1.5, ge=1.0, le=4.0, description="template side / instance box side")
    positive: float = Field(0.85, ge=0.0, le=1.0, description="share of crops around a positive")
    min_box: int = Field(6, ge=1, description="instances smaller than this (px) are not templates")
    val_episodes: int = Field(48, ge=1)


@dataclass(frozen=True)
class Instance:
    """One annotation: the chip it lies on, its box (x0, y0, x1, y1 px) and class index."""

    chip: int
    box: tuple[float, float, float, float]
    cls: int


class EpisodeSource:
    """The chips and instances of one split of a tile directory, chips read on demand."""

    def __init__(self, root: str | Path, split: str, stats: BandStats) -> None:
        self.root = Path(root)
        coco: dict[str, Any] = json.loads((self.root / "annotations.json").read_text(encoding="utf-8"))
        self.classes = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        cat_index = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
        images = [im for im in coco["images"] if im.get("split", "train") == split]
        ids = {im["id"]: i for i, im in enumerate(images)}
        self.files = [self.root / "images" / im["file_name"] for im in images]
        self.sizes = [(int(im["height"]), int(im["width"])) for im in images]
        self.instances = [Instance(ids[a["image_id"]], (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                                        a["bbox"][1] + a["bbox"][3]), cat_index[a["category_id"]])
                          for a in coco["annotations"] if a["image_id"] in ids]
        self.stats = stats
        self._cache: dict[int, np.ndarray] = {}

    def chip(self, i: int) -> np.ndarray:
        """Chip ``i`` as [0, 1] values (H, W, C) float32 (read once, then kept)."""
        if i not in self._cache:
            try:
                with rasterio.open(self.files[i]) as src:
                    raw = src.read().astype(np.float32)
            except rasterio.errors.RasterioError as err:
                raise InputRasterError(f"{self.files[i]}: cannot read the chip ({err}); rerun geoseg tile "
                                       "with --overwrite") from None
            self._cache[i] = np.moveaxis(scale_to_unit(raw, self.stats), 0, -1)
        return self._cache[i]

    def by_class(self, cls: int, min_box: int = 1) -> list[Instance]:
        """Instances of a class whose box is at least ``min_box`` px on both sides."""
        return [a for a in self.instances if a.cls == cls
                and a.box[2] - a.box[0] >= min_box and a.box[3] - a.box[1] >= min_box]


def crop_square(image: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray:
    """A ``side`` square of an (H, W, C) image centred on (cx, cy); outside is reflected."""
    h, w = image.shape[:2]
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        mode = "reflect" if pad < min(h, w) else "edge"
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode)  # type: ignore[call-overload]
        x0, y0 = x0 + pad, y0 + pad
    return image[y0:y0 + side, x0:x0 + side]


def template_side(box: tuple[float, float, float, float], context: float, size: int) -> int:
    """Side of the square read around ``box`` for a template of ``size`` px.

    ``size`` itself (native resolution: the template has the scale of the scenes) unless
    the box with its context is larger, then that (resized down to ``size``).
    """
    return max(size, int(round(max(box[2] - box[0], box[3] - box[1]) * context)))


def to_template(crop: np.ndarray, size: int) -> torch.Tensor:
    """A normalised (C, size, size) template from an (h, w, C) crop of [0, 1] values."""
    t = torch.from_numpy(np.ascontiguousarray(unit_to_normalized(crop).transpose(2, 0, 1)))
    return F.interpolate(t[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def d4(image: np.ndarray, boxes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/rotations (``k`` in 0..7) of a square (S, S, C) image and its boxes."""
    s = image.shape[0]
    b = boxes.copy()
    if k & 4:
        image = image[:, ::-1]
        b[:, [0, 2]] = s - boxes[:, [2, 0]]
    for _ in range(k & 3):  # rotate 90° counter-clockwise: (x, y) -> (y, s - x)
        image = np.rot90(image)
        b = np.stack([b[:, 1], s - b[:, 2], b[:, 3], s - b[:, 0]], 1) if len(b) else b
    return np.ascontiguousarray(image), b


class Episode(NamedTuple):
    """One training episode."""

    search: torch.Tensor  #: (C, S, S) normalised search crop
    templates: torch.Tensor  #: (k, C, T, T) normalised templates
    boxes: torch.Tensor  #: (n, 4) px, the instances of the templates' class in the crop
    cls: int  #: the templates' class
    others: torch.Tensor  #: (m, 4) px, the instances of other classes in the crop
    other_cls: torch.Tensor  #: (m,) their classes


def draw_episode(src: EpisodeSource, rng: np.random.Generator, cfg: EpisodeConfig, template_size: int,
                 k: int, photometric: Any = None) -> Episode:
    """One episode (its search crop, templates, and the boxes of every kind in the crop).

    Raises:
        InputRasterError: no class has an instance (nothing to learn from).
    """
    classes = [c for c in range(len(src.classes)) if src.by_class(c, cfg.min_box)]
    if not classes:
        raise InputRasterError(f"{src.root} holds no instance of at least {cfg.min_box} px in a chip "
                               "of this split; tile labelled scenes with --labels")
    cls = int(rng.choice(classes))
    pool = src.by_class(cls, cfg.min_box)
    picks = rng.choice(len(pool), size=k, replace=len(pool) < k)
    temps = []
    for p in picks:
        a = pool[int(p)]
        cx, cy = (a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2
        crop = crop_square(src.chip(a.chip), cx, cy, template_side(a.box, cfg.context, template_size))
        crop, _ = d4(crop, np.zeros((0, 4), np.float32), int(rng.integers(8)))
        if photometric is not None:
            crop, _ = photometric(crop, {})
        temps.append(to_template(crop, template_size))
    s = cfg.crop
    others = [a for a in src.instances if a.cls != cls]
    if rng.random() < cfg.positive or not others:
        anchor = pool[int(rng.integers(len(pool)))]
    else:
        anchor = others[int(rng.integers(len(others)))]
    ax, ay = (anchor.box[0] + anchor.box[2]) / 2, (anchor.box[1] + anchor.box[3]) / 2
    cx, cy = ax + rng.uniform(-s / 3, s / 3), ay + rng.uniform(-s / 3, s / 3)
    image = crop_square(src.chip(anchor.chip), cx, cy, s)
    x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
    inst = [a for a in src.instances if a.chip == anchor.chip]
    boxes = np.array([[a.box[0] - x0, a.box[1] - y0, a.box[2] - x0, a.box[3] - y0] for a in inst],
                     dtype=np.float32).reshape(-1, 4)
    kinds = np.array([a.cls for a in inst], dtype=np.int64)
    if len(boxes):
        mid = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((mid >= 0) & (mid < s)).all(1)
        boxes, kinds = boxes[inside].clip(0, s), kinds[inside]
    image, boxes = d4(image, boxes, int(rng.integers(8)))
    if photometric is not None:
        image, _ = photometric(image, {})
    search = torch.from_numpy(np.ascontiguousarray(unit_to_normalized(image).transpose(2, 0, 1))).float()
    same = kinds == cls
    return Episode(search, torch.stack(temps), torch.from_numpy(np.ascontiguousarray(boxes[same])), cls,
                   torch.from_numpy(np.ascontiguousarray(boxes[~same])), torch.from_numpy(kinds[~same]))


def templates_from_chips(chips: list[np.ndarray], stats: BandStats, size: int) -> torch.Tensor:
    """Normalised templates (K, C, T, T) from raw (C, h, w) crops (inference)."""
    out = []
    for raw in chips:
        z = normalize(raw.astype(np.float32), stats)
        t = torch.from_numpy(np.ascontiguousarray(z))[None].float()
        out.append(F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0])
    return torch.stack(out)
