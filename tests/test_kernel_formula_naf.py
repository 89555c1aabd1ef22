"""NAF's kernel at a few output pixels against a brute-force evaluation, tap by tap in float64, of the formula of
its public code (valeoai/NAF src/model/naf.py, run with NATTEN; methods/naf.py's docstrings).

The learned network (the image encoders, their pooling to the output size, the RoPE, the average pooling of the
queries to the keys) is called as it is: it is not the kernel. Everything after it is written out here with plain
loops and none of methods/naf.py's window helpers (``neighbour_table``, ``_runs``, ``_cells``, ``_attend``): which
feature pixels each output pixel attends to (NATTEN's dilated neighbourhood on keys and values resized
nearest-exact to the output, its window start clamped at the ends of each dilation group), the per-head logits
q . k / sqrt(d_head), their softmax over the window and the weighted sum of the features.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from methods.naf import NAF, ImageEncoder

KERNEL = 9
g = torch.Generator().manual_seed(0)


def perturbed_naf() -> NAF:
    """A small NAF (test_naf.py's size: width 32, 2 heads of 16) in float64, weights moved off their init, frozen;
    its init drawn from a seeded global RNG (restored after), so that the test is the same on every run."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        method = NAF(dim=32, heads=2, rope_heads=2, kernel=KERNEL)
    method = method.double().eval().requires_grad_(False)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return method


def nearest_exact(i: int, n_out: int, n_lr: int) -> int:
    """F.interpolate(mode="nearest-exact") source index of output index i, in exact integer arithmetic:
    floor((i + 1/2) * n_lr / n_out), at most n_lr - 1 (their keys and values are resized to the output so)."""
    return min((2 * i + 1) * n_lr // (2 * n_out), n_lr - 1)


def window(i: int, n_out: int, n_lr: int) -> list[int]:
    """Feature-grid indices (with repeats) that output index i attends to on one axis.

    NATTEN's neighbourhood attention with dilation d = n_out // n_lr (at least 1), on the output grid: the axis
    splits into d interleaved groups (indices with the same i mod d); i is at position p = i // d of its group of
    L indices, and attends to KERNEL consecutive group members starting at p - KERNEL // 2, the start clamped to
    [0, L - KERNEL] so that the window stays inside the group (shifted at its ends, never padded). A group shorter
    than the kernel (where NATTEN raises) attends to all of its L members (methods/naf.py's documented extension).
    Each output-grid tap reads the key/feature at its nearest-exact feature-grid index.
    """
    d = max(1, n_out // n_lr)
    group, p = i % d, i // d
    length = len(range(group, n_out, d))
    if length <= KERNEL:
        members = range(length)
    else:
        start = min(max(p - KERNEL // 2, 0), length - KERNEL)
        members = range(start, start + KERNEL)
    return [nearest_exact(group + d * m, n_out, n_lr) for m in members]


def queries_and_keys(method: NAF, image: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]):
    """The network: encoded image pooled to the output size and rotated (queries), pooled to the grid (keys)."""
    enc = method.image_encoder
    x = ImageEncoder.encoder_input(image, size)
    encoded = F.adaptive_avg_pool2d(torch.cat([enc.encoder(x), enc.sem_encoder(x)], 1), size)
    queries = enc.rope(encoded, size, (0, size[0]), (0, size[1]))
    return queries, F.adaptive_avg_pool2d(queries, grid)


@pytest.mark.parametrize("grid, size, pixels", [
    # 10x11 -> 23x25 (ratios 2.3, 2.27): dilation 2, groups of 11-13 > 9 pixels, so windows are shifted at the
    # group ends; nearest-exact repeats some feature rows/columns inside a window. Three corners, the left edge,
    # an inner pixel, a pixel whose window is shifted on both axes.
    ((10, 11), (23, 25), [(0, 0), (22, 24), (0, 24), (11, 0), (12, 12), (21, 23)]),
    # 7x8 -> 30x34 (ratios 4.29, 4.25): dilation 4, groups of 7-9 pixels, at most the kernel: each output pixel
    # attends to its whole group (rows: 7 or 8 taps, columns: 8 or 9).
    ((7, 8), (30, 34), [(0, 0), (29, 33), (29, 0), (0, 17), (15, 17)]),
])
def test_naf_is_the_softmax_of_scaled_query_key_products_over_nattens_dilated_window(grid, size, pixels):
    """NAF (their code: NATTEN's na2d on keys and features resized nearest-exact to the output size):
    out_c(p) = sum_t softmax_t(q_n(p) . k_n(t) / sqrt(d_head)) f_c(t), head n = the head whose share of the
    channels holds c, t over the (up to) 9 x 9 taps of p's dilated window (``window`` per axis, repeats counted as
    often as they occur), q = RoPE(encoded image pooled to the output), k = q average-pooled to the grid.

    The features are, per head, one indicator channel for each grid pixel (so the output there is the kernel
    itself, summed over a pixel's repeated taps) followed by 3 random channels (the weighted sum)."""
    method = perturbed_naf()
    heads, (h, w), (ho, wo) = 2, grid, size
    image = torch.rand(1, 3, ho + 5, wo + 3, generator=g, dtype=torch.float64)  # pooled to the output by the network
    indicators = torch.eye(h * w, dtype=torch.float64).view(h * w, h, w).unsqueeze(0)
    per_head = [torch.cat([indicators, torch.randn(1, 3, h, w, generator=g, dtype=torch.float64)], 1)
                for _ in range(heads)]
    feats = torch.cat(per_head, 1)  # head n mixes channels [n * (h*w + 3), (n + 1) * (h*w + 3))
    share = h * w + 3
    with torch.no_grad():
        out = method(feats, image, size)
        queries, keys = queries_and_keys(method, image, size, grid)
    d_head = queries.shape[1] // heads
    queries, keys, f = queries[0].tolist(), keys[0].tolist(), feats[0].tolist()  # plain floats from here on
    ratios = []
    for i, j in pixels:
        taps = [(y, x) for y in window(i, ho, h) for x in window(j, wo, w)]
        for n in range(heads):
            channels = range(n * d_head, (n + 1) * d_head)
            logits = [sum(queries[c][i][j] * keys[c][y][x] for c in channels) / math.sqrt(d_head) for y, x in taps]
            top = max(logits)
            z = sum(math.exp(v - top) for v in logits)
            weights = [math.exp(v - top) / z for v in logits]
            ratios.append(max(weights) / min(weights))
            kernel = [0.0] * (h * w)  # the weight each grid pixel gets (repeated taps add up)
            for (y, x), wt in zip(taps, weights):
                kernel[y * w + x] += wt
            values = [sum(wt * f[n * share + c][y][x] for (y, x), wt in zip(taps, weights)) for c in range(share)]
            got = out[0, n * share:(n + 1) * share, i, j]
            torch.testing.assert_close(got[:h * w], torch.tensor(kernel, dtype=torch.float64), rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(got, torch.tensor(values, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    # the perturbed network gives kernels that are far from flat (a wrong logit scale would hardly show otherwise)
    assert min(ratios) > 1.3 and max(ratios) > 10, ratios
