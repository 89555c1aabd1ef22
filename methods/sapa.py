"""SAPA (Lu et al., NeurIPS 2022): similarity-aware point affiliation between HR guidance and LR features.

As in FeatUp's comparison: per x2 stage the query comes from the ImageNet-normalised image
adaptive-average-pooled to the stage's output size, the key from the LR features,
each through LayerNorm + Linear to 64 dims (trunc-normal 0.02 init, as SAPA's code);
the raw dot product q.k (no 1/sqrt(d)) over the 5x5 LR window around each HR pixel's
LR parent is softmax-normalised and weights the raw LR values (no value projection).
Out-of-image taps follow SAPA's CUDA kernels: their logit is 0 (the dot product is
skipped) and their value contributes nothing, so weights are not renormalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from kernels.window_dot import window_dot
from methods.stages import PARITIES, StagedUpsampler, interleave, parity, reassemble, zero_pad

EMBED = 64
UP_KERNEL = 5


def _project(x: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> torch.Tensor:
    """Per-pixel LayerNorm + Linear of (B,C,H,W), returned channels-first."""
    return linear(norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class SapaStage(nn.Module):
    """One x2 SAPA step; the guidance is the image pooled to this stage's output grid."""

    def __init__(self, dim: int, up_kernel: int = UP_KERNEL) -> None:
        super().__init__()
        self.up_kernel = up_kernel
        self.norm_q, self.norm_k = nn.LayerNorm(3), nn.LayerNorm(dim)
        self.q, self.k = nn.Linear(3, EMBED), nn.Linear(dim, EMBED)
        for linear in (self.q, self.k):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def kernels(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Reassembly weights (B, k^2, 2h, 2w), a softmax over the k^2 LR taps of each HR pixel."""
        b, _, h, w = x.shape
        guide = F.adaptive_avg_pool2d(guidance, (2 * h, 2 * w))
        q = _project(guide, self.norm_q, self.q)
        keys = zero_pad(_project(x, self.norm_k, self.k), self.up_kernel)
        logits = [window_dot(keys, parity(q, py, px)).flatten(-2).permute(0, 3, 1, 2) for py, px in PARITIES]
        return interleave(logits).softmax(dim=1)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return reassemble(x, self.kernels(x, guidance))


@METHODS.register
class Sapa(StagedUpsampler):
    name = "sapa"
    version = "2"
    """v2: the query from the ImageNet-normalised image (v1 took the raw [0,1] image)."""

    def make_stage(self, dim: int, last: bool) -> nn.Module:
        return SapaStage(dim)
