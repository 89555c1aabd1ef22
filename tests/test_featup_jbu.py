"""The JBU stack against independent references: shapes, a flat-guidance Gaussian, its algebra."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from bench.core.features import project
from bench.fitting.multiview import random_projection
from kernels.window_dot import WindowDot
from methods.featup_jbu import FeatUpJBU
from methods.stages import num_stages


def seeded(*shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))


@pytest.mark.parametrize("stride, stages", [(14, 4), (16, 4), (32, 5), (8, 3)])
def test_stage_count_covers_the_stride(stride, stages):
    assert num_stages(stride) == stages and 2**stages >= stride


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_create_builds_featup_four_stages_for_any_stride(stride):
    """FeatUp's JBUStack always has four x2 stages (x16), whatever the backbone's stride."""
    method = FeatUpJBU.create(SimpleNamespace(dim=6, stride=stride))
    assert len(method.stages) == 4
    grid = (-(-64 // stride), -(-48 // stride))
    out = method.eval()(seeded(1, 6, *grid), seeded(1, 3, 64, 48), (64, 48))
    assert out.shape == (1, 6, 64, 48) and torch.isfinite(out).all()


@pytest.mark.parametrize("stride", [14, 16, 32])
@pytest.mark.parametrize("image_size, out_size", [((70, 100), (75, 101)), ((64, 48), (64, 48)), ((96, 96), (33, 200)),
                                                  ((32, 40), (32, 40))])
def test_output_shape_for_any_stride_aspect_and_size(stride, image_size, out_size):
    grid = tuple(math.ceil(s / stride) for s in image_size)
    method = FeatUpJBU(dim=6, n_stages=num_stages(stride)).eval()
    out = method(seeded(2, 6, *grid), seeded(2, 3, *image_size), out_size)
    assert out.shape == (2, 6, *out_size) and torch.isfinite(out).all()


def gaussian_upsample(x, sigma, radius=3):
    """One x2 step of a plain Gaussian-weighted upsampling, written with a depthwise conv."""
    u = torch.linspace(-1, 1, 2 * radius + 1)
    g = torch.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / (2 * sigma**2))
    g = (g / g.sum()).expand(x.shape[1], 1, -1, -1)
    up = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    return F.conv2d(F.pad(up, [radius] * 4, mode="reflect"), g, groups=x.shape[1])


def test_flat_guidance_without_correction_is_a_gaussian_upsampling():
    method = FeatUpJBU(dim=4, n_stages=2).eval()
    with torch.no_grad():
        method.refine.weight.zero_()
        method.refine.bias.zero_()
        for stage, sigma in zip(method.stages, (0.7, 1.3)):
            stage.fixup_proj[-1].weight.zero_()
            stage.fixup_proj[-1].bias.zero_()
            stage.sigma_spatial.fill_(sigma)
            stage.range_temp.fill_(0.5)
    x = seeded(1, 4, 5, 6)
    flat = torch.full((1, 3, 20, 24), 0.3)
    expected = gaussian_upsample(gaussian_upsample(x, 0.7), 1.3)
    torch.testing.assert_close(method(x, flat, (20, 24)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("band_bytes", [2**30, 3 * 11 * 49 * 4, 11 * 49 * 4])
def test_kernel_is_featups_formula(band_bytes, monkeypatch):
    """softmax(t * logits) times the Gaussian spatial kernel, renormalised, plus 0.1 * the fixup of
    (that kernel, the guidance), written out as FeatUp's code does, with random stage weights: in
    one band, in bands of 3 rows (the last one shorter) and of 1 row; with gradients, in one piece."""
    monkeypatch.setattr("methods.featup_jbu.BAND_BYTES", band_bytes)
    stage = FeatUpJBU(dim=4, n_stages=1).eval().stages[0]
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in stage.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        stage.sigma_spatial.fill_(0.6)  # FeatUp's formula underflows to 0 / 0 for sigmas near 0
        stage.range_temp.fill_(0.7)
    guidance = torch.randn(2, 3, 9, 11, generator=generator)
    projected = stage.range_proj(guidance)
    padded = F.pad(projected, [3] * 4, mode="reflect")
    logits = (F.unfold(padded, 7).view(2, -1, 49, 9, 11) * projected[:, :, None]).sum(1)
    u = torch.linspace(-1, 1, 7)
    spatial = torch.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / (2 * stage.sigma_spatial**2)).reshape(1, 49, 1, 1)
    combined = torch.softmax(stage.range_temp.exp() * logits, dim=1) * spatial
    combined = combined / combined.sum(1, keepdim=True).clamp_min(1e-7)
    expected = combined + 0.1 * stage.fixup_proj(torch.cat([combined, guidance], 1))
    expected = expected.permute(0, 2, 3, 1).reshape(2, 9, 11, 7, 7).detach()
    with torch.no_grad():
        torch.testing.assert_close(stage.kernel(guidance, "auto"), expected, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(stage.kernel(guidance, "auto").detach(), expected, rtol=1e-4, atol=2e-5)


def test_refinement_on_the_lr_grid_equals_refining_the_output():
    """The docstring's claim: X + 0.1*Conv1x1(X) commutes with the stack, the bias aside."""
    method = FeatUpJBU(dim=5, n_stages=2).eval()
    bare = FeatUpJBU(dim=5, n_stages=2).eval()
    bare.load_state_dict(method.state_dict())
    with torch.no_grad():
        bare.refine.weight.zero_()
        bare.refine.bias.zero_()
    x, image = seeded(2, 5, 4, 3), seeded(2, 3, 16, 12)
    y = bare(x, image, (16, 12))
    expected = y + 0.1 * method.refine(y)
    torch.testing.assert_close(method(x, image, (16, 12)), expected, rtol=1e-5, atol=1e-5)


