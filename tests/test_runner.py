"""Cells are written as they finish, a rerun does only what is missing, failures never lose others."""
import json

import pytest

from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.registry import TASKS
from bench.running.runner import plan, run_cells
from bench.core.store import ROW_COLUMNS, ResultStore
from tasks.base import Task

CALLS: list[tuple[str, str]] = []
CRASH_AFTER: list[int] = []


@TASKS.register
class CountingTask(Task):
    """Scores a method by its name's length and remembers every call; can simulate a kill."""

    name = "_counting"
    metrics = {"score": True}
    data_kind = "seg"

    def run(self, upsampler, backbone, context):
        if CRASH_AFTER and len(CALLS) >= CRASH_AFTER[0]:
            raise KeyboardInterrupt  # like a kill: not caught by the runner
        CALLS.append((upsampler.name, self.name))
        return self.rows({"score": len(upsampler.name)})


@pytest.fixture
def context():
    CALLS.clear()
    CRASH_AFTER.clear()
    return RunContext(profile=PROFILES.get("smoke"), progress=False)


def cells(context, methods=("low_res", "bilinear", "strided")):
    return plan(list(methods), ["_counting"], "efficientnet_lite0", context)


def test_resume_after_a_kill_runs_only_the_missing_cells(tmp_path, lite0, context):
    CRASH_AFTER.append(2)
    with pytest.raises(KeyboardInterrupt):
        run_cells(cells(context), lite0, context, tmp_path)
    assert len(list((tmp_path / "cells").glob("*.json"))) == 2
    assert not list((tmp_path / "cells").glob(".*tmp")), "a half-written file was left behind"
    CRASH_AFTER.clear()
    CALLS.clear()
    summary = run_cells(cells(context), lite0, context, tmp_path)
    assert CALLS == [("strided", "_counting")]
    assert len(summary.skipped) == 2 and len(summary.done) == 1


def test_rerun_all_and_failed(tmp_path, lite0, context):
    run_cells(cells(context, ("low_res", "_exploding")), lite0, context, tmp_path)
    CALLS.clear()
    run_cells(cells(context, ("low_res", "_exploding")), lite0, context, tmp_path, rerun="failed")
    assert CALLS == []  # low_res is ok, _exploding fails again before the task runs
    run_cells(cells(context, ("low_res", "_exploding")), lite0, context, tmp_path, rerun="all")
    assert CALLS == [("low_res", "_counting")]


def test_a_failing_cell_is_recorded_and_the_run_goes_on(tmp_path, lite0, context):
    summary = run_cells(cells(context, ("_exploding", "_oom", "bilinear")), lite0, context, tmp_path)
    assert [c.method for c in summary.done] == ["bilinear"]
    rows = ResultStore(tmp_path).rows().set_index("method")
    assert rows.loc["_exploding", "status"] == "error"
    assert "boom in create" in rows.loc["_exploding", "message"]
    assert rows.loc["_oom", "status"] == "oom"
    assert rows.loc["bilinear", "value"] == len("bilinear")


def test_result_row_schema_and_provenance(tmp_path, lite0, context):
    run_cells(cells(context, ("bilinear",)), lite0, context, tmp_path)
    rows = ResultStore(tmp_path).rows()
    assert list(rows.columns) == ROW_COLUMNS
    row = rows.iloc[0]
    assert (row.method, row.task, row.metric, row.status) == ("bilinear", "_counting", "score", "ok")
    assert row.method_version == "1" and row.wall_s >= 0 and row.peak_mb >= 0 and row.git_commit
    record = json.loads(next((tmp_path / "cells").glob("*.json")).read_text())
    assert record["recipe"]["profile"]["name"] == "smoke"
    assert "torch" in record["provenance"]["packages"]


def test_changing_the_recipe_changes_the_cell_file(context):
    (cell, recipe), = cells(context, ("bilinear",))
    other = dict(recipe, method_version="2")
    assert cell.filename(recipe) != cell.filename(other)


def test_unknown_method_fails_before_any_work(context):
    with pytest.raises(KeyError, match="Did you mean 'bilinear'"):
        cells(context, ("bilinaer",))


def test_probe_settings_are_the_tasks_own_and_recorded_in_their_recipes():
    p = PROFILES.get("default")
    depth, seg = TASKS.get("probe_depth")(), TASKS.get("probe_seg")()
    assert (depth.settings(p).n_train, depth.settings(p).n_val, seg.settings(p).n_val) == (96, 96, 96)
    assert depth.recipe(p)["settings"]["n_val"] == 96 and seg.recipe(p)["settings"]["n_val"] == 96
    assert PROFILES.get("paper").task_settings.get("probe_seg") is None  # the paper: the task's defaults
    assert seg.settings(PROFILES.get("paper")) == seg.Settings()
    with pytest.raises(ValueError, match="feature_cache 'disc'"):
        seg.Settings(feature_cache="disc")
