"""CARAFE (Wang et al., ICCV 2019): content-aware reassembly kernels predicted from the features alone.

As in FeatUp's comparison (mmcv ``CARAFEPack`` with up_kernel 3, up_group 1, scale 2,
four x2 stages for stride 16): per stage, a 1x1 conv compresses C -> 64, a 3x3 encoder
predicts (2*k_up)^2 logits per LR pixel, pixel shuffle gives k_up^2 logits per HR pixel,
softmax over them, and each HR pixel is the weighted sum of the k_up x k_up LR window
around its LR parent. Out-of-image neighbours contribute zero with their weights kept
(mmcv's kernel skips them and does not renormalise), so borders shrink toward zero.
The image is never used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from methods.stages import StagedUpsampler, reassemble

COMPRESSED = 64
UP_KERNEL = 3
ENCODER_KERNEL = 3


class CarafeStage(nn.Module):
    """One x2 CARAFE step with mmcv's initialisation (xavier-uniform compressor, encoder N(0, 0.001))."""

    def __init__(self, dim: int, up_kernel: int = UP_KERNEL, encoder_kernel: int = ENCODER_KERNEL) -> None:
        super().__init__()
        self.compress = nn.Conv2d(dim, COMPRESSED, kernel_size=1)
        self.encoder = nn.Conv2d(COMPRESSED, (2 * up_kernel) ** 2, encoder_kernel, padding=encoder_kernel // 2)
        nn.init.xavier_uniform_(self.compress.weight)
        nn.init.zeros_(self.compress.bias)
        nn.init.normal_(self.encoder.weight, std=0.001)
        nn.init.zeros_(self.encoder.bias)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """Reassembly weights (B, k_up^2, 2h, 2w), a softmax over the k_up^2 taps of each HR pixel."""
        logits = F.pixel_shuffle(self.encoder(self.compress(x)), 2)
        return logits.softmax(dim=1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return reassemble(x, self.kernels(x))


@METHODS.register
class Carafe(StagedUpsampler):
    name = "carafe"

    def make_stage(self, dim: int, last: bool) -> nn.Module:
        return CarafeStage(dim)
