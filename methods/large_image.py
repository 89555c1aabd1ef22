"""The backbone run on a 2x bilinearly enlarged image, then bilinear resizing."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.backbones import Backbone
from bench.registry import METHODS
from methods.bilinear import Bilinear


@METHODS.register
class LargeImage(Bilinear):
    name = "large_image"
    scale = 2

    def features(self, backbone: Backbone, image: torch.Tensor) -> torch.Tensor:
        large = F.interpolate(image, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return backbone.features(large.clamp(0, 1))
