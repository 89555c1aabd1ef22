"""The Fourier ablation: the implicit model fitted with and without Fourier features, same views and seeds.

The paper says the Fourier features make the implicit fit converge faster and keep finer
detail. Both variants fit the same images with the same seeds, so they see the same
jittered views (the views are drawn first from each image's generator); the raw variant
feeds (y, x, r, g, b) straight into the same MLP. We report the training NLL against the
step, and the error on views neither fit saw: the fitted HR features, jittered like a
held-out view and pooled with the fit's own learned kernel, against the backbone's
standardised features of that view (mean squared error per channel and pixel).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.fitting.multiview import SimpleDownsampler, replay
from bench.fitting.per_image import ImageFitSettings, fit_images, fit_inputs, image_hash, image_seed, sample_views, view_features
from bench.core.features import from_pca
from methods.featup_implicit import FeatUpImplicit

if TYPE_CHECKING:
    from bench.backbones import Backbone

VARIANTS = {"fourier": True, "raw": False}
HELD_OUT_VIEWS = 8


def held_out_error(method: FeatUpImplicit, backbone: "Backbone", image: torch.Tensor, fit: dict,
                   settings: ImageFitSettings, seed: int) -> float:
    """MSE between a fit's pooled, jittered HR features and the backbone's features of unseen views."""
    fit_image, view_image = fit_inputs(image, settings.scale)
    held_out = dataclasses.replace(settings, views=HELD_OUT_VIEWS)
    jitters = sample_views(held_out, tuple(fit_image.shape[-2:]), torch.Generator().manual_seed(seed))
    target = view_features(method, backbone, view_image, jitters, settings.scale)
    down = SimpleDownsampler(fit["down"].shape[-1])
    with torch.no_grad():
        down.weight.copy_(fit["down"])
        hr = from_pca(method.fitted_network(fit)(fit_image), fit["mean"], fit["basis"])
        grids = torch.stack([j.grid() for j in jitters])[None]
        pred = down(replay(hr, grids, jitters[0].pad), tuple(target.shape[-2:]))
    return (pred - target).square().mean().item()


def ablate_fourier(backbone: "Backbone", images: torch.Tensor, settings: ImageFitSettings, seed: int,
                   progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(loss curves: variant, image, step, nll; final errors: variant, image, final_nll, held_out_mse)."""
    hashes = [image_hash(image) for image in images]
    seeds = [image_seed(h, seed) for h in hashes]
    curves, finals = [], []
    bar = tqdm(total=len(VARIANTS) * len(images), desc="ablate fourier", unit="fit", disable=not progress)
    for variant, fourier in VARIANTS.items():
        method = FeatUpImplicit(fourier=fourier)
        for start in range(0, len(images), settings.group):
            chunk = images[start:start + settings.group]
            result = fit_images(method, backbone, chunk, settings, seeds[start:start + settings.group])
            for i, fit in enumerate(result.fits):
                name = hashes[start + i][:12]
                curves += [{"variant": variant, "image": name, "step": step + 1, "nll": float(v)}
                           for step, v in enumerate(result.losses[:, i])]
                error = held_out_error(method, backbone, chunk[i:i + 1], fit, settings, seeds[start + i] + 1)
                finals.append({"variant": variant, "image": name, "final_nll": float(result.losses[-1, i]),
                               "held_out_mse": error})
                bar.update(1)
    bar.close()
    return pd.DataFrame(curves), pd.DataFrame(finals)


def plot_curves(curves: pd.DataFrame, path: Path) -> None:
    """Training NLL against step: each image thin, the mean over images thick, one colour per variant."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (variant, colour) in zip(VARIANTS, ("tab:blue", "tab:orange")):
        rows = curves[curves["variant"] == variant]
        for _, one in rows.groupby("image"):
            ax.plot(one["step"], one["nll"], color=colour, alpha=0.25, linewidth=0.8)
        mean = rows.groupby("step")["nll"].mean()
        ax.plot(mean.index, mean.values, color=colour, linewidth=2.2,
                label=f"{variant} (mean of {rows['image'].nunique()} images)")
    ax.set_xlabel("step")
    ax.set_ylabel("multi-view NLL (training views)")
    ax.set_title("Implicit FeatUp: Fourier features vs raw (y, x, r, g, b)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_line(finals: pd.DataFrame) -> str:
    means = finals.groupby("variant")[["final_nll", "held_out_mse"]].mean()
    paired = finals.pivot(index="image", columns="variant", values="held_out_mse")
    wins = int((paired["fourier"] < paired["raw"]).sum())
    return (f"held-out MSE fourier {means.loc['fourier', 'held_out_mse']:.4f} vs raw "
            f"{means.loc['raw', 'held_out_mse']:.4f} (fourier lower on {wins}/{len(paired)} images); final NLL "
            f"fourier {means.loc['fourier', 'final_nll']:.4f} vs raw {means.loc['raw', 'final_nll']:.4f}")
