"""AnyUp: equal to the public code, released checkpoints load, exact tiles, trains, clear input errors.

``fixtures/anyup/anyup_public.pt`` was made once by running the public code (github.com/wimmerth/anyup at
commit 351807a9c4287368732cc247f26c7c81c9139af4) in float64 on a small model (qk_dim 16, every parameter
moved off its init) with seeded random features and images; it holds that model's state dict in their
layout, the inputs, their outputs, and the names and shapes of their full-size model's state dict
(what the released ``anyup_paper.pth`` holds). fixtures/anyup/MAKE.md has the script and the steps.
"""
import json
from pathlib import Path

import pytest
import timm
import torch

import methods.anyup as anyup_module
from bench.backbones import backbone_from_model
from bench.fitting import train
from bench.fitting.weights import WeightsError
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from methods.anyup import AnyUp

FIXTURE = Path(__file__).parent / "fixtures" / "anyup" / "anyup_public.pt"


@pytest.fixture(scope="module")
def public():
    return torch.load(FIXTURE, weights_only=True)


def small(public, dtype=torch.float32, **options) -> AnyUp:
    config = public["config"]
    method = AnyUp(qk_dim=config["qk_dim"], heads=config["num_heads"], window_ratio=config["window_ratio"],
                   lfu_kernel=config["kernel_size_lfu"], **options)
    method.load_state_dict(method.state_from_file(public["state_dict"]))
    return method.to(dtype).eval()


def run(method, case, dtype, tile=None):
    feats, image = case["feats"].to(dtype), case["image"].to(dtype)
    with torch.no_grad():
        if tile is None:
            return method(feats, image, case["output_size"])
        return method.forward_tiled(feats, image, case["output_size"], tile)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_forward_equals_the_public_code(public, dtype, tol):
    method = small(public, dtype)
    for case in public["cases"]:
        torch.testing.assert_close(run(method, case, dtype).double(), case["expected"], rtol=tol, atol=tol)


def test_chunks_and_bands_do_not_change_the_output(public, monkeypatch):
    """q_chunk_size (queries per attention step) and the feature-unification bands only bound memory."""
    monkeypatch.setattr(anyup_module, "BAND_BYTES", 60_000)  # several bands of LR rows
    for chunk in (1, 40):
        method = small(public, torch.float64, q_chunk_size=chunk)
        for case in public["cases"]:
            torch.testing.assert_close(run(method, case, torch.float64), case["expected"], rtol=1e-12, atol=1e-12)


def test_released_layout_and_parameter_count(public):
    full = AnyUp()
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == public["full_layout"]
    assert sum(p.numel() for p in full.parameters()) == public["full_parameters"] == 878_080
    # the count does not depend on the backbone
    assert AnyUp.create(type("B", (), {"dim": 384, "stride": 16})()).state_dict().keys() == full.state_dict().keys()


