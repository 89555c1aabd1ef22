"""The adaptive conv on resampled values, computed on the source map: inference on the CPU.

The JBU's last steps are V = pad(bicubic x2 of X) (tap tables, kernels.resample) and
Y[y, x] = sum_ij K[y, x, i, j] V[y+i, x+j]. Both are linear, so each output pixel reads a
window of X through the composed kernel Rows[y]^T K[y, x] Cols[x], where Rows[y][i, a] is the
weight of X's row start(y) + a in V's row y + i (likewise Cols). For a x2 resampling two
neighbouring outputs (a pair) share one X window (7 x 7 for bicubic and a 7 x 7 K), so:

- V is never made: the composition costs 2 T^2 S MACs a pixel, channel-independent, where
  resampling cost ~16 MACs a value and a channel (C = 384: 690 against 6100 a pixel).
- Each loaded X value serves both outputs of a column pair (two kernels) and four channels
  (numba_cpu's register blocks): 6 loads per 8 FMAs in the inner loop instead of 5 per 4.
- X's rows a block reads are copied, zero-padded, into a small buffer that stays in cache.

Output (y, x) belongs to the pair (y + row_phase) // 2, (x + col_phase) // 2 and the class
(y + row_phase) % 2, (x + col_phase) % 2; a class's pixels form a grid that is a plain
adaptive conv over the buffered X rows with the flat-run layout of numba_cpu.forward.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from kernels.numba_cpu import CB, _channel
from kernels.resample import FASTMATH

PAIR_ROWS = 8  # at most this many pair rows (16 output rows) per parallel task: its composed kernels stay in L2


@dataclass(frozen=True)
class PairWindows:
    """How one axis's outputs read the source through a tap table and a window of ``taps`` entries."""

    phase: int  # output o is in pair (o + phase) // 2, class (o + phase) % 2
    start: int  # source index of pair 0's window (pair p's starts at start + p; may be < 0: zeros)
    size: int  # S: the window's length in source pixels
    pairs: int
    weights: torch.Tensor  # (outputs, taps, S): weight of window source a in table entry o + t


def pair_windows(index: torch.Tensor, weight: torch.Tensor, taps: int) -> PairWindows:
    """The pair windows of a (entries, 4) tap table read by ``taps``-entry windows, the phase with the smaller window."""
    outputs = index.shape[0] - taps + 1
    entries = torch.arange(outputs)[:, None] + torch.arange(taps)  # (outputs, taps)
    sources = index[entries]  # (outputs, taps, 4)
    lo, hi = sources.amin((1, 2)), sources.amax((1, 2))
    best = None
    for phase in (0, 1):
        pair = (torch.arange(outputs) + phase) // 2
        start = int((lo - pair).min())
        size = int((hi - pair).max()) - start + 1
        if best is None or size < best[2]:
            best = (phase, start, size, pair)
    phase, start, size, pair = best
    offset = sources - (start + pair)[:, None, None]
    weights = torch.zeros(outputs, taps, size, dtype=torch.float64)
    weights.scatter_add_(2, offset, weight[entries].double())
    return PairWindows(phase, start, size, (outputs + phase + 1) // 2, weights)


def widened(*axes: PairWindows) -> list[PairWindows]:
    """The axes' windows at the largest one's size (zero weights past each one's own), for one compiled window size."""
    size = max(axis.size for axis in axes)
    return [replace(axis, size=size, weights=F.pad(axis.weights, (0, size - axis.size))) for axis in axes]


def column_runs(cols: PairWindows) -> tuple[torch.Tensor, torch.Tensor]:
    """(bounds, weights): the pairs in runs bounds[k]:bounds[k+1] whose two classes have the same column
    weights, and those weights, (2, runs, taps, S); a class's missing pixel (past an edge) has zeros."""
    outputs, taps, size = cols.weights.shape
    x = 2 * torch.arange(cols.pairs) - cols.phase  # the class-0 pixel of each pair
    per_pair = torch.zeros(cols.pairs, 2, taps, size, dtype=torch.float64)
    for c in range(2):
        valid = (x + c >= 0) & (x + c < outputs)
        per_pair[valid, c] = cols.weights[x[valid] + c]
    change = (per_pair[1:] != per_pair[:-1]).flatten(1).any(1)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), 1 + change.nonzero()[:, 0]])
    bounds = torch.cat([starts, torch.tensor([cols.pairs])])
    return bounds, per_pair[starts].transpose(0, 1).contiguous()


@dataclass(frozen=True)
class Windows:
    """Everything ``forward_resampled`` reads from a pair of tap tables: computed once per map size
    and kept by the caller (it costs more than the kernel's own work on a small map)."""

    rows: PairWindows
    cols: PairWindows
    bounds: np.ndarray  # column_runs
    col_weights: np.ndarray


