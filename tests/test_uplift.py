"""UPLiFT: equal to the public code (mwalmer-umd/UPLiFT at 85f09ee), their default layout and parameter count, weights
files, exact tiles, training with their objective, input errors.

Fixtures (tests/fixtures/uplift/, made once by tests/fixtures/uplift/MAKE.md's script, not by these tests): their
``UPLiFT`` built from their DINOv2-S/14 config with small widths, seeded and perturbed weights and BatchNorm statistics
(uplift_small_state.pt: model "a", dim 8, encoder 4/6/8/10/12, decoder 18/18, attender 17, every residual cutting
channels as at 384; model "b", dim 6, encoder 3/5/4/7/6, decoder 4/4, attender 5, residuals that pad, keep and cut),
run by their own code in float64, eval mode, on seeded features and uint8 images (ImageNet-normalised) with
``enable_iterative(iters)`` and ``outsize`` (uplift_small_io.pt): patch 14 with a 26x40 image (pre-scaled to 29x45) and
2x3 grids, 4 steps to 32x48 resized to 19x37; patch 16, 3x2 -> 48x32 exactly; patch 16, 5x4 -> 20x16 resized to 17x13;
patch 8, 3x5 -> 24x40. Every step's output but the last is stored too. uplift_default_layout.json: the key/shape layout
and parameter count of their ``UPLiFT(384, 14, cfg)`` from uplift_dinov2-s14.yaml (uplift_dinov3-splus16.yaml's is the
same).
"""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.fitting import train
from bench.fitting.weights import WeightsError
from bench.registry import METHODS
from methods import uplift
from methods.uplift import Uplift, axis_taps, steps_to_cover, train_plan
from conftest import assert_tiles_equal_whole_through_a_backbone, trained_on_a_tiny_backbone

FIXTURES = Path(__file__).parent / "fixtures" / "uplift"


def states() -> dict:
    return torch.load(FIXTURES / "uplift_small_state.pt", weights_only=True)


def built(model: str, patch: int) -> Uplift:
    """Our UPLiFT at a fixture model's widths (read from its stored config), its weights loaded as a weights file is."""
    m = states()[model]
    cfg = m["config"]
    method = Uplift(m["dim"], patch, encoder=tuple(cfg["encoder"][f"block_{i}"]["hc"][0] for i in range(5)),
                    decoder=(cfg["decoder"]["block_0"]["hc"][0], cfg["decoder"]["block_1"]["hc"][0]),
                    attender=cfg["attender"]).double()  # float64 before loading: the file is float64
    method.load_state_dict(method.state_from_file(m["state"]))
    return method.eval()


