"""The training-budget study: how the probes' scores grow with an upsampler's training.

Each trainable method trains once, continued (never one run per budget): at each step count
of the study its weights are saved (``train/<method>/weights-<steps>.pt``, with the training's
provenance at that point) and scored on the probe tasks over several probe seeds, as ordinary
cells of a run folder of their own (``scores/<method>-<steps>/``) whose recipe names the weights
file and its sha256. Reference methods that learn nothing are scored once (``scores/reference/``)
and drawn as horizontal lines. A killed study continues from its last saved training state
(``train/<method>/resume.pt``, written at every step count and every few minutes) and skips
every cell already scored. Because step s's batches and random draws do not depend on how long a
run goes (bench.fitting.train.run_training), the weights at s steps equal those of a separate
training run of s steps with the same seed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.backbones import Backbone
from bench.fitting.train import checkpoint, run_training, training_images, training_provenance
from bench.registry import METHODS
from bench.reporting.budget import checkpoint_files, write_curves
from bench.core.context import RunContext
from bench.core.store import atomic_write, atomic_write_json
from bench.running.runner import create_method, plan, run_cells

DEFAULT_STEPS = (250, 500, 1000, 2000, 4000, 8000)
DEFAULT_FIT_STEPS = (20, 80, 320)
"""Per-image methods: steps of each image's fit (the default profile fits 20)."""
FIT_SUBSET = {"probe_seg": {"n_train": 12, "n_val": 6}, "probe_depth": {"n_train": 12, "n_val": 6}}
"""Per-image methods fit every probe image anew at each step count, so their curve is scored on fewer
images (and not on the profile's extra datasets): 36 fits per seed and step count."""
REFERENCES = ("bilinear", "guided_filter", "jbu_classic")
"""Methods that learn nothing: the lines a trained method's curve should rise above."""
PROBES = ("probe_seg", "probe_depth")
SEEDS = (0, 1, 2)


def study_recipe(method: str, backbone: Backbone, context: RunContext) -> dict[str, Any]:
    """The training recipe of the study's run: the profile's, less its step count, which the study varies."""
    _, recipe = checkpoint(METHODS.get(method), backbone, context)
    return {k: v for k, v in recipe.items() if k != "steps"}


def trained_to(method: str, steps: int, backbone: Backbone, context: RunContext, out: Path) -> Path:
    """The method's weights after ``steps`` steps of the study's one training run, continuing it as needed."""
    target = checkpoint_files(out, method, steps)[0]
    if target.is_file():
        return target
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    upsampler = create_method(method, backbone, context.profile.seed).to(context.device)
    recipe = study_recipe(method, backbone, context)

    def save(done: int, trained: torch.nn.Module, state: dict[str, Any]) -> None:
        weights, record = checkpoint_files(out, method, done)
        atomic_write_json(record, training_provenance({**recipe, "steps": done}, state, context))
        atomic_write(weights, lambda tmp: torch.save(trained.state_dict(), tmp))

    run_training(upsampler, backbone, context, folder / "resume.pt", recipe, training_images(context, steps), steps,
                 checkpoints=[steps], on_checkpoint=save)
    return target


