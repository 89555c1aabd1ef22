"""JAFAR (Couairon et al. 2025): high-resolution image queries attend to low-resolution feature keys.

Written after github:PaulCouairon/JAFAR at commit 94d4d5456ff3c719d111b9a26ead3813e089302b
(src/upsampler/jafar.py, src/layers/, config/model/jafar.yaml, config/optimizer/adamw.yaml, train.py),
with their config's settings: qk_dim 128, 4 heads, image-encoder kernel 1. Equal in numbers to their
forward (tests/test_jafar.py compares against a fixture made by running their code).

- The image, normalised with the backbone's mean/std (their dataloader uses the backbone's config), is
  encoded per pixel: a 1x1 conv and two pre-norm residual blocks (GroupNorm(8) -> SiLU -> 1x1 conv,
  twice), then rotated by a 2-D RoPE whose frequencies are learnt, over coordinates in [0, 1].
- Queries: a second such encoder, adaptive average pooling to the output size, GroupNorm without
  affine, a 3x3 conv (zero padding). Keys: a third encoder pooled to the LR grid, GroupNorm without
  affine, modulated (SFT) as gamma * k + beta, gamma and beta 1x1 convs of a fourth encoder of the
  L2-normalised LR features.
- RMSNorm and a biased linear projection on queries and keys, scaled dot-product softmax per head
  (4 heads), the weights averaged over heads and applied to the LR features themselves.

Differences, none of which changes a number:
- Their ``nn.MultiheadAttention`` is called only for its averaged attention weights; its value and
  output projections and the value RMSNorm never reach the output (66,176 parameters at 384 channels).
  We hold them as they do, frozen, so the state-dict layout is theirs (``in_proj_weight`` packed when
  the feature width equals qk_dim, else ``q/k/v_proj_weight``) and the model counts 628,480 parameters
  at NAF's setting, as their model and NAF's table do; the query/key projections are read out of it.
- Attention is computed in chunks of queries (their code materialises every query's weights), and
  ``forward_region`` computes exact tiles: GroupNorm statistics over the whole image (and over the whole
  pooled query map) are gathered in passes over row bands first, so no full-resolution 128-channel map
  is ever held. The price is recomputation: eight passes of the encoders (one per GroupNorm depth)
  before the tiles; tiled 1024² took 8x the whole map's time on a loaded CPU (875 MB peak against 3607).

Features: the upsampler sees the backbone's features as they are, not channel-standardised as the
suite's FeatUp-style methods: their code feeds the backbone's own output (a timm ViT's tokens after its
final norm, which is what our ViT backbones give), its released weights expect it, and the output, a
convex combination of those features, stays in the backbone's feature space.

Released weights (one file per backbone, e.g. ViT-S/14 DINOv2, 384 channels):
https://github.com/PaulCouairon/JAFAR/releases/download/Weights/vit_small_patch14_dinov2.lvd142m.pth
(others in their README's table). Pass it with ``run --backbone vit_small_patch14_dinov2.lvd142m
--upsampler-weights jafar=PATH``; a file holding their training checkpoint ``{"jafar": state, ...}`` is
unwrapped. If ``torch.load(..., weights_only=True)`` refuses the file (a checkpoint that also pickles
their Hydra config), re-save its state dict once:
``torch.save(torch.load(PATH, weights_only=False)["jafar"], "jafar.pt")``.
Without a file it trains from scratch on any backbone with their objective (``training_loss``).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from bench.registry import METHODS
from methods.base import Upsampler
from methods.tiling import CHUNK_BYTES, GroupMoments, GroupStats, Region, Span, group_norm, pool_axis, pool_source, spans, widen

QK_DIM, HEADS, GROUPS = 128, 4, 8
ROPE_THETA = 100
RELEASES = "https://github.com/PaulCouairon/JAFAR/releases/download/Weights/"
TEMPORARIES = 6
"""128-channel maps alive at once in a residual block (input, norm, SiLU, conv, residual, ...): sizes row bands."""

Norm = Callable[[nn.GroupNorm, torch.Tensor], torch.Tensor]
"""How an encoder applies one of its GroupNorms: the module itself, or with statistics gathered beforehand."""


def _group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return norm(x)


class ResidualBlock(nn.Module):
    """x + conv2(SiLU(GN2(conv1(SiLU(GN1(x)))))) with 1x1 convs and no biases (their magvit-style ResBlock)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm2 = nn.GroupNorm(GROUPS, dim)
        self.conv2 = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, norm: Norm = _group_norm) -> torch.Tensor:
        y = self.conv1(F.silu(norm(self.norm1, x)))
        return x + self.conv2(F.silu(norm(self.norm2, y)))


