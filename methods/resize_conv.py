"""Resize-conv: bilinear x2, then a learned 1x1 correction from the features and the image.

FeatUp's "resize-conv" baseline (REFERENCE §5): per stage, bilinear x2, then a 1x1
conv over [upsampled features, image resized to the stage's size] added back as a
residual, ReLU on every stage's correction but the last. With zeroed convs it is
exactly repeated bilinear x2, so training can only add to bilinear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from methods.stages import StagedUpsampler


class ResizeConvStage(nn.Module):
    """Bilinear x2 plus ``act(conv([x, image]))``; ``act`` is ReLU except on the last stage."""

    def __init__(self, dim: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim + 3, dim, kernel_size=1)
        self.relu = relu

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        big = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        guide = F.interpolate(image, size=big.shape[-2:], mode="bilinear", align_corners=False)
        correction = self.conv(torch.cat([big, guide], dim=1))
        return big + (F.relu(correction) if self.relu else correction)


@METHODS.register
class ResizeConv(StagedUpsampler):
    name = "resize_conv"

    def make_stage(self, dim: int, last: bool) -> nn.Module:
        return ResizeConvStage(dim, relu=not last)
