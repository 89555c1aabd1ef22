"""JAFAR against its public code, its released layout, exact tiles, its own training objective.

The fixtures in tests/fixtures/jafar/ were made once by running github:PaulCouairon/JAFAR at commit
94d4d5456ff3c719d111b9a26ead3813e089302b (their JAFAR at qk_dim 16, 4 heads, every parameter moved
off its initial value, in float64 on seeded random images and features; their Cosine_MSE loss and
train.py's GaussianBlur on random tensors); MAKE.md gives the script and the steps.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch

import methods.jafar as jafar_module
from bench.backbones import backbone_from_model
from bench.fitting import train
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from methods.jafar import Jafar, blur_and_noise, cosine_mse, gaussian_blur
from conftest import Images

FIXTURES = Path(__file__).parent / "fixtures" / "jafar"
CASES = {"separate": 6, "packed": 16}
"""Their nn.MultiheadAttention stores q/k/v_proj_weight apart when the feature width differs from qk_dim
(6 != 16) and one packed in_proj_weight when it equals it."""


@pytest.fixture(autouse=True)
def one_thread():
    """These maps are tiny: one thread avoids OpenMP's per-op synchronisation, which on busy cores cost
    tens of milliseconds per op (the whole file: minutes with two threads, seconds with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(name: str):
    return (torch.load(FIXTURES / f"{name}_state.pt", weights_only=True),
            torch.load(FIXTURES / f"{name}_io.pt", weights_only=True))


def public(name: str) -> tuple[Jafar, dict]:
    """Our module with the fixture's weights (their layout, through state_from_file), in float64."""
    state, io = load(name)
    method = Jafar(CASES[name], qk_dim=16)
    method.load_state_dict(method.state_from_file(state))
    return method.double().eval(), io


@pytest.mark.parametrize("name", CASES)
def test_equals_public_code(name):
    method, io = public(name)
    for size, expected in io["outputs"].items():  # larger than the image, the image's size, smaller
        with torch.no_grad():
            out = method(io["feats"], io["image"], size)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    with torch.no_grad():  # and in float32, to float32 tolerance
        out = method.float()(io["feats"].float(), io["image"].float(), size)
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=5e-6)


def test_training_pieces_equal_public_code():
    ref = torch.load(FIXTURES / "training.pt", weights_only=True)
    torch.testing.assert_close(cosine_mse(ref["pred"], ref["target"]), ref["loss"], rtol=0, atol=1e-12)
    torch.testing.assert_close(gaussian_blur(ref["blur_in"]), ref["blur_out"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_released_layout_loads(name):
    """Their file, packed or not, loads strictly: the same names and shapes, nothing left over or missing."""
    state, io = load(name)
    method = Jafar(CASES[name], qk_dim=16)
    assert method.state_dict().keys() == state.keys()
    method.load_state_dict(method.state_from_file({"jafar": state, "epoch": 0}))  # their training checkpoint
    for key, value in method.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"for {CASES[name]}-channel features, the backbone gives 384.*releases/download"):
        Jafar(384, qk_dim=16).state_from_file(state)
    with pytest.raises(ValueError, match="not a JAFAR state dict.*releases/download"):
        method.state_from_file({"weight": torch.zeros(1)})


def test_parameter_count_at_nafs_setting_and_the_frozen_unused_weights():
    """628,480 parameters at 384 channels, as their model and NAF's table count; of them, the attention's
    value/output projections and the value RMSNorm never reach the output and are frozen:
    128x384 + 128x128 + 128 + 384 = 66,048 (the value part of in_proj_bias, 128, shares a tensor with the
    query and key biases, so it stays trainable and simply gets a zero gradient)."""
    method = Jafar(384)
    assert sum(p.numel() for p in method.parameters()) == 628_480
    frozen = {n: p.numel() for n, p in method.named_parameters() if not p.requires_grad}
    assert frozen == {"cross_decode.cross_attn.norm_v.weight": 384,
                      "cross_decode.cross_attn.attention.v_proj_weight": 128 * 384,
                      "cross_decode.cross_attn.attention.out_proj.weight": 128 * 128,
                      "cross_decode.cross_attn.attention.out_proj.bias": 128}


@pytest.mark.parametrize("size, tile", [((6, 7), 1), ((17, 23), 2), ((17, 23), 7), ((14, 18), 4), ((14, 18), 64),
                                        ((31, 9), 5)])
def test_tiled_equals_whole(size, tile):
    method, io = public("separate")
    with torch.no_grad():
        whole = method(io["feats"], io["image"], size)
        tiled = method.forward_tiled(io["feats"], io["image"], size, tile)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)


