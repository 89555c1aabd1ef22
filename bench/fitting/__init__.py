"""Fitting, a stage of the pipeline the runner owns: each method declares how it is fitted
(``Upsampler.fit``) and ``fit_method`` does it before the method is scored."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.backbones import Backbone
    from bench.running.context import RunContext
    from methods.base import Upsampler

FIT_KINDS = ("none", "dataset", "per_image")


def fit_method(method: "Upsampler", backbone: "Backbone", context: "RunContext") -> None:
    """Fit ``method`` as it declares: load or train dataset weights; nothing for "none"."""
    if method.fit not in FIT_KINDS:
        raise ValueError(f"method {method.name!r} declares fit={method.fit!r}; expected one of {FIT_KINDS}")
    if method.fit == "per_image":
        raise NotImplementedError(f"method {method.name!r} declares fit='per_image', whose fitting stage "
                                  f"is not built yet; declare 'none' or 'dataset'")
    if method.fit == "dataset":
        from bench.fitting.train import ensure_trained  # torch training code only where a method needs it

        ensure_trained(method, backbone, context)
