"""JAFAR's attention weights and output at a few output pixels against a brute-force evaluation of its formula,
in float64, in the style of tests/test_kernel_formulas.py.

The learned sub-networks (encoders, RoPE, pooling, GroupNorms, the 3x3 query conv, the SFT convs, the RMSNorms)
are called to obtain each pixel's query and the LR keys; everything from there on (the query/key in-projections
read out of nn.MultiheadAttention's documented layout, the split into heads, the 1/sqrt(d_head) scale, the softmax
over every LR pixel, the mean over heads and the weighted sum of the LR features) is written out with plain loops,
none of ``HeadAveragedAttention.keys/weights/projection`` nor ``Jafar._attend/_project_keys/_encode``.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from methods.jafar import Jafar

LR, IMAGE, OUT = (3, 5), (13, 19), (7, 11)  # non-square LR grid; the output is no whole multiple of it
PIXELS = [(0, 0), (6, 10), (0, 10), (3, 0), (4, 6)]  # three corners, the left edge, an inner pixel
QK, HEADS = 16, 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny maps: one thread avoids OpenMP's per-op synchronisation on busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed(module: torch.nn.Module, g: torch.Generator) -> torch.nn.Module:
    """The module in float64 with every weight moved off its initial value (zero biases, unit norms), frozen."""
    module = module.double().eval().requires_grad_(False)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return module


@pytest.mark.parametrize("dim", [6, 16], ids=["separate", "packed"])  # q/k/v_proj_weight apart, or in_proj_weight
def test_jafar_weights_are_the_head_mean_of_scaled_dot_product_softmaxes_over_every_lr_pixel(dim):
    """Their CrossAttention (nn.MultiheadAttention called for its head-averaged weights), per output pixel p:
    q = W_q RMSNorm_q(conv3x3(GN(pool_out(query_enc(E))))(p)) + b_q and, per LR pixel k,
    k = W_k RMSNorm_k(gamma(c) * GN(pool_lr(key_enc(E))) + beta(c))(k) + b_k, with E = RoPE(image_enc(normalised
    image)) on [0, 1] coordinates and c = feature_enc(L2-normalised LR features); W/b the first and second thirds
    of nn.MultiheadAttention's in-projection. Per head h of d = qk/heads channels
    a_h(p, k) = softmax_k(q_h . k_h / sqrt(d)) over all LR pixels (no window), w(p, k) = mean_h a_h(p, k), and
    out(p) = sum_k w(p, k) f_lr(k), the raw LR features (methods/jafar.py's docstring; nn.MultiheadAttention's
    scaled dot product and average_attn_weights)."""
    g = torch.Generator().manual_seed(0)
    method = perturbed(Jafar(dim, qk_dim=QK, heads=HEADS), g)
    lr = torch.randn(1, dim, *LR, generator=g, dtype=torch.float64)
    image = torch.rand(1, 3, *IMAGE, generator=g, dtype=torch.float64)
    attn = method.cross_decode.cross_attn
    mha = attn.attention
    d = QK // HEADS

    with torch.no_grad():
        out = method(lr, image, OUT)

        # The network: queries and keys from the learned sub-networks.
        mean = torch.tensor(method.image_mean, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(method.image_std, dtype=torch.float64).view(1, 3, 1, 1)
        rows, cols = (torch.linspace(0, 1, n, dtype=torch.float64) for n in IMAGE)
        encoded = method.rope(method.image_encoder((image - mean) / std), rows, cols)
        queries = method.cross_decode.conv2d(method.norm(F.adaptive_avg_pool2d(method.query_encoder(encoded), OUT)))
        pooled_keys = F.adaptive_avg_pool2d(method.key_encoder(encoded), LR)
        code = method.key_features_encoder(lr / lr.norm(dim=1, keepdim=True))
        sft = method.sft_key
        keys = sft.gamma(code) * sft.norm(pooled_keys) + sft.beta(code)

        # nn.MultiheadAttention's in-projection layout: rows [0, qk) query, [qk, 2qk) key.
        if dim == QK:
            w_q, w_k = mha.in_proj_weight[:QK], mha.in_proj_weight[QK:2 * QK]
        else:
            w_q, w_k = mha.q_proj_weight, mha.k_proj_weight
        b_q, b_k = mha.in_proj_bias[:QK], mha.in_proj_bias[QK:2 * QK]
        lr_pixels = [(y, x) for y in range(LR[0]) for x in range(LR[1])]
        projected_keys = [w_k @ attn.norm_k(keys[0, :, y, x]) + b_k for y, x in lr_pixels]

        # The method's own weights, from the same queries and keys, to compare against.
        flat_queries = queries.flatten(2).transpose(1, 2)
        weights = attn.weights(flat_queries, attn.keys(keys))  # (1, out pixels, LR pixels)

    assert out.shape == (1, dim, *OUT)
    for i, j in PIXELS:
        q = w_q @ attn.norm_q(queries[0, :, i, j]) + b_q
        expected_w = [0.0] * len(lr_pixels)
        for h in range(HEADS):
            logits = [sum(float(q[h * d + c]) * float(k[h * d + c]) for c in range(d)) / math.sqrt(d)
                      for k in projected_keys]
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            z = sum(exps)
            for n, e in enumerate(exps):
                expected_w[n] += e / z / HEADS
        expected_out = torch.zeros(dim, dtype=torch.float64)
        for n, (y, x) in enumerate(lr_pixels):
            expected_out += expected_w[n] * lr[0, :, y, x]
        assert max(expected_w) - min(expected_w) > 0.05 and max(expected_w) < 0.9  # neither uniform nor one-hot
        torch.testing.assert_close(weights[0, i * OUT[1] + j], torch.tensor(expected_w, dtype=torch.float64),
                                   rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(out[0, :, i, j], expected_out, rtol=1e-9, atol=1e-12)
