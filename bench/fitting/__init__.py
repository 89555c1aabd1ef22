"""Fitting, a stage of the pipeline the runner owns: each method declares how it is fitted
(``Upsampler.fit``) and ``fit_method`` does it before the method is scored."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import torch

    from bench.backbones import Backbone
    from bench.core.context import RunContext
    from methods.base import Upsampler

FIT_KINDS = ("none", "dataset", "image")
"""none: nothing to fit; dataset: weights trained once with the multi-view loss (bench.fitting.train);
image: a network fitted to each image (bench.fitting.per_image), cached per image."""


def fit_method(
    method: "Upsampler", backbone: "Backbone", context: "RunContext", images: "Iterable[torch.Tensor]" = (),
) -> None:
    """Fit ``method`` as it declares: load or train dataset weights, or fit (or load) each of ``images``.

    A per-image method fits any image it is later given on demand too; passing the images a
    cell will score fits them up front with a progress bar.
    """
    if method.fit not in FIT_KINDS:
        raise ValueError(f"method {method.name!r} declares fit={method.fit!r}; expected one of {FIT_KINDS}")
    # torch training code is imported only where a method needs it
    if method.fit == "dataset":
        from bench.fitting.train import ensure_trained

        ensure_trained(method, backbone, context)
    elif method.fit == "image":
        from bench.fitting.fit_cache import ImageFits

        fits = ImageFits(method, backbone, context)
        method.attach_fits(fits)
        fits.prefit(images)
