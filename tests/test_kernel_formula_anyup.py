"""AnyUp's attention at a few output pixels against its public code's formula written out, key by key, in float64.

The public code (github.com/wimmerth/anyup at commit 351807a9c4287368732cc247f26c7c81c9139af4:
``anyup/layers/attention/chunked_attention.py``, torch's MultiheadAttention with average_attn_weights=True whose
averaged weights multiply the raw features, and ``attention_masking.py``'s window2d / compute_attention_mask)
gives output pixel p = (i, j) of an H' x W' output from LR features f on an h x w grid as

    out(p)    = sum_{(y, x) in W(p)} a(p; y, x) f(:, y, x)
    a(p; y, x) = 1/heads sum_n exp(l_n(p; y, x)) / sum_{(y', x') in W(p)} exp(l_n(p; y', x'))
    l_n(p; y, x) = <Wq_n RMSNorm_q(q(p)) + bq_n, Wk_n RMSNorm_k(k(y, x)) + bk_n> / sqrt(D / heads)

with (Wq_n, bq_n), (Wk_n, bk_n) head n's rows of the in_proj_weight / in_proj_bias, q the pooled, 3x3-convolved
query map, k the aggregated key map, and W(p) the LR cells [y/h, (y+1)/h] x [x/w, (x+1)/w] that overlap the
square of half-side window_ratio around p's centre ((i + 0.5)/H', (j + 0.5)/W'), cut to [0, 1]^2: at the
borders the window is clipped (fewer cells), not shifted. Keys outside W(p) get weight exactly 0.

The queries and keys come from the module's learned sub-networks, called in the public ``upsample``'s order;
the window, the in-projection per head, the scale, the softmax, the head mean and the weighted sum are written
out here with loops. ``forward`` gives the output; the weights are read through ``attend`` with one-hot values
(LR channel y*w + x is the indicator of cell (y, x)), so channel y*w + x of its output is a(p; y, x).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from methods.anyup import AnyUp
from methods.guidance import imagenet_normalised

LR, IMAGE, OUT = (6, 9), (30, 40), (17, 22)  # non-square LR grid, output not a whole multiple of it
PIXELS = [(0, 0), (16, 21), (16, 0), (0, 11), (8, 13)]  # three corners, a top-edge pixel, an inner pixel


def window(centre: float, ratio: float, n: int) -> list[int]:
    """LR cells [k/n, (k+1)/n] overlapping [centre - ratio, centre + ratio] cut to [0, 1] (a clipped window)."""
    lo, hi = max(0.0, centre - ratio) * n, min(1.0, centre + ratio) * n
    for edge in (lo, hi):  # no cell boundary on the window's edge: float32 and float64 agree on every cell
        assert edge in (0.0, float(n)) or abs(edge - round(edge)) > 1e-6
    return [k for k in range(n) if k + 1 > lo and k < hi]


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_anyup_output_is_the_head_averaged_windowed_softmax_of_scaled_projected_query_key_products(ratio):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    method = AnyUp(qk_dim=16, heads=4, window_ratio=ratio).double().eval().requires_grad_(False)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    feats = torch.randn(1, 5, *LR, generator=g, dtype=torch.float64)
    image = torch.rand(1, 3, *IMAGE, generator=g, dtype=torch.float64)
    h, w = LR
    d, heads = method.qk_dim, method.heads
    dh = d // heads
    attention = method.cross_decode.cross_attn

    with torch.no_grad():
        out = method(feats, image, OUT)
        # the network: image encoder + RoPE, query / key encoders pooled, query 3x3 conv, key aggregation
        enc = method.rope(method.image_encoder(imagenet_normalised(image)), IMAGE, (0, IMAGE[0]), (0, IMAGE[1]))
        queries = method.cross_decode.conv2d(F.adaptive_avg_pool2d(method.query_encoder(enc), OUT))
        pooled = F.adaptive_avg_pool2d(method.key_encoder(enc), LR)
        unified = method.key_features_encoder(F.normalize(feats, dim=1))
        keys = method.aggregation(F.pad(torch.cat([pooled, unified], dim=1), (1, 1, 1, 1), mode="reflect"))

        weight, bias = attention.attention.in_proj_weight.tolist(), attention.attention.in_proj_bias.tolist()

        def project(x: torch.Tensor, rows: range) -> list[list[float]]:
            """in_proj rows applied to x by hand, split into heads: [head][component]."""
            x = x.tolist()
            flat = [sum(weight[o][t] * x[t] for t in range(d)) + bias[o] for o in rows]
            return [flat[n * dh:(n + 1) * dh] for n in range(heads)]

        k_proj = {(y, x): project(attention.norm_k(keys[0, :, y, x]), range(d, 2 * d))
                  for y in range(h) for x in range(w)}
        # the module's attention on the same queries and keys, with one-hot values: its weights, (1, hw, H', W')
        key_tensor = torch.tensor([[k_proj[y, x][n] for y in range(h) for x in range(w)] for n in range(heads)],
                                  dtype=torch.float64)[None]
        one_hot = torch.eye(h * w, dtype=torch.float64).view(1, h * w, h, w)
        weights = method.attend(queries, key_tensor, one_hot, OUT, (0, OUT[0]), (0, OUT[1]))

    sizes = []
    for i, j in PIXELS:
        cells = [(y, x) for y in window((i + 0.5) / OUT[0], ratio, h) for x in window((j + 0.5) / OUT[1], ratio, w)]
        sizes.append(len(cells))
        q = project(attention.norm_q(queries[0, :, i, j]), range(d))
        a = {cell: 0.0 for cell in cells}
        for n in range(heads):
            logits = {cell: sum(q[n][t] * k_proj[cell][n][t] for t in range(dh)) / math.sqrt(dh) for cell in cells}
            z = sum(math.exp(v) for v in logits.values())
            for cell, v in logits.items():
                a[cell] += math.exp(v) / z / heads
        expected_weights = torch.zeros(h * w, dtype=torch.float64)
        expected = torch.zeros(feats.shape[1], dtype=torch.float64)
        for (y, x), weight_yx in a.items():
            expected_weights[y * w + x] = weight_yx
            expected += weight_yx * feats[0, :, y, x]
        torch.testing.assert_close(weights[0, :, i, j], expected_weights, rtol=1e-9, atol=1e-12)
        outside = [y * w + x for y in range(h) for x in range(w) if (y, x) not in a]
        assert outside and not weights[0, outside, i, j].any()  # the window restricts, and exactly
        torch.testing.assert_close(out[0, :, i, j], expected, rtol=1e-9, atol=1e-12)
    assert min(sizes[:3]) < sizes[-1]  # the corner windows are clipped, smaller than the inner one
