"""Upsample Anything: equal to the public code (seominseok0429/Upsample-Anything_Pytorch at 6a02ae7, run in float64
on the CPU), deterministic whatever the global RNG, exact tiles, input errors, and an edge it keeps.

Fixture (tests/fixtures/upsample_anything/, made once by MAKE.md's script there, not by these tests): their ``UPA``
on seeded uint8 images and float64 features, "x4" (features 8x10 -> image 32x40) and "x3" (7x9 -> 21x27, where the
fitted radii range over 2..8), with each step's loss, the fitted parameters and the parameter count.

Tolerances: the render alone (their fitted kernel applied by ours) agrees to rounding (1e-12). The fit amplifies
rounding: Adam's first step normalises the gradient of theta, which is exactly zero in exact arithmetic at the
isotropic start (rounding noise of 1e-20 becomes a step of 1e-13), and the next 50 steps grow that by about 1e5
(theta's start moved by 1e-13 moves our output by 2.7e-7 (x4) and 1.3e-7 (x3)). Their own code with the training softmax
chunked by 49 offsets (their eval path: the same sums in another order) moves its float64 output by 3.7e-8 (x4)
and 3.9e-8 (x3); ours differs from theirs by 5.8e-8 and 1.0e-8. Hence 3e-7 on the output (outputs are about 2.5 in
size) and 1e-10 on the losses (observed 1.4e-12 and 3.4e-12). In float32 such fits differ by tenths (MAKE.md).
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from methods.upsample_anything import STEPS, AnisoKernel, Fitted, UpsampleAnything

FIXTURES = Path(__file__).parent / "fixtures" / "upsample_anything"
PARAMETERS = ("sx_raw", "sy_raw", "th_raw", "sr_raw")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny maps: one thread avoids OpenMP's per-op synchronisation, which on busy cores costs tens of
    milliseconds per op (this file: minutes with two threads, seconds with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cases():
    return torch.load(FIXTURES / "upsample_anything_io.pt", weights_only=True)


@pytest.mark.parametrize("case", ["x4", "x3"])
def test_fit_and_output_equal_their_code(case, cases):
    c = cases[case]
    method = UpsampleAnything()
    with torch.no_grad():
        out = method(c["lr"], c["image_uint8"].double() / 255, tuple(c["out"].shape[-2:]))
    assert out.dtype == torch.float64
    (losses,) = method.fit_losses
    assert len(losses) == len(c["losses"]) == STEPS == 51
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64), c["losses"], rtol=0, atol=1e-10)
    torch.testing.assert_close(out, c["out"], rtol=0, atol=3e-7)


@pytest.mark.parametrize("case", ["x4", "x3"])
def test_their_fitted_kernel_renders_their_output(case, cases):
    """Our kernel application, given their fitted parameters, is theirs to rounding."""
    c = cases[case]
    image = c["image_uint8"][0].double() / 255
    grid = tuple(c["lr"].shape[-2:])
    kernel = AnisoKernel(grid, torch.float64)
    kernel.load_state_dict({k: v[0, 0] for k, v in c["state"].items()})
    height, width = image.shape[-2:]
    out = torch.empty(c["lr"].shape[1], height, width, dtype=torch.float64)
    Fitted.of(kernel, image, grid).render(c["lr"][0], (0, height), (0, width), out)
    torch.testing.assert_close(out, c["out"][0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["x4", "x3"])
def test_parameter_count_and_layout_are_theirs(case, cases):
    c = cases[case]
    kernel = AnisoKernel(tuple(c["lr"].shape[-2:]))
    assert sum(p.numel() for p in kernel.parameters()) == int(c["params"]) == 4 * c["lr"].shape[-2] * c["lr"].shape[-1]
    assert [n for n, _ in kernel.named_parameters()] == list(PARAMETERS) == list(c["state"])
    assert sum(p.numel() for p in UpsampleAnything().parameters()) == 0  # nothing persists across images


def small_inputs(dtype=torch.float64, size=(3, 26, 35), grid=(5, 7), batch=1):
    g = torch.Generator().manual_seed(3)
    image = F.interpolate(torch.rand(batch, 3, 4, 5, generator=g, dtype=dtype), size=size[1:], mode="bicubic")
    image = (image + 0.05 * torch.rand(batch, *size, generator=g, dtype=dtype)).clamp(0, 1)
    return torch.randn(batch, 4, *grid, generator=g, dtype=dtype), image


def test_deterministic_and_independent_of_the_global_rng():
    lr, image = small_inputs(batch=2)
    method = UpsampleAnything()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with torch.no_grad():
        first = method(lr, image, (26, 35))
    assert torch.equal(torch.get_rng_state(), before)  # it draws nothing
    torch.manual_seed(1234)
    torch.rand(100)
    with torch.no_grad():
        second = method(lr, image, (26, 35))
        alone = method(lr[1:], image[1:], (26, 35))
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:], rtol=0, atol=1e-12)  # images are fitted independently


@pytest.mark.parametrize("tile", [8, 13])
def test_tiles_equal_the_whole_output(tile):
    """Float32, the suite's precision, at sizes that are no multiple of the grid (uneven cells on both axes)."""
    lr, image = small_inputs(torch.float32, size=(3, 29, 38), grid=(6, 7))
    method = UpsampleAnything()
    with torch.no_grad():
        whole = method(lr, image, (29, 38))
        tiled = method.forward_tiled(lr, image, (29, 38), tile)
    assert whole.dtype == tiled.dtype == torch.float32
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6 * float(whole.abs().max()))


