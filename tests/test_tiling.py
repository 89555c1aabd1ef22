"""Tiled inference: equal to the whole map, at borders and odd sizes; memory bounded by the tile."""
import gc

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bench.profiling import methods as profiling
from bench.profiling.memory import peak_memory
from methods.bilinear import Bilinear
from methods.carafe import Carafe
from methods.featup_jbu import FeatUpJBU
from methods.tiling import resize_region, source_span, spans


def seeded(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def jbu(dim: int, stages: int) -> FeatUpJBU:
    """A JBU stack with random (not initial) weights, so every part of the kernel matters."""
    method = FeatUpJBU(dim, stages).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in method.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return method


def test_spans_cover_the_length_in_order():
    assert spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match="positive"):
        spans(10, 0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("in_size, out_size", [((7, 9), (112, 144)), ((7, 9), (50, 77)), ((40, 30), (23, 61))])
def test_resize_region_equals_the_same_region_of_interpolate(mode, in_size, out_size):
    x = seeded(2, 3, *in_size)
    full = F.interpolate(x, size=out_size, mode=mode, align_corners=False)
    for rows in [(0, 5), (3, out_size[0] - 2), (out_size[0] - 4, out_size[0])]:
        for cols in [(0, out_size[1]), (out_size[1] // 3, out_size[1] // 2)]:
            src_r = source_span(rows, in_size[0], out_size[0], mode)
            src_c = source_span(cols, in_size[1], out_size[1], mode)
            crop = x[..., src_r[0]:src_r[1], src_c[0]:src_c[1]]
            got = resize_region(crop, (src_r[0], src_c[0]), in_size, out_size, rows, cols, mode)
            torch.testing.assert_close(got, full[..., rows[0]:rows[1], cols[0]:cols[1]], atol=1e-5, rtol=1e-5)


# (LR grid, output size, tile): square and not, multiples of the stride and not (whose last
# resize runs as an aligned interpolate or as gathers), tiles that do not divide the size, one
# tile bigger than the map, and a 1-pixel-wide grid (replicate padding).
CASES = [((5, 7), (40, 56), 16), ((5, 7), (37, 61), 10), ((6, 6), (48, 48), 1000), ((3, 4), (24, 32), 7),
         ((1, 2), (8, 16), 5), ((4, 6), (16, 12), 9)]


@pytest.mark.parametrize("lr, size, tile, impl", [(*case, "auto") for case in CASES] + [(*CASES[0], "torch"),
                                                                                         (*CASES[3], "torch")])
def test_tiled_jbu_equals_untiled(lr, size, tile, impl):
    """With the one-pass Numba stage (auto) and with the torch adaptive conv on stored values."""
    method = jbu(8, 3)
    method.kernel_impl = impl
    x, image = seeded(2, 8, *lr, seed=2), seeded(2, 3, 45, 50, seed=3).abs()
    with torch.no_grad():
        whole = method(x, image, size)
        tiled = method.forward_tiled(x, image, size, tile)
    torch.testing.assert_close(tiled, whole, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("lr, size, tile", CASES)
def test_tiled_bilinear_equals_untiled(lr, size, tile):
    x = seeded(2, 8, *lr, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(Bilinear().forward_tiled(x, None, size, tile), Bilinear()(x, None, size),
                                   atol=1e-5, rtol=1e-5)


def test_jbu_region_is_computed_from_a_crop_of_the_features():
    """The corner tile of a 16 x 16 grid reads a 9 x 9 crop of it (three stages of 4-pixel halos), and a
    feature pixel outside that crop cannot change the tile, not even in the last bit."""
    method = jbu(4, 3)
    x, image = seeded(1, 4, 16, 16), seeded(1, 3, 128, 128).abs()
    changed = x.clone()
    changed[..., 15, 15] += 100
    seen = []
    refined = method.refined
    method.refined = lambda crop: seen.append(tuple(crop.shape[-2:])) or refined(crop)
    with torch.no_grad():
        tile = [method.forward_region(f, image, (128, 128), (0, 16), (0, 16), torch.empty(1, 4, 16, 16))
                for f in (x, changed)]
    assert seen == [(9, 9), (9, 9)]
    torch.testing.assert_close(tile[0], tile[1], atol=0, rtol=0)


def test_tiling_is_inference_only_and_leaves_gradients_unchanged():
    method = jbu(4, 2)
    x, image = seeded(1, 4, 3, 5).requires_grad_(), seeded(1, 3, 12, 20).abs()
    with pytest.warns(UserWarning, match="inference-only"):
        tiled = method.forward_tiled(x, image, (12, 20), 4)
    grad_tiled, = torch.autograd.grad(tiled.square().sum(), x)
    grad_whole, = torch.autograd.grad(method(x, image, (12, 20)).square().sum(), x)
    torch.testing.assert_close(grad_tiled, grad_whole, atol=0, rtol=0)


def test_a_method_that_cannot_tile_runs_whole_and_says_why():
    method = Carafe(8, 2).eval()
    x, image = seeded(1, 8, 4, 4), seeded(1, 3, 16, 16).abs()
    with torch.no_grad(), pytest.warns(UserWarning, match="carafe.*untiled: its x2 stages"):
        tiled = method.forward_tiled(x, image, (16, 16), 4)
    with torch.no_grad():
        torch.testing.assert_close(tiled, method(x, image, (16, 16)))


def extra_mb(method, channels: int, size: int, tile: int | None) -> float:
    """Peak memory of one call above its own float32 output (which the measurement counts)."""
    x, image = seeded(1, channels, size // 16, size // 16), seeded(1, 3, size, size).abs()
    with torch.no_grad():
        run = (lambda: method(x, image, (size, size))) if tile is None else \
            (lambda: method.forward_tiled(x, image, (size, size), tile))
        run()  # warm-up: Numba compilation, allocator pools
        gc.collect()
        with peak_memory("cpu") as peak:
            out = run()
        del out
    return peak.mb - channels * size * size * 4 / 2**20


@pytest.mark.slow
def test_tiled_memory_does_not_grow_with_the_output():
    """From 512² to 1024² the output grows by 192 MB (C = 64); a tiled run needs no more beyond
    it, while the whole-map run's working memory grows with the map."""
    method = jbu(64, 4)
    tiled = [extra_mb(method, 64, size, 128) for size in (512, 1024)]
    whole = [extra_mb(method, 64, size, None) for size in (512, 1024)]
    assert tiled[1] < tiled[0] + 32, tiled
    assert whole[1] > whole[0] + 200, whole


def test_profile_methods_reports_the_tile_and_predicts_oom(monkeypatch):
    monkeypatch.setattr(profiling, "available_bytes", lambda device: 300 * 2**20)
    df = profiling.profile_methods(["bilinear", "carafe"], [64, 32, 1024], 16, repeats=1, progress=False, tile=32)
    bilinear = df[df.method == "bilinear"].set_index("size")
    assert list(bilinear.index) == [32, 64, 1024] and (bilinear.loc[[32, 64], "tile"] == 32).all()
    assert bilinear.loc[1024, "status"] == "ok"  # tiled: 64 MB of output plus one tile's work fits in 240 MB
    carafe = df[df.method == "carafe"].set_index("size")
    assert (carafe["tile"] == "").all() and carafe.loc[32, "message"].startswith("untiled: ")
    assert carafe.loc[1024, "status"] == "oom" and "predicted" in carafe.loc[1024, "message"]
    assert pd.isna(carafe.loc[1024, "ms"])


def test_tile_option_reaches_the_run_context_and_refuses_nonsense(capsys):
    from bench.cli import make_context, parse

    assert make_context(parse(["run", "--tile", "256", "--device", "cpu"])).tile == 256
    assert make_context(parse(["run", "--device", "cpu"])).tile is None
    with pytest.raises(SystemExit):
        parse(["profile", "methods", "--tile", "0"])
    assert "--tile" in capsys.readouterr().err


def channel_mix(channels: int, outputs: int):
    """A per-pixel map (B,C,h,w) -> (B,outputs,h,w), as a probe or a classifier is."""
    weight = seeded(outputs, channels, seed=7)
    return lambda f: torch.einsum("oc,bchw->bohw", weight, f)


@pytest.mark.parametrize("lr, size, tile", CASES[:3])
def test_tiles_mapped_per_pixel_equal_the_mapped_whole_output(lr, size, tile):
    method, mix = jbu(8, 3), channel_mix(8, 3)
    x, image = seeded(2, 8, *lr, seed=2), seeded(2, 3, 45, 50, seed=3).abs()
    with torch.no_grad():
        mapped = method.forward_tiled(x, image, size, tile, pixelwise=mix)
        torch.testing.assert_close(mapped, mix(method(x, image, size)), atol=1e-4, rtol=1e-5)


def test_a_half_precision_output_is_the_float_output_rounded():
    method = jbu(8, 3)
    x, image = seeded(1, 8, 5, 7, seed=2), seeded(1, 3, 40, 56, seed=3).abs()
    with torch.no_grad():
        half = method.forward_tiled(x, image, (37, 61), 16, dtype=torch.float16)
        whole = method(x, image, (37, 61))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half, whole.half(), atol=2e-3, rtol=1e-3)


def mapped_peak_mb(size: int, tiled: bool = True) -> float:
    """Peak MB of a C = 64 JBU map at ``size``² mapped to 2 channels, tile by tile or whole."""
    method, mix = jbu(64, 4), channel_mix(64, 2)
    x, image = seeded(1, 64, size // 16, size // 16), seeded(1, 3, size, size).abs()
    call = (lambda: method.forward_tiled(x, image, (size, size), 64, pixelwise=mix)) if tiled else \
        (lambda: mix(method(x, image, (size, size))))
    with torch.no_grad():
        if tiled:
            call()  # warm-up (compilation, pools); the control needs none: a warm-up only lowers a peak
        gc.collect()
        with peak_memory("cpu") as measured:
            out = call()
        del out
    return measured.mb


def test_tiles_mapped_per_pixel_never_hold_the_whole_features(fresh_process):
    """At 1024², C = 64, the features are 256 MB (64 MB at 512²); mapped to 2 channels tile by tile,
    the call needs less than half of them, and grows by less than half of their growth (the
    guidance images and the mapped output do grow).

    The control: the same map of the whole output, measured the same way, must break both bounds
    (measured 182 / 583 MB), so a peak measurement that under-reported, or reported 0 where the OS
    does not let it reset the high-water mark, fails here instead of passing the bounds."""
    small, large = fresh_process(mapped_peak_mb, 512), fresh_process(mapped_peak_mb, 1024)
    whole_small, whole_large = fresh_process(mapped_peak_mb, 512, False), fresh_process(mapped_peak_mb, 1024, False)
    assert whole_large >= 256 and whole_large - whole_small >= 192, (whole_small, whole_large)  # the features alone
    assert large < 128 and large - small < 96, (small, large)


def half_output_row(dtype: torch.dtype) -> dict:
    return profiling.profile_methods(["bilinear"], [1024], 256, repeats=1, progress=False, tile=256,
                                     dtype=dtype).iloc[0].to_dict()


@pytest.mark.slow  # 18 s of a fresh process's memory profile, for the --half option alone (pytest -m slow)
def test_profile_methods_with_a_half_output_needs_half_the_output_memory(fresh_process):
    """Bilinear at 1024², C = 256, tiles of 256: the float32 output is 1024 MB, the float16 one 512 MB
    (each tile is computed in float32 first, and the allocator's reuse of tile buffers varies: tens of MB)."""
    peaks = {str(dtype): fresh_process(half_output_row, dtype) for dtype in (torch.float32, torch.float16)}
    assert [row["dtype"] for row in peaks.values()] == ["float32", "float16"]
    assert peaks["torch.float16"]["peak_mb"] < peaks["torch.float32"]["peak_mb"] - 384, peaks


class TileSpy(Bilinear):
    """Bilinear that records the ``tile`` of every upsample call (not registered: the tasks take it as given)."""

    name = "bilinear"

    def __init__(self) -> None:
        super().__init__()
        self.tiles: list[int | None] = []

    def upsample(self, backbone, image, output_size, tile=None, pixelwise=None, dtype=None):
        self.tiles.append(tile)
        return super().upsample(backbone, image, output_size, tile, pixelwise, dtype)


@pytest.mark.parametrize("task", ["probe_seg", "probe_depth", "cam", "e2e_seg"])
def test_every_task_upsamples_in_the_tiles_the_run_asks_for(task, lite0, tmp_path):
    """--tile lives in the run context, and each task hands it to every inference upsample (e2e_seg's training
    steps run whole: tiling is inference-only)."""
    from dataclasses import replace

    from bench.registry import TASKS
    from bench.running.session import build_context

    context = build_context("smoke", device="cpu", tile=32, progress=False)
    tiny = {"probe_seg": {"n_train": 2, "n_val": 1, "epochs": 1}, "probe_depth": {"n_train": 2, "n_val": 1, "epochs": 1},
            "cam": {"n_train": 2, "n_val": 1, "head_steps": 1}, "e2e_seg": {"n_train": 2, "n_val": 1, "steps": 1}}
    settings = {t: {**context.profile.task_settings.get(t, {}), **tiny[t]} for t in tiny}
    context = replace(context, cache_dir=tmp_path, profile=context.profile.with_overrides(task_settings=settings))
    spy = TileSpy()
    TASKS.get(task)().run(spy, lite0, context)
    inference = [t for t in spy.tiles if t is not None]
    assert inference and set(inference) == {32}, spy.tiles
    if task != "e2e_seg":
        assert None not in spy.tiles, spy.tiles


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_of_bands_with_moments_gathered_band_by_band_equals_group_norm_of_the_map(affine):
    """Moments merged over uneven row bands give torch's GroupNorm of the whole map, also where the mean is
    1e4 times the spread (the E[x²] - E[x]² formula loses the variance there in float32)."""
    from methods.tiling import GroupMoments, group_norm

    x = seeded(2, 8, 13, 9) + 1e4
    gn = torch.nn.GroupNorm(4, 8, affine=affine)
    if affine:
        with torch.no_grad():
            gn.weight.copy_(seeded(8, seed=1))
            gn.bias.copy_(seeded(8, seed=2))
    moments = GroupMoments()
    for r0, r1 in spans(13, 5):
        moments.add(x[:, :, r0:r1], 4)
    grouped = x.double().reshape(2, 4, -1)
    var, mean = torch.var_mean(grouped, -1, unbiased=False)
    mean_got, rstd_got = moments.stats(gn.eps)
    torch.testing.assert_close(mean_got, mean)
    torch.testing.assert_close(rstd_got, (var + gn.eps).rsqrt(), rtol=1e-4, atol=0)
    whole = F.group_norm(x.double(), 4, None if not affine else gn.weight.double(),
                         None if not affine else gn.bias.double(), gn.eps).float()
    for r0, r1 in spans(13, 5):
        torch.testing.assert_close(group_norm(gn, x[:, :, r0:r1], moments.stats(gn.eps)), whole[:, :, r0:r1],
                                   rtol=1e-4, atol=1e-3)


def test_a_sampled_tiled_call_computes_its_tiles_exactly_and_zero_fills_the_others():
    """bench.profiling.sampled_tiles (the 2048² peaks of the attention methods): the tiles it keeps equal the
    whole call's, the others are zero, and keeping every tile is the whole tiled call."""
    from bench.profiling.sampled_tiles import default_tiles, sampled_tiled_call

    method = profiling.build("naf", 16, 16)  # whole-image GroupNorm statistics in its setup, windowed attention
    lr, image = seeded(1, 16, 6, 6, seed=2), (seeded(1, 3, 96, 96, seed=3) + 1) / 2
    with torch.no_grad():
        whole = method.forward_tiled(lr, image, (96, 96), 32)
    keep = default_tiles(96, 32)
    assert keep == {((0, 32), (0, 32)), ((32, 64), (32, 64))}
    sampled, setup, seconds = sampled_tiled_call(method, lr, image, 96, 32, keep)
    assert len(seconds) == 2 and setup >= 0
    mask = torch.zeros(96, 96, dtype=torch.bool)
    mask[:32, :32] = mask[32:64, 32:64] = True
    torch.testing.assert_close(sampled[..., mask], whole[..., mask], rtol=0, atol=0)
    assert sampled[..., ~mask].abs().max() == 0 and whole[..., ~mask].abs().max() > 0
    every = {(r, c) for r in spans(96, 32) for c in spans(96, 32)}
    torch.testing.assert_close(sampled_tiled_call(method, lr, image, 96, 32, every)[0], whole, rtol=0, atol=0)
    assert "regions" not in vars(method)  # the instance is left as it was
    with pytest.raises(ValueError, match="does not tile"):
        sampled_tiled_call(profiling.build("carafe", 16, 16), lr, image, 96, 32, keep)
