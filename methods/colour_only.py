"""``colour_only``: a reference row, not an upsampler. What a task's probe or head reads from the image alone.

Its "features" are 21 numbers per pixel computed from the image with no backbone: the RGB values, and the
local mean and standard deviation of each channel under Gaussian windows at three scales (σ = 1/112, 1/28
and 1/7 of the short side: 2, 8 and 32 px at 224²). Scored by the same probes and heads as the upsamplers,
it says how much of a task the image's colour and local contrast give away: a segmentation set on which it
scores near bilinear measures colour, not semantics. Tables mark it as a reference and leave it out of
rank statistics and of the better/worse-than-bilinear marks (``reference = True``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from bench.registry import METHODS
from methods.base import Upsampler

SCALES = (1 / 112, 1 / 28, 1 / 7)
"""Gaussian σ of the local statistics as fractions of the image's short side."""
CHANNELS = 3 + 2 * 3 * len(SCALES)


def gaussian_blur(x: torch.Tensor, sigma: float, half: int) -> torch.Tensor:
    """(B,C,H,W) blurred by a normalised Gaussian of ``sigma`` over 2·half+1 taps, borders reflected.

    Separable, as two 1-D convolutions: torchvision's ``gaussian_blur`` convolves with the 2-D kernel, which at
    σ = 32 px (193² taps) took 2.8 s for four 224² images against milliseconds here.
    """
    taps = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (half, half, half, half), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def colour_statistics(image: torch.Tensor, scales: tuple[float, ...] = SCALES) -> torch.Tensor:
    """(B,3,H,W) image in [0,1] -> (B, 3 + 6·len(scales), H, W): RGB, then per scale the local mean and
    standard deviation of each channel (Gaussian window, reflected borders)."""
    short = min(image.shape[-2:])
    out = [image]
    for fraction in scales:
        sigma = max(fraction * short, 0.5)
        half = min(math.ceil(3 * sigma), short - 1)  # 3σ each side, below the short side for the reflection
        mean, second = gaussian_blur(torch.cat([image, image * image], 1), sigma, half).chunk(2, 1)
        out += [mean, (second - mean * mean).clamp_min(0).sqrt()]
    return torch.cat(out, 1)


@METHODS.register
class ColourOnly(Upsampler):
    """The image's colour statistics at the requested size, in place of the backbone's features."""

    name = "colour_only"
    reference = True
    uses_backbone = False
    untiled_reason = "its 21 channels come from the image, not from features to tile"

    def output_dim(self, backbone_dim: int) -> int:
        return CHANNELS

    def features(self, backbone: Any, image: torch.Tensor) -> torch.Tensor:
        """The colour statistics at the image's size (the backbone is never run)."""
        return colour_statistics(image)

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        if tuple(lr_feats.shape[-2:]) == tuple(output_size):
            return lr_feats
        return F.interpolate(lr_feats, size=output_size, mode="bilinear", align_corners=False, antialias=True)
