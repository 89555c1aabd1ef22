"""Wide tables from the stored tidy rows, optionally beside the paper's Table 1."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.reporting.intervals import BASELINE, LEVEL, N_BOOT, interval_table
from bench.reporting.latex import latex_cell, latex_escape, latex_table, latex_tabular
from bench.reporting.ranks import agreement_text, is_reference, rank_agreement
from bench.reporting.references import Comparison, Reference, RunSetting, reference
from bench.core.failures import SETTLED
from bench.core.store import ResultStore, is_stale
from bench.plugins import changed_code

FORMATS = ("md", "csv", "latex")
METRIC_LABELS = {"miou": "mIoU", "acc": "Acc", "macc": "mAcc", "aacc": "aAcc", "rmse": "RMSE",
                 "delta1.25": r"$\delta_{1.25}$", "gflops": "GFLOPs", "params": "params", "ad": "A.D.", "ai": "A.I.",
                 "adcc": "ADCC"}
"""LaTeX headers of the built-in tasks' metrics; a plugin task's metric shows its escaped name."""
ARROWS = {True: r"$\uparrow$", False: r"$\downarrow$"}
"""A LaTeX header's mark of its metric's direction (higher_is_better), which its bold follows."""
LATEX_LEGEND = (f"% Cells: mean \\pm sd over seeds, or in a column scored at one seed mean [{LEVEL:.0%} bootstrap "
                f"interval over images]. Bold: the best mean of each column (reference rows are not ranked).")


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


def with_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """The ok rows with their table column: ``task.metric``, or ``task@dataset.metric`` (see qualified_data)."""
    ok = rows[rows["status"] == "ok"].copy()
    qualified = qualified_data(ok)
    ok["column"] = [f"{t}@{d}.{m}" if (t, d) in qualified else f"{t}.{m}"
                    for t, d, m in zip(ok["task"], ok["dataset"], ok["metric"])]
    return ok


def pivot(ok: pd.DataFrame, rows: pd.DataFrame, values: str, aggfunc: str) -> pd.DataFrame:
    """One row per method (per backbone/profile if the run mixes them), one column per ``column``."""
    index = ["method"] + [k for k in ("backbone", "profile") if rows[k].nunique() > 1]
    table = ok.pivot_table(index=index, columns="column", values=values, aggfunc=aggfunc, dropna=False)
    methods = rows["method"].drop_duplicates().tolist()
    table = table.reindex(methods, level=0) if len(index) > 1 else table.reindex(methods)
    table.columns.name = None
    return table[sorted(table.columns, key=column_order)]


def column_order(column: str) -> tuple:
    """Tasks in registry order, each task's metrics in the order it declares them, extra datasets after."""
    from bench.registry import TASKS

    task = column.split("@")[0].split(".")[0]
    declared = list(TASKS.get(task).metrics) if task in TASKS else []
    metric = next((m for m in declared if column.endswith(f".{m}")), column)
    tasks = TASKS.names()
    return (tasks.index(task) if task in tasks else len(tasks), task, "@" in column, column[:-len(metric)],
            declared.index(metric) if metric in declared else len(declared))


def column_metrics(rows: pd.DataFrame) -> pd.DataFrame:
    """Each table column's ``metric`` and ``higher_is_better``, indexed by column: what its header and bold follow."""
    ok = with_columns(rows).drop_duplicates("column").set_index("column")
    return ok[["metric", "higher_is_better"]].astype({"higher_is_better": bool})


def wide_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each metric: one row per method, one column per task metric."""
    return pivot(with_columns(rows), rows, "value", "mean")


def detail_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The wide table with, after each metric column, its sd over seeds (where a run has several),
    its bootstrap interval over images and the interval of its difference from bilinear.

    Only rows with per-image statistics get intervals; columns that would be all empty are left out.
    """
    ok = with_columns(rows)
    table = pivot(ok, rows, "value", "mean")
    extra = {"sd": pivot(ok, rows, "value", "std")} if ok.groupby(["method", "column"])["seed"].nunique().max() > 1 else {}
    if "per_image" in ok:
        spans = interval_table(ok)
        for key in ("lo", "hi", "diff_lo", "diff_hi"):
            extra[key] = spans.pivot(index="method", columns="column", values=key).reindex(table.index)
    out = {}
    for column in table.columns:
        out[column] = table[column]
        for key, part in extra.items():
            if column in part.columns and part[column].notna().any():
                out[f"{column} {key}"] = part[column]
    return pd.DataFrame(out, index=table.index)


def decimals(value: float) -> int:
    """The decimals a table shows a metric with: 2 from 10 up (percentages), else 3."""
    return 2 if abs(value) >= 10 else 3


