"""A per-image upsampler in one file: score it with
    python run_bench.py run --plugin examples/my_per_image_upsampler.py -m my_explicit --profile smoke

FeatUp's "explicit" variant: the HR features of each image are themselves the parameters,
a (q, h, w) map fitted with the multi-view loss (the runner does the fitting, batching and
caching; see docs/methods.md "Per-image methods"). A TV prior keeps the map smooth where no view
constrains it. Replace ``network`` and ``render`` with your own per-image model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import METHODS
from methods.base import PerImageUpsampler


class ExplicitMaps(nn.Module):
    """One free (out_dim, h, w) feature map per image; forward ignores the image."""

    def __init__(self, generators: list[torch.Generator], fit_size: tuple[int, int], out_dim: int) -> None:
        super().__init__()
        # image g's map drawn from its own generator: its fit does not depend on its group
        init = torch.stack([torch.randn(out_dim, *fit_size, generator=g) for g in generators])
        self.maps = nn.Parameter(F.normalize(init, dim=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.maps


@METHODS.register
class MyExplicit(PerImageUpsampler):
    name = "my_explicit"
    version = "1"          # bump when your results would change: cached fits and results are keyed by it
    tv_weight = 0.05       # priors on the HR output: mag_weight, tv_weight, blur_weight (default 0)

    def network(self, generators: list[torch.Generator], fit_size: tuple[int, int], out_dim: int) -> nn.Module:
        return ExplicitMaps(generators, fit_size, out_dim)

    def render(self, network: nn.Module, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(network(image), size=output_size, mode="bilinear", align_corners=False)
