"""Reference detection: find objects like a few examples (``geoseg search``).

A ConvNeXt encoder (timm, ``features_only``) shared by templates and search images,
with an FPN (:class:`torchvision.ops.FeaturePyramidNetwork`) giving P2 (stride 4) and
P3 (stride 8). The K template feature maps of each scale are fused by attention over
the set (a query from their mean attends to the K templates at every position, so the
fusion does not depend on their order); the fused template is depthwise
cross-correlated with the search features at P2 and P3; search features and
correlations are fused and an anchor-free head predicts, every 4 pixels, an objectness
logit and the distances (left, top, right, bottom, in pixels) to the object's box.

The objectness logit is the head's plus a *similarity term*: the scaled cosine between the
kind embedding of each search cell and the examples' prototype (the unit mean of their
centre embeddings); one head (7x7 depthwise, batch norm, 1x1 over P2) embeds templates and
search images alike. Training supervises the embeddings directly
(:func:`geoseg.search.losses.kind_contrast`: objects of one kind close, other kinds far),
so the term can tell kinds apart; the head's part stays free to find objects. The cosine
map itself is an output too: `geoseg search` keeps the boxes whose cosine reaches a
threshold calibrated in training (:func:`geoseg.search.boxes.calibrate_similarity`).

Two graphs for export and for inference: :meth:`RefDet.encode_templates` (templates ->
fused kernels and prototype, once per example set) and :meth:`RefDet.detect` (search windows +
kernels -> objectness, box and similarity maps).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from pydantic import Field
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from geoseg.config import Strict
from geoseg.errors import ConfigError, first_line

#: Stride of the head's output grid in input pixels.
STRIDE = 4
#: The input side must be a multiple of this (the P3 grid).
MULTIPLE = 8


class RefDetConfig(Strict):
    """The reference-detection model (``model:`` of a ``task: search`` config)."""

    encoder: str = Field("convnext_tiny", description="timm ConvNeXt name (convnext_atto for tests)")
    encoder_weights: str | None = Field(None, description="None (random init) or a local state-dict file")
    encoder_dims: tuple[int, int, int, int] | None = Field(None, description="override timm dims (tiny models)")
    encoder_depths: tuple[int, int, int, int] | None = Field(None, description="override timm depths")
    fpn_channels: int = Field(96, ge=8)
    template_size: int = Field(64, ge=16, multiple_of=8, description="template side in px (resized)")
    heads: int = Field(4, ge=1, description="attention heads of the template fusion")
    kernel: int = Field(3, ge=1, description="side of the correlation kernels: the centre of the fused "
                                             "template at P2 and P3 (0 < kernel <= template_size / 8)")
    embed: int = Field(32, ge=4, description="size of the kind embeddings whose cosine (template, search "
                                             "cell) is the similarity term of the objectness")
    bands: int = Field(3, ge=1)


def xcorr_depthwise(search: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise cross-correlation, output of the search map's size.

    Args:
        search: (B, C, H, W) features.
        kernel: (1, C, k, k) one kernel for the whole batch, or (B, C, k, k) one per image.

    Returns:
        (B, C, H, W): at each position, per channel, the sum over the kernel window
        (centred on the position; zero outside) divided by the kernel area.
    """
    b, c, h, w = search.shape
    kh, kw = int(kernel.shape[-2]), int(kernel.shape[-1])
    pad = (kw // 2, (kw - 1) // 2, kh // 2, (kh - 1) // 2)
    x = F.pad(search, pad)
    if kernel.shape[0] == 1:
        out = F.conv2d(x, kernel.reshape(c, 1, kh, kw), groups=c)
    else:
        out = F.conv2d(x.reshape(1, b * c, h + kh - 1, w + kw - 1),
                       kernel.reshape(b * c, 1, kh, kw), groups=b * c).reshape(b, c, h, w)
    return out / float(kh * kw)


class SetFusion(nn.Module):
    """Attention over a set of K template maps at every position; order-invariant.

    Per position and head, a query from the mean of the K templates scores each
    template's key; the softmax over the K scores weights their values. Permuting the
    templates permutes scores and values alike, so the output does not change; K is free
    (also in the exported graph: no operation depends on it).
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ConfigError(f"model.fpn_channels {channels} is not a multiple of model.heads {heads}")
        self.heads, self.dim = heads, channels // heads
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.o = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B, K, C, h, w) -> (B, C, h, w)."""
        b, _, c, h, w = t.shape
        tokens = t.permute(0, 3, 4, 1, 2).flatten(0, 2)  # (B*h*w, K, C)
        mean = tokens.mean(dim=1)
        q = self.q(mean).unflatten(-1, (self.heads, self.dim))[:, None]  # (N, 1, H, D)
        k = self.k(tokens).unflatten(-1, (self.heads, self.dim))  # (N, K, H, D)
        v = self.v(tokens).unflatten(-1, (self.heads, self.dim))
        att = torch.softmax((q * k).sum(-1) / self.dim ** 0.5, dim=1)  # (N, K, H)
        fused = (att[..., None] * v).sum(1).flatten(-2)  # (N, C)
        out: torch.Tensor = self.norm(mean + self.o(fused))
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


def _centre(z: torch.Tensor, k: int) -> torch.Tensor:
    """The central k x k of (B, C, h, w) maps (the object under the template's context)."""
    h, w = int(z.shape[-2]), int(z.shape[-1])
    t, left = max(0, (h - k) // 2), max(0, (w - k) // 2)
    return z[..., t:t + k, left:left + k]


class Parts(NamedTuple):
    """What :meth:`RefDet.detect_parts` computes (maps at stride 4)."""

    logits: torch.Tensor  #: (B, 1, h, w) objectness: the head's logit + ``sim``
    sim: torch.Tensor  #: (B, 1, h, w) the similarity term
    cos: torch.Tensor  #: (B, 1, h, w) cosine of each cell's kind embedding with the prototype
    dist: torch.Tensor  #: (B, 4, h, w) box distances in pixels
    search_emb: torch.Tensor  #: (B, embed, h, w) unit kind embeddings of the search cells
    proto: torch.Tensor  #: (B or 1, embed) the template sets' kind prototypes
    templates: torch.Tensor  #: (B, K, embed) the templates' own embeddings (training)


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.GroupNorm(8 if cout % 8 == 0 else 1, cout), nn.ReLU(inplace=True))


def _embedding(cin: int, cout: int) -> nn.Sequential:
    """Kind embedding of every cell from the 7 x 7 window around it.

    28 px at P2: an object's shape, not only its inside. Batch-normalised, as the features
    of objects share a large common part that would otherwise dominate their cosine.
    """
    return nn.Sequential(nn.Conv2d(cin, cin, 7, padding=3, groups=cin), nn.Conv2d(cin, cin, 1, bias=False),
                         nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1))


