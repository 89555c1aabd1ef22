"""Seeds aggregate to mean ± sd, intervals come from per-image statistics, τ compares with the paper."""
import io

import numpy as np
import pandas as pd
import pytest

from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.reporting.intervals import interval_table
from bench.reporting.ranks import rank_agreement, sees_backbone_features
from bench.reporting.report import detail_table, table_text, with_columns
from bench.running.runner import plan
from bench.reporting.stats import bootstrap_indices, miou_from_confusions
from bench.core.store import ResultStore
from conftest import write_cell


def write(store, method, seed, value, per_image=None, statistic=None, task="probe_seg", metric="miou"):
    write_cell(store, method, task, seed, metric, value, True, per_image, statistic)


def test_a_seeds_plan_has_one_cell_per_seed_with_its_own_recipe():
    context = RunContext(profile=PROFILES.get("smoke"), progress=False)
    cells = plan(["bilinear"], ["probe_seg", "probe_depth"], "efficientnet_lite0", context, seeds=[0, 1, 2])
    assert sorted((c.task, c.seed) for c, _ in cells) == [(t, s) for t in ("probe_depth", "probe_seg") for s in (0, 1, 2)]
    assert len({c.filename(r) for c, r in cells}) == 6
    assert all(r["profile"]["seed"] == r["seed"] == c.seed for c, r in cells)


def test_extra_datasets_get_their_own_cells_and_columns():
    context = RunContext(profile=PROFILES.get("default"), progress=False)
    cells = plan(["bilinear"], ["probe_depth", "probe_seg"], "efficientnet_lite0_s16", context)
    assert [(c.task, c.dataset, r["primary_data"]) for c, r in cells] == [
        ("probe_depth", "depth_scenes", True), ("probe_depth", "middlebury", False), ("probe_seg", "materials", True)]
    assert cells[1][1]["profile"]["depth_data"] == "middlebury"


def test_table_shows_mean_and_sd_over_seeds(tmp_path):
    store = ResultStore(tmp_path)
    for seed, value in enumerate([40.0, 44.0, 42.0]):
        write(store, "bilinear", seed, value)
    t = pd.read_csv(io.StringIO(table_text(tmp_path, "csv"))).set_index("method")
    assert t.loc["bilinear", "probe_seg.miou"] == pytest.approx(42.0)
    assert t.loc["bilinear", "probe_seg.miou sd"] == pytest.approx(2.0)
    assert "42.00 ± 2.00" in table_text(tmp_path, "md")


def test_rows_at_other_seeds_are_named_under_the_table(tmp_path):
    store = ResultStore(tmp_path)
    for method, seeds in (("bilinear", (0, 1, 2)), ("featup_jbu", (0, 1, 2)), ("mine", (0,))):
        for seed in seeds:
            write(store, method, seed, 40.0 + seed)
            write(store, method, seed, 0.5, task="probe_depth", metric="rmse")
    text = table_text(tmp_path, "md")
    assert ("probe_depth: seeds 0, 1, 2 (bilinear, featup_jbu); seed 0 (mine) · probe_seg: seeds 0, 1, 2 (bilinear, "
            "featup_jbu); seed 0 (mine). `run --seeds 0,1,2` scores a row at every seed the table holds." in text)
    t = pd.read_csv(io.StringIO(table_text(tmp_path, "csv"))).set_index("method")
    assert t.loc["mine", "probe_seg.miou"] == 40.0 and t.loc["bilinear", "probe_seg.miou"] == 41.0  # own seeds
    for seed in (1, 2):
        write(store, "mine", seed, 40.0 + seed)
        write(store, "mine", seed, 0.5, task="probe_depth", metric="rmse")
    assert "Rows scored at different seeds" not in table_text(tmp_path, "md")


def confusions(rng, n, k, accuracy):
    """n per-image confusion matrices of k classes: each image 100 pixels, ``accuracy`` of them right."""
    out = np.zeros((n, k, k), dtype=np.int64)
    for i in range(n):
        truth = rng.integers(0, k, 100)
        pred = np.where(rng.random(100) < accuracy, truth, rng.integers(0, k, 100))
        np.add.at(out[i], (truth, pred), 1)
    return out


