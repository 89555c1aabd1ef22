"""Bilinear resizing of the backbone's features to the requested size."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.registry import METHODS
from methods.base import Upsampler


@METHODS.register
class Bilinear(Upsampler):
    name = "bilinear"

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(lr_feats, size=output_size, mode="bilinear", align_corners=False)
