"""Inference time and peak memory of whole upsamplers, one image at a time.

The input mimics the paper's ViT setting (stride 16: 14^2 features for a 224^2
image; or a given backbone's stride and dim) with random features and a random image: timing does not depend on weight
values, so untrained weights serve. A method entry may name a kernel variant,
``featup_jbu:reference``, to time the same stack on another adaptive-conv
implementation. A failure (out of memory, error) is recorded on its row and the
other rows still run.

``tile`` times tiled inference (``Upsampler.forward_tiled``); a method that cannot tile runs
whole and its row says why. ``dtype`` float16 stores the output in half precision (computed in
float32; tiled, each tile is cast as it is written, so the float32 output never exists). A row
predicted not to fit in memory is ``oom`` without running: the prediction scales the method's
measured peak at the smallest size (whole maps: by pixel count; tiles: the output itself plus the
working memory of one tile).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.profiling.profile import MARGIN, available_bytes, measure
from bench.core.failures import describe_failure
from bench.registry import METHODS
from methods.flops import counted_gflops

STRIDE = 16
COLUMNS = ["method", "size", "channels", "lr_size", "device", "tile", "dtype", "params", "gflops", "ms", "peak_mb",
           "status", "message"]
"""``params``: the method's trainable parameters as built for ``channels`` (per-image methods fit theirs per
image: 0); ``gflops``: the forward the row timed, counted by methods.flops as the end-to-end task counts it
(a tiled row: all its tiles, with their halos and any statistics passes, so the tiling's extra work shows)."""


@dataclass(frozen=True)
class SyntheticBackbone:
    """What ``Upsampler.create`` reads from a backbone, for methods built without one."""

    dim: int
    stride: int = STRIDE
    name: str = "synthetic"


def build(spec: str, channels: int, stride: int = STRIDE) -> torch.nn.Module:
    """A method from ``name`` or ``name:kernel_impl``, with untrained weights, in eval mode."""
    name, _, impl = spec.partition(":")
    upsampler = METHODS.get(name).create(SyntheticBackbone(channels, stride))
    if impl:
        if not hasattr(upsampler, "kernel_impl"):
            raise ValueError(f"method {name!r} has no kernel_impl to set (from {spec!r})")
        upsampler.kernel_impl = impl
    return upsampler.eval()


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


def profile_one(spec: str, size: int, channels: int, device: str, repeats: int, tile: int | None = None,
                reference: tuple[int, float] | None = None, stride: int = STRIDE,
                dtype: torch.dtype = torch.float32) -> dict:
    row = {"method": spec, "size": size, "channels": channels, "lr_size": math.ceil(size / stride), "device": device,
           "tile": "", "dtype": str(dtype).removeprefix("torch."), "params": float("nan"), "gflops": float("nan"),
           "ms": float("nan"), "peak_mb": float("nan"), "status": "ok", "message": ""}
    try:
        upsampler = build(spec, channels, stride).to(device)
        row["params"] = sum(p.numel() for p in upsampler.parameters())
        with torch.no_grad():
            fallback = upsampler.tiling_fallback() if tile else None
        row["tile"] = tile if tile and not fallback else ""
        if fallback:
            row["message"] = f"untiled: {fallback}"
        if reference is not None:
            need = predicted_mb(reference, size, channels, row["tile"] or None, dtype.itemsize)
            budget = MARGIN * available_bytes(device) / 2**20
            if need > budget:
                return {**row, "status": "oom",
                        "message": f"predicted {need:.0f} MB > budget {budget:.0f} MB (from {reference[1]:.0f} MB "
                                   f"at {reference[0]}²); not run"}
        lr_feats, image = random_input(size, channels, stride, device)

        def run() -> torch.Tensor:
            with torch.no_grad():
                if row["tile"]:
                    return upsampler.forward_tiled(lr_feats, image, (size, size), tile, dtype=dtype)
                return upsampler(lr_feats, image, (size, size)).to(dtype)

        result = measure(run, device, repeats=repeats, warmup=1)
        row.update(ms=result.ms, peak_mb=result.peak_mb)
        row["gflops"] = counted_gflops(upsampler, run)  # a tiled row's own forward: never the whole map's memory
    except Exception as exc:  # one method's failure must not lose the other rows
        status, message = describe_failure(exc)
        row.update(status=status, message=message[:300])
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return row


def profile_methods(
    methods: list[str], sizes: list[int], channels: int, device: str = "cpu", repeats: int = 3,
    progress: bool = True, tile: int | None = None, stride: int = STRIDE, dtype: torch.dtype = torch.float32,
) -> pd.DataFrame:
    """One row per (method, size): ms and peak MB per image, the tile used, status ok / oom / error with its message.

    Sizes run smallest first, so each method's first measured peak predicts whether a larger size fits.
    """
    jobs = [(m, s) for m in methods for s in sorted(sizes)]
    rows, references = [], {}
    for m, s in tqdm(jobs, desc="profile methods", disable=not progress):
        rows.append(profile_one(m, s, channels, device, repeats, tile, references.get(m), stride, dtype))
        if rows[-1]["status"] == "ok":
            references.setdefault(m, (s, rows[-1]["peak_mb"]))
    return pd.DataFrame(rows, columns=COLUMNS)
