"""Separable resampling by tap tables, written straight into its (padded) destination, on the CPU.

The JBU's values are ``pad(F.interpolate(x, scale_factor=2, mode="bicubic"))``: torch makes the
x2 map, then a second full-size copy with the border. Both steps are linear maps of each axis,
so they compose into one table per axis (output index -> 4 source indices and weights, read off
torch's own interpolation and padding of an index ramp), and one pass writes the padded map:
at 224², C = 384 that is 81 MB written once instead of 77 MB written, read and 81 MB written.
Inference only (no autograd): the JBU uses torch's ops where gradients are needed.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

# No nnan/ninf: NaN and inf in the inputs propagate as in the torch reference (here and in numba_cpu).
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}


@njit(cache=True)
def interior(index, weight):
    """[xa, xb), of even length: the longest run of a 4-tap table's rows (taps sorted by source)
    that read four consecutive sources with one weight set per parity, the first source advancing
    by one every two rows. There a x2 resampling is two fixed 4-tap filters that vectorise, where
    the table's gathers do not; (0, 0) where there is no such run."""
    n = index.shape[0]
    if index.shape[1] != 4 or n < 4:
        return 0, 0
    best_a, best_b, x = 0, 0, 0
    while x + 2 < n:
        y = x
        while y + 2 < n:
            fits = index[y + 2, 0] == index[y, 0] + 1
            for t in range(4):
                fits = fits and index[y, t] == index[y, 0] + t and index[y + 2, t] == index[y + 2, 0] + t
                fits = fits and weight[y + 2, t] == weight[y, t]
            if not fits:
                break
            y += 1
        if y > x and y + 2 - x > best_b - best_a:
            best_a, best_b = x, y + 2
        x = y + 1
    return best_a, best_a + (best_b - best_a) // 2 * 2


@njit(fastmath=FASTMATH, cache=True, inline="always")
def resample_row(line, index, weight, xa, xb, out):
    """out[x] = sum_t weight[x, t] * line[index[x, t]]: gathers outside [xa, xb), two fixed filters inside."""
    for start, stop in ((0, xa), (xb, out.shape[0])):
        for x in range(start, stop):
            s = weight[x, 0] * line[index[x, 0]]
            for t in range(1, index.shape[1]):
                s += weight[x, t] * line[index[x, t]]
            out[x] = s
    if xb > xa:
        for parity in range(2):
            src, w, dst = line[index[xa + parity, 0]:], weight[xa + parity], out[xa + parity:xb:2]
            w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
            for k in range(dst.shape[0]):
                dst[k] = w0 * src[k] + w1 * src[k + 1] + w2 * src[k + 2] + w3 * src[k + 3]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _resample(x, row_index, row_weight, col_index, col_weight, out):
    """out[n, y, x'] = sum_a sum_b row_weight[y, a] col_weight[x', b] x[n, row_index[y, a], col_index[x', b]]."""
    N, h, _ = x.shape
    H, W = out.shape[1], out.shape[2]
    ta = row_index.shape[1]
    xa, xb = interior(col_index, col_weight)
    for n in prange(N):
        across = np.empty((h, W), x.dtype)  # the columns resampled, every source row
        for i in range(h):
            resample_row(x[n, i], col_index, col_weight, xa, xb, across[i])
        for r in range(H):
            dst = out[n, r]
            a0 = across[row_index[r, 0]]
            w0 = row_weight[r, 0]
            for c in range(W):
                dst[c] = w0 * a0[c]
            for a in range(1, ta):
                w, src = row_weight[r, a], across[row_index[r, a]]
                for c in range(W):
                    dst[c] += w * src[c]


def resample(x: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor], cols: tuple[torch.Tensor, torch.Tensor],
             out: torch.Tensor | None = None) -> torch.Tensor:
    """(B,C,h,w) float CPU tensor resampled by (index, weight) tables of shape (H, taps) and (W, taps).

    Writes into ``out`` (B,C,H,W) when given (e.g. a reused buffer), else a new tensor.
    """
    (row_index, row_weight), (col_index, col_weight) = rows, cols
    B, C, h, w = x.shape
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"resample takes float32/float64 CPU tensors, got {x.dtype} on {x.device}")
    if int(row_index.max()) >= h or int(col_index.max()) >= w:
        raise ValueError(f"tap tables read rows < {int(row_index.max()) + 1}, columns < {int(col_index.max()) + 1}; "
                         f"the input has {h} x {w}")
    if out is None:
        out = x.new_empty(B, C, row_index.shape[0], col_index.shape[0])
    x = x.detach().contiguous()
    _resample(x.reshape(B * C, h, w).numpy(), row_index.numpy(), row_weight.to(x.dtype).numpy(),
              col_index.numpy(), col_weight.to(x.dtype).numpy(), out.detach().view(B * C, *out.shape[-2:]).numpy())
    return out
