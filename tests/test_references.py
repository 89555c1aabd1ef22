"""Reference tables: each loads under our method names; τ only over 5 or more checked methods, never over reference
rows; orderings worded by each metric's direction; a run is compared with a table only where its protocol is the
table's, and one line says why not where it is not."""
import itertools

import pandas as pd
import pytest

from bench.core.store import ResultStore
from bench.registry import METHODS
from bench.reporting.ranks import MIN_TAU_METHODS, agreement_text, rank_agreement
from bench.reporting.references import REFERENCES, RunSetting, reference
from bench.reporting.report import table_text
from test_report import write_cell

PAPER = ("vit", "coco_stuff", "paper")
"""Cells made as FeatUp's Table 1 was: ViT-S/16 on COCO-Stuff (at 224 px, in the recipe)."""


def recipe(size: int) -> dict:
    return {"method_version": "1", "task_version": "1", "profile": {"image_size": [size, size]}}


def brute_force_tau(ours: dict[str, float], theirs: dict[str, float]) -> float:
    """Kendall's τ over every pair, for untied scores: (concordant - discordant) / pairs."""
    signs = [(ours[a] - ours[b]) * (theirs[a] - theirs[b]) for a, b in itertools.combinations(ours, 2)]
    return sum(1 if s > 0 else -1 for s in signs) / len(signs)


@pytest.mark.parametrize("name", REFERENCES)
def test_every_reference_table_loads_under_our_method_names(name):
    ref = reference(name)
    table = ref.table()
    assert set(table.index) <= set(METHODS.names()), set(table.index) - set(METHODS.names())
    assert set(ref.columns.values()) <= set(table.columns)
    assert table["confirmed"].dtype == bool


def test_the_2026_tables_map_their_names_to_ours_and_are_never_ranked():
    """UPLiFT's and Upsample Anything's figures could not be checked against their papers: stored, flagged, unranked."""
    uplift, anything = reference("uplift").table(), reference("upsample_anything").table()
    assert uplift.loc["uplift", "coco_miou"] == 62.55 and uplift.loc["uplift", "cityscapes_miou"] == 65.38
    assert uplift.loc["anyup", "depth_delta1"] == pytest.approx(0.6132)  # printed in percent, ours a fraction
    assert anything.loc["jbu_classic", "voc_miou"] == 81.65  # its fixed JBU
    assert anything.loc["upsample_anything", "nyuv2_rmse"] == 0.498
    for name in ("uplift", "upsample_anything"):
        assert reference(name).ranked().empty
        assert "Shown, never ranked" in reference(name).unconfirmed_note(["bilinear"])
    assert reference("jafar").unconfirmed_note(["bilinear"]) == ""  # a CSV without the column: all checked


def test_tau_needs_five_common_methods_and_is_kendalls_at_five():
    methods = ["bilinear", "low_res", "featup_jbu", "carafe", "sapa", "resize_conv"]
    ours = dict(zip(methods, [5.0, 1.0, 4.0, 6.0, 2.0, 3.0]))
    theirs = dict(zip(methods, [3.0, 1.0, 6.0, 5.0, 4.0, 2.0]))
    paper = pd.DataFrame({"m": theirs})
    for n in (MIN_TAU_METHODS - 1, MIN_TAU_METHODS, len(methods)):
        picked = {m: ours[m] for m in methods[:n]}
        table = pd.DataFrame({"c": {**picked, "colour_only": 100.0}})  # a reference row: never counted
        row = rank_agreement(table, paper, {"c": "m"}, {"c": True}).iloc[0]
        assert row.n_all == n
        if n < MIN_TAU_METHODS:
            assert pd.isna(row.tau_all)
            assert f"no τ over {n} methods ({MIN_TAU_METHODS} needed)" in agreement_text(pd.DataFrame([row]))
        else:
            assert row.tau_all == pytest.approx(brute_force_tau(picked, {m: theirs[m] for m in picked}))
            assert f"τ {row.tau_all:+.2f} over {n} methods" in agreement_text(pd.DataFrame([row]))


