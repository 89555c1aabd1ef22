import io

import pandas as pd
import pytest

from bench.core.cells import Cell
from bench.reporting.report import table_text
from bench.core.store import ResultStore


def write_cell(store, method, task, metrics, status="ok", message="", recipe=None, started="2026-01-01T00:00:00"):
    cell = Cell(method, task, "efficientnet_lite0", "scenes", "smoke", 0)
    recipe = recipe or {"method_version": "1", "task_version": "1"}
    store.write(cell, recipe, {
        "cell": vars(cell), "status": status, "message": message, "recipe": recipe,
        "config_hash": cell.config_hash(recipe),
        "metrics": [{"metric": k, "value": v, "higher_is_better": True} for k, v in metrics.items()],
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
    t = pd.read_csv(io.StringIO(table_text(run, "csv", vs_paper=True))).set_index("method")
    assert t.loc["bilinear", "probe_seg.miou (paper)"] == 42.40  # the paper's 2nd seg column
    assert t.loc["bilinear", "probe_seg.acc (paper)"] == 66.95
    assert t.loc["bilinear", "probe_depth.rmse (paper)"] == 1.19
    assert "second column" in table_text(run, "md", vs_paper=True)


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
