"""Deep Image Prior (Ulyanov et al., CVPR 2018) as a feature upsampler, fitted to each image (docs/reference.md §5).

A small convolutional encoder-decoder with skips maps fixed noise and the image to the
image's HR features; it is fitted per image with the same multi-view loss as FeatUp
(no priors: the architecture is the prior). As in DIP: reflect padding, LeakyReLU 0.2,
per-channel normalisation (BatchNorm at batch 1), noise U(0, 0.1). The network lives on
its fit grid; other output sizes are a bilinear resize of its output.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.batched import GroupedConv2d, GroupedInstanceNorm, GroupedLinear, Generators
from bench.registry import METHODS
from methods.base import PerImageUpsampler, guidance_at

WIDTH = 32
NOISE = 8


class Block(nn.Sequential):
    def __init__(self, generators: Generators, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(GroupedConv2d(generators, cin, cout, 3, stride), GroupedInstanceNorm(len(generators), cout),
                         nn.LeakyReLU(0.2))


class DIPNetwork(nn.Module):
    """Encoder-decoder at the fit grid: two stride-2 stages down, two bilinear x2 stages up with skips."""

    def __init__(self, generators: Generators, fit_size: tuple[int, int], out_dim: int) -> None:
        super().__init__()
        self.register_buffer("noise", torch.stack([torch.rand(NOISE, *fit_size, generator=g) * 0.1 for g in generators]))
        self.enc = Block(generators, NOISE + 3, WIDTH)
        self.down1 = Block(generators, WIDTH, WIDTH, stride=2)
        self.down2 = Block(generators, WIDTH, WIDTH, stride=2)
        self.up2 = Block(generators, 2 * WIDTH, WIDTH)
        self.up1 = Block(generators, 2 * WIDTH, WIDTH)
        self.head = GroupedLinear(generators, WIDTH, out_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        e = self.enc(torch.cat([self.noise, image - 0.5], dim=1))
        d1 = self.down1(e)
        d2 = self.down2(d1)
        u2 = self.up2(torch.cat([F.interpolate(d2, size=d1.shape[-2:], mode="bilinear", align_corners=False), d1], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, size=e.shape[-2:], mode="bilinear", align_corners=False), e], 1))
        return self.head(u1)


@METHODS.register
class DIP(PerImageUpsampler):
    name = "dip"
    version = "1"

    def fit_config(self) -> dict[str, Any]:
        return {**super().fit_config(), "width": WIDTH, "noise": NOISE}

    def network(self, generators: Generators, fit_size: tuple[int, int], out_dim: int) -> nn.Module:
        return DIPNetwork(generators, fit_size, out_dim)

    def render(self, network: nn.Module, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        out = network(guidance_at(image, tuple(network.noise.shape[-2:]), image.dtype))
        return F.interpolate(out, size=output_size, mode="bilinear", align_corners=False)