def cell_text(parts: dict[str, float], higher_is_better: bool) -> str:
    """One markdown cell from a metric's mean and its optional sd, lo, hi, diff_lo, diff_hi."""
    value = parts["mean"]
    if pd.isna(value):
        return ""
    digits = decimals(value)
    text = f"{value:.{digits}f}"
    if pd.notna(parts.get("sd")):
        text += f" ± {parts['sd']:.{digits}f}"
    if pd.notna(parts.get("lo")):
        text += f" [{parts['lo']:.{digits}f}, {parts['hi']:.{digits}f}]"
    better, worse = parts.get("diff_lo", 0) > 0, parts.get("diff_hi", 0) < 0
    if better or worse:
        text += " +" if better == higher_is_better else " −"
    return text


def display_table(detail: pd.DataFrame, higher_is_better: dict[str, bool]) -> pd.DataFrame:
    """Markdown cells: "mean ± sd [lo, hi]", then "+" (better) or "−" (worse) where the interval of the
    difference from bilinear excludes 0; ``higher_is_better`` maps each column to its direction."""
    out = pd.DataFrame(index=detail.index)
    for column in [c for c in detail.columns if " " not in c]:
        keys = {c.split(" ", 1)[1]: c for c in detail.columns if c.startswith(f"{column} ")}
        out[column] = [cell_text({"mean": detail.at[m, column], **{k: detail.at[m, c] for k, c in keys.items()}},
                                 higher_is_better.get(column, True)) for m in detail.index]
    return out


def best_rows(means: pd.Series, higher_is_better: bool) -> pd.Series:
    """True where a row holds the column's best mean; reference rows (colour_only) are not ranked."""
    upsampler = pd.Series([not is_reference(m) for m in means.index.get_level_values(0)], index=means.index)
    ranked = means[upsampler]
    return upsampler & (means == (ranked.max() if higher_is_better else ranked.min()))


def latex_value(mean: float, sd: float, lo: float, hi: float, bold: bool) -> str:
    """One metric's LaTeX cell: ``$mean \\pm sd$``, else ``$mean\\ [lo, hi]$``, else ``$mean$``; -- where unscored."""
    if pd.isna(mean):
        return "--"
    digits = decimals(mean)
    text = rf"\mathbf{{{mean:.{digits}f}}}" if bold else f"{mean:.{digits}f}"
    if pd.notna(sd):
        text += rf" \pm {sd:.{digits}f}"
    elif pd.notna(lo):
        text += rf"\ [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"${text}$"


def latex_cells(detail: pd.DataFrame, higher_is_better: dict[str, bool]) -> pd.DataFrame:
    """One LaTeX cell per metric (latex_value): the sd over seeds in a column that has one, else the interval
    over images, so a column never mixes the two; the best mean of each column in bold."""
    none = pd.Series(float("nan"), index=detail.index)
    out = {}
    for column in [c for c in detail.columns if " " not in c]:
        sd, lo, hi = (detail.get(f"{column} {key}", none) for key in ("sd", "lo", "hi"))
        if sd.notna().any():
            lo = hi = none
        bold = best_rows(detail[column], higher_is_better.get(column, True))
        out[column] = [latex_value(*cell) for cell in zip(detail[column], sd, lo, hi, bold)]
    return pd.DataFrame(out, index=detail.index)


def latex_header(column: str, metrics: pd.DataFrame) -> str:
    """``probe_seg.miou`` as ``probe\\_seg mIoU $\\uparrow$``; a reference's column as ``probe\\_seg mIoU (paper)``."""
    ours, _, suffix = column.partition(" ")
    if ours not in metrics.index:
        return latex_escape(column)
    metric, up = metrics.at[ours, "metric"], metrics.at[ours, "higher_is_better"]
    name = f"{latex_escape(ours[:-len(metric) - 1])} {METRIC_LABELS.get(metric, latex_escape(metric))}"
    return f"{name} {latex_escape(suffix) if suffix else ARROWS[up]}"


def latex_results(detail: pd.DataFrame, metrics: pd.DataFrame, columns: dict[str, str], ref: Reference | None) -> str:
    """The run's table to paste into a paper: latex_cells, with the reference's numbers beside ours, and its legend."""
    cells = latex_cells(detail, metrics["higher_is_better"].to_dict())
    if ref:
        cells = with_reference(cells, columns, ref).map(lambda v: v if isinstance(v, str) else latex_cell(v))
    return LATEX_LEGEND + "\n" + latex_tabular(cells, [latex_header(c, metrics) for c in cells.columns])