def test_bad_input_is_reported():
    lr, image = small_inputs()
    method = UpsampleAnything()
    with pytest.raises(ValueError, match="'upsample_anything'.*image batch"):
        method(lr, image[:, :2], (26, 35))
    with pytest.raises(ValueError, match="'upsample_anything'.*image batch"):
        method(torch.cat([lr, lr]), image, (26, 35))
    with pytest.raises(ValueError, match="'upsample_anything' needs \\(B,C,h,w\\) features"):
        method(lr[0], image, (26, 35))
    with pytest.raises(ValueError, match="'upsample_anything' needs floating-point features"):
        method(lr.long(), image, (26, 35))
    with pytest.raises(ValueError, match="'upsample_anything' upsamples.*at least the feature grid"):
        method(lr, image, (4, 35))


def test_keeps_an_edge_sharper_than_bilinear():
    """Left part one colour, right part another, the edge at column 36 of 64, inside feature cell 4 of 8 (scale 8);
    features are the ideal step averaged onto the 4x8 grid (0 | 0.5 in cell 4 | 1). Measured: bilinear's mean
    absolute error to the step is 0.0625 (14 of 64 columns of a row strictly between 0.05 and 0.95); ours 2e-16
    (none). Ours without the colour term (a mutant: colour distances set to 0) gives 0.008 (2 columns): so the
    bounds below fail unless the image guides the edge to the right column."""
    height, width, edge = 32, 64, 36
    image = torch.empty(1, 3, height, width, dtype=torch.float64)
    image[..., :edge] = torch.tensor([0.2, 0.3, 0.8], dtype=torch.float64).view(1, 3, 1, 1)
    image[..., edge:] = torch.tensor([0.9, 0.7, 0.1], dtype=torch.float64).view(1, 3, 1, 1)
    ideal = (torch.arange(width) >= edge).double().expand(height, width)
    lr = F.adaptive_avg_pool2d(ideal[None, None], (4, 8)).repeat(1, 2, 1, 1)
    lr[:, 1] = 0.5  # a constant channel stays constant: every output is a convex combination
    with torch.no_grad():
        ours = UpsampleAnything()(lr, image, (height, width))
    bilinear = F.interpolate(lr, size=(height, width), mode="bilinear", align_corners=False)
    err_ours = (ours[0, 0] - ideal).abs().mean().item()
    err_bilinear = (bilinear[0, 0] - ideal).abs().mean().item()
    ramp = lambda x: int(((x > 0.05) & (x < 0.95)).sum())  # noqa: E731
    assert err_bilinear > 0.05 and err_ours < 1e-3, (err_ours, err_bilinear)
    assert ramp(ours[0, 0, height // 2]) == 0 and ramp(bilinear[0, 0, height // 2]) > 10
    torch.testing.assert_close(ours[0, 1], torch.full((height, width), 0.5, dtype=torch.float64), rtol=0, atol=1e-12)
