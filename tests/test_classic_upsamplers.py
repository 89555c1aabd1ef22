"""Classic (not learned) guided upsamplers: jbu_classic and guided_filter.

Known answer: features that are a per-pixel function of a sharp-edged image, pooled by 8; both
methods must recover them better than bilinear, and do worse than bilinear with their guidance
off. Then shapes, batches, constants, and each method against a slow per-pixel transcription of
its paper's formula.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.registry import METHODS
from methods.guided_filter import BoxMean, GuidedFilter, inverse_sym3
from methods.jbu_classic import JbuClassic

METHOD_CLASSES = (JbuClassic, GuidedFilter)
# Largest MSE(method) / MSE(bilinear) allowed on the known-answer scenes. Measured with the
# defaults on seeds 0-2: jbu_classic 0.04-0.14, guided_filter 0.62-0.67.
MAX_RATIO = {"jbu_classic": 0.3, "guided_filter": 0.85}
# The control: the same method with its guidance switched off (a colour Gaussian or a regulariser so
# wide that every neighbour weighs the same) smooths like a plain low-pass filter and must do worse
# than bilinear; measured 1.86-2.15 on seeds 0-2 for both. So the image guidance is what helps.
GUIDANCE_OFF = {"jbu_classic": ("sigma_range", 10.0), "guided_filter": ("eps", 10.0)}
MIN_RATIO_GUIDANCE_OFF = 1.5
PALETTE = torch.tensor(
    [[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.15, 0.2, 0.9], [0.9, 0.85, 0.1], [0.6, 0.2, 0.8], [0.1, 0.8, 0.85]]
)


def scene(seed: int, height: int = 64, width: int = 96) -> torch.Tensor:
    """(3,H,W) image in [0,1]: a brown background with 3 rectangles and 3 discs of distinct colours."""
    g = torch.Generator().manual_seed(seed)
    image = torch.tensor([0.5, 0.4, 0.3])[:, None, None].repeat(1, height, width)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    for k, colour in enumerate(PALETTE[torch.randperm(len(PALETTE), generator=g)]):
        u = torch.rand(4, generator=g).tolist()
        if k % 2 == 0:
            y0, x0 = int(u[0] * (height - 16)), int(u[1] * (width - 16))
            mask = (yy >= y0) & (yy < y0 + 10 + int(u[2] * 30)) & (xx >= x0) & (xx < x0 + 10 + int(u[3] * 40))
        else:
            mask = (yy - u[0] * height) ** 2 + (xx - u[1] * width) ** 2 < (6 + 14 * u[2]) ** 2
        image[:, mask] = colour[:, None]
    return image


def colour_features(image: torch.Tensor, seed: int, channels: int = 8) -> torch.Tensor:
    """(B,3,H,W) -> (B,C,H,W): a fixed random affine map of the colour, so feature edges are image edges."""
    g = torch.Generator().manual_seed(1000 + seed)
    weight, bias = torch.randn(channels, 3, generator=g), torch.randn(channels, generator=g)
    return torch.einsum("cd,bdhw->bchw", weight, image) + bias[:, None, None]


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_colour_features_better_than_bilinear(cls, seed):
    image = scene(seed)[None]
    hr = colour_features(image, seed)
    lr = F.avg_pool2d(hr, 8)  # (1, 8, 8, 12)
    bilinear = F.interpolate(lr, size=hr.shape[-2:], mode="bilinear", align_corners=False)
    out = cls()(lr, image, tuple(hr.shape[-2:]))
    unguided = cls()
    setattr(unguided, *GUIDANCE_OFF[cls.name])
    out_unguided = unguided(lr, image, tuple(hr.shape[-2:]))
    mse, mse_bilinear = (out - hr).square().mean().item(), (bilinear - hr).square().mean().item()
    ratio, ratio_unguided = mse / mse_bilinear, (out_unguided - hr).square().mean().item() / mse_bilinear
    print(f"{cls.name} seed {seed}: MSE {mse:.5f}, bilinear {mse_bilinear:.5f}, ratio {ratio:.3f}, "
          f"guidance off {ratio_unguided:.3f}")
    assert mse < mse_bilinear
    assert ratio < MAX_RATIO[cls.name], f"{cls.name}: MSE ratio to bilinear {ratio:.3f}"
    assert ratio_unguided > MIN_RATIO_GUIDANCE_OFF, f"{cls.name} without guidance: ratio {ratio_unguided:.3f}"


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize(
    "grid, image_size, out_size",
    [
        ((8, 12), (64, 96), (64, 96)),  # exact multiple
        ((8, 12), (64, 96), (75, 101)),  # not a multiple of the grid
        ((5, 3), (70, 45), (33, 200)),  # non-square grid, other aspect than the image
        ((7, 7), (100, 100), (5, 9)),  # output smaller than the grid
        ((1, 3), (32, 96), (32, 96)),  # a one-row grid
    ],
)
def test_shapes_and_finite_values(cls, grid, image_size, out_size):
    lr = torch.randn(2, 6, *grid, generator=torch.Generator().manual_seed(1)) * 10
    image = seeded(2, 3, *image_size)
    image[1] = 0.5  # a flat image: zero colour variance in every window
    out = cls()(lr, image, out_size)
    assert out.shape == (2, 6, *out_size)
    assert out.dtype == lr.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
def test_batch_items_are_independent_and_use_their_own_image(cls):
    images = torch.stack([scene(0), scene(1)])
    lr = F.avg_pool2d(colour_features(scene(0)[None], 0), 8).expand(2, -1, -1, -1).contiguous()
    out = cls()(lr, images, (64, 96))
    for i in range(2):
        single = cls()(lr[i : i + 1], images[i : i + 1], (64, 96))
        torch.testing.assert_close(out[i : i + 1], single, rtol=1e-5, atol=1e-5)
    # same features, different images: the outputs must differ (the image guides)
    assert (out[0] - out[1]).abs().max() > 0.1


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize("out_size", [(64, 96), (37, 101)])
def test_constant_features_stay_constant(cls, out_size):
    values = torch.tensor([3.7, -1.25, 0.0, 1000.0])
    lr = values[None, :, None, None].expand(2, -1, 8, 12).contiguous()
    images = torch.stack([scene(3), seeded(3, 64, 96)])
    out = cls()(lr, images, out_size)
    expected = values[None, :, None, None].expand_as(out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
def test_registered(cls):
    import methods.guided_filter  # noqa: F401
    import methods.jbu_classic  # noqa: F401

    assert METHODS.get(cls.name) is cls
    assert cls.fit == "none" and cls.version == "1"


def jbu_per_pixel(lr: torch.Tensor, image: torch.Tensor, out_size: tuple[int, int], m: JbuClassic) -> torch.Tensor:
    """Kopf et al.'s formula, one output pixel at a time (float64, one image)."""
    _, c, h, w = lr.shape
    ho, wo = out_size
    guide = F.interpolate(image, size=out_size, mode="bilinear", align_corners=False, antialias=True)[0]
    guide_lr = F.adaptive_avg_pool2d(image, (h, w))[0]
    out = torch.zeros(c, ho, wo, dtype=torch.float64)
    for y in range(ho):
        uy = (y + 0.5) * h / ho - 0.5
        for x in range(wo):
            ux = (x + 0.5) * w / wo - 0.5
            cy, cx = min(max(math.floor(uy + 0.5), 0), h - 1), min(max(math.floor(ux + 0.5), 0), w - 1)
            total, norm = torch.zeros(c, dtype=torch.float64), 0.0
            for qy in range(max(cy - m.radius, 0), min(cy + m.radius, h - 1) + 1):
                for qx in range(max(cx - m.radius, 0), min(cx + m.radius, w - 1) + 1):
                    spatial = ((uy - qy) ** 2 + (ux - qx) ** 2) / (2 * m.sigma_spatial**2)
                    colour = (guide[:, y, x] - guide_lr[:, qy, qx]).square().sum().item() / (2 * m.sigma_range**2)
                    weight = math.exp(-spatial - colour)
                    total += weight * lr[0, :, qy, qx]
                    norm += weight
            out[:, y, x] = total / norm
    return out[None]


