"""LoftUp against its public code, its released checkpoint layout, tiles, training and bad input.

The fixture (tests/fixtures/loftup, made as tests/fixtures/loftup/MAKE.md says) comes from one
run of github.com/andrehuang/loftup at 6620d9bcde4c1af5cddedde6b9aaed6d4174a799: their
UpsamplerwithChannelNorm(LoftUp(4, lr_pe_type="sine"), ChannelNorm(4)) with every tensor perturbed
from its init (seed 0), saved as ``state_dict.pt`` (their released ``pytorch_model.bin`` layout);
two seeded [0,1] images (17x23) and raw LR features (4x6) went through it one image at a time,
ImageNet-normalised as their example_usage.py does, in float32 and in float64 (``io.pt``).
"""
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch

from bench.backbones import backbone_from_model
from bench.fitting import train
from bench.core.features import standardise
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from methods.loftup import RELEASES, LoftUp
from conftest import Images

FIXTURE = Path(__file__).parent / "fixtures" / "loftup"


@pytest.fixture(scope="module")
def theirs():
    return torch.load(FIXTURE / "state_dict.pt", weights_only=True), torch.load(FIXTURE / "io.pt", weights_only=True)


def loaded(state, dim=4) -> LoftUp:
    method = LoftUp(dim)
    method.load_state_dict(method.state_from_file(state))
    return method.eval()


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_equals_public_code(theirs, dtype, atol):
    """Their forward on raw features = ours on the suite's standardised ones (their ChannelNorm's affine is ours)."""
    state, io = theirs
    method = loaded(state).to(dtype)
    with torch.no_grad():
        out = method(standardise(io["lr_feats"].to(dtype)), io["image"].to(dtype), (17, 23))
    torch.testing.assert_close(out, io[f"out_{str(dtype)[6:]}"], rtol=0, atol=atol)


def test_released_layouts_load(theirs, tmp_path):
    state, io = theirs
    method = loaded(state)
    assert set(method.their_names().values()) == set(state)  # every tensor of theirs has a place, and only those
    # their training checkpoint: Lightning's {"state_dict"} with the backbone as model.0, the input norm as model.1
    lightning = {"state_dict": {**{k: v for k, v in state.items() if k.startswith("upsampler.")},
                                **{k.replace("channelnorm.", "model.1."): v for k, v in state.items()
                                   if k.startswith("channelnorm.")}, "model.0.blocks.0.weight": torch.zeros(3)}}
    for source in (lightning, method.state_dict()):
        other = loaded(source)
        for a, b in zip(method.state_dict().values(), other.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # through the runner's --upsampler-weights path
    torch.save(state, tmp_path / "pytorch_model.bin")
    context = RunContext(profile=PROFILES.get("smoke"), cache_dir=tmp_path, progress=False,
                         weights={"loftup": str(tmp_path / "pytorch_model.bin")})
    fresh = LoftUp(4)
    train.ensure_trained(fresh, SimpleNamespace(name="fake", dim=4, stride=16), context)
    assert all(torch.equal(a, b) for a, b in zip(method.state_dict().values(), fresh.state_dict().values()))


def test_wrong_checkpoints_say_what_to_download(theirs):
    state, _ = theirs
    with pytest.raises(RuntimeError, match="for 4-channel features, this backbone gives 8") as info:
        LoftUp(8).state_from_file(state)
    assert RELEASES in str(info.value)
    bare = {k.removeprefix("upsampler."): v for k, v in state.items() if k.startswith("upsampler.")}
    with pytest.raises(RuntimeError, match="use pytorch_model.bin"):
        LoftUp(4).state_from_file(bare)


def test_tiles_equal_whole(theirs):
    state, io = theirs
    method = loaded(state)
    lr, image = standardise(io["lr_feats"]), io["image"]
    with torch.no_grad():
        for size, tile in [((17, 23), 5), ((41, 30), 16)]:  # also a guide resized to the output
            whole = method(lr, image, size)
            torch.testing.assert_close(method.forward_tiled(lr, image, size, tile), whole, rtol=0, atol=2e-5)
        assert method.tiling_fallback() is None
        assert "BatchNorm" in method.train().tiling_fallback()


def test_any_width_and_every_parameter_learns():
    torch.manual_seed(0)
    method = LoftUp(5).train()  # 25 channels with the position embedding: one head
    assert method.blocks[0].heads == 1
    method(torch.randn(2, 5, 3, 4), torch.rand(2, 3, 24, 30), (24, 30)).square().mean().backward()
    missing = [n for n, p in method.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_bad_inputs_are_reported():
    method = LoftUp(4).eval()
    image = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="built for 4-channel features"):
        method(torch.randn(1, 5, 4, 4), image, (16, 16))
    with pytest.raises(ValueError, match="built for 4-channel features"):
        method(torch.randn(4, 4, 4), image, (16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) image with the features' batch 2"):
        method(torch.randn(2, 4, 4, 4), image, (16, 16))
    with pytest.raises(ValueError, match="two positive sizes"):
        method(torch.randn(1, 4, 4, 4), image, (0, 16))


def test_trains_with_the_multiview_loss(tmp_path, monkeypatch):
    """Three steps on a random tiny timm convnet: the shared multi-view loss, weights cached and changed."""
    monkeypatch.setattr(train, "load_dataset", lambda name, split, size, **kw: Images(4, size))
    backbone = backbone_from_model("tiny", timm.create_model("test_efficientnet", pretrained=False),
                                   stride=32, dim=256, is_vit=False)
    profile = PROFILES.get("smoke").with_overrides(image_size=(32, 64), train_steps=3, train_batch=2, train_views=2)
    context = RunContext(profile=profile, cache_dir=tmp_path, progress=False)
    torch.manual_seed(0)
    method = LoftUp.create(backbone)
    assert method.own_objective is None
    before = {k: v.clone() for k, v in method.state_dict().items()}
    train.ensure_trained(method, backbone, context)
    folder, recipe = train.checkpoint(method, backbone, context)
    provenance = (folder / "provenance.json").read_text()
    assert '"optimizer": "NAdam"' in provenance and recipe["steps"] == 3
    assert any(not torch.equal(before[k], v) for k, v in method.state_dict().items())
    with torch.no_grad():
        out = method.upsample(backbone, torch.rand(1, 3, 32, 64), (32, 64))
    assert out.shape == (1, 256, 32, 64) and torch.isfinite(out).all()
