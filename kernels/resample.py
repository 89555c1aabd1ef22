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

FASTMATH = {"contract", "reassoc", "nsz", "arcp"}


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _resample(x, row_index, row_weight, col_index, col_weight, out):
    """out[n, y, x'] = sum_a sum_b row_weight[y, a] col_weight[x', b] x[n, row_index[y, a], col_index[x', b]]."""
    N, h, _ = x.shape
    H, W = out.shape[1], out.shape[2]
    ta, tb = row_index.shape[1], col_index.shape[1]
    for n in prange(N):
        across = np.zeros((h, W), x.dtype)  # the columns resampled, every source row
        for i in range(h):
            row = x[n, i]
            for b in range(tb):
                for c in range(W):
                    across[i, c] += col_weight[c, b] * row[col_index[c, b]]
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
