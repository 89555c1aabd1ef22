"""Cells as Ray tasks give the rows a local run gives, and a Ray run resumes after a cell fails.

Ray is in the ``test`` extra: it is imported, never ``importorskip``-ed, so a missing or broken Ray
install fails these tests instead of skipping them.
"""
import pytest
import ray

from bench.plugins import load_plugin_file
from bench.registry import METHODS
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.running.ray_executor import fit_groups
from bench.running.runner import plan, run_cells
from bench.core.store import ResultStore

FLAKY_PLUGIN = '''
from pathlib import Path

from bench.registry import METHODS
from methods.bilinear import Bilinear


@METHODS.register
class Flaky(Bilinear):
    """Bilinear that fails while a marker file exists."""

    name = "_flaky_ray"

    @classmethod
    def create(cls, backbone):
        if Path({marker!r}).exists():
            raise RuntimeError("flaky: marker present")
        return cls()
'''


def test_fit_groups_give_each_fitted_method_and_seed_one_group():
    context = RunContext(profile=PROFILES.get("smoke"), progress=False)
    cells = plan(["bilinear", "resize_conv", "featup_implicit"], ["probe_seg", "probe_depth"], "efficientnet_lite0",
                 context, [0, 1])
    groups = fit_groups(cells)
    assert sorted(groups) == [("featup_implicit", 0), ("featup_implicit", 1), ("resize_conv", 0), ("resize_conv", 1)]
    assert all({(c.method, c.seed) for c, _ in group} == {key} and len(group) == 2 for key, group in groups.items())


TASK_PLUGIN = '''

from bench.registry import TASKS
from tasks.base import Task


@TASKS.register
class FeatureMean(Task):
    """The mean and spread of a method's features of one seeded random image: seconds, method-dependent."""

    name = "_ray_feature_mean"
    metrics = {"mean": True, "std": True}
    data_kind = "seg"

    def run(self, upsampler, backbone, context):
        import torch

        image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(context.profile.seed))
        with torch.no_grad():
            feats = upsampler.upsample(backbone, image, (64, 96))
        return self.rows({"mean": feats.mean().item(), "std": feats.std().item()})
'''


def test_ray_smoke_run_gives_the_local_rows_and_records_a_failed_cell(tmp_path, lite0):
    """The default suite's Ray run: a local Ray instance scores cells of weight-free methods on a
    seconds-long task (a plugin, so the workers load it too), and one cell that raises."""
    from bench.running.ray_executor import ray_executor

    plugin = tmp_path / "cheap_plugin.py"
    plugin.write_text(FLAKY_PLUGIN.format(marker=str(tmp_path / "fail")).replace("_flaky_ray", "_flaky_ray_smoke")
                      + TASK_PLUGIN)
    if "_flaky_ray_smoke" not in METHODS.names():
        load_plugin_file(str(plugin))
    (tmp_path / "fail").touch()
    context = RunContext(profile=PROFILES.get("smoke"), cache_dir=tmp_path / "cache", progress=False)
    cells = plan(["low_res", "bilinear", "_flaky_ray_smoke"], ["_ray_feature_mean"], "efficientnet_lite0", context,
                 [0, 1])
    outcome = run_cells(cells, None, context, tmp_path / "ray",
                        executor=ray_executor("efficientnet_lite0", None, [str(plugin)]))
    assert not ray.is_initialized()  # the executor shut its local instance down
    assert sorted((c.method, c.seed) for c, _ in outcome.failed) == [("_flaky_ray_smoke", 0), ("_flaky_ray_smoke", 1)]
    assert all("flaky: marker present" in message for _, message in outcome.failed)
    assert len(outcome.done) == 4
    ok = [(c, r) for c, r in cells if c.method != "_flaky_ray_smoke"]
    run_cells(ok, lite0, context, tmp_path / "local")
    local, on_ray = rows(tmp_path / "local", "seed"), rows(tmp_path / "ray", "seed")
    on_ray = on_ray[on_ray["status"] == "ok"]
    assert local.index.equals(on_ray.index) and len(local) == 8
    assert on_ray["value"].to_numpy() == pytest.approx(local["value"].to_numpy(), rel=1e-5, abs=1e-6)
    assert (local.xs("low_res", level="method")["value"] != local.xs("bilinear", level="method")["value"]).all()


def rows(run, *extra):
    return ResultStore(run).rows().set_index(["method", "task", "metric", *extra]).sort_index()


@pytest.mark.slow
def test_ray_run_matches_local_and_resumes_after_a_failure(tmp_path, lite0):
    marker = tmp_path / "fail"
    plugin = tmp_path / "flaky_plugin.py"
    plugin.write_text(FLAKY_PLUGIN.format(marker=str(marker)))
    if "_flaky_ray" not in METHODS.names():
        load_plugin_file(str(plugin))
    context = RunContext(profile=PROFILES.get("smoke"), cache_dir=tmp_path / "cache", progress=False)
    cells = plan(["bilinear", "resize_conv", "_flaky_ray"], ["probe_seg"], "efficientnet_lite0", context)
    from bench.running.ray_executor import ray_executor

    execute = ray_executor("efficientnet_lite0", None, [str(plugin)])
    marker.touch()
    first = run_cells(cells, None, context, tmp_path / "ray", executor=execute)
    assert [c.method for c, _ in first.failed] == ["_flaky_ray"]
    assert "flaky: marker present" in first.failed[0][1]
    assert list((tmp_path / "cache" / "weights").glob("resize_conv-*/provenance.json"))  # the fit stage trained it
    marker.unlink()
    again = run_cells(cells, None, context, tmp_path / "ray", rerun="failed", executor=execute)
    assert [c.method for c in again.done] == ["_flaky_ray"] and len(again.skipped) == 2

    run_cells(cells, lite0, context, tmp_path / "local")
    local, ray = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert (ray["status"] == "ok").all() and local.index.equals(ray.index)
    assert ray["value"].to_numpy() == pytest.approx(local["value"].to_numpy(), rel=1e-4, abs=1e-4)


def test_a_worker_killed_for_memory_is_an_oom_cell_without_terminal_colours():
    from bench.running.ray_executor import lost_worker

    killed = ray.exceptions.OutOfMemoryError("\x1b[36mray::_score()\x1b[39m killed: the node ran low on memory")
    assert lost_worker(killed, ray) == ("oom", "OutOfMemoryError: ray::_score() killed: the node ran low on memory")
    assert lost_worker(ValueError("bad"), ray) == ("error", "ValueError: bad")
