"""Per-image fitting (featup_implicit, dip): known answer, determinism, cache, sizes.

Known answer: features that are a fixed affine function of the colour of a sharp-edged
image, seen by a "backbone" that average-pools them by 8 (so the LR views are made by a
known downsampler). A fit that works recovers the HR features better than bilinear.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.fitting import fit_method
from bench.fitting import per_image
from bench.fitting.fit_cache import FitCache
from bench.fitting.multiview import Jitter, SimpleDownsampler, replay
from bench.core.features import standardise
from bench.fitting.per_image import FIT_SETTINGS, ImageFitSettings, downsampler_kernel, fit_images
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from methods import featup_implicit
from methods.dip import DIP
from methods.featup_implicit import FeatUpImplicit
from test_classic_upsamplers import colour_features, scene

KNOWN_ANSWER = ImageFitSettings(steps=150, views=16, views_per_step=4, pca_views=16, scale=2, group=2)
QUICK = ImageFitSettings(steps=3, views=4, views_per_step=2, pca_views=4, scale=2, group=4)


class PooledColours(nn.Module):
    """A stand-in backbone: colour features average-pooled by 8 (stride 8, 8 channels)."""

    name, stride, dim = "pooled_colours", 8, 8

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(colour_features(image, seed=0), 8)


def context(settings: ImageFitSettings, cache: Path, monkeypatch) -> RunContext:
    monkeypatch.setitem(FIT_SETTINGS, "smoke", settings)
    return RunContext(profile=PROFILES.get("smoke"), cache_dir=cache, progress=False)


@pytest.mark.parametrize("cls", [FeatUpImplicit, DIP], ids=lambda c: c.name)
def test_recovers_features_better_than_bilinear(cls, tmp_path, monkeypatch):
    backbone, images = PooledColours(), torch.stack([scene(0), scene(1)])
    method = cls()
    fit_method(method, backbone, context(KNOWN_ANSWER, tmp_path, monkeypatch), images)
    with torch.no_grad():
        out = method.eval().upsample(backbone, images, (64, 96))
    truth = standardise(colour_features(images, seed=0))
    bilinear = F.interpolate(standardise(backbone.features(images)), size=(64, 96), mode="bilinear",
                             align_corners=False)
    mse, mse_bilinear = (out - truth).square().mean().item(), (bilinear - truth).square().mean().item()
    print(f"{cls.name}: MSE {mse:.4f}, bilinear {mse_bilinear:.4f}, ratio {mse / mse_bilinear:.3f}")
    assert mse < mse_bilinear


@pytest.mark.parametrize("downsampler", ["simple", "attention"])
def test_fits_are_deterministic_and_independent_of_their_group(downsampler):
    backbone, images = PooledColours(), torch.stack([scene(0), scene(1)])
    method, settings = FeatUpImplicit(), dataclasses.replace(QUICK, downsampler=downsampler)
    alone = fit_images(method, backbone, images[:1], settings, [7]).fits[0]
    again = fit_images(method, backbone, images[:1], settings, [7]).fits[0]
    grouped = fit_images(method, backbone, images, settings, [7, 8]).fits[0]
    other_seed = fit_images(method, backbone, images[:1], settings, [9]).fits[0]
    for key, value in alone["net"].items():
        assert torch.equal(value, again["net"][key]), key
        torch.testing.assert_close(value, grouped["net"][key], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone["net"]["layers.2.weight"], other_seed["net"]["layers.2.weight"])
    down = alone["down"]
    if downsampler == "attention":  # the pooling weights were learned too, and are image 7's alone
        assert sorted(down) == ["bias", "logit.bias", "logit.weight", "scale"]
        for key, value in down.items():
            torch.testing.assert_close(value, grouped["down"][key], rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(down, grouped["down"], rtol=1e-4, atol=1e-5)


def test_grouped_attention_downsampler_is_featups_downsampler_per_image():
    """Each image's slice of the grouped downsampler, given the same weights, pools as the single one does
    (eval: no dropout); in training, image g's draws come from generator g alone."""
    from bench.fitting.multiview import AttentionDownsampler, GroupedAttentionDownsampler

    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    grouped = GroupedAttentionDownsampler(generators, 6, 5).eval()
    hr = torch.randn(2 * 3, 6, 24, 28)  # 2 images x 3 views
    out = grouped(hr, (4, 5))
    for g in range(2):
        single = AttentionDownsampler(6, 5).eval()
        with torch.no_grad():
            single.logit.weight.copy_(grouped.logit.weight[g])
            single.logit.bias.copy_(grouped.logit.bias[g])
            single.scale.copy_(grouped.scale[g])
            single.bias.copy_(grouped.bias[g])
        torch.testing.assert_close(out[3 * g:3 * g + 3], single(hr[3 * g:3 * g + 3], (4, 5)))
    first = GroupedAttentionDownsampler([torch.Generator().manual_seed(1)], 6, 5).train()
    pair = GroupedAttentionDownsampler([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], 6, 5).train()
    torch.testing.assert_close(pair(hr, (4, 5))[:3], first(hr[:3], (4, 5)))
    with pytest.raises(ValueError, match="does not split into 2 equal groups"):
        pair(hr[:5], (4, 5))


