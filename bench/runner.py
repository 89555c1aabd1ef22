"""Run every (method, task) cell, write each as it finishes, keep going when one fails."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.backbones import Backbone
from bench.cells import Cell
from bench.context import RunContext
from bench.failures import describe_failure
from bench.memory import peak_memory
from bench.provenance import provenance
from bench.registry import METHODS, TASKS
from bench.store import ResultStore

RERUN_POLICIES = ("missing", "failed", "all")


@dataclass
class RunSummary:
    done: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)


def plan(methods: list[str], tasks: list[str], backbone: str, context: RunContext) -> list[tuple[Cell, dict]]:
    """The cells to score with their recipes; unknown names fail here, before any work."""
    p = context.profile
    cells = []
    for task_name in tasks:
        task = TASKS.get(task_name)()
        for method_name in methods:
            method_cls = METHODS.get(method_name)
            cell = Cell(method_name, task_name, backbone, task.dataset(p), p.name, p.seed)
            recipe = {**task.recipe(p), "method_version": method_cls.version, "profile": p.recipe()}
            cells.append((cell, recipe))
    return cells


def should_run(status: str | None, rerun: str) -> bool:
    if rerun not in RERUN_POLICIES:
        raise ValueError(f"--rerun {rerun!r}: expected one of {', '.join(RERUN_POLICIES)}")
    return rerun == "all" or status is None or (rerun == "failed" and status != "ok")


def score_cell(cell: Cell, backbone: Backbone, context: RunContext) -> list[dict[str, Any]]:
    torch.manual_seed(cell.seed)
    method = METHODS.get(cell.method).create(backbone).to(context.device)
    method.prepare(backbone, context)
    method.eval()
    rows = TASKS.get(cell.task)().run(method, backbone, context)
    return [vars(r) for r in rows]


def run_cells(
    cells: list[tuple[Cell, dict]], backbone: Backbone, context: RunContext, out_dir: Path, rerun: str = "missing"
) -> RunSummary:
    store = ResultStore(out_dir)
    summary = RunSummary()
    todo = []
    for cell, recipe in cells:
        (todo if should_run(store.status(cell, recipe), rerun) else summary.skipped).append((cell, recipe))
    bar = tqdm(todo, desc="cells", disable=not context.progress)
    for cell, recipe in bar:
        bar.set_postfix_str(f"{cell.method} / {cell.task}")
        started = datetime.now(timezone.utc).isoformat()
        t0 = time.perf_counter()
        status, message, metrics = "ok", "", []
        with peak_memory(context.device) as peak:
            try:
                metrics = score_cell(cell, backbone, context)
            except Exception as exc:  # a broken cell is recorded, the run goes on
                status, message = describe_failure(exc)
                if status == "error":
                    message += f"\n{traceback.format_exc(limit=-3)}"
        record = {
            "cell": vars(cell), "status": status, "message": message, "metrics": metrics, "recipe": recipe,
            "config_hash": cell.config_hash(recipe),
            "provenance": {**provenance(context.device), "method_version": recipe["method_version"],
                           "task_version": recipe["task_version"], "started": started,
                           "wall_s": round(time.perf_counter() - t0, 3), "peak_mb": round(peak.mb, 1)},
        }
        store.write(cell, recipe, record)
        if status == "ok":
            summary.done.append(cell)
        else:
            summary.failed.append((cell, message.splitlines()[0]))
            tqdm.write(f"[{status}] {cell.method} / {cell.task}: {message.splitlines()[0]}")
    return summary
