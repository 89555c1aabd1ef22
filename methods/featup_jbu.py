"""FeatUp's joint bilateral upsampler (JBU) stack (REFERENCE §3), trained with the multi-view loss.

Stages: ceil(log2(stride)) x2 stages (stride 14 or 16: 4 stages, x16; stride 32:
5 stages, x32), so the stack reaches at least the image size from the backbone's
grid, then one bilinear resize to exactly the requested size (any size, any
aspect). The public code stops at 4 stages and resizes; a 5th stage for stride-32
backbones keeps the last x2 edge-aware instead of bilinear.

Each stage is linear in the features and treats every channel alike (its kernel
comes from the image only). The final refinement X + 0.1*Conv1x1(Dropout2d(X))
therefore commutes with the stack and is applied on the LR grid: the same result
without a C x C matmul at full resolution. For the same reason the trainer may
project channels to 30 dims before the stack (``forward_projected``).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import Backbone
from bench.fitting.multiview import project
from bench.registry import METHODS
from kernels.adaptive_conv import adaptive_conv
from kernels.window_dot import window_dot
from methods.base import Upsampler
from methods.guidance import imagenet_normalised
from methods.stages import num_stages


def pad(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Reflect padding, or replicate on maps too small to reflect (a 1-pixel backbone grid)."""
    return F.pad(x, [radius] * 4, mode="reflect" if min(x.shape[-2:]) > radius else "replicate")


def range_logits(p: torch.Tensor, radius: int, impl: str) -> torch.Tensor:
    """(B,D,H,W) guidance -> (B,H,W,(2r+1)^2) logits, reflect padding at the borders."""
    return window_dot(pad(p, radius), p, impl).flatten(-2)


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

    def spatial_kernel(self) -> torch.Tensor:
        u = torch.linspace(-1, 1, 2 * self.radius + 1, device=self.sigma_spatial.device)
        dist = u[:, None] ** 2 + u[None, :] ** 2
        return torch.exp(-dist / (2 * self.sigma_spatial**2)).flatten()

    def kernel(self, guidance: torch.Tensor, impl: str) -> torch.Tensor:
        """(B,3,H,W) normalised guidance -> (B,H,W,2r+1,2r+1) kernels, taps row-major."""
        b, _, h, w = guidance.shape
        temperature = self.range_temp.exp().clamp(1e-4, 1e4)
        logits = range_logits(self.range_proj(guidance), self.radius, impl)
        k1 = torch.softmax(temperature * logits, dim=-1) * self.spatial_kernel()
        k1 = (k1 / k1.sum(-1, keepdim=True).clamp_min(1e-7)).permute(0, 3, 1, 2)
        k = k1 + 0.1 * self.fixup_proj(torch.cat([k1, guidance], dim=1))
        d = 2 * self.radius + 1
        return k.permute(0, 2, 3, 1).reshape(b, h, w, d, d)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, impl: str) -> torch.Tensor:
        size = guidance.shape[-2:]
        values = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        values = pad(values, self.radius)
        return adaptive_conv(values, self.kernel(guidance, impl), impl=impl)


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
        return cls(backbone.dim, num_stages(backbone.stride))

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        return self.forward_projected(lr_feats, image, output_size, None)

    def forward_projected(
        self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int], proj: torch.Tensor | None
    ) -> torch.Tensor:
        """The output with its channels mapped by ``proj`` (B, D, C), computed on D channels only."""
        x = lr_feats + 0.1 * F.conv2d(self.refine_dropout(lr_feats), self.refine.weight)
        bias = 0.1 * self.refine.bias.expand(x.shape[0], -1)
        if proj is not None:
            x = project(x, proj)
            bias = torch.einsum("bc,bdc->bd", bias, proj.to(bias))
        h, w = x.shape[-2:]
        image = imagenet_normalised(image)
        for stage in self.stages:
            h, w = 2 * h, 2 * w
            guidance = F.adaptive_avg_pool2d(image, (h, w))
            x = stage(x, guidance, self.kernel_impl)
        if tuple(x.shape[-2:]) != tuple(output_size):
            x = F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)
        return x.add_(bias[:, :, None, None])