def test_tiled_in_bands_equals_whole(monkeypatch):
    """With a tiny working-memory budget every pass runs one image row at a time and the attention one
    query at a time; the result is the same."""
    method, io = public("packed")
    image = torch.nn.functional.interpolate(io["image"], size=(20, 15), mode="bilinear")
    with torch.no_grad():
        whole = method(io["feats"], image, (13, 29))
        monkeypatch.setattr(jafar_module, "CHUNK_BYTES", 1)
        banded = method(io["feats"], image, (13, 29))
        tiled = method.forward_tiled(io["feats"], image, (13, 29), 5)
    torch.testing.assert_close(banded, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)


def test_bad_inputs_are_reported():
    method = Jafar(8, qk_dim=16)
    image = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="built for 8-channel features"):
        method(torch.randn(1, 9, 4, 4), image, (32, 32))
    with pytest.raises(ValueError, match="built for 8-channel features"):
        method(torch.randn(8, 4, 4), image, (32, 32))
    with pytest.raises(ValueError, match=r"needs the images \(B, 3, H, W\)"):
        method(torch.randn(2, 8, 4, 4), image, (32, 32))
    with pytest.raises(ValueError, match=r"needs the images \(B, 3, H, W\)"):
        method(torch.randn(1, 8, 4, 4), torch.rand(1, 1, 32, 32), (32, 32))
    with pytest.raises(ValueError, match="two positive sizes"):
        method.forward_tiled(torch.randn(1, 8, 4, 4), image, (0, 32), 8)


def test_create_takes_the_backbone_normalisation():
    backbone = SimpleNamespace(dim=5, stride=16, mean=torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1),
                               std=torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
    method = Jafar.create(backbone)
    assert method.dim == 5 and method.image_std == (0.5, 0.5, 0.5)
    assert Jafar.create(SimpleNamespace(dim=5, stride=16)).image_mean == pytest.approx((0.485, 0.456, 0.406))


def test_noise_reaches_the_target_only_without_blur():
    """train.py adds the noise in place: to the clean half image when no blur was drawn."""
    x = torch.rand(1, 3, 8, 8) * 3 - 1
    seen = set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        blurred, noised = bool(torch.rand((), generator=g) < 0.5), bool(torch.rand((), generator=g) < 0.3)
        inp, target = blur_and_noise(x, torch.Generator().manual_seed(seed))
        assert inp.min() >= 0 and inp.max() <= 1  # clamped as theirs, in normalised units
        assert torch.equal(target, x) == (blurred or not noised)
        seen.add((blurred, noised))
    assert len(seen) == 4


def test_trains_with_its_own_objective(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "load_dataset", lambda name, split, size, **kw: Images(4, size))
    model = timm.create_model("test_efficientnet", pretrained=False)
    backbone = backbone_from_model("tiny", model, stride=32, dim=256, is_vit=False)
    profile = PROFILES.get("smoke").with_overrides(image_size=(64, 96), train_steps=3, train_batch=2)
    context = RunContext(profile=profile, cache_dir=tmp_path, progress=False)
    method = Jafar.create(backbone)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    train.ensure_trained(method, backbone, context)
    folder, _ = train.checkpoint(method, backbone, context)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["objective"]["optimizer"] == "AdamW" and provenance["objective"]["reg_weight"] == 0.1
    assert len(provenance["losses"]) == 3 and all(0 < loss < 10 for loss in provenance["losses"])
    assert any(not torch.equal(before[k], v) for k, v in method.state_dict().items())
    with torch.no_grad():
        out = method.upsample(backbone, torch.rand(1, 3, 64, 96), (64, 96))
    assert out.shape == (1, 256, 64, 96) and torch.isfinite(out).all()
