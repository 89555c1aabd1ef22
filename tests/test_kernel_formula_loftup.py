"""LoftUp's cross-attention at a few output pixels against a brute-force evaluation of its formula, in float64.

Formula (github.com/andrehuang/loftup at 6620d9bcde4c1af5cddedde6b9aaed6d4174a799, ``upsamplers/layers.py``: each
layer is a pre-norm ``nn.MultiheadAttention(query=norm_q(x), key=value=norm_kv(tokens))`` with 4 heads, then a
residual GELU MLP; methods/loftup.py's CrossBlock). For pixel p with query input x_p, LR tokens t_n (n over all
h*w tokens, no mask) and head h of size d = width / heads:

    q = W_q LN_q(x_p) + b_q,   k_n = W_k LN_kv(t_n) + b_k,   v_n = W_v LN_kv(t_n) + b_v   (rows of in_proj_weight)
    a_{h,n} = exp(<q_h, k_{n,h}> / sqrt(d)) / sum_m exp(<q_h, k_{m,h}> / sqrt(d))
    o_h = sum_n a_{h,n} v_{n,h},   attn(p) = W_o [o_1; ...; o_heads] + b_o
    block(p) = y + MLP(y),  y = x_p + attn(p)

The learnt sub-networks give the inputs (the block's pixel queries and the LR tokens, captured with forward
hooks); the layer norms, projections, logits, softmax and weighted sums are written out here with plain loops,
and compared with the attention's output projection and the block's output at those pixels, for both layers.
"""
import math

import torch

from methods.loftup import LoftUp

LR, OUT = (3, 5), (11, 17)  # non-square LR grid; the output is no whole multiple of it
PIXELS = [(0, 0), (10, 16), (0, 9), (7, 0), (6, 11)]  # two corners, top and left edges, an inner pixel


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> list[float]:
    """LayerNorm of one vector, written out."""
    n = len(x)
    mean = sum(float(v) for v in x) / n
    var = sum((float(v) - mean) ** 2 for v in x) / n
    return [(float(x[c]) - mean) / math.sqrt(var + norm.eps) * float(norm.weight[c]) + float(norm.bias[c])
            for c in range(n)]


def affine(weight: torch.Tensor, bias: torch.Tensor, x: list[float]) -> list[float]:
    """weight @ x + bias with loops."""
    return [float(bias[o]) + sum(float(weight[o, c]) * x[c] for c in range(len(x))) for o in range(weight.shape[0])]


def test_loftup_attention_is_scaled_dot_product_softmax_over_all_lr_tokens():
    g = torch.Generator().manual_seed(0)
    method = LoftUp(8).double().eval().requires_grad_(False)  # width 28 (8 + 20 position channels), 4 heads of 7
    with torch.no_grad():  # the in-projection moved less: at 0.3 most softmaxes are one-hot (max weight > 0.99)
        for name, p in method.named_parameters():
            p.add_((0.15 if ".qkv." in name else 0.3) * torch.randn(p.shape, generator=g, dtype=torch.float64))
    lr = torch.randn(2, 8, *LR, generator=g, dtype=torch.float64)
    image = torch.rand(2, 3, *OUT, generator=g, dtype=torch.float64)

    captured = {}

    def keep(name):
        def hook(module, inputs, output):
            captured.setdefault(name, []).append((inputs, output))
        return hook

    handles = []
    for i, block in enumerate(method.blocks):
        handles += [block.register_forward_hook(keep(f"block{i}")), block.proj.register_forward_hook(keep(f"proj{i}")),
                    block.token_norm.register_forward_hook(keep(f"tokens{i}"))]
    try:
        with torch.no_grad():
            method(lr, image, OUT)
    finally:
        for handle in handles:
            handle.remove()

    width, n_tokens = 8 + 20, LR[0] * LR[1]
    for i, block in enumerate(method.blocks):
        heads = block.heads
        d = width // heads
        assert heads == 4 and d == 7
        queries = torch.cat([inputs[0] for inputs, _ in captured[f"block{i}"]], dim=1)  # (B, H*W, width), row-major
        block_out = torch.cat([out for _, out in captured[f"block{i}"]], dim=1)
        attn_out = torch.cat([out for _, out in captured[f"proj{i}"]], dim=1)
        (tokens,), _ = captured[f"tokens{i}"][0]
        assert tokens.shape == (2, n_tokens, width)
        w_in, b_in = block.qkv.weight, block.qkv.bias
        for b in range(2):
            keys, values = [], []
            for n in range(n_tokens):
                normed = layer_norm(tokens[b, n], block.token_norm)
                keys.append(affine(w_in[width:2 * width], b_in[width:2 * width], normed))
                values.append(affine(w_in[2 * width:], b_in[2 * width:], normed))
            for r, c in PIXELS:
                x = queries[b, r * OUT[1] + c]
                q = affine(w_in[:width], b_in[:width], layer_norm(x, block.query_norm))
                attended = []
                for h in range(heads):
                    dims = range(h * d, (h + 1) * d)
                    logits = [sum(q[e] * keys[n][e] for e in dims) / math.sqrt(d) for n in range(n_tokens)]
                    top = max(logits)
                    z = sum(math.exp(v - top) for v in logits)
                    weights = [math.exp(v - top) / z for v in logits]
                    assert max(weights) < 0.9  # not a one-hot softmax: every token counts
                    attended += [sum(weights[n] * values[n][e] for n in range(n_tokens)) for e in dims]
                expected = torch.tensor(affine(block.proj.weight, block.proj.bias, attended), dtype=torch.float64)
                torch.testing.assert_close(attn_out[b, r * OUT[1] + c], expected, rtol=1e-9, atol=1e-12)
                y = x + expected
                torch.testing.assert_close(block_out[b, r * OUT[1] + c], y + block.mlp(y), rtol=1e-9, atol=1e-12)
