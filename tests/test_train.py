"""Multi-view objective pieces against hand-computed values; the trainer's cache, errors and resume."""
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from bench.fitting import train
from bench.backbones import backbone_from_model
from bench.core.context import RunContext
from bench.fitting.multiview import (AttentionDownsampler, Jitter, MultiViewLoss, SimpleDownsampler, random_projection,
                             total_variation)
from bench.core.profiles import PROFILES
from methods.featup_jbu import FeatUpJBU
from conftest import Images


@pytest.mark.parametrize("hr, lr", [((224, 224), (7, 7)), ((100, 130), (4, 5)), ((70, 100), (3, 4))])
@pytest.mark.parametrize("kind", ["simple", "attention"])
def test_downsampler_of_a_constant_map_is_that_constant(kind, hr, lr):
    torch.manual_seed(0)
    down = SimpleDownsampler(32) if kind == "simple" else AttentionDownsampler(3, 32)
    with torch.no_grad():
        for p in down.parameters():
            p.add_(torch.randn_like(p))
    const = torch.tensor([1.5, -2.0, 0.25]).view(1, 3, 1, 1).expand(2, 3, *hr)
    for mode in (True, False):
        out = down.train(mode)(const, lr)
        torch.testing.assert_close(out, const[..., :lr[0], :lr[1]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_jitter_without_zoom_is_a_reflect_padded_crop(flip):
    x = torch.arange(2 * 30 * 40, dtype=torch.float32).view(1, 2, 30, 40)
    view = Jitter(size=(30, 40), pad=20, zoomed=(70, 80), top=7, left=33, flip=flip)(x)
    expected = np.pad(x.numpy(), [(0, 0), (0, 0), (20, 20), (20, 20)], mode="reflect")[..., 7:37, 33:73]
    expected = expected[..., ::-1] if flip else expected
    np.testing.assert_array_equal(view.numpy(), expected)


def test_jitter_replays_the_same_view_on_image_and_features():
    image = torch.rand(1, 3, 48, 64)
    jitter = Jitter.sample((48, 64), torch.Generator().manual_seed(3), max_zoom=2.0, p_zoom=1.0)
    assert jitter.zoomed[0] > 48 + 40 and jitter.zoomed[1] > 64 + 40
    stacked = jitter(torch.cat([image, image * 2], dim=1))
    torch.testing.assert_close(stacked[:, 3:], 2 * jitter(image))
    with pytest.raises(ValueError, match="sampled for 48x64"):
        jitter(torch.rand(1, 3, 24, 32))


def coordinate_map(h: int, w: int) -> torch.Tensor:
    """(1,2,h,w) continuous pixel-centre coordinates in [0, 1]: the same picture at any resolution."""
    ys, xs = (torch.arange(n, dtype=torch.float64) + 0.5 for n in (h, w))
    return torch.stack(torch.meshgrid(ys / h, xs / w, indexing="ij"))[None]


def test_an_upscaled_jitter_is_the_same_view_of_a_larger_map():
    small = Jitter(size=(12, 16), pad=0, zoomed=(18, 24), top=3, left=5, flip=True)
    big = small.upscaled(4)
    assert big == Jitter(size=(48, 64), pad=0, zoomed=(72, 96), top=12, left=20, flip=True)
    pooled = F.avg_pool2d(big(coordinate_map(48, 64)), 4)
    torch.testing.assert_close(pooled, small(coordinate_map(12, 16)), rtol=0, atol=1e-12)


def test_projection_rows_are_unit_norm_and_fresh():
    g = torch.Generator().manual_seed(0)
    a, b = random_projection(2, 50, g), random_projection(2, 50, g)
    assert a.shape == (2, 30, 50)
    torch.testing.assert_close(a.norm(dim=2), torch.ones(2, 30))
    assert not torch.allclose(a, b)


def test_total_variation_of_a_ramp():
    ramp = torch.arange(5.0).expand(1, 1, 4, 5) * 3
    assert total_variation(ramp).item() == pytest.approx(3.0)


def test_uncertainty_nll_by_hand():
    loss = MultiViewLoss(dim=4, kernel_size=2)
    with torch.no_grad():
        loss.scale_net.weight.zero_()
        loss.scale_net.bias.fill_(0.4)  # log sigma = 0.4 + 0.1
    pred, target = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 2.0)
    expected = 4.0 / (2 * np.exp(2 * 0.5)) + 0.5
    assert loss.nll(pred, target, torch.rand(1, 4, 2, 2)).item() == pytest.approx(expected, rel=1e-6)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A random-init timm convnet, a 4-image dataset and a 3-step profile: the trainer's plumbing in seconds."""
    monkeypatch.setattr(train, "load_dataset", lambda name, split, size, **kw: Images(4, size))
    model = timm.create_model("test_efficientnet", pretrained=False)
    backbone = backbone_from_model("tiny", model, stride=32, dim=256, is_vit=False)
    profile = PROFILES.get("smoke").with_overrides(image_size=(64, 96), train_steps=3, train_batch=2, train_views=2)
    return backbone, RunContext(profile=profile, cache_dir=tmp_path, progress=False)


def test_checkpoint_is_reused_without_training(tiny, monkeypatch):
    backbone, context = tiny
    first = FeatUpJBU.create(backbone)
    train.ensure_trained(first, backbone, context)
    folder, _ = train.checkpoint(first, backbone, context)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["steps"] == 3 and len(provenance["losses"]) == 3 and provenance["dim"] == 256
    assert not (folder / "resume.pt").exists()

    def no_training(*args):
        raise AssertionError("ensure_trained retrained although weights were cached")

    monkeypatch.setattr(train, "train_method", no_training)
    second = FeatUpJBU.create(backbone)
    train.ensure_trained(second, backbone, context)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "weights.pt").write_bytes(b"not a checkpoint"), "weights.pt is corrupt"),
    (lambda f: (f / "provenance.json").write_text("{"), "provenance.json is corrupt"),
    (lambda f: (f / "weights.pt").unlink(), "weights.pt is missing"),
    (lambda f: (f / "provenance.json").write_text(
        json.dumps({**json.loads((f / "provenance.json").read_text()), "dim": 384})), "dim=384"),
])
def test_damaged_or_mismatched_checkpoint_is_a_clear_error(tiny, monkeypatch, damage, message):
    backbone, context = tiny
    method = FeatUpJBU.create(backbone)
    folder = train.train_method(method, backbone, context)
    damage(folder)
    monkeypatch.setattr(train, "train_method", lambda *a: pytest.fail("retrained over a damaged checkpoint"))
    with pytest.raises(train.CheckpointError, match=message) as err:
        train.ensure_trained(FeatUpJBU.create(backbone), backbone, context)
    assert f"Delete {folder}" in str(err.value)


