"""Shards cover every cell exactly once, on any machine, and merge back to the unsharded run's table."""
import io
import json
import random
import shutil

import pandas as pd
import pytest
import torch

from bench.registry import TASKS
from bench.reporting.report import table_text
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.running.runner import plan, run_cells
from bench.running.shards import MergeError, merge_runs, parse_shard, shard_cells
from tasks.base import Task

METHODS = ["low_res", "bilinear", "strided", "large_image", "jbu_classic"]


@TASKS.register
class FeatureMeanTask(Task):
    """Scores a method by the mean and spread of its features of one seeded random image: cheap and method-dependent."""

    name = "_feature_mean"
    metrics = {"mean": True, "std": True}
    data_kind = "seg"

    def run(self, upsampler, backbone, context):
        image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(context.profile.seed))
        with torch.no_grad():
            feats = upsampler.upsample(backbone, image, (64, 64))
        return self.rows({"mean": feats.mean().item(), "std": feats.std().item()})


@pytest.fixture
def context():
    return RunContext(profile=PROFILES.get("smoke"), progress=False)


def all_cells(context, seeds=(0, 1)):
    return plan(METHODS, ["_feature_mean", "probe_seg"], "efficientnet_lite0", context, list(seeds))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 25])
def test_shards_cover_every_cell_exactly_once_in_any_order(context, n):
    cells = all_cells(context)
    shards = [shard_cells(cells, k, n) for k in range(1, n + 1)]
    keys = [c for shard in shards for c, _ in shard]
    assert sorted(keys, key=repr) == sorted((c for c, _ in cells), key=repr)  # each cell once
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    shuffled = cells[:]
    random.Random(n).shuffle(shuffled)  # another machine may plan in another order
    assert [[c for c, _ in shard_cells(shuffled, k, n)] for k in range(1, n + 1)] == [[c for c, _ in s] for s in shards]


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b", "1/0"])
def test_bad_shard_is_a_clear_error(text):
    with pytest.raises(ValueError, match="expected k/N"):
        parse_shard(text)


def csv_table(run):
    return pd.read_csv(io.StringIO(table_text(run, "csv"))).set_index("method")


def test_shards_merge_back_to_the_unsharded_table(tmp_path, lite0, context):
    cells = plan(METHODS, ["_feature_mean"], "efficientnet_lite0", context, [0, 1])
    run_cells(cells, lite0, context, tmp_path / "whole")
    for k in (1, 2, 3):
        run_cells(shard_cells(cells, k, 3), lite0, context, tmp_path / f"shard{k}", shard=f"{k}/3")
    assert merge_runs([tmp_path / f"shard{k}" for k in (1, 2, 3)], tmp_path / "merged") == len(cells)
    pd.testing.assert_frame_equal(csv_table(tmp_path / "merged"), csv_table(tmp_path / "whole"))
    assert csv_table(tmp_path / "whole").notna().all().all()


def test_merge_warns_about_missing_shards(tmp_path, lite0, context, capsys):
    cells = plan(["bilinear", "low_res"], ["_feature_mean"], "efficientnet_lite0", context)
    run_cells(shard_cells(cells, 1, 2), lite0, context, tmp_path / "a", shard="1/2")
    merge_runs([tmp_path / "a"], tmp_path / "m")
    assert "shards 2/2 are not among the folders merged" in capsys.readouterr().err


def test_merge_refuses_disagreeing_overlaps_and_other_runs(tmp_path, lite0, context):
    cells = plan(["bilinear"], ["_feature_mean"], "efficientnet_lite0", context)
    run_cells(cells, lite0, context, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "same")
    assert merge_runs([tmp_path / "a", tmp_path / "same"], tmp_path / "m") == 1  # same results: one copy

    shutil.copytree(tmp_path / "a", tmp_path / "changed")
    path = next((tmp_path / "changed" / "cells").glob("*.json"))
    record = json.loads(path.read_text())
    record["metrics"][0]["value"] += 1
    path.write_text(json.dumps(record))
    with pytest.raises(MergeError, match="different results"):
        merge_runs([tmp_path / "a", tmp_path / "changed"], tmp_path / "m2")

    other = RunContext(profile=PROFILES.get("smoke").with_overrides(name="default"), progress=False)
    run_cells(plan(["low_res"], ["_feature_mean"], "efficientnet_lite0", other), lite0, other, tmp_path / "b")
    with pytest.raises(MergeError, match="disagree on profile/backbone"):
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m3")
