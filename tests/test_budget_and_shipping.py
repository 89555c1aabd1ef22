"""The training-budget study and shipped weights: a study's checkpoints equal separate trainings, a killed
study resumes, shipped weights load only when their sha256 matches the manifest, a run with shipped
weights trains nothing, and --retrain trains."""
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import timm
import torch

from bench.backbones import backbone_from_model
from bench.cli import main
from bench.fitting import train, weights
from bench.reporting import budget as curves
from bench.running import budget
from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.running.runner import create_method, plan, run_cells
from bench.core.store import ResultStore


class Images(torch.utils.data.Dataset):
    """A stream of seeded random images: item q is the same whatever the length asked for."""

    def __init__(self, n, size):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, q):
        return {"image": torch.rand(3, *self.size, generator=torch.Generator().manual_seed(q))}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A random-init timm convnet, a stream of random images and a smoke-sized profile."""
    monkeypatch.setattr(train, "load_dataset", lambda name, split, size, limit=None, **kw: Images(limit or 8, size))
    model = timm.create_model("test_efficientnet", pretrained=False)
    backbone = backbone_from_model("tiny", model, stride=32, dim=256, is_vit=False)
    profile = PROFILES.get("smoke").with_overrides(image_size=(32, 64), train_steps=2, train_batch=2, train_views=2)
    return backbone, RunContext(profile=profile, cache_dir=tmp_path / "cache", progress=False)


def states_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def separate_training(backbone, context, steps):
    """What `train METHOD --steps N` stores: a fresh, seeded training of ``steps`` steps."""
    context.profile = context.profile.with_overrides(train_steps=steps)
    method = create_method("resize_conv", backbone, context.profile.seed)
    folder = train.train_method(method, backbone, context)
    return torch.load(folder / "weights.pt", weights_only=True)


def test_study_checkpoints_equal_separate_trainings_to_those_steps(tiny, tmp_path):
    backbone, context = tiny
    out = tmp_path / "study"
    for steps in (1, 3):  # one continued run: 3 continues 1
        budget.trained_to("resize_conv", steps, backbone, context, out)
    for steps in (1, 3):
        studied = torch.load(out / "train" / "resize_conv" / f"weights-{steps}.pt", weights_only=True)
        states_equal(studied, separate_training(backbone, context, steps))
    record = json.loads((out / "train" / "resize_conv" / "provenance-3.json").read_text())
    assert record["steps"] == 3 and len(record["losses"]) == 3


class Killed(Exception):
    pass


def test_a_killed_study_continues_from_its_last_checkpoint(tiny, tmp_path, monkeypatch):
    backbone, context = tiny
    monkeypatch.setattr(train, "CHECKPOINTS", 1)  # state saved at the study's step counts only
    budget.trained_to("resize_conv", 1, backbone, context, tmp_path / "whole")
    budget.trained_to("resize_conv", 3, backbone, context, tmp_path / "whole")
    killed = tmp_path / "killed"
    budget.trained_to("resize_conv", 1, backbone, context, killed)
    step_fn, seen = train.train_step, []

    def dies_at_step_3(*args, **kwargs):
        seen.append(len(seen))
        if len(seen) == 2:
            raise Killed
        return step_fn(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", dies_at_step_3)
    with pytest.raises(Killed):
        budget.trained_to("resize_conv", 3, backbone, context, killed)
    monkeypatch.setattr(train, "train_step", step_fn)
    calls = []
    monkeypatch.setattr(train, "train_step", lambda *a, **k: calls.append(1) or step_fn(*a, **k))
    budget.trained_to("resize_conv", 3, backbone, context, killed)
    assert len(calls) == 2  # steps 2 and 3 again, from the checkpoint at 1
    states_equal(torch.load(killed / "train/resize_conv/weights-3.pt", weights_only=True),
                 torch.load(tmp_path / "whole/train/resize_conv/weights-3.pt", weights_only=True))


@pytest.fixture
def shipped(tiny, tmp_path, monkeypatch):
    """resize_conv trained for the tiny profile and shipped into a temporary results/weights."""
    backbone, context = tiny
    folder = tmp_path / "shipped"
    monkeypatch.setattr(weights, "SHIPPED_DIR", folder)
    state = separate_training(backbone, context, 2)
    cache_folder, recipe = train.checkpoint(create_method("resize_conv", backbone, 0), backbone, context)
    entry = weights.ship(cache_folder / "weights.pt", recipe, json.loads((cache_folder / "provenance.json").read_text()),
                         folder)
    import shutil
    shutil.rmtree(cache_folder)  # only the shipped copy is left
    return backbone, context, folder, entry, state


def test_shipped_weights_load_and_match_their_manifest(shipped):
    backbone, context, folder, entry, state = shipped
    manifest = json.loads((folder / "manifest.json").read_text())["weights"]
    assert manifest == [entry]
    assert entry["sha256"] == weights.file_sha256(folder / entry["file"])
    assert entry["steps"] == 2 and entry["view_images"] == 2 * 2 * 2 and len(entry["losses"]) == 2
    assert {"method", "version", "backbone", "recipe", "recipe_digest", "seconds", "git_commit"} <= set(entry)
    for seed in (0, 1):  # shipped weights serve every probe seed
        context.profile = context.profile.with_overrides(seed=seed)
        method = create_method("resize_conv", backbone, 123)
        assert train.trained_status(method, backbone, context).startswith("shipped weights, 2 steps")
        train.ensure_trained(method, backbone, context)
        states_equal(method.state_dict(), state)


def test_a_tampered_shipped_file_is_refused(shipped):
    backbone, context, folder, entry, _ = shipped
    path = folder / entry["file"]
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    method = create_method("resize_conv", backbone, 0)
    with pytest.raises(weights.WeightsError, match="refusing to load"):
        train.ensure_trained(method, backbone, context)
    assert train.trained_status(method, backbone, context).startswith("blocked")


def test_another_recipe_does_not_use_the_shipped_weights(shipped):
    backbone, context, *_ = shipped
    context.profile = context.profile.with_overrides(train_steps=3)
    assert train.trained_status(create_method("resize_conv", backbone, 0), backbone, context) == "to train"


def count_training_steps(monkeypatch):
    calls, step_fn = [], train.train_step
    monkeypatch.setattr(train, "train_step", lambda *a, **k: calls.append(1) or step_fn(*a, **k))
    return calls


def test_a_run_with_shipped_weights_trains_nothing_and_retrain_trains(shipped, tmp_path, monkeypatch):
    backbone, context, folder, entry, _ = shipped
    import bench.running.runner as runner
    monkeypatch.setattr(runner, "resolve_spec", lambda name: SimpleNamespace(dim=256, stride=32))  # "tiny"
    calls = count_training_steps(monkeypatch)
    cells = plan(["resize_conv"], ["probe_seg"], "tiny", context)
    assert cells[0][1]["weights"]["sha256"] == entry["sha256"]  # the cell records which weights scored it
    run_cells(cells, backbone, context, tmp_path / "run")
    assert calls == []
    assert ResultStore(tmp_path / "run").rows()["status"].eq("ok").all()
    retrain = RunContext(profile=context.profile, cache_dir=context.cache_dir, progress=False, retrain=True)
    cells = plan(["resize_conv"], ["probe_seg"], "tiny", retrain)
    assert "weights" not in cells[0][1]
    run_cells(cells, backbone, retrain, tmp_path / "retrained")
    assert len(calls) == context.profile.train_steps


def test_the_same_weights_bytes_are_one_cell_wherever_the_file_came_from(shipped, tmp_path, monkeypatch):
    backbone, context, folder, entry, state = shipped
    import bench.running.runner as runner
    monkeypatch.setattr(runner, "resolve_spec", lambda name: SimpleNamespace(dim=256, stride=32))  # "tiny"
    copy, other = tmp_path / "weights-2.pt", tmp_path / "other.pt"
    copy.write_bytes((folder / entry["file"]).read_bytes())  # a budget study's checkpoint that was shipped
    torch.save({k: v + 1 for k, v in state.items()}, other)

    def planned(given):
        [(cell, recipe)] = plan(["resize_conv"], ["probe_seg"], "tiny", RunContext(
            profile=context.profile, cache_dir=context.cache_dir, progress=False, weights=given))
        return recipe["weights"], cell.config_hash(recipe)

    (as_shipped, shipped_hash), (as_file, file_hash) = planned({}), planned({"resize_conv": str(copy)})
    assert (as_shipped["source"], as_file["source"]) == ("shipped", "file")  # where it came from is recorded
    assert file_hash == shipped_hash
    assert planned({"resize_conv": str(other)})[1] != shipped_hash


def test_list_weights_shows_shipped_files(shipped, capsys, monkeypatch):
    *_, entry, _ = shipped
    assert main(["list", "--weights"]) == 0
    out = capsys.readouterr().out
    assert "resize_conv" in out and "shipped" in out and entry["recipe_digest"] in out


def test_budget_curves_have_every_step_and_the_references(tmp_path, monkeypatch, capsys):
    """A smoke study end to end: every step count and reference in the CSV, a PNG, and a rerun scores nothing;
    its checkpoint at the profile's steps, shipped, makes its cells the run's own (merge, nothing rescored)."""
    out = tmp_path / "b"
    steps = PROFILES.get("smoke").train_steps
    args = ["--no-progress", "ablate", "budget", "--profile", "smoke", "-m", "resize_conv", "--steps", f"1,{steps}",
            "--seeds", "0,1", "--out", str(out)]
    assert main(args) == 0
    table = pd.read_csv(out / curves.CSV)
    trained = table[table["method"] == "resize_conv"]
    assert sorted(trained["steps"].unique()) == [1, steps]
    assert set(trained["view_images"]) == {1 * 2 * 2, steps * 2 * 2}
    assert set(budget.REFERENCES) <= set(table["method"]) and (table["seeds"] == 2).all()
    assert (table["lo"] <= table["mean"] + 1e-9).all() and (table["mean"] <= table["hi"] + 1e-9).all()
    assert (out / curves.PNG).stat().st_size > 0
    def stamps():
        return {p: p.stat().st_mtime_ns for p in (out / "scores").rglob("*.json") if p.parent.name == "cells"}

    before = stamps()
    assert len(before) == (len(budget.REFERENCES) + 2) * 2 * 2  # (3 references + 2 step counts) x 2 seeds x 2 probes
    assert main(args) == 0  # resumed: nothing trained or scored again
    assert stamps() == before
    # a later invocation's methods, step counts and seeds add to study.json; another profile is refused
    smoke = RunContext(profile=PROFILES.get("smoke"))
    budget.record_study(out, {"resize_conv": [4], "dip": [20]}, [2], budget.REFERENCES, "efficientnet_lite0", smoke)
    study = json.loads((out / "study.json").read_text())
    assert study["counts"] == {"resize_conv": [1, steps, 4], "dip": [20]} and study["seeds"] == [0, 1, 2]
    # its profile's budget may change since (the study pins the one it began with, so its cells keep their hashes)
    assert budget.pinned(out, RunContext(profile=PROFILES.get("smoke").with_overrides(train_steps=99))
                         ).profile.train_steps == PROFILES.get("smoke").train_steps
    with pytest.raises(ValueError, match="another profile recipe"):
        budget.record_study(out, {}, [0], budget.REFERENCES, "efficientnet_lite0",
                            RunContext(profile=PROFILES.get("default")))
    monkeypatch.setattr(weights, "SHIPPED_DIR", tmp_path / "shipped")
    assert main(["ship", "resize_conv", "--profile", "smoke", "--study", str(out), "--steps", str(steps)]) == 0
    scored, run = out / "scores" / f"resize_conv-{steps}", tmp_path / "run"
    assert f"merge {scored}" in capsys.readouterr().out
    assert main(["merge", str(scored), "--out", str(run)]) == 0
    context = RunContext(profile=PROFILES.get("smoke"), progress=False)
    cells = plan(["resize_conv"], list(budget.PROBES), "efficientnet_lite0", context, [0, 1])
    assert all(r["weights"]["source"] == "shipped" for _, r in cells)
    assert all(ResultStore(run).status(c, r) == "ok" for c, r in cells)  # the study's cells: nothing to score


def test_the_report_shows_every_shipped_study_of_the_run_with_its_data(tmp_path, monkeypatch):
    from bench.reporting import document
    monkeypatch.setattr(document, "SHIPPED_STUDIES", tmp_path / "budget")
    for name, seg in (("runx", "scenes"), ("runx-materials", "materials"), ("runy", "scenes")):
        study = tmp_path / "budget" / name
        study.mkdir(parents=True)
        pd.DataFrame({"method": ["jafar", "bilinear"], "kind": ["trained", "reference"], "scored_on": ["full"] * 2,
                      "steps": [250, 0], "view_images": [500, 0], "metric": ["probe_seg.miou"] * 2,
                      "higher_is_better": [True] * 2, "seeds": [3, 3], "mean": [60.0, 57.0], "sd": [0.5, 0.6],
                      "lo": [59.0, 56.0], "hi": [61.0, 58.0]}).to_csv(study / curves.CSV, index=False)
        (study / "study.json").write_text(json.dumps({"profile": {"seg_data": seg, "depth_data": "depth_scenes"}}))
    figures = tmp_path / "figures"
    figures.mkdir()
    studies = document.budget_studies(tmp_path / "runs" / "runx")
    assert [s.name for s in studies] == ["runx", "runx-materials"]
    text = document.budget_section(studies, figures)
    assert "runx`, scored on scenes, depth_scenes" in text and "runx-materials`, scored on materials" in text
    assert sorted(p.name for p in figures.iterdir()) == ["runx-budget.png", "runx-materials-budget.png"]
    own = tmp_path / "runs" / "runy" / "ablate-budget"
    own.mkdir(parents=True)
    assert document.budget_studies(own.parent) == [own]  # a run's own study comes first, alone


def test_view_images_count_views_only_for_the_multiview_objective(tiny):
    """A study's x axis: FeatUp's loss shows each step batch x views images; LiFT's own objective, whole images
    (its recipe has no views), so its 2000 steps of batch 2 are 4000 images, not 12,000."""
    backbone, context = tiny
    p = context.profile
    for name, per_step in (("resize_conv", p.train_batch * p.train_views), ("lift", p.train_batch)):
        _, recipe = train.checkpoint(create_method(name, backbone, p.seed), backbone, context)
        assert weights.view_images(10, recipe) == 10 * per_step, (name, recipe)


def test_the_dry_run_times_training_per_view_or_per_image_as_the_objective_sees_them(tiny):
    """FeatUp's loss costs batch x views passes a step; an own objective such as LiFT's, batch passes (it has no
    views): the dry run's estimate of a step must not count views the objective never makes."""
    from bench.running.dry_run import per_image, time_part
    backbone, context = tiny
    p = context.profile
    for name, unit, per_step in (("resize_conv", "train_view", p.train_batch * p.train_views),
                                 ("lift", "train_image", p.train_batch)):
        [(key, seconds)] = time_part(name, "train", backbone, context).items()
        assert key == unit and seconds > 0
        assert per_image({key: seconds}, p) == {"train_step": pytest.approx(seconds * per_step)}
