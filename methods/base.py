"""The one interface every upsampler implements.

A method gets the backbone's low-resolution features, the image they came from
and the size wanted, and returns features at that size. Methods that change what
the backbone sees (strided, large image) override ``features``; methods with
weights declare how they are fitted (``fit``) and the runner fits them before
scoring (bench.fitting), so no method imports the trainer. Tasks only ever call
``upsample``, so they never special-case a method by name.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.fitting.multiview import standardise

if TYPE_CHECKING:
    from bench.backbones import Backbone


def guidance_at(image: torch.Tensor, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """The guidance image of image-guided methods at ``size``: itself at that size, else resized (antialiased)."""
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    return image.to(dtype)


class ContractError(ValueError):
    """An upsampler returned something other than the interface promises."""


class Upsampler(nn.Module, ABC):
    """Base class: subclass it, set the class variables, implement ``forward``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    fit: ClassVar[str] = "none"
    """How the runner fits the method before scoring: "none", or "dataset" (weights trained once
    with the multi-view loss, cached). See bench.fitting.FIT_KINDS."""
    keeps_grid: ClassVar[bool] = False
    """True for methods that return the backbone's own grid (low_res): tasks then
    resize labels to the features, as the paper's low-res row does."""

    @classmethod
    def create(cls, backbone: "Backbone") -> "Upsampler":
        """Build the method for a backbone; methods with weights read ``backbone.dim`` here."""
        return cls()

    def features(self, backbone: "Backbone", image: torch.Tensor) -> torch.Tensor:
        """The low-resolution features this method starts from.

        Fitted methods get them channel-standardised (LayerNorm over channels, no
        affine), as FeatUp trains and runs its upsamplers; the trainer reads them here
        too, so training and inference see the same features.
        """
        feats = backbone.features(image)
        return feats if self.fit == "none" else standardise(feats)

    @abstractmethod
    def forward(
        self, lr_feats: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int]
    ) -> torch.Tensor:
        """(B,C,h,w) features, (B,3,H,W) image in [0,1], (H',W') -> (B,C,H',W') features."""

    def upsample(
        self, backbone: "Backbone", image: torch.Tensor, output_size: tuple[int, int]
    ) -> torch.Tensor:
        """Backbone features of ``image`` upsampled to ``output_size``, with the contract checked."""
        lr_feats = self.features(backbone, image)
        out = self(lr_feats, image, tuple(output_size))
        self.check_output(out, lr_feats, tuple(output_size))
        return out

    def check_output(
        self, out: object, lr_feats: torch.Tensor, output_size: tuple[int, int]
    ) -> None:
        """Raise ContractError naming the method when ``out`` breaks the interface."""
        expected = (lr_feats.shape[0], lr_feats.shape[1])
        if not isinstance(out, torch.Tensor):
            raise ContractError(f"method {self.name!r} returned {type(out).__name__}, expected a torch.Tensor")
        if out.dim() != 4 or tuple(out.shape[:2]) != expected:
            raise ContractError(
                f"method {self.name!r} returned shape {tuple(out.shape)}, expected "
                f"(batch, channels, H, W) = {expected + ('H', 'W')}"
            )
        spatial = tuple(out.shape[-2:])
        if not self.keeps_grid and spatial != output_size:
            raise ContractError(
                f"method {self.name!r} returned spatial size {spatial}, expected the requested {output_size}"
            )
        if not torch.isfinite(out).all():
            raise ContractError(f"method {self.name!r} returned non-finite values (NaN or inf)")