def test_intervals_come_from_a_bootstrap_over_images_and_mark_significant_differences(tmp_path):
    rng = np.random.default_rng(0)
    store = ResultStore(tmp_path)
    stats = {"bilinear": confusions(rng, 12, 3, 0.5), "featup_jbu": confusions(rng, 12, 3, 0.95),
             "carafe": None}
    stats["carafe"] = stats["bilinear"].copy()
    for method, conf in stats.items():
        write(store, method, 0, miou_from_confusions(conf), conf.tolist(), "miou_confusion")
    detail = detail_table(store.rows(per_image=True)).loc[:, lambda d: d.columns.str.startswith("probe_seg.miou")]
    # brute force: the same draws, one resample at a time
    idx = bootstrap_indices(12, 1000, seed=0)
    reps = np.array([miou_from_confusions(stats["featup_jbu"][i]) for i in idx])
    lo, hi = np.percentile(reps, [2.5, 97.5])
    assert detail.loc["featup_jbu", "probe_seg.miou lo"] == pytest.approx(lo)
    assert detail.loc["featup_jbu", "probe_seg.miou hi"] == pytest.approx(hi)
    # the paired difference: the same draws for both methods, one resample at a time
    base = np.array([miou_from_confusions(stats["bilinear"][i]) for i in idx])
    diff_lo, diff_hi = np.percentile(reps - base, [2.5, 97.5])
    assert detail.loc["featup_jbu", "probe_seg.miou diff_lo"] == pytest.approx(diff_lo)
    assert detail.loc["featup_jbu", "probe_seg.miou diff_hi"] == pytest.approx(diff_hi)
    assert diff_lo > 0
    # a method scoring exactly bilinear's images: every paired resample differs by 0
    assert detail.loc["carafe", "probe_seg.miou diff_lo"] == detail.loc["carafe", "probe_seg.miou diff_hi"] == 0
    md = table_text(tmp_path, "md")
    jbu_line = next(line for line in md.splitlines() if line.startswith("| featup_jbu"))
    carafe_line = next(line for line in md.splitlines() if line.startswith("| carafe"))
    assert jbu_line.rstrip(" |").endswith("+") and not carafe_line.rstrip(" |").endswith("+")


def test_intervals_pool_several_seeds_each_with_its_own_draws(tmp_path):
    """Three seeds of 10, 12 and 9 images: each seed's resamples come from its own draws
    (bootstrap_indices(n, 1000, seed)), the metric of each resample is averaged over seeds, and the
    difference from bilinear pairs the same draws; brute force, one resample and one seed at a time."""
    rng = np.random.default_rng(3)
    sizes = {0: 10, 1: 12, 2: 9}
    store = ResultStore(tmp_path)
    stats = {(m, s): confusions(rng, n, 3, accuracy) for s, n in sizes.items()
             for m, accuracy in (("bilinear", 0.6), ("featup_jbu", 0.7))}
    for (method, seed), conf in stats.items():
        write(store, method, seed, miou_from_confusions(conf), conf.tolist(), "miou_confusion")
    write(store, "sapa", 0, 50.0, stats[("featup_jbu", 0)].tolist(), "miou_confusion")  # seed 0 only
    spans = interval_table(with_columns(store.rows(per_image=True))).set_index("method")

    def seed_mean(method):
        per_seed = [[miou_from_confusions(stats[(method, s)][i]) for i in bootstrap_indices(n, 1000, seed=s)]
                    for s, n in sizes.items()]
        return np.mean(per_seed, axis=0)

    jbu, base = seed_mean("featup_jbu"), seed_mean("bilinear")
    for method, reps in (("featup_jbu", jbu), ("bilinear", base)):
        assert [spans.loc[method, "lo"], spans.loc[method, "hi"]] == pytest.approx(np.percentile(reps, [2.5, 97.5]))
    assert [spans.loc["featup_jbu", "diff_lo"], spans.loc["featup_jbu", "diff_hi"]] == pytest.approx(
        np.percentile(jbu - base, [2.5, 97.5]))
    # one seed alone gives another (wider) interval: the pooling is not a no-op
    alone = [miou_from_confusions(stats[("featup_jbu", 0)][i]) for i in bootstrap_indices(10, 1000, seed=0)]
    assert np.ptp(np.percentile(alone, [2.5, 97.5])) > spans.loc["featup_jbu", "hi"] - spans.loc["featup_jbu", "lo"]
    # seeds that are not bilinear's: an interval of its own, but no paired difference
    assert spans.loc["sapa", ["lo", "hi"]].notna().all() and spans.loc["sapa", ["diff_lo", "diff_hi"]].isna().all()


def test_rank_agreement_against_hand_computed_tau():
    methods = ["featup_jbu", "bilinear", "low_res", "large_image", "carafe", "sapa"]
    paper = pd.DataFrame({"m": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]}, index=methods)
    ours = pd.DataFrame({"c": [6.0, 4.0, 5.0, 3.0, 2.0, 1.0]}, index=methods)
    row = rank_agreement(ours, paper, {"c": "m"}, {"c": True}).iloc[0]
    # 15 pairs, one swapped (bilinear, low_res): (14 - 1) / 15
    assert row.tau_all == pytest.approx(13 / 15) and row.n_all == 6
    # without large_image (it changes what the backbone sees): 10 pairs, one swapped: (9 - 1) / 10
    assert row.tau_same_features == pytest.approx(8 / 10) and row.n_same_features == 5
    assert row.discordant == [("low_res", "bilinear")]


def test_methods_that_change_the_backbone_input_are_known():
    assert not sees_backbone_features("strided") and not sees_backbone_features("large_image")
    assert sees_backbone_features("bilinear") and sees_backbone_features("featup_jbu")
    assert sees_backbone_features("someone_elses_plugin")
