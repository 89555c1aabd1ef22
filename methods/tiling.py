"""Tiled inference: the output computed region by region, so memory is bounded by the tile.

A method that tiles implements ``forward_region`` (its output on one rectangle of the
output grid, equal to the same rectangle of the untiled output); ``assemble`` writes the
regions into one preallocated output. Exactness at region edges is each method's job:
it computes a crop of its input widened by the halo its stages read, applies the
image-border rules (reflect padding, clamping) only on sides that are image borders,
and keeps the interior of what it computed.

A resize to any size (bilinear 14 -> 223) cannot simply run ``F.interpolate`` on a crop:
the crop's sizes would change the sampling grid. ``resize_region`` interpolates a crop that
starts where the grid repeats, with the image's scale (short periods), or applies torch's own
interpolation weights, read off once per size from ``F.interpolate`` of an identity matrix,
as gathers.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F

Span = tuple[int, int]
"""A half-open range [start, stop) of rows or columns."""
Region = Callable[[Span, Span, torch.Tensor], torch.Tensor]
"""``region(rows, cols, out)`` writes rows x cols of a method's output into ``out`` and returns it."""
PixelMap = Callable[[torch.Tensor], torch.Tensor]
"""A map (B,C,h,w) -> (B,K,h,w) that acts on each pixel's channels alone (so it commutes with tiling)."""
CHUNK_BYTES = 128 * 2**20
"""Working memory a region may use per channel chunk (methods whose channels are independent
compute a region a few channels at a time): peak memory stays the output plus a few of these."""
MAX_PERIOD = 8
"""Resizes whose sampling grid repeats every MAX_PERIOD input pixels or fewer run as torch's
interpolation of an aligned crop (fast); others as gathers of torch's weights (exact, slower)."""