@pytest.mark.parametrize("grid, image_size, out_size", [((4, 6), (24, 36), (19, 29)), ((3, 2), (20, 10), (9, 14))])
def test_jbu_matches_the_per_pixel_formula(grid, image_size, out_size):
    lr = torch.randn(1, 3, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    image = seeded(1, 3, *image_size, seed=3).double()
    method = JbuClassic()
    method.chunk_elements = 20  # several row chunks per LR row
    torch.testing.assert_close(method(lr, image, out_size), jbu_per_pixel(lr, image, out_size, method))


def guided_filter_per_pixel(p: torch.Tensor, guide: torch.Tensor, radius: tuple[int, int], eps: float) -> torch.Tensor:
    """He et al.'s colour guided filter with explicit windows and 3x3 solves (float64, (C,H,W) p)."""
    _, h, w = p.shape
    ry, rx = radius

    def window(y: int, x: int) -> tuple[slice, slice]:
        return slice(max(y - ry, 0), y + ry + 1), slice(max(x - rx, 0), x + rx + 1)

    a = torch.zeros(p.shape[0], 3, h, w, dtype=torch.float64)
    b = torch.zeros(p.shape[0], h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            sy, sx = window(y, x)
            colours = guide[:, sy, sx].reshape(3, -1)
            values = p[:, sy, sx].reshape(p.shape[0], -1)
            mu, mean_p = colours.mean(1), values.mean(1)
            sigma = (colours - mu[:, None]) @ (colours - mu[:, None]).T / colours.shape[1]
            cov = (values - mean_p[:, None]) @ (colours - mu[:, None]).T / colours.shape[1]  # (C, 3)
            a[:, :, y, x] = torch.linalg.solve(sigma + eps * torch.eye(3, dtype=torch.float64), cov.T).T
            b[:, y, x] = mean_p - a[:, :, y, x] @ mu
    out = torch.zeros_like(p)
    for y in range(h):
        for x in range(w):
            sy, sx = window(y, x)
            mean_a, mean_b = a[:, :, sy, sx].mean((2, 3)), b[:, sy, sx].mean((1, 2))
            out[:, y, x] = mean_a @ guide[:, y, x] + mean_b
    return out


@pytest.mark.parametrize("grid, image_size, out_size", [((4, 6), (24, 36), (19, 29)), ((3, 2), (20, 10), (9, 14))])
def test_guided_filter_matches_the_per_pixel_formula(grid, image_size, out_size):
    lr = torch.randn(1, 3, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    image = seeded(1, 3, *image_size, seed=3).double()
    method = GuidedFilter()
    method.chunk_elements = 1  # one channel per step
    ho, wo = out_size
    radius = (max(1, round(ho / grid[0])), max(1, round(wo / grid[1])))
    p = F.interpolate(lr, size=out_size, mode="bilinear", align_corners=False)[0]
    guide = F.interpolate(image, size=out_size, mode="bilinear", align_corners=False, antialias=True)[0]
    expected = guided_filter_per_pixel(p, guide, radius, method.eps)[None]
    torch.testing.assert_close(method(lr, image, out_size), expected)


@pytest.mark.parametrize("size, radius", [((7, 9), (2, 3)), ((5, 4), (6, 1)), ((1, 3), (1, 1)), ((12, 10), (0, 4))])
def test_box_mean_is_the_clipped_window_mean(size, radius):
    x = torch.randn(2, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (h, w), (ry, rx) = size, radius
    expected = torch.stack(
        [
            torch.stack([x[:, max(y - ry, 0) : y + ry + 1, max(c - rx, 0) : c + rx + 1].mean((1, 2)) for c in range(w)], -1)
            for y in range(h)
        ],
        -2,
    )
    torch.testing.assert_close(BoxMean(size, radius, x.device, x.dtype)(x), expected)


def test_inverse_sym3_inverts():
    m = torch.randn(4, 5, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    spd = m @ m.transpose(-1, -2) + 0.1 * torch.eye(3, dtype=torch.float64)  # (4,5,3,3)
    packed = torch.stack([spd[..., 0, 0], spd[..., 1, 1], spd[..., 2, 2], spd[..., 0, 1], spd[..., 0, 2], spd[..., 1, 2]])
    inverse = inverse_sym3(packed).permute(2, 3, 0, 1)
    torch.testing.assert_close(inverse, torch.linalg.inv(spd))
