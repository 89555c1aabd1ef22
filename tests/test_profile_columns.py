"""`profile methods` reports each method's parameters and GFLOPs, counted independently of the code, the whole
pipeline's backbone passes, and runs its defaults for every method."""
import contextlib
import math
import time

import pytest
import torch

from bench.backbones import load_backbone
from bench.core.profiles import PROFILES
from bench.profiling import methods as profiling
from bench.profiling.methods import profile_methods
from bench.profiling.profile import Measurement
from bench.registry import METHODS


def test_params_and_gflops_columns_against_hand_counts():
    c, size = 8, 64
    df = profile_methods(["bilinear", "resize_conv", "carafe"], [size], c, repeats=1, progress=False).set_index("method")
    assert (df["status"] == "ok").all(), df["message"].to_dict()
    assert df.at["bilinear", "params"] == 0 and df.at["bilinear", "gflops"] == 0  # interpolation is not a counted op
    # resize_conv: four stages, each a 1x1 conv over [features, image] -> features, with bias
    assert df.at["resize_conv", "params"] == 4 * ((c + 3) * c + c)
    # its convs run on the LR grid of each stage (4, 8, 16, 32 px at stride 16): 2 * C_in * C_out per pixel
    lr = size // 16
    flops = sum(2 * c * c * (lr << k) ** 2 + 2 * 3 * c * (lr << (k + 1)) ** 2 for k in range(4))
    assert df.at["resize_conv", "gflops"] * 1e9 == pytest.approx(flops, rel=1e-9)
    assert df.at["carafe", "gflops"] > 0 and df.at["carafe", "params"] > 0


def test_a_tiled_row_counts_its_own_tiles_and_never_runs_the_whole_map(monkeypatch):
    """The whole forward is what a tiled row avoids (it may not fit): with it broken, the tiled row still
    times and counts; its count covers every tile, so it is at least the whole map's (halos add work)."""
    from methods.featup_jbu import FeatUpJBU

    whole = profile_methods(["featup_jbu"], [64], 8, repeats=1, progress=False).iloc[0]

    def no_whole_map(self, *args):
        raise AssertionError("the whole map was computed")

    monkeypatch.setattr(FeatUpJBU, "forward", no_whole_map)
    tiled = profile_methods(["featup_jbu"], [64], 8, repeats=1, progress=False, tile=16).iloc[0]
    assert tiled["status"] == "ok" and tiled["tile"] == 16, tiled["message"]
    assert tiled["gflops"] >= whole["gflops"] > 0


def one_call(fn, device, repeats=5, warmup=1, max_s=30.0):
    """``measure`` cut to one call: the tests below check what runs, not how fast."""
    fn()
    return Measurement(ms=1.0, peak_mb=1.0)


def test_the_defaults_run_every_builtin_method_or_say_why_not(monkeypatch):
    """No -m: per-image methods are fitted first, trainable ones run untrained, a method whose forward alone takes
    seconds per image is skipped with the option that runs it; every row that ran has its pipeline too, and a
    failing method (the test double) costs only its own row."""
    monkeypatch.setattr(profiling, "measure", one_call)
    backbone = load_backbone(PROFILES.get("default").backbone, random_weights=True)
    df = profile_methods(None, [48], 8, repeats=1, progress=False, backbone=backbone).set_index("method")
    assert list(df.index) == METHODS.names()
    builtin = df.loc[[m for m in df.index if METHODS.get(m).__module__.startswith("methods.")]]
    assert builtin["status"].isin(["ok", "skipped"]).all(), builtin.loc[builtin["status"] != "ok", "message"].to_dict()
    skipped = builtin[builtin["status"] == "skipped"]
    assert list(skipped.index) == [m for m in builtin.index if METHODS.get(m).slow_forward] == ["upsample_anything"]
    assert skipped["message"].str.endswith("profile it with -m upsample_anything").all()
    ran = builtin[builtin["status"] == "ok"]
    assert ran[["ms", "pipeline_ms"]].notna().all().all()
    assert ran["backbone_passes"].to_dict() == {m: int(METHODS.get(m).uses_backbone) for m in ran.index}
    fits = {m: METHODS.get(m).fit for m in ran.index}
    assert {ran.at[m, "weights"] for m in ran.index if fits[m] == "dataset"} == {"untrained"}
    assert {ran.at[m, "weights"] for m in ran.index if fits[m] == "image"} == {"fitted per image: 2 steps"}
    assert df.at["_exploding", "status"] == "error" and "boom in create" in df.at["_exploding", "message"]


class StubBackbone:
    """A backbone whose pass takes 50 ms and records the image side and stride it saw."""

    name, dim, stride = "stub", 8, 16

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def features(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append((image.shape[-1], self.stride))
        time.sleep(0.05)
        return torch.zeros(image.shape[0], self.dim, *(math.ceil(s / self.stride) for s in image.shape[-2:]))

    @contextlib.contextmanager
    def halved_stride(self):
        self.stride //= 2
        try:
            yield self
        finally:
            self.stride *= 2


@pytest.mark.parametrize("method, seen", [("bilinear", (64, 16)), ("large_image", (128, 16)), ("strided", (64, 8))])
def test_the_pipeline_column_includes_the_backbone_passes_a_method_makes(method, seen):
    """large_image's upsampling alone is bilinear's; its pipeline runs the backbone on a 2x image, strided's at half
    the stride: one pass per call, which the pipeline column pays and the upsampler-only one does not."""
    stub = StubBackbone()
    row = profile_methods([method], [64], stub.dim, repeats=1, progress=False, backbone=stub).iloc[0]
    assert row["status"] == "ok", row["message"]
    assert set(stub.seen) == {seen} and row["backbone_passes"] == 1
    assert row["pipeline_ms"] > row["ms"]
