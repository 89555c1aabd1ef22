"""LoftUp (Huang et al., 2025): a coordinate-based transformer upsampler.

Every output pixel is a query built from the image alone: its coordinates and colour,
mapped to sin/cos Fourier features (20 log-spaced frequencies e^-2..e^10 with learnt
phases), then two 3x3 conv-BN-ReLU layers. The queries cross-attend (2 layers, 4 heads,
pre-norm, GELU MLP) to *all* LR tokens, each token the channel-normalised LR feature
concatenated with a 20-dim sine embedding of its grid position; a 1x1 conv and a
channel LayerNorm give the output. No query attends to another, so the output is
per-pixel after the 5x5 stem: tiles are exact with a 2-pixel halo and all LR tokens.
Parameters: 4,303,894 at 384 channels (theirs too); the stem convs hold half of them.

Followed: github.com/andrehuang/loftup at 6620d9bcde4c1af5cddedde6b9aaed6d4174a799
(``upsamplers/upsamplers.py``: LoftUp with lr_pe_type="sine" and UpsamplerwithChannelNorm;
``upsamplers/layers.py``), the configuration of every released checkpoint. Equal in
numbers (tests/test_loftup.py), with these deliberate choices:

* Training: the paper's first stage distils SAM-mask-refined targets and the second is
  self-distillation; the suite has no SAM masks, so this method trains with the suite's
  shared multi-view loss (``own_objective = None``) and its row is labelled so.
* Input features: the suite gives fitted methods channel-standardised features
  (LayerNorm without affine, eps 1e-5); their wrapper applies LayerNorm(dim) with affine
  (eps 1e-5) to the raw features, so the affine is applied here: the same numbers.
* Guidance: their upsampler receives the ImageNet-normalised image at the output size;
  this method normalises the [0,1] image the same way (bit-equal ops, which matters: the
  e^10 frequency turns float rounding of the input into phase differences of ~1e-3). An
  image not already at ``output_size`` is resized as every guided method here
  (``guidance_at``, antialiased bilinear); their README resizes it without antialiasing.
* Min-max scaling: their MinMaxScaler takes each colour channel's min and max over the
  whole *batch*; here they are taken per image, so an image's features never depend on
  its batch-mates. With one image per batch (their example_usage.py) the two are equal.
* Heads: 4 as theirs where dim + 20 splits into 4 (all released dims: 384, 512, 768; and
  112 of the default backbone), else gcd(dim + 20, 4) so any backbone trains.

Released checkpoints (one per backbone): ``pytorch_model.bin`` of the Hugging Face repos
haiwen/loftup-{dinov2s, dinov2s_reg, dinov2b, dinov2b_reg, clip, siglip, siglip2}, e.g.
https://huggingface.co/haiwen/loftup-dinov2s/resolve/main/pytorch_model.bin (DINOv2 S/14,
384 channels); pass it as ``--upsampler-weights loftup=PATH`` with that backbone. Their
training checkpoints (Lightning ``{"state_dict": ...}``) load too (``state_from_file``).
The repos' ``model.safetensors`` hold the upsampler without its input LayerNorm and do not.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from methods.base import Upsampler, guidance_at
from methods.guidance import imagenet_normalised
from methods.tiling import CHUNK_BYTES, Region, Span, widen

IMAGE_FREQS = 20
"""Frequencies of the pixel features (their n_freqs)."""
GRID_FREQS = 5
"""Frequencies of the LR tokens' position embedding."""
STEM_IN = 2 * IMAGE_FREQS * 5 + 3
"""sin and cos of (row, col, r, g, b) at each frequency, plus the scaled colour: 203 channels."""
PE_DIM = 2 * GRID_FREQS * 2
"""sin and cos of (row, col) at each frequency: 20 channels appended to the LR features."""
HEADS, LAYERS = 4, 2
HALO = 2
"""Pixels a tile's stem crop reaches past the tile: two 3x3 convs."""
RELEASES = ("https://huggingface.co/haiwen/loftup-{dinov2s,dinov2s_reg,dinov2b,dinov2b_reg,clip,siglip,siglip2}"
            "/resolve/main/pytorch_model.bin")
