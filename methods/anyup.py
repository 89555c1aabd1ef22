"""AnyUp (Wimmer et al., ICLR 2026): one feature-agnostic attention upsampler for any encoder.

Written from the public code at github.com/wimmerth/anyup, commit 351807a9c4287368732cc247f26c7c81c9139af4
(``anyup/model.py`` and ``anyup/layers``: the paper's windowed-attention model, not the NATTEN variant);
with the same weights our forward equals theirs to float rounding (tests/test_anyup.py, against a fixture
of their code). No weight depends on the channel count C: keys come from the image and from per-channel
"feature unification" of the features, values are the features themselves, so one model serves any
backbone (878,080 parameters at qk_dim 128, for any C).

Forward, for (B,C,h,w) features and a (B,3,H,W) image (ImageNet-normalised, as their README asks):
image encoder (1x1 conv + two 1x1 GroupNorm/SiLU residual blocks, then 2-D RoPE over [0,1]
coordinates) -> query encoder pooled to the output size and a 3x3 conv (zero padded); key encoder
pooled to (h,w), concatenated with the feature-unification branch (5x5 basis convolved with each
L2-normalised channel, softmax over the basis, mean over channels) and mixed by a 3x3 reflect conv +
residual blocks. Each output pixel attends (RMSNorm'd q/k, 4 heads of torch's MultiheadAttention
in-projections, weights averaged over heads) to the LR keys inside a window of +-0.1 of the image
around it, and returns that convex combination of the raw LR features.

Released checkpoints (plain state dicts in exactly our layout; pass them with
``--upsampler-weights anyup=PATH``):

- paper model, trained on DINOv2 ViT-S/14: https://github.com/wimmerth/anyup/releases/download/checkpoint/anyup_paper.pth
- multi-backbone model: https://github.com/wimmerth/anyup/releases/download/checkpoint_v2/anyup_multi_backbone.pth

Without one it trains from scratch on any backbone with the paper's own objective (``training_loss``).

Where we differ from the public code, and why:

- Features: the upsampler sees the backbone's features as they are (``features`` is not standardised),
  as their code feeds it the ViT's output tokens (after the final LayerNorm, which our ViT backbones
  also apply). Its output is a convex combination of its input, in the same space as bilinear's.
- The attention is computed per block of output pixels that share one LR window (exactly the keys the
  public mask keeps), never as a dense (H'W') x (hw) masked matrix: the same numbers without the
  quadratic memory. ``q_chunk_size`` bounds the queries per batched step (None: a memory budget).
- The 3x3 reflect conv of the key branch falls back to replicate padding on a 1-pixel-high or -wide
  LR map, where reflect padding is undefined (the public code raises there).
- Exact tiles (``forward_region``): the GroupNorms of the image-resolution encoders normalise over the
  whole image, so a tiled run first streams the image in bands to collect their statistics (one
  pass per GroupNorm depth) and the pooled keys, then computes each tile from its own pixels.
- Training (``training_loss``, their ``train.py`` + ``config/base.yaml``): same losses and weights
  (local-crop reconstruction, 0.1 x augmentation consistency, 0.1 x downsampling consistency,
  JAFAR's cosine + min-max-normalised MSE), AdamW 2e-4, wd 1e-5, 4 crops per image. The training
  image plays their 448 px crop (its half-size resize is the guidance and global view, stride-aligned
  half-size crops the local views); the augmentation is a torch-only approximation of their torchvision
  pipeline (no JPEG re-encoding, hue as a rotation about the grey axis, no channel permutation);
  float32, no bfloat16 autocast.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from methods.base import Upsampler, check_batch
from methods.guidance import imagenet_normalised
from methods.jafar import cosine_mse, rope_frequencies
from methods.tiling import GroupMoments, GroupStats, Span, group_norm, pool_axis, pool_source

if TYPE_CHECKING:
    from bench.backbones import Backbone

QK_DIM, HEADS, WINDOW, LFU_KERNEL, GROUPS, GN_EPS = 128, 4, 0.1, 5, 8, 1e-5
ROPE_THETA = 100
RELEASES = ("https://github.com/wimmerth/anyup/releases/download/checkpoint/anyup_paper.pth (paper, DINOv2 ViT-S)",
            "https://github.com/wimmerth/anyup/releases/download/checkpoint_v2/anyup_multi_backbone.pth "
            "(multi-backbone)")
STEP_BYTES = 64 * 2**20
"""Working memory of one batched attention step (scores, gathered values, output) when q_chunk_size is None."""
BAND_BYTES = 64 * 2**20
"""Working memory of one band of the image-resolution encoders (tiled) or of the feature-unification branch."""
LOSS_CROPS = 4
"""Local crops per training image (their num_local_crops)."""


class Residual(nn.Module):
    """Their ResBlock with 1x1 convs: x + conv(silu(gn(conv(silu(gn(x)))))); names match the released files."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(GROUPS, dim, GN_EPS), nn.SiLU(), nn.Conv2d(dim, dim, 1, bias=False),
                                   nn.GroupNorm(GROUPS, dim, GN_EPS), nn.SiLU(), nn.Conv2d(dim, dim, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x


def run_encoder(encoder: nn.Sequential, x: torch.Tensor, stats: list[GroupStats] | None = None,
                stop: int | None = None) -> torch.Tensor:
    """An encoder (first layer, then residual blocks) on ``x``; GroupNorm n uses ``stats[n]`` where given.

    ``stop``: return the input of GroupNorm number ``stop`` instead (its statistics are being collected).
    """
    inplace = not torch.is_grad_enabled()  # inference: no copies kept for a backward pass
    x, n = encoder[0](x), 0
    for res in encoder[1:]:
        gn_a, _, conv_a, gn_b, _, conv_b = res.block
        h = x
        for gn, conv in ((gn_a, conv_a), (gn_b, conv_b)):
            if n == stop:
                return h
            h = conv(F.silu(group_norm(gn, h, stats[n] if stats else None), inplace=inplace))
            n += 1
        x = h.add_(x) if inplace else h + x
    return x


def encoder_norms(encoder: nn.Sequential) -> int:
    """GroupNorms in an encoder: two per residual block."""
    return 2 * (len(encoder) - 1)


class FeatureUnification(nn.Module):
    """Their LearnedFeatureUnification: any number of channels -> ``dim`` maps, from a learned 5x5 basis.

    Each L2-normalised channel is convolved with every basis kernel (zero padding, divided by the
    number of in-map taps); the (C*dim) responses, channel-major as a grouped conv lays them out,
    are read as (dim, C) (the public code's ``view``), softmaxed over the first axis and averaged
    over the second. Computed in bands of rows with their 2-row halo, so memory stays bounded on
    large maps (C*dim responses per pixel).
    """

    def __init__(self, dim: int, kernel: int = LFU_KERNEL) -> None:
        super().__init__()
        self.basis = nn.Parameter(torch.randn(dim, 1, kernel, kernel))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feats.shape
        dim, k = self.basis.shape[0], self.basis.shape[-1]
        p = k // 2
        padded = F.pad(feats, (p, p, p, p))
        ones = F.pad(feats.new_ones(1, 1, h, w), (p, p, p, p))
        denom = F.conv2d(ones, feats.new_ones(1, 1, k, k))
        weight = self.basis.repeat(c, 1, 1, 1)
        rows = max(1, BAND_BYTES // max(1, 3 * b * c * dim * w * feats.element_size()))
        out = []
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            x = F.conv2d(padded[:, :, r0:r1 + 2 * p], weight, groups=c) / denom[:, :, r0:r1]
            out.append(x.view(b, dim, c, r1 - r0, w).softmax(dim=1).mean(dim=2))
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]


class RoPE(nn.Module):
    """2-D rotary embedding over [0,1] pixel coordinates; ``freqs`` is a trained parameter as in theirs."""

    def __init__(self, dim: int, theta: float = ROPE_THETA) -> None:
        super().__init__()
        self.freqs = nn.Parameter(rope_frequencies(dim, theta))

    def forward(self, x: torch.Tensor, full: tuple[int, int], rows: Span, cols: Span) -> torch.Tensor:
        """``x`` (B,D,rows,cols): that crop of a ``full``-sized map, rotated by its pixels' angles."""
        ys = torch.linspace(0, 1, full[0], device=x.device, dtype=x.dtype)[rows[0]:rows[1]]
        xs = torch.linspace(0, 1, full[1], device=x.device, dtype=x.dtype)[cols[0]:cols[1]]
        f = self.freqs.to(x.dtype)
        angle = ys.view(1, 1, -1, 1) * f[0].view(1, -1, 1, 1) + xs.view(1, 1, 1, -1) * f[1].view(1, -1, 1, 1)
        half = x.shape[1] // 2
        if torch.is_grad_enabled():
            rotated = torch.cat([-x[:, half:], x[:, :half]], dim=1)
            return x * angle.cos() + rotated * angle.sin()
        cos, sin = angle.cos(), angle.sin_()  # inference: three full-size tensors, not eight
        out = torch.mul(x, cos, out=cos) if x.shape[0] == 1 else x * cos
        out[:, :half].addcmul_(x[:, half:], sin[:, :half], value=-1)
        out[:, half:].addcmul_(x[:, :half], sin[:, half:])
        return out


class CrossAttention(nn.Module):
    """Parameter holder in the released layout: RMSNorms and torch's MultiheadAttention in-projections.

    Only the q and k in-projections are used (the weights are averaged over heads and applied to
    the raw features); the v projection and ``out_proj`` exist in the released files but never take
    part, so ``out_proj`` is frozen here (no gradient ever reaches it in their training either).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_q = nn.RMSNorm(dim)
        self.norm_k = nn.RMSNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.attention.out_proj.requires_grad_(False)


class CrossDecode(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.cross_attn = CrossAttention(dim, heads)
        self.conv2d = nn.Conv2d(dim, dim, 3, padding=1, bias=False)


@lru_cache(maxsize=256)
def window_runs(out_len: int, lr_len: int, ratio: float) -> tuple[tuple[int, int, int, int], ...]:
    """Runs (start, stop, lr_start, lr_stop) of output positions whose LR window is [lr_start, lr_stop).

    The window of output position i (pixel centre (i + 0.5) / out_len) is the LR cells meeting
    [centre - ratio, centre + ratio], clamped to [0, 1]: the public mask's rule, in its float32 arithmetic.
    """
    if ratio <= 0:  # no window: every output position attends to the whole map
        return ((0, out_len, 0, lr_len),)
    pos = (torch.arange(out_len, dtype=torch.float32) + 0.5) / out_len
    lo = ((pos - ratio).clamp(0.0, 1.0) * lr_len).floor().long().tolist()
    hi = ((pos + ratio).clamp(0.0, 1.0) * lr_len).ceil().long().tolist()
    runs, start = [], 0
    for i in range(1, out_len + 1):
        if i == out_len or (lo[i], hi[i]) != (lo[start], hi[start]):
            runs.append((start, i, lo[start], hi[start]))
            start = i
    return tuple(runs)


Blocks = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""One shape of block: (query starts (N,), query offsets (nq,), key starts (N,), key offsets (nk,)); block n's
queries are ``query_start[n] + query_offsets`` (row-major in the region), its keys ``key_start[n] + key_offsets``
(row-major in the LR map)."""


@lru_cache(maxsize=64)
def attention_blocks(out_size: tuple[int, int], lr_size: tuple[int, int], ratio: float, rows: Span, cols: Span
                     ) -> tuple[Blocks, ...]:
    """The output region rows x cols cut into blocks of pixels that share one LR window, grouped by shape
    (each group is one batched attention)."""
    def clipped(n_out, n_lr, span):
        return [(max(a, span[0]) - span[0], min(b, span[1]) - span[0], lo, hi)
                for a, b, lo, hi in window_runs(n_out, n_lr, ratio) if a < span[1] and b > span[0]]

    width, lr_w = cols[1] - cols[0], lr_size[1]
    groups: dict[tuple[int, int, int, int], tuple[list[int], list[int]]] = {}
    for ra, rb, r0, r1 in clipped(out_size[0], lr_size[0], rows):
        for ca, cb, c0, c1 in clipped(out_size[1], lr_size[1], cols):
            starts = groups.setdefault((rb - ra, cb - ca, r1 - r0, c1 - c0), ([], []))
            starts[0].append(ra * width + ca)
            starts[1].append(r0 * lr_w + c0)

    def offsets(n_rows, n_cols, row_len):
        return (torch.arange(n_rows)[:, None] * row_len + torch.arange(n_cols)[None]).flatten()

    return tuple((torch.tensor(q), offsets(nq_r, nq_c, width), torch.tensor(k), offsets(nk_r, nk_c, lr_w))
                 for (nq_r, nq_c, nk_r, nk_c), (q, k) in groups.items())


@METHODS.register
class AnyUp(Upsampler):
    name = "anyup"
    version = "1"
    fit = "dataset"
    own_objective: ClassVar[dict[str, Any] | None] = {
        "optimizer": "AdamW", "lr": 2e-4, "betas": [0.9, 0.999], "weight_decay": 1e-5,
        "loss": "cosine + min-max MSE (JAFAR)", "local_crops": LOSS_CROPS, "augmentation_regularization": 0.1,
        "downsampling_regularization": 0.1,
    }
    # Not in the CPU default run: fifteen 128-channel 1x1 convs and a 128 -> 128 3x3 conv at full resolution, as the
    # public model is, make a forward about a second per 224² image on 2 CPU cores, and a training step (three
    # forwards and a backward at half size per image) several times that (docs/methods.md has the measured figures).
    in_default_run = False
    q_chunk_size: int | None = None
    """Queries per batched attention step (memory against speed; results do not change); None: STEP_BYTES."""

    def __init__(self, qk_dim: int = QK_DIM, heads: int = HEADS, window_ratio: float = WINDOW,
                 lfu_kernel: int = LFU_KERNEL, q_chunk_size: int | None = None) -> None:
        super().__init__()
        if qk_dim % GROUPS or qk_dim % heads or qk_dim % 4:
            raise ValueError(f"qk_dim must be a multiple of {GROUPS}, of heads ({heads}) and of 4, got {qk_dim}")
        self.qk_dim, self.heads, self.window_ratio = qk_dim, heads, window_ratio
        self.q_chunk_size = q_chunk_size

        def encoder(first: nn.Module) -> nn.Sequential:
            return nn.Sequential(first, Residual(qk_dim), Residual(qk_dim))

        self.image_encoder = encoder(nn.Conv2d(3, qk_dim, 1, bias=False))
        self.key_encoder = encoder(nn.Conv2d(qk_dim, qk_dim, 1, bias=False))
        self.query_encoder = encoder(nn.Conv2d(qk_dim, qk_dim, 1, bias=False))
        self.key_features_encoder = encoder(FeatureUnification(qk_dim, lfu_kernel))
        self.cross_decode = CrossDecode(qk_dim, heads)
        self.aggregation = encoder(nn.Conv2d(2 * qk_dim, qk_dim, 3, bias=False))
        self.rope = RoPE(qk_dim)

    @classmethod
    def create(cls, backbone: "Backbone") -> "AnyUp":
        """The same model for every backbone: no weight depends on its channels or stride."""
        return cls()

    def features(self, backbone: "Backbone", image: torch.Tensor) -> torch.Tensor:
        """The backbone's features as they are: what the public code feeds AnyUp (no standardisation)."""
        return backbone.features(image)

    def state_from_file(self, loaded: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A released file is a plain state dict; their train.py checkpoints keep it under "anyup"."""
        state = loaded.get("anyup", loaded) if isinstance(loaded, dict) else loaded
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or "cross_decode.cross_attn.attention.in_proj_weight" not in state:
            keys = list(state)[:3] if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not an AnyUp state dict (found {keys}...): use a released AnyUp checkpoint, "
                             f"{' or '.join(RELEASES)}")
        return state

    # ---------------------------------------------------------------- forward

    def check_inputs(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> None:
        """check_batch for features of any channel count, and a positive output size."""
        if lr_feats.dim() != 4:
            raise ValueError(f"{self.name!r} needs features shaped (B, C, h, w), got {tuple(lr_feats.shape)}")
        check_batch(self.name, lr_feats.shape[1], lr_feats, image)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"{self.name!r} needs a positive output size (H', W'), got {tuple(output_size)}")

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        self.check_inputs(lr_feats, image, output_size)
        output_size = tuple(output_size)
        size = tuple(image.shape[-2:])
        enc = self.encode_image(imagenet_normalised(image).to(lr_feats.dtype), None, size, (0, size[0]), (0, size[1]))
        queries = F.adaptive_avg_pool2d(run_encoder(self.query_encoder, enc), output_size)
        pooled = F.adaptive_avg_pool2d(run_encoder(self.key_encoder, enc), lr_feats.shape[-2:])
        del enc
        queries = self.cross_decode.conv2d(queries)
        keys = self.project_keys(pooled, lr_feats)
        return self.attend(queries, keys, lr_feats, output_size, (0, output_size[0]), (0, output_size[1]))

    def encode_image(self, guidance: torch.Tensor, stats: list[GroupStats] | None, size: tuple[int, int],
                     rows: Span, cols: Span, stop: int | None = None) -> torch.Tensor:
        """Image encoder + RoPE on the crop ``rows`` x ``cols`` of a ``size`` image (the whole image: stats None)."""
        enc = run_encoder(self.image_encoder, guidance, stats, stop)
        return enc if stop is not None else self.rope(enc, size, rows, cols)

    def project_keys(self, pooled: torch.Tensor, lr_feats: torch.Tensor) -> torch.Tensor:
        """(B, heads, hw, d) keys: pooled image keys + feature unification, mixed, RMSNorm'd and in-projected."""
        unified = run_encoder(self.key_features_encoder, F.normalize(lr_feats, dim=1))
        x = torch.cat([pooled, unified], dim=1)
        mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"  # reflect needs 2 pixels
        x = self.aggregation[0](F.pad(x, (1, 1, 1, 1), mode=mode))
        for res in self.aggregation[1:]:
            x = res(x)
        attn = self.cross_decode.cross_attn
        b, d = x.shape[:2]
        x = attn.norm_k(x.flatten(2).transpose(1, 2))
        x = F.linear(x, attn.attention.in_proj_weight[d:2 * d], attn.attention.in_proj_bias[d:2 * d])
        return x.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, lr_feats: torch.Tensor, output_size: tuple[int, int],
               rows: Span, cols: Span, out: torch.Tensor | None = None) -> torch.Tensor:
        """Output ``rows`` x ``cols`` (into ``out`` (B,C,rows,cols) if given) from the region's (B,D,rows,cols) queries.

        Each block of pixels sharing an LR window attends to exactly that window's keys (what the
        public mask keeps): scores per head, softmax, mean over heads, then the raw features.
        """
        attn = self.cross_decode.cross_attn
        b, d = queries.shape[:2]
        q = attn.norm_q(queries.flatten(2).transpose(1, 2))
        q = F.linear(q, attn.attention.in_proj_weight[:d], attn.attention.in_proj_bias[:d])
        q = (q * (d // self.heads) ** -0.5).view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        values = lr_feats.flatten(2).transpose(1, 2)  # (B, hw, C)
        c = values.shape[-1]
        result = values.new_empty(b, c, q.shape[2])
        blocks = attention_blocks(tuple(output_size), tuple(lr_feats.shape[-2:]), self.window_ratio,
                                  tuple(rows), tuple(cols))
        for q_start, q_offsets, k_start, k_offsets in blocks:
            nq, nk = len(q_offsets), len(k_offsets)
            if self.q_chunk_size is not None:
                step = max(1, self.q_chunk_size // nq)
            else:
                per_block = b * (self.heads * nq * nk + nk * c + 2 * nq * c + (nq + nk) * d) * values.element_size()
                step = max(1, STEP_BYTES // per_block)
            q_offsets, k_offsets = q_offsets.to(q.device), k_offsets.to(q.device)
            for s in range(0, len(q_start), step):
                qi = q_start[s:s + step].to(q.device)[:, None] + q_offsets
                ki = k_start[s:s + step].to(q.device)[:, None] + k_offsets
                scores = q[:, :, qi] @ keys[:, :, ki].transpose(-1, -2)  # (B, heads, n, nq, nk)
                weights = scores.softmax(dim=-1).mean(dim=1)
                result[:, :, qi.flatten()] = (weights @ values[:, ki]).flatten(1, 2).transpose(1, 2)
        result = result.view(b, c, rows[1] - rows[0], cols[1] - cols[0])
        return result if out is None else out.copy_(result)

    # ---------------------------------------------------------------- exact tiles

    def forward_region(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int],
                       rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
        return self.regions(lr_feats, image, output_size)(rows, cols, out)

    def regions(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]):
        """Per-tile computation after one streamed pass set shared by all tiles: the image encoders'
        GroupNorm statistics over the whole image, and the (small) LR keys."""
        self.check_inputs(lr_feats, image, output_size)
        output_size = tuple(output_size)
        guidance = imagenet_normalised(image).to(lr_feats.dtype)
        stats_image, stats_query, stats_key = self.norm_statistics(guidance)
        keys = self.project_keys(self.pooled_keys(guidance, stats_image, stats_key, lr_feats.shape[-2:]), lr_feats)

        def region(rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
            queries = self.region_queries(guidance, stats_image, stats_query, output_size, rows, cols)
            return self.attend(queries, keys, lr_feats, output_size, rows, cols, out)

        return region

    def bands(self, guidance: torch.Tensor) -> list[Span]:
        h, w = guidance.shape[-2:]
        # about 12 band-sized tensors at once (an encoder, its GroupNorms and RoPE, the moments)
        rows = max(1, BAND_BYTES // (12 * guidance.shape[0] * self.qk_dim * w * guidance.element_size()))
        return [(r, min(h, r + rows)) for r in range(0, h, rows)]

    def norm_statistics(self, guidance: torch.Tensor) -> tuple[list[GroupStats], list[GroupStats], list[GroupStats]]:
        """Whole-image statistics of every GroupNorm at image resolution, one streamed pass per depth.

        Pass n recomputes the encoders up to GroupNorm n in bands of rows (the earlier ones with the
        statistics already known) and accumulates its input's moments per group in float64.
        """
        size = tuple(guidance.shape[-2:])
        full_cols = (0, size[1])

        stats_image: list[GroupStats] = []
        for n in range(encoder_norms(self.image_encoder)):
            moments = GroupMoments()
            for r0, r1 in self.bands(guidance):
                moments.add(self.encode_image(guidance[:, :, r0:r1], stats_image, size, (r0, r1), full_cols, stop=n), GROUPS)
            stats_image.append(moments.stats(GN_EPS))
        stats_query: list[GroupStats] = []
        stats_key: list[GroupStats] = []
        for n in range(encoder_norms(self.query_encoder)):
            query_moments, key_moments = GroupMoments(), GroupMoments()
            for r0, r1 in self.bands(guidance):
                enc = self.encode_image(guidance[:, :, r0:r1], stats_image, size, (r0, r1), full_cols)
                query_moments.add(run_encoder(self.query_encoder, enc, stats_query, stop=n), GROUPS)
                key_moments.add(run_encoder(self.key_encoder, enc, stats_key, stop=n), GROUPS)
            stats_query.append(query_moments.stats(GN_EPS))
            stats_key.append(key_moments.stats(GN_EPS))
        return stats_image, stats_query, stats_key

    def pooled_keys(self, guidance: torch.Tensor, stats_image: list[GroupStats], stats_key: list[GroupStats],
                    lr_size: tuple[int, int]) -> torch.Tensor:
        """The key encoder pooled to the LR grid, computed in bands of whole pooling bins."""
        size = tuple(guidance.shape[-2:])
        per_row = max(1, -(-size[0] // lr_size[0]))
        lr_rows = max(1, self.bands(guidance)[0][1] // per_row)
        out = []
        for a in range(0, lr_size[0], lr_rows):
            span = (a, min(lr_size[0], a + lr_rows))
            r0, r1 = pool_source(span, size[0], lr_size[0])
            enc = self.encode_image(guidance[:, :, r0:r1], stats_image, size, (r0, r1), (0, size[1]))
            keys = run_encoder(self.key_encoder, enc, stats_key)
            keys = pool_axis(keys, 2, r0, span, size[0], lr_size[0])
            out.append(pool_axis(keys, 3, 0, (0, lr_size[1]), size[1], lr_size[1]))
        return torch.cat(out, dim=2)

    def region_queries(self, guidance: torch.Tensor, stats_image: list[GroupStats], stats_query: list[GroupStats],
                       output_size: tuple[int, int], rows: Span, cols: Span) -> torch.Tensor:
        """(B, D, rows, cols) queries of one region: the query encoder on the image pixels its pooled,
        3x3-convolved (zero padded at the image border only) queries read."""
        size = tuple(guidance.shape[-2:])
        halo_rows = (max(0, rows[0] - 1), min(output_size[0], rows[1] + 1))
        halo_cols = (max(0, cols[0] - 1), min(output_size[1], cols[1] + 1))
        src_rows = pool_source(halo_rows, size[0], output_size[0])
        src_cols = pool_source(halo_cols, size[1], output_size[1])
        crop = guidance[:, :, src_rows[0]:src_rows[1], src_cols[0]:src_cols[1]]
        enc = self.encode_image(crop, stats_image, size, src_rows, src_cols)
        q = run_encoder(self.query_encoder, enc, stats_query)
        if size != tuple(output_size):
            q = pool_axis(q, 2, src_rows[0], halo_rows, size[0], output_size[0])
            q = pool_axis(q, 3, src_cols[0], halo_cols, size[1], output_size[1])
        pad = (int(halo_cols[0] == cols[0]), int(halo_cols[1] == cols[1]),
               int(halo_rows[0] == rows[0]), int(halo_rows[1] == rows[1]))
        return F.conv2d(F.pad(q, pad), self.cross_decode.conv2d.weight)

    # ---------------------------------------------------------------- training (their train.py)

    def training_loss(self, backbone: "Backbone", image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """AnyUp's objective on a batch: the image is their 448 px view, its half-size resize the guidance.

        - reconstruction: features predicted on the full image's grid from the half-size image's
          features, cropped at LOSS_CROPS random stride-aligned half-size crops, against the
          backbone's features of those crops (higher resolution than the input);
        - 0.1 x consistency: the half-size upsampling guided by an augmented image against the
          one guided by the clean image (no gradient through the target);
        - 0.1 x downsampling: the prediction area-pooled to the input grid against the input.
        """
        b, _, height, width = image.shape
        s = backbone.stride
        crop = (max(s, height // 2 // s * s), max(s, width // 2 // s * s))
        grid = (max(1, height // s), max(1, width // s))
        small = F.interpolate(image, size=crop, mode="bilinear", align_corners=False, antialias=True)
        tops = s * torch.randint(0, (height - crop[0]) // s + 1, (b * LOSS_CROPS,), generator=generator)
        lefts = s * torch.randint(0, (width - crop[1]) // s + 1, (b * LOSS_CROPS,), generator=generator)
        crops = torch.stack([image[i // LOSS_CROPS, :, t:t + crop[0], l:l + crop[1]]
                             for i, (t, l) in enumerate(zip(tops.tolist(), lefts.tolist()))])
        augmented = F.interpolate(augment(image, generator), size=crop, mode="bilinear", align_corners=False,
                                  antialias=True)
        with torch.no_grad():
            target = self.features(backbone, crops)
            lr_feats = self.features(backbone, small)
        pred = self(lr_feats, small, grid)
        th, tw = target.shape[-2:]
        windows = []
        for i, (t, l) in enumerate(zip(tops.tolist(), lefts.tolist())):
            r, c = min(t // s, grid[0] - th), min(l // s, grid[1] - tw)
            windows.append(pred[i // LOSS_CROPS, :, max(0, r):max(0, r) + th, max(0, c):max(0, c) + tw])
        loss = cosine_mse(torch.stack(windows), target)
        consistency = self(lr_feats, augmented, crop)
        with torch.no_grad():
            reference = self(lr_feats, small, crop)
        loss = loss + 0.1 * cosine_mse(consistency, reference)
        down = F.interpolate(pred, size=lr_feats.shape[-2:], mode="area")
        return loss + 0.1 * cosine_mse(down, lr_feats)


def _chance(generator: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=generator).item() < p


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def augment(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Their photometric augmentation (utils/training.py), per image, in torch: colour jitter
    (brightness 0.2, contrast 0.2, saturation 0.3, hue 0.05; p 0.5), greyscale (0.1), 5x5 Gaussian
    blur sigma 0.3-1.5 (0.35), autocontrast (0.2), equalise (0.15), sharpness 1.5 (0.2), 5-bit
    posterise (0.1), solarise at 0.9 (0.05), invert (0.02), Gaussian noise sigma 0.03 (0.6).
    JPEG re-encoding is left out (no codec in torch)."""
    out = []
    for x in image.clamp(0, 1):
        if _chance(generator, 0.5):
            x = (x * _uniform(generator, 0.8, 1.2)).clamp(0, 1)
            x = (_grey(x).mean() + (x - _grey(x).mean()) * _uniform(generator, 0.8, 1.2)).clamp(0, 1)
            x = (_grey(x) + (x - _grey(x)) * _uniform(generator, 0.7, 1.3)).clamp(0, 1)
            angle = 2 * math.pi * _uniform(generator, -0.05, 0.05)  # hue: rotation about the grey axis
            cos, sin, third = math.cos(angle), math.sin(angle), 1 / 3
            a, b = cos + (1 - cos) * third, (1 - cos) * third
            rot = x.new_tensor([[a, b - math.sqrt(third) * sin, b + math.sqrt(third) * sin],
                                [b + math.sqrt(third) * sin, a, b - math.sqrt(third) * sin],
                                [b - math.sqrt(third) * sin, b + math.sqrt(third) * sin, a]])
            x = torch.einsum("ij,jhw->ihw", rot, x).clamp(0, 1)
        if _chance(generator, 0.1):
            x = _grey(x).expand(3, -1, -1)
        if _chance(generator, 0.35):
            sigma = _uniform(generator, 0.3, 1.5)
            taps = torch.exp(-0.5 * (torch.arange(-2, 3, dtype=x.dtype) / sigma) ** 2)
            taps = (taps / taps.sum()).to(x.device)
            y = F.pad(x[None], (2, 2, 2, 2), mode="reflect")
            y = F.conv2d(y, taps.view(1, 1, 1, 5).expand(3, 1, 1, 5), groups=3)
            x = F.conv2d(y, taps.view(1, 1, 5, 1).expand(3, 1, 5, 1), groups=3)[0]
        if _chance(generator, 0.2):  # autocontrast
            lo, hi = x.amin((1, 2), keepdim=True), x.amax((1, 2), keepdim=True)
            x = torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)
        if _chance(generator, 0.15):  # equalise: each channel through its own cumulative histogram
            levels = (x * 255).round().long().clamp(0, 255)
            cdf = torch.stack([torch.bincount(c.flatten(), minlength=256) for c in levels]).cumsum(1).to(x.dtype)
            x = cdf.gather(1, levels.flatten(1)).view_as(x) / cdf[:, -1:, None]
        if _chance(generator, 0.2):  # sharpness 1.5: blend with a 3x3 smoothed copy
            kernel = x.new_tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
            smooth = F.conv2d(F.pad(x[None], (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)[0]
            x = (smooth + 1.5 * (x - smooth)).clamp(0, 1)
        if _chance(generator, 0.1):
            x = torch.floor(x * 255 / 8) * 8 / 255
        if _chance(generator, 0.05):
            x = torch.where(x >= 0.9, 1 - x, x)
        if _chance(generator, 0.02):
            x = 1 - x
        if _chance(generator, 0.6):
            x = (x + 0.03 * torch.randn(x.shape, generator=generator).to(x)).clamp(0, 1)
        out.append(x)
    return torch.stack(out)
