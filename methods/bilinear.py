"""Bilinear resizing of the backbone's features to the requested size."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.registry import METHODS
from methods.base import Upsampler
from methods.tiling import Span, channel_chunks, resize_region


@METHODS.register
class Bilinear(Upsampler):
    name = "bilinear"

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(lr_feats, size=output_size, mode="bilinear", align_corners=False)

    def forward_region(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int],
                       rows: Span, cols: Span, out: torch.Tensor) -> torch.Tensor:
        in_size = tuple(lr_feats.shape[-2:])
        for chunk in channel_chunks(lr_feats.shape[1], 2 * out[0, 0].nbytes * out.shape[0]):
            resize_region(lr_feats[:, chunk], (0, 0), in_size, output_size, rows, cols, out=out[:, chunk])
        return out
