"""End-to-end segmentation with a trainable upsampler: joint training at its own rate, the per-image
"n/a" cells, and the FLOPs of methods whose convolutions torch's FlopCounterMode cannot see."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.data import load_dataset
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.running.runner import plan, run_cells
from bench.core.store import ResultStore
from methods.featup_jbu import FeatUpJBU
from methods.resize_conv import ResizeConv
from tasks.e2e_seg import Decoder, E2ESeg, fit_decoder, model_gflops, segment

WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default, which fit_decoder uses


def adamw_first_step_sizes(before: torch.Tensor, after: torch.Tensor, lr: float) -> torch.Tensor:
    """|the Adam part of one AdamW step|: after = before * (1 - lr * wd) - lr * g / (|g| + eps), so for any
    gradient well above eps this is lr itself, whatever the gradient's size (Adam's first step is a sign step)."""
    return (after - before * (1 - lr * WEIGHT_DECAY)).abs()


def test_joint_training_moves_the_upsampler_at_upsampler_lr_and_the_decoder_at_lr(lite0):
    train = load_dataset("scenes", "train", (32, 48), limit=2)
    upsampler = ResizeConv.create(lite0).requires_grad_(False)
    assert upsampler.fit == "dataset"
    before = [p.detach().clone() for p in upsampler.parameters()]
    settings = E2ESeg.Settings(steps=1, batch_size=2, lr=1e-2, upsampler_lr=3e-4)
    decoder, losses = fit_decoder(upsampler, lite0, train, settings, seed=5, device=torch.device("cpu"))
    torch.manual_seed(5)  # fit_decoder builds its decoder right after seeding: the same initial weights
    initial = Decoder(lite0.dim, train.num_classes)
    moved = torch.cat([adamw_first_step_sizes(b, p.detach(), 3e-4).flatten()
                       for b, p in zip(before, upsampler.parameters())])
    decoder_moved = torch.cat([adamw_first_step_sizes(b.detach(), p.detach(), 1e-2).flatten()
                               for b, p in zip(initial.parameters(), decoder.parameters())])
    assert len(losses) == 1
    # most weights moved by exactly their group's rate, none by more (weights whose gradient is near or
    # below Adam's eps, 1e-8, move less: measured 85% of resize_conv's at the rate, 15% below it)
    assert moved.numel() > 1000 and moved.median() == pytest.approx(3e-4, rel=1e-3)
    assert moved.max() <= 3e-4 * (1 + 1e-3)
    assert decoder_moved.median() == pytest.approx(1e-2, rel=1e-3) and decoder_moved.max() <= 1e-2 * (1 + 1e-3)
    assert all(p.requires_grad for p in upsampler.parameters())  # fit_decoder switched it to trainable


def test_e2e_run_of_a_trainable_method_counts_its_parameters(lite0):
    profile = PROFILES.get("smoke")
    profile = profile.with_overrides(image_size=(32, 48),
                                     task_settings={"e2e_seg": {"steps": 2, "batch_size": 2, "n_train": 2, "n_val": 2}})
    context = RunContext(profile, progress=False)
    upsampler = ResizeConv.create(lite0)
    before = [p.detach().clone() for p in upsampler.parameters()]
    rows = {r.metric: r.value for r in E2ESeg().run(upsampler, lite0, context)}
    assert any(not torch.equal(b, p) for b, p in zip(before, upsampler.parameters()))  # trained jointly
    classes = load_dataset("scenes", "val", profile.image_size, limit=1).num_classes
    decoder = lite0.dim * 128 + 128 + 128 * classes + classes  # two 1x1 convs with biases, by hand
    expected = sum(p.numel() for p in lite0.feature_parameters()) + sum(p.numel() for p in upsampler.parameters())
    assert rows["params"] * 1e6 == pytest.approx(expected + decoder, abs=0.5)
    assert set(rows) == {"miou", "macc", "aacc", "gflops", "params"} and 0 <= rows["miou"] <= 100


def test_a_per_image_method_is_a_not_applicable_cell_fitted_on_nothing(tmp_path, lite0):
    context = RunContext(profile=PROFILES.get("smoke"), cache_dir=tmp_path / "cache", progress=False)
    cells = plan(["featup_implicit"], ["e2e_seg"], "efficientnet_lite0", context)
    outcome = run_cells(cells, lite0, context, tmp_path / "run")
    [record] = ResultStore(tmp_path / "run").rows().drop_duplicates("method").to_dict("records")
    assert record["method"] == "featup_implicit" and record["status"] == "n/a"
    assert "fitted per image without labels" in record["message"]
    assert not outcome.failed  # n/a is settled, not a failure
    assert not (tmp_path / "cache" / "fits").exists()  # no image was fitted for a cell that does not apply


class StubBackbone(nn.Module):
    """Average-pooled colour, 3 channels at stride 8: no FLOPs of its own."""

    name, stride, dim = "stub", 8, 3

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(image, 8)


def test_gflops_of_the_jbu_count_its_adaptive_convolutions(lite0):
    """A 3-stage JBU on a 4 x 6 grid (32 x 48 image): stages of 8 x 12, 16 x 24 and 32 x 48 pixels, each a
    7 x 7 adaptive conv of the C = 3 channels and a 7 x 7 window dot product of the 32-d range
    projection: 2 * 49 * (3 + 32) FLOPs per output pixel, by hand, on top of what FlopCounterMode counts."""
    backbone, decoder = StubBackbone(), Decoder(3, 5)
    jbu = FeatUpJBU(3, 3, kernel_impl="torch").eval()
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    plain = FlopCounterMode(display=False)  # sees the convs and matmuls, not the tap loop's multiply-adds
    with torch.no_grad(), plain:
        segment(jbu, backbone, decoder, image)
    pixels = 8 * 12 + 16 * 24 + 32 * 48
    jbu.kernel_impl = "reference"  # counted on the torch impl whatever it is set to, and restored after
    assert model_gflops(jbu, backbone, decoder, image) * 1e9 == plain.get_total_flops() + 2 * 49 * (3 + 32) * pixels
    assert jbu.kernel_impl == "reference"
    # the bilinear model is the same decoder on the same features: no adaptive convolutions to add
    from methods.bilinear import Bilinear

    bilinear = FlopCounterMode(display=False)
    with torch.no_grad(), bilinear:
        segment(Bilinear(), backbone, decoder, image)
    assert model_gflops(Bilinear(), backbone, decoder, image) * 1e9 == bilinear.get_total_flops() == 2 * 32 * 48 * (
        3 * 128 + 128 * 5)
