"""UPLiFT's LocalAttender at a few output pixels against a brute-force evaluation, tap by tap in float64, of the formula
of its public code (mwalmer-umd/UPLiFT uplift/uplift.py, class LocalAttender; methods/uplift.py's docstrings).

The learned network that makes the guide (the image encoder, the decoder's conv blocks and transposed conv) is called
as it is: it is not the kernel; the guide is read off as the input of the attender's 1x1 conv. Everything after it is
written out here with plain loops and none of methods/uplift.py's helpers (``OFFSETS``, ``attend``, ``attention``,
``add_residual``, ``take``): the neighbourhoods (their offset lists, as rules over the 5x5 window, in their
lexicographic order), the logits (1x1 conv of the guide plus the guide's first channels, zero where the guide has
fewer: their ``residual_auto``), the softmax over the taps, each output pixel's parent (Y // 2, X // 2) and the
replication padding at the grid's borders (indices clamped), and the weighted sum of the features.
"""
import math

import pytest
import torch

from methods.uplift import Uplift

g = torch.Generator().manual_seed(0)

RULES = {
    5: lambda dy, dx: abs(dy) + abs(dx) <= 1,
    9: lambda dy, dx: max(abs(dy), abs(dx)) <= 1,
    13: lambda dy, dx: abs(dy) + abs(dx) <= 2,
    17: lambda dy, dx: max(abs(dy), abs(dx)) <= 1 or (dy % 2 == 0 and dx % 2 == 0),
    25: lambda dy, dx: True,
}
"""Their LocalAttender's offset lists (num_connected 5, 9, 13, 17, 25), each sorted (dy, dx) as their lists are."""


def offsets(taps: int) -> list[tuple[int, int]]:
    chosen = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if RULES[taps](dy, dx)]
    assert len(chosen) == taps
    return chosen


def perturbed(dim: int, taps: int, guide: int) -> Uplift:
    """A small UPLiFT in float64, weights moved off their init, BatchNorm statistics random, frozen; its init drawn
    from a seeded global RNG (restored after), so that the test is the same on every run."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        method = Uplift(dim, 16, encoder=(4, 5, 6, 7, 8), decoder=(10, guide), attender=taps)
    method = method.double().eval().requires_grad_(False)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        for m in method.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g), m.running_var.uniform_(0.5, 1.5, generator=g)
    return method


def guides(method: Uplift, feats: torch.Tensor, image: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """The network's guide of every step: the input of each call of the attender's 1x1 conv."""
    seen = []
    hook = method.attender.conv1.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        method(feats, image, size)
    hook.remove()
    return seen


def clamp(i: int, n: int) -> int:
    return min(max(i, 0), n - 1)


@pytest.mark.parametrize("taps, guide, grid, steps, pixels", [
    # attender 17 (their configs), guide wider than the taps: the logits add its first 17 channels. Four corners,
    # edges, the pixel next to a corner whose 2-away taps clamp, inner pixels of each parity.
    (17, 18, (5, 6), 1, [(0, 0), (9, 11), (0, 11), (9, 0), (0, 5), (4, 0), (1, 1), (5, 6), (6, 7), (8, 3)]),
    # the second of two steps (its features: the first step's output, a 10x12 grid)
    (17, 18, (5, 6), 2, [(0, 0), (19, 23), (19, 0), (1, 22), (10, 13), (3, 2)]),
    # 25 taps with a narrower guide (its channels zero-padded to 25 in the residual); 13 and 9; 5 with a guide of 4
    (25, 18, (4, 3), 1, [(0, 0), (7, 5), (0, 5), (3, 2), (4, 3)]),
    (13, 18, (3, 4), 1, [(0, 0), (5, 7), (2, 7), (3, 4)]),
    (9, 6, (4, 4), 1, [(0, 7), (7, 0), (4, 4)]),
    (5, 4, (3, 5), 1, [(0, 0), (5, 9), (0, 9), (3, 4), (2, 5)]),
])
def test_local_attender_is_a_softmax_over_clamped_parent_offsets(taps, guide, grid, steps, pixels):
    """out_c(Y, X) = sum_d softmax_d(logit_d(Y, X)) f_c(clamp(Y//2 + dy_d), clamp(X//2 + dx_d)), with
    logit_d = sum_k W[d, k] guide_k(Y, X) + b_d + (guide_d(Y, X) if d < the guide's channels else 0), f the step's
    input features on an (h, w) grid, (Y, X) on the (2h, 2w) output.

    The features are one indicator channel for each grid pixel of the step's input (so the output there is the
    kernel itself, clamped taps that land on the same pixel added up) followed by 3 random channels (the weighted
    sum); for a second step the input is the first step's output (its first channels are the first step's kernels)."""
    h, w = grid
    dim = h * w + 3
    method = perturbed(dim, taps, guide)
    indicators = torch.eye(h * w, dtype=torch.float64).view(h * w, h, w).unsqueeze(0)
    feats = torch.cat([indicators, torch.randn(1, 3, h, w, generator=g, dtype=torch.float64)], 1)
    image = torch.rand(1, 3, 16 * h, 16 * w, generator=g, dtype=torch.float64)
    size = (h << steps, w << steps)
    with torch.no_grad():
        out = method(feats, image, size)
        value = method(feats, image, (h << (steps - 1), w << (steps - 1)))  # the last step's input
    guide_map = guides(method, feats, image, size)[-1][0].tolist()
    weight = method.attender.conv1.weight[:, :, 0, 0].tolist()
    bias = method.attender.conv1.bias.tolist()
    f = value[0].tolist()
    n_r, n_c = h << (steps - 1), w << (steps - 1)
    ratios = []
    for y, x in pixels:
        logits = [sum(weight[d][k] * guide_map[k][y][x] for k in range(guide)) + bias[d]
                  + (guide_map[d][y][x] if d < guide else 0.0) for d in range(taps)]
        top = max(logits)
        z = sum(math.exp(v - top) for v in logits)
        weights = [math.exp(v - top) / z for v in logits]
        ratios.append(max(weights) / min(weights))
        where = [(clamp(y // 2 + dy, n_r), clamp(x // 2 + dx, n_c)) for dy, dx in offsets(taps)]
        values = [sum(wt * f[c][r][s] for (r, s), wt in zip(where, weights)) for c in range(dim)]
        got = out[0, :, y, x]
        torch.testing.assert_close(got, torch.tensor(values, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        if steps == 1:
            kernel = [0.0] * (h * w)  # the weight each grid pixel gets (clamped taps add up)
            for (r, s), wt in zip(where, weights):
                kernel[r * w + s] += wt
            torch.testing.assert_close(got[:h * w], torch.tensor(kernel, dtype=torch.float64), rtol=1e-9, atol=1e-12)
            assert abs(sum(kernel) - 1) < 1e-12
    # the perturbed network gives weights far from flat (a wrong offset or parent would hardly show otherwise)
    assert min(ratios) > 1.5 and max(ratios) > 10, ratios
