"""What a backbone name means: a registered spec, or ``timm:NAME[@stage]`` for any timm model.

A timm name is resolved from the model itself, built without weights on the meta device (no
memory, no download): a ViT's stride is its patch size and its dim its embedding width; a
convnet's come from timm's ``feature_info`` for the stage asked (default: the last). Input size
and mean/std come from the model's pretrained config. So ``list --backbones`` and the runner's
early checks cost no weights, and a misspelt model or stage fails with a suggestion.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from bench.backbones.specs import BackboneSpec, input_stats
from bench.registry import BACKBONES, RegistryError, did_you_mean

TIMM_PREFIX = "timm:"


def resolve_spec(name: str) -> BackboneSpec:
    """The spec a backbone name stands for: registered names first, then ``timm:NAME[@stage]``."""
    if name in BACKBONES:
        return BACKBONES.get(name)
    if name.startswith(TIMM_PREFIX):
        model, _, stage = name.removeprefix(TIMM_PREFIX).partition("@")
        return timm_spec(model, stage or None, name=name)
    raise RegistryError(f"{BACKBONES.unknown_message(name)} Any timm model: timm:NAME, or timm:NAME@STAGE "
                        f"for a convnet's earlier stage (e.g. timm:resnet50@3).")


def timm_spec(
    model: str, stage: int | str | None = None, *, name: str | None = None, summary: str | None = None,
    random_init: bool = False,
) -> BackboneSpec:
    """A backbone spec for timm's ``model``, read from the model (see module docstring).

    ``stage`` picks a convnet's feature stage by index into ``feature_info`` or by module name
    (``3`` or ``"layer3"`` for a ResNet); ViTs take none. ``random_init`` builds it without weights.
    """
    net = _meta_model(model)
    cfg, is_vit = net.pretrained_cfg, _is_vit(net)
    geometry = f"input {cfg['input_size'][1]}x{cfg['input_size'][2]}"
    if is_vit:
        if stage is not None:
            raise RegistryError(f"timm {model!r} is a ViT: it takes no @stage (its features are the last "
                                f"block's patch tokens); use timm:{model}")
        _check_dynamic_size(model)
        patch = tuple(net.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise RegistryError(f"timm {model!r} has non-square {patch[0]}x{patch[1]} patches; expected square ones")
        stride, dim, index, what = patch[0], net.num_features, None, f"ViT, patch {patch[0]}"
    else:
        index = _stage_index(model, net.feature_info, stage)
        info = net.feature_info[index]
        stride, dim, what = info["reduction"], info["num_chs"], f"stage {index} ({info['module']})"
    return BackboneSpec(
        name or f"{TIMM_PREFIX}{model}" + (f"@{stage}" if stage is not None else ""), timm_id=model,
        stride=stride, dim=dim, summary=summary or f"timm {model}: {what}, {geometry}", is_vit=is_vit,
        stage=index, random_init=random_init,
    )


def describe(spec: BackboneSpec) -> str:
    """One line for ``list --backbones``: stride, dim, its config's input mean/std and the summary, without weights."""
    mean, std = input_stats(timm.models.get_pretrained_cfg(spec.timm_id).to_dict(), "config")
    stats = f"mean {_short(mean)} std {_short(std)}"
    return f"{spec.name:24s} stride {spec.stride:2d}  dim {spec.dim:4d}  {stats}  {spec.summary}"


def _short(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _is_vit(net: nn.Module) -> bool:
    """A plain-ViT layout: a patch embedding and prefix tokens before one grid of patch tokens."""
    return hasattr(net, "patch_embed") and hasattr(net, "num_prefix_tokens")


def _meta_model(model: str) -> nn.Module:
    """timm's ``model`` without weights on the meta device; an unknown name or tag gets a suggestion."""
    arch, tag = timm.models.split_model_name_tag(model)
    if not timm.is_model(arch):
        raise RegistryError(f"unknown timm model {arch!r}.{did_you_mean(arch, timm.list_models())} "
                            f"See timm.list_models('*{arch.split('_')[0]}*') for the names timm knows.")
    if tag and model not in timm.list_pretrained(f"{arch}.*"):
        raise RegistryError(f"timm model {arch!r} has no pretrained tag {tag!r}."
                            f"{did_you_mean(model, timm.list_pretrained(f'{arch}.*'))} "
                            f"Known: {', '.join(timm.list_pretrained(f'{arch}.*')) or 'none'}.")
    with torch.device("meta"):
        return timm.create_model(model, pretrained=False)


def _check_dynamic_size(model: str) -> None:
    """ViTs run at any image size through timm's dynamic_img_size; a family without it is refused."""
    try:
        with torch.device("meta"):
            timm.create_model(model, pretrained=False, dynamic_img_size=True, dynamic_img_pad=True)
    except TypeError as exc:
        raise RegistryError(f"timm {model!r} is a ViT without timm's dynamic_img_size, so it takes only its "
                            f"training image size; use a ViT family that has it (vit_*, eva02_*, deit_*)") from exc


def _stage_index(model: str, feature_info: list[dict], stage: int | str | None) -> int:
    """Index into ``feature_info`` of a stage given by index or module name (None: the last)."""
    if stage is None:
        return len(feature_info) - 1
    modules = [info["module"] for info in feature_info]
    if str(stage).isdigit() and int(stage) < len(feature_info):
        return int(stage)
    if stage in modules:
        return modules.index(stage)
    stages = ", ".join(f"{i} ({info['module']}: stride {info['reduction']}, {info['num_chs']} ch)"
                       for i, info in enumerate(feature_info))
    raise RegistryError(f"timm {model!r} has no stage {stage!r}.{did_you_mean(str(stage), modules)} "
                        f"Its stages: {stages}; e.g. timm:{model}@{len(modules) - 2}.")
