"""The public JBU adaptive convolution: input checks, one autograd Function, backend choice.

``adaptive_conv(V, K, impl)`` computes Y[b,c,y,x] = sum_ij K[b,y,x,i,j] V[b,c,y+i,x+j] with
V (B,C,H+2r,W+2r) already padded and K (B,H,W,2r+1,2r+1). Non-contiguous inputs are made
contiguous (one copy) rather than refused: the kernels need flat row-major memory, and a
caller's permuted view is a legitimate input.
"""
from __future__ import annotations

from contextlib import contextmanager
from types import ModuleType, SimpleNamespace
from typing import Iterator

import torch

from kernels import numba_cpu, reference

IMPLS = ("reference", "torch", "numba")

_TORCH = SimpleNamespace(forward=reference.tap_forward, grad_v=reference.tap_grad_v, grad_k=reference.tap_grad_k)


_FLOP_COUNTERS: list[list[int]] = []


@contextmanager
def counting_flops() -> Iterator[list[int]]:
    """Count the FLOPs (multiply-add = 2) of every ``adaptive_conv`` and ``filter_grad`` call made inside:
    2*B*C*(2r+1)^2*H*W each, summed into the yielded one-item list.

    torch's FlopCounterMode does not see them: the Numba kernels run no aten op, and the torch tap
    loop's ``addcmul_`` is not an op it counts. Calls with impl "reference" are left out, since
    FlopCounterMode counts the unfold oracle's einsum itself; count under both to get the total.
    """
    count = [0]
    _FLOP_COUNTERS.append(count)
    try:
        yield count
    finally:
        _FLOP_COUNTERS.remove(count)


def _count(impl: str, B: int, C: int, H: int, W: int, T: int) -> None:
    if _FLOP_COUNTERS and impl != "reference":
        for count in _FLOP_COUNTERS:
            count[0] += 2 * B * C * T * T * H * W


def _numba_backend(device: torch.device) -> ModuleType:
    if device.type == "cuda":
        from kernels import numba_cuda

        return numba_cuda
    if device.type == "cpu":
        return numba_cpu
    raise ValueError(f"impl 'numba' runs on cpu or cuda tensors, got device {device}")


class AdaptiveConv(torch.autograd.Function):
    """Forward and both gradients from a backend with forward(V,K), grad_v(dY,K), grad_k(dY,V)."""

    @staticmethod
    def forward(ctx, V: torch.Tensor, K: torch.Tensor, backend) -> torch.Tensor:
        ctx.backend = backend
        ctx.save_for_backward(V, K)
        return backend.forward(V, K)

    @staticmethod
    def backward(ctx, dY: torch.Tensor):
        V, K = ctx.saved_tensors
        dY = dY.contiguous()
        dV = ctx.backend.grad_v(dY, K) if ctx.needs_input_grad[0] else None
        dK = ctx.backend.grad_k(dY, V) if ctx.needs_input_grad[1] else None
        return dV, dK, None


def check_inputs(V: torch.Tensor, K: torch.Tensor) -> None:
    """Raise TypeError/ValueError naming what is wrong with (V, K) and what was expected."""
    for name, t in (("V", V), ("K", K)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if V.dtype != K.dtype:
        raise TypeError(f"V and K must have the same dtype, got V {V.dtype} and K {K.dtype}")
    if V.device != K.device:
        raise ValueError(f"V and K must be on the same device, got V on {V.device} and K on {K.device}")
    if V.dim() != 4:
        raise ValueError(f"V must be 4-D (B, C, H+2r, W+2r), got shape {tuple(V.shape)}")
    if K.dim() != 5:
        raise ValueError(f"K must be 5-D (B, H, W, 2r+1, 2r+1), got shape {tuple(K.shape)}")
    B, H, W, T, T2 = K.shape
    if T != T2 or T % 2 == 0:
        raise ValueError(f"K's last two dims must be equal and odd (2r+1, 2r+1), got {T}x{T2}")
    expected = (B, V.shape[1], H + T - 1, W + T - 1)
    if tuple(V.shape) != expected:
        raise ValueError(f"V must have shape (B, C, H+2r, W+2r) = {expected} for K of shape "
                         f"{tuple(K.shape)} (radius {T // 2}), got {tuple(V.shape)}")


def adaptive_conv(V: torch.Tensor, K: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Y (B,C,H,W); impl: "auto" (the Numba kernel of the tensors' device), or one of IMPLS.

    "reference" is the unfold oracle (memory C*(2r+1)^2*H*W), "torch" the tap-loop baseline,
    "numba" the Numba kernel for the tensors' device (CPU or CUDA).
    """
    if impl not in ("auto", *IMPLS):
        raise ValueError(f"unknown impl {impl!r}; expected 'auto' or one of {', '.join(IMPLS)}")
    check_inputs(V, K)
    _count(impl, V.shape[0], V.shape[1], *K.shape[1:4])
    V, K = V.contiguous(), K.contiguous()
    if impl == "reference":
        return reference.unfold_reference(V, K)
    backend = _TORCH if impl == "torch" else _numba_backend(V.device)
    return AdaptiveConv.apply(V, K, backend)


def filter_grad(V: torch.Tensor, dY: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """dL/dK (B,H,W,2r+1,2r+1) of ``adaptive_conv(V, K, impl)`` for the output gradient dY (B,C,H,W).

    Straight from the backend's grad-K kernel (no forward pass on a dummy K); "reference"
    differentiates the unfold oracle.
    """
    T = V.shape[-1] - dY.shape[-1] + 1
    K = V.new_zeros(1).expand(dY.shape[0], *dY.shape[-2:], T, T)  # checked like a kernel, never filled
    check_inputs(V, K)
    _count(impl, V.shape[0], V.shape[1], *K.shape[1:4])
    if impl == "reference":
        with torch.enable_grad():
            K = K.contiguous().requires_grad_()
            return torch.autograd.grad(reference.unfold_reference(V.detach(), K), K, dY)[0]
    if impl not in ("auto", *IMPLS):
        raise ValueError(f"unknown impl {impl!r}; expected 'auto' or one of {', '.join(IMPLS)}")
    backend = _TORCH if impl == "torch" else _numba_backend(V.device)
    return backend.grad_k(dY.detach().contiguous(), V.detach().contiguous())