def test_a_released_file_loads_through_the_trainer(public, tmp_path):
    """``run --upsampler-weights anyup=PATH``: the file is their plain state dict (or a train.py checkpoint)."""
    backbone = type("B", (), {"name": "any", "dim": 7, "stride": 16})()
    context = RunContext(profile=PROFILES.get("smoke"), cache_dir=tmp_path, progress=False)
    for n, content in enumerate([public["state_dict"], {"anyup": public["state_dict"]}]):
        path = tmp_path / f"anyup{n}.pth"
        torch.save(content, path)
        context.weights["anyup"] = str(path)
        config = public["config"]
        method = AnyUp(qk_dim=config["qk_dim"], heads=config["num_heads"])
        train.ensure_trained(method, backbone, context)
        for key, value in public["state_dict"].items():
            torch.testing.assert_close(method.state_dict()[key], value, rtol=0, atol=0)
    torch.save({"stages.0.weight": torch.zeros(3)}, tmp_path / "other.pth")
    context.weights["anyup"] = str(tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not an AnyUp state dict.*releases/download/checkpoint/anyup_paper.pth"):
        train.ensure_trained(AnyUp(), backbone, context)


@pytest.mark.parametrize("lr, image, out, tile", [((5, 6), (40, 48), (30, 36), 7), ((4, 5), (33, 37), (33, 37), 16),
                                                 ((3, 3), (20, 20), (50, 45), 13)])
def test_tiled_equals_whole(lr, image, out, tile, monkeypatch):
    monkeypatch.setattr(anyup_module, "BAND_BYTES", 600_000)  # the statistics streamed in 3-5 bands
    torch.manual_seed(0)
    method = AnyUp(qk_dim=16).double().eval()
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.2 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    case = {"feats": torch.randn(2, 6, *lr, generator=g), "image": torch.rand(2, 3, *image, generator=g),
            "output_size": out}
    torch.testing.assert_close(run(method, case, torch.float64, tile), run(method, case, torch.float64),
                               rtol=1e-10, atol=1e-10)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A random-init timm convnet, a 4-image dataset and a 3-step profile (as tests/test_train.py's); images
    of 128 x 192, so the half-size guidance still gives a 2 x 3 grid at stride 32 (a 1 x 1 grid would
    make every query attend to one key: no gradient at all)."""
    images = torch.rand(4, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(train, "load_dataset", lambda name, split, size, **kw: [{"image": x} for x in images])
    model = timm.create_model("test_efficientnet", pretrained=False)
    backbone = backbone_from_model("tiny", model, stride=32, dim=256, is_vit=False)
    profile = PROFILES.get("smoke").with_overrides(image_size=(128, 192), train_steps=3, train_batch=2)
    return backbone, RunContext(profile=profile, cache_dir=tmp_path, progress=False)


def test_trains_with_its_own_objective(tiny):
    backbone, context = tiny
    torch.manual_seed(0)
    method = AnyUp(qk_dim=16)  # AnyUp.create's qk_dim 128 costs ~10 s a step here; the plumbing is the same
    before = {k: v.clone() for k, v in method.state_dict().items()}
    folder = train.train_method(method, backbone, context)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["objective"] == json.loads(json.dumps(AnyUp.own_objective))
    assert "views" not in provenance and len(provenance["losses"]) == 3
    assert all(torch.isfinite(torch.tensor(provenance["losses"])))
    assert not torch.equal(before["aggregation.0.weight"], method.state_dict()["aggregation.0.weight"])
    with torch.no_grad():
        out = method.upsample(backbone, torch.rand(1, 3, 64, 96), (64, 96))
    assert out.shape == (1, 256, 64, 96) and torch.isfinite(out).all()
    assert type(AnyUp.create(backbone)) is AnyUp
    frozen = [n for n, p in method.named_parameters() if not p.requires_grad]
    assert frozen == ["cross_decode.cross_attn.attention.out_proj.weight",
                      "cross_decode.cross_attn.attention.out_proj.bias"]  # unused in their forward too


def test_features_are_the_backbones_own(tiny):
    backbone, _ = tiny
    image = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(AnyUp().features(backbone, image), backbone.features(image))


@pytest.mark.parametrize("feats, image, size, message", [
    ((1, 8, 4, 4), (1, 1, 32, 32), (32, 32), r"image batch \(B,3,H,W\)"),
    ((2, 8, 4, 4), (1, 3, 32, 32), (32, 32), "matching the features' batch 2"),
    ((8, 4, 4), (1, 3, 32, 32), (32, 32), r"features shaped \(B, C, h, w\)"),
    ((1, 8, 4, 4), (1, 3, 32, 32), (0, 32), "positive output size"),
])
def test_bad_inputs_are_clear_errors(feats, image, size, message):
    method = AnyUp(qk_dim=16)
    with pytest.raises(ValueError, match=message):
        method(torch.rand(*feats), torch.rand(*image), size)
    with pytest.raises(ValueError, match=message):  # tiled: before any work
        method.regions(torch.rand(*feats), torch.rand(*image), size)