def test_second_call_hits_the_cache_and_a_damaged_entry_is_refitted(tmp_path, monkeypatch):
    backbone, images = PooledColours(), torch.stack([scene(0), scene(1), scene(2)])
    ctx = context(QUICK, tmp_path, monkeypatch)
    first = DIP()
    fit_method(first, backbone, ctx, images)
    assert first.fits.fitted == 3
    second = DIP()
    fit_method(second, backbone, ctx, list(images) + [images[0]])
    assert second.fits.fitted == 0  # every fit came from disk, the repeated image once
    with torch.no_grad():
        torch.testing.assert_close(first.eval().upsample(backbone, images, (64, 96)),
                                   second.eval().upsample(backbone, images, (64, 96)))
    entries = sorted(second.fits.cache.folder.glob("*.pt"))
    assert len(entries) == 3
    entries[0].write_bytes(entries[0].read_bytes()[:200])  # truncated
    damaged = bytearray(entries[1].read_bytes())
    damaged[-2000] ^= 0xFF  # one flipped byte inside the stored tensors
    entries[1].write_bytes(bytes(damaged))
    third = DIP()
    with pytest.warns(UserWarning, match="damaged"):
        fit_method(third, backbone, ctx, images)
    assert third.fits.fitted == 2


def test_cache_is_bounded_least_recently_used_first(tmp_path):
    cache = FitCache(tmp_path, {"method": "m", "version": "1", "backbone": "b"}, max_mb=1.0)
    fit = {"net": {"w": torch.zeros(100_000)}}  # ~0.4 MB per entry
    for name in ("a", "b", "c"):
        cache.save(name * 64, fit)
        cache.evict()
    assert cache.size_mb() <= 1.0
    assert cache.load("a" * 64) is None and cache.load("c" * 64) is not None


def test_an_unfitted_per_image_method_says_how_to_fit_it():
    with pytest.raises(RuntimeError, match="fit_method"):
        FeatUpImplicit()(torch.zeros(1, 8, 8, 12), torch.zeros(1, 3, 64, 96), (64, 96))


@pytest.mark.parametrize("size", [(64, 96), (37, 101), (5, 9), (128, 40)])
@pytest.mark.parametrize("cls", [FeatUpImplicit, DIP], ids=lambda c: c.name)
def test_any_output_size_and_aspect(cls, size, tmp_path, monkeypatch):
    backbone, images = PooledColours(), scene(3)[None]
    method = cls()
    fit_method(method, backbone, context(QUICK, tmp_path, monkeypatch), images)
    with torch.no_grad():
        out = method.eval().upsample(backbone, images, size)
    assert out.shape == (1, 8, *size) and torch.isfinite(out).all()


def test_implicit_rendering_in_chunks_equals_one_pass(tmp_path, monkeypatch):
    backbone, images = PooledColours(), scene(4)[None]
    method = FeatUpImplicit()
    fit_method(method, backbone, context(QUICK, tmp_path, monkeypatch), images)
    with torch.no_grad():
        whole = method.eval().upsample(backbone, images, (64, 96))
        monkeypatch.setattr(featup_implicit, "QUERY_PIXELS", 200)  # 2 rows per chunk
        torch.testing.assert_close(method.upsample(backbone, images, (64, 96)), whole)


def test_replay_gives_each_views_jitter():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 5, 24, 32)
    views = [[Jitter.sample((24, 32), g, pad=6, max_zoom=1.8, p_zoom=0.7) for _ in range(3)] for _ in range(2)]
    grids = torch.stack([torch.stack([v.grid() for v in vs]) for vs in views])
    expected = torch.cat([v(maps[i:i + 1]) for i, vs in enumerate(views) for v in vs])
    torch.testing.assert_close(replay(maps, grids, 6), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("k, size, lr", [(4, (56, 60), (14, 15)), (7, (50, 50), (6, 6)), (28, (48, 64), (3, 4))])
def test_grouped_downsampler_equals_a_conv_per_group(k, size, lr):
    down = SimpleDownsampler(k, groups=2)
    with torch.no_grad():
        down.weight.copy_(torch.rand(2, k, k, generator=torch.Generator().manual_seed(k)))
    maps = torch.randn(4, 3, *size)
    kernel = down.weight.abs() / down.weight.abs().sum((1, 2), keepdim=True)
    expected = []
    for i in range(4):
        stride = tuple((n - k) // max(m - 1, 1) for n, m in zip(size, lr))
        conv = F.conv2d(maps[i][:, None], kernel[i // 2][None, None], stride=stride)
        expected.append(conv[:, 0, :lr[0], :lr[1]])
    torch.testing.assert_close(down(maps, lr), torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_downsampler_kernel_tiles_the_grid():
    assert downsampler_kernel(224, 14) == 29  # FeatUp's implicit kernel at its own geometry
    assert downsampler_kernel(56, 14) == 4  # one LR cell on the default profile's 56 px grid
    for fit, lr in [(56, 14), (112, 14), (48, 3), (32, 8), (30, 7)]:
        k = downsampler_kernel(fit, lr)
        assert 1 <= k <= fit and (fit - k) % (lr - 1) == 0


def test_views_of_the_fit_grid_are_views_of_the_image_upscaled():
    settings = dataclasses.replace(QUICK, scale=4)
    fit, view = per_image.fit_grids((70, 100), settings.scale)
    assert fit == (17, 25) and view == (68, 100)
    for jitter in per_image.sample_views(settings, fit, torch.Generator().manual_seed(0)):
        assert jitter.upscaled(4).size == view and jitter.pad == round(settings.pad / 4)