def channel_chunks(channels: int, bytes_per_channel: int) -> list[slice]:
    """Consecutive channel slices of at most CHUNK_BYTES working memory each."""
    step = max(1, CHUNK_BYTES // max(1, bytes_per_channel))
    return [slice(c, min(c + step, channels)) for c in range(0, channels, step)]


def spans(length: int, tile: int) -> list[Span]:
    """[0, length) cut into consecutive spans of ``tile`` (the last one shorter)."""
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def widen(span: Span, halo: int, length: int) -> Span:
    """``span`` grown by ``halo`` on both sides, clipped to [0, length)."""
    return max(0, span[0] - halo), min(length, span[1] + halo)


def assemble(
    region: Region, batch: int, channels: int, output_size: tuple[int, int],
    tile: int, like: torch.Tensor, pixelwise: PixelMap | None = None, dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(batch, channels, H, W) output filled tile by tile: ``region(rows, cols, out)`` writes into ``out``.

    ``pixelwise`` maps each tile as it is computed (a probe, a classifier: any per-pixel map of the
    channels), so only the mapped output is held, never the whole feature map. ``dtype`` stores the
    output in another precision (float16 halves it); each tile is computed in ``like``'s dtype.
    """
    out = None if pixelwise else like.new_empty(batch, channels, *output_size, dtype=dtype)
    direct = pixelwise is None and out.dtype == like.dtype  # regions write straight into the output
    for rows in spans(output_size[0], tile):
        for cols in spans(output_size[1], tile):
            window = (slice(None), slice(None), slice(*rows), slice(*cols))
            result = region(rows, cols, out[window] if direct else like.new_empty(
                batch, channels, rows[1] - rows[0], cols[1] - cols[0]))
            if pixelwise is not None:
                result = pixelwise(result)
                if out is None:
                    out = result.new_empty(*result.shape[:2], *output_size, dtype=dtype)
            if not direct:
                out[window] = result
            del result  # before the next tile's buffer is allocated: one tile's buffer at a time
    return out


@lru_cache(maxsize=64)
def interpolation_taps(n_in: int, n_out: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, weight), each (n_out, taps): output i = sum_t weight[i, t] * input[index[i, t]].

    The weights are torch's own: ``F.interpolate`` (align_corners=False) of the identity, one
    axis at a time (the other axis keeps its size, where every mode is the identity).
    """
    eye = torch.eye(n_in, dtype=torch.float64).view(1, n_in, n_in, 1)
    matrix = F.interpolate(eye, size=(n_out, 1), mode=mode, align_corners=False)[0, :, :, 0].T
    taps = int((matrix != 0).sum(1).max())
    index = matrix.abs().topk(taps, dim=1).indices
    weight = matrix.gather(1, index)
    index = torch.where(weight != 0, index, index[:, :1])  # unused taps point at a used row, inside any crop
    return index, weight.float()


def _period(n_in: int, n_out: int) -> tuple[int, int]:
    """(p, q) with out/in = p/q in lowest terms: the sampling grid repeats every q input pixels."""
    g = math.gcd(n_in, n_out)
    return n_out // g, n_in // g


def source_span(span: Span, n_in: int, n_out: int, mode: str) -> Span:
    """The input rows that ``resize_region`` reads for output rows ``span`` of an n_in -> n_out resize.

    Torch's taps of those rows, a pixel more on each side (so a crop's own edge clamping never
    reaches a kept pixel), starting on a multiple of the grid's period where it is short.
    """
    index = interpolation_taps(n_in, n_out, mode)[0][span[0]:span[1]]
    q = _period(n_in, n_out)[1]
    start = max(0, int(index.min()) - 1)
    return (start // q * q if q <= MAX_PERIOD else start), min(n_in, int(index.max()) + 2)


def _resize_axis(x: torch.Tensor, dim: int, offset: int, span: Span, n_in: int, n_out: int, mode: str) -> torch.Tensor:
    index, weight = interpolation_taps(n_in, n_out, mode)
    index, weight = index[span[0]:span[1]].to(x.device) - offset, weight[span[0]:span[1]].to(x)
    shape = [1] * x.dim()
    shape[dim] = -1
    out = x.index_select(dim, index[:, 0]).mul_(weight[:, 0].view(shape))
    for t in range(1, index.shape[1]):
        out.add_(x.index_select(dim, index[:, t]).mul_(weight[:, t].view(shape)))
    return out


def resize_region(
    x: torch.Tensor, origin: tuple[int, int], in_size: tuple[int, int], out_size: tuple[int, int],
    rows: Span, cols: Span, mode: str = "bilinear", out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows x cols of ``F.interpolate(full, out_size, mode)`` from a crop ``x`` of ``full``.

    ``x`` holds the input from row/column ``origin`` on and must cover the source spans of
    ``rows`` and ``cols`` (``source_span``). ``out``: written with the result and returned; where
    the interpolation starts at the region itself it writes there directly (one pass, not two).
    """
    grid = [_aligned_crop(span, o, n_in, n_out, mode)
            for span, o, n_in, n_out in zip((rows, cols), origin, in_size, out_size)]
    if None in grid:  # a ratio of large coprime sizes: torch's weights, applied as gathers
        x = _resize_axis(x, 2, origin[0], rows, in_size[0], out_size[0], mode)
        result = _resize_axis(x, 3, origin[1], cols, in_size[1], out_size[1], mode)
        return result if out is None else out.copy_(result)
    (r0, r1, ro, rs), (c0, c1, co, cs) = grid
    # The aten op takes the output size and the scale apart: F.interpolate would derive the size
    # from a float scale (61/7 * 7 floors to 60) or the scale from the crop's sizes (not the image's).
    resize = getattr(torch.ops.aten, f"upsample_{mode}2d")
    args = (x[..., r0:r1, c0:c1], [rows[1] - ro, cols[1] - co], False, rs, cs)
    if out is not None and (ro, co) == (rows[0], cols[0]):
        return resize.out(*args, out=out)
    local = resize(*args)[..., rows[0] - ro:, cols[0] - co:]
    return local if out is None else out.copy_(local)


def _aligned_crop(span: Span, origin: int, n_in: int, n_out: int, mode: str) -> tuple[int, int, int, float] | None:
    """(start, stop) in the crop, the first output pixel it yields and the scale, for one axis.

    With out/in = p/q in lowest terms, output p*k samples input q*k at the same phase as output
    0 samples input 0: an interpolation of a crop starting at input q*k with the global scale
    gives the global output from p*k on.
    """
    p, q = _period(n_in, n_out)
    if q > MAX_PERIOD:
        return None
    start, stop = source_span(span, n_in, n_out, mode)
    return start - origin, stop - origin, start * p // q, p / q


@lru_cache(maxsize=64)
def area_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, weight), each (n_out, taps): torch's adaptive average pool n_in -> n_out on one axis (output i
    averages inputs [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))); unused taps weigh 0 at the bin's start."""
    i = torch.arange(n_out)
    start, stop = i * n_in // n_out, ((i + 1) * n_in + n_out - 1) // n_out
    count = stop - start
    t = torch.arange(int(count.max()))
    used = t[None, :] < count[:, None]
    index = start[:, None] + torch.where(used, t[None, :], 0)
    weight = torch.where(used, 1.0 / count[:, None].double(), 0.0)
    return index, weight


def pool_source(span: Span, n_in: int, n_out: int) -> Span:
    """The input span an adaptive average pool n_in -> n_out reads for outputs ``span``."""
    return span[0] * n_in // n_out, -(-span[1] * n_in // n_out)


def pool_axis(y: torch.Tensor, dim: int, offset: int, span: Span, n_in: int, n_out: int) -> torch.Tensor:
    """Outputs ``span`` of an adaptive average pool n_in -> n_out along ``dim`` of a crop starting at ``offset``."""
    if n_in == n_out:
        return y.narrow(dim, span[0] - offset, span[1] - span[0])
    index, weight = area_taps(n_in, n_out)
    index, weight = index[span[0]:span[1]].to(y.device) - offset, weight[span[0]:span[1]].to(y)
    shape = [1] * y.dim()
    shape[dim] = -1
    out = y.index_select(dim, index[:, 0]) * weight[:, 0].view(shape)
    for t in range(1, index.shape[1]):
        out = out + y.index_select(dim, index[:, t]) * weight[:, t].view(shape)
    return out


GroupStats = tuple[torch.Tensor, torch.Tensor]
"""(mean, 1/std) per (image, group) of a GroupNorm's input over the whole map, float64: applied to a band of it."""


class GroupMoments:
    """Running mean and sum of squared deviations per (image, group) over bands of a map, merged in float64
    (Chan et al.'s pairwise update: no cancellation, whatever the mean), for the GroupNorm statistics of a map
    that is computed band by band. No library keeps grouped moments across chunks without holding them."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: torch.Tensor, groups: int) -> None:
        x = x.reshape(x.shape[0], groups, -1)
        n = x.shape[-1]
        mean = x.sum(-1, dtype=torch.float64) / n
        shift = mean.to(x.dtype)  # deviations in x's precision, from its rounded mean, corrected below
        m2 = (x - shift[..., None]).square_().sum(-1, dtype=torch.float64) - n * (mean - shift.double()).square()
        delta, total = mean - self.mean, self.count + n
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def stats(self, eps: float) -> GroupStats:
        """(mean, 1 / std), std from the biased variance as GroupNorm's."""
        return self.mean, (self.m2 / self.count + eps).rsqrt()


def group_norm(gn: torch.nn.GroupNorm, x: torch.Tensor, stats: GroupStats | None) -> torch.Tensor:
    """``gn(x)``, or with the whole map's statistics when ``x`` is only part of it (in place under no_grad)."""
    if stats is None:
        return F.group_norm(x, gn.num_groups, gn.weight, gn.bias, gn.eps)
    mean, rstd = (s.to(x.dtype).repeat_interleave(x.shape[1] // gn.num_groups, 1)[..., None, None] for s in stats)
    scale = rstd if gn.weight is None else rstd * gn.weight.view(1, -1, 1, 1)
    inplace = not torch.is_grad_enabled()
    out = (x - mean).mul_(scale) if inplace else (x - mean) * scale
    if gn.bias is None:
        return out
    return out.add_(gn.bias.view(1, -1, 1, 1)) if inplace else out + gn.bias.view(1, -1, 1, 1)
