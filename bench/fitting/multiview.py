"""FeatUp's multi-view consistency objective (docs/reference.md §4), shared by every trainable upsampler.

An upsampler is good if its HR features, jittered like the image and pooled back
to the backbone's grid, reproduce the backbone's features of the jittered image.
Pieces: the channel standardisation all trainable methods see, replayable image
jitter, two learned downsamplers, the Gaussian NLL with learned uncertainty after a
random projection, and a TV prior.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.features import project
from methods.batched import GroupedLinear
from methods.guidance import imagenet_normalised

if TYPE_CHECKING:
    from methods.base import Upsampler

PROJ_DIM = 30


@dataclass(frozen=True)
class Jitter:
    """One random view: reflect pad, optional bilinear zoom, crop back to size, optional h-flip.

    The parameters are fixed once sampled, so the same view is replayed on the
    image and on any feature map of the image's size; ``upscaled`` replays it
    exactly on a map s times larger (per-image fits run on a coarser grid than
    the image the backbone sees).
    """

    size: tuple[int, int]
    pad: int
    zoomed: tuple[int, int]
    """Size of the padded map after the zoom (the padded size itself when not zoomed)."""
    top: int
    left: int
    flip: bool

    @classmethod
    def sample(
        cls, size: tuple[int, int], generator: torch.Generator, pad: int = 20, max_zoom: float = 2.0,
        p_zoom: float = 0.5, p_flip: float = 0.5,
    ) -> "Jitter":
        def uniform() -> float:
            return torch.rand((), generator=generator).item()

        h, w = size
        zoom = 1.0 + (max_zoom - 1.0) * uniform() if uniform() < p_zoom else 1.0
        zh, zw = int((h + 2 * pad) * zoom), int((w + 2 * pad) * zoom)
        top = int(torch.randint(zh - h + 1, (), generator=generator))
        left = int(torch.randint(zw - w + 1, (), generator=generator))
        return cls(tuple(size), pad, (zh, zw), top, left, uniform() < p_flip)

    def upscaled(self, s: int) -> "Jitter":
        """The same view of a map ``s`` times larger: every length times ``s``."""
        return Jitter((self.size[0] * s, self.size[1] * s), self.pad * s, (self.zoomed[0] * s, self.zoomed[1] * s),
                      self.top * s, self.left * s, self.flip)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"this view was sampled for {h}x{w} maps; got {tuple(x.shape[-2:])}")
        x = F.pad(x, [self.pad] * 4, mode="reflect")
        if self.zoomed != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=self.zoomed, mode="bilinear", align_corners=False)
        x = x[..., self.top:self.top + h, self.left:self.left + w]
        return x.flip(-1) if self.flip else x

    def grid(self, device: torch.device | None = None) -> torch.Tensor:
        """(h, w, 2) ``grid_sample`` coordinates into the reflect-padded map that give this view.

        The same bilinear taps as ``__call__`` (align_corners=False source positions, clamped at
        the borders like ``interpolate``: use padding_mode="border"), computed only at the crop's
        pixels: many views of one map become one ``grid_sample`` call.
        """
        axes = []
        for n, start, zoomed in ((self.size[0], self.top, self.zoomed[0]), (self.size[1], self.left, self.zoomed[1])):
            padded = n + 2 * self.pad
            src = (torch.arange(start, start + n, dtype=torch.float64, device=device) + 0.5) * (padded / zoomed) - 0.5
            axes.append(((2 * src + 1) / padded - 1).float())
        ys, xs = axes
        xs = xs.flip(0) if self.flip else xs
        return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def replay(maps: torch.Tensor, grids: torch.Tensor, pad: int) -> torch.Tensor:
    """Map b of ``maps`` (B,C,H,W) seen through each of its k views, given as ``grids`` (B,k,h,w,2) of
    ``Jitter.grid`` sampled with reflect padding ``pad``: (B*k, C, h, w) in one ``grid_sample``."""
    b, k, h, w, _ = grids.shape
    padded = F.pad(maps, [pad] * 4, mode="reflect")
    out = F.grid_sample(padded, grids.reshape(b, k * h, w, 2), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.view(b, -1, k, h, w).transpose(1, 2).reshape(b * k, -1, h, w)


def _patch_stride(hr: int, lr: int, k: int) -> int:
    if hr < k:
        raise ValueError(f"HR map of {hr} pixels is smaller than the downsampler kernel ({k})")
    return max(1, (hr - k) // max(lr - 1, 1))


class SimpleDownsampler(nn.Module):
    """A learned k x k blur |w|/sum|w| (init: box), as a valid strided conv onto the LR grid.

    With ``groups`` > 1 each of ``groups`` equal slices of the batch has its own
    kernel: the per-image fitter pools a group of images' networks at once.
    """

    channelwise = True
    """Acts on each channel alone, so it commutes with a channel projection."""

    def __init__(self, kernel_size: int, groups: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, kernel_size, kernel_size))

    def forward(self, hr: torch.Tensor, lr_size: tuple[int, int]) -> torch.Tensor:
        (b, c, h, w), (groups, k, _) = hr.shape, self.weight.shape
        if b % groups:
            raise ValueError(f"a batch of {b} maps does not split into {groups} equal groups")
        stride = (_patch_stride(h, lr_size[0], k), _patch_stride(w, lr_size[1], k))
        kernel = self.weight.abs() / self.weight.abs().sum((1, 2), keepdim=True)
        if k <= min(stride):  # windows do not overlap: a reshape and one weighted sum, cheap backward on CPU
            rows, cols = lr_size[0] * stride[0], lr_size[1] * stride[1]
            x = F.pad(hr, [0, max(0, cols - w), 0, max(0, rows - h)])[..., :rows, :cols]
            x = x.reshape(groups, b // groups, c, lr_size[0], stride[0], lr_size[1], stride[1])[..., :k, :, :k]
            out = (x * kernel[:, None, None, None, :, None, :]).sum((-3, -1))
            return out.reshape(b, c, *lr_size)
        kernel = kernel.repeat_interleave(b // groups * c, dim=0)[:, None]
        out = F.conv2d(hr.reshape(1, b * c, h, w), kernel, stride=stride, groups=b * c)
        return out[..., :lr_size[0], :lr_size[1]].reshape(b, c, *lr_size)


def gaussian_blur(x: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    u = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    g = torch.exp(-u**2 / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[1], 1, size, size)
    return F.conv2d(F.pad(x, [size // 2] * 4, mode="reflect"), kernel, groups=x.shape[1])


def patch_grid(hr_size: tuple[int, int], lr_size: tuple[int, int], k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stride, patches per side) of k x k patches of an HR map pooled onto the LR grid."""
    stride = tuple(_patch_stride(n, m, k) for n, m in zip(hr_size, lr_size))
    return stride, tuple((n - k) // s + 1 for n, s in zip(hr_size, stride))


def attention_pool(blurred: torch.Tensor, logits: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, k: int,
                   lr_size: tuple[int, int], keep: torch.Tensor | None = None) -> torch.Tensor:
    """FeatUp's attention pooling: k x k patches of ``blurred`` (B,C,H,W) weighted by the softmax over each patch
    of ``logits`` (B,1,H,W) * scale + bias (each broadcast to (B, k*k, patches)), onto the LR grid. ``keep``
    (B, 1, patches): whole-patch logit dropout, a dropped patch falling back to the learned bias."""
    (b, c, h, w) = blurred.shape
    stride, grid = patch_grid((h, w), lr_size, k)
    logits = F.unfold(logits, k, stride=stride).view(b, k * k, -1)
    patches = F.unfold(blurred, k, stride=stride).view(b, c, k * k, -1)
    if keep is not None:
        logits = logits * keep.to(logits.dtype)
    attention = torch.softmax(logits * scale + bias, dim=1)
    out = torch.einsum("bcpl,bpl->bcl", patches, attention).view(b, c, *grid)
    return out[..., :lr_size[0], :lr_size[1]]


class AttentionDownsampler(nn.Module):
    """Softmax-weighted pooling of blurred HR patches, weights from a learned per-pixel logit."""

    channelwise = False

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.logit = nn.Linear(dim, 1)
        self.dropout = nn.Dropout(0.2)
        # FeatUp's init: scale 1 and bias 0, each plus 0.01 * randn (docs/reference.md §4)
        self.scale = nn.Parameter(1 + 0.01 * torch.randn(kernel_size * kernel_size))
        self.bias = nn.Parameter(0.01 * torch.randn(kernel_size * kernel_size))

    def forward(self, hr: torch.Tensor, lr_size: tuple[int, int]) -> torch.Tensor:
        k = math.isqrt(self.scale.numel())
        blurred = gaussian_blur(hr)
        logits = self.logit(self.dropout(blurred.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        keep = None
        if self.training:
            grid = patch_grid(tuple(hr.shape[-2:]), lr_size, k)[1]
            keep = torch.rand(hr.shape[0], 1, grid[0] * grid[1], device=hr.device) > 0.2
        return attention_pool(blurred, logits, self.scale[:, None], self.bias[:, None], k, lr_size, keep)


class GroupedAttentionDownsampler(nn.Module):
    """The attention downsampler with one set of weights per image, for the per-image fitter (FeatUp's implicit
    config pools with it): the batch is G equal slices of views, image g's initial weights and dropout masks
    drawn from generator g, so a fit does not depend on its group (methods.batched)."""

    def __init__(self, generators: list[torch.Generator], dim: int, kernel_size: int, p: float = 0.2) -> None:
        super().__init__()
        self.generators, self.p, taps = generators, p, kernel_size * kernel_size
        self.logit = GroupedLinear(generators, dim, 1)
        self.scale = nn.Parameter(torch.stack([1 + 0.01 * torch.randn(taps, generator=g) for g in generators]))
        self.bias = nn.Parameter(torch.stack([0.01 * torch.randn(taps, generator=g) for g in generators]))

    def _keep(self, shape: tuple[int, ...], p: float) -> torch.Tensor:
        """(G * shape[0], *shape[1:]) Bernoulli(1 - p) masks, image g's from generator g."""
        return torch.cat([torch.rand(shape, generator=g) >= p for g in self.generators])

    def forward(self, hr: torch.Tensor, lr_size: tuple[int, int]) -> torch.Tensor:
        (b, c, h, w), groups, k = hr.shape, len(self.generators), math.isqrt(self.scale.shape[1])
        if b % groups:
            raise ValueError(f"a batch of {b} maps does not split into {groups} equal groups")
        views = b // groups
        blurred = gaussian_blur(hr)
        dropped = blurred
        if self.training:  # FeatUp's nn.Dropout(0.2) on the logit layer's input
            dropped = blurred * self._keep((views, c, h, w), self.p).to(hr.device, hr.dtype) / (1 - self.p)
        stacked = dropped.view(groups, views, c, h, w).transpose(1, 2).reshape(groups, c, views * h, w)
        logits = self.logit(stacked).view(groups, 1, views, h, w).transpose(1, 2).reshape(b, 1, h, w)
        keep = None
        if self.training:
            grid = patch_grid((h, w), lr_size, k)[1]
            keep = self._keep((views, 1, grid[0] * grid[1]), 0.2).to(hr.device)
        scale, bias = (t.repeat_interleave(views, 0)[..., None] for t in (self.scale, self.bias))
        return attention_pool(blurred, logits, scale, bias, k, lr_size, keep)


def make_downsampler(kind: str, dim: int, kernel_size: int) -> nn.Module:
    if kind == "simple":
        return SimpleDownsampler(kernel_size)
    if kind == "attention":
        return AttentionDownsampler(dim, kernel_size)
    raise ValueError(f"unknown downsampler {kind!r}; choose 'simple' or 'attention'")


def random_projection(batch: int, dim: int, generator: torch.Generator, out_dim: int = PROJ_DIM) -> torch.Tensor:
    """(batch, out_dim, dim) Gaussian matrices with unit-norm rows: a fresh view of the channels."""
    proj = torch.randn(batch, out_dim, dim, generator=generator)
    return proj / proj.norm(dim=2, keepdim=True)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """(B,) mean absolute difference between neighbouring pixels of each map (a smoothness prior)."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
            + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1))


class MultiViewLoss(nn.Module):
    """Downsampler + uncertainty net: the loss of a batch's jittered views, with the trainable parts.

    sigma = max(exp(Conv1x1(LR) + 0.1), 1e-4), loss = mse / (2 sigma^2) + log sigma
    after projecting both sides to 30 dims, averaged over views. The upsampler runs
    once per batch and every view reuses its output: FeatUp reruns it per view,
    which only redraws its dropout masks. When the downsampler acts per channel the
    projection comes before jitter and pooling (the same numbers on 30 channels),
    and before the upsampler itself for those offering ``forward_projected``.
    """

    def __init__(self, dim: int, kernel_size: int, downsampler: str = "simple", tv_weight: float = 0.0,
                 crf_weight: float = 0.0) -> None:
        super().__init__()
        self.downsampler = make_downsampler(downsampler, dim, kernel_size)
        self.scale_net = nn.Conv2d(dim, 1, 1)
        with torch.no_grad():  # FeatUp's ScaleNet: weight and bias both x0.1 at init
            self.scale_net.weight.mul_(0.1)
            self.scale_net.bias.mul_(0.1)
        self.tv_weight = tv_weight
        self.crf_weight = crf_weight

    def forward(
        self, upsampler: "Upsampler", lr: torch.Tensor, image: torch.Tensor, jitters: list[Jitter],
        view_lrs: list[torch.Tensor], projs: list[torch.Tensor],
    ) -> torch.Tensor:
        size, lr_size = tuple(image.shape[-2:]), tuple(view_lrs[0].shape[-2:])
        early = self.downsampler.channelwise
        if early and hasattr(upsampler, "forward_projected"):
            hr = upsampler.forward_projected(lr, image, size, torch.cat(projs, dim=1))
        else:
            hr = upsampler(lr, image, size)
            hr = project(hr, torch.cat(projs, dim=1)) if early else hr
        total = 0.0
        for v, (jitter, view_lr, proj) in enumerate(zip(jitters, view_lrs, projs)):
            if early:
                pred = self.downsampler(jitter(hr[:, v * proj.shape[1]:(v + 1) * proj.shape[1]]), lr_size)
            else:
                pred = project(self.downsampler(jitter(hr), lr_size), proj)
            total = total + self.nll(pred, project(view_lr, proj), view_lr)
        loss = total / len(jitters)
        if self.tv_weight:
            loss = loss + self.tv_weight * total_variation(hr).mean()
        if self.crf_weight:  # on the first view's channels, as FeatUp's JBU recipe
            first = hr[:, :projs[0].shape[1]] if early else project(hr, projs[0])
            loss = loss + self.crf_weight * sampled_crf(imagenet_normalised(image), first)
        return loss

    def nll(self, pred: torch.Tensor, target: torch.Tensor, view_lr: torch.Tensor) -> torch.Tensor:
        return gaussian_nll(pred, target, self.scale_net(view_lr)).mean()


CRF_SAMPLES, CRF_ALPHA, CRF_BETA, CRF_GAMMA, CRF_W1, CRF_W2 = 1000, 0.1, 0.15, 0.005, 10.0, 3.0
"""FeatUp's SampledCRFLoss constants (shift 0)."""


def sampled_crf(guidance: torch.Tensor, feats: torch.Tensor, samples: int = CRF_SAMPLES) -> torch.Tensor:
    """FeatUp's sampled dense-CRF energy: feature distances between random pixel pairs, weighted by
    an appearance kernel (position and colour) plus a smoothness kernel (position only).

    ``samples`` pixels (shared by the batch, drawn from torch's global generator) give samples^2
    pairs; positions are in [0,1) units of the image height and width. FeatUp pairs the un-jittered
    image with the first view's jittered features; here both are in the image's own frame.
    """
    (h, w), device = guidance.shape[-2:], guidance.device
    ys, xs = torch.randint(0, h, (samples,), device=device), torch.randint(0, w, (samples,), device=device)
    pos = torch.stack([ys / h, xs / w])
    pos_diff = (pos[:, :, None] - pos[:, None, :]).square().sum(0)
    colour, picked = guidance[:, :, ys, xs], feats[:, :, ys, xs]
    colour_diff = (colour[..., :, None] - colour[..., None, :]).square().sum(1)
    kernel = (CRF_W1 * torch.exp(-pos_diff / (2 * CRF_ALPHA) - colour_diff / (2 * CRF_BETA))
              + CRF_W2 * torch.exp(-pos_diff / (2 * CRF_GAMMA)))
    # |a_i - a_j|^2 = |a_i|^2 + |a_j|^2 - 2 a_i.a_j: a (B, n, n) matmul instead of a (B, C, n, n) difference
    # (240 MB at n = 1000, C = 30, B = 2), which had cost 40% of a training step on the CPU
    sq = picked.square().sum(1)
    feat_diff = (sq[:, :, None] + sq[:, None, :] - 2 * picked.transpose(1, 2) @ picked).clamp_min(0)
    return (feat_diff * kernel).mean()


def gaussian_nll(pred: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-pixel NLL with learned uncertainty: mse / (2 sigma^2) + log sigma, sigma = max(exp(log_scale + 0.1), 1e-4).

    ``log_scale`` is the uncertainty net's (B,1,h,w) output; the channel mean of the squared error is taken first.
    """
    log_sigma = (log_scale + 0.1).clamp_min(math.log(1e-4))
    mse = (pred - target).square().mean(1, keepdim=True)
    return mse / (2 * torch.exp(2 * log_sigma)) + log_sigma
