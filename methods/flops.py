"""Counting an upsampler's FLOPs: torch's FlopCounterMode plus the adaptive convolutions it cannot see.

FlopCounterMode counts aten convolutions and matmuls; the JBU's Numba kernels and the torch tap loop
run no op it counts, so their multiply-adds are counted by ``kernels.adaptive_conv.counting_flops``,
with the method switched to its countable torch kernels while counting. Shared by ``profile methods``
and the end-to-end task, so both report the same figure for the same forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from kernels.adaptive_conv import counting_flops


@contextmanager
def countable(upsampler: torch.nn.Module) -> Iterator[None]:
    """Route the method's adaptive convolutions through ``kernels.adaptive_conv`` while counting: with
    ``kernel_impl`` "torch" every one of them is an ``adaptive_conv`` call (the JBU's CPU stage form is
    not), which ``counting_flops`` counts; the impl is restored after."""
    saved = getattr(upsampler, "kernel_impl", None)
    if saved is not None:
        upsampler.kernel_impl = "torch"
    try:
        yield
    finally:
        if saved is not None:
            upsampler.kernel_impl = saved


def counted_gflops(upsampler: torch.nn.Module, run: Callable[[], Any]) -> float:
    """GFLOPs (multiply-add = 2) of ``run()``, a forward that involves ``upsampler``, under no_grad."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), countable(upsampler), counting_flops() as kernel_flops, counter:
        run()
    return (counter.get_total_flops() + kernel_flops[0]) / 1e9
