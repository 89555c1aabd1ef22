"""NAF: equal to the public code (valeoai/NAF at ad4e24d, run with NATTEN), their weights' layout, NATTEN's
neighbourhoods, exact tiles, training with their objective, input errors.

Fixtures (tests/fixtures/naf/, made once by tests/fixtures/naf/MAKE.md's script, not by these tests): their
``NAF(dim=32, heads_attn=2, heads_rope=2, kernel_size=9)`` with seeded, perturbed weights
(naf_small_state.pt, their state-dict layout), run in eval mode by their own code with NATTEN 0.21.7
(flex-fna backend on the CPU) on seeded features and uint8 images (naf_small_io.pt: "exact", 9x10 -> 36x40
for two images; "uneven", 8x9 -> 37x41 with a 150x170 image that their encoder first shrinks to 148x148),
and the key/shape layout and parameter count of their default ``NAF()`` (naf_default_layout.json).
"""
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from bench.backbones import backbone_from_model
from bench.fitting import train
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from methods.naf import RELEASE_URL, NAF, ImageEncoder, neighbour_table
from conftest import Images

FIXTURES = Path(__file__).parent / "fixtures" / "naf"


def small() -> NAF:
    """Our NAF at the fixture's size, with the fixture's weights loaded as the trainer loads a weights file."""
    method = NAF(dim=32, heads=2, rope_heads=2).eval()
    method.load_state_dict(method.state_from_file(torch.load(FIXTURES / "naf_small_state.pt", weights_only=True)))
    return method


def cases():
    return torch.load(FIXTURES / "naf_small_io.pt", weights_only=True)


@pytest.mark.parametrize("case", ["exact", "uneven"])
def test_matches_public_code(case):
    c = cases()[case]
    with torch.no_grad():
        out = small()(c["lr"], c["image_uint8"].float() / 255, tuple(c["size"].tolist()))
    torch.testing.assert_close(out, c["out"], rtol=0, atol=1e-5)


def test_default_layout_and_parameters_are_theirs():
    theirs = json.loads((FIXTURES / "naf_default_layout.json").read_text())
    method = NAF.create(type("Backbone", (), {"dim": 384, "stride": 16})())
    assert {k: list(v.shape) for k, v in method.state_dict().items()} == theirs["state_dict"]
    assert sum(p.numel() for p in method.parameters()) == theirs["params"] == 662_528


def test_weights_files_load_and_bad_files_are_named():
    state = torch.load(FIXTURES / "naf_small_state.pt", weights_only=True)
    method = NAF(dim=32, heads=2, rope_heads=2)
    method.load_state_dict(method.state_from_file({"state_dict": state}))
    with pytest.raises(ValueError, match="naf_release.pth"):
        method.state_from_file({"jafar": state})
    assert "releases/download/model/naf_release.pth" in RELEASE_URL


