import io

import pandas as pd
import pytest

from bench.core.cells import Cell
from bench.reporting.report import table_text
from bench.core.store import ResultStore


def write_cell(store, method, task, metrics, status="ok", message="", recipe=None, started="2026-01-01T00:00:00",
               where=("efficientnet_lite0", "scenes", "smoke"), lower=("rmse",)):
    """One stored cell of ``method`` on ``task`` made with ``where`` (backbone, dataset, profile); ``lower``: the
    metrics where lower is better."""
    cell = Cell(method, task, *where, 0)
    recipe = recipe or {"method_version": "1", "task_version": "1"}
    store.write(cell, recipe, {
        "cell": vars(cell), "status": status, "message": message, "recipe": recipe,
        "config_hash": cell.config_hash(recipe),
        "metrics": [{"metric": k, "value": v, "higher_is_better": k not in lower} for k, v in metrics.items()],
        "provenance": {"method_version": "1", "task_version": "1", "wall_s": 1.0, "peak_mb": 2.0, "git_commit": "x",
                       "started": started},
    })


@pytest.fixture
def run(tmp_path):
    store = ResultStore(tmp_path)
    write_cell(store, "bilinear", "probe_seg", {"miou": 40.0, "acc": 70.0})
    write_cell(store, "bilinear", "probe_depth", {"rmse": 0.5, "delta1.25": 0.8})
    write_cell(store, "low_res", "probe_seg", {"miou": 30.0, "acc": 60.0})
    write_cell(store, "strided", "probe_seg", {}, status="error", message="ValueError: bad\ntrace")
    return tmp_path


def test_csv_table_one_row_per_method_one_column_per_metric(run):
    t = pd.read_csv(io.StringIO(table_text(run, "csv")))
    assert t.columns[0] == "method"
    t = t.set_index("method")
    assert t.loc["bilinear", "probe_seg.miou"] == 40.0
    assert t.loc["low_res", "probe_seg.acc"] == 60.0
    assert pd.isna(t.loc["low_res", "probe_depth.rmse"])


def test_markdown_lists_failed_cells(run):
    text = table_text(run, "md")
    assert "strided / probe_seg (efficientnet_lite0): error: ValueError: bad" in text


def test_vs_paper_puts_paper_numbers_beside_ours(run):
    t = pd.read_csv(io.StringIO(table_text(run, "csv", vs="featup"))).set_index("method")
    assert t.loc["bilinear", "probe_seg.miou (paper)"] == 42.40  # the paper's 2nd seg column
    assert t.loc["bilinear", "probe_seg.acc (paper)"] == 66.95
    assert t.loc["bilinear", "probe_depth.rmse (paper)"] == 1.19
    assert "second column" in table_text(run, "md", vs="featup")


def test_latex(run):
    assert "\\begin{tabular}" in table_text(run, "latex")


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results under"):
        table_text(tmp_path / "nothing", "md")


def test_a_cell_rerun_under_a_new_recipe_replaces_the_old_number(run):
    store = ResultStore(run)
    write_cell(store, "bilinear", "probe_depth", {"rmse": 0.9, "delta1.25": 0.1},
               recipe={"method_version": "1", "task_version": "1", "n_val": 96}, started="2026-02-01T00:00:00")
    assert len(list(store.cells_dir.glob("bilinear--probe_depth--*.json"))) == 2
    t = pd.read_csv(io.StringIO(table_text(run, "csv"))).set_index("method")
    assert t.loc["bilinear", "probe_depth.rmse"] == 0.9  # the newer recipe's number, not the mean 0.7
    assert t.loc["bilinear", "probe_seg.miou"] == 40.0


def test_vs_jafar_matches_columns_by_dataset_and_ranks_against_its_table(tmp_path):
    """COCO-Stuff as the primary segmentation data and VOC as a column group, DINOv2 at 448 px: JAFAR's protocol, so
    each column meets JAFAR's of its dataset; its table has 4 methods, under the 5 a τ needs."""
    store = ResultStore(tmp_path)
    ours = {"bilinear": (50.0, 70.0), "featup_jbu": (52.0, 69.0), "jafar": (53.0, 75.0)}
    for method, (coco, voc) in ours.items():
        for dataset, miou, primary in (("coco_stuff@cocostuff-a1b2c3", coco, True), ("voc@VOC2012-d4e5f6", voc, False)):
            write_cell(store, method, "probe_seg", {"miou": miou}, where=("dinov2", dataset, "jafar"),
                       recipe={"method_version": "1", "task_version": "1", "primary_data": primary,
                               "profile": {"image_size": [448, 448]}})
    t = pd.read_csv(io.StringIO(table_text(tmp_path, "csv", vs="jafar"))).set_index("method")
    assert t.loc["featup_jbu", "probe_seg.miou (jafar)"] == 60.10  # JAFAR's COCO column
    assert t.loc["jafar", "probe_seg@voc@VOC2012-d4e5f6.miou (jafar)"] == 84.44  # its VOC column
    md = table_text(tmp_path, "md", vs="jafar")
    assert "Protocol: dinov2 at 448×448 px on coco_stuff, voc, as the jafar table's." in md
    # COCO: ours orders bilinear < featup_jbu < jafar as JAFAR's table does; VOC: ours has bilinear (70) above
    # featup_jbu (69), JAFAR the other way round (80.70 < 81.08).
    assert "- probe_seg.miou: no τ over 3 methods (5 needed)" in md
    assert "- probe_seg@voc@VOC2012-d4e5f6.miou: no τ over 3 methods (5 needed)" in md
    assert "here, unlike the jafar reference: bilinear better than featup_jbu" in md and "Depth-Anything" in md
    with pytest.raises(ValueError, match="no reference table 'nope'"):
        table_text(tmp_path, "md", vs="nope")


def test_a_reference_in_percent_is_set_beside_ours_as_a_fraction():
    """JAFAR prints δ<1.25 in percent (bilinear 59.92); ours is a fraction, so its column reads 0.5992."""
    from bench.reporting.references import reference

    raw = pd.read_csv(reference("jafar").csv).set_index("method")
    table = reference("jafar").table()
    assert raw.loc["bilinear", "depth_delta1"] == 59.92
    assert table.loc["bilinear", "depth_delta1"] == pytest.approx(0.5992)
    assert table.loc["bilinear", "voc_miou"] == raw.loc["bilinear", "voc_miou"]  # percentages as ours are
