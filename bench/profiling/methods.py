"""Inference time and peak memory of whole upsamplers, one image at a time.

The input mimics the paper's ViT setting (stride 16: 14^2 features for a 224^2
image; or a given backbone's stride and dim) with random features and a random image: timing does not depend on weight
values, so untrained weights serve. A method entry may name a kernel variant,
``featup_jbu:reference``, to time the same stack on another adaptive-conv
implementation. A failure (out of memory, error) is recorded on its row and the
other rows still run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.profiling.profile import measure
from bench.running.failures import describe_failure
from bench.registry import METHODS

STRIDE = 16
COLUMNS = ["method", "size", "channels", "lr_size", "device", "ms", "peak_mb", "status", "message"]


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


def profile_one(spec: str, size: int, channels: int, device: str, repeats: int, stride: int = STRIDE) -> dict:
    row = {"method": spec, "size": size, "channels": channels, "lr_size": math.ceil(size / stride), "device": device,
           "ms": float("nan"), "peak_mb": float("nan"), "status": "ok", "message": ""}
    try:
        upsampler = build(spec, channels, stride).to(device)
        generator = torch.Generator().manual_seed(0)
        lr_feats = torch.randn(1, channels, row["lr_size"], row["lr_size"], generator=generator).to(device)
        image = torch.rand(1, 3, size, size, generator=generator).to(device)

        def run() -> torch.Tensor:
            with torch.no_grad():
                return upsampler(lr_feats, image, (size, size))

        result = measure(run, device, repeats=repeats, warmup=1)
        row.update(ms=result.ms, peak_mb=result.peak_mb)
    except Exception as exc:  # one method's failure must not lose the other rows
        status, message = describe_failure(exc)
        row.update(status=status, message=message[:300])
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return row


def profile_methods(
    methods: list[str], sizes: list[int], channels: int, device: str = "cpu", repeats: int = 3,
    progress: bool = True, stride: int = STRIDE,
) -> pd.DataFrame:
    """One row per (method, size): ms and peak MB per image, status ok / oom / error with its message."""
    jobs = [(m, s) for m in methods for s in sizes]
    rows = [profile_one(m, s, channels, device, repeats, stride)
            for m, s in tqdm(jobs, desc="profile methods", disable=not progress)]
    return pd.DataFrame(rows, columns=COLUMNS)
