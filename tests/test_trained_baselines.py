"""resize_conv, CARAFE and SAPA: shapes, stage rule, reassembly weights, known answers, gradients."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from bench.registry import METHODS
from methods.carafe import CarafeStage
from methods.sapa import SapaStage
from methods.guidance import imagenet_normalised
from methods.stages import num_stages, reassemble, zero_pad

NAMES = ["resize_conv", "carafe", "sapa"]
DIM = 8
OUT = (75, 101)  # not square, not a multiple of any stride


def build(name: str, stride: int = 16, dim: int = DIM):
    torch.manual_seed(0)
    return METHODS.get(name).create(SimpleNamespace(dim=dim, stride=stride))


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("stride, stages", [(14, 4), (16, 4), (32, 5)])
def test_stage_rule_reaches_image_resolution(stride, stages):
    assert num_stages(stride) == stages
    assert stride <= 2 ** stages < 2 * stride


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stride", [8, 14, 16, 32])
def test_shapes_batch_non_square(name, stride):
    """Four x2 stages for every stride, as FeatUp's code builds them; the resize reaches any size."""
    method = build(name, stride)
    assert method.fit == "dataset" and len(method.stages) == 4
    image = torch.rand(2, 3, 70, 100)
    lr = rand(2, DIM, -(-70 // stride), -(-100 // stride))
    with torch.no_grad():
        out = method(lr, image, OUT)
    assert out.shape == (2, DIM, *OUT) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    method = build(name).train()
    method(rand(2, DIM, 3, 4), torch.rand(2, 3, 40, 60), (40, 60)).square().mean().backward()
    missing = [n for n, p in method.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"{name}: no gradient reaches {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_wrong_channels_are_reported(name):
    with pytest.raises(ValueError, match=f"built for {DIM}-channel features"):
        build(name)(rand(1, DIM + 1, 3, 3), torch.rand(1, 3, 48, 48), (48, 48))


def reassemble_brute_force(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Unfold the zero-padded k x k windows, copy them to the 2x2 children, weight and sum."""
    b, c, h, w = values.shape
    k = int(weights.shape[1] ** 0.5)
    windows = F.unfold(values, k, padding=k // 2).reshape(b, c, k * k, h, w)
    windows = windows.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return (windows * weights[:, None]).sum(2)


@pytest.mark.parametrize("k", [3, 5])
def test_reassemble_matches_brute_force(k):
    values, weights = rand(2, 4, 5, 7), rand(2, k * k, 10, 14, seed=1)
    torch.testing.assert_close(reassemble(values, weights), reassemble_brute_force(values, weights))


def test_reassemble_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="do not fit values"):
        reassemble(rand(1, 4, 5, 7), rand(1, 9, 10, 12))
    with pytest.raises(ValueError, match="must be odd"):
        zero_pad(rand(1, 4, 5, 7), 4)


def stage_weights(stage, x):
    return stage.kernels(x) if isinstance(stage, CarafeStage) else stage.kernels(x, torch.rand(2, 3, 37, 51))


@pytest.mark.parametrize("stage_cls, taps", [(CarafeStage, 9), (SapaStage, 25)])
def test_reassembly_weights_are_a_softmax_over_the_window(stage_cls, taps):
    torch.manual_seed(0)
    stage = stage_cls(DIM)
    for p in stage.parameters():  # far from the near-uniform init, so the check has teeth
        p.data.normal_(0, 2)
    weights = stage_weights(stage, rand(2, DIM, 5, 6))
    assert weights.shape == (2, taps, 10, 12)
    assert (weights >= 0).all() and weights.std() > 0.05
    torch.testing.assert_close(weights.sum(1), torch.ones(2, 10, 12))


def test_carafe_with_uniform_kernels_is_a_zero_padded_mean_filter():
    method = build("carafe")
    for stage in method.stages:
        torch.nn.init.zeros_(stage.encoder.weight)
        torch.nn.init.zeros_(stage.encoder.bias)
    lr = rand(2, DIM, 3, 5)
    expected = lr
    for _ in method.stages:  # 3x3 mean over the LR window (out-of-image taps count as 0), then to the 2x2 children
        expected = F.avg_pool2d(expected, 3, stride=1, padding=1, count_include_pad=True)
        expected = F.interpolate(expected, scale_factor=2, mode="nearest")
    expected = F.interpolate(expected, size=OUT, mode="bilinear", align_corners=False)
    with torch.no_grad():
        out = method(lr, torch.rand(2, 3, 40, 70), OUT)
    torch.testing.assert_close(out, expected)


def test_carafe_ignores_the_image():
    method, lr = build("carafe"), rand(1, DIM, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(method(lr, torch.rand(1, 3, 48, 64), OUT), method(lr, torch.zeros(1, 3, 48, 64), OUT))


def test_sapa_stage_keeps_a_constant_and_drops_out_of_image_taps():
    torch.manual_seed(0)
    stage, h, w = SapaStage(DIM), 6, 7
    constant = rand(1, DIM, 1, 1).expand(2, DIM, h, w)
    image = torch.rand(2, 3, 30, 40)
    with torch.no_grad():
        out, weights = stage(constant, image), stage.kernels(constant, image)
    rows, cols = torch.arange(2 * h) // 2, torch.arange(2 * w) // 2
    offsets = torch.arange(5) - 2
    row_in = ((rows[None] + offsets[:, None]) >= 0) & ((rows[None] + offsets[:, None]) < h)  # (dy, y)
    col_in = ((cols[None] + offsets[:, None]) >= 0) & ((cols[None] + offsets[:, None]) < w)  # (dx, x)
    inside = (row_in[:, None, :, None] & col_in[None, :, None, :]).reshape(25, 2 * h, 2 * w)
    kept = (weights * inside).sum(1, keepdim=True)
    torch.testing.assert_close(out, constant[..., :1, :1] * kept)
    torch.testing.assert_close(out[..., 4:-4, 4:-4], constant[..., :1, :1].expand(2, DIM, 2 * h - 8, 2 * w - 8))
    assert (kept[..., 0, 0] < 0.99).all()  # a corner pixel loses its out-of-image taps


def test_sapa_returns_a_constant_away_from_the_borders():
    method = build("sapa")
    constant = rand(1, DIM, 1, 1)
    with torch.no_grad():
        out = method(constant.expand(1, DIM, 12, 12), torch.rand(1, 3, 192, 192), (192, 192))
    torch.testing.assert_close(out[..., 64:128, 64:128], constant.expand(1, DIM, 64, 64))


def test_sapa_depends_on_the_image():
    method, lr = build("sapa"), rand(1, DIM, 3, 4)
    for p in method.parameters():
        p.data.normal_(0, 1)
    with torch.no_grad():
        assert not torch.allclose(method(lr, torch.rand(1, 3, 48, 64), OUT), method(lr, torch.zeros(1, 3, 48, 64), OUT))


def test_sapa_query_of_a_grey_image_is_not_all_zeros():
    """FeatUp feeds SAPA the ImageNet-normalised image: grey pixels keep a non-zero LayerNorm'd query,
    and different greys give different kernels (a raw [0,1] grey maps every query to the bias)."""
    method, lr = build("sapa"), rand(1, DIM, 3, 4)
    stage = method.stages[0]
    normalised = torch.nn.functional.layer_norm(
        imagenet_normalised(torch.full((1, 3, 6, 8), 0.5)).permute(0, 2, 3, 1), (3,))
    assert normalised.abs().min() > 0.1
    for p in method.parameters():
        p.data.normal_(0, 1)
    with torch.no_grad():
        dark, light = (stage.kernels(lr, imagenet_normalised(torch.full((1, 3, 6, 8), g))) for g in (0.2, 0.8))
    assert not torch.allclose(dark, light)


def test_resize_conv_with_zero_convs_is_repeated_bilinear():
    method = build("resize_conv")
    for stage in method.stages:
        torch.nn.init.zeros_(stage.conv.weight)
        torch.nn.init.zeros_(stage.conv.bias)
    lr = rand(2, DIM, 3, 5)
    expected = lr
    for _ in method.stages:
        expected = F.interpolate(expected, scale_factor=2, mode="bilinear", align_corners=False)
    expected = F.interpolate(expected, size=OUT, mode="bilinear", align_corners=False)
    with torch.no_grad():
        out = method(lr, torch.rand(2, 3, 40, 70), OUT)
        torch.testing.assert_close(out, expected)
        method.stages[0].conv.bias.fill_(-1.0)  # clipped by the ReLU of an inner stage: no effect
        torch.testing.assert_close(method(lr, torch.rand(2, 3, 40, 70), OUT), expected)
        method.stages[-1].conv.bias.fill_(-1.0)  # the last stage has no ReLU: a plain shift
        torch.testing.assert_close(method(lr, torch.rand(2, 3, 40, 70), OUT), expected - 1.0)


def test_resize_conv_stage_equals_conv_over_concatenation():
    """The low-res conv shortcut gives the definition: conv([bilinear x2 of x, resized image])."""
    stage = build("resize_conv").stages[-1]
    torch.nn.init.normal_(stage.conv.weight)
    torch.nn.init.normal_(stage.conv.bias)
    x, image = rand(2, DIM, 5, 7), torch.rand(2, 3, 33, 41)
    big = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    guide = F.interpolate(image, size=(10, 14), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(stage(x, image), big + stage.conv(torch.cat([big, guide], dim=1)))
