"""A run's report: one Markdown text (table beside the paper, figures, failures, recipes, provenance),
written as ``report.md`` with its figures under ``figures/``, and as ``report.html``, the same text
converted by Python-Markdown with the figures embedded as base64, so the page is one file to share.
"""
from __future__ import annotations

import base64
import html
import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.reporting.references import DIFFERS, SAME, reference_for
from bench.reporting.report import comparison_with, reference_deltas, render, table_text
from bench.core.failures import SETTLED
from bench.core.store import ResultStore

METHOD_KEYS = ("method_version", "train_data")
"""Recipe keys that differ between the methods of one task; the rest is the task's recipe."""
HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;vertical-align:bottom}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}summary{cursor:pointer}"""


def run_settings(records: list[dict[str, Any]]) -> tuple[str, str, int]:
    """The (profile, backbone, seed) most of the run's cells used: what the figures are made with."""
    counts = Counter((r["cell"]["profile"], r["cell"]["backbone"], r["cell"]["seed"]) for r in records)
    return counts.most_common(1)[0][0]


def summary_section(run_dir: Path, records: list[dict[str, Any]]) -> str:
    statuses = Counter(r["status"] for r in records)
    commits = sorted({r["provenance"].get("git_commit", "?") for r in records})
    devices = sorted({r["provenance"].get("device", "?") for r in records})
    profile, backbone, _ = run_settings(records)
    return "\n".join([
        f"Run folder `{run_dir}`; report written {datetime.now(timezone.utc).isoformat(timespec='seconds')}.", "",
        f"- {len(records)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
        f"- profile `{profile}`, backbone `{backbone}`",
        f"- code: {', '.join(f'`{c}`' for c in commits)}; devices: {', '.join(devices)}",
    ])


def table_section(run_dir: Path, records: list[dict[str, Any]], rows: pd.DataFrame, profile: str) -> str:
    """Our table beside the published one made in the run's setting, with the differences from it where the run's
    protocol is the table's; alone, with one line saying why, where it is not."""
    ref = reference_for(profile)
    comparison = comparison_with(records, rows, ref)
    if comparison.kind == DIFFERS:
        return "\n".join(["## Results", "", comparison.why_not(), "", table_text(run_dir, "md")])
    parts = [f"## Results beside the {ref.label} table", "",
             f"Each cell: our number, then the reference's in the `({ref.label})` column beside it.", "",
             table_text(run_dir, "md", vs=ref.name)]
    deltas = reference_deltas(rows, ref).dropna(how="all") if comparison.kind == SAME else pd.DataFrame()
    if not deltas.empty:
        parts += ["", "Ours minus the reference (same columns as above; methods the reference does not have are "
                      "left out):", "", render(deltas, "md")]
    return "\n".join(parts)


def failures_section(records: list[dict[str, Any]]) -> str:
    bad = [r for r in records if r["status"] not in SETTLED]
    if not bad:
        return "## Failed cells\n\nNone: every cell scored (or does not apply)."
    parts = ["## Failed cells", ""]
    for r in bad:
        c = r["cell"]
        parts += [f"**{c['method']} / {c['task']}** ({c['backbone']}, {c['dataset']}, seed {c['seed']}): "
                  f"`{r['status']}`", "", "```", r["message"].strip(), "```", ""]
    return "\n".join(parts)


def recipes_section(records: list[dict[str, Any]]) -> str:
    """The recipe of each (task, dataset, seed), shared by its methods; per-method keys in the provenance table."""
    parts = ["## Recipes", "", "What produced every number of a task column (the methods of one task share it; "
             "method versions and training data are in the provenance table below).", ""]
    seen = set()
    for r in sorted(records, key=lambda r: (r["cell"]["task"], r["cell"]["dataset"], r["cell"]["seed"])):
        c = r["cell"]
        key = (c["task"], c["dataset"], c["seed"])
        if key in seen:
            continue
        seen.add(key)
        recipe = {k: v for k, v in r["recipe"].items() if k not in METHOD_KEYS}
        parts += [f'<details markdown="1"><summary>{html.escape(c["task"])} on {html.escape(c["dataset"])}, '
                  f'seed {c["seed"]}</summary>', "", "```json", json.dumps(recipe, indent=1, sort_keys=True), "```",
                  "", "</details>", ""]
    return "\n".join(parts)


