"""`run --verify K`: rescore K stored cells, chosen at random, and compare with what the run folder holds.

The default run's cells ship with the suite, and a user scores a new method beside them instead of
rescoring every baseline. This is how the user checks that the shipped numbers are what this checkout,
these packages and this machine give.
"""
from __future__ import annotations

import random

import pandas as pd
from tqdm.auto import tqdm

from bench.backbones import Backbone
from bench.core.cells import Cell
from bench.core.context import RunContext
from bench.core.failures import SETTLED
from bench.core.store import ResultStore
from bench.running.runner import execute_cell


def verify(cells: list[tuple[Cell, dict]], k: int, backbone: Backbone, context: RunContext, store: ResultStore,
           seed: int | None = None) -> pd.DataFrame:
    """One row per metric of ``k`` stored, finished cells drawn from ``cells`` (seeded by ``seed``): the stored
    value, the value rescored here (nothing is written) and their absolute difference."""
    stored = [(cell, recipe, record) for cell, recipe in cells
              if (record := store.record(cell, recipe)) is not None and record["status"] == "ok"]
    if not stored:
        raise ValueError(f"--verify: {store.run_dir} holds no finished cell of this plan to rescore")
    chosen = random.Random(seed).sample(stored, min(k, len(stored)))
    rows = []
    for cell, recipe, record in tqdm(chosen, desc="verify", disable=not context.progress):
        again = execute_cell(cell, recipe, backbone, context)
        if again["status"] not in SETTLED:
            raise RuntimeError(f"--verify: {cell.method} / {cell.task} / seed {cell.seed} failed when rescored: "
                               f"{again['message'].splitlines()[0]}")
        now = {m["metric"]: m["value"] for m in again["metrics"]}
        for metric in record["metrics"]:
            rows.append({"method": cell.method, "task": cell.task, "dataset": cell.dataset, "seed": cell.seed,
                         "metric": metric["metric"], "stored": metric["value"], "rescored": now.get(metric["metric"]),
                         "abs_diff": abs(metric["value"] - now[metric["metric"]]) if metric["metric"] in now else None})
    return pd.DataFrame(rows)
