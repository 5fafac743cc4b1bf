"""Training of the Mask R-CNN baseline (``model.arch: maskrcnn``) on the same `geoseg tile` output.

What differs from the routed model, as hooks of :class:`geoseg.train.loop.Trainer` (the
optimiser, warm-up + cosine schedule, clipping, EMA, AMP on CUDA, exact resume,
checkpoints, ``metrics.csv`` and ``curves.png`` are the loop's own):

- samples (:class:`InstanceDataset`): the chip window and its instance label image go
  through the same augmentation (geometric ops move both, nearest for labels), then masks,
  boxes (from the augmented masks, so they stay aligned) and labels are derived;
- the loss: the sum of torchvision's five Mask R-CNN losses, each logged;
- several processes (``--devices``): as the routed model's (:mod:`geoseg.train.distributed`);
  the RPN's and the box head's samplers draw from each rank's own random stream;
- validation: detections → instance label image (:func:`~geoseg.predict.maskrcnn_phase.
  detections_to_instances`, as predict makes it) → COCO mask AP, pixel IoU, instance F1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from geoseg.models.maskrcnn import MaskRCNNConfig, MaskRCNNModel
from geoseg.models.postprocess import PostprocessConfig
from geoseg.predict.maskrcnn_phase import detections_to_instances
from geoseg.train.dataset import ChipDataset
from geoseg.train.dataset import collate as collate_maps
from geoseg.train.loop import Trainer
from geoseg.train.metrics import Validator

#: keys of a sample that are per-instance targets (lists in a batch, not stacked)
TARGET_KEYS = ("boxes", "labels", "masks")


def instance_targets(labels: np.ndarray, cats: Sequence[int], min_pixels: int = 2) -> dict[str, torch.Tensor]:
    """The targets of torchvision's Mask R-CNN for an instance label image.

    Args:
        labels: int (H, W); 0 background, instance ``i`` is ``labels == i``.
        cats: class index of instance ``i`` at ``cats[i - 1]``.
        min_pixels: instances with fewer pixels left (after a crop or a warp) are dropped.

    Returns:
        ``boxes`` (N, 4) float32 x0, y0, x1, y1 (pixel edges, so x1 > x0), ``labels`` (N,)
        int64 (class index + 1) and ``masks`` (N, H, W) uint8.

    Examples:
        >>> t = instance_targets(np.array([[0, 1, 1], [0, 1, 1], [2, 0, 0]]), [0, 0])
        >>> t["boxes"].tolist(), t["labels"].tolist(), t["masks"].shape
        ([[1.0, 0.0, 3.0, 2.0]], [1], torch.Size([1, 3, 3]))
    """
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    ids = ids[counts >= min_pixels]
    masks = labels[None] == ids[:, None, None]
    boxes = np.zeros((len(ids), 4), dtype=np.float32)
    for k, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return {"boxes": torch.from_numpy(boxes),
            "labels": torch.tensor([int(cats[i - 1]) + 1 for i in ids], dtype=torch.int64),
            "masks": torch.from_numpy(masks.astype(np.uint8))}


class InstanceDataset(ChipDataset):
    """Chips with Mask R-CNN targets (same windows, crops, augmentation and seeds as :class:`ChipDataset`)."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample ``i``.

        Returns:
            ``image`` (C, H, W) float32 normalised (0 where invalid), ``valid`` (H, W) bool,
            ``image_id`` int and the targets of :func:`instance_targets` (instances on
            valid pixels only).
        """
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} chips")
        rng = self._rng(i)
        sw = self.scaled_window(i, rng)
        raw, valid = self._read(self.root / "images" / str(self.index.files[i]), sw)
        labels, cats, _ = self._labels(i, sw, pad=0)
        out, maps, valid = self._augmented(raw, valid, {"labels": labels}, rng)
        out.update(instance_targets(np.where(valid, maps["labels"], 0), cats))
        out["valid"] = torch.from_numpy(valid)
        out["image_id"] = int(self.index.ids[i])
        return out


def collate_instances(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`geoseg.train.dataset.collate` for images and ``valid``; targets as a list of dicts."""
    stacked: dict[str, Any] = collate_maps([{k: v for k, v in s.items() if k not in TARGET_KEYS}
                                            for s in batch])
    stacked["targets"] = [{k: s[k] for k in TARGET_KEYS} for s in batch]
    return stacked


@torch.no_grad()
def run_validation(model: MaskRCNNModel, loader: Iterable[dict[str, Any]], coco: COCO,
                   image_ids: Iterable[int], post: PostprocessConfig, device: torch.device) -> dict[str, float]:
    """Detect on every val batch and compute the metrics of :class:`~geoseg.train.metrics.Validator`.

    Args:
        model: the Mask R-CNN model.
        loader: batches of val chips (``image``, ``valid``, ``image_id``).
        coco: ground truth.
        image_ids: ids of the val images (the loader's).
        post: ``min_area``, the smallest instance in pixels.
        device: where the model runs.
    """
    was_training = model.training
    model.eval()
    val = Validator(coco, image_ids, post)
    for batch in loader:
        dets = model.detect(batch["image"].to(device))
        for k, image_id in enumerate(batch["image_id"]):
            info = coco.imgs[int(image_id)]
            h, w = info["height"], info["width"]
            valid = batch["valid"][k, :h, :w].numpy()
            inst = detections_to_instances(dets[k], (h, w), model.cfg, min_area=post.min_area, valid=valid)
            val.add_instances(int(image_id), inst, inst.labels > 0, valid)
    model.train(was_training)
    return val.metrics()


class MaskRCNNTrainer(Trainer):
    """The loop of :class:`~geoseg.train.loop.Trainer` with the Mask R-CNN parts."""

    dataset_class = InstanceDataset
    collate = staticmethod(collate_instances)
    #: Every parameter gets a gradient in every step (measured, batches without instances too:
    #: torchvision's empty box and mask losses are ``0 x`` the head outputs), so DDP skips the search.
    find_unused = False

    def build_model(self) -> torch.nn.Module:
        """:class:`~geoseg.models.maskrcnn.MaskRCNNModel` of ``cfg.model``."""
        assert isinstance(self.cfg.model, MaskRCNNConfig)
        return MaskRCNNModel.from_config(self.cfg.model)

    def batch_loss(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The sum of torchvision's losses; each is logged without its ``loss_`` prefix."""
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
        losses = self.model(batch["image"].to(self.device, non_blocking=True), targets)
        total = torch.stack(list(losses.values())).sum()
        return total, {k.removeprefix("loss_"): v.detach() for k, v in losses.items()}

    def validate(self) -> dict[str, float]:
        """COCO mask AP, AP50, pixel IoU and instance F1@0.5 of the EMA weights on the val chips."""
        if not self.val_ids:
            return {}
        model = self.eval_model()
        assert isinstance(model, MaskRCNNModel)
        return run_validation(model, self._loader(False), self.coco, self.val_ids, self.cfg.postprocess,
                              self.device)
