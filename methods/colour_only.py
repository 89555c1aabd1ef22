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

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from bench.registry import METHODS
from methods.base import Upsampler

SCALES = (1 / 112, 1 / 28, 1 / 7)
"""Gaussian σ of the local statistics as fractions of the image's short side."""
CHANNELS = 3 + 2 * 3 * len(SCALES)


def colour_statistics(image: torch.Tensor, scales: tuple[float, ...] = SCALES) -> torch.Tensor:
    """(B,3,H,W) image in [0,1] -> (B, 3 + 6·len(scales), H, W): RGB, then per scale the local mean and
    standard deviation of each channel (Gaussian window, reflected borders)."""
    short = min(image.shape[-2:])
    out = [image]
    for fraction in scales:
        sigma = max(fraction * short, 0.5)
        # 3σ each side, kept below the image's short side for the reflected padding
        size = 2 * min(math.ceil(3 * sigma), short - 1) + 1
        mean = gaussian_blur(image, [size, size], [sigma, sigma])
        second = gaussian_blur(image * image, [size, size], [sigma, sigma])
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

    def features(self, backbone, image: torch.Tensor) -> torch.Tensor:
        """The colour statistics at the image's size (the backbone is never run)."""
        return colour_statistics(image)

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        if tuple(lr_feats.shape[-2:]) == tuple(output_size):
            return lr_feats
        return F.interpolate(lr_feats, size=output_size, mode="bilinear", align_corners=False, antialias=True)
