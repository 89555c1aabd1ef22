"""The report's figures: feature PCA images per method, time and memory against size, the Fourier ablation.

The PCA picture is FeatUp's: each method's features of a photograph, channel-standardised per
pixel (fitted methods already output them so), projected on the first three principal
components as RGB. The components and the colour range of a photograph come from the backbone's
own low-resolution features of it, one basis for every method, so a colour means the same
direction of feature space in every panel of its column. (One basis over all photographs would spend
its three components on what tells the photographs apart, not on the detail within each.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F

from bench.core.features import standardise

if TYPE_CHECKING:
    from bench.backbones import Backbone
    from bench.core.context import RunContext

COLOUR_QUANTILES = (0.01, 0.99)


@dataclass
class PcaBasis:
    """First three principal components of (N, C) feature vectors, and the colour range of their projections."""

    mean: torch.Tensor
    components: torch.Tensor  # (C, 3)
    lo: torch.Tensor = field(default_factory=lambda: torch.zeros(3))
    hi: torch.Tensor = field(default_factory=lambda: torch.ones(3))

    @classmethod
    def fit(cls, feats: torch.Tensor) -> "PcaBasis":
        """From (B, C, h, w) standardised features: components by torch.pca_lowrank, range by quantiles."""
        vectors = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).double()
        mean = vectors.mean(0)
        _, _, v = torch.pca_lowrank(vectors - mean, q=3, center=False, niter=6)
        basis = cls(mean, v[:, :3])
        projected = basis.project_vectors(vectors)
        basis.lo, basis.hi = (torch.quantile(projected, q, dim=0) for q in COLOUR_QUANTILES)
        return basis

    def project_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        return (vectors.double() - self.mean) @ self.components

    def rgb(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, H, W, 3) colours in [0, 1]."""
        b, c, h, w = feats.shape
        projected = self.project_vectors(feats.permute(0, 2, 3, 1).reshape(-1, c))
        scaled = (projected - self.lo) / (self.hi - self.lo).clamp_min(1e-12)
        return scaled.clamp(0, 1).reshape(b, h, w, 3).float()


def method_features(name: str, backbone: "Backbone", images: torch.Tensor,
                    context: "RunContext") -> torch.Tensor:
    """A method's standardised features of ``images`` at the image size, fitted as the runner fits it.

    Methods that keep the backbone's grid (low_res) are enlarged by nearest neighbour, so their
    blocks show as the probe sees them.
    """
    from bench.fitting import fit_method
    from bench.registry import METHODS

    method = METHODS.get(name).create(backbone).to(context.device)
    fit_method(method, backbone, context, list(images) if method.fit == "image" else ())
    method.eval()
    size = tuple(images.shape[-2:])
    with torch.no_grad():
        feats = method.upsample(backbone, images.to(context.device), size).float().cpu()
    if tuple(feats.shape[-2:]) != size:
        feats = F.interpolate(feats, size=size, mode="nearest")
    return standardise(feats)


def plot_pca(images: torch.Tensor, colours: dict[str, torch.Tensor], path: Path) -> None:
    """One column per photograph, one row per method (the photograph first), each row named on its left."""
    import matplotlib.pyplot as plt

    n, rows = images.shape[0], 1 + len(colours)
    height, width = images.shape[-2:]
    panel = 2.2
    fig, axes = plt.subplots(rows, n, figsize=(panel * n + 1.2, panel * rows * height / width), squeeze=False)
    pictures = {"image": images.permute(0, 2, 3, 1).clamp(0, 1), **colours}
    for row, (title, picture) in enumerate(pictures.items()):
        for col in range(n):
            ax = axes[row, col]
            ax.imshow(picture[col].numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(title, fontsize=10, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pca_figure(methods: list[str], backbone: "Backbone", images: torch.Tensor, context: "RunContext",
               path: Path) -> dict[str, str]:
    """Write the PCA figure of ``methods`` on ``images``; returns {method: failure message} for those left out."""
    from bench.core.failures import failure

    with torch.no_grad():
        lr = standardise(backbone.features(images.to(context.device)).float().cpu())
    bases = [PcaBasis.fit(lr[i:i + 1]) for i in range(len(images))]
    colours, failed = {}, {}
    for name in methods:
        try:
            feats = method_features(name, backbone, images, context)
            colours[name] = torch.cat([basis.rgb(feats[i:i + 1]) for i, basis in enumerate(bases)])
        except Exception as exc:  # one method's failure leaves the others in the figure
            failed[name] = failure(exc)[1].splitlines()[0]
    plot_pca(images.cpu(), colours, path)
    return failed


def profile_results(run_dir: Path, out_dir: Path, methods: list[str], sizes: list[int], channels: int,
                    device: str, progress: bool) -> tuple[pd.DataFrame, str]:
    """``<run>/profile/profile.csv`` (from ``profile methods --out <run>/profile``) if there is one,
    else a small ``profile methods`` of the run's methods written to ``<out>/profile.csv``; and where it came from."""
    stored = run_dir / "profile" / "profile.csv"
    if stored.is_file():
        return pd.read_csv(stored), f"`profile methods` results stored with the run ({stored})"
    from bench.profiling.methods import profile_methods

    df = profile_methods(methods, sizes, channels, device, progress=progress)
    df.to_csv(out_dir / "profile.csv", index=False)
    return df, (f"profiled for this report on {device} (random {channels}-channel features at stride 16, "
                f"median of 3 calls; `{out_dir / 'profile.csv'}`)")
