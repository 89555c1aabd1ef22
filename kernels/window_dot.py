"""Window dot products L[b,y,x,i,j] = <A[b,:,y+i,x+j], Q[b,:,y,x]> through the adaptive-conv kernels.

This is the adaptive conv's filter gradient with dY = Q and V = A, so the same
kernels compute it and its backward without ever holding a (2r+1)^2-fold copy
of A (an unfold of 32 channels at 224^2, batch 4, is 1.3 GB). FeatUp's range
kernel (A = reflect-padded guidance, Q = the guidance) and SAPA's query-key
logits (A = zero-padded keys, Q = queries) are both this operation. Only the
public ``adaptive_conv`` and its ``filter_grad`` are used, so every impl works.
"""
from __future__ import annotations

import torch

from kernels.adaptive_conv import adaptive_conv, filter_grad


class WindowDot(torch.autograd.Function):
    """Differentiable in both A (padded, (B,D,H+2r,W+2r)) and Q ((B,D,H,W))."""

    @staticmethod
    def forward(ctx, padded: torch.Tensor, q: torch.Tensor, impl: str) -> torch.Tensor:
        ctx.save_for_backward(padded, q)
        ctx.impl = impl
        return filter_grad(padded, q, impl)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        padded, q = ctx.saved_tensors
        grad = grad.contiguous()
        with torch.enable_grad():
            values = padded.detach().requires_grad_()
            d_padded, = torch.autograd.grad(adaptive_conv(values, grad, impl=ctx.impl), values, q)
        return d_padded, adaptive_conv(padded, grad, impl=ctx.impl), None


def window_dot(padded: torch.Tensor, q: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """(B,D,H+2r,W+2r), (B,D,H,W) -> (B,H,W,2r+1,2r+1) dot products over each pixel's window."""
    return WindowDot.apply(padded.contiguous(), q.contiguous(), impl)
