"""Each method's kernel at a few output pixels against a brute-force evaluation of its paper's or public code's
formula over the window.

Normalisation alone is not enough: SAPA's logits scaled by 1/sqrt(d) still give kernels that sum to 1 and keep
constants constant, only flatter. Here every tap's weight is computed again from the formula, in float64,
with plain loops over the window and none of the method's own helpers (windows, padding, reassembly).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from methods.carafe import CarafeStage
from methods.jbu_classic import JbuClassic
from methods.sapa import SapaStage

PIXELS = [(0, 0), (3, 6), (5, 1), (7, 7), (2, 5)]  # corners (taps outside the grid), inside, odd and even parities
g = torch.Generator().manual_seed(0)


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """The module in float64 with its weights moved off their initial values (zero biases, tiny inits), frozen."""
    module = module.double().eval().requires_grad_(False)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return module


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm of one vector, written out."""
    centred = x - x.mean()
    return centred / torch.sqrt((centred ** 2).mean() + norm.eps) * norm.weight + norm.bias


def window_sum(values: torch.Tensor, weights: dict[tuple[int, int], float], parent: tuple[int, int]) -> torch.Tensor:
    """sum over taps (dy, dx) of weight * values[:, parent + (dy, dx)], taps outside the grid contributing 0."""
    h, w = values.shape[-2:]
    out = torch.zeros(values.shape[0], dtype=values.dtype)
    for (dy, dx), weight in weights.items():
        y, x = parent[0] + dy, parent[1] + dx
        if 0 <= y < h and 0 <= x < w:
            out += weight * values[:, y, x]
    return out


