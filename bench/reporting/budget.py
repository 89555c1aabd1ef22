"""The training-budget study's curves: one row per (method, steps, probe metric) from its scored cells,
written as a CSV and drawn against the training budget (bench.running.budget runs the study)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench.core.store import ResultStore
from bench.fitting.weights import view_images
from bench.registry import METHODS
from bench.reporting.intervals import interval_table
from bench.reporting.report import with_columns

CSV, PNG, FITS_PNG = "budget.csv", "budget.png", "budget-fits.png"
COLUMNS = ["method", "kind", "scored_on", "steps", "view_images", "metric", "higher_is_better", "seeds",
           "mean", "sd", "lo", "hi"]
"""``kind``: dataset (steps are training steps), image (steps are each image's fit steps) or reference;
``scored_on``: the profile's probe images ("full") or FIT_SUBSET's ("subset")."""


def checkpoint_files(out: Path, method: str, steps: int) -> tuple[Path, Path]:
    """(weights, training record) of ``method``'s study checkpoint at ``steps``: the one place that names them,
    for the study that writes them, ``ship`` and the curves that read them."""
    folder = out / "train" / method
    return folder / f"weights-{steps}.pt", folder / f"provenance-{steps}.json"


def trained(out: Path, method: str, steps: int) -> dict:
    """The training record (batch, views, ...) the study saved with ``method``'s checkpoint at ``steps``."""
    return json.loads(checkpoint_files(out, method, steps)[1].read_text())


def curve_table(out: Path) -> pd.DataFrame:
    """One row per (method, steps, metric column): mean and sd over seeds, the bootstrap interval of
    the seed-mean over images, and the view-images trained on (0 for the references)."""
    frames = []
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
    seen = {(m, s): view_images(s, trained(out, m, s)) if k == "dataset" else 0  # one read per checkpoint
            for m, k, s in table[["method", "kind", "steps"]].drop_duplicates().values}
    table["view_images"] = [seen[m, s] for m, s in table[["method", "steps"]].values]
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
        budgets = sorted(rows.loc[rows["kind"] != "reference", x].unique())
        ax.set_xticks(budgets, [f"{b / 1000:g}k" if b >= 1000 else f"{b:g}" for b in budgets])
        ax.minorticks_off()  # the log axis's own labels at 2x10^1, 3x10^1, ... overlapped
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
