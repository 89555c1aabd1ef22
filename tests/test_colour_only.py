"""``colour_only``: its statistics against a brute-force window sum, and its place in tables as a reference row."""
import numpy as np
import pandas as pd
import pytest
import torch

from bench.reporting.intervals import interval_table
from bench.reporting.ranks import rank_agreement
from methods.colour_only import CHANNELS, SCALES, colour_statistics


def brute_force(image: np.ndarray, sigma: float, size: int, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted mean and standard deviation of each channel around (row, col): the window's weights
    written out, borders reflected (numpy's 'reflect': the edge pixel is not repeated)."""
    half = size // 2
    x = np.arange(size) - half
    g = np.exp(-0.5 * (x / sigma) ** 2)
    w = np.outer(g, g) / g.sum() ** 2
    padded = np.pad(image, ((0, 0), (half, half), (half, half)), mode="reflect")
    window = padded[:, row:row + size, col:col + size]
    mean = (window * w).sum((1, 2))
    var = (((window - mean[:, None, None]) ** 2) * w).sum((1, 2))
    return mean, np.sqrt(var)


def test_statistics_equal_a_brute_force_window_sum_at_every_scale():
    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = colour_statistics(image)
    assert stats.shape == (1, CHANNELS, 40, 56) and CHANNELS == 21
    torch.testing.assert_close(stats[:, :3], image)
    for s, fraction in enumerate(SCALES):
        sigma = fraction * 40
        size = 2 * min(int(np.ceil(3 * sigma)), 39) + 1
        for row, col in ((0, 0), (17, 30), (39, 55), (5, 50)):  # corners, inside, near an edge
            mean, sd = brute_force(image[0].numpy(), max(sigma, 0.5), size, row, col)
            np.testing.assert_allclose(stats[0, 3 + 6 * s:6 + 6 * s, row, col].numpy(), mean, atol=1e-6)
            np.testing.assert_allclose(stats[0, 6 + 6 * s:9 + 6 * s, row, col].numpy(), sd, atol=1e-6)


def test_a_flat_image_has_its_colour_and_no_spread():
    image = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(1, 3, 30, 20)
    stats = colour_statistics(image)
    for s in range(len(SCALES)):
        torch.testing.assert_close(stats[:, 3 + 6 * s:6 + 6 * s], image)
        assert stats[:, 6 + 6 * s:9 + 6 * s].abs().max() < 1e-3


def rows_of(values: dict[str, list[float]]) -> pd.DataFrame:
    """Tidy rows of one accuracy column: per image, [hits, pixels] of 100 pixels."""
    rows = []
    for method, per_image in values.items():
        stats = np.array([[100 * v, 100.0] for v in per_image])
        rows.append({"method": method, "column": "probe_seg.acc", "seed": 0, "per_image": stats,
                     "statistic": "ratio_sums", "value": np.mean(per_image)})
    return pd.DataFrame(rows)


def test_a_reference_row_gets_an_interval_but_no_mark_against_bilinear():
    rows = rows_of({"bilinear": [0.5, 0.6, 0.55, 0.52], "colour_only": [0.05, 0.1, 0.07, 0.08],
                    "jbu_classic": [0.2, 0.25, 0.22, 0.21]})
    spans = interval_table(rows, n_boot=200).set_index("method")
    assert spans.loc["colour_only", ["lo", "hi"]].notna().all()
    assert spans.loc["colour_only", ["diff_lo", "diff_hi"]].isna().all()
    assert spans.loc["jbu_classic", "diff_hi"] < 0  # an upsampler this far below bilinear is marked worse


def test_rank_agreement_leaves_the_reference_row_out():
    methods = ["bilinear", "low_res", "featup_jbu", "carafe", "sapa", "colour_only"]
    ours = pd.DataFrame({"probe_seg.miou": [50.0, 40.0, 30.0, 20.0, 10.0, 99.0]},
                        index=pd.Index(methods, name="method"))
    paper = pd.DataFrame({"miou": [45.0, 40.0, 30.0, 20.0, 10.0, 0.0]}, index=methods)
    agreement = rank_agreement(ours, paper, {"probe_seg.miou": "miou"}, {"probe_seg.miou": True}).iloc[0]
    assert agreement["n_all"] == 5 and agreement["tau_all"] == pytest.approx(1.0)
    assert all("colour_only" not in pair for pair in agreement["discordant"])
