"""Fitting, a stage of the pipeline the runner owns: each method declares how it is fitted
(``Upsampler.fit``) and ``fit_method`` does it before the method is scored."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.backbones import Backbone
    from bench.running.context import RunContext
    from methods.base import Upsampler

FIT_KINDS = ("none", "dataset")
"""Per-image fitting (FeatUp implicit, DIP) joins here once its stage and cache exist."""


def fit_method(method: "Upsampler", backbone: "Backbone", context: "RunContext") -> None:
    """Fit ``method`` as it declares: load or train dataset weights; nothing for "none"."""
    if method.fit not in FIT_KINDS:
        raise ValueError(f"method {method.name!r} declares fit={method.fit!r}; expected one of {FIT_KINDS} "
                         f"(per-image fitting is not available yet)")
    if method.fit == "dataset":
        from bench.fitting.train import ensure_trained  # torch training code only where a method needs it

        ensure_trained(method, backbone, context)