def provenance_section(records: list[dict[str, Any]]) -> str:
    table = pd.DataFrame([{
        "method": r["cell"]["method"], "task": r["cell"]["task"], "dataset": r["cell"]["dataset"],
        "seed": r["cell"]["seed"], "status": r["status"], "config hash": r["config_hash"],
        "method v": r["provenance"].get("method_version"), "task v": r["provenance"].get("task_version"),
        "trained on": (r["recipe"].get("train_data") or {}).get("label", ""),
        "git commit": str(r["provenance"].get("git_commit", ""))[:12], "device": r["provenance"].get("device"),
        "torch": r["provenance"].get("packages", {}).get("torch"), "started": r["provenance"].get("started", "")[:19],
        "wall s": r["provenance"].get("wall_s"), "peak MB": r["provenance"].get("peak_mb"),
    } for r in sorted(records, key=lambda r: (r["cell"]["task"], r["cell"]["method"], r["cell"]["seed"]))])
    return "## Provenance of every number\n\n" + table.to_markdown(index=False)


def figures_section(run_dir: Path, out_dir: Path, records: list[dict[str, Any]], device: torch.device,
                    weights: str | None, sizes: list[int], photos: int, progress: bool) -> str:
    """Make the figures under ``out_dir/figures`` and describe them."""
    from bench.backbones import load_backbone
    from bench.data import load_dataset
    from bench.fitting.ablation import plot_curves, summary_line
    from bench.profiling.profile import plot_profile
    from bench.reporting.figures import pca_figure, profile_results
    from bench.core.context import RunContext
    from bench.core.profiles import PROFILES

    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    profile_name, backbone_name, seed = run_settings(records)
    methods = list(dict.fromkeys(r["cell"]["method"] for r in records))
    profile = PROFILES.get(profile_name).with_overrides(seed=seed)
    folders = {d["name"]: d["path"] for d in ResultStore(run_dir).manifest()["data"].values() if "path" in d}
    context = RunContext(profile=profile, device=device, data_paths=folders, progress=progress)
    backbone = load_backbone(backbone_name, weights, device)
    data = load_dataset("photos", "val", profile.image_size, limit=photos)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    left_out = pca_figure(methods, backbone, images, context, figures / "pca.png")
    parts = ["## Figures", "", "### Feature PCA", "", "![Feature PCA per method](figures/pca.png)", "",
             f"The first {len(images)} embedded validation photographs (`photos`, {profile.image_size[0]}×"
             f"{profile.image_size[1]} px) through `{backbone_name}` and each method of the run, fitted as the run "
             "fits it (trained weights and per-image fits come from the cache). Features are channel-standardised "
             "per pixel and shown as their first three principal components (RGB). One basis per photograph for "
             "all its panels: the components and colour range (1st–99th percentile) of the backbone's own "
             "low-resolution features of it, so within a column (one photograph) equal colours mean equal "
             "feature directions across methods."]
    parts += [""] + [f"- left out: {m}: {msg}" for m, msg in left_out.items()]
    df, source = profile_results(run_dir, out_dir, methods, sizes, backbone.dim, str(device), progress)
    plot_profile(df, figures / "profile.png")
    parts += ["", "### Time and memory against resolution", "", "![Time and memory per method](figures/profile.png)",
              "", f"Per image, ×16 upsampling from the stride-16 grid; {source}. Timings on a shared machine "
                  "are noisy: compare methods measured together, not with other machines."]
    failed = df[df["status"] != "ok"].drop_duplicates("method")
    parts += [""] + [f"- not profiled: {r.method}: {r.status}: {str(r.message).splitlines()[0]}"
                     for r in failed.itertuples()]
    ablation = run_dir / "ablate-fourier"
    parts += ["", "### Fourier ablation", ""]
    if (ablation / "loss_curves.csv").is_file():
        plot_curves(pd.read_csv(ablation / "loss_curves.csv"), figures / "fourier_ablation.png")
        parts += ["![Fourier ablation](figures/fourier_ablation.png)", "",
                  f"Implicit FeatUp fitted with and without Fourier features, from `{ablation}`."]
        if (ablation / "final_errors.csv").is_file():
            parts += ["", summary_line(pd.read_csv(ablation / "final_errors.csv")) + "."]
    else:
        parts += [f"The run has none (`run_bench.py ablate fourier --out {ablation}` makes it)."]
    sweeps = [run_dir / "ablate-colour", SHIPPED_SWEEPS / run_dir.name]
    return "\n".join(parts + ["", budget_section(budget_studies(run_dir), figures),
                              "", colour_section(next((s for s in sweeps if s.is_dir()), sweeps[0]), figures)])


SHIPPED_STUDIES = Path(__file__).resolve().parents[2] / "results" / "budget"
"""The budget studies behind the shipped weights, by run-folder name (e.g. default-efficientnet_lite0_s16, and
default-efficientnet_lite0_s16-materials for a later study of the same profile)."""