class Encoder(nn.Sequential):
    """A bias-free 1x1 conv to qk_dim and two residual blocks: pointwise except for GroupNorm's statistics."""

    def __init__(self, in_dim: int, dim: int = QK_DIM) -> None:
        super().__init__(nn.Conv2d(in_dim, dim, 1, bias=False), ResidualBlock(dim), ResidualBlock(dim))

    def forward(self, x: torch.Tensor, norm: Norm = _group_norm) -> torch.Tensor:
        x = self[0](x)
        for block in list(self)[1:]:
            x = block(x, norm)
        return x

    def norms(self) -> list[nn.GroupNorm]:
        return [n for block in list(self)[1:] for n in (block.norm1, block.norm2)]


def rope_frequencies(dim: int, theta: float) -> torch.Tensor:
    """(2, dim) initial angular frequencies of their 2-D RoPE (JAFAR's, which AnyUp reuses): the first half of
    the channels turns with the row, the second with the column, dim/4 log-spaced frequencies from 1 to
    1/theta turns per unit, each used by two channels."""
    turns = theta ** torch.linspace(0, -1, dim // 4)
    turns = torch.cat([turns, turns])
    freqs = torch.zeros(2, dim)
    freqs[0, : dim // 2] = turns
    freqs[1, -dim // 2:] = turns
    return freqs * 2 * torch.pi


class RoPE(nn.Module):
    """Rotary embedding of a map by its (row, column) coordinates in [0, 1]; the frequencies are trained."""

    def __init__(self, dim: int = QK_DIM, theta: float = ROPE_THETA) -> None:
        super().__init__()
        self.freqs = nn.Parameter(rope_frequencies(dim, theta))

    def forward(self, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w) at row coordinates ``rows`` (h,) and column coordinates ``cols`` (w,)."""
        angle = (rows[:, None, None] * self.freqs[0] + cols[None, :, None] * self.freqs[1]).permute(2, 0, 1)
        first, second = x.chunk(2, dim=1)
        return x * angle.cos() + torch.cat((-second, first), dim=1) * angle.sin()


class KeyModulation(nn.Module):
    """SFT: the GroupNorm'd (no affine) pooled image keys scaled and shifted by 1x1 convs of the feature code."""

    def __init__(self, dim: int = QK_DIM) -> None:
        super().__init__()
        self.gamma = nn.Conv2d(dim, dim, 1, bias=False)
        self.beta = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm = nn.GroupNorm(GROUPS, dim, affine=False)

    def forward(self, keys: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.gamma(code) * self.norm(keys) + self.beta(code)


class HeadAveragedAttention(nn.Module):
    """Their CrossAttention: RMSNorm'd queries and keys through nn.MultiheadAttention's query and key
    in-projections, softmax per head, the weights averaged over the heads.

    It holds their whole ``nn.MultiheadAttention`` and value RMSNorm, so their checkpoints load as they are
    and the model counts the parameters theirs counts (628,480 at 384 channels, NAF's table); the value and
    output projections and the value RMSNorm never reach the output (their code calls the module only for
    its averaged weights), so they are frozen: no gradient could reach them."""

    def __init__(self, dim: int, value_dim: int, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q = nn.RMSNorm(dim)
        self.norm_k = nn.RMSNorm(dim)
        self.norm_v = nn.RMSNorm(value_dim)
        self.attention = nn.MultiheadAttention(dim, heads, vdim=value_dim, batch_first=True)
        unused = [self.norm_v.weight, *self.attention.out_proj.parameters()]
        if not self.attention._qkv_same_embed_dim:  # else the value rows share in_proj_weight with q and k
            unused.append(self.attention.v_proj_weight)
        for p in unused:
            p.requires_grad_(False)

    def projection(self, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the query (0) or key (1) in-projection, packed or not as their module keeps it."""
        a = self.attention
        weight = a.in_proj_weight.chunk(3)[which] if a._qkv_same_embed_dim else (a.q_proj_weight, a.k_proj_weight)[which]
        return weight, a.in_proj_bias.chunk(3)[which]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, dim) -> (B, heads, n, dim / heads)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys(self, keys: torch.Tensor) -> torch.Tensor:
        """(B, dim, h, w) keys -> (B, heads, h*w, d) projected keys, computed once per image."""
        return self.split(F.linear(self.norm_k(keys.flatten(2).transpose(1, 2)), *self.projection(1)))

    def weights(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, n, dim) queries, projected keys -> (B, n, h*w) attention weights (their mean over heads)."""
        q = self.split(F.linear(self.norm_q(queries), *self.projection(0)))
        q = q * math.sqrt(1.0 / q.shape[-1])  # scaled before the product, as nn.MultiheadAttention does
        return (q @ keys.transpose(-1, -2)).softmax(dim=-1).mean(dim=1)


class QueryDecoder(nn.Module):
    """A 3x3 conv over the normalised queries, then the attention; named as their CrossAttentionBlock."""

    def __init__(self, dim: int, value_dim: int, heads: int = HEADS) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.cross_attn = HeadAveragedAttention(dim, value_dim, heads)


class _Pending(Exception):
    """A GroupNorm whose statistics are still being gathered: the pass stops there for this band."""


@METHODS.register
class Jafar(Upsampler):
    name = "jafar"
    version = "2"  # 2: their nn.MultiheadAttention layout, unused weights held frozen
    fit = "dataset"
    # Not in the CPU default run: encoders at full image resolution, a 3x3 conv at the output's and attention of
    # every output pixel to every LR pixel make a forward about a second per 224² image on 2 CPU cores, and its
    # own objective runs it three times per training step (docs/methods.md has the measured figures).
    in_default_run = False
    own_objective = {
        "optimizer": "AdamW", "lr": 2e-4, "betas": [0.9, 0.999], "weight_decay": 1e-5,
        "loss": "cosine embedding + MSE of per-pixel min-max normalised features (their cosine_mse)",
        "reg_weight": 0.1, "lr_image_scale": [0.25, 0.5], "upsampler_image_scale": 0.5,
        "blur": {"p": 0.5, "kernel": 5, "sigma": 1.0}, "noise": {"p": 0.3, "std": 0.02},
    }
    """config/optimizer/adamw.yaml and train.py: the features of the image downscaled by U(0.25, 0.5)
    (sides rounded to the stride) are upsampled, guided by the image at half size, to the grid of the
    full image's features; plus 0.1 x the same loss between the HR features upsampled to the half
    image's size from a blurred/noised image and from the clean one (no gradient through the latter)."""

    def __init__(self, dim: int, mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
                 std: tuple[float, ...] = IMAGENET_DEFAULT_STD, qk_dim: int = QK_DIM, heads: int = HEADS) -> None:
        super().__init__()
        self.dim, self.qk_dim = dim, qk_dim
        self.image_mean, self.image_std = tuple(mean), tuple(std)  # made in the image's dtype when used
        self.image_encoder = Encoder(3, qk_dim)
        self.key_encoder = Encoder(qk_dim, qk_dim)
        self.query_encoder = Encoder(qk_dim, qk_dim)
        self.norm = nn.GroupNorm(GROUPS, qk_dim, affine=False)
        self.key_features_encoder = Encoder(dim, qk_dim)
        self.cross_decode = QueryDecoder(qk_dim, dim, heads)
        self.sft_key = KeyModulation(qk_dim)
        self.rope = RoPE(qk_dim)

    @classmethod
    def create(cls, backbone: Any) -> "Jafar":
        mean, std = getattr(backbone, "mean", None), getattr(backbone, "std", None)
        if mean is None or std is None:
            return cls(backbone.dim)
        return cls(backbone.dim, tuple(mean.flatten().tolist()), tuple(std.flatten().tolist()))

    def features(self, backbone: Any, image: torch.Tensor) -> torch.Tensor:
        """The backbone's features as they are (see the module docstring: what their code feeds)."""
        return backbone.features(image)

    # ---- whole maps ------------------------------------------------------------------------------------

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        self._check(lr_feats, image, output_size)
        return self.upsample_normalised(self._normalised(image), lr_feats, tuple(output_size))

    def upsample_normalised(self, image: torch.Tensor, lr_feats: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """Their ``JAFAR.forward``: ``image`` already normalised with the backbone's mean/std."""
        encoded = self._encode(image, (0, image.shape[-2]), (0, image.shape[-1]), image.shape[-2:])
        queries = self.norm(F.adaptive_avg_pool2d(self.query_encoder(encoded), output_size))
        keys = F.adaptive_avg_pool2d(self.key_encoder(encoded), lr_feats.shape[-2:])
        return self._attend(self.cross_decode.conv2d(queries), self._project_keys(keys, lr_feats), lr_feats)

    def _normalised(self, image: torch.Tensor) -> torch.Tensor:
        return (image - image.new_tensor(self.image_mean).view(1, 3, 1, 1)) / image.new_tensor(self.image_std).view(1, 3, 1, 1)

    def _encode(self, image: torch.Tensor, rows: Span, cols: Span, full: tuple[int, int],
                norm: Norm = _group_norm) -> torch.Tensor:
        """Image encoder + RoPE of a crop (rows x cols) of a (full) normalised image."""
        grid = [torch.linspace(0, 1, n, device=image.device, dtype=image.dtype)[a:b] for n, (a, b) in zip(full, (rows, cols))]
        return self.rope(self.image_encoder(image, norm), *grid)

    def _project_keys(self, pooled_keys: torch.Tensor, lr_feats: torch.Tensor) -> torch.Tensor:
        code = self.key_features_encoder(F.normalize(lr_feats, dim=1))
        return self.cross_decode.cross_attn.keys(self.sft_key(pooled_keys, code))

    def _attend(self, queries: torch.Tensor, keys: torch.Tensor, lr_feats: torch.Tensor) -> torch.Tensor:
        """(B, qk, H, W) queries -> (B, C, H, W): the head-averaged weights over the LR features, in chunks of
        queries so the (queries x LR pixels x heads) weights never exceed CHUNK_BYTES."""
        b, _, height, width = queries.shape
        values = lr_feats.flatten(2).transpose(1, 2)
        flat = queries.flatten(2).transpose(1, 2)
        n, tokens = flat.shape[1], values.shape[1]
        step = max(1, CHUNK_BYTES // (b * tokens * self.cross_decode.cross_attn.heads * queries.element_size() * 2))
        if step >= n:
            return (self.cross_decode.cross_attn.weights(flat, keys) @ values).transpose(1, 2).unflatten(2, (height, width))
        out = values.new_empty(b, n, values.shape[2])
        for s in range(0, n, step):
            out[:, s:s + step] = self.cross_decode.cross_attn.weights(flat[:, s:s + step], keys) @ values
        return out.transpose(1, 2).unflatten(2, (height, width))

    def _check(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> None:
        if lr_feats.dim() != 4 or lr_feats.shape[1] != self.dim:
            raise ValueError(f"jafar was built for {self.dim}-channel features shaped (B, {self.dim}, h, w); "
                             f"got {tuple(lr_feats.shape)}")
        if image.dim() != 4 or image.shape[1] != 3 or image.shape[0] != lr_feats.shape[0]:
            raise ValueError(f"jafar needs the images (B, 3, H, W) of its {lr_feats.shape[0]} feature maps; "
                             f"got {tuple(image.shape)}")
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"jafar: output size must be two positive sizes, got {tuple(output_size)}")

    # ---- exact tiles -------------------------------------------------------------------------------------

    def forward_region(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int],
                       rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
        """One region; ``forward_tiled`` goes through ``regions``, which gathers the shared part once."""
        return self.regions(lr_feats, image, output_size)(rows, cols, out)

    def regions(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> Region:
        """Gathers what every tile shares once (GroupNorm statistics, projected keys), then computes tiles."""
        self._check(lr_feats, image, output_size)
        output_size = tuple(output_size)
        x = self._normalised(image)
        full = tuple(x.shape[-2:])
        stats = self._encoder_stats(x)
        known = self._known(stats)
        keys = self._project_keys(self._pooled_keys(x, lr_feats.shape[-2:], known), lr_feats)
        query_stats = self._query_stats(x, output_size, known)

        def queries(rows: Span, cols: Span) -> torch.Tensor:
            """The conv'd queries of output rows x cols, from the normalised pooled queries one pixel around."""
            wide_rows, wide_cols = widen(rows, 1, output_size[0]), widen(cols, 1, output_size[1])
            q = group_norm(self.norm, self._pooled_queries(x, output_size, wide_rows, wide_cols, known), query_stats)
            pad = [1 - (cols[0] - wide_cols[0]), 1 - (wide_cols[1] - cols[1]),
                   1 - (rows[0] - wide_rows[0]), 1 - (wide_rows[1] - rows[1])]  # zeros only at the map's borders
            return F.conv2d(F.pad(q, pad), self.cross_decode.conv2d.weight)

        def region(rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
            width = cols[1] - cols[0] + 2
            source_width = -(-full[1] * width // output_size[1]) + 1
            band = max(1, min(self._band_rows(x.shape[0], width),
                              self._band_rows(x.shape[0], source_width) * output_size[0] // full[0]))
            for sub in spans(rows[1] - rows[0], band):
                part = (rows[0] + sub[0], rows[0] + sub[1])
                out[:, :, sub[0]:sub[1]] = self._attend(queries(part, cols), keys, lr_feats)
            return out

        return region

    def _band_rows(self, batch: int, width: int) -> int:
        """Rows of a qk_dim-channel band of ``width`` columns whose temporaries fit in CHUNK_BYTES."""
        return max(1, CHUNK_BYTES // (batch * self.qk_dim * max(1, width) * 4 * TEMPORARIES))

    def _encoder_stats(self, x: torch.Tensor) -> dict[nn.GroupNorm, GroupStats]:
        """Whole-image statistics of every GroupNorm of the image, query and key encoders, one level per pass
        over row bands of the image (a pass runs each band up to the first GroupNorm still unknown)."""
        full = tuple(x.shape[-2:])
        needed = [*self.image_encoder.norms(), *self.query_encoder.norms(), *self.key_encoder.norms()]
        known: dict[nn.GroupNorm, GroupStats] = {}
        while len(known) < len(needed):
            pending: dict[nn.GroupNorm, GroupMoments] = {}
            before = len(known)

            def norm(module: nn.GroupNorm, y: torch.Tensor) -> torch.Tensor:
                if module in known:
                    return group_norm(module, y, known[module])
                pending.setdefault(module, GroupMoments()).add(y, module.num_groups)
                raise _Pending

            for rows in spans(full[0], self._band_rows(x.shape[0], full[1])):
                try:
                    encoded = self._encode(x[:, :, rows[0]:rows[1]], rows, (0, full[1]), full, norm)
                except _Pending:
                    continue
                for branch in (self.query_encoder, self.key_encoder):
                    try:
                        branch(encoded, norm)
                    except _Pending:
                        pass
            known.update({m: acc.stats(m.eps) for m, acc in pending.items()})
            if len(known) == before:
                raise RuntimeError("jafar: a GroupNorm's statistics could not be gathered")
        return known

    def _known(self, stats: dict) -> Norm:
        return lambda module, y: group_norm(module, y, stats[module])

    def _branch_crop(self, branch: Encoder, x: torch.Tensor, rows: Span, cols: Span, known: Norm) -> torch.Tensor:
        crop = x[:, :, rows[0]:rows[1], cols[0]:cols[1]]
        return branch(self._encode(crop, rows, cols, tuple(x.shape[-2:]), known), known)

    def _pool_crop(self, y: torch.Tensor, origin: tuple[int, int], full: tuple[int, int], size: tuple[int, int],
                   rows: Span, cols: Span) -> torch.Tensor:
        y = pool_axis(y, 2, origin[0], rows, full[0], size[0])
        return pool_axis(y, 3, origin[1], cols, full[1], size[1])

    def _pooled_keys(self, x: torch.Tensor, grid: tuple[int, int], known: Norm) -> torch.Tensor:
        """The key encoder's map pooled to the LR grid, a band of LR rows at a time."""
        full = tuple(x.shape[-2:])
        per_row = -(-full[0] // grid[0]) + 1
        parts = []
        for rows in spans(grid[0], max(1, self._band_rows(x.shape[0], full[1]) // per_row)):
            src = pool_source(rows, full[0], grid[0])
            y = self._branch_crop(self.key_encoder, x, src, (0, full[1]), known)
            parts.append(self._pool_crop(y, (src[0], 0), full, grid, rows, (0, grid[1])))
        return torch.cat(parts, dim=2)

    def _pooled_queries(self, x: torch.Tensor, size: tuple[int, int], rows: Span, cols: Span, known: Norm) -> torch.Tensor:
        """Output rows x cols of the query encoder's map pooled to the output size (before its GroupNorm)."""
        full = tuple(x.shape[-2:])
        src_rows, src_cols = pool_source(rows, full[0], size[0]), pool_source(cols, full[1], size[1])
        y = self._branch_crop(self.query_encoder, x, src_rows, src_cols, known)
        return self._pool_crop(y, (src_rows[0], src_cols[0]), full, size, rows, cols)

    def _query_stats(self, x: torch.Tensor, size: tuple[int, int], known: Norm) -> GroupStats:
        """Statistics of the query GroupNorm over the whole pooled query map, a band of output rows at a time."""
        full = tuple(x.shape[-2:])
        band = max(1, min(self._band_rows(x.shape[0], size[1]), self._band_rows(x.shape[0], full[1]) * size[0] // full[0]))
        moments = GroupMoments()
        for rows in spans(size[0], band):
            moments.add(self._pooled_queries(x, size, rows, (0, size[1]), known), self.norm.num_groups)
        return moments.stats(self.norm.eps)

    # ---- released weights --------------------------------------------------------------------------------

    def state_from_file(self, loaded: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Their state dict, or their training checkpoint ``{"jafar": state, ...}``: our layout is theirs."""
        state = loaded.get("jafar", loaded)
        if not isinstance(state, dict) or "key_features_encoder.0.weight" not in state:
            raise ValueError(f"not a JAFAR state dict (keys: {sorted(state)[:5]} ...): expected a file of "
                             f"{RELEASES}<backbone>.pth or weights this suite trained for jafar")
        width = state["key_features_encoder.0.weight"].shape[1]
        if width != self.dim:
            raise ValueError(f"these JAFAR weights are for {width}-channel features, the backbone gives {self.dim}: "
                             f"their released weights are per backbone (e.g. {RELEASES}"
                             f"vit_small_patch14_dinov2.lvd142m.pth for ViT-S/14 DINOv2, 384 channels)")
        return state

    # ---- their training objective ---------------------------------------------------------------------

    def training_loss(self, backbone: Any, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """train.py's loss on a batch in [0,1] (random draws from ``generator``; their run: 448 px, batch 4,
        AdamW 2e-4 for 100k steps under bf16 autocast, which we leave to the profile).

        The regulariser's output size is the half image's (their fixed 224 = 448 / 2). Their noise is
        added to the normalised image and clamped to [0, 1] there, and, when no blur was drawn, added in
        place to the clean half image, so the no-gradient target sees the (unclamped) noise too; both as
        they do.
        """
        size = tuple(image.shape[-2:])
        with torch.no_grad():
            hr_feats = self.features(backbone, image)
            scale = 0.25 + 0.25 * float(torch.rand((), generator=generator))
            small = tuple(max(backbone.stride, backbone.stride * round(n * scale / backbone.stride)) for n in size)
            lr_feats = self.features(backbone, F.interpolate(image, size=small, mode="bilinear"))
        half = F.interpolate(self._normalised(image), scale_factor=0.5, mode="bilinear")
        loss = cosine_mse(self.upsample_normalised(half, lr_feats, tuple(hr_feats.shape[-2:])), hr_feats)
        noised, clean = blur_and_noise(half, generator)
        pred = self.upsample_normalised(noised, hr_feats, tuple(half.shape[-2:]))
        with torch.no_grad():
            target = self.upsample_normalised(clean, hr_feats, tuple(half.shape[-2:]))
        return loss + self.own_objective["reg_weight"] * cosine_mse(pred, target)


def gaussian_blur(x: torch.Tensor, kernel: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """torchvision's GaussianBlur(kernel, sigma): normalised separable Gaussian, reflect padding."""
    t = torch.linspace(-(kernel - 1) / 2, (kernel - 1) / 2, kernel, dtype=x.dtype, device=x.device)
    k1 = (-0.5 * (t / sigma).square()).exp()
    k1 = k1 / k1.sum()
    k2 = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, kernel, kernel)
    return F.conv2d(F.pad(x, [kernel // 2] * 4, mode="reflect"), k2, groups=x.shape[1])


def blur_and_noise(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(the regulariser's input, its target's input) as train.py's ``add_blur_noise`` leaves them."""
    blurred = bool(torch.rand((), generator=generator) < 0.5)
    noisy = gaussian_blur(x) if blurred else x
    clean = x
    if bool(torch.rand((), generator=generator) < 0.3):
        noisy = noisy + 0.02 * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        if not blurred:
            clean = noisy  # their in-place ``x += noise`` reached the clean batch
    return noisy.clamp(0, 1), clean


def cosine_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Their Cosine_MSE: mean (1 - cosine) per pixel + MSE after min-max scaling both by the target's
    per-pixel channel range."""
    pred, target = (t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) for t in (pred, target))
    low, high = target.min(dim=1, keepdim=True).values, target.max(dim=1, keepdim=True).values
    scale = high - low + 1e-6
    cosine = F.cosine_embedding_loss(pred, target, torch.ones_like(target[:, 0]))
    return cosine + F.mse_loss((pred - low) / scale, (target - low) / scale)