"""The released checkpoints, one per backbone (the backbones of their hubconf.py)."""


def fourier_features(inputs: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) inputs -> (B, 2*F*D, h, w): sin, then cos, of input d times frequency f plus a learnt phase.

    Channel f*D + d holds input d at frequency f. ``phases`` is stored (2, D, F) as theirs, but
    their code reads it as (F, D) (a reshape, not a transpose): channel k takes entry k of
    the flat table, which is what matters for loading their weights. Frequencies are made
    in float32 as theirs, whatever the input's precision.
    """
    b, d, h, w = inputs.shape
    n = phases.shape[-1]
    freqs = torch.exp(torch.linspace(-2, 10, n, device=inputs.device, dtype=torch.float32)).to(inputs.dtype)
    angle = (inputs[:, None] * freqs.view(1, n, 1, 1, 1)).reshape(b, n * d, h, w)
    return torch.cat([torch.sin(angle + phases[0].reshape(1, n * d, 1, 1)),
                      torch.cos(angle + phases[1].reshape(1, n * d, 1, 1))], dim=1)


def grid_coordinates(rows: Span, cols: Span, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(1, 2, rows, cols) float32 row and column coordinates in [-1, 1] (corners at +-1) of a window of a
    ``size`` map, cut from the whole map's linspace, so a tile's values are the whole map's."""
    ys = torch.linspace(-1, 1, size[0], device=device, dtype=torch.float32)[rows[0]:rows[1]]
    xs = torch.linspace(-1, 1, size[1], device=device, dtype=torch.float32)[cols[0]:cols[1]]
    return torch.stack([ys[:, None].expand(len(ys), len(xs)), xs[None, :].expand(len(ys), len(xs))])[None]