def budget_studies(run_dir: Path) -> list[Path]:
    """The run's own study (``ablate-budget/``), else the shipped studies named after its folder."""
    if (run_dir / "ablate-budget").is_dir():
        return [run_dir / "ablate-budget"]
    named = [SHIPPED_STUDIES / run_dir.name, *SHIPPED_STUDIES.glob(f"{run_dir.name}-*")]
    return sorted(p for p in named if p.is_dir())


SHIPPED_SWEEPS = Path(__file__).resolve().parents[2] / "results" / "colour"
"""The colour sweeps of the shipped tables, by run-folder name."""


def colour_section(sweep: Path, figures: Path) -> str:
    """The colour sweep (``ablate colour``): probe_seg against the data's colour level, when there is one."""
    from bench.reporting.colour import CSV, plot_sweep

    parts = ["### Colour sweep", ""]
    if not (sweep / CSV).is_file():
        return "\n".join(parts + [f"The run has none (`run_bench.py ablate colour --out {sweep}` makes it)."])
    table = pd.read_csv(sweep / CSV)
    plot_sweep(table, figures / "colour.png")
    shown = table[table["metric"] == "probe_seg.miou"].pivot_table(index="method", columns="level", values="mean")
    return "\n".join(parts + [
        "![probe_seg mIoU against the data's colour level](figures/colour.png)", "",
        shown.round(2).reset_index().to_markdown(index=False), "",
        f"From `{sweep}`: `materials` at colour levels from 0 (each class its own colour, every boundary a colour "
        f"step) to 1 (colour says nothing of the class); mean over probe seeds. A method that falls as the level "
        f"rises leaned on the image's colour; `colour_only` shows how much colour alone gave."])


def budget_section(studies: list[Path], figures: Path) -> str:
    """The training-budget studies' curves (bench.running.budget), each with the data it was scored on."""
    from bench.reporting.budget import CSV, FITS_PNG, PNG, plot_budget

    parts = ["### Training budget", ""]
    found = [s for s in studies if (s / CSV).is_file()]
    if not found:
        return "\n".join(parts + [f"The run has none (`run_bench.py ablate budget --out "
                                  f"{studies[0] if studies else 'DIR'}` makes it)."])
    for study in found:
        curves = pd.read_csv(study / CSV)
        for scored_on, png, fits, what in (
                ("full", PNG, False, "training view-images"),
                ("subset", FITS_PNG, True, "per-image fit steps, on a subset of the probe images")):
            part = curves[curves["scored_on"] == scored_on]
            if part.empty:
                continue
            name = f"{study.name}-{png}" if len(found) > 1 else png
            plot_budget(part, figures / name, fits=fits)
            parts += [f"![Probe scores against {what}](figures/{name})", ""]
            table = part[part["kind"] != "reference"].pivot_table(index=["method", "steps"], columns="metric",
                                                                  values="mean")
            parts += [table.round(4).reset_index().to_markdown(index=False), ""]
        parts += [f"From `{study}`{scored_data(study)}: mean over probe seeds, the references (methods that learn "
                  f"nothing) as lines.", ""]
    return "\n".join(parts[:-1])


def scored_data(study: Path) -> str:
    """", scored on <seg> and <depth> data" from the study's record, where it has one."""
    profile = json.loads((study / "study.json").read_text())["profile"] if (study / "study.json").is_file() else {}
    data = [profile.get(k) for k in ("seg_data", "depth_data")] + list(profile.get("extra_data", []))
    return f", scored on {', '.join(d for d in data if d)}" if any(data) else ""


def to_html(markdown_text: str, out_dir: Path, title: str) -> str:
    """The Markdown as one HTML page, each figure embedded as a base64 data URI."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "md_in_html"])

    def embed(match: re.Match) -> str:
        data = base64.b64encode((out_dir / match.group(1)).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="(figures/[^"]+\.png)"', embed, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write_report(run_dir: Path, out_dir: Path, device: torch.device, weights: str | None = None,
                 sizes: tuple[int, ...] = (56, 112, 224), photos: int = 3, progress: bool = True) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``figures/``) and the self-contained ``report.html``; returns their paths."""
    store = ResultStore(run_dir)
    records = store.current_records()
    if not records:
        raise FileNotFoundError(f"no cells in {run_dir}: nothing to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"featup-bench report: {run_dir.name}"
    text = "\n\n".join([
        f"# {title}", summary_section(run_dir, records),
        table_section(run_dir, records, store.rows(records=records), run_settings(records)[0]),
        figures_section(run_dir, out_dir, records, device, weights, list(sizes), photos, progress),
        failures_section(records), recipes_section(records), provenance_section(records),
    ]) + "\n"
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(text)
    html_path.write_text(to_html(text, out_dir, title))
    return md_path, html_path