def with_reference(table: pd.DataFrame, columns: dict[str, str], ref: Reference) -> pd.DataFrame:
    """``table`` with the reference's number after each of our ``columns`` it has (NaN: a method it lacks)."""
    theirs = ref.table()
    out = table.copy()
    for ours, column in columns.items():
        if ours in out.columns:
            methods = out.index.get_level_values(0)
            out.insert(out.columns.get_loc(ours) + 1, f"{ours} ({ref.label})", theirs[column].reindex(methods).to_numpy())
    return out


def reference_deltas(rows: pd.DataFrame, ref: Reference) -> pd.DataFrame:
    """Our mean minus the reference's number for each of our columns it has (NaN: a method it lacks)."""
    means, theirs = wide_table(rows), ref.table()
    methods = means.index.get_level_values(0)
    deltas = {ours: means[ours].to_numpy() - theirs[column].reindex(methods).to_numpy()
              for ours, column in ref.matches(with_columns(rows)).items() if ours in means.columns}
    return pd.DataFrame(deltas, index=means.index)


def failures(rows: pd.DataFrame, status: str | None = None) -> pd.DataFrame:
    """Cells that did not score: failed ones (any status but ok and n/a), or those of one ``status``."""
    picked = rows["status"] == status if status else ~rows["status"].isin(SETTLED)
    bad = rows[picked].drop_duplicates(["method", "task", "backbone"])
    return bad[["method", "task", "backbone", "status", "message"]]


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return table.to_csv(float_format="%.4g")
    if fmt == "latex":
        return latex_table(table)
    return table.to_markdown(floatfmt=".3f")


def interval_note(detail: pd.DataFrame) -> str:
    keys = {c.split(" ", 1)[1] for c in detail.columns if " " in c}
    if not keys:
        return ""
    parts = []
    if "sd" in keys:
        parts.append("mean ± sd over seeds")
    if "lo" in keys:
        parts.append(f"[{LEVEL:.0%} bootstrap interval over images, {N_BOOT} resamples per seed]")
    if "diff_lo" in keys:
        parts.append(f"+ / −: the paired {LEVEL:.0%} interval of the difference from {BASELINE} excludes 0 "
                     f"(better / worse than {BASELINE})")
    return "Cells: " + "; ".join(parts) + "."


def seeds_note(rows: pd.DataFrame) -> str:
    """Where rows of one task's columns were scored at different seeds: a seed moves every row together (it
    draws the generated images), so a row's mean is over its own seeds and compares only with rows at the same
    seeds; a row at other seeds than the baseline's carries no +/− mark (bench.reporting.intervals)."""
    ok = with_columns(rows)
    ok["part"] = [c[: -len(m) - 1] for c, m in zip(ok["column"], ok["metric"])]  # the column less its metric
    seeds = ok.groupby(["part", "method"], sort=False)["seed"].agg(lambda s: tuple(sorted(set(s))))
    parts = []
    for part, per in seeds.groupby(level=0, sort=False):
        per = per.droplevel(0)
        if per.nunique() > 1:
            parts.append(f"{part}: " + "; ".join(
                f"seed{'s' if len(at) > 1 else ''} {', '.join(map(str, at))} ({', '.join(per[per == at].index)})"
                for at in sorted(per.unique(), key=lambda at: (-len(at), at))))
    if not parts:
        return ""
    every = ",".join(map(str, sorted(set(ok["seed"]))))
    return ("Rows scored at different seeds (a row's mean is over its own seeds, and a row at other seeds than "
            f"{BASELINE}'s has no +/− mark): " + " · ".join(parts) + f". `run --seeds {every}` scores a row at "
            "every seed the table holds.")


def reference_note(methods: list[str]) -> str:
    """The legend of the table's reference rows (colour_only), or "" where it has none."""
    refs = [m for m in methods if is_reference(m)]
    if not refs:
        return ""
    return (f"Reference row{'s' if len(refs) > 1 else ''} {', '.join(refs)}: not an upsampler but the image's colour "
            f"statistics alone (no backbone), scored by the same probes and heads: how much of each task the image's "
            f"colour gives away. Never marked against {BASELINE}, and left out of rank agreement.")


def comparison_with(records: list[dict[str, Any]], rows: pd.DataFrame, ref: Reference) -> Comparison:
    """How the cells behind the run's columns that ``ref`` has were made (``records``: those the table shows),
    against how its numbers were."""
    ok = with_columns(rows)
    compared = ok[ok["column"].isin(ref.matches(ok))]
    return ref.compare(RunSetting.of(compared, records))


