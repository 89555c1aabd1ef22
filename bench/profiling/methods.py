"""Inference time and peak memory of whole upsamplers, one image at a time.

The input mimics the paper's ViT setting (stride 16: 14^2 features for a 224^2
image; or a given backbone's stride and dim) with random features and a random image: timing does not depend on weight
values, so untrained weights serve (the ``weights`` column says what each row ran with). A method entry may name a
kernel variant, ``featup_jbu:reference``, to time the same stack on another adaptive-conv implementation. A failure
(out of memory, error) is recorded on its row and the other rows still run.

Per-image methods (``fit = "image"``) are first fitted to the row's image with ``FIT``, untimed: a render's cost does
not depend on how long the fit ran. A method whose ``forward`` itself takes seconds per image (``slow_forward``) is
profiled only when named; by default its rows are ``skipped`` and say why.

Given a backbone, each row also times the whole pipeline a task runs (``Upsampler.upsample``): the method's backbone
passes on an image of the output's size, plus the upsampling. That is where large_image (the backbone on a 2x image)
and strided (the backbone at half its stride) pay; their upsampling alone is bilinear's.

``tile`` times tiled inference (``Upsampler.forward_tiled``); a method that cannot tile runs
whole and its row says why. ``dtype`` float16 stores the output in half precision (computed in
float32; tiled, each tile is cast as it is written, so the float32 output never exists). A row
predicted not to fit in memory is ``oom`` without running: the prediction scales the method's
measured peak at the smallest size (whole maps: by pixel count; tiles: the output itself plus the
working memory of one tile).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench.core.failures import describe_failure
from bench.fitting.per_image import FIT_SETTINGS, fit_images
from bench.profiling.profile import MARGIN, available_bytes, measure
from bench.registry import METHODS
from methods.flops import counted_gflops

if TYPE_CHECKING:
    from bench.backbones import Backbone
    from methods.base import Upsampler

STRIDE = 16
FIT = replace(FIT_SETTINGS["default"], steps=2)
"""How a per-image method is fitted before it is timed: the default profile's fit, cut to 2 steps (untimed)."""
COLUMNS = ["method", "size", "channels", "lr_size", "device", "tile", "dtype", "weights", "params", "gflops", "ms",
           "peak_mb", "backbone_passes", "pipeline_ms", "pipeline_peak_mb", "status", "message"]
"""``weights``: what the row ran with (none, untrained, or a per-image fit of ``FIT.steps`` steps); ``params``: the
method's trainable parameters as built for ``channels`` (per-image methods fit theirs per image: 0); ``gflops``: the
forward the row timed, counted by methods.flops as the end-to-end task counts it (a tiled row: all its tiles, with
their halos and any statistics passes, so the tiling's extra work shows); ``backbone_passes``, ``pipeline_ms``,
``pipeline_peak_mb``: the whole pipeline with the profile's backbone (empty without one), at the backbone's dim."""