def randomised(dim: int, patch: int, attender: int = 17, seed: int = 0) -> Uplift:
    """A float64 UPLiFT in eval mode with small widths, random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    method = Uplift(dim, patch, encoder=(4, 6, 8, 10, 12), decoder=(18, 18), attender=attender).double()
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for m in method.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    return method.eval()


@pytest.mark.parametrize("case", ["a_patch14", "a_patch16", "b_patch16", "b_patch8"])
def test_equals_the_public_code(case):
    c = torch.load(FIXTURES / "uplift_small_io.pt", weights_only=True)[case]
    method = built(c["model"], c["patch"])
    image, feats, size = c["image_uint8"].double() / 255, c["feats"], tuple(c["outsize"].tolist())
    with torch.no_grad():
        out = method(feats, image, size)
        steps = method.iterate(feats, method.normalised(image, torch.float64), len(c["steps"]) + 1)
    assert steps_to_cover(tuple(feats.shape[-2:]), size) == len(steps)
    torch.testing.assert_close(out, c["out"], rtol=0, atol=1e-10)
    for ours, theirs in zip(steps, c["steps"]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_default_layout_and_parameters_are_theirs():
    theirs = json.loads((FIXTURES / "uplift_default_layout.json").read_text())
    for stride in (14, 16):  # their DINOv2-S/14 and DINOv3-S+/16 configs build the same model
        method = METHODS.get("uplift").create(SimpleNamespace(dim=384, stride=stride))
        assert method.patch == stride
        assert {k: list(v.shape) for k, v in method.state_dict().items()} == theirs["state_dict"]
        assert sum(p.numel() for p in method.parameters()) == theirs["params"] == 789_521


def test_create_reads_the_backbone():
    backbone = SimpleNamespace(dim=12, stride=16, mean=torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1),
                               std=torch.tensor([0.25, 0.5, 0.5]).view(1, 3, 1, 1))
    method = Uplift.create(backbone)
    assert (method.dim, method.patch, method.image_mean, method.image_std) == (12, 16, (0.5,) * 3, (0.25, 0.5, 0.5))
    image = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(method.normalised(image, torch.float32), (image - backbone.mean) / backbone.std)


def test_weights_files_load_through_the_run_option_and_wrong_files_are_named(tmp_path):
    torch.manual_seed(1)
    released = {k: v.clone() for k, v in Uplift(384, 14).state_dict().items()}  # a file in the released layout
    context = lambda path: RunContext(profile=PROFILES.get("smoke"), cache_dir=tmp_path, progress=False,
                                      weights={"uplift": str(path)})
    fake = SimpleNamespace(name="fake", dim=384, stride=14)
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(released, tmp_path / "uplift_dinov2-s14.safetensors")  # as released (torch.load reads it)
    torch.save({f"module.{k}": v for k, v in released.items()}, tmp_path / "uplift_3.pth")  # their DataParallel trainer
    for name in ["uplift_dinov2-s14.safetensors", "uplift_3.pth"]:
        torch.manual_seed(2)
        method = METHODS.get("uplift").create(fake)
        train.ensure_trained(method, fake, context(tmp_path / name))
        for k, v in released.items():
            torch.testing.assert_close(method.state_dict()[k], v, rtol=0, atol=0)

    narrow = METHODS.get("uplift").create(SimpleNamespace(dim=8, stride=14))
    with pytest.raises(WeightsError,
                       match=r"384-channel features.*built for 8 channels.*uplift_dinov2-s14\.safetensors"):
        train.ensure_trained(narrow, SimpleNamespace(name="fake", dim=8, stride=14), context(tmp_path / "uplift_3.pth"))
    torch.save(METHODS.get("lift").create(SimpleNamespace(dim=384, stride=16)).state_dict(), tmp_path / "lift.pth")
    with pytest.raises(WeightsError, match=r"not an UPLiFT state dict.*huggingface\.co/UPLiFT-upsampler"):
        train.ensure_trained(METHODS.get("uplift").create(fake), fake, context(tmp_path / "lift.pth"))


@pytest.mark.parametrize("patch, attender, grid, image, size, tile", [
    (14, 17, (3, 4), (40, 53), (37, 50), 7),    # pre-scaled image not 16x the grid, 4 steps, antialiased final resize
    (16, 17, (3, 2), (48, 32), (48, 32), 5),    # exact, no final resize
    (16, 17, (4, 3), (40, 30), (64, 48), 9),    # the last steps' grids outgrow the encoder's maps (nearest repeats)
    (8, 5, (5, 3), (40, 24), (17, 13), 4),      # attender 5 (reach 1), 2 steps, odd tile starts
    (14, 25, (2, 5), (28, 70), (7, 33), 3),     # attender 25; 3 steps
    (16, 17, (3, 4), (48, 64), (3, 4), 2),      # no step: the grid itself
    (16, 17, (3, 4), (48, 64), (2, 3), 2),      # no step, resized down
])
def test_tiles_equal_whole(patch, attender, grid, image, size, tile):
    method = randomised(6, patch, attender)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 6, *grid, generator=g, dtype=torch.float64)
    img = torch.rand(2, 3, *image, generator=g, dtype=torch.float64)
    with torch.no_grad():
        whole = method(feats, img, size)
        tiled = method.forward_tiled(feats, img, size, tile)
    assert whole.shape == (2, 6, *size)
    # the tiles resample with torch's weights applied as gathers, the whole map with torch's kernels: rounding only
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)


def test_upsample_tiled_with_a_backbone():
    assert_tiles_equal_whole_through_a_backbone(randomised(8, 16).float(), 8, (45, 61))


def test_resampling_weights_are_torchs():
    g = torch.Generator().manual_seed(0)
    for n_in, n_out, kwargs in [(32, 19, dict(mode="bilinear", align_corners=False, antialias=True)),
                                (26, 29, dict(mode="bilinear", align_corners=False, antialias=True)),
                                (7, 14, dict(mode="bilinear", align_corners=True)), (45, 32, dict(mode="nearest")),
                                (29, 64, dict(mode="nearest"))]:
        x = torch.randn(1, 2, n_in, 3, generator=g, dtype=torch.float64)
        index, weight = axis_taps(n_in, n_out, kwargs["mode"], kwargs.get("align_corners"),
                                  kwargs.get("antialias", False))
        ours = (x[:, :, index] * weight[:, :, None]).sum(3)
        torch.testing.assert_close(ours, F.interpolate(x, size=(n_out, 3), **kwargs), rtol=0, atol=1e-14)


def test_features_are_raw():
    backbone = SimpleNamespace(features=lambda x: x[:, :1] * 5)
    image = torch.rand(1, 3, 4, 4)
    method = Uplift(2, 16, encoder=(2, 2), decoder=(2, 2))
    torch.testing.assert_close(method.features(backbone, image), image[:, :1] * 5)


def test_bad_inputs_are_reported():
    method = randomised(6, 16)
    with pytest.raises(ValueError, match="built for 6-channel features"):
        method(torch.randn(1, 7, 3, 3, dtype=torch.float64), torch.rand(1, 3, 48, 48), (48, 48))
    with pytest.raises(ValueError, match="image batch"):
        method(torch.randn(2, 6, 3, 3, dtype=torch.float64), torch.rand(1, 3, 48, 48), (48, 48))
    with pytest.raises(ValueError, match="image batch"):
        method(torch.randn(1, 6, 3, 3, dtype=torch.float64), torch.rand(1, 1, 48, 48), (48, 48))
    with pytest.raises(ValueError, match="output size"):
        method(torch.randn(1, 6, 3, 3, dtype=torch.float64), torch.rand(1, 3, 48, 48), (0, 48))
    with pytest.raises(ValueError, match=r"neighbourhoods of \[5, 9, 13, 17, 25\] taps, got 7"):
        Uplift(6, 16, attender=7)
    with pytest.raises(RuntimeError, match="eval mode only"):
        method.train().regions(torch.randn(1, 6, 3, 3), torch.rand(1, 3, 48, 48), (48, 48))


@pytest.mark.parametrize("stride, plan", [(14, (448, 3)), (16, (448, 2)), (8, (448, 3)), (32, (448, 1)),
                                         (12, (480, 3))])
def test_training_sizes_follow_their_configs(stride, plan):
    """DINOv2-S/14: 448 px and 3 levels; DINOv3-S+/16: 448 and 2 (their two configs); others as the rule says."""
    assert train_plan(stride) == plan


class PatchBackbone:
    """A fixed strided conv: features of any image size on an exact grid, as a ViT's."""

    def __init__(self, stride: int = 8, dim: int = 8) -> None:
        torch.manual_seed(5)
        self.stride, self.dim, self.name = stride, dim, "patches"
        self.conv = torch.nn.Conv2d(3, dim, stride, stride=stride).requires_grad_(False)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


