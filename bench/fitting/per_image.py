"""Fit a network to each image at inference (FeatUp implicit, DIP): the multi-view loss per image.

docs/reference.md §4 (implicit FeatUp): the backbone's standardised features of many
jittered views of one image are PCA-compressed (PCA fitted on the first views);
a network renders the image's HR features in that space; each step jitters its
output like a few sampled views, pools it onto the backbone's grid with a learned
kernel and scores it with the Gaussian NLL of a per-pixel uncertainty, plus the
method's priors (magnitude, TV of the magnitude, blur). A group of images trains
as one batched network (methods.batched); every random draw of an image
comes from its own generator, so its fit does not depend on its group.

The network runs on a grid ``scale`` times coarser than the image (the views the
backbone sees are the same jitter ``upscaled``): CPU profiles use it to afford the
fit; the paper profile fits at full size.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from bench.backbones import cache_key
from bench.core.features import pca_basis, to_pca
from methods.batched import GroupedLinear
from bench.fitting.multiview import (GroupedAttentionDownsampler, Jitter, SimpleDownsampler, gaussian_blur, gaussian_nll,
                                    replay, total_variation)

if TYPE_CHECKING:
    from bench.backbones import Backbone
    from bench.core.profiles import Profile
    from methods.base import PerImageUpsampler


@dataclass(frozen=True)
class ImageFitSettings:
    """How hard each image is fitted: the sizes of docs/reference.md §4's recipe a profile can afford."""

    steps: int
    views: int
    """Jittered views whose backbone features are computed per image (FeatUp: 3000)."""
    views_per_step: int
    """Views sampled with replacement per step (FeatUp: 10)."""
    pca_views: int
    """The first views, on which the PCA of the targets is fitted (FeatUp: 50)."""
    scale: int
    """The network's grid is the image size divided by this (1: full size)."""
    group: int
    """Images fitted at once as one batched network."""
    proj_dim: int = 128
    lr: float = 2e-3
    pad: int = 30
    """Reflect padding of the views, in image pixels."""
    max_zoom: float = 1.8
    downsampler: str = "simple"
    """How a rendered view is pooled onto the backbone's grid: "simple" (a learned blur) or "attention" (FeatUp's
    implicit config); recorded as the fit recipe's ``downsampler``."""


FIT_SETTINGS: dict[str, ImageFitSettings] = {
    "smoke": ImageFitSettings(steps=12, views=6, views_per_step=4, pca_views=6, scale=2, group=6),
    # Sized for the whole default run (456 images, two per-image methods) on 2 CPU cores: see docs/methods.md.
    "default": ImageFitSettings(steps=20, views=8, views_per_step=4, pca_views=8, scale=4, group=8),
    "paper": ImageFitSettings(steps=1200, views=3000, views_per_step=10, pca_views=50, scale=1, group=1,
                              downsampler="attention"),
}


def fit_settings(profile: "Profile") -> ImageFitSettings:
    """The profile's per-image fit sizes (profiles registered by plugins get the default profile's), with its
    ``fit_steps`` where it sets them."""
    settings = FIT_SETTINGS.get(profile.name, FIT_SETTINGS["default"])
    steps = getattr(profile, "fit_steps", None)
    return settings if steps is None else replace(settings, steps=steps)


def image_hash(image: torch.Tensor) -> str:
    """sha256 of an image's shape and float32 pixels: the content a fit belongs to."""
    pixels = image.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(repr(tuple(pixels.shape)).encode() + pixels.numpy().tobytes()).hexdigest()


def image_seed(content_hash: str, seed: int) -> int:
    """The seed of one image's fit: from its content and the run's seed, never from its group or order."""
    return int(hashlib.sha256(f"{content_hash}:{seed}".encode()).hexdigest()[:15], 16)


def downsampler_kernel(fit: int, lr: int) -> int:
    """FeatUp's implicit kernel (29 at 224 px onto 14 cells) on this grid: the largest k <= 29/16 * fit/lr whose
    strided windows tile the map exactly ((fit - k) divisible by lr - 1); at 4 px per cell that is the cell itself."""
    if lr <= 1:
        return fit
    k = min(fit, max(1, round(29 / 16 * fit / lr)))
    while k > 1 and (fit - k) % (lr - 1):
        k -= 1
    return k


def magnitude(x: torch.Tensor) -> torch.Tensor:
    return x.square().sum(1, keepdim=True).sqrt()


