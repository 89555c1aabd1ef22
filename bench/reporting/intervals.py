"""Error bars for a run's table: bootstrap intervals over images, pooled over seeds, and paired
differences from a baseline method.

Each probe cell stores per-image sufficient statistics (``MetricRow.per_image``) and the name of
the ``bench.reporting.stats`` statistic that pools them. For one (method, column) the bootstrap draws image
indices once per seed, computes the metric of every resample in every seed, and averages over
seeds, so the interval is that of the seed-mean shown in the table. The paired difference from
the baseline uses the same draws for both methods: a seed scores both on the same images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.reporting.ranks import is_reference
from bench.reporting.stats import STATISTICS, bootstrap_indices, percentile_interval, replicates

BASELINE = "bilinear"
N_BOOT = 1000
LEVEL = 0.95


def seed_mean_replicates(group: pd.DataFrame, draws: dict[int, np.ndarray]) -> np.ndarray:
    """Replicates of the seed-mean metric for one (method, column): rows are seeds."""
    reps = [replicates(np.asarray(r.per_image, dtype=np.float64), STATISTICS[r.statistic], draws[r.seed])
            for r in group.itertuples()]
    return np.mean(reps, axis=0)


def interval_table(rows: pd.DataFrame, n_boot: int = N_BOOT, level: float = LEVEL) -> pd.DataFrame:
    """(method, column) -> lo, hi of the metric and diff_lo, diff_hi of its difference from the baseline.

    ``rows`` are tidy ok rows with ``column``, ``per_image`` and ``statistic``; rows without
    per-image statistics (older results, tasks that store none) get no interval, reference rows no difference.
    """
    rows = rows[rows["per_image"].notna() & rows["statistic"].notna()]
    out = []
    for column, col_rows in rows.groupby("column"):
        sizes = {s: len(g.iloc[0].per_image) for s, g in col_rows.groupby("seed")}
        draws = {s: bootstrap_indices(n, n_boot, seed=int(s)) for s, n in sizes.items()}
        reps = {m: seed_mean_replicates(g, draws) for m, g in col_rows.groupby("method")
                if all(len(p) == sizes[s] for s, p in zip(g["seed"], g["per_image"]))}
        seeds = {m: set(g["seed"]) for m, g in col_rows.groupby("method")}
        base = reps.get(BASELINE)
        for method, rep in reps.items():
            lo, hi = percentile_interval(rep, level)
            # the baseline's own: [0, 0]; a reference row (colour_only) is no upsampler to mark better or worse
            paired = base is not None and seeds[method] == seeds[BASELINE] and not is_reference(method)
            diff = percentile_interval(rep - base, level) if paired else (np.nan, np.nan)
            out.append({"method": method, "column": column, "lo": lo, "hi": hi, "diff_lo": diff[0], "diff_hi": diff[1]})
    return pd.DataFrame(out, columns=["method", "column", "lo", "hi", "diff_lo", "diff_hi"])
