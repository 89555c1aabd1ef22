"""JBU adaptive convolution on the CPU with Numba: forward, grad V and grad K without unfold.

Shapes: V (B,C,H+2r,W+2r) padded values, K (B,H,W,T,T) per-pixel kernels with T = 2r+1,
Y (B,C,H,W). Y[b,c,y,x] = sum_ij K[b,y,x,i,j] V[b,c,y+i,x+j].

Why it is fast:
- Flat runs. A block of ROWS output rows is addressed with V's row stride Wp = W+2r, so the
  rows of one tap form a single run of (ROWS-1)*Wp+W elements (the 2r columns between rows are
  computed and thrown away, a 2r/Wp waste). K is transposed per row block into that layout
  (taps first), so every operand is read with unit stride and LLVM vectorises over pixels.
- Register blocking. The kernels are compiled per window size T, so the loop over a window row
  (j) has a constant trip count and is unrolled inside the pixel loop. Each pixel vector then
  keeps CB = 4 channel accumulators in registers over a whole window row: a K value loaded once
  serves four channels (forward, grad V), a dY value serves a window row's T taps (grad K).
- Threads split the rows (forward, grad K) or the rows of dV (grad V, gather form: each thread
  owns its dV rows, so there are no write races). Extra memory: per-thread blocks of a few
  hundred KB. A channel count that is not a multiple of CB repeats the block's last channel in
  the unused slots (their sums are discarded, or multiplied by zero in grad K).
"""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import llvmlite.binding as llvm
import numpy as np
import torch
from numba import njit, prange

from kernels.resample import FASTMATH

# Each pixel loop reads up to eleven arrays and writes four. LLVM cannot prove Numba arrays do not
# alias, so it vectorises only behind run-time overlap checks, and by default gives up beyond a
# fixed number of them: the loops would stay scalar (3.5x slower forward at 224², C = 384). Raising the limit keeps them
# vectorised; it only lets LLVM emit more checks, it changes no result.
llvm.set_option("", "-vectorize-memory-check-threshold=1024")

ROWS = 16  # output rows per parallel task: the transposed K block stays in L2
CB = 4  # channels per register block


@njit(cache=True, inline="always")
def _channel(C: int, c0: int, q: int) -> int:
    """Channel of slot q in the block starting at c0: past the last channel, the last one again."""
    return min(c0 + q, C - 1)


@njit(cache=True, inline="always")
def _row_block(task: int, rows: int) -> tuple[int, int, int]:
    """(image, first row, row count) of parallel task ``task`` over images of ``rows`` rows."""
    nblk = (rows + ROWS - 1) // ROWS
    b, y0 = task // nblk, (task % nblk) * ROWS
    return b, y0, min(ROWS, rows - y0)


@njit(cache=True, inline="always")
def _block_taps(K, b: int, y0: int, n: int, Wp: int, like):
    """K's taps for rows y0..y0+n of image b, tap-major over the flat rows of stride Wp a block reads
    (zero in the padding columns), in ``like``'s dtype."""
    W, taps = K.shape[2], K.shape[3]
    kt = np.zeros((taps, n * Wp), like.dtype)
    for yy in range(n):
        for x in range(W):
            for t in range(taps):
                kt[t, yy * Wp + x] = K[b, y0 + yy, x, t]
    return kt


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _window_sums(acc, kt, v0, v1, v2, v3, T, Wp):
    """acc[q, p] += sum_ij kt[i*T + j, p] * v_q[i*Wp + j + p] for four value runs v_q.

    Inlined where T is a compile-time constant, so the j loop unrolls and the p loop vectorises
    with four accumulators in registers: one load of a K value serves four channels.
    """
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    for i in range(T):
        kr = kt[i * T:(i + 1) * T]
        w0, w1, w2, w3 = v0[i * Wp:], v1[i * Wp:], v2[i * Wp:], v3[i * Wp:]
        for p in range(acc.shape[1]):
            s0, s1, s2, s3 = a0[p], a1[p], a2[p], a3[p]
            for j in range(T):
                k = kr[j, p]
                s0 += k * w0[j + p]
                s1 += k * w1[j + p]
                s2 += k * w2[j + p]
                s3 += k * w3[j + p]
            a0[p], a1[p], a2[p], a3[p] = s0, s1, s2, s3