def test_forward_projected_equals_projecting_the_output():
    method = FeatUpJBU(dim=12, n_stages=2).eval()
    x, image = seeded(2, 12, 4, 5), seeded(2, 3, 16, 20)
    proj = random_projection(2, 12, torch.Generator().manual_seed(0), out_dim=3)
    torch.testing.assert_close(method.forward_projected(x, image, (15, 19), proj), project(method(x, image, (15, 19)), proj),
                               rtol=1e-5, atol=1e-5)


def test_window_logits_match_an_unfold_and_pass_gradcheck():
    p = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    padded = F.pad(p, [2] * 4, mode="reflect")
    windows = F.unfold(padded, 5).view(2, 3, 25, 6, 5)
    expected = (windows * p[:, :, None]).sum(1).permute(0, 2, 3, 1)
    logits = lambda q, impl: WindowDot.apply(F.pad(q, [2] * 4, mode="reflect"), q, impl).flatten(-2)  # noqa: E731
    torch.testing.assert_close(logits(p, "torch"), expected)
    torch.testing.assert_close(logits(p.float(), "auto"), expected.float(), rtol=1e-5, atol=1e-5)
    inputs = (padded.clone().requires_grad_(), p.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: WindowDot.apply(a, b, "torch"), inputs)


def test_kernel_impls_agree():
    method = FeatUpJBU(dim=7, n_stages=2).eval()
    x, image = seeded(1, 7, 5, 4), seeded(1, 3, 20, 16)
    fast = method(x, image, (20, 16))
    method.kernel_impl = "reference"
    torch.testing.assert_close(method(x, image, (20, 16)), fast, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter_through_the_projected_path():
    method = FeatUpJBU(dim=6, n_stages=2).train()
    proj = random_projection(2, 6, torch.Generator().manual_seed(1), out_dim=4)
    method.forward_projected(seeded(2, 6, 4, 4), seeded(2, 3, 16, 16), (16, 16), proj).square().mean().backward()
    missing = [n for n, p in method.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
