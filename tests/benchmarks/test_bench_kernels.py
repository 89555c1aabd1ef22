"""pytest-benchmark timings of the adaptive conv (run: pytest -m benchmark --benchmark-enable tests/benchmarks)."""
from __future__ import annotations

import pytest
import torch

from kernels.adaptive_conv import adaptive_conv

SIZE, CHANNELS, RADIUS = 112, 128, 3  # moderate: the unfold reference needs ~1 GB here


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    T = 2 * RADIUS + 1
    V = torch.randn(1, CHANNELS, SIZE + 2 * RADIUS, SIZE + 2 * RADIUS, generator=g)
    K = torch.rand(1, SIZE, SIZE, T, T, generator=g)
    dY = torch.randn(1, CHANNELS, SIZE, SIZE, generator=g)
    return V, K, dY


@pytest.mark.benchmark
@pytest.mark.parametrize("impl", ["reference", "torch", "numba"])
def test_bench_kernel_forward(benchmark, data, impl):
    V, K, _ = data
    benchmark.group = "adaptive conv forward"

    def run():
        with torch.no_grad():
            return adaptive_conv(V, K, impl)

    assert benchmark(run).shape == (1, CHANNELS, SIZE, SIZE)


@pytest.mark.benchmark
@pytest.mark.parametrize("impl", ["reference", "torch", "numba"])
def test_bench_kernel_backward(benchmark, data, impl):
    V, K, dY = data
    benchmark.group = "adaptive conv backward (dV and dK)"
    Vg, Kg = V.clone().requires_grad_(), K.clone().requires_grad_()
    Y = adaptive_conv(Vg, Kg, impl)
    dV, dK = benchmark(lambda: torch.autograd.grad(Y, (Vg, Kg), dY, retain_graph=True))
    assert dV.shape == V.shape and dK.shape == K.shape