def test_explicit_training_refuses_to_overwrite(tiny):
    backbone, context = tiny
    train.train_method(FeatUpJBU.create(backbone), backbone, context)
    with pytest.raises(train.CheckpointError, match="already holds trained weights"):
        train.train_method(FeatUpJBU.create(backbone), backbone, context)


class Killed(BaseException):
    """Stands in for the process being killed mid-run."""


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny, monkeypatch):
    backbone, context = tiny
    monkeypatch.setattr(train, "CHECKPOINTS", 3)
    batch = train._batch
    seen, kill = [], [True]

    def killed_at_step_2(data, step, *args, **kwargs):
        if step == 2 and kill:
            kill.clear()
            raise Killed
        seen.append(step)
        return batch(data, step, *args, **kwargs)

    monkeypatch.setattr(train, "_batch", killed_at_step_2)
    with pytest.raises(Killed):
        train.train_method(FeatUpJBU.create(backbone), backbone, context)
    assert seen == [0, 1]
    seen.clear()
    folder = train.train_method(FeatUpJBU.create(backbone), backbone, context)
    assert seen == [2]
    assert len(json.loads((folder / "provenance.json").read_text())["losses"]) == 3


def test_trainer_is_generic_for_any_trainable_upsampler(tiny):
    """A method without forward_projected and with its own parameters trains through the plain path."""
    from methods.base import Upsampler

    class Scaled(Upsampler):
        name, fit = "scaled_bilinear", "dataset"

        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, lr_feats, image, output_size):
            return self.gain * torch.nn.functional.interpolate(lr_feats, size=output_size, mode="bilinear")

    backbone, context = tiny
    method = Scaled()
    train.ensure_trained(method, backbone, context)
    assert method.gain.item() != 0.5


class Photos(torch.utils.data.Dataset):
    """scikit-image's bundled colour photographs, centre-cropped and resized."""

    NAMES = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")

    def __init__(self, size):
        import skimage.data

        crops = []
        for name in self.NAMES:
            a = torch.tensor(np.asarray(getattr(skimage.data, name)())[..., :3]).permute(2, 0, 1).float() / 255
            s = min(a.shape[1:])
            crops.append(torch.nn.functional.interpolate(a[None, :, :s, :s], size=size, mode="area")[0])
        self.images = torch.stack(crops)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def test_multiview_loss_falls_on_real_photos(lite0, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "load_dataset", lambda name, split, size, **kw: Photos(size))
    profile = PROFILES.get("smoke").with_overrides(image_size=(96, 96), train_steps=40, train_batch=2, train_views=2)
    context = RunContext(profile=profile, cache_dir=tmp_path, progress=False)
    folder = train.train_method(FeatUpJBU.create(lite0), lite0, context)
    losses = json.loads((folder / "provenance.json").read_text())["losses"]
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < first - 0.1, f"loss went from {first:.3f} to {last:.3f}"


def test_sampled_crf_matches_a_pairwise_loop_and_vanishes_on_constant_features():
    from bench.fitting.multiview import CRF_ALPHA, CRF_BETA, CRF_GAMMA, CRF_W1, CRF_W2, sampled_crf

    guidance, feats = torch.rand(2, 3, 5, 6), torch.rand(2, 4, 5, 6)
    torch.manual_seed(3)
    energy = sampled_crf(guidance, feats, samples=7)
    torch.manual_seed(3)
    ys, xs = torch.randint(0, 5, (7,)), torch.randint(0, 6, (7,))
    total = 0.0
    for b in range(2):
        for i in range(7):
            for j in range(7):
                dp = (ys[i] / 5 - ys[j] / 5) ** 2 + (xs[i] / 6 - xs[j] / 6) ** 2
                dc = (guidance[b, :, ys[i], xs[i]] - guidance[b, :, ys[j], xs[j]]).square().sum()
                k = CRF_W1 * torch.exp(-dp / (2 * CRF_ALPHA) - dc / (2 * CRF_BETA)) + CRF_W2 * torch.exp(-dp / (2 * CRF_GAMMA))
                total += k * (feats[b, :, ys[i], xs[i]] - feats[b, :, ys[j], xs[j]]).square().sum()
    torch.testing.assert_close(energy, total / (2 * 7 * 7))
    assert sampled_crf(guidance, torch.ones(2, 4, 5, 6), samples=7) == 0
