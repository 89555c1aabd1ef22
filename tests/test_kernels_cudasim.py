"""numba.cuda kernels under the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1), against the unfold oracle:
the launchers, and the torch-facing wrappers (``forward``, ``grad_v``, ``grad_k`` through the autograd
Function) with torch's current stream handed to Numba as an external stream.

The simulator must be switched on before numba is imported, and numba is already imported in
the pytest process, so each check runs in a fresh interpreter. On a GPU, ``pytest -m gpu`` runs the
same wrappers on real CUDA tensors (tests/test_kernels.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import numpy as np
    import torch
    from numba import cuda

    from kernels import numba_cuda
    from kernels.reference import unfold_reference

    from numba import config

    assert config.ENABLE_CUDASIM, "the simulator is off"
    block = (8, 8, 1)  # the simulator runs each thread in Python: no idle threads
    for B, C, H, W, r in [(2, 2, 8, 7, 1), (1, 2, 6, 8, 3)]:
        T = 2 * r + 1
        g = torch.Generator().manual_seed(r)
        V = torch.randn(B, C, H + 2 * r, W + 2 * r, generator=g, dtype=torch.float64, requires_grad=True)
        K = torch.randn(B, H, W, T, T, generator=g, dtype=torch.float64, requires_grad=True)
        dY = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
        Y = unfold_reference(V, K)
        Y.backward(dY)
        dev = lambda t: cuda.to_device(np.ascontiguousarray(t.detach().numpy()))
        k = dev(K.reshape(B, H, W, T * T))
        y = cuda.device_array((B, C, H, W), np.float64)
        numba_cuda.forward_into(dev(V), k, y, block=block)
        dv = cuda.device_array(tuple(V.shape), np.float64)
        numba_cuda.grad_v_into(dev(dY), k, dv, block=block)
        dk = cuda.device_array((B, H, W, T * T), np.float64)
        numba_cuda.grad_k_into(dev(dY), dev(V), dk, block=block)
        np.testing.assert_allclose(y.copy_to_host(), Y.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dv.copy_to_host(), V.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dk.copy_to_host(), K.grad.reshape(B, H, W, T * T).numpy(), rtol=1e-10, atol=1e-10)
        assert (np.abs(dk.copy_to_host()).sum(axis=(0, 1, 2)) > 0).all(), "a tap got no gradient"
    print("cudasim ok")
""")


def test_kernel_numba_cuda_matches_reference_under_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cudasim ok" in done.stdout


WRAPPER_SCRIPT = textwrap.dedent("""
    from types import SimpleNamespace

    import torch
    from numba import config, cuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    from kernels import numba_cuda
    from kernels.adaptive_conv import AdaptiveConv
    from kernels.reference import unfold_reference

    assert config.ENABLE_CUDASIM, "the simulator is off"
    # What the simulator lacks, and no CUDA torch: a CPU tensor stands in for a CUDA one. Its Numba view
    # shares its memory (as __cuda_array_interface__ does on a GPU), so what a kernel writes is in the tensor.
    TORCH_STREAM = 0x5EED
    streams = []
    cuda.as_cuda_array = lambda t: FakeCUDAArray(t.numpy())
    cuda.external_stream = lambda handle: streams.append(handle) or cuda.stream()
    torch.cuda.current_stream = lambda device=None: SimpleNamespace(cuda_stream=TORCH_STREAM)

    # the default block (32, 8): 33 columns span two blocks, as do grad V's 10 rows
    B, C, H, W, r = 1, 2, 8, 33, 1
    T = 2 * r + 1
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        g = torch.Generator().manual_seed(5)
        V = torch.randn(B, C, H + 2 * r, W + 2 * r, generator=g, dtype=dtype, requires_grad=True)
        K = torch.randn(B, H, W, T, T, generator=g, dtype=dtype, requires_grad=True)
        dY = torch.randn(B, C, H, W, generator=g, dtype=dtype)
        Y = AdaptiveConv.apply(V, K, numba_cuda)
        Y.backward(dY)
        Vr, Kr = V.detach().clone().requires_grad_(), K.detach().clone().requires_grad_()
        Yr = unfold_reference(Vr, Kr)
        Yr.backward(dY)
        for got, want in ((Y, Yr), (V.grad, Vr.grad), (K.grad, Kr.grad)):
            assert got.dtype == dtype and got.shape == want.shape and got.is_contiguous()
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        assert (K.grad.abs().sum((0, 1, 2)) > 0).all(), "a tap got no gradient"
    # every wrapper call ran on torch's current stream: forward, grad V and grad K, per dtype
    assert streams == [TORCH_STREAM] * 6, streams
    print("wrappers ok")
""")


def test_numba_cuda_torch_wrappers_and_stream_under_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", WRAPPER_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrappers ok" in done.stdout
