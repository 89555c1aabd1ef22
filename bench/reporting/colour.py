"""The colour sweep's table and figure: segmentation scores against how much the data's colour gives away.

``ablate colour`` (bench.running.colour) scores methods on ``materials`` at colour levels from 0 (each class
its own colour, as in ``scenes``) to 1 (colour says nothing of the class). A method whose score falls as the
level rises leaned on the image's colour; the ``colour_only`` reference row shows how much colour alone gave.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.core.store import ResultStore
from bench.reporting.report import with_columns

CSV, PNG = "colour.csv", "colour.png"
COLUMNS = ["level", "dataset", "method", "metric", "higher_is_better", "seeds", "mean", "sd"]


def level_of(folder: Path) -> float:
    """The colour level of a sweep's score folder ``level-<percent>``."""
    return int(folder.name.rpartition("-")[2]) / 100


def sweep_table(out: Path) -> pd.DataFrame:
    """One row per (level, method, metric): mean and sd over the seeds scored."""
    frames = []
    for folder in sorted((out / "scores").glob("level-*")):
        rows = with_columns(ResultStore(folder).rows())
        if not rows.empty:
            frames.append(rows.assign(level=level_of(folder)))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.concat(frames, ignore_index=True).drop(columns="metric").rename(columns={"column": "metric"})
    table = (rows.groupby(["level", "dataset", "method", "metric"], sort=False)
             .agg(higher_is_better=("higher_is_better", "first"), seeds=("seed", "nunique"),
                  mean=("value", "mean"), sd=("value", "std")).reset_index())
    return table[COLUMNS].sort_values(["metric", "method", "level"]).reset_index(drop=True)


def plot_sweep(table: pd.DataFrame, path: Path, metric: str = "probe_seg.miou") -> None:
    """``metric`` against the colour level, one line per method (± sd over seeds); references dashed."""
    import matplotlib.pyplot as plt

    from bench.reporting.ranks import is_reference

    rows = table[table["metric"] == metric]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, one in rows.groupby("method", sort=False):
        style = "--" if is_reference(method) else "-"
        line, = ax.plot(one["level"], one["mean"], marker="o", linestyle=style, label=method)
        sd = one["sd"].fillna(0)
        ax.fill_between(one["level"], one["mean"] - sd, one["mean"] + sd, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("colour level (0: each class its own colour; 1: colour says nothing of the class)")
    ax.set_ylabel(metric)
    ax.set_xticks(sorted(rows["level"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} as the data's colour stops giving the class away (mean ± sd over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sweep(out: Path) -> pd.DataFrame:
    """colour.csv and colour.png under ``out`` from the sweep's scored cells."""
    table = sweep_table(out)
    table.to_csv(out / CSV, index=False)
    if not table.empty:
        plot_sweep(table, out / PNG)
    return table
