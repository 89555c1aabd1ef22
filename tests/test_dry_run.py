"""`run --dry-run` answers at once: what is missing comes first, only cells that can run are timed, timings are
cached between dry runs, and cells that wait for data are named in the estimate (the timing itself is a spy here)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.running import dry_run as dry_run_module
from bench.running.dry_run import TIMINGS_FILE, dry_run
from bench.running.session import build_context, default_tasks

FAKE_RAW = {"fit": {"fit_view": 0.1, "fit_step": 0.01}, "train": {"train_view": 0.2}}


@pytest.fixture
def timed(monkeypatch):
    """The (method, part) pairs timed, each with how many lines had been emitted when it was timed."""
    calls: list[tuple[str, str, int]] = []
    lines: list[str] = []

    def fake_time_part(name, part, backbone, context):
        calls.append((name, part, len(lines)))
        return FAKE_RAW.get(part, {part: 0.05})

    monkeypatch.setattr(dry_run_module, "time_part", fake_time_part)
    return calls, lines


def plan(context, methods, tasks, lines, out, backbone="efficientnet_lite0") -> int:
    return dry_run(methods, tasks, backbone, None, context, None, lambda cells: out, lines.append)


def test_missing_data_comes_first_and_only_cells_that_can_run_are_timed(timed, tmp_path):
    """VOC (the seg data) and COCO-Stuff (the training data) are missing: probe_seg's cells and featup_jbu's depth
    cell wait; only bilinear's depth cell runs, and its upsampling is all that is timed, after the problems."""
    calls, lines = timed
    profile = replace(PROFILES.get("smoke").with_data(seg="voc"), train_data="coco_stuff")
    context = RunContext(profile=profile, cache_dir=tmp_path / "cache", progress=False)
    status = plan(context, ["bilinear", "featup_jbu"], ["probe_seg", "probe_depth"], lines, tmp_path / "run")
    assert status == 1
    assert [(name, part) for name, part, _ in calls] == [("bilinear", "upsample")]
    problems = [i for i, line in enumerate(lines) if line.startswith("PROBLEM")]
    assert [lines[i].split(":")[1].strip() for i in problems] == ["dataset voc", "dataset coco_stuff"]
    assert max(problems) < calls[0][2]  # printed before anything was timed
    text = "\n".join(lines)
    assert "| featup_jbu | probe_depth" in text and "waits for coco_stuff" in text


def test_the_estimate_names_the_cells_that_wait_for_data_and_nothing_is_timed_without_any(timed, tmp_path):
    """The jafar profile with no folder at all: every dataset is a problem, nothing is timed, and the estimate
    says how many cells wait for which dataset and that they are not estimated."""
    calls, lines = timed
    context = replace(build_context("jafar", {}, "cpu", progress=False), cache_dir=tmp_path / "cache")
    tasks = default_tasks(context.profile)
    assert plan(context, ["bilinear", "featup_jbu"], tasks, lines, tmp_path / "run") == 1
    assert calls == [] and "timed nothing: no cell can run here" in lines
    estimate = lines[-1]
    assert "0 cells to run of 0 planned" in estimate and "12 cells wait for data and are not estimated" in estimate
    for name in ("coco_stuff", "voc", "ade20k", "cityscapes", "nyuv2", "imagenet"):
        assert f"{name}: 2" in estimate
        assert any(line.startswith(f"PROBLEM: dataset {name}: ") for line in lines)


def test_a_second_dry_run_takes_every_timing_from_the_cache(timed, tmp_path):
    """Upsampling, a per-image fit (with the backbone pass its cells are estimated from) and a training step are
    timed once; the second dry run reads them from <cache>/dry_run_timings.json and says so."""
    calls, lines = timed
    context = RunContext(profile=PROFILES.get("smoke"), cache_dir=tmp_path / "cache", progress=False)
    methods, tasks = ["bilinear", "featup_implicit", "featup_jbu"], ["probe_seg"]
    assert plan(context, methods, tasks, lines, tmp_path / "run") == 0
    parts = {(name, part) for name, part, _ in calls}
    assert parts == {("bilinear", "upsample"), ("backbone", "pass"), ("featup_implicit", "fit"),
                     ("featup_jbu", "upsample"), ("featup_jbu", "train")}
    assert (tmp_path / "cache" / TIMINGS_FILE).is_file()
    first = lines[-1]
    calls.clear()
    lines.clear()
    assert plan(context, methods, tasks, lines, tmp_path / "run") == 0
    assert calls == []
    assert sum(line.endswith("(cached)") for line in lines) == len(parts) and lines[-1] == first
