"""FeatUp's joint bilateral upsampler (JBU) stack (docs/reference.md §3), trained with the multi-view loss.

Stages: four x2 stages (x16) whatever the backbone's stride, as the public code builds,
then one bilinear resize to exactly the requested size (any size, any aspect): a
stride-8 grid comes out at twice the image size and is resized down, a stride-32 grid
at half and is resized up.

Each stage is linear in the features and treats every channel alike (its kernel
comes from the image only). The final refinement X + 0.1*Conv1x1(Dropout2d(X))
therefore commutes with the stack and is applied on the LR grid: the same result
without a C x C matmul at full resolution. For the same reason the trainer may
project channels to 30 dims before the stack (``forward_projected``).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import Backbone
from bench.core.features import project
from bench.registry import METHODS
from kernels import resampled_conv
from kernels.adaptive_conv import adaptive_conv
from kernels.resample import resample
from kernels.window_dot import window_dot
from methods.base import Upsampler
from methods.guidance import imagenet_normalised
from methods.stages import FEATUP_STAGES, resize_to
from methods.tiling import Region, Span, channel_chunks, interpolation_taps, resize_region, source_span, widen


Sides = tuple[bool, bool, bool, bool]
"""Which sides (left, right, top, bottom) of a map are image borders; the others are crop edges."""
ALL_SIDES: Sides = (True, True, True, True)
HALO = 4
"""LR pixels a tile's crop reaches past the parents of its pixels at each stage: the x2 bicubic
reads 2 LR pixels on each side (its values are wrong within 4 HR pixels of a crop edge) and the
adaptive conv 3 HR pixels further, 7 HR pixels in all."""


BAND_BYTES = 4 * 2**20
"""Bytes of one (rows x cols x taps) temporary of the kernel branch at inference (JBUStage.kernel)."""


def pad(x: torch.Tensor, radius: int, sides: Sides = ALL_SIDES, full: tuple[int, int] | None = None) -> torch.Tensor:
    """Reflect padding on the image-border ``sides``, or replicate on maps too small to reflect (a
    1-pixel backbone grid); ``full`` is the whole map's size where ``x`` is a crop of it."""
    mode = "reflect" if min(full or x.shape[-2:]) > radius else "replicate"
    return F.pad(x, [radius * side for side in sides], mode=mode)


def inference_on_cpu(x: torch.Tensor) -> bool:
    """Whether the one-pass Numba paths apply: float CPU tensors and no gradient to keep."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not (torch.is_grad_enabled() and x.requires_grad))


def value_taps(x: torch.Tensor, radius: int, sides: Sides = ALL_SIDES, full: tuple[int, int] | None = None):
    """The (rows, cols) tap tables of ``pad(bicubic x2 of x)`` (kernels.resample)."""
    return _value_taps(tuple(x.shape[-2:]), radius, sides, full)


def _value_taps(size: tuple[int, int], radius: int, sides: Sides, full: tuple[int, int] | None):
    mode = "reflect" if min(full or (2 * size[0], 2 * size[1])) > radius else "replicate"
    left, right, top, bottom = (radius * side for side in sides)
    return padded_bicubic_taps(size[0], top, bottom, mode), padded_bicubic_taps(size[1], left, right, mode)


@lru_cache(maxsize=128)
def value_windows(size: tuple[int, int], radius: int, sides: Sides, full: tuple[int, int] | None) -> resampled_conv.Windows:
    """``value_taps`` of a (h, w) map prepared for ``resampled_conv.forward_resampled``, once per map size."""
    return resampled_conv.windows(*_value_taps(size, radius, sides, full), 2 * radius + 1)


def padded_values(x: torch.Tensor, radius: int, sides: Sides = ALL_SIDES,
                  full: tuple[int, int] | None = None) -> torch.Tensor:
    """``pad(bicubic x2 of x)``: in one pass (kernels.resample) where no gradient is needed, on the CPU."""
    if not inference_on_cpu(x):
        return pad(F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False), radius, sides, full)
    return resample(x, *value_taps(x, radius, sides, full))


@lru_cache(maxsize=128)
def padded_bicubic_taps(n: int, before: int, after: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tap table (index, weight) of one axis of ``F.pad(bicubic x2)``, from torch's own bicubic
    weights (tiling.interpolation_taps) and padding (of an index ramp)."""
    index, weight = interpolation_taps(n, 2 * n, "bicubic")
    ramp = torch.arange(2 * n, dtype=torch.float64).view(1, 1, -1)
    source = F.pad(ramp, [before, after], mode=mode).view(-1).long()
    order = index[source].argsort(dim=1, stable=True)  # taps by source: the interior reads 4 in a row (resample.interior)
    return index[source].gather(1, order).contiguous(), weight[source].gather(1, order).contiguous()