def fit_grids(image_size: tuple[int, int], scale: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(the network's grid, the size the backbone sees views at): the latter an exact multiple of the former."""
    fit = (max(1, image_size[0] // scale), max(1, image_size[1] // scale))
    return fit, (fit[0] * scale, fit[1] * scale)


def fit_inputs(images: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images at the network's grid, images at the size the backbone sees views at), antialiased."""
    fit_size, view_size = fit_grids(tuple(images.shape[-2:]), scale)

    def resized(size: tuple[int, int]) -> torch.Tensor:
        if size == tuple(images.shape[-2:]):
            return images
        return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)

    return resized(fit_size), resized(view_size)


@dataclass
class FitResult:
    fits: list[dict[str, Any]]
    """Per image: ``net`` (its slice of the batched network), ``mean``/``basis`` (the PCA), ``down`` (the
    learned pooling kernel) and ``fit_size`` (the network's grid)."""
    losses: torch.Tensor
    """(steps, G) reconstruction NLL per step and image."""


def sample_views(settings: ImageFitSettings, fit_size: tuple[int, int], generator: torch.Generator) -> list[Jitter]:
    pad = max(1, round(settings.pad / settings.scale))
    return [Jitter.sample(fit_size, generator, pad=pad, max_zoom=settings.max_zoom, p_zoom=1.0)
            for _ in range(settings.views)]


def view_features(method: "PerImageUpsampler", backbone: "Backbone", image: torch.Tensor, jitters: list[Jitter],
                  scale: int, chunk: int = 16) -> torch.Tensor:
    """(V, C, h, w) standardised backbone features of ``image`` (1,3,H,W) seen through each jitter."""
    out = []
    with torch.no_grad():
        for i in range(0, len(jitters), chunk):
            views = torch.cat([j.upscaled(scale)(image) for j in jitters[i:i + chunk]])
            out.append(method.features(backbone, views))
    return torch.cat(out)


def fit_images(
    method: "PerImageUpsampler", backbone: "Backbone", images: torch.Tensor, settings: ImageFitSettings,
    seeds: list[int],
) -> FitResult:
    """Fit ``method``'s network to each of ``images`` (G,3,H,W) at once; image g's draws come from ``seeds[g]``."""
    g_count, device = images.shape[0], images.device
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    grid_images, view_images = fit_inputs(images, settings.scale)
    fit_size = tuple(grid_images.shape[-2:])
    jitters = [sample_views(settings, fit_size, g) for g in generators]
    grids = torch.stack([torch.stack([j.grid(device) for j in views]) for views in jitters])  # (G, V, h, w, 2)
    feats = [view_features(method, backbone, view_images[i:i + 1], jitters[i], settings.scale) for i in range(g_count)]
    pcas = [pca_basis(f[: settings.pca_views], settings.proj_dim) for f in feats]
    targets = torch.stack([to_pca(f, m, b) for f, (m, b) in zip(feats, pcas)])  # (G, V, q, h, w)
    q, lr_size = targets.shape[2], tuple(targets.shape[-2:])

    with torch.enable_grad():
        net = method.network(generators, fit_size, q).to(device).train()
        kernel = downsampler_kernel(fit_size[0], lr_size[0])
        down = (SimpleDownsampler(kernel, groups=g_count) if settings.downsampler == "simple" else
                GroupedAttentionDownsampler(generators, q + 1, kernel)).to(device)
        uncertainty = GroupedLinear(generators, q, 1).to(device)
        with torch.no_grad():
            uncertainty.weight.mul_(0.1)
            uncertainty.bias.mul_(0.1)
        params = [*net.parameters(), *down.parameters(), *uncertainty.parameters()]
        optimizer = torch.optim.NAdam(params, lr=settings.lr)
        k = settings.views_per_step
        losses = []
        for _ in range(settings.steps):
            hr = net(grid_images)
            both = torch.cat([magnitude(hr), hr], dim=1)
            picks = [torch.randint(settings.views, (k,), generator=g) for g in generators]
            views = torch.stack([grids[i, picks[i]] for i in range(g_count)])
            pooled = down(replay(both, views, jitters[0][0].pad), lr_size)
            target = torch.stack([targets[i, picks[i]] for i in range(g_count)])  # (G, k, q, h, w)
            log_scale = uncertainty(target.transpose(1, 2).reshape(g_count, q, k * lr_size[0], lr_size[1]))
            log_scale = log_scale.view(g_count, 1, k, *lr_size).transpose(1, 2).reshape(g_count * k, 1, *lr_size)
            target = target.reshape(g_count * k, q, *lr_size)
            rec = gaussian_nll(pooled[:, 1:], target, log_scale).view(g_count, -1).mean(1)
            loss = rec
            if method.mag_weight:
                loss = loss + method.mag_weight * (pooled[:, :1] - magnitude(target)).square().view(g_count, -1).mean(1)
            if method.tv_weight:
                loss = loss + method.tv_weight * total_variation(both[:, :1])
            if method.blur_weight:
                loss = loss + method.blur_weight * (gaussian_blur(hr) - hr).square().flatten(1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # a sum: each image's gradient is its own loss's, whatever the group size
            optimizer.step()
            losses.append(rec.detach().cpu())
    state = {k_: v.detach().cpu() for k_, v in net.state_dict().items()}
    fits = [{"net": {k_: v[i:i + 1].clone() for k_, v in state.items()}, "mean": pcas[i][0].cpu(),
             "basis": pcas[i][1].cpu(), "down": down_state(down, i),
             "fit_size": torch.tensor(fit_size)}
            for i in range(g_count)]
    return FitResult(fits, torch.stack(losses) if losses else torch.zeros(0, g_count))


def down_state(down: torch.nn.Module, i: int) -> torch.Tensor | dict[str, torch.Tensor]:
    """Image i's pooling weights: the simple kernel's tensor (the fit cache's format), or the attention
    downsampler's parameters by name."""
    if isinstance(down, SimpleDownsampler):
        return down.weight.detach()[i:i + 1].cpu().clone()
    return {name: p.detach()[i:i + 1].cpu().clone() for name, p in down.named_parameters()}


def fit_recipe(method: "PerImageUpsampler", backbone: "Backbone", profile: "Profile") -> dict[str, Any]:
    """Everything a cached fit must match besides the image: method, backbone, sizes, priors, seed."""
    settings = asdict(fit_settings(profile))
    downsampler = settings.pop("downsampler")  # its own key, as before it was a setting: the simple fits' hash stays
    return {"method": method.name, "version": method.version, "method_config": method.fit_config(),
            "backbone": cache_key(backbone), "dim": backbone.dim, "stride": backbone.stride,
            "settings": settings, "seed": profile.seed, "optimizer": "NAdam", "downsampler": downsampler,
            "loss": "gaussian nll + priors"}