def test_orderings_are_worded_by_the_metrics_direction():
    """For RMSE the larger number is the worse one: ours 0.6 for bilinear and 0.5 for low_res puts low_res ahead."""
    ours = pd.DataFrame({"rmse": [0.6, 0.5], "miou": [0.6, 0.5]}, index=["bilinear", "low_res"])
    paper = pd.DataFrame({"rmse": [1.19, 1.25], "miou": [1.19, 1.25]}, index=["bilinear", "low_res"])
    text = agreement_text(rank_agreement(ours, paper, {"rmse": "rmse", "miou": "miou"},
                                         {"rmse": False, "miou": True}))
    rmse, miou = (next(line for line in text.splitlines() if line.startswith(f"- {c}:")) for c in ("rmse", "miou"))
    assert rmse.endswith("here, unlike the paper: low_res better than bilinear")
    assert miou.endswith("here, unlike the paper: bilinear better than low_res")
    assert ">" not in text


def test_a_run_off_the_references_protocol_gets_one_line_and_no_tau(tmp_path):
    """The smoke setting (efficientnet on generated scenes) set beside FeatUp's ViT-S/16 on COCO-Stuff: asked for with
    --vs, the numbers are shown, with one line saying the protocols differ, and no τ."""
    store = ResultStore(tmp_path)
    for i, method in enumerate(["bilinear", "low_res", "featup_jbu", "carafe", "sapa"]):
        write_cell(store, method, "probe_seg", {"miou": 40.0 + i}, recipe=recipe(96))
    md = table_text(tmp_path, "md", vs="featup")
    lines = [line for line in md.splitlines() if "Protocol" in line]
    assert lines == ["Protocol differs from the paper table's (this run: efficientnet_lite0 at 96×96 px on scenes; "
                     "the table: vit at 224×224 px on coco_stuff, imagenet, nyuv2 (differs in: backbone, image size, "
                     "data)): its numbers are set beside ours because --vs asked for them, but neither values nor "
                     "ranks compare, so no τ."]
    assert "probe_seg.miou (paper)" in md and "Rank agreement" not in md and "τ +" not in md


def test_a_run_on_the_references_protocol_is_ranked_against_it(tmp_path):
    store = ResultStore(tmp_path)
    ours = {"bilinear": 40.0, "low_res": 39.0, "featup_jbu": 45.0, "carafe": 41.0, "sapa": 43.0, "resize_conv": 42.0}
    for method, miou in ours.items():
        write_cell(store, method, "probe_seg", {"miou": miou}, where=PAPER, recipe=recipe(224))
    md = table_text(tmp_path, "md", vs="featup")
    paper = reference("featup").table()["seg_printed_acc"]  # the paper's mIoU column (FEATUP_NOTE)
    tau = brute_force_tau(ours, paper.to_dict())
    assert "Protocol: vit at 224×224 px on coco_stuff, as the paper table's." in md
    assert f"- probe_seg.miou: τ {tau:+.2f} over 6 methods" in md


def test_a_protocol_is_read_from_what_the_cells_record(tmp_path):
    store = ResultStore(tmp_path)
    write_cell(store, "bilinear", "probe_seg", {"miou": 40.0}, where=("dinov2", "voc@VOC2012-d4e5f6", "jafar"),
               recipe=recipe(448))
    write_cell(store, "bilinear", "probe_depth", {"rmse": 0.5}, where=("dinov2", "nyuv2", "jafar"), recipe=recipe(448))
    rows = store.rows()
    setting = RunSetting.of(rows, store.current_records())
    assert setting == RunSetting(frozenset({"dinov2"}), frozenset({(448, 448)}), frozenset({"voc", "nyuv2"}))
    assert reference("upsample_anything").compare(setting).kind == "same"  # its image size is not stated
    assert reference("featup").compare(setting).differences == ("backbone", "image size", "data")


def test_unconfirmed_rows_are_shown_but_never_ranked_even_on_the_same_protocol(tmp_path):
    store = ResultStore(tmp_path)
    for i, method in enumerate(["bilinear", "loftup", "jafar", "anyup", "uplift"]):
        write_cell(store, method, "probe_seg", {"miou": 60.0 + i}, where=("dinov2", "voc@VOC2012-d4e5f6", "jafar"),
                   recipe=recipe(448))
    md = table_text(tmp_path, "md", vs="uplift")
    assert "Protocol: dinov2 at 448×448 px on voc, as the uplift table's." in md
    assert "85.210" in md  # its UPLiFT row, beside ours
    assert "- probe_seg.miou: no τ over 0 methods (5 needed)" in md