def windows(rows: tuple[torch.Tensor, torch.Tensor], cols: tuple[torch.Tensor, torch.Tensor], taps: int) -> Windows:
    """The Windows of row and column tap tables (index, weight) read by ``taps``-entry kernel windows."""
    r, c = widened(pair_windows(*rows, taps), pair_windows(*cols, taps))
    bounds, col_weights = column_runs(c)
    return Windows(r, c, bounds.numpy(), col_weights.numpy())


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _pair_window_sums(a, b, ka, kb, v0, v1, v2, v3, S, Wg):
    """a[q, p] += sum_ij ka[i*S + j, p] v_q[i*Wg + j + p], b likewise with kb: both classes of a column pair
    read the same four channels' values, so one value load serves two kernels."""
    a0, a1, a2, a3, b0, b1, b2, b3 = a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]
    for i in range(S):
        kra, krb = ka[i * S:(i + 1) * S], kb[i * S:(i + 1) * S]
        w0, w1, w2, w3 = v0[i * Wg:], v1[i * Wg:], v2[i * Wg:], v3[i * Wg:]
        for p in range(a.shape[1]):
            s0, s1, s2, s3, t0, t1, t2, t3 = a0[p], a1[p], a2[p], a3[p], b0[p], b1[p], b2[p], b3[p]
            for j in range(S):
                k, m = kra[j, p], krb[j, p]
                x0, x1, x2, x3 = w0[j + p], w1[j + p], w2[j + p], w3[j + p]
                s0 += k * x0
                s1 += k * x1
                s2 += k * x2
                s3 += k * x3
                t0 += m * x0
                t1 += m * x1
                t2 += m * x2
                t3 += m * x3
            a0[p], a1[p], a2[p], a3[p], b0[p], b1[p], b2[p], b3[p] = s0, s1, s2, s3, t0, t1, t2, t3


