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
REFERENCES = ("bilinear", "guided_filter", "jbu_classic")
"""Methods that learn nothing: the lines a trained method's curve should rise above."""
PROBES = ("probe_seg", "probe_depth")
SEEDS = (0, 1, 2)
CSV, PNG = "budget.csv", "budget.png"


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


def study(methods: list[str], steps: list[int], backbone: Backbone, context: RunContext, out: Path,
          seeds: list[int] = list(SEEDS), references: tuple[str, ...] = REFERENCES) -> pd.DataFrame:
    """Run (or continue) the study; returns the curve table, also written to ``out``/budget.csv with its PNG.

    Every method advances one step count at a time, so a study stopped early has all methods'
    curves to the same length.
    """
    for name in methods:
        if METHODS.get(name).fit != "dataset":
            raise ValueError(f"method {name!r} is not trained on a dataset (fit={METHODS.get(name).fit!r}); "
                             f"the budget study trains methods with fit='dataset'")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "study.json", {"methods": methods, "steps": steps, "seeds": seeds,
                                           "references": list(references), "backbone": backbone.name,
                                           "profile": context.profile.recipe()})
    score(list(references), "reference", backbone, context, out, seeds)
    for count in sorted(steps):
        for name in methods:
            weights = trained_to(name, count, backbone, context, out)
            score([name], f"{name}-{count}", backbone, dataclasses.replace(context, weights={name: str(weights)}),
                  out, seeds)
        curves = curve_table(out)
        curves.to_csv(out / CSV, index=False)
        plot_budget(curves, out / PNG)
    return curve_table(out)


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
        steps = 0 if folder.name == "reference" else int(folder.name.rpartition("-")[2])
        rows["steps"] = steps
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=["method", "steps", "view_images", "metric", "higher_is_better", "seeds",
                                     "mean", "sd", "lo", "hi"])
    rows = pd.concat(frames, ignore_index=True)
    rows["key"] = rows["method"] + "@" + rows["steps"].astype(str)
    spans = interval_table(rows.assign(method=rows["key"])).rename(columns={"method": "key"})
    table = (rows.groupby(["key", "method", "steps", "column"])
             .agg(higher_is_better=("higher_is_better", "first"), seeds=("seed", "nunique"),
                  mean=("value", "mean"), sd=("value", "std")).reset_index())
    table = table.merge(spans[["key", "column", "lo", "hi"]], on=["key", "column"], how="left")
    table["view_images"] = table["steps"] * per_step
    table = table.rename(columns={"column": "metric"})
    return table[["method", "steps", "view_images", "metric", "higher_is_better", "seeds", "mean", "sd", "lo", "hi"]] \
        .sort_values(["metric", "method", "steps"]).reset_index(drop=True)


def plot_budget(curves: pd.DataFrame, path: Path) -> None:
    """One panel per probe metric: each trained method's mean (±sd over seeds) against training
    view-images on a log axis; the references as horizontal lines."""
    import matplotlib.pyplot as plt

    if curves.empty:
        return
    metrics = list(dict.fromkeys(curves["metric"]))
    cols = min(3, len(metrics))
    fig, axes = plt.subplots(math.ceil(len(metrics) / cols), cols, figsize=(5.2 * cols, 3.8 * math.ceil(len(metrics) / cols)),
                             squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        rows = curves[curves["metric"] == metric]
        trained = rows[rows["steps"] > 0]
        for method, one in trained.groupby("method", sort=False):
            line, = ax.plot(one["view_images"], one["mean"], marker="o", label=method)
            ax.fill_between(one["view_images"], one["mean"] - one["sd"].fillna(0), one["mean"] + one["sd"].fillna(0),
                            color=line.get_color(), alpha=0.15)
        for (method, one), style in zip(rows[rows["steps"] == 0].groupby("method", sort=False), ("--", ":", "-.", "--")):
            ax.axhline(float(one["mean"].iloc[0]), color="0.35", linestyle=style, linewidth=1.1, label=method)
        ax.set_xscale("log")
        up = bool(rows["higher_is_better"].iloc[0])
        ax.set_title(f"{metric} ({'higher' if up else 'lower'} is better)", fontsize=9)
        ax.set_xlabel("training view-images")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8)
    fig.suptitle("Probe scores against training budget (mean ± sd over probe seeds)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
