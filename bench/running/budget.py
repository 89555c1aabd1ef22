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
import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.backbones import Backbone
from bench.fitting.train import checkpoint, run_training, training_images, training_provenance
from bench.registry import METHODS
from bench.reporting.intervals import interval_table
from bench.reporting.report import with_columns
from bench.running.context import RunContext
from bench.running.runner import create_method, plan, run_cells
from bench.running.store import ResultStore, atomic_write, atomic_write_json

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
CSV, PNG, FITS_PNG = "budget.csv", "budget.png", "budget-fits.png"
COLUMNS = ["method", "kind", "scored_on", "steps", "view_images", "metric", "higher_is_better", "seeds",
           "mean", "sd", "lo", "hi"]
"""``kind``: dataset (steps are training steps), image (steps are each image's fit steps) or reference;
``scored_on``: the profile's probe images ("full") or FIT_SUBSET's ("subset")."""


def study_recipe(method: str, backbone: Backbone, context: RunContext) -> dict[str, Any]:
    """The training recipe of the study's run: the profile's, less its step count, which the study varies."""
    _, recipe = checkpoint(METHODS.get(method), backbone, context)
    return {k: v for k, v in recipe.items() if k != "steps"}


def trained_to(method: str, steps: int, backbone: Backbone, context: RunContext, out: Path) -> Path:
    """The method's weights after ``steps`` steps of the study's one training run, continuing it as needed."""
    folder = out / "train" / method
    target = folder / f"weights-{steps}.pt"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    upsampler = create_method(method, backbone, context.profile.seed).to(context.device)
    recipe = study_recipe(method, backbone, context)

    def save(done: int, trained: torch.nn.Module, state: dict[str, Any]) -> None:
        atomic_write_json(folder / f"provenance-{done}.json",
                          training_provenance({**recipe, "steps": done}, state, context))
        atomic_write(folder / f"weights-{done}.pt", lambda tmp: torch.save(trained.state_dict(), tmp))

    run_training(upsampler, backbone, context, folder / "resume.pt", recipe, training_images(context, steps), steps,
                 checkpoints=[steps], on_checkpoint=save)
    return target


def study_checkpoint(out: Path, method: str, steps: int | None, backbone: Backbone,
                     context: RunContext) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(weights file, training recipe, training record) of a study's checkpoint, for shipping: the recipe is
    the one a separate ``train --steps`` run of the same profile would have (the study's equals it)."""
    if steps is None:
        raise ValueError("shipping from a budget study needs --steps: which of its checkpoints to ship")
    weights, record = out / "train" / method / f"weights-{steps}.pt", out / "train" / method / f"provenance-{steps}.json"
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
    atomic_write_json(out / "study.json", {"methods": methods, "steps": steps, "seeds": seeds,
                                           "references": list(references), "backbone": backbone.name,
                                           "profile": context.profile.recipe()})
    trained = [n for n in methods if kinds[n] == "dataset"]
    fitted = [n for n in methods if kinds[n] == "image"]
    counts = {"dataset": sorted(steps or DEFAULT_STEPS), "image": sorted(steps or DEFAULT_FIT_STEPS)}
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


def view_images(steps: int, context: RunContext) -> int:
    return steps * context.profile.train_batch * context.profile.train_views


def curve_table(out: Path) -> pd.DataFrame:
    """One row per (method, steps, metric column): mean and sd over seeds, the bootstrap interval of
    the seed-mean over images, and the view-images trained on (0 for the references)."""
    frames = []
    study_info = json.loads((out / "study.json").read_text())
    per_step = study_info["profile"]["train_batch"] * study_info["profile"]["train_views"]
    for folder in sorted((out / "scores").iterdir()):
        if not (folder / "cells").is_dir():
            continue
        rows = with_columns(ResultStore(folder).rows(per_image=True))
        if rows.empty:
            continue
        reference = folder.name.startswith("reference")
        steps = 0 if reference else int(folder.name.rpartition("-")[2])
        rows["steps"] = steps
        rows["kind"] = "reference" if reference else METHODS.get(rows["method"].iloc[0]).fit
        rows["scored_on"] = "subset" if folder.name == "reference-subset" or rows["kind"].iloc[0] == "image" else "full"
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.concat(frames, ignore_index=True)
    rows["key"] = rows["method"] + "@" + rows["steps"].astype(str) + "@" + rows["scored_on"]
    spans = interval_table(rows.assign(method=rows["key"])).rename(columns={"method": "key"})
    table = (rows.groupby(["key", "method", "kind", "scored_on", "steps", "column"])
             .agg(higher_is_better=("higher_is_better", "first"), seeds=("seed", "nunique"),
                  mean=("value", "mean"), sd=("value", "std")).reset_index())
    table = table.merge(spans[["key", "column", "lo", "hi"]], on=["key", "column"], how="left")
    table["view_images"] = (table["steps"] * per_step).where(table["kind"] == "dataset", 0)
    table = table.rename(columns={"column": "metric"})
    return table[COLUMNS].sort_values(["scored_on", "metric", "method", "steps"]).reset_index(drop=True)


def plot_budget(curves: pd.DataFrame, path: Path, fits: bool = False) -> None:
    """One panel per probe metric: each method's mean (± sd over seeds) against its budget on a log axis
    (training view-images; with ``fits``, each image's fit steps), the references as horizontal lines."""
    import matplotlib.pyplot as plt

    if curves.empty:
        return
    metrics = list(dict.fromkeys(curves["metric"]))
    cols, rows_n = min(3, len(metrics)), math.ceil(len(metrics) / 3)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 3.8 * rows_n), squeeze=False)
    x = "steps" if fits else "view_images"
    for ax, metric in zip(axes.flat, metrics):
        rows = curves[curves["metric"] == metric]
        for method, one in rows[rows["kind"] != "reference"].groupby("method", sort=False):
            line, = ax.plot(one[x], one["mean"], marker="o", label=method)
            ax.fill_between(one[x], one["mean"] - one["sd"].fillna(0), one["mean"] + one["sd"].fillna(0),
                            color=line.get_color(), alpha=0.15)
        references = rows[rows["kind"] == "reference"].groupby("method", sort=False)
        for (method, one), style in zip(references, ("--", ":", "-.", (0, (5, 1)))):
            ax.axhline(float(one["mean"].iloc[0]), color="0.35", linestyle=style, linewidth=1.1, label=method)
        ax.set_xscale("log")
        up = bool(rows["higher_is_better"].iloc[0])
        ax.set_title(f"{metric} ({'higher' if up else 'lower'} is better)", fontsize=9)
        ax.set_xlabel("fit steps per image" if fits else "training view-images")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8)
    what = "per-image fit steps (probe subset)" if fits else "training budget"
    fig.suptitle(f"Probe scores against {what} (mean ± sd over probe seeds)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_curves(out: Path) -> pd.DataFrame:
    """budget.csv, budget.png (trained methods) and budget-fits.png (per-image methods) from the scored cells."""
    curves = curve_table(out)
    curves.to_csv(out / CSV, index=False)
    plot_budget(curves[curves["scored_on"] == "full"], out / PNG)
    plot_budget(curves[curves["scored_on"] == "subset"], out / FITS_PNG, fits=True)
    return curves
