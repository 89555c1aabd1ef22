"""FeatUp (Implicit): an MLP on Fourier features of (y, x, r, g, b), fitted to each image (docs/reference.md §4).

Input: the pixel's coordinates in [-1, 1] and its colour min-max scaled per channel to
[-0.5, 0.5], each multiplied by 30 frequencies exp(linspace(-2, 10, 30)), sin and cos
with a learned phase per (sin|cos, input, frequency), plus the 3 scaled colours: 303
channels. Network: ChannelNorm, Dropout2d 0.2, 1x1 303->128, ReLU, Dropout2d 0.2,
ChannelNorm, 1x1 128->128, ReLU, 1x1 128->q (the PCA space of the targets). Priors:
0.001 magnitude, 0.05 TV of the magnitude, 0.1 blur. It is a function of position
and colour, so any output size is a query of a resized grid, in row chunks so that
448 px and larger outputs stay within a fixed working memory.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from methods.batched import Generators, GroupedChannelNorm, GroupedDropout2d, GroupedLinear
from bench.registry import METHODS
from methods.base import PerImageUpsampler, guidance_at

N_FREQS = 30
HIDDEN = 128
QUERY_PIXELS = 32768
"""Pixels per rendering chunk: about 100 MB of activations whatever the output size."""


COLOUR_FLOOR = 1e-4
"""FeatUp's floor on a colour channel's max - min in the min-max scaling."""


def colour_range(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel (min, max) of a (G,3,H,W) image: the colour scaling of ``implicit_inputs``."""
    return image.amin((2, 3), keepdim=True), image.amax((2, 3), keepdim=True)


def implicit_inputs(image: torch.Tensor, scaling: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(G,3,H,W) image -> (G,5,H,W): y and x in [-1, 1], colours min-max scaled per channel to [-0.5, 0.5] by
    ``scaling`` (default: the image's own ``colour_range``)."""
    g, _, h, w = image.shape
    lo, hi = colour_range(image) if scaling is None else scaling
    colours = (image - lo) / (hi - lo).clamp_min(COLOUR_FLOOR) - 0.5
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=image.device), torch.linspace(-1, 1, w, device=image.device),
                            indexing="ij")
    return torch.cat([torch.stack([ys, xs]).to(image).expand(g, 2, h, w), colours], dim=1)


class FourierFeatures(nn.Module):
    """sin and cos of each input at N_FREQS frequencies with learned phases, plus the colours: 5*30*2 + 3 channels."""

    def __init__(self, generators: Generators) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(-2, 10, N_FREQS)), persistent=False)
        self.phase = nn.Parameter(torch.stack([torch.randn(2, 5, N_FREQS, generator=g) for g in generators]))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        g, _, h, w = inputs.shape
        x = inputs[:, None] * self.freqs[None, :, None, None, None]  # (G, F, 5, H, W)
        phase = self.phase.permute(0, 1, 3, 2)[..., None, None]  # (G, 2, F, 5, 1, 1)
        sin = torch.sin(x + phase[:, 0]).reshape(g, -1, h, w)
        cos = torch.cos(x + phase[:, 1]).reshape(g, -1, h, w)
        return torch.cat([sin, cos, inputs[:, 2:]], dim=1)


class ImplicitNetwork(nn.Module):
    """One implicit MLP per image of a group; ``fourier=False`` feeds the raw 5 inputs (the ablation)."""

    def __init__(self, generators: Generators, out_dim: int, fourier: bool = True,
                 fit_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.fit_size = fit_size
        """The grid the network was fitted on: rendering scales colours as the fit did, by that grid's range."""
        groups, start = len(generators), (5 * N_FREQS * 2 + 3 if fourier else 5)
        self.fourier = FourierFeatures(generators) if fourier else nn.Identity()
        self.layers = nn.Sequential(
            GroupedChannelNorm(groups, start), GroupedDropout2d(generators, 0.2), GroupedLinear(generators, start, HIDDEN),
            nn.ReLU(), GroupedDropout2d(generators, 0.2), GroupedChannelNorm(groups, HIDDEN),
            GroupedLinear(generators, HIDDEN, HIDDEN), nn.ReLU(), GroupedLinear(generators, HIDDEN, out_dim),
        )

    def query(self, inputs: torch.Tensor) -> torch.Tensor:
        """(G,5,H,W) positions and colours -> (G,out_dim,H,W) features."""
        return self.layers(self.fourier(inputs))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.query(implicit_inputs(image))


@METHODS.register
class FeatUpImplicit(PerImageUpsampler):
    name = "featup_implicit"
    version = "2"  # 2: FeatUp's colour floor (1e-4) and the fit grid's colour range at render time
    mag_weight: ClassVar[float] = 0.001
    tv_weight: ClassVar[float] = 0.05
    blur_weight: ClassVar[float] = 0.1

    def __init__(self, fourier: bool = True) -> None:
        super().__init__()
        self.fourier = fourier

    def fit_config(self) -> dict[str, Any]:
        return {**super().fit_config(), "fourier": self.fourier, "n_freqs": N_FREQS, "hidden": HIDDEN}

    def network(self, generators: Generators, fit_size: tuple[int, int], out_dim: int) -> nn.Module:
        return ImplicitNetwork(generators, out_dim, self.fourier, fit_size)

    def render(self, network: nn.Module, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        # colours scaled by the fit grid's range, as during the fit (FeatUp renders at the size it fitted)
        scaling = colour_range(guidance_at(image, network.fit_size, image.dtype))
        inputs = implicit_inputs(guidance_at(image, output_size, image.dtype), scaling)
        rows = max(1, QUERY_PIXELS // output_size[1])
        return torch.cat([network.query(inputs[..., r:r + rows, :]) for r in range(0, output_size[0], rows)], dim=2)
