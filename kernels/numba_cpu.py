"""JBU adaptive convolution on the CPU with Numba: forward, grad V and grad K without unfold.

Shapes: V (B,C,H+2r,W+2r) padded values, K (B,H,W,T,T) per-pixel kernels with T = 2r+1,
Y (B,C,H,W). Y[b,c,y,x] = sum_ij K[b,y,x,i,j] V[b,c,y+i,x+j].

Why it is fast: every inner loop runs over one long contiguous run of memory. A block of R
output rows is addressed with V's row stride Wp = W+2r, so the R rows of a tap form a single
run of (R-1)*Wp+W elements (the 2r columns between rows are computed and thrown away, a
2r/Wp waste). K is transposed per row block into that layout (taps first), so K, V and the
accumulator are read with unit stride and LLVM vectorises the loop; four taps are summed per
pass to cut accumulator loads and stores. Threads split the rows (forward, grad K) or the rows
of dV (grad V, gather form: each thread owns its dV rows, so there are no write races).
Extra memory: one per-thread block of transposed K and an accumulator, a few hundred KB.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

# No nnan/ninf: NaN and inf in the inputs propagate as in the torch reference.
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}
ROWS = 8  # output rows per parallel task: the transposed K block stays in L2


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _taps(acc, ka, koff, vf, voff):
    """acc[p] += sum_t ka[t, koff[t] + p] * vf[voff[t] + p], four taps per pass."""
    n, taps, t = acc.shape[0], ka.shape[0], 0
    while t + 4 <= taps:
        k0 = ka[t, koff[t]:koff[t] + n]
        k1 = ka[t + 1, koff[t + 1]:koff[t + 1] + n]
        k2 = ka[t + 2, koff[t + 2]:koff[t + 2] + n]
        k3 = ka[t + 3, koff[t + 3]:koff[t + 3] + n]
        v0 = vf[voff[t]:voff[t] + n]
        v1 = vf[voff[t + 1]:voff[t + 1] + n]
        v2 = vf[voff[t + 2]:voff[t + 2] + n]
        v3 = vf[voff[t + 3]:voff[t + 3] + n]
        for p in range(n):
            acc[p] += k0[p] * v0[p] + k1[p] * v1[p] + k2[p] * v2[p] + k3[p] * v3[p]
        t += 4
    while t < taps:
        k0 = ka[t, koff[t]:koff[t] + n]
        v0 = vf[voff[t]:voff[t] + n]
        for p in range(n):
            acc[p] += k0[p] * v0[p]
        t += 1


@njit(cache=True)
def _tap_offsets(T, Wp, shift):
    """Flat offset of tap (i, j) in a buffer with row stride Wp: shift + i*Wp + j, row-major taps."""
    off = np.empty(T * T, np.int64)
    for i in range(T):
        for j in range(T):
            off[i * T + j] = shift + i * Wp + j
    return off


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _forward(V, K, Y):
    B, C, Hp, Wp = V.shape
    H, W, taps = K.shape[1], K.shape[2], K.shape[3]
    T = Hp - H + 1
    nblk = (H + ROWS - 1) // ROWS
    voff = _tap_offsets(T, Wp, 0)
    koff = np.zeros(taps, np.int64)
    for task in prange(B * nblk):
        b, y0 = task // nblk, (task % nblk) * ROWS
        n = min(ROWS, H - y0)
        run = (n - 1) * Wp + W
        kt = np.zeros((taps, n * Wp), V.dtype)
        for yy in range(n):
            for x in range(W):
                for t in range(taps):
                    kt[t, yy * Wp + x] = K[b, y0 + yy, x, t]
        acc = np.empty(run, V.dtype)
        for c in range(C):
            acc[:] = 0
            _taps(acc, kt, koff, V[b, c].reshape(-1)[y0 * Wp:], voff)
            for yy in range(n):
                Y[b, c, y0 + yy, :] = acc[yy * Wp:yy * Wp + W]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _grad_v(dY, K, dV):
    """dV[y', x'] = sum_ij K[y'-i, x'-j, i, j] dY[y'-i, x'-j]: each task owns ROWS rows of dV.

    K and dY rows y0-2r .. y0+n-1 are copied into buffers with row stride Wp, zero outside the
    image and in the 2r padding columns, behind a margin of 2r zeros; a tap (i, j) then reads
    them at one flat offset, and out-of-range (y'-i, x'-j) land on zeros.
    """
    B, C, H, W = dY.shape
    Hp, Wp = dV.shape[2], dV.shape[3]
    taps = K.shape[3]
    T = Hp - H + 1
    d = T - 1
    nblk = (Hp + ROWS - 1) // ROWS
    for task in prange(B * nblk):
        b, y0 = task // nblk, (task % nblk) * ROWS
        n = min(ROWS, Hp - y0)
        size = d + (n + d) * Wp
        off = _tap_offsets(T, Wp, 0)
        for t in range(taps):
            off[t] = size - n * Wp - off[t]
        kt = np.zeros((taps, size), dY.dtype)
        for r in range(n + d):
            y = y0 - d + r
            if 0 <= y < H:
                for x in range(W):
                    for t in range(taps):
                        kt[t, d + r * Wp + x] = K[b, y, x, t]
        g = np.zeros(size, dY.dtype)
        for c in range(C):
            for r in range(n + d):
                y = y0 - d + r
                if 0 <= y < H:
                    g[d + r * Wp:d + r * Wp + W] = dY[b, c, y, :]
            out = dV[b, c].reshape(-1)[y0 * Wp:(y0 + n) * Wp]
            out[:] = 0
            _taps(out, kt, off, g, off)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _grad_k(dY, V, dK):
    """dK[y, x, i, j] = sum_c dY[c, y, x] V[c, y+i, x+j]: each task owns ROWS rows of dK."""
    B, C, Hp, Wp = V.shape
    H, W, taps = dK.shape[1], dK.shape[2], dK.shape[3]
    T = Hp - H + 1
    nblk = (H + ROWS - 1) // ROWS
    voff = _tap_offsets(T, Wp, 0)
    for task in prange(B * nblk):
        b, y0 = task // nblk, (task % nblk) * ROWS
        n = min(ROWS, H - y0)
        run = (n - 1) * Wp + W
        acc = np.zeros((taps, run), V.dtype)
        g = np.zeros((4, run), V.dtype)
        for c0 in range(0, C, 4):
            m = min(4, C - c0)
            g[m:] = 0
            for q in range(m):
                for yy in range(n):
                    g[q, yy * Wp:yy * Wp + W] = dY[b, c0 + q, y0 + yy, :]
            # a short last block repeats channel c0 with a zero dY, so it adds nothing
            f0 = V[b, c0].reshape(-1)[y0 * Wp:]
            f1 = V[b, c0 + min(1, m - 1)].reshape(-1)[y0 * Wp:]
            f2 = V[b, c0 + min(2, m - 1)].reshape(-1)[y0 * Wp:]
            f3 = V[b, c0 + min(3, m - 1)].reshape(-1)[y0 * Wp:]
            g0, g1, g2, g3 = g[0], g[1], g[2], g[3]
            for t in range(taps):
                a = acc[t]
                o = voff[t]
                v0, v1, v2, v3 = f0[o:o + run], f1[o:o + run], f2[o:o + run], f3[o:o + run]
                for p in range(run):
                    a[p] += g0[p] * v0[p] + g1[p] * v1[p] + g2[p] * v2[p] + g3[p] * v3[p]
        for yy in range(n):
            for x in range(W):
                for t in range(taps):
                    dK[b, y0 + yy, x, t] = acc[t, yy * Wp + x]


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view (no copy) of a contiguous CPU tensor."""
    return t.detach().numpy()


def forward(V: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Y (B,C,H,W) from contiguous V (B,C,H+2r,W+2r) and K (B,H,W,2r+1,2r+1), same float dtype."""
    B, H, W, T = K.shape[:4]
    Y = V.new_empty(B, V.shape[1], H, W)
    _forward(_np(V), _np(K).reshape(B, H, W, T * T), _np(Y))
    return Y


def grad_v(dY: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """dL/dV (B,C,H+2r,W+2r) from contiguous dY (B,C,H,W) and K."""
    B, C, H, W = dY.shape
    T = K.shape[-1]
    dV = dY.new_empty(B, C, H + T - 1, W + T - 1)
    _grad_v(_np(dY), _np(K).reshape(B, H, W, T * T), _np(dV))
    return dV


def grad_k(dY: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """dL/dK (B,H,W,2r+1,2r+1) from contiguous dY (B,C,H,W) and V."""
    B, C, H, W = dY.shape
    T = V.shape[-1] - W + 1
    dK = dY.new_empty(B, H, W, T, T)
    _grad_k(_np(dY), _np(V), _np(dK).reshape(B, H, W, T * T))
    return dK
