import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.regression import MeanSquaredError

from bench.reporting.stats import (
    bootstrap_indices,
    bootstrap_interval,
    discordant_pairs,
    kendall_tau,
    miou_from_confusions,
    miou_from_summed_confusions,
    paired_bootstrap_difference,
    rmse_from_sums,
    sum_statistic,
)

METHODS = ["bilinear", "jbu", "featup", "lift"]


def series(values, index=METHODS):
    return pd.Series(values, index=index, dtype=float)


# ------------------------------------------------------------------------------ rank agreement

def test_kendall_tau_perfect_and_reversed_order():
    ours = series([1, 2, 3, 4])
    assert kendall_tau(ours, series([10, 20, 30, 40])) == (1.0, 4)
    assert kendall_tau(ours, series([40, 30, 20, 10])) == (-1.0, 4)


def test_kendall_tau_one_swapped_adjacent_pair():
    # 6 pairs, 5 concordant and 1 discordant: tau = (5 - 1) / 6
    tau, n = kendall_tau(series([1, 2, 3, 4]), series([1, 3, 2, 4]))
    assert n == 4 and tau == pytest.approx(4 / 6)


def test_kendall_tau_b_with_a_tie():
    # ours = 1 2 3 4, paper = 1 3 3 2 on (A, B, C, D). Pairs: AB, AC, AD concordant; BC tied in
    # paper only; BD, CD discordant (ours rises, paper falls 3 -> 2). n_c = 3, n_d = 2,
    # n0 = 4*3/2 = 6, ties in ours t_x = 0, ties in paper t_y = 1 (the pair BC).
    # tau_b = (n_c - n_d) / sqrt((n0 - t_x) * (n0 - t_y)) = 1 / sqrt(6 * 5) = 0.18257...
    tau, n = kendall_tau(series([1, 2, 3, 4]), series([1, 3, 3, 2]))
    assert n == 4 and tau == pytest.approx(1 / math.sqrt(30))


def test_kendall_tau_uses_common_methods_without_nan():
    ours = pd.Series({"bilinear": 1.0, "jbu": 2.0, "featup": 3.0, "lift": np.nan, "ours_only": 9.0})
    paper = pd.Series({"featup": 30.0, "jbu": 20.0, "bilinear": 10.0, "lift": 40.0, "paper_only": 0.0})
    assert kendall_tau(ours, paper) == (1.0, 3)  # aligned by name, not position


def test_kendall_tau_needs_two_methods():
    tau, n = kendall_tau(pd.Series({"a": 1.0, "b": np.nan}), pd.Series({"a": 2.0, "b": 3.0}))
    assert math.isnan(tau) and n == 1
    tau, n = kendall_tau(pd.Series(dtype=float), pd.Series(dtype=float))
    assert math.isnan(tau) and n == 0


def test_duplicate_method_names_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        kendall_tau(pd.Series([1.0, 2.0], index=["a", "a"]), pd.Series({"a": 1.0}))


def test_discordant_pairs_names_the_disagreements():
    ours = series([4, 3, 2, 1])      # bilinear > jbu > featup > lift
    paper = series([4, 1, 2, 2])     # jbu falls below featup and lift; featup ties lift
    pairs = discordant_pairs(ours, paper)
    assert pairs == [("jbu", "featup"), ("jbu", "lift")]  # featup/lift tied in paper: not discordant
    # consistent with tau-b: n_c = 3 (bilinear above all), n_d = 2, one tie in paper
    assert kendall_tau(ours, paper)[0] == pytest.approx((3 - 2) / math.sqrt(6 * 5))
    assert discordant_pairs(ours, ours) == []
    assert set(discordant_pairs(ours, -ours)) == set(itertools.combinations(METHODS, 2))


# ------------------------------------------------------------------ metrics of summed statistics

def confusions(pred: np.ndarray, label: np.ndarray, k: int, ignore: int = 255) -> np.ndarray:
    """Per-image confusion matrices (rows = label, cols = prediction), ignored pixels dropped."""
    out = np.zeros((len(pred), k, k), dtype=np.int64)
    for i, (p, t) in enumerate(zip(pred, label)):
        keep = t != ignore
        out[i] = np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)
    return out


def test_miou_matches_torchmetrics_with_absent_classes():
    rng = np.random.default_rng(1)
    k, n = 7, 5
    label = rng.integers(0, 5, size=(n, 16, 16))          # classes 5 and 6 never labelled
    pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, 6, size=label.shape))
    label[rng.random(label.shape) < 0.1] = 255              # ignored pixels
    assert (pred == 5).any() and not (pred == 6).any()      # 5: predicted only; 6: absent from both
    metric = MulticlassJaccardIndex(k, average="macro", ignore_index=255)
    metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    expected = 100 * metric.compute().item()
    conf = confusions(pred, label, k)
    assert miou_from_confusions(conf) == pytest.approx(expected, rel=1e-5)
    # by hand: classes 0..5 averaged, 6 left out
    tot = conf.sum(0)
    assert tot[6].sum() == tot[:, 6].sum() == 0 and tot[5].sum() == 0 < tot[:, 5].sum()
    tp, union = np.diag(tot)[:6], (tot.sum(0) + tot.sum(1) - np.diag(tot))[:6]
    assert miou_from_confusions(conf) == pytest.approx(100 * (tp / union).mean())