def test_training_loss_scores_every_step_against_the_features_of_its_size(monkeypatch):
    monkeypatch.setattr(uplift, "TRAIN_SIZE", 64)  # 8 px stride: 64, 32, 16, 8 px -> 8x8, 4x4, 2x2, 1x1 grids, 3 levels
    backbone, calls, seen = PatchBackbone(), [], []
    method = Uplift(8, 8, encoder=(4, 4, 4, 4, 4), decoder=(8, 8)).train()
    original = F.mse_loss
    monkeypatch.setattr(F, "mse_loss", lambda a, b: calls.append((a, b)) or original(a, b))
    encode = method.encode
    monkeypatch.setattr(method, "encode",
                        lambda image, *a: seen.append(tuple(image[0].shape[-2:])) or encode(image, *a))
    image = torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(0))
    loss = method.training_loss(backbone, image, torch.Generator())
    pairs = [(a.shape[-1], b.shape[-1]) for a, b in calls]
    assert pairs == [(8, 8), (4, 4), (8, 8), (2, 2), (4, 4), (8, 8)]  # level 1: 1 step; 2: 2 steps; 3: 3 steps
    assert seen == [(32, 32), (16, 16), (8, 8)]  # one encoder pass per level, on the image of the input features
    full = F.interpolate(image, size=(64, 64), mode="bilinear", antialias=True)
    torch.testing.assert_close(calls[0][1], backbone.features(full))  # the finest target: the 448 (here 64) px image
    half = F.interpolate(image, size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(calls[1][1], backbone.features(half))
    torch.testing.assert_close(loss, sum(original(a, b) for a, b in calls))


def test_their_objective_lowers_the_loss(monkeypatch):
    monkeypatch.setattr(uplift, "TRAIN_SIZE", 64)
    backbone = PatchBackbone()
    torch.manual_seed(0)
    method = Uplift(8, 8, encoder=(4, 4, 4, 4, 4), decoder=(8, 8)).train()
    _, optimizer = train.training_objective(method, backbone, "unused")
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 1e-3
    image = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    losses = [train.train_step(method, backbone, None, optimizer, image, 0, torch.Generator(), clip=False).item()
              for _ in range(8)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_trains_with_its_own_objective(tmp_path, monkeypatch):
    method, before, provenance, backbone = trained_on_a_tiny_backbone(Uplift, uplift, monkeypatch, tmp_path)
    assert provenance["objective"] == Uplift.own_objective and "views" not in provenance
    assert len(provenance["losses"]) == 3 and all(0 < loss < 1e3 for loss in provenance["losses"])
    changed = [k for k, v in method.state_dict().items() if not torch.equal(v, before[k])]
    assert {"attender.conv1.weight", "encoder.block_0.blocks.0.conv.0.weight", "decoder.up_1.up.weight",
            "decoder.block_1.blocks.0.conv.4.running_mean"} <= set(changed)
    with torch.no_grad():
        out = method.upsample(backbone, torch.rand(1, 3, 64, 96), (64, 96))
    assert out.shape == (1, 256, 64, 96) and torch.isfinite(out).all()