class RefDet(nn.Module):
    """ConvNeXt + FPN reference detector (see the module docstring)."""

    def __init__(self, cfg: RefDetConfig) -> None:
        super().__init__()
        import timm

        self.cfg = cfg
        kwargs: dict[str, Any] = {}
        if cfg.encoder_dims is not None:
            kwargs["dims"] = cfg.encoder_dims
        if cfg.encoder_depths is not None:
            kwargs["depths"] = cfg.encoder_depths
        if not cfg.encoder.startswith("convnext"):
            raise ConfigError(f"model.encoder '{cfg.encoder}' is not a timm ConvNeXt; use "
                              "convnext_tiny (or convnext_atto, convnext_nano... for small models)")
        try:
            self.encoder = timm.create_model(cfg.encoder, pretrained=False, features_only=True,
                                             out_indices=(0, 1), in_chans=cfg.bands, **kwargs)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ConfigError(f"cannot build encoder '{cfg.encoder}' ({err}); use a timm ConvNeXt") from None
        if cfg.encoder_weights is not None:
            self._load_encoder(Path(cfg.encoder_weights))
        info: Any = self.encoder.feature_info
        chans = [int(c) for c in info.channels()]
        f = cfg.fpn_channels
        self.fpn = FeaturePyramidNetwork(chans, f)
        self.fuse2 = SetFusion(f, cfg.heads)
        self.fuse3 = SetFusion(f, cfg.heads)
        # 1x1 "adjust" layers before the correlation (template and search apart, as SiamRPN++)
        self.adj_t2, self.adj_s2 = nn.Conv2d(f, f, 1), nn.Conv2d(f, f, 1)
        self.adj_t3, self.adj_s3 = nn.Conv2d(f, f, 1), nn.Conv2d(f, f, 1)
        self.mix3 = _conv(2 * f, f)
        self.mix2 = nn.Sequential(_conv(3 * f, f), _conv(f, f))
        self.obj = nn.Conv2d(f, 1, 3, padding=1)
        # kind embeddings: the similarity term is scale x cos(template, search cell) + bias
        self.emb = _embedding(f, cfg.embed)  # shared by templates and search images
        self.sim_log_scale = nn.Parameter(torch.tensor(2.3))  # scale 10, kept positive
        self.sim_bias = nn.Parameter(torch.tensor(-5.0))
        self.box = nn.Conv2d(f, 4, 3, padding=1)
        with torch.no_grad():
            self.obj.bias.fill_(-4.6)  # type: ignore[union-attr]  # prior 0.01, as focal-loss detectors
            self.box.weight.zero_()
            self.box.bias.zero_()  # type: ignore[union-attr]

    def _load_encoder(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"model.encoder_weights {path} does not exist; pass a local state-dict "
                              "file of the encoder or null")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = self.encoder.load_state_dict(state, strict=False)
        except Exception as err:  # noqa: BLE001 - any bad file
            raise ConfigError(f"model.encoder_weights {path} cannot be loaded ({first_line(err, 120)}); "
                              "pass a timm state dict of the same encoder") from None
        if len(missing.missing_keys) == len(self.encoder.state_dict()):
            raise ConfigError(f"model.encoder_weights {path} holds no weight of '{self.cfg.encoder}'")

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P2 (stride 4) and P3 (stride 8) of normalised images (N, bands, H, W)."""
        c2, c3 = self.encoder(x)
        p = self.fpn(OrderedDict([("c2", c2), ("c3", c3)]))
        return p["c2"], p["c3"]

    def embed(self, p2: torch.Tensor) -> torch.Tensor:
        """Unit kind embeddings (N, embed, h, w) of every cell of P2 maps (N, F, h, w)."""
        return F.normalize(self.emb(p2), dim=1)

    def encode_templates(self, templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fused template kernels at P2 and P3, and the template set's kind prototype.

        Args:
            templates: (B, K, bands, T, T) normalised template chips (K >= 1).

        Returns:
            ``(z2, z3, proto)``: (B, F, kernel, kernel) each, the centres of the fused P2 and P3
            maps; (B, embed) the unit mean of the K templates' embeddings (:meth:`template_embeddings`).
        """
        z2, z3, inst = self.encode_parts(templates)
        return z2, z3, F.normalize(inst.mean(dim=1), dim=1)

    def encode_parts(self, templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`encode_templates`, with the K embeddings (B, K, embed) instead of their mean."""
        b, k = templates.shape[:2]
        p2, p3 = self.features(templates.flatten(0, 1))
        z2 = self.fuse2(p2.reshape(b, k, *p2.shape[1:]))
        z3 = self.fuse3(p3.reshape(b, k, *p3.shape[1:]))
        inst = self.template_embeddings(p2).reshape(b, k, -1)
        return _centre(z2, self.cfg.kernel), _centre(z3, self.cfg.kernel), inst

    def template_embeddings(self, p2: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (N, embed) of templates from their P2 maps: the centre 2 x 2 cells."""
        return F.normalize(_centre(self.embed(p2), 2).mean(dim=(-2, -1)), dim=1)

    def detect(self, images: torch.Tensor, z2: torch.Tensor, z3: torch.Tensor, proto: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objectness logits, box distances and similarities of search images, at stride 4.

        Shapes (B, 1, H/4, W/4), (B, 4, H/4, W/4) in pixels and (B, 1, H/4, W/4): the
        similarity is the cosine of each cell's kind embedding with the prototype.
        ``z2``/``z3``/``proto`` (of :meth:`encode_templates`) hold one template set for the
        batch (leading 1) or one per image.
        """
        out = self.detect_parts(images, z2, z3, proto)
        return out.logits, out.dist, out.cos

    def detect_parts(self, images: torch.Tensor, z2: torch.Tensor, z3: torch.Tensor, proto: torch.Tensor
                     ) -> Parts:
        """The logits and their parts (see :class:`Parts`)."""
        s2, s3 = self.features(images)
        c2 = xcorr_depthwise(F.normalize(self.adj_s2(s2), dim=1), F.normalize(self.adj_t2(z2), dim=1))
        c3 = xcorr_depthwise(F.normalize(self.adj_s3(s3), dim=1), F.normalize(self.adj_t3(z3), dim=1))
        m3 = self.mix3(torch.cat([s3, c3], 1))
        up = F.interpolate(m3, size=s2.shape[-2:], mode="bilinear", align_corners=False)
        m2 = self.mix2(torch.cat([s2, c2, up], 1))
        dist = F.softplus(self.box(m2) + 2.0) * STRIDE * 2
        es = self.embed(s2)
        cos = (es * proto[:, :, None, None]).sum(1, keepdim=True)
        sim = self.sim_log_scale.exp() * cos + self.sim_bias
        return Parts(self.obj(m2) + sim, sim, cos, dist, es, proto, proto[:, None])

    def forward(self, images: torch.Tensor, templates: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Search ``images`` (B, bands, H, W) for ``templates`` (B, K, bands, T, T)."""
        return self.detect(images, *self.encode_templates(templates))

    def forward_train(self, images: torch.Tensor, templates: torch.Tensor) -> Parts:
        """As :meth:`forward`, with the parts the losses supervise."""
        z2, z3, inst = self.encode_parts(templates)
        return self.detect_parts(images, z2, z3, F.normalize(inst.mean(dim=1), dim=1))._replace(templates=inst)


def centres(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Pixel centres (x, y) of the head's grid cells, (h*w, 2), row-major."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * STRIDE
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * STRIDE
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


def decode(dist: torch.Tensor) -> torch.Tensor:
    """Box distances (4, h, w) to boxes (h*w, 4) as x0, y0, x1, y1 in pixels."""
    h, w = dist.shape[-2:]
    c = centres(h, w, dist.device)
    d = dist.reshape(4, -1).T
    return torch.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], 1)