def inner(x: torch.Tensor, radius: int, sides: Sides) -> torch.Tensor:
    """``x`` without ``radius`` pixels on its crop edges: the pixels whose window lies inside the crop or the padding."""
    left, right, top, bottom = (0 if side else radius for side in sides)
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def conv1x1(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A stack of 1x1 convs and pointwise layers on (B,C,H,W) maps, each conv a matmul over the pixels."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            weight = layer.weight.flatten(1).expand(x.shape[0], -1, -1)
            x = torch.bmm(weight, x.flatten(2)).add_(layer.bias[:, None]).view(x.shape[0], -1, *x.shape[2:])
        else:
            x = layer(x)
    return x


def pixelwise(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A stack of 1x1 convs, activations and Dropout2d applied to channels-last (B,H,W,C) maps."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            x = F.linear(x, layer.weight.flatten(1), layer.bias)
        elif isinstance(layer, nn.Dropout2d):  # drops whole channels: it sees the (B,C,H,W) view
            x = layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        else:
            x = layer(x)
    return x


class JBUStage(nn.Module):
    """One x2 step: a per-pixel edge-aware kernel from the image, applied to bicubic-upsampled features."""

    def __init__(self, radius: int = 3, guidance_dim: int = 32) -> None:
        super().__init__()
        self.radius = radius
        taps = (2 * radius + 1) ** 2
        self.range_proj = nn.Sequential(
            nn.Conv2d(3, guidance_dim, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(guidance_dim, guidance_dim, 1)
        )
        self.fixup_proj = nn.Sequential(nn.Conv2d(taps + 3, taps, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(taps, taps, 1))
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def log_spatial_kernel(self) -> torch.Tensor:
        """log of FeatUp's Gaussian spatial kernel over the window, taps row-major."""
        # in σ's dtype: a float32 grid would round a float64 model's kernel to float32 (0-dim σ does not promote it)
        u = torch.linspace(-1, 1, 2 * self.radius + 1, device=self.sigma_spatial.device, dtype=self.sigma_spatial.dtype)
        dist = u[:, None] ** 2 + u[None, :] ** 2
        return (-dist / (2 * self.sigma_spatial**2)).flatten()

    def kernel(self, guidance: torch.Tensor, impl: str, sides: Sides = ALL_SIDES,
               full: tuple[int, int] | None = None) -> torch.Tensor:
        """(B,3,H,W) normalised guidance -> (B,H',W',2r+1,2r+1) kernels of its ``inner`` pixels, taps row-major.

        At inference the kernels are computed in bands of rows of one image, each written into the
        result: the bands' temporaries (logits, softmax, the correction's hidden layer) stay small
        (BAND_BYTES), in cache and on the heap, where whole-map ones are mapped and faulted in
        afresh on every call from 448² on (39 MB each, over glibc's 32 MiB mmap threshold).
        """
        projected = conv1x1(self.range_proj, guidance)
        padded, query = pad(projected, self.radius, sides, full), inner(projected, self.radius, sides)
        guide = inner(guidance, self.radius, sides)
        b, _, h, w = query.shape
        d = 2 * self.radius + 1
        if torch.is_grad_enabled():
            return self.kernel_rows(padded, query, guide, impl).view(b, h, w, d, d)
        out = guidance.new_empty(b, h, w, d * d)
        rows = max(1, BAND_BYTES // (w * d * d * guidance.element_size()))
        for i in range(b):
            for top in range(0, h, rows):
                end = min(top + rows, h)
                self.kernel_rows(padded[i:i + 1, :, top:end + d - 1], query[i:i + 1, :, top:end],
                                 guide[i:i + 1, :, top:end], impl, out[i, top:end])
        return out.view(b, h, w, d, d)

    def kernel_rows(self, padded: torch.Tensor, query: torch.Tensor, guide: torch.Tensor, impl: str,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """(B,h,w,taps) kernels of ``query``'s pixels (projected guidance, (B,D,h,w)) from their windows in
        ``padded`` (B,D,h+2r,w+2r) and the guidance pixels ``guide`` (B,3,h,w); written into ``out`` where
        given (inference).

        The 1x1 convs run as matmuls in the layout their input comes in (``conv1x1`` on the image,
        ``pixelwise`` on the channels-last logits): no layout changes. The correction's first conv
        reads (k1, guidance) as a matmul on k1 plus one on (guidance, 1) that carries its bias, and
        its last one accumulates onto k1: no concatenation, and no full-size copy of a bias.
        """
        temperature = self.range_temp.exp().clamp(1e-4, 1e4)
        logits = window_dot(padded, query, impl).flatten(-2)
        b, h, w, taps = logits.shape
        # FeatUp's softmax(t * logits) * spatial, renormalised, is softmax(t * logits + log spatial): one pass
        k1 = torch.softmax(torch.addcmul(self.log_spatial_kernel(), logits, temperature), dim=-1).view(-1, taps)
        first, last = self.fixup_proj[0], self.fixup_proj[-1]
        w1 = first.weight.flatten(1)
        pixels = guide.permute(0, 2, 3, 1).reshape(-1, guide.shape[1])
        hidden = torch.mm(k1, w1[:, :taps].T).addmm_(F.pad(pixels, (0, 1), value=1.0),
                                                      torch.cat([w1[:, taps:].T, first.bias[None]]))
        hidden = pixelwise(self.fixup_proj[1:-1], hidden.view(b, h, w, taps)).view(-1, taps)  # GELU, Dropout2d
        w2 = last.weight.flatten(1).T
        if out is None:
            return (k1 + 0.1 * last.bias).addmm_(hidden, w2, alpha=0.1).view(b, h, w, taps)
        torch.addmm(k1, hidden, w2, alpha=0.1, out=out.view(-1, taps))
        return out.add_(0.1 * last.bias)

    def apply(self, x: torch.Tensor, kernel: torch.Tensor, impl: str, sides: Sides = ALL_SIDES,
              full: tuple[int, int] | None = None, bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
              window: tuple[Span, Span] | None = None) -> torch.Tensor:
        """Bicubic x2 of ``x``, then the adaptive conv with ``kernel``: the ``inner`` pixels of the x2 map;
        plus ``bias`` (B, C) where given; only the (rows, cols) ``window`` of them, into ``out`` where given.

        Inference on the CPU with the Numba kernel does it all in one pass on ``x`` (kernels.resampled_conv),
        computing only the window's rows and writing the output once.
        """
        if impl in ("auto", "numba") and inference_on_cpu(x) and kernel.dtype == x.dtype:
            plan = value_windows(tuple(x.shape[-2:]), self.radius, sides, full)
            return resampled_conv.forward_resampled(x, plan, kernel, bias, out, window)
        y = adaptive_conv(padded_values(x, self.radius, sides, full), kernel, impl=impl)
        if window is not None:
            y = y[..., slice(*window[0]), slice(*window[1])]
        if bias is not None:
            y = y + bias[:, :, None, None]
        return y if out is None else out.copy_(y)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, impl: str, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.apply(x, self.kernel(guidance, impl), impl, bias=bias)


@METHODS.register
class FeatUpJBU(Upsampler):
    """Stack of JBU stages, bilinear resize to the requested size, learned 1x1 refinement.

    ``kernel_impl`` picks the adaptive-conv implementation ("auto", "reference", ...)
    so the same weights can be timed on each.
    """

    name = "featup_jbu"
    version = "1"
    fit = "dataset"

    def __init__(self, dim: int, n_stages: int, kernel_impl: str = "auto") -> None:
        super().__init__()
        self.stages = nn.ModuleList(JBUStage() for _ in range(n_stages))
        self.refine = nn.Conv2d(dim, dim, 1)
        self.refine_dropout = nn.Dropout2d(0.2)
        self.kernel_impl = kernel_impl

    @classmethod
    def create(cls, backbone: Backbone) -> "FeatUpJBU":
        return cls(backbone.dim, FEATUP_STAGES)

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        return self.forward_projected(lr_feats, image, output_size, None)

    def forward_projected(
        self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int], proj: torch.Tensor | None
    ) -> torch.Tensor:
        """The output with its channels mapped by ``proj`` (B, D, C), computed on D channels only."""
        x = self.refined(lr_feats)
        bias = 0.1 * self.refine.bias.expand(x.shape[0], -1)
        if proj is not None:
            x = project(x, proj)
            bias = torch.einsum("bc,bdc->bd", bias, proj.to(bias))
        sizes = self.stage_sizes(x.shape[-2:])
        last_writes_output = len(sizes) > 1 and sizes[-1] == tuple(output_size)  # it adds the bias as it writes
        for k, (stage, size) in enumerate(zip(self.stages, sizes[1:]), 1):
            x = stage(x, self.guidance(image, size), self.kernel_impl,
                      bias if last_writes_output and k == len(self.stages) else None)
        return x if last_writes_output else resize_to(x, output_size).add_(bias[:, :, None, None])

    def refined(self, lr_feats: torch.Tensor) -> torch.Tensor:
        """X + 0.1 * Conv1x1(Dropout2d(X)) without the conv's bias (added to the output), the conv as a matmul."""
        mixed = torch.einsum("oc,bchw->bohw", self.refine.weight.flatten(1), self.refine_dropout(lr_feats))
        return lr_feats + 0.1 * mixed

    def guidance(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The ImageNet-normalised image pooled to a stage's output size."""
        return imagenet_normalised(F.adaptive_avg_pool2d(image, size))

    def stage_sizes(self, lr_size: tuple[int, int]) -> list[tuple[int, int]]:
        """The grid before the first stage and after each one: (h, w), (2h, 2w), ..."""
        return [(lr_size[0] << k, lr_size[1] << k) for k in range(len(self.stages) + 1)]

    def regions(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> Region:
        """Tiles share the guidance of every stage (3 channels, computed once); each tile crops it."""
        sizes = self.stage_sizes(lr_feats.shape[-2:])
        guidances = [self.guidance(image, size) for size in sizes[1:]]
        bias = 0.1 * self.refine.bias[None, :, None, None]

        def region(rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
            crops = self.crop_plan(sizes, output_size, rows, cols)
            steps = []
            for stage, guidance, (r, c), size in zip(self.stages, guidances, crops, sizes):
                sides = (c[0] == 0, c[1] == size[1], r[0] == 0, r[1] == size[0])
                kernel = stage.kernel(guidance[..., 2 * r[0]:2 * r[1], 2 * c[0]:2 * c[1]], self.kernel_impl,
                                      sides, (2 * size[0], 2 * size[1]))
                origin = (2 * r[0] + stage.radius * (not sides[2]), 2 * c[0] + stage.radius * (not sides[0]))
                steps.append((stage, kernel, sides, origin))
            (r, c) = crops[0]
            x0 = self.refined(lr_feats[..., r[0]:r[1], c[0]:c[1]])
            last_writes_output = sizes[-1] == tuple(output_size)  # the region's pixels, bias added, straight into out
            # working bytes a channel: the last stage's input and the map before it (half its output's
            # pixels in all), or, where it does not write the output, its output, the resized region and more
            pixels = steps[-1][1][0, ..., 0, 0].numel() * x0.shape[0]
            work = lr_feats.element_size() * (pixels // 2 if last_writes_output else 3 * pixels)
            for chunk in channel_chunks(x0.shape[1], work):
                x = x0[:, chunk]
                for k, ((stage, kernel, sides, origin), (r, c), size) in enumerate(zip(steps, crops[1:], sizes[1:]), 1):
                    window = ((r[0] - origin[0], r[1] - origin[0]), (c[0] - origin[1], c[1] - origin[1]))
                    if last_writes_output and k == len(steps):
                        stage.apply(x, kernel, self.kernel_impl, sides, size, bias[:, chunk, 0, 0], out[:, chunk], window)
                        break
                    x = stage.apply(x, kernel, self.kernel_impl, sides, size, window=window)
                else:
                    (r, c) = crops[-1]
                    torch.add(resize_region(x, (r[0], c[0]), sizes[-1], output_size, rows, cols), bias[:, chunk],
                              out=out[:, chunk])
            return out

        return region

    def crop_plan(self, sizes: list[tuple[int, int]], output_size: tuple[int, int],
                  rows: Span, cols: Span) -> list[tuple[Span, Span]]:
        """The (rows, cols) of every grid (LR grid first) that output ``rows`` x ``cols`` depend on.

        The last grid gives the final resize's source rows; each earlier grid the parents of the
        next one's rows, widened by HALO so that every pixel kept is computed as in the whole map.
        """
        last = sizes[-1]
        if last != tuple(output_size):
            rows = source_span(rows, last[0], output_size[0], "bilinear")
            cols = source_span(cols, last[1], output_size[1], "bilinear")
        crops = [(rows, cols)]
        for size in reversed(sizes[:-1]):
            rows, cols = crops[0]
            crops.insert(0, (widen((rows[0] // 2, -(-rows[1] // 2)), HALO, size[0]),
                             widen((cols[0] // 2, -(-cols[1] // 2)), HALO, size[1])))
        return crops

    def forward_region(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int],
                       rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
        return self.regions(lr_feats, image, output_size)(rows, cols, out)
