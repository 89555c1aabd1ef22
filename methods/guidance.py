"""The image as the guidance-taking upsamplers see it."""
from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def imagenet_normalised(image: torch.Tensor) -> torch.Tensor:
    """The [0,1] image in ImageNet mean/std units: the guidance FeatUp gives JBU, resize-conv and SAPA.

    SAPA's query LayerNorm over 3 channels maps a grey [0,1] pixel to 0 (its channels are equal);
    in these units grey is not grey any more, which is what FeatUp's comparison fed it (docs/reference.md §5).
    """
    mean = image.new_tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (image - mean) / std