def reference_notes(detail: pd.DataFrame, metrics: pd.DataFrame, columns: dict[str, str], ref: Reference,
                    comparison: Comparison) -> list[str]:
    """The lines under a table set beside ``ref``: the protocol line, unchecked rows, τ where ranks compare, and
    its note."""
    methods = list(detail.index.get_level_values(0).unique())
    notes = [comparison.line(), ref.unconfirmed_note(methods)]
    if comparison.ranks:
        means = detail[[c for c in detail.columns if " " not in c]]
        notes.append(agreement_text(rank_agreement(means, ref.ranked(), columns,
                                                   metrics["higher_is_better"].to_dict()), ref.name))
    return notes + [ref.note]


def training_note(records: list[dict[str, Any]]) -> str:
    """How long each trained row's weights were trained: a row's number says little of a method trained for a
    few steps, and the smoke profile trains for 3 (a check of the plumbing, not of the method)."""
    steps: dict[str, set[str]] = {}
    for rec in records:
        recipe = rec.get("recipe", {})
        if "train_data" not in recipe:
            continue
        weights = recipe.get("weights") or {}
        told = {"shipped": f"{weights.get('steps')} steps (shipped)", "file": f"weights file {weights.get('file')}"}
        steps.setdefault(rec["cell"]["method"], set()).add(
            told.get(weights.get("source"), f"{recipe.get('profile', {}).get('train_steps')} steps"))
    if not steps:
        return ""
    smoke = any(rec["cell"]["profile"] == "smoke" and rec["cell"]["method"] in steps for rec in records)
    return ("Trained rows: " + "; ".join(f"{m} {', '.join(sorted(s))}" for m, s in sorted(steps.items())) + "."
            + (" The smoke profile's few training steps check the plumbing: these rows are not the methods' "
               "numbers." if smoke else ""))


def changed_code_note(records: list[dict[str, Any]]) -> str:
    """Built-in methods whose module changed since their cells were scored, at the same version: their rows are
    the old code's until rescored (plugins are keyed by their code, so their rows always are their code's)."""
    changed = changed_code(records)
    return ("Code changed since these cells were scored (same version): " + ", ".join(
        f"{name} (v{version})" for name, version in changed) + ". Their rows are the old code's; "
            "`run --rerun all -m NAME` rescores them.") if changed else ""


def stale_note(records: list[dict[str, Any]], planned: dict[tuple, str] | None) -> str:
    """The cells left out because today's code or profile gives them another recipe (``planned``)."""
    stale = sorted({f"{r['cell']['method']} / {r['cell']['task']}" for r in records if is_stale(r, planned)})
    return (f"Left out, scored under another recipe or code than today's: {', '.join(stale)} (a run scores them "
            f"again).") if stale else ""


def table_text(run_dir: str | Path, fmt: str = "md", vs: str | None = None,
               planned: dict[tuple, str] | None = None) -> str:
    """The run's table as text.

    csv keeps numbers only (means, then sd, lo, hi, diff_lo, diff_hi columns where they exist); latex
    is a booktabs tabular with one cell per metric (latex_cells); markdown puts them in one cell per metric and
    adds failed cells, a legend, and with ``vs`` (a reference: "featup", the paper; "jafar", ...) its numbers, a
    line on whether the run's protocol is the reference's, the rank agreement where ranks compare, and its note.
    The user asked for ``vs``, so its numbers are set beside ours even where the protocols differ.
    ``planned`` (cell key -> today's config hash) leaves out cells an older recipe or code scored.
    """
    store = ResultStore(run_dir)
    everything = store.records()
    records = store.current_records(planned, everything)
    rows = store.rows(per_image=True, records=records)
    detail, metrics = detail_table(rows), column_metrics(rows)
    ref = reference(vs) if vs else None
    columns = ref.matches(with_columns(rows)) if ref else {}
    if fmt == "latex":
        return latex_results(detail, metrics, columns, ref)
    table = display_table(detail, metrics["higher_is_better"].to_dict()) if fmt == "md" else detail
    text = render(with_reference(table, columns, ref) if ref else table, fmt)
    if fmt != "md":
        return text
    notes = [interval_note(detail), seeds_note(rows), reference_note(detail.index.get_level_values(0).unique()),
             training_note(records), changed_code_note(records), stale_note(everything, planned)]
    bad = failures(rows)
    if not bad.empty:
        notes.append("Failed cells:\n\n" + "\n".join(
            f"- {r.method} / {r.task} ({r.backbone}): {r.status}: {str(r.message).splitlines()[0]}"
            for r in bad.itertuples()))
    skipped = failures(rows, "n/a")
    if not skipped.empty:
        notes.append("Not applicable (empty cells): " + "; ".join(
            f"{r.method} / {r.task}: {str(r.message).splitlines()[0]}" for r in skipped.itertuples()))
    if ref:
        notes += reference_notes(detail, metrics, columns, ref, comparison_with(records, rows, ref))
    return "\n\n".join([text, *[n for n in notes if n]])