@dataclass(frozen=True)
class SyntheticBackbone:
    """What ``Upsampler.create`` and a per-image fit read from a backbone, for methods profiled without one."""

    dim: int
    stride: int = STRIDE
    name: str = "synthetic"

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, dim, ceil(H / stride), ceil(W / stride)): a fixed random projection of the image's pooled colours,
        features of the image itself for per-image methods to fit to."""
        pooled = F.adaptive_avg_pool2d(image, [math.ceil(s / self.stride) for s in image.shape[-2:]])
        weight = torch.randn(self.dim, 3, generator=torch.Generator().manual_seed(0)).to(image)
        return torch.einsum("kc,bchw->bkhw", weight, pooled)


class CountingBackbone:
    """A backbone that counts its passes (anything else is the backbone's own), so a pipeline row says how many it
    ran."""

    def __init__(self, backbone: "Backbone") -> None:
        self.backbone, self.passes = backbone, 0

    def features(self, image: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return self.backbone.features(image)

    def __getattr__(self, name: str) -> object:
        return getattr(self.backbone, name)


@dataclass(frozen=True)
class Setup:
    """What every row of one profile shares."""

    channels: int
    device: str = "cpu"
    repeats: int = 3
    tile: int | None = None
    stride: int = STRIDE
    dtype: torch.dtype = torch.float32
    backbone: "Backbone | None" = None
    """Times the whole pipeline too (random weights serve, as for the methods)."""


def build(spec: str, channels: int, stride: int = STRIDE) -> "Upsampler":
    """``build_for`` synthetic features of ``channels`` at ``stride``: what the upsampler-only columns time."""
    return build_for(spec, SyntheticBackbone(channels, stride))


def build_for(spec: str, backbone: "Backbone | SyntheticBackbone") -> "Upsampler":
    """A method from ``name`` or ``name:kernel_impl`` for ``backbone``, with untrained weights, in eval mode."""
    name, _, impl = spec.partition(":")
    upsampler = METHODS.get(name).create(backbone)
    if impl:
        if not hasattr(upsampler, "kernel_impl"):
            raise ValueError(f"method {name!r} has no kernel_impl to set (from {spec!r})")
        upsampler.kernel_impl = impl
    return upsampler.eval()


def fit_to(upsampler: "Upsampler", backbone: "Backbone | SyntheticBackbone", image: torch.Tensor) -> None:
    """Make ``upsampler`` able to run on ``image``: a per-image method is fitted to it (``FIT``), as a run fits every
    image before scoring it; other methods need nothing."""
    if upsampler.fit == "image":
        fit = fit_images(upsampler, backbone, image, FIT, [0]).fits[0]
        upsampler.attach_fits(lambda images: [fit] * len(images))


def weights_used(upsampler: "Upsampler") -> str:
    """The ``weights`` column: timing depends on the architecture, not on the values, so nothing is trained."""
    return {"dataset": "untrained", "image": f"fitted per image: {FIT.steps} steps"}.get(upsampler.fit, "none")


def predicted_mb(reference: tuple[int, float], size: int, channels: int, tile: int | None, itemsize: int = 4) -> float:
    """Peak MB at ``size`` from a peak measured at a smaller size: (size, peak MB) of a run whose
    output has ``itemsize`` bytes per value."""
    ref_size, ref_mb = reference
    if tile is None:
        return ref_mb * (size / ref_size) ** 2
    out_mb = lambda s: channels * s * s * itemsize / 2**20  # noqa: E731 - the output of one image
    work = max(0.0, ref_mb - out_mb(ref_size)) * (min(size, tile) / ref_size) ** 2
    return out_mb(size) + work


def random_input(size: int, channels: int, stride: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (1, C, ceil(size / stride)²) features and a (1, 3, size²) image: what every profiled call is given."""
    generator = torch.Generator().manual_seed(0)
    lr = math.ceil(size / stride)
    lr_feats = torch.randn(1, channels, lr, lr, generator=generator)
    return lr_feats.to(device), torch.rand(1, 3, size, size, generator=generator).to(device)


def oom_message(reference: tuple[int, float] | None, size: int, channels: int, tile: int | None, itemsize: int,
                device: str) -> str | None:
    """Why a call whose peak is predicted from ``reference`` (size, peak MB) is not run; None when it fits."""
    if reference is None:
        return None
    need = predicted_mb(reference, size, channels, tile, itemsize)
    budget = MARGIN * available_bytes(device) / 2**20
    if need <= budget:
        return None
    return f"predicted {need:.0f} MB > budget {budget:.0f} MB (from {reference[1]:.0f} MB at {reference[0]}²); not run"


def upsampler_columns(spec: str, size: int, setup: Setup, reference: tuple[int, float] | None) -> dict:
    """The upsampling alone, on random features: what the method costs beyond the backbone."""
    stand_in = SyntheticBackbone(setup.channels, setup.stride)
    upsampler = build_for(spec, stand_in).to(setup.device)
    with torch.no_grad():
        fallback = upsampler.tiling_fallback() if setup.tile else None
    tile = None if fallback else setup.tile
    columns = {"tile": tile or "", "weights": weights_used(upsampler),
               "params": sum(p.numel() for p in upsampler.parameters()),
               "message": f"untiled: {fallback}" if fallback else ""}
    if why := oom_message(reference, size, setup.channels, tile, setup.dtype.itemsize, setup.device):
        return {**columns, "status": "oom", "message": why}
    lr_feats, image = random_input(size, setup.channels, setup.stride, setup.device)
    fit_to(upsampler, stand_in, image)

    def run() -> torch.Tensor:
        with torch.no_grad():
            if tile:
                return upsampler.forward_tiled(lr_feats, image, (size, size), tile, dtype=setup.dtype)
            return upsampler(lr_feats, image, (size, size)).to(setup.dtype)

    result = measure(run, setup.device, repeats=setup.repeats, warmup=1)
    # a tiled row's own forward: never the whole map's memory
    return {**columns, "ms": result.ms, "peak_mb": result.peak_mb, "gflops": counted_gflops(upsampler, run)}


def pipeline_columns(spec: str, size: int, setup: Setup, tile: int | None,
                     reference: tuple[int, float] | None) -> dict:
    """The pipeline a task runs (``Upsampler.upsample``): the method's backbone passes on an image of the output's
    size, then its upsampling, at the backbone's dim."""
    backbone = setup.backbone
    if why := oom_message(reference, size, backbone.dim, None, setup.dtype.itemsize, setup.device):
        return {"status": "oom", "message": f"pipeline: {why}"}  # the backbone runs whole, tiled or not
    upsampler = build_for(spec, backbone).to(setup.device)
    _, image = random_input(size, backbone.dim, backbone.stride, setup.device)
    fit_to(upsampler, backbone, image)
    counted = CountingBackbone(backbone)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return upsampler.upsample(counted, image, (size, size), tile=tile, dtype=setup.dtype)

    run()  # the warm-up, counting one call's backbone passes
    passes = counted.passes
    result = measure(run, setup.device, repeats=setup.repeats, warmup=0)
    return {"backbone_passes": passes, "pipeline_ms": result.ms, "pipeline_peak_mb": result.peak_mb}


def merged(row: dict, columns: dict) -> dict:
    """``row`` updated with ``columns``, messages joined (an untiled row's pipeline can fail too)."""
    message = "; ".join(m for m in (row["message"], columns.get("message", "")) if m)
    return {**row, **columns, "message": message[:300]}


def first_row(spec: str, size: int, setup: Setup) -> dict:
    """A row before anything ran: its identity, every measurement empty."""
    nan = float("nan")
    return {"method": spec, "size": size, "channels": setup.channels, "lr_size": math.ceil(size / setup.stride),
            "device": setup.device, "tile": "", "dtype": str(setup.dtype).removeprefix("torch."), "weights": "",
            "params": nan, "gflops": nan, "ms": nan, "peak_mb": nan, "backbone_passes": nan, "pipeline_ms": nan,
            "pipeline_peak_mb": nan, "status": "ok", "message": ""}


def profile_one(spec: str, size: int, setup: Setup, reference: dict | None = None) -> dict:
    """One (method, size) row; ``reference``: the method's first row that ran, whose peaks predict this one's."""
    row, stage = first_row(spec, size, setup), ""
    peak = lambda column: (reference["size"], reference[column]) if reference else None  # noqa: E731
    try:
        row = merged(row, upsampler_columns(spec, size, setup, peak("peak_mb")))
        if setup.backbone is not None and row["status"] == "ok":
            stage = "pipeline: "
            row = merged(row, pipeline_columns(spec, size, setup, row["tile"] or None, peak("pipeline_peak_mb")))
    except Exception as exc:  # one method's failure must not lose the other rows
        status, message = describe_failure(exc)
        row = merged(row, {"status": status, "message": stage + message})
    finally:
        if setup.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return row


def left_out(name: str) -> str | None:
    """Why the default profile leaves a method out (its forward alone takes seconds per image), or None."""
    reason = METHODS.get(name).slow_forward
    return f"left out by default: {reason}; profile it with -m {name}" if reason else None


def profile_methods(
    methods: list[str] | None, sizes: list[int], channels: int, device: str = "cpu", repeats: int = 3,
    progress: bool = True, tile: int | None = None, stride: int = STRIDE, dtype: torch.dtype = torch.float32,
    backbone: "Backbone | None" = None,
) -> pd.DataFrame:
    """One row per (method, size): ms and peak MB per image, the tile used, with ``backbone`` the whole pipeline's
    too, status ok / oom / error / skipped with its message.

    ``methods`` None: every registered method, those with a ``slow_forward`` skipped. Sizes run smallest first,
    so each method's first measured peak predicts whether a larger size fits.
    """
    setup = Setup(channels, device, repeats, tile, stride, dtype, backbone)
    skips = {m: left_out(m) for m in METHODS.names()} if methods is None else {}
    jobs = [(m, s) for m in (METHODS.names() if methods is None else methods) for s in sorted(sizes)]
    rows, references = [], {}
    for m, s in tqdm(jobs, desc="profile methods", disable=not progress):
        if skips.get(m):
            rows.append({**first_row(m, s, setup), "status": "skipped", "message": skips[m]})
            continue
        rows.append(profile_one(m, s, setup, references.get(m)))
        if rows[-1]["status"] == "ok":
            references.setdefault(m, rows[-1])
    return pd.DataFrame(rows, columns=COLUMNS).astype({"params": "Int64", "backbone_passes": "Int64"})  # NaN: not run