def natten_window_start(i: int, length: int, kernel: int, dilation: int) -> int:
    """NATTEN's get_window_start (its legacy CPU/CUDA kernels), transcribed: the reference definition."""
    ns = kernel // 2
    if dilation <= 1:
        return max(i - ns, 0) + (i + ns >= length) * (length - i - ns - 1)
    if i - ns * dilation < 0:
        return i % dilation
    if i + ns * dilation >= length:
        imodd, a = i % dilation, (length // dilation) * dilation
        b = length - a
        return length - b + imodd - 2 * ns * dilation if imodd < b else a + imodd - kernel * dilation
    return i - ns * dilation


@pytest.mark.parametrize("n_out, n_lr, kernel", [(36, 9, 9), (37, 8, 9), (41, 9, 9), (224, 14, 9), (100, 11, 9),
                                                 (30, 30, 5), (23, 7, 3)])
def test_neighbourhoods_are_nattens(n_out, n_lr, kernel):
    index, valid = neighbour_table(n_out, n_lr, kernel)
    d = max(1, n_out // n_lr)
    nearest = F.interpolate(torch.arange(n_lr, dtype=torch.float32).view(1, 1, n_lr), size=n_out,
                            mode="nearest-exact").view(-1).long().tolist()  # what their keys are resized with
    for i in range(n_out):
        start = natten_window_start(i, n_out, kernel, d)
        assert valid[i].all()
        assert index[i].tolist() == [nearest[start + t * d] for t in range(kernel)]


def test_a_grid_under_the_kernel_attends_to_all_of_it():
    """Where NATTEN raises (9 x dilation > the output), every query sees the whole 3x4 grid: dense attention."""
    method = small()
    f, image = torch.randn(2, 4, 3, 4), torch.rand(2, 3, 24, 32)
    with torch.no_grad():
        out = method(f, image, (24, 32))
        x = ImageEncoder.encoder_input(image, (24, 32))
        enc = method.image_encoder
        q = enc.rope(torch.cat([enc.encoder(x), enc.sem_encoder(x)], 1), (24, 32), (0, 24), (0, 32))
        k = F.adaptive_avg_pool2d(q, (3, 4))
    q, k, v = (t.unflatten(1, (2, -1)).flatten(3) for t in (q, k, f))
    weights = (q.transpose(2, 3) @ k * 16 ** -0.5).softmax(-1)
    expected = (weights @ v.transpose(2, 3)).transpose(2, 3).reshape(2, 4, 24, 32)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case, tile", [("uneven", 16), ("exact", 11)])
def test_tiles_equal_the_whole(case, tile):
    c = cases()[case]
    method, image, size = small(), c["image_uint8"].float() / 255, tuple(c["size"].tolist())
    with torch.no_grad():
        whole = method(c["lr"], image, size)
        tiled = method.forward_tiled(c["lr"], image, size, tile)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("lr, size", [((5, 3, 4), (24, 33)), ((6, 10, 11), (5, 50)), ((3, 5, 5), (2, 3))])
def test_odd_channels_and_sizes_tile_exactly(lr, size):
    """Channels not divisible by the heads, outputs under 4x or under the grid: tiles still equal the whole."""
    method = small()
    f, image = torch.randn(1, *lr), torch.rand(1, 3, 40, 44)
    with torch.no_grad():
        whole = method(f, image, size)
        tiled = method.forward_tiled(f, image, size, 4)
    assert whole.shape == (1, lr[0], *size) and torch.isfinite(whole).all()
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_bad_inputs_are_reported():
    method = small()
    with pytest.raises(ValueError, match=r"features shaped \(B, C, h, w\)"):
        method(torch.randn(4, 9, 10), torch.rand(1, 3, 36, 40), (36, 40))
    with pytest.raises(ValueError, match=r"RGB images \(B, 3, H, W\)"):
        method(torch.randn(1, 4, 9, 10), torch.rand(1, 1, 36, 40), (36, 40))
    with pytest.raises(ValueError, match=r"RGB images"):
        method(torch.randn(2, 4, 9, 10), torch.rand(1, 3, 36, 40), (36, 40))
    with pytest.raises(ValueError, match="output size"):
        method(torch.randn(1, 4, 9, 10), torch.rand(1, 3, 36, 40), (0, 40))


def test_trains_three_steps_with_its_own_objective(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "load_dataset", lambda name, split, size, **kw: Images(4, size))
    backbone = backbone_from_model("tiny", timm.create_model("test_efficientnet", pretrained=False), stride=32,
                                   dim=256, is_vit=False)
    profile = PROFILES.get("smoke").with_overrides(image_size=(64, 96), train_steps=3, train_batch=2)
    context = RunContext(profile=profile, cache_dir=tmp_path, progress=False)
    method = NAF.create(backbone)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    train.ensure_trained(method, backbone, context)
    folder, recipe = train.checkpoint(method, backbone, context)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert len(provenance["losses"]) == 3 and all(l == l for l in provenance["losses"])
    assert provenance["objective"]["optimizer"] == "AdamW" and provenance["objective"]["lr"] == 2e-4
    assert "views" not in recipe
    changed = [k for k, v in method.state_dict().items() if not torch.equal(v, before[k])]
    assert "image_encoder.sem_encoder.2.conv2.weight" in changed and "image_encoder.rope.periods" not in changed
    with torch.no_grad():
        out = method.upsample(backbone, torch.rand(1, 3, 64, 96), (64, 96))
    assert out.shape == (1, 256, 64, 96) and torch.isfinite(out).all()


def test_training_loss_reaches_every_parameter():
    method = NAF(dim=32, heads=2, rope_heads=2).train()
    backbone = backbone_from_model("tiny", timm.create_model("test_efficientnet", pretrained=False), stride=32,
                                   dim=256, is_vit=False)
    loss = method.training_loss(backbone, torch.rand(2, 3, 64, 96), torch.Generator().manual_seed(0))
    loss.backward()
    missing = [n for n, p in method.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing and torch.isfinite(loss)