def test_miou_without_any_present_class_is_nan():
    assert math.isnan(miou_from_confusions(np.zeros((2, 3, 3), dtype=np.int64)))


def test_rmse_pools_pixels_like_torchmetrics():
    rng = np.random.default_rng(2)
    preds = [rng.normal(size=m) for m in (3, 10, 50)]      # images with different valid counts
    gts = [rng.normal(size=len(p)) for p in preds]
    metric = MeanSquaredError(squared=False)
    for p, g in zip(preds, gts):
        metric.update(torch.from_numpy(p).float(), torch.from_numpy(g).float())
    sums = np.array([[((p - g) ** 2).sum(), len(p)] for p, g in zip(preds, gts)])
    assert rmse_from_sums(sums) == pytest.approx(metric.compute().item(), rel=1e-5)


# ------------------------------------------------------------------------------- the bootstrap

def loop_bootstrap(per_image, statistic, n_boot, seed, level=0.95):
    """The plain python bootstrap with the same draws."""
    rng = np.random.default_rng(seed)
    n = len(per_image)
    idx = rng.integers(0, n, size=(n_boot, n))
    reps = [statistic(per_image[[int(i) for i in rows]]) for rows in idx]
    return tuple(np.percentile(reps, [100 * (1 - level) / 2, 100 * (1 + level) / 2]))


def mean(x: np.ndarray) -> float:
    return float(x.mean())


def test_bootstrap_of_the_mean_matches_all_n_to_the_n_resamples():
    # n = 4 images: the exact bootstrap distribution is the 4**4 = 256 equally likely resamples.
    values = np.array([0.0, 1.0, 2.0, 5.0])
    exact = np.array([values[list(r)].mean() for r in itertools.product(range(4), repeat=4)])
    low, high = bootstrap_interval(values, mean, n_boot=20000, seed=3)
    # the means lie on a grid of step 0.25; Monte Carlo quantiles land within one step
    assert low == pytest.approx(np.percentile(exact, 2.5), abs=0.25)
    assert high == pytest.approx(np.percentile(exact, 97.5), abs=0.25)
    assert low <= values.mean() <= high


@pytest.mark.parametrize("seed", [0, 7])
def test_bootstrap_equals_a_python_loop_with_the_same_draws(seed):
    values = np.random.default_rng(4).normal(size=9)
    assert bootstrap_interval(values, mean, n_boot=300, seed=seed, level=0.9) == \
        pytest.approx(loop_bootstrap(values, mean, 300, seed, level=0.9))
    assert (bootstrap_indices(9, 300, seed) == np.random.default_rng(seed).integers(0, 9, (300, 9))).all()


def random_confusions(n=12, k=4, seed=5):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, k, size=(n, 8, 8))
    pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, k, size=label.shape))
    return confusions(pred, label, k)


def test_vectorised_sum_statistics_equal_the_loop():
    conf = random_confusions()
    vec = bootstrap_interval(conf, miou_from_confusions, n_boot=200, seed=1)
    assert vec == loop_bootstrap(conf, miou_from_confusions, 200, 1)  # integer sums: exact
    assert vec[0] <= miou_from_confusions(conf) <= vec[1]

    sums = np.abs(np.random.default_rng(6).normal(size=(10, 2))) * [5.0, 100.0]
    vec = bootstrap_interval(sums, rmse_from_sums, n_boot=200, seed=2)
    assert vec == pytest.approx(loop_bootstrap(sums, rmse_from_sums, 200, 2), rel=1e-12)
    assert vec[0] <= rmse_from_sums(sums) <= vec[1]

    own = sum_statistic(miou_from_summed_confusions)  # a caller's own sum statistic
    assert bootstrap_interval(conf, own, n_boot=200, seed=1) == \
        bootstrap_interval(conf, lambda c: miou_from_confusions(c), n_boot=200, seed=1)


def test_bootstrap_is_deterministic_for_a_seed():
    conf = random_confusions()
    first = bootstrap_interval(conf, miou_from_confusions, n_boot=100, seed=11)
    assert bootstrap_interval(conf, miou_from_confusions, n_boot=100, seed=11) == first
    assert bootstrap_interval(conf, miou_from_confusions, n_boot=100, seed=12) != first


def test_paired_difference_of_identical_inputs_is_exactly_zero():
    conf = random_confusions()
    assert paired_bootstrap_difference(conf, conf.copy(), miou_from_confusions) == (0.0, 0.0)
    values = np.random.default_rng(8).normal(size=6)
    assert paired_bootstrap_difference(values, values.copy(), mean, n_boot=50) == (0.0, 0.0)


def test_paired_difference_uses_the_same_images_for_both():
    base = np.random.default_rng(9).normal(size=20) * 10     # large image-to-image spread
    low, high = paired_bootstrap_difference(base + 1.0, base, mean, n_boot=200)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)  # unpaired would be ~±4 wide
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_difference(base, base[:5], mean)


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError):
        bootstrap_interval(np.ones(3), mean, level=1.0)
    with pytest.raises(ValueError):
        bootstrap_interval(np.ones(0), mean)
