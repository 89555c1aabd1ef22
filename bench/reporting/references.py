"""Published tables our runs are compared with: FeatUp's Table 1 and JAFAR's README table.

Each reference is a CSV in results/ (one row per method, named as our methods are) and a map from our
(task, dataset, metric) to its columns; ``table --vs NAME`` sets its numbers beside ours and computes the
rank agreement (Kendall τ) against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parents[2] / "results"


@dataclass(frozen=True)
class Reference:
    name: str
    label: str
    """Its columns' suffix in our tables: ``probe_seg.miou (paper)``."""
    csv: Path
    note: str
    columns: dict[tuple[str, str | None, str], str] = field(default_factory=dict)
    """(task, dataset name, metric) -> the reference's column; dataset None: the task's primary dataset,
    whichever it is (the reference's own setting)."""
    units: dict[str, float] = field(default_factory=dict)
    """The reference's column -> the factor that puts it in our units (a percentage where ours is a fraction: 0.01)."""

    def table(self) -> pd.DataFrame:
        """The reference's numbers in our units, one row per method."""
        table = pd.read_csv(self.csv).set_index("method")
        for column, factor in self.units.items():
            table[column] = table[column] * factor
        return table

    def matches(self, ok: pd.DataFrame) -> dict[str, str]:
        """Our table column -> the reference's, for the columns of ``ok`` (rows with a ``column``, as
        bench.reporting.report.with_columns gives them) that it has."""
        out = {}
        for r in ok.drop_duplicates("column").itertuples():
            primary = "@" not in r.column
            dataset = str(r.dataset).partition("@")[0]
            theirs = self.columns.get((r.task, dataset, r.metric)) or (
                self.columns.get((r.task, None, r.metric)) if primary else None)
            if theirs is not None:
                out[r.column] = theirs
        return out


def featup_columns() -> dict[tuple[str, str | None, str], str]:
    """Each registered task's ``paper_columns``, for its primary dataset."""
    from bench.registry import TASKS

    return {(name, None, metric): theirs for name in TASKS.names()
            for metric, theirs in TASKS.get(name).paper_columns.items()}


FEATUP_NOTE = (
    "paper: FeatUp Table 1 (ViT-S/16, COCO-Stuff, 224 px). The paper prints its segmentation columns as "
    "'mIoU' then 'Accuracy'; accuracy is almost always the higher one, so our mIoU is set beside its second "
    "column and our accuracy beside its first."
)
JAFAR_NOTE = (
    "reference: JAFAR's README table (Couairon et al. 2025, github.com/PaulCouairon/JAFAR; DINOv2 ViT-S/14, "
    "448 px; linear probes 20 epochs, AdamW 5e-4, batch 2). Its depth columns are on COCO images with "
    "Depth-Anything-V2-Small pseudo-labels, not NYUv2, so beside our NYUv2 depth they compare ranks, not values; "
    "its FeatUp row is FeatUp's JBU (our featup_jbu). Its δ<1.25 is printed in percent; shown here as a fraction, "
    "as ours is."
)
JAFAR_COLUMNS = {
    ("probe_seg", "coco_stuff", "miou"): "coco_miou", ("probe_seg", "voc", "miou"): "voc_miou",
    ("probe_seg", "ade20k", "miou"): "ade20k_miou", ("probe_seg", "cityscapes", "miou"): "cityscapes_miou",
    ("probe_depth", None, "delta1.25"): "depth_delta1", ("probe_depth", None, "rmse"): "depth_rmse",
    ("cam", None, "ad"): "cam_ad", ("cam", None, "ai"): "cam_ai",
}


PROFILE_REFERENCES = {"jafar": "jafar"}
"""A profile -> the published table made in its setting (every other profile: FeatUp's)."""


def reference_for(profile: str) -> Reference:
    """The reference a run of ``profile`` is set beside in its report."""
    return reference(PROFILE_REFERENCES.get(profile, "featup"))


def reference(name: str) -> Reference:
    """The reference called ``name`` ("featup" or "jafar"); a clear error otherwise."""
    known = {"featup": lambda: Reference("featup", "paper", RESULTS / "paper_table.csv", FEATUP_NOTE, featup_columns()),
             "jafar": lambda: Reference("jafar", "jafar", RESULTS / "jafar_table.csv", JAFAR_NOTE, JAFAR_COLUMNS,
                                        units={"depth_delta1": 0.01})}
    if name not in known:
        raise ValueError(f"no reference table {name!r}: expected one of {', '.join(known)}")
    return known[name]()