@njit(cache=True, inline="always")
def _interleave(dst, a, b, phase, x_lo, x_hi, bias):
    """dst[x - x_lo] = (a, b)[(x + phase) % 2][(x + phase) // 2] + bias for x in [x_lo, x_hi): a row of
    output from its two column classes."""
    x = x_lo
    if (x + phase) % 2 and x < x_hi:
        dst[0] = b[(x + phase) // 2] + bias
        x += 1
    p0, pairs = (x + phase) // 2, (x_hi - x) // 2
    for k in range(pairs):
        dst[x - x_lo + 2 * k] = a[p0 + k] + bias
        dst[x - x_lo + 2 * k + 1] = b[p0 + k] + bias
    if (x_hi - x) % 2:
        dst[x_hi - 1 - x_lo] = a[p0 + pairs] + bias


def _balanced_blocks(rows: int, images: int, most: int, threads: int) -> tuple[int, int]:
    """(blocks an image, rows a block): blocks of at most ``most`` rows, split finer so that the images'
    blocks come close to a multiple of the threads and no thread waits long on another's last block
    (56 rows, 2 threads: 8 blocks of 7 rather than 7 of 8)."""
    blocks = (rows + most - 1) // most
    per_thread = (images * blocks + threads - 1) // threads
    blocks = max(blocks, (per_thread * threads) // images)
    step = (rows + blocks - 1) // blocks
    return (rows + step - 1) // step, step


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _compose(K, b, y, row_weights, bounds, col_weights, col_phase, ktr, t1, out, T, S):
    """out[c, a*S + s, p] = the composed kernel of output (y, class c of column pair p), for both classes.

    The column weights are constant over runs of pairs (``bounds``; all but a few border
    pairs are one run), so each run is a fixed T-tap filter across its pairs that vectorises. Inlined
    where T and S are compile-time constants, so its inner loops unroll as a closure's would.
    """
    W, P = K.shape[2], ktr.shape[1]
    for c in range(2):
        ktr[:] = 0
        for p in range(P):
            x = 2 * p - col_phase + c
            if 0 <= x < W:
                for t in range(T * T):
                    ktr[t, p] = K[b, y, x, t]
        for k in range(bounds.shape[0] - 1):
            p0, p1 = bounds[k], bounds[k + 1]
            for i in range(T):
                for s in range(S):
                    w = col_weights[c, k, :, s]
                    dst, src = t1[i * S + s, p0:p1], ktr[i * T:(i + 1) * T, p0:p1]
                    for p in range(p1 - p0):
                        v = w[0] * src[0, p]
                        for j in range(1, T):
                            v += w[j] * src[j, p]
                        dst[p] = v
        r = row_weights[y]
        for a in range(S):
            for s in range(S):
                dst = out[c, a * S + s]
                for p in range(P):
                    v = r[0, a] * t1[s, p]
                    for i in range(1, T):
                        v += r[i, a] * t1[i * S + s, p]
                    dst[p] = v


@lru_cache(maxsize=None)
def _kernels(T: int, S: int):
    """The forward for T x T kernels over S x S source windows (compile-time constants).

    Its closure holds only T and S: numba keys a cached closure by its pickled cell contents, and a
    jitted function pickles with a per-process id, so closing over one would compile it in every process.
    """

    @njit(parallel=True, fastmath=FASTMATH, cache=True)
    def forward(X, K, row_weights, row_phase, row_start, bounds, col_weights, col_phase, col_start, P, bias,
                y_lo, y_hi, x_lo, x_hi, nblk, step, Y):
        """Y[:, :, y - y_lo, x - x_lo] for the outputs (y, x) in [y_lo, y_hi) x [x_lo, x_hi), in ``nblk``
        tasks an image of ``step`` pair rows each."""
        B, C, h, w = X.shape
        Wg = P + S - 1
        s_lo, s_hi = (y_lo + row_phase) // 2, (y_hi - 1 + row_phase) // 2 + 1  # the pair rows those outputs are in
        for task in prange(B * nblk):
            b, s0 = task // nblk, s_lo + (task % nblk) * step
            n = min(step, s_hi - s0)
            run = (n - 1) * Wg + P
            kt = np.zeros((2, 2, S * S, n * Wg), X.dtype)  # [row class, column class, tap, flat position]
            ktr = np.empty((T * T, P), X.dtype)
            t1 = np.empty((T * S, P), X.dtype)
            for rr in range(n):
                for ry in range(2):
                    y = 2 * (s0 + rr) - row_phase + ry
                    if y_lo <= y < y_hi:
                        _compose(K, b, y, row_weights, bounds, col_weights, col_phase, ktr, t1,
                                 kt[ry, :, :, rr * Wg:rr * Wg + P], T, S)
            rows = n + S - 1
            g = np.zeros((CB, rows * Wg), X.dtype)  # the block's source rows, zero outside X
            r_lo, r_hi = max(0, -(row_start + s0)), min(rows, h - (row_start + s0))
            c_lo, c_hi = max(0, -col_start), min(Wg, w - col_start)
            acc = np.empty((2, CB, run), X.dtype)
            for c0 in range(0, C, CB):
                for q in range(CB):
                    src = X[b, _channel(C, c0, q)]
                    for r in range(r_lo, r_hi):
                        g[q, r * Wg + c_lo:r * Wg + c_hi] = src[row_start + s0 + r, col_start + c_lo:col_start + c_hi]
                for ry in range(2):
                    acc[:] = 0
                    _pair_window_sums(acc[0], acc[1], kt[ry, 0], kt[ry, 1], g[0], g[1], g[2], g[3], S, Wg)
                    for q in range(min(CB, C - c0)):
                        for rr in range(n):
                            y = 2 * (s0 + rr) - row_phase + ry
                            if y_lo <= y < y_hi:
                                _interleave(Y[b, c0 + q, y - y_lo], acc[0, q, rr * Wg:], acc[1, q, rr * Wg:],
                                            col_phase, x_lo, x_hi, bias[b, c0 + q])

    return forward


def forward_resampled(X: torch.Tensor, plan: Windows, K: torch.Tensor, bias: torch.Tensor | None = None,
                      out: torch.Tensor | None = None,
                      window: tuple[tuple[int, int], tuple[int, int]] | None = None) -> torch.Tensor:
    """``numba_cpu.forward(resample(X, rows, cols), K)`` (kernels.resample) without making the resampled
    values, for the tables ``plan`` was made from (``windows``).

    ``bias`` (B, C): added per channel as the output is written (not in a pass of its own).
    ``window`` ((y0, y1), (x0, x1)): only those outputs are computed (the rows) and written (a
    tile's pixels, without the halo its stage computes for the next one); ``out``: the
    (B, C, y1 - y0, x1 - x0) tensor to write them into, e.g. a view of a larger output.
    Inference only; the tables are x2 resamplings (with padding) whose T-entry windows a pair of
    neighbouring outputs reads through one source window.
    """
    B, H, W, T = K.shape[:4]
    C = X.shape[1]
    r, c = plan.rows, plan.cols
    if r.weights.shape[:2] != (H, T) or c.weights.shape[:2] != (W, T):
        raise ValueError(f"windows for {r.weights.shape[0]} x {c.weights.shape[0]} outputs of {r.weights.shape[1]} "
                         f"taps do not fit kernels of shape {tuple(K.shape)}")
    (y0, y1), (x0, x1) = window or ((0, H), (0, W))
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise ValueError(f"window {window} is not a non-empty part of the {H} x {W} output")
    if out is None:
        out = X.new_empty(B, C, y1 - y0, x1 - x0)
    elif tuple(out.shape) != (B, C, y1 - y0, x1 - x0) or out.dtype != X.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be a {X.dtype} tensor of shape {(B, C, y1 - y0, x1 - x0)} with unit column "
                         f"stride, got {out.dtype} {tuple(out.shape)} strides {out.stride()}")
    X, K = X.detach().contiguous(), K.detach().contiguous()
    bias = X.new_zeros(B, C) if bias is None else bias.detach().to(X.dtype).expand(B, C).contiguous()
    dtype = X.numpy().dtype
    pair_rows = (y1 - 1 + r.phase) // 2 + 1 - (y0 + r.phase) // 2
    _kernels(T, r.size)(X.numpy(), K.numpy().reshape(B, H, W, T * T), r.weights.numpy().astype(dtype), r.phase,
                        r.start, plan.bounds, plan.col_weights.astype(dtype), c.phase, c.start, c.pairs,
                        bias.numpy(), y0, y1, x0, x1, *_balanced_blocks(pair_rows, B, PAIR_ROWS, numba.get_num_threads()),
                        out.detach().numpy())
    return out
