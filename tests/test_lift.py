"""LiFT: equal to the public code, the authors' state-dict layout, tiles, its own training objective, errors.

The fixture (tests/fixtures/lift, MAKE.md) was made once by running github.com/saksham-s/lift at
fd6d929a7c2108905c89d76ebf80e16f03877139: its ``LiFT(8, 16)`` with seeded weights (BatchNorm
statistics and affines randomised), saved as state_dict.pt (float32, the released files' layout),
then run in float64 in eval mode through ``ViTLiFTExtractor.extract_descriptors_iterative_lift``
(its own loop: the same weights again with the image bilinearly doubled each time) on seeded
random features and [0,1] images normalised with ImageNet's mean/std: patch 16 (2 images, 2x3 grid,
3 iterations) and patch 8 (1 image, 3x4 grid, 2 iterations); every iteration's output is stored.
"""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.fitting import train
from bench.fitting.weights import WeightsError
from bench.registry import METHODS
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from methods import lift
from methods.lift import Lift, color_jitter, shift_hue, steps_to_cover
from conftest import assert_tiles_equal_whole_through_a_backbone, trained_on_a_tiny_backbone

FIXTURES = Path(__file__).parent / "fixtures" / "lift"
DIM = 8


def released_state() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "state_dict.pt", weights_only=True)


def randomised(dim: int, patch: int, seed: int = 0) -> Lift:
    """A float64 LiFT in eval mode with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    method = Lift(dim, patch).double()
    with torch.no_grad():
        for m in method.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    return method.eval()


@pytest.mark.parametrize("case", ["patch16", "patch8"])
def test_equals_the_public_code(case):
    data = torch.load(FIXTURES / "cases.pt", weights_only=True)[case]
    method = Lift(DIM, data["patch"])
    method.load_state_dict(method.state_from_file(released_state()))
    method = method.double().eval()
    image, feats = data["image"].double(), data["feats"].double()
    with torch.no_grad():
        for steps, expected in enumerate(data["outputs"], 1):
            out = method(feats, image, tuple(expected.shape[-2:]))
            assert steps_to_cover(tuple(feats.shape[-2:]), tuple(out.shape[-2:])) == steps
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_released_layout_loads_through_the_run_option(tmp_path):
    state = released_state()
    method = METHODS.get("lift").create(SimpleNamespace(dim=DIM, stride=16))
    assert method.patch == 16 and set(method.state_dict()) == set(state)
    assert all(method.state_dict()[k].shape == v.shape for k, v in state.items())
    path = tmp_path / "lift_dataparallel.pth"  # saved from a DataParallel module, as their extractor expects
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    context = RunContext(profile=PROFILES.get("smoke"), cache_dir=tmp_path, progress=False, weights={"lift": str(path)})
    train.ensure_trained(method, SimpleNamespace(name="fake", dim=DIM, stride=16), context)
    for k, v in state.items():
        torch.testing.assert_close(method.state_dict()[k], v, rtol=0, atol=0)

    wide = METHODS.get("lift").create(SimpleNamespace(dim=16, stride=16))
    with pytest.raises(WeightsError, match=r"8-channel features.*built for 16 channels.*drive\.google\.com"):
        train.ensure_trained(wide, SimpleNamespace(name="fake", dim=16, stride=16), context)


@pytest.mark.parametrize("stride, patch", [(8, 8), (14, 16), (16, 16), (32, 32)])
def test_patch_follows_the_stride(stride, patch):
    assert Lift.create(SimpleNamespace(dim=4, stride=stride)).patch == patch


@pytest.mark.parametrize("patch, grid, image, size, tile", [
    (16, (3, 4), (48, 64), (19, 27), 7),     # not square, 3 steps, resized at the end, tiles not aligned
    (16, (3, 4), (40, 60), (12, 16), 5),     # image resized to 16x the grid first; no final resize
    (8, (4, 3), (32, 24), (15, 11), 4),
    (32, (2, 3), (64, 96), (8, 12), 3),      # two pools
    (16, (3, 4), (48, 64), (3, 4), 2),       # no step: just the grid
])
def test_tiles_equal_whole(patch, grid, image, size, tile):
    method = randomised(DIM, patch)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, DIM, *grid, generator=g, dtype=torch.float64)
    img = torch.rand(2, 3, *image, generator=g, dtype=torch.float64)
    with torch.no_grad():
        whole = method(feats, img, size)
        tiled = method.forward_tiled(feats, img, size, tile)
    assert whole.shape == (2, DIM, *size)
    # 1e-7: the final resize of a tile passes torch its scale, the whole one its sizes (tiling.resize_region)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-7)


def test_upsample_tiled_with_a_backbone():
    assert_tiles_equal_whole_through_a_backbone(randomised(DIM, 16).float(), DIM, (24, 32))


def test_features_are_raw():
    backbone = SimpleNamespace(features=lambda x: x[:, :1] * 5)
    image = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(Lift(2).features(backbone, image), image[:, :1] * 5)


def test_bad_inputs_are_reported():
    method = Lift(DIM).eval()
    with pytest.raises(ValueError, match=f"built for {DIM}-channel features"):
        method(torch.randn(1, DIM + 1, 3, 3), torch.rand(1, 3, 48, 48), (48, 48))
    with pytest.raises(ValueError, match="image batch"):
        method(torch.randn(2, DIM, 3, 3), torch.rand(1, 3, 48, 48), (48, 48))
    with pytest.raises(ValueError, match="image batch"):
        method(torch.randn(1, DIM, 3, 3), torch.rand(1, 1, 48, 48), (48, 48))
    with pytest.raises(ValueError, match="output size"):
        method(torch.randn(1, DIM, 3, 3), torch.rand(1, 3, 48, 48), (0, 48))
    with pytest.raises(ValueError, match="does not fit"):
        method.step(torch.randn(1, DIM, 3, 3), torch.randn(1, 3, 32, 48))
    with pytest.raises(ValueError, match="power-of-two patch"):
        Lift(DIM, 12)


def test_color_jitter():
    img = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shift_hue(img, 0.0), img)
    torch.testing.assert_close(shift_hue(shift_hue(img, 0.15), -0.15), img)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(shift_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1))
    out = color_jitter(img, torch.Generator().manual_seed(1))
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, img)


def test_trains_with_its_own_objective(tmp_path, monkeypatch):
    method, before, provenance, backbone = trained_on_a_tiny_backbone(Lift, lift, monkeypatch, tmp_path)
    assert provenance["objective"] == Lift.own_objective and "views" not in provenance
    assert len(provenance["losses"]) == 3 and all(0 < loss < 4 for loss in provenance["losses"])
    changed = [k for k, v in method.state_dict().items() if not torch.equal(v, before[k])]
    assert "outc.weight" in changed and "image_convs_1.0.weight" in changed
    assert "up1.conv_1.double_conv.1.running_mean" in changed
    with torch.no_grad():
        out = method.upsample(backbone, torch.rand(1, 3, 64, 96), (64, 96))
    assert out.shape == (1, 256, 64, 96) and torch.isfinite(out).all()