def test_sapa_kernel_is_the_softmax_of_raw_query_key_products_over_the_5x5_window():
    """SAPA's code: logit = q(HR guidance) · k(LR feature at parent + offset), no 1/sqrt(d); out-of-grid logits 0."""
    stage = perturbed(SapaStage(dim=6))
    x = torch.randn(1, 6, 4, 4, generator=g, dtype=torch.float64)
    guidance = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)  # already at 2h x 2w: pooling is identity
    kernels = stage.kernels(x, guidance)
    out = stage(x, guidance)
    for i, j in PIXELS:
        q = stage.q(layer_norm(guidance[0, :, i, j], stage.norm_q))
        logits = {}
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                y, xx = i // 2 + dy, j // 2 + dx
                inside = 0 <= y < 4 and 0 <= xx < 4
                logits[dy, dx] = float(q @ stage.k(layer_norm(x[0, :, y, xx], stage.norm_k))) if inside else 0.0
        z = sum(math.exp(v) for v in logits.values())
        weights = {t: math.exp(v) / z for t, v in logits.items()}
        expected = torch.tensor([weights[dy, dx] for dy in range(-2, 3) for dx in range(-2, 3)], dtype=torch.float64)
        torch.testing.assert_close(kernels[0, :, i, j], expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out[0, :, i, j], window_sum(x[0], weights, (i // 2, j // 2)), rtol=1e-10, atol=1e-12)


def test_carafe_kernel_is_the_softmax_of_the_encoders_shuffled_logits_over_the_3x3_window():
    """mmcv's CARAFE: the encoder gives (2k)^2 logits per LR pixel; HR child (dy, dx) of an LR pixel takes channels
    t*4 + 2*dy + dx (pixel shuffle), softmax over the k^2 taps t, applied to the LR k x k window (zeros outside)."""
    stage = perturbed(CarafeStage(dim=6))
    x = torch.randn(1, 6, 4, 4, generator=g, dtype=torch.float64)
    encoded = F.conv2d(F.conv2d(x, stage.compress.weight, stage.compress.bias), stage.encoder.weight,
                       stage.encoder.bias, padding=1)  # the encoder's convolutions, as mmcv runs them
    kernels, out = stage.kernels(x), stage(x, None)
    for i, j in PIXELS:
        child = 2 * (i % 2) + j % 2
        logits = [float(encoded[0, t * 4 + child, i // 2, j // 2]) for t in range(9)]
        z = sum(math.exp(v) for v in logits)
        weights = {(t // 3 - 1, t % 3 - 1): math.exp(v) / z for t, v in enumerate(logits)}
        torch.testing.assert_close(kernels[0, :, i, j], torch.tensor([weights[t // 3 - 1, t % 3 - 1] for t in range(9)],
                                                                      dtype=torch.float64), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out[0, :, i, j], window_sum(x[0], weights, (i // 2, j // 2)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("out_size", [(8, 8), (11, 9)])
def test_jbu_classic_is_kopfs_normalised_joint_bilateral_sum(out_size):
    """out(p) = sum_q f(q) G_s(p_lr - q) G_r(I(p) - I_lr(q)) / sum_q (same), q within 2 LR pixels of p's nearest LR
    cell, p_lr the align_corners=False coordinate, I_lr the image averaged over each LR cell."""
    method = JbuClassic()
    lr = torch.randn(1, 5, 4, 3, generator=g, dtype=torch.float64)
    image = torch.rand(1, 3, 8, 6, generator=g, dtype=torch.float64)  # each LR cell averages a 2x2 block
    image_lr = image.view(1, 3, 4, 2, 3, 2).mean((3, 5))
    image_hr = image if out_size == (8, 6) else F.interpolate(image, size=out_size, mode="bilinear",
                                                              align_corners=False, antialias=True)
    out = method(lr, image, out_size)
    ho, wo = out_size
    for i, j in [(0, 0), (ho - 1, wo - 1), (ho // 2, 1), (1, wo // 2)]:
        uy, ux = (i + 0.5) * 4 / ho - 0.5, (j + 0.5) * 3 / wo - 0.5
        cy, cx = min(max(math.floor(uy + 0.5), 0), 3), min(max(math.floor(ux + 0.5), 0), 2)
        weights = {}
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                qy, qx = cy + dy, cx + dx
                if 0 <= qy < 4 and 0 <= qx < 3:
                    colour = float(((image_hr[0, :, i, j] - image_lr[0, :, qy, qx]) ** 2).sum())
                    spatial = (uy - qy) ** 2 + (ux - qx) ** 2
                    weights[dy, dx] = math.exp(-spatial / (2 * method.sigma_spatial ** 2)
                                               - colour / (2 * method.sigma_range ** 2))
        total = sum(weights.values())
        expected = window_sum(lr[0], {t: w / total for t, w in weights.items()}, (cy, cx))
        torch.testing.assert_close(out[0, :, i, j], expected, rtol=1e-9, atol=1e-12)


def test_featup_jbu_kernel_is_featups_range_times_spatial_kernel_plus_its_fixup():
    """FeatUp's JBULearnedRange: range = softmax over the 7x7 window of exp(range_temp) * <proj(p+t), proj(p)> (the
    projected guidance reflected at the borders), times the spatial Gaussian exp(-|u|^2 / 2 sigma^2) on a [-1, 1]
    grid, renormalised; then + 0.1 * fixup_proj([kernel, guidance]) at the pixel."""
    from methods.featup_jbu import JBUStage

    stage = perturbed(JBUStage())
    guidance = torch.randn(1, 3, 10, 12, generator=g, dtype=torch.float64)
    kernel = stage.kernel(guidance, "reference")
    proj = stage.range_proj(guidance)[0]
    h, w = proj.shape[-2:]

    def reflect(n: int, size: int) -> int:
        return -n if n < 0 else 2 * (size - 1) - n if n >= size else n

    for i, j in [(0, 0), (9, 11), (4, 7), (1, 10)]:
        taps = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)]
        logits = [float(proj[:, reflect(i + dy, h), reflect(j + dx, w)] @ proj[:, i, j]) for dy, dx in taps]
        temperature = math.exp(float(stage.range_temp))
        z = sum(math.exp(temperature * v) for v in logits)
        sigma = float(stage.sigma_spatial)
        combined = [math.exp(temperature * v) / z * math.exp(-((dy / 3) ** 2 + (dx / 3) ** 2) / (2 * sigma ** 2))
                    for v, (dy, dx) in zip(logits, taps)]
        combined = torch.tensor(combined, dtype=torch.float64) / sum(combined)
        fixup = stage.fixup_proj(torch.cat([combined, guidance[0, :, i, j]]).view(1, -1, 1, 1)).flatten()
        torch.testing.assert_close(kernel[0, i, j].flatten(), combined + 0.1 * fixup, rtol=1e-9, atol=1e-12)
