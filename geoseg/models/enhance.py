"""Learnable image enhancement placed before both streams, exactly the identity at init.

Meant for poor imagery (JPEG blocks, haze, soft focus): the network learns how much to
denoise, re-balance the bands and sharpen, starting from "do nothing" so that enabling it
never hurts a model at the start of training.

Three steps, each optional and each the identity at initialisation:

1. denoise: ``x + conv3x3(relu(conv3x3(x)))`` with the last conv zero-initialised;
2. colour: per-band affine ``x * gain + bias`` with gain 1 and bias 0;
3. unsharp mask: ``x + amount * (x - gaussian_blur(x))`` with a per-band ``amount`` of 0
   (blur from :func:`kornia.filters.gaussian_blur2d`, reflect borders).

All of them work for any band count. Its receptive field is 1 + 1 + 2 = 4 px per side
(two 3x3 convs, a 5x5 blur), well inside the FF halo, so enhancing a window read with a
halo gives the same centre as enhancing the whole scene.
"""

from __future__ import annotations

import kornia
import torch
from torch import nn

from geoseg.models.config import EnhanceConfig

#: Pixels per side that one output pixel of :class:`Enhance` depends on.
RECEPTIVE_HALO = 4


class Enhance(nn.Module):
    """Denoise residual, per-band colour affine, learnable unsharp mask.

    Args:
        in_channels: number of bands.
        cfg: which steps are on and the hidden width of the denoiser.
        blur_kernel: side of the Gaussian kernel of the unsharp mask (odd).
        blur_sigma: its standard deviation in pixels.

    Shape:
        - Input: (B, C, H, W) with C = ``in_channels``, any H, W >= 3.
        - Output: same shape, equal to the input at initialisation.
    """

    def __init__(
        self,
        in_channels: int,
        cfg: EnhanceConfig | None = None,
        *,
        blur_kernel: int = 5,
        blur_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        cfg = cfg or EnhanceConfig()
        self.enabled = cfg.enabled
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma
        self.denoise: nn.Sequential | None = None
        if cfg.enabled and cfg.denoise:
            last = nn.Conv2d(cfg.hidden, in_channels, 3, padding=1, padding_mode="reflect")
            nn.init.zeros_(last.weight)
            assert last.bias is not None
            nn.init.zeros_(last.bias)
            self.denoise = nn.Sequential(
                nn.Conv2d(in_channels, cfg.hidden, 3, padding=1, padding_mode="reflect"),
                nn.ReLU(inplace=True),
                last,
            )
        self.gain: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None
        if cfg.enabled and cfg.colour:
            self.gain = nn.Parameter(torch.ones(1, in_channels, 1, 1))
            self.bias = nn.Parameter(torch.zeros(1, in_channels, 1, 1))
        self.amount: nn.Parameter | None = None
        if cfg.enabled and cfg.unsharp:
            self.amount = nn.Parameter(torch.zeros(1, in_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Enhance a batch of images.

        Args:
            x: normalised images.

        Returns:
            The enhanced images (the input itself when disabled).

        Shape:
            - x: (B, C, H, W)
            - output: (B, C, H, W)
        """
        if not self.enabled:
            return x
        if self.denoise is not None:
            x = x + self.denoise(x)
        if self.gain is not None and self.bias is not None:
            x = x * self.gain + self.bias
        if self.amount is not None:
            k, s = self.blur_kernel, self.blur_sigma
            blurred = kornia.filters.gaussian_blur2d(x, (k, k), (s, s), border_type="reflect")
            x = x + self.amount * (x - blurred)
        return x
