"""What the trained baselines share: learned x2 stages, then one resize to the exact size.

resize_conv, CARAFE and SAPA all upsample by a stack of x2 stages, each with its own
weights: four, as FeatUp's code builds for every backbone (x16; a stride-8 grid is then
resized down, a stride-32 grid up), so every stage always runs; a final bilinear resize then
reaches any requested size, square or not, multiple of the stride or not. CARAFE
and SAPA also share the reassembly: each HR pixel is a weighted sum over the k x k
LR window around its LR parent.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kernels.adaptive_conv import adaptive_conv
from methods.base import Upsampler, check_batch
from methods.guidance import imagenet_normalised

if TYPE_CHECKING:
    from bench.backbones import Backbone


FEATUP_STAGES = 4
"""FeatUp builds four x2 stages whatever the backbone's stride, then resizes to the requested size."""


def num_stages(stride: int) -> int:
    """x2 stages that bring a stride-``stride`` grid to image resolution or just past it (14, 16 -> 4; 32 -> 5)."""
    if stride < 1:
        raise ValueError(f"backbone stride must be a positive integer, got {stride}")
    return math.ceil(math.log2(stride))


def resize_to(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last stage's output to exactly ``output_size``."""
    if tuple(x.shape[-2:]) == tuple(output_size):
        return x
    return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)


PARITIES = ((0, 0), (0, 1), (1, 0), (1, 1))


def parity(x: torch.Tensor, py: int, px: int) -> torch.Tensor:
    """The HR pixels (2y+py, 2x+px) of a (B,N,2h,2w) map: the children at one position of every LR parent."""
    return x[..., py::2, px::2]


def interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of ``parity`` over PARITIES: four (B,N,h,w) maps -> one (B,N,2h,2w) map."""
    b, n, h, w = parts[0].shape
    return torch.stack(parts, -1).reshape(b, n, h, w, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, n, 2 * h, 2 * w)


def zero_pad(x: torch.Tensor, k: int) -> torch.Tensor:
    """Zero padding for a k x k window: out-of-image neighbours contribute nothing, the edge
    rule of mmcv's CARAFE and SAPA's kernels (weights are not renormalised)."""
    if k % 2 != 1:
        raise ValueError(f"window size must be odd, got {k}")
    return F.pad(x, (k // 2,) * 4)


def reassemble(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """HR pixel (y, x) = sum over taps t of weights[t, y, x] * the k x k LR window of ``values`` at (y//2, x//2).

    values (B,C,h,w); weights (B,k*k,2h,2w), taps row-major. The HR children at one
    parity all look at the window around their own LR parent, so each parity is an
    adaptive convolution on the LR grid: the Numba kernels do the work and hold no
    k*k-fold copy of the values, forward or backward.
    """
    b, c, h, w = values.shape
    taps = weights.shape[1]
    k = math.isqrt(taps)
    if k * k != taps or weights.shape[0] != b or tuple(weights.shape[-2:]) != (2 * h, 2 * w):
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not fit values of shape {tuple(values.shape)}: "
                         f"expected ({b}, k*k, {2 * h}, {2 * w})")
    padded = zero_pad(values, k)
    parts = [
        adaptive_conv(padded, parity(weights, py, px).permute(0, 2, 3, 1).reshape(b, h, w, k, k).contiguous())
        for py, px in PARITIES
    ]
    return interleave(parts)


class StagedUpsampler(Upsampler):
    """A trainable stack of x2 stages; subclasses only say what one stage is (``make_stage``)."""

    fit = "dataset"
    version = "1"
    untiled_reason = ("its x2 stages have a local receptive field, but their crop and border rules "
                      "(zero padding, the k x k reassembly window) are not written yet")

    def __init__(self, dim: int, stages: int) -> None:
        super().__init__()
        self.dim = dim
        self.stages = nn.ModuleList(self.make_stage(dim, last=i == stages - 1) for i in range(stages))

    @abstractmethod
    def make_stage(self, dim: int, last: bool) -> nn.Module:
        """One x2 stage: ``stage(feats (B,C,h,w), guidance (B,3,H,W)) -> (B,C,2h,2w)``, the guidance being
        the ImageNet-normalised image."""

    @classmethod
    def create(cls, backbone: "Backbone") -> "StagedUpsampler":
        return cls(backbone.dim, FEATUP_STAGES)

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        check_batch(self.name, self.dim, lr_feats, image)
        x, guidance = lr_feats, imagenet_normalised(image)
        for stage in self.stages:
            x = stage(x, guidance)
        return resize_to(x, output_size)
