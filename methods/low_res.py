"""The backbone's own grid, untouched: the floor every upsampler should beat."""
from __future__ import annotations

import torch

from bench.registry import METHODS
from methods.base import Upsampler


@METHODS.register
class LowRes(Upsampler):
    """Returns the low-resolution features as they are; tasks resize labels to them."""

    name = "low_res"
    keeps_grid = True
    untiled_reason = "it returns the backbone's grid, which is already small"

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        return lr_feats
