"""The backbone run with half its stride, then bilinear: more tokens, no new weights."""
from __future__ import annotations

import torch

from bench.backbones import Backbone
from bench.registry import METHODS
from methods.bilinear import Bilinear


@METHODS.register
class Strided(Bilinear):
    """ViTs get overlapping patches (stride p/2); convnets lose their last stage's stride."""

    name = "strided"

    def features(self, backbone: Backbone, image: torch.Tensor) -> torch.Tensor:
        with backbone.halved_stride():
            return backbone.features(image)
