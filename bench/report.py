"""Wide tables from the stored tidy rows, optionally beside the paper's Table 1."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.store import ResultStore

PAPER_TABLE = Path(__file__).resolve().parent.parent / "results" / "paper_table.csv"
PAPER_COLUMNS = {
    "probe_seg.miou": "seg_printed_acc",
    "probe_seg.acc": "seg_printed_miou",
    "probe_depth.rmse": "depth_rmse",
    "probe_depth.delta1.25": "depth_delta",
    "cam.ad": "cam_ad",
    "cam.ai": "cam_ai",
}
PAPER_NOTE = (
    "paper: FeatUp Table 1 (ViT-S/16, COCO-Stuff, 224 px). The paper prints its segmentation columns as "
    "'mIoU' then 'Accuracy'; accuracy is almost always the higher one, so our mIoU is set beside its second "
    "column and our accuracy beside its first."
)
FORMATS = ("md", "csv", "latex")


def qualified_data(rows: pd.DataFrame) -> set[tuple[str, str]]:
    """(task, dataset label) pairs whose columns must name their data: a task scored on several datasets.

    The profile's own dataset keeps the plain ``task.metric`` column when it is the only one; the
    others (a profile's extra datasets, or two folders of one dataset in one run) are ``task@label.metric``.
    """
    out = set()
    for task, group in rows.groupby("task"):
        labels = set(group["dataset"])
        if len(labels) < 2:
            continue
        primary = set(group.loc[group["primary_data"].astype(bool), "dataset"])
        out |= {(task, label) for label in labels if len(primary) != 1 or label not in primary}
    return out


def wide_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per method (per backbone/profile if the run mixes them), one column per task.metric."""
    ok = rows[rows["status"] == "ok"].copy()
    qualified = qualified_data(ok)
    ok["column"] = [f"{t}@{d}.{m}" if (t, d) in qualified else f"{t}.{m}"
                    for t, d, m in zip(ok["task"], ok["dataset"], ok["metric"])]
    index = ["method"] + [k for k in ("backbone", "profile") if rows[k].nunique() > 1]
    table = ok.pivot_table(index=index, columns="column", values="value", aggfunc="mean")
    methods = rows["method"].drop_duplicates().tolist()
    table = table.reindex(methods, level=0) if len(index) > 1 else table.reindex(methods)
    table.columns.name = None
    return table


def with_paper(table: pd.DataFrame, paper_csv: Path = PAPER_TABLE) -> pd.DataFrame:
    paper = pd.read_csv(paper_csv).set_index("method")
    out = table.copy()
    for ours, theirs in PAPER_COLUMNS.items():
        if ours in out.columns:
            methods = out.index.get_level_values(0)
            out.insert(out.columns.get_loc(ours) + 1, f"{ours} (paper)", paper[theirs].reindex(methods).to_numpy())
    return out


def failures(rows: pd.DataFrame) -> pd.DataFrame:
    bad = rows[rows["status"] != "ok"].drop_duplicates(["method", "task", "backbone"])
    return bad[["method", "task", "backbone", "status", "message"]]


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return table.to_csv(float_format="%.4g")
    if fmt == "latex":
        return table.to_latex(float_format="%.3f", na_rep="--")
    return table.to_markdown(floatfmt=".3f")


def table_text(run_dir: str | Path, fmt: str = "md", vs_paper: bool = False) -> str:
    """The run's table as text; markdown also lists failed cells and the paper footnote."""
    rows = ResultStore(run_dir).rows()
    table = wide_table(rows)
    if vs_paper:
        table = with_paper(table)
    text = render(table, fmt)
    if fmt != "md":
        return text
    bad = failures(rows)
    if not bad.empty:
        lines = [f"- {r.method} / {r.task} ({r.backbone}): {r.status}: {str(r.message).splitlines()[0]}"
                 for r in bad.itertuples()]
        text += "\n\nFailed cells:\n" + "\n".join(lines)
    if vs_paper:
        text += f"\n\n{PAPER_NOTE}"
    return text
