"""`profile methods` reports each method's parameters and GFLOPs, counted independently of the code."""
import pytest

from bench.profiling.methods import profile_methods


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
