"""JBU adaptive convolution as numba.cuda kernels, on torch CUDA tensors without copies.

One thread per output value, summing in the arrays' dtype (the ``zero`` argument sets it):
forward per (b,c,y,x); grad V in gather form per (b,c,y',x') (sums K[y'-i,x'-j,i,j]
dY[y'-i,x'-j] over in-range taps, so no atomics); grad K per (b,y,x,tap) over channels. The
tap of grad K is blockIdx.z modulo the tap count: FeatUp's public kernel used
blockIdx.z*blockIdx.z there and fed only 7 of 49 taps.

Kernels compile on first launch, so this module imports on machines without CUDA. The
``*_into`` launchers take any CUDA array (torch tensors via ``__cuda_array_interface__``, or
``numba.cuda.to_device`` arrays, which is what tests use under NUMBA_ENABLE_CUDASIM=1, with a
small ``block`` because the simulator runs every thread in Python).
"""
from __future__ import annotations

import torch
from numba import cuda

BLOCK = (32, 8, 1)  # x fastest: neighbouring threads read neighbouring addresses


@cuda.jit
def _forward_kernel(V, K, Y, zero):
    x, y = cuda.grid(2)
    C, H, W = Y.shape[1], Y.shape[2], Y.shape[3]
    b, c = cuda.blockIdx.z // C, cuda.blockIdx.z % C
    if x >= W or y >= H:
        return
    T = V.shape[2] - H + 1
    s = zero
    for i in range(T):
        for j in range(T):
            s += K[b, y, x, i * T + j] * V[b, c, y + i, x + j]
    Y[b, c, y, x] = s


@cuda.jit
def _grad_v_kernel(dY, K, dV, zero):
    x, y = cuda.grid(2)
    C, H, W = dY.shape[1], dY.shape[2], dY.shape[3]
    Hp, Wp = dV.shape[2], dV.shape[3]
    b, c = cuda.blockIdx.z // C, cuda.blockIdx.z % C
    if x >= Wp or y >= Hp:
        return
    T = Hp - H + 1
    s = zero
    for i in range(max(0, y - H + 1), min(T, y + 1)):
        for j in range(max(0, x - W + 1), min(T, x + 1)):
            s += K[b, y - i, x - j, i * T + j] * dY[b, c, y - i, x - j]
    dV[b, c, y, x] = s


@cuda.jit
def _grad_k_kernel(dY, V, dK, zero):
    x, y = cuda.grid(2)
    C, H, W = dY.shape[1], dY.shape[2], dY.shape[3]
    taps = dK.shape[3]
    b, t = cuda.blockIdx.z // taps, cuda.blockIdx.z % taps
    if x >= W or y >= H:
        return
    T = V.shape[2] - H + 1
    i, j = t // T, t % T
    s = zero
    for c in range(C):
        s += dY[b, c, y, x] * V[b, c, y + i, x + j]
    dK[b, y, x, t] = s


def _grid(width: int, height: int, depth: int, block: tuple[int, int, int]) -> tuple[int, int, int]:
    return ((width + block[0] - 1) // block[0], (height + block[1] - 1) // block[1], depth)


def forward_into(V, K, Y, stream=0, block: tuple[int, int, int] = BLOCK) -> None:
    """Y (B,C,H,W) = adaptive conv of V (B,C,H+2r,W+2r) with K (B,H,W,T*T): CUDA arrays."""
    B, C, H, W = Y.shape
    _forward_kernel[_grid(W, H, B * C, block), block, stream](V, K, Y, Y.dtype.type(0))


def grad_v_into(dY, K, dV, stream=0, block: tuple[int, int, int] = BLOCK) -> None:
    """dV (B,C,H+2r,W+2r) from dY (B,C,H,W) and K (B,H,W,T*T): CUDA arrays."""
    B, C, Hp, Wp = dV.shape
    _grad_v_kernel[_grid(Wp, Hp, B * C, block), block, stream](dY, K, dV, dV.dtype.type(0))


def grad_k_into(dY, V, dK, stream=0, block: tuple[int, int, int] = BLOCK) -> None:
    """dK (B,H,W,T*T) from dY (B,C,H,W) and V (B,C,H+2r,W+2r): CUDA arrays."""
    B, H, W, taps = dK.shape
    _grad_k_kernel[_grid(W, H, B * taps, block), block, stream](dY, V, dK, dK.dtype.type(0))


def _stream():
    return cuda.external_stream(torch.cuda.current_stream().cuda_stream)


def _arr(t: torch.Tensor):
    return cuda.as_cuda_array(t.detach())


def forward(V: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Y (B,C,H,W) from contiguous CUDA tensors V and K (B,H,W,T,T), on torch's current stream."""
    B, H, W, T = K.shape[:4]
    Y = V.new_empty(B, V.shape[1], H, W)
    forward_into(_arr(V), _arr(K.reshape(B, H, W, T * T)), _arr(Y), _stream())
    return Y


def grad_v(dY: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """dL/dV from contiguous CUDA tensors dY and K."""
    B, C, H, W = dY.shape
    T = K.shape[-1]
    dV = dY.new_empty(B, C, H + T - 1, W + T - 1)
    grad_v_into(_arr(dY), _arr(K.reshape(B, H, W, T * T)), _arr(dV), _stream())
    return dV


def grad_k(dY: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """dL/dK (B,H,W,T,T) from contiguous CUDA tensors dY and V."""
    B, C, H, W = dY.shape
    T = V.shape[-1] - W + 1
    dK = dY.new_empty(B, H, W, T, T)
    grad_k_into(_arr(dY), _arr(V), _arr(dK.view(B, H, W, T * T)), _stream())
    return dK
