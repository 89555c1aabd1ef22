"""Layers with one set of weights per image, so a group of per-image networks trains as one.

Maps are (G, C, H, W) with image g in row g and every parameter has a leading G,
so a slice ``[g:g+1]`` of each is image g's own network. Each image draws its
initial weights and dropout masks from its own generator: a fit does not depend
on which other images share its group, and one 2-core step serves G images.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Generators = list[torch.Generator]


def uniform_per_image(generators: Generators, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    """(G, *shape) samples of U(-bound, bound), image g's from generator g (torch's default layer init)."""
    return torch.stack([(torch.rand(shape, generator=g) * 2 - 1) * bound for g in generators])


class GroupedLinear(nn.Module):
    """A 1x1 convolution per image: (G, cin, H, W) -> (G, cout, H, W), one batched matmul."""

    def __init__(self, generators: Generators, cin: int, cout: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(cin)
        self.weight = nn.Parameter(uniform_per_image(generators, (cout, cin), bound))
        self.bias = nn.Parameter(uniform_per_image(generators, (cout,), bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, _, h, w = x.shape
        return torch.baddbmm(self.bias[:, :, None], self.weight, x.reshape(g, x.shape[1], h * w)).view(g, -1, h, w)


class GroupedConv2d(nn.Module):
    """A k x k convolution per image with reflect padding ('same' size at stride 1), as one grouped conv."""

    def __init__(self, generators: Generators, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        bound = 1 / math.sqrt(cin * kernel_size**2)
        self.weight = nn.Parameter(uniform_per_image(generators, (cout, cin, kernel_size, kernel_size), bound))
        self.bias = nn.Parameter(uniform_per_image(generators, (cout,), bound))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, cin, h, w = x.shape
        pad = self.weight.shape[-1] // 2
        x = F.pad(x.reshape(1, g * cin, h, w), [pad] * 4, mode="reflect") if pad else x.reshape(1, g * cin, h, w)
        out = F.conv2d(x, self.weight.flatten(0, 1), self.bias.flatten(), stride=self.stride, groups=g)
        return out.view(g, -1, *out.shape[-2:])


class GroupedChannelNorm(nn.Module):
    """LayerNorm over channels at each pixel, with an affine per image (FeatUp's ChannelNorm)."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, channels))
        self.bias = nn.Parameter(torch.zeros(groups, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, correction=0, keepdim=True)  # over channels, no NHWC copy
        return (x - mean) * torch.rsqrt(var + 1e-5) * self.weight[..., None, None] + self.bias[..., None, None]


class GroupedInstanceNorm(nn.Module):
    """Per-image, per-channel normalisation over the map with an affine per image (BatchNorm at batch 1)."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, channels))
        self.bias = nn.Parameter(torch.zeros(groups, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x) * self.weight[..., None, None] + self.bias[..., None, None]


class GroupedDropout2d(nn.Module):
    """Drops whole channels in training, image g's mask drawn from generator g."""

    def __init__(self, generators: Generators, p: float) -> None:
        super().__init__()
        self.generators, self.p = generators, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.stack([torch.rand(x.shape[1], generator=g) >= self.p for g in self.generators])
        return x * (keep.to(x)[..., None, None] / (1 - self.p))
