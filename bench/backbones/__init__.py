"""Frozen timm featurizers: the EfficientNet-Lites (default lite0), the paper's backbones, any timm model.

Every backbone is a timm model wrapped to one shape contract: ``features`` maps an
image in [0,1] to (B, dim, ceil(H/stride), ceil(W/stride)). Weights never
download in tests: the default ships inside a pip package, the others come from
``--weights PATH`` or the Hugging Face cache, and a missing or unreadable file is
reported at once with what to provide (``bench.backbones.weights``). ``timm:NAME[@stage]``
names are resolved in ``bench.backbones.names``; the registered specs are in ``bench.backbones.specs``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones.names import resolve_spec
from bench.backbones.specs import BackboneSpec, input_stats
from bench.backbones.weights import build_timm


class ImageError(ValueError):
    """An image the backbone cannot take (wrong rank, channels or size)."""


def cache_key(backbone: Any) -> str:
    """A backbone's identity in cache keys: its name, plus its input normalisation where that is not the
    model's own (so keys made before the choice existed stay valid). A stand-in backbone needs only a name."""
    normalisation = getattr(backbone, "normalisation", "config")
    return backbone.name if normalisation == "config" else f"{backbone.name}+{normalisation}-norm"


class Backbone(nn.Module):
    """A frozen timm model with ImageNet-style normalisation and a feature-grid output."""

    def __init__(
        self, name: str, model: nn.Module, stride: int, dim: int, is_vit: bool, pre_head: bool = False,
        stages: int | None = None, stage: int | None = None, normalisation: str = "config",
    ) -> None:
        super().__init__()
        if stages is not None and not pre_head:
            raise ValueError(f"backbone {name!r}: stages={stages} needs pre_head (an EfficientNet-style model)")
        self.name, self.stride, self.dim, self.is_vit, self.pre_head = name, stride, dim, is_vit, pre_head
        self.stages, self.stage, self.normalisation = stages, stage, normalisation
        self.model = model.eval().requires_grad_(False)
        mean, std = input_stats(model.pretrained_cfg, normalisation)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "Backbone":
        """Stay in eval mode: the backbone is frozen, its BatchNorm/Dropout must not change."""
        return super().train(False)

    def check_image(self, image: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ImageError(f"backbone {self.name!r} expects images shaped (B, 3, H, W) in [0,1]; got {shape}")
        if min(image.shape[-2:]) < self.stride:
            raise ImageError(
                f"backbone {self.name!r} needs images of at least {self.stride}x{self.stride} pixels "
                f"(its stride); got {tuple(image.shape[-2:])}"
            )

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return tuple(math.ceil(s / self.stride) for s in image_size)

    @torch.no_grad()
    def features(self, image: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B, dim, h, w) on the backbone's grid."""
        self.check_image(image)
        x = (image - self.mean) / self.std
        if not self.is_vit:
            return self._convnet_grid(x)
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        padded = _padded(image.shape[-2:], self.model.patch_embed.patch_size)
        h, w = self.model.patch_embed.proj(torch.empty(1, 3, *padded, device="meta")).shape[-2:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    def _convnet_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image -> feature grid of a convnet, only up to the stages it keeps.

        Shared by ``features`` and the stride probe so both see the same (possibly truncated) net.
        """
        if self.pre_head:
            return self.model.blocks[: self.stages](self.model.bn1(self.model.conv_stem(x)))
        if self.stage is not None:
            h, w = _padded(x.shape[-2:], (self.stride, self.stride))
            x = F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))  # zeros, as timm's dynamic_img_pad for ViTs
            return self.model.forward_intermediates(x, indices=[self.stage], intermediates_only=True,
                                                    stop_early=True)[0]
        return self.model.forward_features(x)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits per pixel of (B, dim, h, w) features: (B, classes, h, w).

        Pooling these over pixels gives the image's logits, so a class activation map
        is one channel of the output, at whatever resolution the features have.
        """
        head = self.linear_head()
        feats = self._head_input(feats)
        return torch.einsum("bdhw,kd->bkhw", feats, head.weight) + head.bias.view(1, -1, 1, 1)

    def image_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, classes) logits of the images whose (B, dim, h, w) features these are: the model's own prediction."""
        head = self.linear_head()
        return head(self._head_input(feats).mean((2, 3)))

    def _head_input(self, feats: torch.Tensor) -> torch.Tensor:
        """What the linear head pools: the features after EfficientNet's pointwise conv_head, if it has one."""
        return self.model.bn2(self.model.conv_head(feats)) if self.pre_head else feats

    def linear_head(self) -> nn.Linear:
        """The model's linear classifier, if the features reach it through pointwise layers only."""
        if self.stages is not None:
            raise RuntimeError(
                f"backbone {self.name!r} has no per-pixel classifier: its features stop after "
                f"{self.stages} of timm's {len(self.model.blocks)} block stages, and the rest of the "
                f"network before the linear head (a strided stage of spatial convs) is not pointwise "
                f"on these features; use the full backbone for class activation maps"
            )
        head = self.model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise RuntimeError(f"backbone {self.name!r} has no linear classifier head")
        if not self.pre_head and head.in_features != self.dim:  # pre_head: conv_head makes the width
            raise RuntimeError(
                f"backbone {self.name!r} has no per-pixel classifier: its {self.dim}-d features are not what "
                f"the {head.in_features}-d linear head reads (the model has layers between them)"
            )
        return head

    def feature_parameters(self) -> list[nn.Parameter]:
        """The parameters ``features`` uses: not the classifier, nor the stages a truncated backbone skips."""
        if self.pre_head:
            used = [self.model.conv_stem, self.model.bn1, self.model.blocks[: self.stages]]
            return [p for module in used for p in module.parameters()]
        if self.stage is not None:  # the modules a pass up to the stage runs; later stages never run
            ran = dict.fromkeys(module for module, _ in self._probe_pass())
            return list(dict.fromkeys(p for module in ran for p in module.parameters(recurse=False)))
        head = {id(p) for p in self.model.get_classifier().parameters()}
        return [p for p in self.model.parameters() if id(p) not in head]

    @contextlib.contextmanager
    def halved_stride(self) -> Iterator["Backbone"]:
        """Temporarily halve the output stride (the 'strided' baseline).

        ViTs get overlapping patches (patch-embedding stride p/2, position embeddings
        interpolated by timm's dynamic size); convnets lose the stride of the convs
        that produce the final grid.
        """
        convs = self._patch_convs() if self.is_vit else self._last_stage_strided_convs()
        saved = [(c, c.stride, c.padding) for c in convs]
        try:
            for conv in convs:
                conv.stride = tuple(s // 2 if self.is_vit else 1 for s in conv.stride)
                if self.is_vit:
                    conv.padding = tuple((k - s) // 2 for k, s in zip(conv.kernel_size, conv.stride))
            self.stride //= 2
            yield self
        finally:
            self.stride *= 2
            for conv, stride, padding in saved:
                conv.stride, conv.padding = stride, padding

    def _patch_convs(self) -> list[nn.Conv2d]:
        return [self.model.patch_embed.proj]

    def _last_stage_strided_convs(self) -> list[nn.Conv2d]:
        """Strided convs whose output is already the final grid (4 wide on the probe)."""
        return [m for m, width in self._probe_pass()
                if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and width == 4]

    def _probe_pass(self) -> list[tuple[nn.Module, int | None]]:
        """Every module one convnet pass on a 4-stride square image runs, with its output's width."""
        ran: list[tuple[nn.Module, int | None]] = []
        hooks = [m.register_forward_hook(
            lambda mod, _i, out: ran.append((mod, out.shape[-1] if isinstance(out, torch.Tensor) else None)))
            for m in self.model.modules()]
        try:
            self._convnet_grid(torch.zeros(1, 3, 4 * self.stride, 4 * self.stride, device=self.mean.device))
        finally:
            for h in hooks:
                h.remove()
        return ran


def _padded(size: torch.Size, multiple: tuple[int, int]) -> tuple[int, int]:
    return tuple(math.ceil(s / p) * p for s, p in zip(size, multiple))


def load_backbone(
    name: str, weights: str | None = None, device: str | torch.device = "cpu", normalisation: str = "config",
    random_weights: bool = False,
) -> Backbone:
    """A registered backbone or ``timm:NAME[@stage]`` with its weights (see module docstring for sources).

    ``random_weights``: the same network untrained, for timing a plan where the weights are missing.
    """
    spec = resolve_spec(name)
    if random_weights:
        spec, weights = replace(spec, random_init=True, weights_package=None), None
    return build_backbone(spec, weights, device, normalisation)


def build_backbone(
    spec: BackboneSpec, weights: str | None = None, device: str | torch.device = "cpu", normalisation: str = "config"
) -> Backbone:
    """The backbone a spec describes, with its weights (``weights``, a package, the HF cache, or random init)."""
    model = build_timm(spec, weights)
    return Backbone(spec.name, model, spec.stride, spec.dim, spec.is_vit, spec.pre_head, spec.stages,
                    spec.stage, normalisation).to(device)


def backbone_from_model(name: str, model: nn.Module, stride: int, dim: int, is_vit: bool) -> Backbone:
    """Wrap any timm model (e.g. a randomly initialised one in tests, or a new ViT)."""
    return Backbone(name, model, stride, dim, is_vit)