class CrossBlock(nn.Module):
    """Pre-norm cross-attention of pixel queries to LR tokens, then a pre-norm GELU MLP; both residual."""

    def __init__(self, width: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query_norm = nn.LayerNorm(width)
        self.token_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        nn.init.xavier_uniform_(self.qkv.weight)  # nn.MultiheadAttention's init, as their layer uses
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, width) -> (B, heads, N, width / heads)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys and values of the (B, N, width) LR tokens: once per forward, shared by every tile."""
        width = tokens.shape[-1]
        t = self.token_norm(tokens)
        kv = F.linear(t, self.qkv.weight[width:], self.qkv.bias[width:])
        return self.split(kv[..., :width]), self.split(kv[..., width:])

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        q = self.split(F.linear(self.query_norm(x), self.qkv.weight[:width], self.qkv.bias[:width]))
        attended = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).flatten(2)
        x = x + self.proj(attended)
        return x + self.mlp(x)


@METHODS.register
class LoftUp(Upsampler):
    name = "loftup"
    fit = "dataset"
    # own_objective stays None: the paper's stage 1 needs SAM masks, which the suite lacks (see the docstring).
    # Not in the CPU default run: two 3x3 convs (203 -> 132 -> 132 channels) at full resolution, then two
    # cross-attention layers for every pixel, make a forward over a second per 224² image on 2 CPU cores, and a
    # training step several times that (docs/methods.md has the measured figures).
    in_default_run = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        width = dim + PE_DIM
        self.lr_norm_weight = nn.Parameter(torch.ones(dim))
        self.lr_norm_bias = nn.Parameter(torch.zeros(dim))
        self.grid_phases = nn.Parameter(torch.randn(2, 2, GRID_FREQS))
        self.pixel_phases = nn.Parameter(torch.randn(2, 5, IMAGE_FREQS))
        self.stem_norm = nn.LayerNorm(STEM_IN)
        self.stem = nn.Sequential(
            nn.Conv2d(STEM_IN, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(CrossBlock(width, dim, math.gcd(width, HEADS)) for _ in range(LAYERS))
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Conv2d(width, dim, 1)
        self.head_norm = nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def create(cls, backbone) -> "LoftUp":
        """Built for ``backbone.dim`` channels; the stride does not matter (tokens carry grid positions in [-1, 1])."""
        return cls(backbone.dim)

    # ---- their state-dict layout ------------------------------------------------------------------------------

    def their_names(self) -> dict[str, str]:
        """Our parameter and buffer names -> theirs in UpsamplerwithChannelNorm's state dict."""
        names = {"lr_norm_weight": "channelnorm.norm.weight", "lr_norm_bias": "channelnorm.norm.bias",
                 "grid_phases": "upsampler.lr_pe.biases", "pixel_phases": "upsampler.fourier_feat.1.biases"}
        prefixes = {"stem_norm.": "upsampler.first_conv.0.norm.", "final_norm.": "upsampler.ca_transformer.norm.",
                    "head.": "upsampler.final_conv.0.", "head_norm.": "upsampler.final_conv.1."}
        for ours, theirs in zip((0, 1, 3, 4), (1, 2, 4, 5)):
            prefixes[f"stem.{ours}."] = f"upsampler.first_conv.{theirs}."
        for i in range(LAYERS):
            layer = f"upsampler.ca_transformer.layers.{i}."
            prefixes |= {f"blocks.{i}.query_norm.": layer + "0.norm_q.",
                         f"blocks.{i}.token_norm.": layer + "0.norm_kv.",
                         f"blocks.{i}.proj.": layer + "0.attention.out_proj.", f"blocks.{i}.mlp.0.": layer + "1.net.0.",
                         f"blocks.{i}.mlp.1.": layer + "1.net.1.", f"blocks.{i}.mlp.3.": layer + "1.net.4."}
            names |= {f"blocks.{i}.qkv.weight": layer + "0.attention.in_proj_weight",
                      f"blocks.{i}.qkv.bias": layer + "0.attention.in_proj_bias"}
        for key in self.state_dict():
            if key not in names:
                prefix = next(p for p in prefixes if key.startswith(p))
                names[key] = prefixes[prefix] + key[len(prefix):]
        return names

    def state_from_file(self, loaded: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Their released ``pytorch_model.bin`` (UpsamplerwithChannelNorm's state dict), their Lightning training
        checkpoint ({"state_dict": ...} with the input norm as ``model.1.norm.*``), or this class's own state dict."""
        if isinstance(loaded.get("state_dict"), dict):
            loaded = {k.replace("model.1.norm.", "channelnorm.norm."): v for k, v in loaded["state_dict"].items()
                      if k.startswith(("upsampler.", "model.1.norm."))}
        if set(self.state_dict()) <= set(loaded):
            return loaded
        names = self.their_names()
        missing = [theirs for theirs in names.values() if theirs not in loaded]
        if "upsampler.lr_pe" in loaded:
            raise RuntimeError("this file is LoftUp's lr_pe_type='learnable' variant; no checkpoint of it is released "
                               f"and only the 'sine' one is implemented (released files: {RELEASES})")
        if missing:
            hint = (" (a bare LoftUp state dict, e.g. the repos' model.safetensors, lacks the input LayerNorm: use "
                    "pytorch_model.bin)" if "fourier_feat.1.biases" in loaded else "")
            raise RuntimeError(f"not a LoftUp checkpoint: {len(missing)} tensors missing, e.g. {missing[0]!r}{hint}; "
                               f"released files: {RELEASES}")
        theirs_dim = loaded["channelnorm.norm.weight"].shape[0]
        if theirs_dim != self.dim:
            raise RuntimeError(f"the checkpoint is for {theirs_dim}-channel features, this backbone gives {self.dim}: "
                               f"each released checkpoint belongs to one backbone ({RELEASES})")
        return {ours: loaded[theirs] for ours, theirs in names.items()}

    # ---- forward ----------------------------------------------------------------------------------------------

    def check_inputs(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> None:
        if lr_feats.dim() != 4 or lr_feats.shape[1] != self.dim:
            raise ValueError(f"loftup is built for {self.dim}-channel features (B, {self.dim}, h, w), "
                             f"got shape {tuple(lr_feats.shape)}")
        if image.dim() != 4 or image.shape[1] != 3 or image.shape[0] != lr_feats.shape[0]:
            raise ValueError(f"loftup needs a (B, 3, H, W) image with the features' batch {lr_feats.shape[0]}, "
                             f"got shape {tuple(image.shape)}")
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"output_size must be two positive sizes, got {tuple(output_size)}")

    def prepare(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> dict[str, Any]:
        """What every tile shares: the min-max scaled guidance image and each block's keys and values."""
        self.check_inputs(lr_feats, image, output_size)
        guide = imagenet_normalised(guidance_at(image, tuple(output_size), lr_feats.dtype))
        low = guide.amin(dim=(2, 3), keepdim=True)
        scale = guide.amax(dim=(2, 3), keepdim=True) - low
        guide = (guide - low) / scale.clamp_min(0.0001) - 0.5
        h, w = lr_feats.shape[-2:]
        feats = lr_feats * self.lr_norm_weight[:, None, None] + self.lr_norm_bias[:, None, None]
        # coordinates x frequencies stay float32 here whatever the features' precision, as theirs (their
        # position embedding of the LR grid never meets a float64 tensor before the phases are added)
        grid = grid_coordinates((0, h), (0, w), (h, w), lr_feats.device).expand(lr_feats.shape[0], -1, -1, -1)
        tokens = torch.cat([feats, fourier_features(grid, self.grid_phases)], dim=1).flatten(2).transpose(1, 2)
        return {"guide": guide, "size": tuple(output_size), "kv": [block.keys_values(tokens) for block in self.blocks]}

    def pixels(self, shared: dict[str, Any], rows: Span, cols: Span) -> torch.Tensor:
        """Rows x cols of the output (B, dim, rows, cols): the stem on the crop widened by HALO, then the pixel-wise
        transformer, a chunk of pixels at a time. The stem's convs zero-pad the crop: at the image border that is
        their padding; at a crop edge it spoils the outer HALO rows and columns, which are cut."""
        guide, size = shared["guide"], shared["size"]
        (r0, r1), (c0, c1) = wr, wc = widen(rows, HALO, size[0]), widen(cols, HALO, size[1])
        crop = guide[..., r0:r1, c0:c1]
        coords = grid_coordinates(wr, wc, size, guide.device).to(guide).expand(guide.shape[0], -1, -1, -1)
        inputs = torch.cat([coords, crop], dim=1)
        x = torch.cat([fourier_features(inputs, self.pixel_phases), crop], dim=1)
        x = self.stem_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.stem(x)[..., rows[0] - r0:rows[1] - r0, cols[0] - c0:cols[1] - c0]
        b, width, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        step = max(1, CHUNK_BYTES // (8 * width * x.element_size() * b))
        out = torch.cat([self.decode(part, shared["kv"]) for part in x.split(step, dim=1)], dim=1)
        return out.transpose(1, 2).reshape(b, self.dim, h, w)

    def decode(self, x: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(B, N, dim + 20) pixel queries -> (B, N, dim) features."""
        for block, (keys, values) in zip(self.blocks, kv):
            x = block(x, keys, values)
        x = F.linear(self.final_norm(x), self.head.weight.flatten(1), self.head.bias)
        return self.head_norm(x)

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        shared = self.prepare(lr_feats, image, output_size)
        return self.pixels(shared, (0, output_size[0]), (0, output_size[1]))

    # ---- tiles ------------------------------------------------------------------------------------------------

    def tiling_fallback(self) -> str | None:
        if self.training:
            return "in training mode its BatchNorm normalises with the batch's statistics, which differ per tile"
        return super().tiling_fallback()

    def regions(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> Region:
        shared = self.prepare(lr_feats, image, output_size)
        return lambda rows, cols, out: out.copy_(self.pixels(shared, rows, cols))

    def forward_region(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int], rows: Span,
                       cols: Span, out: torch.Tensor) -> torch.Tensor:
        return self.regions(lr_feats, image, output_size)(rows, cols, out)
