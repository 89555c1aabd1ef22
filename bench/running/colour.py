"""The colour sweep (``ablate colour``): methods scored on probe_seg as the segmentation data goes from
colour-coded to colour-blind (``materials`` at colour levels 0 to 1, bench.data.materials).

Each level's cells are ordinary cells of a run folder of their own (``scores/level-<percent>/``), so a killed
sweep continues where it stopped; bench.reporting.colour turns them into the CSV and figure.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from bench.backbones import Backbone
from bench.core.context import RunContext
from bench.data.materials import dataset_at
from bench.reporting.colour import write_sweep
from bench.running.runner import plan, run_cells

LEVELS = (0.0, 1 / 3, 2 / 3, 1.0)
SWEPT_METHODS = ("colour_only", "bilinear", "jbu_classic", "guided_filter", "featup_jbu", "resize_conv")
"""The reference row, the baseline, the two filters that copy colour edges and two trained upsamplers."""
TASKS = ("probe_seg",)


def sweep(methods: list[str], levels: list[float], backbone: Backbone, context: RunContext, out: Path,
          seeds: list[int]) -> pd.DataFrame:
    """Score ``methods`` at every colour level and seed (cells already scored are kept); returns the table
    also written to ``out``/colour.csv with its PNG. The profile's extra datasets are left out: only the
    segmentation data changes with the level."""
    if not levels:
        raise ValueError("ablate colour needs at least one colour level")
    out.mkdir(parents=True, exist_ok=True)
    for level in sorted(levels):
        profile = dataclasses.replace(context.profile.with_data(seg=dataset_at(level)), extra_data=())
        leveled = dataclasses.replace(context, profile=profile)
        cells = plan(methods, list(TASKS), backbone.name, leveled, seeds)
        run_cells(cells, backbone, leveled, out / "scores" / f"level-{round(100 * level)}")
        table = write_sweep(out)  # after every level, so a stopped sweep leaves its curves so far
    return table
