"""The routed model: Enhance, a cheap PV stream everywhere, FF only where it pays.

Data flow (see docs/architecture.md, "The routed model")::

    x ─pad─▶ avg-pool 1/scale ─▶ [PV graph: Enhance ─▶ PV ─▶ pv_logits, utility per cell]
       │                                                        │ router: top-K (+ random in training)
       └──── pack cells with halo ─▶ [FF graph: Enhance ─▶ FF ─▶ centre crop] ─▶ ff_logits
    fuse: bilinear PV upsampled to full res, chosen cells overwritten by FF, crop to H, W

The two bracketed graphs (:meth:`RoutedModel.pv_graph`, :meth:`RoutedModel.ff_graph`) are
what a predictor runs and what `geoseg export` writes to ONNX. Enhance sits inside each,
with the same weights: PV's input is the image averaged to 1/scale *before* Enhance, so
a predictor can read it decimated (COG overviews), and Enhance runs at full resolution
only on the tiles FF sees, so the cost of the full-resolution path scales with the budget.
Enhance reaches ``RECEPTIVE_HALO`` (4) pixels, well inside the FF halo.

Map channels: 0 extent, 1 boundary, 2 contact, 3.. class logits (only if > 1 class); logits.

Padding: :meth:`RoutedModel.forward` pads the input on the bottom and right to a multiple
of ``cfg.multiple = lcm(cell, scale * 2**pv.encoder_depth)`` (reflect, zeros when the input is
too small to reflect), runs every stage on the padded image and crops ``logits`` back to
(H, W). ``pv_logits``, ``utility`` and ``cells`` refer to the padded image; cells wholly
in the padding are never chosen. The stages (:meth:`forward_pv`, :meth:`forward_ff`,
:meth:`fuse`) take already padded images so that a sliding-window predictor can call them
one by one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.cells import crop_centre, grid_shape, pack_cells, pad_mode, paste_cells
from geoseg.models.config import ModelConfig
from geoseg.models.enhance import Enhance
from geoseg.models.regions import pack_regions, run_regions
from geoseg.models.router import (
    k_for_budget,
    k_for_deadline,
    mask_to_cells,
    random_extra_mask,
    topk_mask,
)
from geoseg.models.streams import build_stream
from geoseg.models.triton_cells import (
    pack_cells_triton,
    pack_regions_triton,
    paste_cells_triton,
    use_triton,
)


@dataclass
class RoutedOutput:
    """What one forward returns (all logits).

    Shape:
        - logits: (B, C, H, W) the fused maps at the input size
        - pv_logits: (B, C, Hp / scale, Wp / scale) PV maps of the padded input (Hp, Wp)
        - utility: (B, Hp / cell, Wp / cell) predicted benefit of FF per cell
        - cells: (N, 3) int64 (batch, row, col) of the cells FF ran on, row-major order
        - ff_logits: (N, C, cell, cell) FF maps of those cells (halo cropped)
    """

    logits: torch.Tensor
    pv_logits: torch.Tensor
    utility: torch.Tensor
    cells: torch.Tensor
    ff_logits: torch.Tensor


class RoutedModel(nn.Module):
    """Enhance + PV stream + router + FF stream + fuse.

    Args:
        cfg: the validated model config.

    Raises:
        ConfigError: a stream cannot be built (unknown encoder, downloadable weights).
        CheckpointError: a local encoder weights file is bad.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_out, bands = cfg.n_outputs, cfg.in_channels
        ckpt = cfg.gradient_checkpointing
        self.enhancer = Enhance(bands, cfg.enhance)
        self.pv = build_stream(cfg.pv, bands, n_out, checkpointing=ckpt)
        self.ff = build_stream(cfg.ff, bands, n_out, checkpointing=ckpt)
        head_in = 2 * self.pv.feature_channels + 3 * n_out
        self.utility_head = nn.Sequential(nn.Conv2d(head_in, 32, 1), nn.ReLU(inplace=True), nn.Conv2d(32, 1, 1))
        #: FF milliseconds per cell, set by :meth:`measure_ms_per_cell` (used with deadlines).
        self.ms_per_cell: float | None = None
        #: Enhance + PV milliseconds per cell of input, paid whatever K is (same setter).
        self.pv_ms_per_cell: float = 0.0
        #: ``--budget auto``: FF runs where the predicted utility exceeds this; calibrated on
        #: validation by training (:mod:`geoseg.train.calibrate`), NaN when never calibrated.
        self.register_buffer("utility_threshold", torch.tensor(float("nan")))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints from before the calibration have no threshold: load them as uncalibrated
        state_dict.setdefault(prefix + "utility_threshold", torch.tensor(float("nan")))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> RoutedModel:
        """Build the model from its config (random weights or local encoder weights)."""
        return cls(cfg)

    # ----------------------------------------------------------------- stages
    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad bottom/right to a multiple of ``cfg.multiple`` (reflect, else zeros).

        Shape:
            - x: (B, C, H, W)
            - output: (B, C, Hp, Wp), Hp and Wp the next multiples of ``cfg.multiple``
        """
        h, w = x.shape[-2:]
        m = self.cfg.multiple
        pads = (0, -w % m, 0, -h % m)
        if not any(pads):
            return x
        return F.pad(x, pads, mode=pad_mode(h, w, pads))

    def enhance(self, x: torch.Tensor) -> torch.Tensor:
        """The learnable enhancement (identity when disabled), input of both streams.

        Shape:
            - x: (B, C, H, W)
            - output: (B, C, H, W)
        """
        return self.enhancer(x)

    def _check_padded(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        m = self.cfg.multiple
        if h % m or w % m:
            raise ValueError(
                f"image sides ({h}, {w}) must be multiples of {m} (lcm of cell and scale * PV "
                f"stride); pad with model.pad(x) first (forward() does it for you)"
            )

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """Average to 1/scale: the input of :meth:`pv_graph` (what decimated reads give).

        Shape:
            - x: (B, C_in, H, W), sides multiples of ``scale``
            - output: (B, C_in, H / scale, W / scale)
        """
        return F.avg_pool2d(x, self.cfg.scale) if self.cfg.scale > 1 else x

    def pv_graph(self, small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Enhance + PV + utility head on an image already at 1/scale.

        Args:
            small: ``downsample(pad(x))``; sides multiples of ``cfg.multiple / scale``.

        Returns:
            ``(pv_logits, utility)``; one utility per ``cell / scale`` low-res pixels.

        Shape:
            - small: (B, C_in, h, w)
            - pv_logits: (B, C, h, w)
            - utility: (B, h * scale / cell, w * scale / cell)
        """
        c = self.cfg
        logits, feats = self.pv.forward_features(self.enhance(small))
        step = c.cell // c.scale
        grid = (small.shape[-2] // step, small.shape[-1] // step)
        # the router is a probe on PV: its loss does not reshape the PV features
        feats, lg = feats.detach(), logits.detach()
        stats = torch.cat(
            [
                F.adaptive_avg_pool2d(feats, grid),
                F.adaptive_max_pool2d(feats, grid),
                F.adaptive_avg_pool2d(lg, grid),
                F.adaptive_max_pool2d(lg, grid),
                F.adaptive_avg_pool2d(-lg.abs(), grid),  # PV uncertainty
            ],
            dim=1,
        )
        return logits, self.utility_head(stats)[:, 0]

    def forward_pv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PV stream on the whole (padded, full-resolution) image and the utility per cell.

        Args:
            x: padded images (see :meth:`pad`).

        Returns:
            ``(pv_logits, utility)``.

        Raises:
            ValueError: sides not multiples of ``cfg.multiple``.

        Shape:
            - x: (B, C_in, H, W)
            - pv_logits: (B, C, H / scale, W / scale)
            - utility: (B, H / cell, W / cell)
        """
        self._check_padded(x)
        return self.pv_graph(self.downsample(x))

    def ff_graph(self, tiles: torch.Tensor) -> torch.Tensor:
        """Enhance + FF on raw tiles (cells or regions) that carry their halo; the centre crops.

        Shape:
            - tiles: (N, C_in, rows * cell + 2 * halo, cols * cell + 2 * halo)
            - output: (N, C, rows * cell, cols * cell)
        """
        c = self.cfg
        if tiles.shape[0] == 0:
            return tiles.new_zeros(0, c.n_outputs, c.cell, c.cell)
        return crop_centre(self.ff(self.enhance(tiles)), c.halo)

    def forward_ff(self, x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """FF graph on the chosen cells of padded images, packed with a halo.

        Args:
            x: padded images (``pad(x)``, not enhanced: :meth:`ff_graph` enhances the tiles).
            cells: (batch, row, col) of the cells.

        Returns:
            FF logits of each cell, halo cropped.

        Shape:
            - x: (B, C_in, H, W)
            - cells: (N, 3) int64
            - output: (N, C, cell, cell)
        """
        pack = pack_cells_triton if use_triton(x) else pack_cells  # same numbers
        return self.ff_graph(pack(x, cells, self.cfg.cell, self.cfg.halo))

    def forward_ff_regions(self, x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """As :meth:`forward_ff`, but FF runs on regions of neighbouring cells, one halo each.

        What :meth:`forward` uses (see :mod:`geoseg.models.regions`): when every cell is
        chosen this is the plain dense FF network over windows of up to 8x8 cells.
        Differentiable (the Triton gather, used on CUDA without autograd, is not).
        """
        pack = pack_regions_triton if use_triton(x) else pack_regions  # same numbers
        return run_regions(self.ff_graph, x, cells, self.cfg.cell, self.cfg.halo, pack=pack)

    def fuse(
        self,
        pv_logits: torch.Tensor,
        cells: torch.Tensor,
        ff_logits: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """Upsample PV (bilinear) to full resolution, paste the FF cells, crop to ``size``.

        Args:
            pv_logits: PV maps of the padded image.
            cells: the cells FF ran on.
            ff_logits: FF maps of those cells (halo cropped).
            size: (H, W) of the output, at most the padded size.

        Returns:
            The fused logits.

        Shape:
            - pv_logits: (B, C, Hp / scale, Wp / scale)
            - cells: (N, 3)
            - ff_logits: (N, C, cell, cell)
            - output: (B, C, H, W)
        """
        s = self.cfg.scale
        full = (pv_logits.shape[-2] * s, pv_logits.shape[-1] * s)
        base = F.interpolate(pv_logits, size=full, mode="bilinear", align_corners=False)
        paste = paste_cells_triton if use_triton(base) else paste_cells  # same numbers
        fused = paste(base, cells, ff_logits, self.cfg.cell, 0)
        return fused[..., : size[0], : size[1]]

    # ----------------------------------------------------------------- router
    def cells_per_image(self, n_cells: int, batch: int, budget: float | None = None) -> int:
        """Cells per image for FF.

        ``budget`` if given; else, in eval with ``cfg.deadline_ms`` set and the costs
        measured (:meth:`measure_ms_per_cell`), the K the deadline allows; else ``cfg.budget``.

        Args:
            n_cells: cells of one image.
            batch: images in the batch (a deadline is shared by the batch).
            budget: share of cells in (0, 1], overriding the config.

        Returns:
            K, at most ``n_cells``.
        """
        if budget is not None:
            return k_for_budget(n_cells, budget)
        c = self.cfg
        if c.deadline_ms is not None and self.ms_per_cell is not None and not self.training:
            fixed = self.pv_ms_per_cell * n_cells * batch
            total = k_for_deadline(c.deadline_ms, self.ms_per_cell, fixed)
            return min(n_cells, total // max(1, batch))
        return k_for_budget(n_cells, c.budget)

    def forward(self, x: torch.Tensor, budget: float | None = None) -> RoutedOutput:
        """The whole routed model on a batch.

        In training FF runs on the top-K cells by (detached) utility plus
        ``train_random_cells`` x cells random others per image; in eval on the top-K only.
        Either way the chosen cells run merged into regions (:meth:`forward_ff_regions`), so
        FF is trained on the windows it runs on; ``budget=1.0`` is the plain dense FF
        network over windows of up to 8x8 cells.

        Args:
            x: normalised images, any H, W (padded internally, see the module docstring).
            budget: share of cells for FF, overriding ``cfg.budget`` / ``cfg.deadline_ms``.

        Returns:
            A :class:`RoutedOutput`.

        Shape:
            - x: (B, C_in, H, W)
            - output.logits: (B, C, H, W)
        """
        c = self.cfg
        bsz, _, h, w = x.shape
        xp = self.pad(x)
        pv_logits, utility = self.forward_pv(xp)
        gh, gw = utility.shape[-2:]
        ih, iw = grid_shape(h, w, c.cell)  # cells that touch the input
        allowed = torch.zeros(bsz, gh, gw, dtype=torch.bool, device=x.device)
        allowed[:, :ih, :iw] = True
        k = self.cells_per_image(ih * iw, bsz, budget)
        mask = topk_mask(utility.detach().reshape(bsz, -1), k, allowed.reshape(bsz, -1))
        mask = mask.reshape(bsz, gh, gw)
        if self.training and c.train_random_cells > 0:
            n_extra = round(c.train_random_cells * ih * iw)
            mask = random_extra_mask(mask, n_extra, allowed)
        cells = mask_to_cells(mask)
        ff_logits = self.forward_ff_regions(xp, cells)  # training too: FF learns the windows it runs on
        logits = self.fuse(pv_logits, cells, ff_logits, (h, w))
        return RoutedOutput(logits, pv_logits, utility, cells, ff_logits)

    # ----------------------------------------------------------------- timing
    @torch.no_grad()
    def measure_ms_per_cell(self, device: torch.device | str | None = None, n: int = 8, repeats: int = 3) -> float:
        """Time FF on a batch of ``n`` random tiles; store and return ms per cell.

        Also stores ``pv_ms_per_cell``: Enhance + PV time on one ``cfg.multiple``-sided
        image divided by its cells, the cost that does not depend on K. With
        ``cfg.deadline_ms`` set, eval forwards then choose K from both.

        Args:
            device: where to time (default: the device of the parameters).
            n: cells per timed batch.
            repeats: timed runs after one warm-up; the median is kept.

        Returns:
            Milliseconds per cell.
        """
        c = self.cfg
        dev = torch.device(device) if device is not None else next(self.parameters()).device
        was_training = self.training
        self.eval()
        side = c.cell + 2 * c.halo
        tiles = torch.randn(n, c.in_channels, side, side, device=dev)
        image = torch.randn(1, c.in_channels, c.multiple, c.multiple, device=dev)

        def timed(fn: Callable[[], object]) -> float:
            runs = []
            for i in range(repeats + 1):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if i:
                    runs.append((time.perf_counter() - t0) * 1000.0)
            return statistics.median(runs)

        self.ms_per_cell = timed(lambda: self.ff_graph(tiles)) / n
        pv_ms = timed(lambda: self.forward_pv(image))
        self.pv_ms_per_cell = pv_ms / (c.multiple // c.cell) ** 2
        self.train(was_training)
        return self.ms_per_cell