def study_checkpoint(out: Path, method: str, steps: int | None, backbone: Backbone,
                     context: RunContext) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(weights file, training recipe, training record) of a study's checkpoint, for shipping: the recipe is
    the one a separate ``train --steps`` run of the same profile would have (the study's equals it)."""
    if steps is None:
        raise ValueError("shipping from a budget study needs --steps: which of its checkpoints to ship")
    weights, record = checkpoint_files(out, method, steps)
    if not (weights.is_file() and record.is_file()):
        done = sorted(int(p.stem.split("-")[1]) for p in (out / "train" / method).glob("weights-*.pt"))
        raise FileNotFoundError(f"{out} has no {method} checkpoint at {steps} steps; it has {done or 'none'}")
    trained = json.loads(record.read_text())
    recipe = {**study_recipe(method, backbone, context), "steps": steps}
    stored = {k: trained.get(k) for k in recipe}
    if stored != recipe:
        diffs = [k for k in recipe if stored[k] != recipe[k]]
        raise ValueError(f"{record} was trained by another recipe than this profile's ({', '.join(diffs)} differ)")
    return weights, recipe, trained


def score(methods: list[str], label: str, backbone: Backbone, context: RunContext, out: Path,
          seeds: list[int]) -> None:
    """Score ``methods`` on the probe tasks for every seed into ``scores/<label>/`` (cells already there are kept)."""
    cells = plan(methods, list(PROBES), backbone.name, context, seeds)
    run_cells(cells, backbone, context, out / "scores" / label)


def fit_subset(context: RunContext, fit_steps: int | None = None) -> RunContext:
    """The context per-image methods' curve is scored in: FIT_SUBSET's images, no extra datasets."""
    p = context.profile
    settings = {task: {**p.task_settings.get(task, {}), **sizes} for task, sizes in FIT_SUBSET.items()}
    return dataclasses.replace(context, profile=p.with_overrides(task_settings=settings, extra_data=(),
                                                                 fit_steps=fit_steps))


def study(methods: list[str], steps: list[int] | None, backbone: Backbone, context: RunContext, out: Path,
          seeds: list[int] = list(SEEDS), references: tuple[str, ...] = REFERENCES) -> pd.DataFrame:
    """Run (or continue) the study; returns the curve table, also written to ``out``/budget.csv with its PNG.

    Trainable methods (fit="dataset") are trained to each of ``steps`` (default DEFAULT_STEPS); per-image
    methods (fit="image") are fitted with each of ``steps`` (default DEFAULT_FIT_STEPS) fit steps on the
    FIT_SUBSET images, beside the references scored on the same subset ("reference-subset"). Every
    method advances one step count at a time, so a study stopped early has all curves to the same length.
    """
    kinds = {name: METHODS.get(name).fit for name in methods}
    for name, kind in kinds.items():
        if kind not in ("dataset", "image"):
            raise ValueError(f"method {name!r} learns nothing (fit={kind!r}); the budget study trains methods "
                             f"with fit='dataset' and fits those with fit='image'")
    out.mkdir(parents=True, exist_ok=True)
    trained = [n for n in methods if kinds[n] == "dataset"]
    fitted = [n for n in methods if kinds[n] == "image"]
    counts = {"dataset": sorted(steps or DEFAULT_STEPS), "image": sorted(steps or DEFAULT_FIT_STEPS)}
    context = pinned(out, context)
    record_study(out, {name: counts[kinds[name]] for name in methods}, seeds, references, backbone.name, context)
    for rank in range(max(len(c) for c in counts.values())):
        due = [(name, counts[kinds[name]][rank]) for name in methods if rank < len(counts[kinds[name]])]
        # training first: it is the long, resumable part, so a study stopped early has trained the furthest
        files = {name: trained_to(name, count, backbone, context, out) for name, count in due if kinds[name] == "dataset"}
        if rank == 0 and trained:
            score(list(references), "reference", backbone, context, out, seeds)
        if rank == 0 and fitted:
            score(list(references), "reference-subset", backbone, fit_subset(context), out, seeds)
        for name, count in due:
            if kinds[name] == "image":
                score([name], f"{name}-{count}", backbone, fit_subset(context, count), out, seeds)
            else:
                score([name], f"{name}-{count}", backbone, dataclasses.replace(context, weights={name: str(files[name])}),
                      out, seeds)
        write_curves(out)
    return write_curves(out)


def pinned(out: Path, context: RunContext) -> RunContext:
    """The context with the profile's ``train_steps`` the study began with: every cell's recipe holds the profile,
    and a study continued after the profile's budget changed (as it does once a study chooses it) must keep the
    hashes of the cells it has scored. The weights each cell scores are named in its recipe anyway."""
    path = out / "study.json"
    if not path.is_file():
        return context
    steps = json.loads(path.read_text())["profile"]["train_steps"]
    return dataclasses.replace(context, profile=dataclasses.replace(context.profile, train_steps=steps))


def record_study(out: Path, steps: dict[str, list[int]], seeds: list[int], references: tuple[str, ...],
                 backbone: str, context: RunContext) -> None:
    """study.json: what the study holds. Later invocations on the same folder (more step counts, the per-image
    methods) add their methods and step counts; a folder of another backbone or profile is refused."""
    path = out / "study.json"
    before = json.loads(path.read_text()) if path.is_file() else {}
    profile = context.profile.recipe()

    def setting(recipe: dict[str, Any]) -> dict[str, Any]:  # the study sets the steps itself
        return {k: v for k, v in json.loads(json.dumps(recipe)).items() if k != "train_steps"}

    if before and (before["backbone"], setting(before["profile"])) != (backbone, setting(profile)):
        raise ValueError(f"{out} holds a study of {before['backbone']} with another profile recipe; "
                         f"use another --out for this one")
    counts = {name: sorted({*before.get("counts", {}).get(name, []), *steps.get(name, [])})
              for name in dict.fromkeys([*before.get("counts", {}), *steps])}
    atomic_write_json(path, {"methods": list(counts), "counts": counts, "seeds": sorted({*before.get("seeds", []), *seeds}),
                             "references": list(references), "backbone": backbone, "profile": profile})
