"""NAF (Chambon et al. 2025, "Zero-Shot Feature Upsampling via Neighborhood Attention Filtering").

Written after github:valeoai/NAF at commit ad4e24d2ec32a2fbcccb3beaf7107bc3caa7038a (src/model/naf.py,
src/layers/, config/model/naf.yaml, config/base.yaml, config/optimizer/adamw.yaml, train.py,
utils/training.py), with their config's settings: dim 256, 4 attention heads, 4 RoPE heads, kernel 9,
two encoder blocks, RoPE base 100 and training rescale 2. Equal in numbers to their forward
(tests/test_naf.py compares against a fixture made by running their code with NATTEN 0.21.7).

- The image, normalised with ImageNet's mean/std (their callers' ``T.Normalize``), is first resized
  (bilinear) to (min(H, 4h', 4w'), min(W, 4w', 4h')) when it is more than 4x the output size (h', w'),
  then encoded by two conv stacks of 128 channels each: 1x1 convs and 3x3 convs (reflect padding), each a
  conv and two blocks (GroupNorm(8) -> SiLU -> conv, twice, no residual). The 256 channels are pooled
  (adaptive average) to the output size and rotated by an axial RoPE (4 heads, fixed periods 100^(i/16),
  coordinates of pixel centres in [-1, 1]): these are the queries. Keys: the same map pooled to the
  feature grid. No parameter ever sees the features: NAF is one set of weights for every backbone.
- Each output pixel attends (4 heads of 64 dims, scale 1/8) to a 9x9 neighbourhood of keys, and takes the
  weighted mean of the features there (head n mixes the n-th quarter of the channels). Their code does
  this with NATTEN: keys and features resized to the output size (nearest-exact), a 9x9 neighbourhood
  attention dilated by the integer ratio d = (h' // h, w' // w). NATTEN splits a dilated axis into d
  interleaved groups (pixels i with the same i mod d) and runs plain neighbourhood attention in each: the
  window is centred on the pixel and *shifted* inside the group at its ends (never padded), so every
  query sees exactly 9 keys per axis. We compute the same windows without NATTEN: per axis, each output
  pixel's 9 output-grid neighbours, mapped through nearest-exact to feature-grid indices
  (``neighbour_table``); consecutive rows with one window of feature rows, and cells of consecutive
  columns with one window of feature columns (the d x d children of a feature pixel at an integer
  ratio), share their 81 keys, so each (rows, cell) block is one matmul.

Extensions where their code stops (NATTEN raises), none of which changes a number where it runs:
- An axis whose dilation group is shorter than the kernel (a feature grid under 9 wide: the smoke
  profile's 3x4, or the 7x7 of a 224 px training image at half size) attends to the whole group.
- An output smaller than the feature grid uses dilation 1 (their ratio would be 0).
- Channels not divisible by the 4 heads are split into near-equal parts (``torch.tensor_split``).

Differences, none of which changes a number: ``forward_region`` computes exact tiles: the whole-image
statistics of the 8 GroupNorms are gathered first, one level per pass over row bands of the image, then
the keys (the queries pooled to the feature grid) in a pass over output bands, so no full-resolution
256-channel map is ever held; tiles then compute their queries from an image crop.

Features: the upsampler sees the backbone's features as they are, not channel-standardised like the
suite's FeatUp-style methods: their code feeds the backbone's own output (timm ViT tokens after the final
norm, which is what our ViT backbones give) in training and evaluation, and the output, a convex
combination of those features, stays in the backbone's feature space.

Training (``own_objective``, their train.py): AdamW (lr 2e-4, betas 0.9/0.999, weight decay 1e-5), MSE
between the upsampled features of the image at half size (rounded to a multiple of the stride, bilinear)
and the features of the image itself; the upsampler's image is resized to min(224, 4x the target grid)
per side, and RoPE coordinates are scaled by a log-uniform factor in [1/2, 2] per step. Their RoPE caches
its coordinates per size, rescale included, so their training (one output size) kept its first draw for
all steps; we draw anew each step, which is what the augmentation is written to do. They train in bf16
autocast on a GPU, on 512 px ImageNet images; we train in the backbone's precision on the profile's
images (the smoke and default profiles' grids are under 9 wide at half size: see above).

Parameters: 662,528 (the image encoders' convs and GroupNorms; the RoPE periods are a buffer), for any
number of channels, equal to NAF's table at 384 channels (test/test_results.json).

Released weights (one file for every backbone): https://github.com/valeoai/NAF/releases/download/model/naf_release.pth
(their hubconf.py: ``NAF()`` + ``load_state_dict``). Pass it with ``run --upsampler-weights naf=PATH``;
our state dict has their layout, so it loads as it is. Without a file NAF trains from scratch on any
backbone with their objective (``training_loss``).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from methods.base import Upsampler
from methods.guidance import imagenet_normalised
from methods.tiling import (CHUNK_BYTES, GroupMoments, GroupStats, Region, Span, area_taps, group_norm, pool_axis,
                            pool_source, spans, widen)

RELEASE_URL = "https://github.com/valeoai/NAF/releases/download/model/naf_release.pth"
DIM, HEADS, ROPE_HEADS, KERNEL = 256, 4, 4, 9
GROUPS, BLOCKS = 8, 2
ROPE_BASE, ROPE_RESCALE = 100.0, 2.0
MAX_IMAGE_RATIO = 4
"""Their image encoder sees at most 4x the output size per side."""
LR_SCALE, TRAIN_GUIDANCE = 0.5, 224
"""Training: features of the image at half size are upsampled to those of the image; the upsampler's
image is resized to min(224, 4x the target grid)."""
TEMPORARIES = 4
"""Full-width band temporaries of one encoder conv (input, padded, output, normalised)."""


class NormConvBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice (their ``EncBlock`` as built: equal widths, no residual)."""

    def __init__(self, width: int, kernel: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, width)
        self.conv1 = nn.Conv2d(width, width, kernel, padding=kernel // 2, padding_mode="reflect")
        self.norm2 = nn.GroupNorm(GROUPS, width)
        self.conv2 = nn.Conv2d(width, width, kernel, padding=kernel // 2, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


def conv_stack(width: int, kernel: int) -> nn.Sequential:
    """A conv from the image then BLOCKS blocks (their ``encoder``)."""
    return nn.Sequential(nn.Conv2d(3, width, kernel, padding=kernel // 2, padding_mode="reflect"),
                         *[NormConvBlock(width, kernel) for _ in range(BLOCKS)])


def stack_layers(stack: nn.Sequential) -> tuple[list[nn.Conv2d], list[nn.GroupNorm]]:
    """The stack as a chain: conv_0, then (norm_i -> SiLU -> conv_{i+1}) for each norm."""
    convs, norms = [stack[0]], []
    for block in stack[1:]:
        convs += [block.conv1, block.conv2]
        norms += [block.norm1, block.norm2]
    return convs, norms


class AxialRope(nn.Module):
    """Fixed-period axial RoPE (their ``RoPE``, DINOv3's): per head of ``dim`` channels, the first quarter
    rotates with the row coordinate, the second with the column, each paired with the channel half a head
    further; coordinates are pixel centres mapped to [-1, 1] on each axis separately."""

    def __init__(self, width: int, heads: int, base: float = ROPE_BASE) -> None:
        super().__init__()
        if width % (4 * heads):
            raise ValueError(f"RoPE needs a width divisible by 4 x {heads} heads, got {width}")
        self.heads, self.head_dim = heads, width // heads
        quarter = self.head_dim // 4
        self.register_buffer("periods", base ** (2 * torch.arange(quarter, dtype=torch.float32) / (self.head_dim // 2)))

    def forward(self, x: torch.Tensor, full: tuple[int, int], rows: Span, cols: Span, scale: float | None = None
                ) -> torch.Tensor:
        """Rotate ``x`` (B, width, rows, cols), a crop of a ``full``-sized map; ``scale`` multiplies the coordinates."""
        angles = []
        for n, (a, b) in zip(full, (rows, cols)):
            coord = 2.0 * (torch.arange(0.5, n, dtype=torch.float32, device=x.device) / n) - 1.0
            if scale is not None:
                coord = coord * scale
            angles.append(2 * math.pi * coord[a:b, None] / self.periods[None, :])  # (len, quarter)
        h, w, quarter = rows[1] - rows[0], cols[1] - cols[0], self.head_dim // 4
        half = torch.cat([angles[0].T[:, :, None].expand(quarter, h, w), angles[1].T[:, None, :].expand(quarter, h, w)])
        full_angles = torch.cat([half, half])  # (head_dim, h, w)
        cos, sin = full_angles.cos().to(x.dtype), full_angles.sin().to(x.dtype)
        y = x.unflatten(1, (self.heads, self.head_dim))
        first, second = y.chunk(2, dim=2)
        rotated = torch.cat([-second, first], dim=2)
        return (y * cos + rotated * sin).flatten(1, 2)


class ImageEncoder(nn.Module):
    """Their ``ImageEncoder``: two conv stacks (1x1 and 3x3) whose 256 channels are pooled and rotated."""

    def __init__(self, width: int = DIM, rope_heads: int = ROPE_HEADS) -> None:
        super().__init__()
        self.encoder = conv_stack(width // 2, 1)
        self.sem_encoder = conv_stack(width // 2, 3)
        self.rope = AxialRope(width, rope_heads)

    @staticmethod
    def encoder_input(image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """The normalised image resized as theirs when over 4x the output (the min over both sides is theirs)."""
        x = imagenet_normalised(image)
        oh, ow = output_size
        r = MAX_IMAGE_RATIO
        if x.shape[-2] > r * oh or x.shape[-1] > r * ow:
            size = (min(x.shape[-2], r * oh, r * ow), min(x.shape[-1], r * ow, r * oh))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


@lru_cache(maxsize=64)
def neighbour_table(n_out: int, n_lr: int, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, valid), each (n_out, kernel): the feature-grid rows each output row attends to on one axis.

    NATTEN's dilated neighbourhood on the output grid (dilation d = n_out // n_lr, at least 1): output
    pixel i lies in group g = i mod d at position p = i // d of the group's L pixels; its window starts
    at min(max(p - kernel // 2, 0), L - kernel) (centred, shifted at the group's ends) and takes
    ``kernel`` group pixels g + d * (start + t). Each is read from the feature grid at its nearest-exact
    index (their keys and values are resized so). Groups shorter than the kernel (where NATTEN raises)
    take all their L pixels; the unused slots are marked invalid.
    """
    if kernel % 2 == 0:
        raise ValueError(f"NAF's neighbourhood kernel must be odd, got {kernel}")
    d = max(1, n_out // n_lr)
    i = torch.arange(n_out)
    g, p = i % d, i // d
    length = (n_out - g + d - 1) // d
    taken = length.clamp(max=kernel)
    start = torch.minimum((p - kernel // 2).clamp(min=0), length - taken)
    t = torch.arange(kernel)
    valid = t[None, :] < taken[:, None]
    hr = g[:, None] + d * (start[:, None] + torch.where(valid, t[None, :], 0))
    nearest = F.interpolate(torch.arange(n_lr, dtype=torch.float32).view(1, 1, n_lr, 1), size=(n_out, 1),
                            mode="nearest-exact").view(n_out).long()
    return nearest[hr], valid


def _runs(index: torch.Tensor, valid: torch.Tensor) -> list[tuple[int, int]]:
    """Spans of consecutive rows of a ``neighbour_table`` slice that share one window."""
    key = torch.where(valid, index, -1)
    starts = [0] + (torch.nonzero((key[1:] != key[:-1]).any(1)).flatten() + 1).tolist()
    return list(zip(starts, starts[1:] + [len(key)]))


def _cells(index: torch.Tensor, valid: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells, size) columns: runs sharing one window cut into cells of ``size``; a short cell repeats its last
    column, so every cell is one matmul. Also the (cells, size) mask of the columns that are no repeat: only
    those are written, since writing a repeat too would send its gradient back twice."""
    cells, written = [], []
    for a, b in _runs(index, valid):
        for start in range(a, b, size):
            cols = list(range(start, min(start + size, b)))
            cells.append(cols + [cols[-1]] * (size - len(cols)))
            written.append([True] * len(cols) + [False] * (size - len(cols)))
    return torch.tensor(cells, dtype=torch.long), torch.tensor(written)


@METHODS.register
class NAF(Upsampler):
    name = "naf"
    version = "1"
    fit = "dataset"
    # Not in the CPU default run: a forward is tens of GFLOP at 224² (the 3x3 128-channel encoder at image
    # resolution), seconds per image on 2 CPU cores (docs/methods.md has the measured figures); -m naf or a GPU.
    in_default_run = False
    own_objective = {"optimizer": "AdamW", "lr": 2e-4, "betas": [0.9, 0.999], "weight_decay": 1e-5,
                     "loss": "mse(upsampled features of the half-size image, features of the image)",
                     "lr_image_scale": LR_SCALE, "guidance_max": TRAIN_GUIDANCE, "rope_rescale": ROPE_RESCALE}

    def __init__(self, dim: int = DIM, heads: int = HEADS, rope_heads: int = ROPE_HEADS, kernel: int = KERNEL) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"NAF's width {dim} must be divisible by its {heads} heads")
        self.heads, self.kernel = heads, kernel
        self.image_encoder = ImageEncoder(dim, rope_heads)

    @classmethod
    def create(cls, backbone: Any) -> "NAF":
        """NAF's own configuration whatever the backbone: its weights never see the features."""
        return cls()

    def features(self, backbone: Any, image: torch.Tensor) -> torch.Tensor:
        """The backbone's features as they are (see the module docstring: what their code feeds)."""
        return backbone.features(image)

    # ---- whole maps --------------------------------------------------------------------------------------

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int],
                rope_scale: float | None = None) -> torch.Tensor:
        """Their ``NAF.forward(normalised image, features, size)``; ``rope_scale`` only in training."""
        output_size = self._check(lr_feats, image, output_size)
        x = ImageEncoder.encoder_input(image, output_size)
        enc = self.image_encoder
        encoded = torch.cat([enc.encoder(x), enc.sem_encoder(x)], dim=1)
        if tuple(encoded.shape[-2:]) != output_size:  # an average over one pixel is that pixel
            encoded = F.adaptive_avg_pool2d(encoded, output_size)
        queries = enc.rope(encoded, output_size, (0, output_size[0]), (0, output_size[1]), rope_scale)
        keys = F.adaptive_avg_pool2d(queries, lr_feats.shape[-2:])
        out = lr_feats.new_empty(lr_feats.shape[0], lr_feats.shape[1], *output_size, dtype=queries.dtype)
        return self._attend(queries, keys, lr_feats, output_size, (0, output_size[0]), (0, output_size[1]), out)

    def _check(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size) -> tuple[int, int]:
        if lr_feats.dim() != 4 or min(lr_feats.shape) < 1:
            raise ValueError(f"naf needs features shaped (B, C, h, w), got {tuple(lr_feats.shape)}")
        if image.dim() != 4 or image.shape[1] != 3 or image.shape[0] != lr_feats.shape[0]:
            raise ValueError(f"naf needs the RGB images (B, 3, H, W) of its {lr_feats.shape[0]} feature maps, "
                             f"got {tuple(image.shape)}")
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"naf: output size must be two positive sizes, got {output_size}")
        return output_size

    def _attend(self, queries: torch.Tensor, keys: torch.Tensor, lr_feats: torch.Tensor,
                output_size: tuple[int, int], rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
        """Neighbourhood attention of output rows x cols (``queries`` holds exactly those) into ``out``.

        Rows come in runs that share one window of feature rows, columns in cells of up to ``cell`` columns
        that share one window of feature columns (at an integer ratio d: the d columns of a feature
        column), so each (run, cell) is one matmul of its (rows x cell) queries with its kernel^2 keys.
        """
        b, width, h, w = keys.shape
        n, dk = self.heads, width // self.heads
        row_index, row_valid = (t[rows[0]:rows[1]] for t in neighbour_table(output_size[0], h, self.kernel))
        col_index, col_valid = (t[cols[0]:cols[1]] for t in neighbour_table(output_size[1], w, self.kernel))
        parts = torch.tensor_split(lr_feats.to(queries.dtype), n, dim=1)
        sizes, dv = [p.shape[1] for p in parts], parts[0].shape[1]
        offsets = [sum(sizes[:i]) for i in range(n)]
        values = torch.stack([F.pad(p, (0, 0, 0, 0, 0, dv - p.shape[1])) for p in parts], dim=1)  # (B, n, dv, h, w)
        q, k = queries.unflatten(1, (n, dk)), keys.unflatten(1, (n, dk))
        device, width_out = queries.device, cols[1] - cols[0]
        cell = max(1, min(width_out, -(-output_size[1] // w)))
        cells, written = _cells(col_index, col_valid, cell)
        in_order = cells.numel() == width_out and bool((cells.flatten() == torch.arange(width_out)).all())
        cell_window, cell_valid = col_index[cells[:, 0]].to(device), col_valid[cells[:, 0]].to(device)
        flat, written = cells.flatten().to(device), written.flatten().to(device)
        q = q if in_order else q.index_select(4, flat)
        q = q.unflatten(4, (len(cells), cell))  # (B, n, dk, rows, cells, cell)
        taps = row_index.shape[1] * col_index.shape[1]
        for r0, r1 in _runs(row_index, row_valid):
            m = r1 - r0
            window, valid = row_index[r0].to(device), row_valid[r0].to(device)
            kk = k[:, :, :, window][..., cell_window].permute(0, 1, 4, 2, 3, 5).flatten(4)  # (B, n, cells, dk, taps)
            vv = values[:, :, :, window][..., cell_window].permute(0, 1, 4, 3, 5, 2)
            vv = vv.flatten(3, 4)  # (B, n, cells, taps, dv)
            qq = q[:, :, :, r0:r1].permute(0, 1, 4, 3, 5, 2).flatten(3, 4)  # (B, n, cells, m*cell, dk)
            per_cell = b * n * (m * cell * (2 * taps + dk + dv) + taps * (dk + dv)) * queries.element_size()
            step = max(1, CHUNK_BYTES // per_cell)
            mask = None
            if not (bool(valid.all()) and bool(cell_valid.all())):
                mask = (valid[None, :, None] & cell_valid[:, None, :]).flatten(1)  # (cells, taps)
            for e0 in range(0, len(cells), step):
                e1 = min(e0 + step, len(cells))
                scores = (qq[:, :, e0:e1] @ kk[:, :, e0:e1]) * dk ** -0.5  # (B, n, e, m*cell, taps)
                if mask is not None:
                    scores = scores.masked_fill(~mask[e0:e1, None, :], float("-inf"))
                mixed = scores.softmax(-1) @ vv[:, :, e0:e1]  # (B, n, e, m*cell, dv)
                mixed = mixed.unflatten(3, (m, cell)).permute(0, 1, 5, 3, 2, 4).flatten(4)  # (B, n, dv, m, e*cell)
                span = slice(e0 * cell, e1 * cell)
                if not in_order:  # each column once: its repeats are left unwritten
                    mixed = mixed[..., written[span]]
                where = span if in_order else flat[span][written[span]]
                for i in range(n):
                    out[:, offsets[i]:offsets[i] + sizes[i], r0:r1, where] = mixed[:, i, :sizes[i]]
        return out

    # ---- training ----------------------------------------------------------------------------------------

    def training_loss(self, backbone: Any, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Their train.py step: MSE between NAF(features of the half-size image) and the image's features."""
        height, width = image.shape[-2:]
        stride = backbone.stride
        small = tuple(max(stride, stride * round(n * LR_SCALE / stride)) for n in (height, width))
        with torch.no_grad():
            target = self.features(backbone, image)
            lr_feats = self.features(backbone, F.interpolate(image, size=small, mode="bilinear", align_corners=False))
        guidance = F.interpolate(image, size=[min(TRAIN_GUIDANCE, 4 * n) for n in target.shape[-2:]], mode="bilinear",
                                 align_corners=False)
        rescale = math.exp((2 * torch.rand((), generator=generator).item() - 1) * math.log(ROPE_RESCALE))
        pred = self(lr_feats, guidance, tuple(target.shape[-2:]), rope_scale=rescale)
        return F.mse_loss(pred.float(), target.float())

    # ---- released weights --------------------------------------------------------------------------------

    def state_from_file(self, loaded: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Their released file is NAF's state dict, our layout; a checkpoint wrapping it is unwrapped."""
        for key in ("state_dict", "model"):
            if key in loaded and isinstance(loaded[key], dict):
                loaded = loaded[key]
        if "image_encoder.encoder.0.weight" not in loaded:
            raise ValueError(f"not a NAF state dict (keys: {sorted(loaded)[:5]} ...): expected {RELEASE_URL} "
                             "or weights this suite trained for naf")
        return loaded

    # ---- exact tiles -------------------------------------------------------------------------------------

    def forward_region(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int],
                       rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
        return self.regions(lr_feats, image, output_size)(rows, cols, out)

    def regions(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> Region:
        """Gathers what every tile shares once (GroupNorm statistics, the keys), then computes tiles."""
        output_size = self._check(lr_feats, image, output_size)
        x = ImageEncoder.encoder_input(image, output_size)
        stats = self._encoder_stats(x)
        keys = self._keys(x, output_size, tuple(lr_feats.shape[-2:]), stats)

        def region(rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
            queries = self._queries(x, output_size, rows, cols, stats)
            return self._attend(queries, keys, lr_feats, output_size, rows, cols, out)

        return region

    def _stacks(self) -> list[nn.Sequential]:
        return [self.image_encoder.encoder, self.image_encoder.sem_encoder]

    def _band_rows(self, x: torch.Tensor, width: int) -> int:
        """Rows of a 128-channel band of ``width`` columns whose temporaries fit in CHUNK_BYTES."""
        channels = self.image_encoder.encoder[0].out_channels
        return max(1, CHUNK_BYTES // (x.shape[0] * channels * max(1, width) * x.element_size() * TEMPORARIES))

    def _encoder_stats(self, x: torch.Tensor) -> dict[nn.GroupNorm, GroupStats]:
        """Whole-image statistics of every GroupNorm, one level per pass over full-width row bands."""
        known: dict[nn.GroupNorm, GroupStats] = {}
        height, width = x.shape[-2:]
        for level in range(2 * BLOCKS):
            moments = {stack: GroupMoments() for stack in self._stacks()}
            for band in spans(height, self._band_rows(x, width)):
                for stack in self._stacks():
                    norm = stack_layers(stack)[1][level]
                    moments[stack].add(_run_stack(stack, x, band, (0, width), known, level), norm.num_groups)
            for stack in self._stacks():
                norm = stack_layers(stack)[1][level]
                known[norm] = moments[stack].stats(norm.eps)
        return known

    def _queries(self, x: torch.Tensor, output_size: tuple[int, int], rows: Span, cols: Span,
                 stats: dict) -> torch.Tensor:
        """The rotated, pooled encoding of output rows x cols, from the image crop they depend on."""
        full = tuple(x.shape[-2:])
        src_rows = pool_source(rows, full[0], output_size[0])
        src_cols = pool_source(cols, full[1], output_size[1])
        encoded = torch.cat([_run_stack(s, x, src_rows, src_cols, stats, 2 * BLOCKS) for s in self._stacks()], dim=1)
        pooled = pool_axis(encoded, 2, src_rows[0], rows, full[0], output_size[0])
        pooled = pool_axis(pooled, 3, src_cols[0], cols, full[1], output_size[1])
        return self.image_encoder.rope(pooled, output_size, rows, cols)

    def _keys(self, x: torch.Tensor, output_size: tuple[int, int], grid: tuple[int, int], stats: dict) -> torch.Tensor:
        """The queries pooled to the feature grid, summed over bands of output rows (each its share of the bins)."""
        oh, ow = output_size
        band = max(1, self._band_rows(x, max(ow, x.shape[-1])) * oh // x.shape[-2])
        index, weight = area_taps(oh, grid[0])
        keys = None
        for rows in spans(oh, band):
            queries = pool_axis(self._queries(x, output_size, rows, (0, ow), stats), 3, 0, (0, grid[1]), ow, grid[1])
            inside = (index >= rows[0]) & (index < rows[1]) & (weight != 0)
            taps = torch.where(inside, weight, 0.0).to(queries)  # (grid rows, taps)
            local = torch.where(inside, index - rows[0], 0).to(queries.device)
            part = sum(queries.index_select(2, local[:, t]) * taps[:, t].view(1, 1, -1, 1)
                       for t in range(index.shape[1]))
            keys = part if keys is None else keys + part
        return keys


def _run_stack(stack: nn.Sequential, x: torch.Tensor, rows: Span, cols: Span, stats: dict, upto: int) -> torch.Tensor:
    """Output of conv ``upto`` of a conv stack on rows x cols of the image grid, from a crop of ``x`` widened by
    the convs' reach: reflect padding on image-border sides only, GroupNorms from whole-image ``stats``."""
    convs, norms = stack_layers(stack)
    convs = convs[:upto + 1]
    height, width = x.shape[-2:]
    halo = sum(conv.padding[0] for conv in convs)
    r, c = widen(rows, halo, height), widen(cols, halo, width)
    y = x[:, :, r[0]:r[1], c[0]:c[1]]
    for i, conv in enumerate(convs):
        if i:
            y = F.silu(group_norm(norms[i - 1], y, stats[norms[i - 1]]))
        p = conv.padding[0]
        if p:
            sides = [p * (c[0] == 0), p * (c[1] == width), p * (r[0] == 0), p * (r[1] == height)]
            y = F.pad(y, sides, mode="reflect")
            r = (r[0] + p - sides[2], r[1] - p + sides[3])
            c = (c[0] + p - sides[0], c[1] - p + sides[1])
        y = F.conv2d(y, conv.weight, conv.bias)
    return y[:, :, rows[0] - r[0]:rows[1] - r[0], cols[0] - c[0]:cols[1] - c[0]]