@lru_cache(maxsize=None)
def _kernels(T: int) -> SimpleNamespace:
    """The three kernels for a T x T window; T is a compile-time constant inside them."""

    @njit(parallel=True, fastmath=FASTMATH, cache=True)
    def forward(V, K, Y):
        B, C, Hp, Wp = V.shape
        H, W = K.shape[1], K.shape[2]
        for task in prange(B * ((H + ROWS - 1) // ROWS)):
            b, y0, n = _row_block(task, H)
            kt = _block_taps(K, b, y0, n, Wp, V)
            acc = np.empty((CB, (n - 1) * Wp + W), V.dtype)
            lo = y0 * Wp
            for c0 in range(0, C, CB):
                acc[:] = 0
                _window_sums(acc, kt, V[b, _channel(C, c0, 0)].reshape(-1)[lo:],
                             V[b, _channel(C, c0, 1)].reshape(-1)[lo:], V[b, _channel(C, c0, 2)].reshape(-1)[lo:],
                             V[b, _channel(C, c0, 3)].reshape(-1)[lo:], T, Wp)
                for q in range(min(CB, C - c0)):
                    for yy in range(n):
                        Y[b, c0 + q, y0 + yy, :] = acc[q, yy * Wp:yy * Wp + W]

    @njit(parallel=True, fastmath=FASTMATH, cache=True)
    def grad_v(dY, K, dV):
        """dV[y', x'] = sum_ij K[y'-i, x'-j, i, j] dY[y'-i, x'-j]: each task owns ROWS rows of dV.

        This is the forward on the dV grid with flipped, shifted kernels K'[y', x', i, j] =
        K[y'+i-d, x'+j-d, d-i, d-j] (d = 2r, zero outside the image) over dY zero-padded by d.
        Per task, K' is gathered into the forward's taps-first layout, and dY rows y0-d ..
        y0+n-1 are copied into buffers with row stride Wp behind a margin of d zeros (the d
        columns after each row are zero and serve as the next row's left padding).
        """
        B, C, H, W = dY.shape
        Hp, Wp = dV.shape[2], dV.shape[3]
        taps = K.shape[3]
        d = T - 1
        for task in prange(B * ((Hp + ROWS - 1) // ROWS)):
            b, y0, n = _row_block(task, Hp)
            kt = np.zeros((taps, n * Wp), dY.dtype)
            for yy in range(n):
                for i in range(T):
                    y = y0 + yy + i - d
                    if 0 <= y < H:
                        for x in range(Wp):
                            for j in range(T):
                                if 0 <= x + j - d < W:
                                    kt[i * T + j, yy * Wp + x] = K[b, y, x + j - d, (d - i) * T + d - j]
            g = np.zeros((CB, d + (n + d) * Wp), dY.dtype)
            acc = np.empty((CB, n * Wp), dY.dtype)
            for c0 in range(0, C, CB):
                for q in range(CB):
                    for r in range(n + d):
                        y = y0 - d + r
                        if 0 <= y < H:
                            g[q, d + r * Wp:d + r * Wp + W] = dY[b, _channel(C, c0, q), y, :]
                acc[:] = 0
                _window_sums(acc, kt, g[0], g[1], g[2], g[3], T, Wp)
                for q in range(min(CB, C - c0)):
                    dV[b, c0 + q].reshape(-1)[y0 * Wp:(y0 + n) * Wp] = acc[q]

    @njit(parallel=True, fastmath=FASTMATH, cache=True)
    def grad_k(dY, V, dK):
        """dK[y, x, i, j] = sum_c dY[c, y, x] V[c, y+i, x+j]: each task owns ROWS rows of dK."""
        B, C, Hp, Wp = V.shape
        H, W, taps = dK.shape[1], dK.shape[2], dK.shape[3]
        for task in prange(B * ((H + ROWS - 1) // ROWS)):
            b, y0, n = _row_block(task, H)
            run = (n - 1) * Wp + W
            acc = np.zeros((taps, run), V.dtype)
            g = np.zeros((CB, run), V.dtype)
            g0, g1, g2, g3 = g[0], g[1], g[2], g[3]
            for c0 in range(0, C, CB):
                m = min(CB, C - c0)
                g[m:] = 0
                for q in range(m):
                    for yy in range(n):
                        g[q, yy * Wp:yy * Wp + W] = dY[b, c0 + q, y0 + yy, :]
                for i in range(T):
                    base = (y0 + i) * Wp
                    ar = acc[i * T:(i + 1) * T]
                    v0 = V[b, _channel(C, c0, 0)].reshape(-1)[base:]
                    v1 = V[b, _channel(C, c0, 1)].reshape(-1)[base:]
                    v2 = V[b, _channel(C, c0, 2)].reshape(-1)[base:]
                    v3 = V[b, _channel(C, c0, 3)].reshape(-1)[base:]
                    for p in range(run):
                        e0, e1, e2, e3 = g0[p], g1[p], g2[p], g3[p]
                        for j in range(T):
                            ar[j, p] += e0 * v0[j + p] + e1 * v1[j + p] + e2 * v2[j + p] + e3 * v3[j + p]
            for yy in range(n):
                for x in range(W):
                    for t in range(taps):
                        dK[b, y0 + yy, x, t] = acc[t, yy * Wp + x]

    return SimpleNamespace(forward=forward, grad_v=grad_v, grad_k=grad_k)


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view (no copy) of a contiguous CPU tensor."""
    return t.detach().numpy()


def forward(V: torch.Tensor, K: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Y (B,C,H,W) from contiguous V (B,C,H+2r,W+2r) and K (B,H,W,2r+1,2r+1), same float dtype.

    ``out``: a contiguous (B,C,H,W) buffer to write Y into (inference, e.g. reused across calls:
    a fresh 74 MB output costs about as much in page faults as the computation into it).
    """
    B, H, W, T = K.shape[:4]
    Y = V.new_empty(B, V.shape[1], H, W) if out is None else out
    if tuple(Y.shape) != (B, V.shape[1], H, W) or Y.dtype != V.dtype or not Y.is_contiguous():
        raise ValueError(f"out must be a contiguous {V.dtype} tensor of shape {(B, V.shape[1], H, W)}, "
                         f"got {Y.dtype} {tuple(Y.shape)}")
    _kernels(T).forward(_np(V), _np(K).reshape(B, H, W, T * T), _np(Y))
    return Y


def grad_v(dY: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """dL/dV (B,C,H+2r,W+2r) from contiguous dY (B,C,H,W) and K."""
    B, C, H, W = dY.shape
    T = K.shape[-1]
    dV = dY.new_empty(B, C, H + T - 1, W + T - 1)
    _kernels(T).grad_v(_np(dY), _np(K).reshape(B, H, W, T * T), _np(dV))
    return dV


def grad_k(dY: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """dL/dK (B,H,W,2r+1,2r+1) from contiguous dY (B,C,H,W) and V."""
    B, C, H, W = dY.shape
    T = V.shape[-1] - W + 1
    dK = dY.new_empty(B, H, W, T, T)
    _kernels(T).grad_k(_np(dY), _np(V), _np(dK).reshape(B, H, W, T * T))
    return dK

