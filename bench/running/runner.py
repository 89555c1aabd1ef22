"""Run every (method, task) cell, write each as it finishes, keep going when one fails."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from bench.backbones.names import resolve_spec
from bench.backbones import Backbone, cache_key
from bench.data.common import DatasetError
from bench.data.identity import dataset_identity
from bench.fitting import fit_method
from bench.fitting.train import weights_source
from bench.fitting.weights import has_shipped
from bench.profiling.memory import peak_memory
from bench.registry import DATASETS, METHODS, TASKS
from bench.core.cells import Cell
from bench.core.context import RunContext
from bench.core.profiles import Profile
from bench.core.failures import SETTLED, failure
from bench.core.provenance import provenance
from bench.core.store import ResultStore
from bench.plugins import changed_code, method_code, plugins_of

if TYPE_CHECKING:
    from methods.base import Upsampler
    from tasks.base import Task

RERUN_POLICIES = ("missing", "failed", "all")


@dataclass
class RunSummary:
    done: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    kept_failed: list[Cell] = field(default_factory=list)
    """Failures of an earlier run that this run did not retry (``--rerun failed`` does)."""


def data_identities(names: list[str], context: RunContext, missing: dict[str, str] | None = None) -> dict[str, dict]:
    """Dataset name -> identity (bench.data.identity) for each name, every folder fingerprinted once. With
    ``missing``, a dataset that cannot be read is recorded there (name -> why) instead of raising."""
    out = {}
    for name in dict.fromkeys(names):
        try:
            out[name] = dataset_identity(name, context.data_paths.get(name))
        except DatasetError as exc:
            if missing is None:
                raise
            missing[name] = str(exc).splitlines()[0]
    return out


def plan(
    methods: list[str], tasks: list[str], backbone: str, context: RunContext, seeds: list[int] | None = None,
    missing: dict[str, str] | None = None,
) -> list[tuple[Cell, dict]]:
    """The cells to score with their recipes; unknown names and missing data folders fail here, before any work.

    A task is scored on the profile's dataset of its kind and on each of the profile's
    ``extra_data`` of that kind, once per seed (default: the profile's). A cell's dataset is its
    data's identity label, and its recipe holds the whole identity (a folder's path and
    fingerprint; for trained methods the training data's too), so results of other data are
    never taken for this data's. With ``missing`` (the dry run), cells of a dataset that cannot be read are
    left out and the dataset recorded there; a trained method whose training data is missing is planned
    with that data's name alone.
    """
    p = context.profile
    task_objs = [TASKS.get(name)() for name in tasks]
    method_classes = [METHODS.get(name) for name in methods]
    datasets = {t.name: task_datasets(t, p) for t in task_objs}
    trains = any(m.fit == "dataset" for m in method_classes)
    data = data_identities([d for names in datasets.values() for d in names] + ([p.train_data] if trains else []),
                           context, missing)
    codes = {name: method_code(cls) for name, cls in zip(methods, method_classes)}
    cells = []
    for seed in seeds or [p.seed]:
        for task in task_objs:
            for rank, name in enumerate(datasets[task.name]):
                if name not in data:
                    continue
                scored_with = cell_profile(p, task.data_kind, name, seed)
                for method_name, method_cls in zip(methods, method_classes):
                    cell = Cell(method_name, task.name, backbone, data[name]["label"], p.name, seed)
                    recipe = {**task.recipe(scored_with), "data": data[name], "primary_data": rank == 0,
                              "method_version": method_cls.version, "profile": scored_with.recipe()}
                    if "plugin" in codes[method_name]:  # an edited plugin is rescored, whatever its version says
                        recipe["method_code"] = codes[method_name]["plugin"]
                    if method_cls.fit == "dataset":
                        train = data.get(p.train_data)
                        recipe["train_data"] = train or {"name": p.train_data, "label": "missing"}
                        # shipped weights are matched on the training data's identity, which a dry run may lack
                        weights = None if train is None and method_name not in context.weights else \
                            weights_record(method_cls, backbone, replace(context, profile=scored_with))
                        if weights is not None:
                            recipe["weights"] = weights
                    cells.append((cell, recipe))
    return cells


def task_datasets(task: "Task", profile: Profile) -> list[str]:
    """The datasets a task's cells are scored on: the profile's of the task's kind, then its ``extra_data`` of that
    kind (the plan and the dry run's count of cells that wait for data agree on them)."""
    return [task.dataset(profile), *[d for d in profile.extra_data if DATASETS.get(d).kind == task.data_kind]]


def weights_record(method_cls: type, backbone: str, context: RunContext) -> dict[str, Any] | None:
    """What a trained method's cell records of the weights given for it (a file, or shipped ones); None
    when it trains into the cache, whose recipe the profile already fixes."""
    if method_cls.name not in context.weights and (context.retrain or not has_shipped(
            method_cls.name, cache_key(SimpleNamespace(name=backbone, normalisation=context.profile.normalisation)))):
        return None  # trains into the cache: the training recipe is fixed by the profile, and not fingerprinted again
    spec = resolve_spec(backbone)
    stand_in = SimpleNamespace(name=backbone, normalisation=context.profile.normalisation, dim=spec.dim,
                               stride=spec.stride)
    return weights_source(method_cls, stand_in, context).record()


def should_run(status: str | None, rerun: str) -> bool:
    if rerun not in RERUN_POLICIES:
        raise ValueError(f"--rerun {rerun!r}: expected one of {', '.join(RERUN_POLICIES)}")
    return rerun == "all" or status is None or (rerun == "failed" and status not in SETTLED)


def cell_profile(profile: Profile, kind: str, dataset: str, seed: int) -> Profile:
    """The profile a cell is planned and scored with: its dataset as its task's kind of data, and its seed."""
    return replace(profile.with_data(**{kind: dataset}), seed=seed)


def cell_context(cell: Cell, recipe: dict[str, Any], context: RunContext) -> RunContext:
    """The run's context with the profile this cell was planned with (cell_profile, from its stored recipe)."""
    return replace(context, profile=cell_profile(context.profile, TASKS.get(cell.task).data_kind, recipe["data"]["name"],
                                                 cell.seed))


def create_method(name: str, backbone: Backbone, seed: int) -> "Upsampler":
    """The registered method ``name`` built for ``backbone`` with the initial weights of ``seed``: a run's
    cells, ``train`` and the budget study all start a training from the same weights."""
    torch.manual_seed(seed)
    return METHODS.get(name).create(backbone)


def fitted_method(cell: Cell, backbone: Backbone, context: RunContext) -> Upsampler:
    """The cell's method, created under the cell's seed (its initial weights) and fitted as it declares.

    ``context`` is the cell's (``cell_context``). Ray's fit stage calls this too, so weights it
    trains start from the same initial weights as a local run's.
    """
    method = create_method(cell.method, backbone, cell.seed).to(context.device)
    fit_method(method, backbone, context, TASKS.get(cell.task)().images(context) if method.fit == "image" else ())
    return method


def score_cell(cell: Cell, recipe: dict[str, Any], backbone: Backbone, context: RunContext) -> list[dict[str, Any]]:
    context = cell_context(cell, recipe, context)
    method = fitted_method(cell, backbone, context)
    method.eval()
    rows = TASKS.get(cell.task)().run(method, backbone, context)
    return [vars(r) for r in rows]


Executor = Callable[[list[tuple[Cell, dict]], RunContext], Iterable[tuple[Cell, dict, dict]]]
"""Scores the cells to do and yields (cell, recipe, record) as each finishes, in any order."""


def cell_record(cell: Cell, recipe: dict[str, Any], context: RunContext, outcome: tuple[str, str, list],
                started: str, wall_s: float, peak_mb: float) -> dict[str, Any]:
    """The stored record of one cell: its (status, message, metrics) outcome, recipe and provenance."""
    status, message, metrics = outcome
    return {
        "cell": vars(cell), "status": status, "message": message, "metrics": metrics, "recipe": recipe,
        "config_hash": cell.config_hash(recipe),
        "provenance": {**provenance(context.device), "method_version": recipe["method_version"],
                       "method_code": method_code(METHODS.get(cell.method)),
                       "task_version": recipe["task_version"], "started": started,
                       "wall_s": round(wall_s, 3), "peak_mb": round(peak_mb, 1)},
    }


def execute_cell(cell: Cell, recipe: dict[str, Any], backbone: Backbone, context: RunContext) -> dict[str, Any]:
    """Score one cell, timed and with its peak memory; a failure becomes the record's status and message."""
    started = datetime.now(timezone.utc).isoformat()
    t0 = time.perf_counter()
    outcome: tuple[str, str, list] = ("ok", "", [])
    with peak_memory(context.device) as peak:
        try:
            outcome = ("ok", "", score_cell(cell, recipe, backbone, context))
        except Exception as exc:  # a broken cell is recorded, the run goes on
            outcome = (*failure(exc), [])
    return cell_record(cell, recipe, context, outcome, started, time.perf_counter() - t0, peak.mb)


def local_executor(backbone: Backbone) -> Executor:
    """Cells one after the other in this process."""

    def execute(todo: list[tuple[Cell, dict]], context: RunContext) -> Iterator[tuple[Cell, dict, dict]]:
        for cell, recipe in todo:
            yield cell, recipe, execute_cell(cell, recipe, backbone, context)

    return execute


def run_cells(
    cells: list[tuple[Cell, dict]], backbone: Backbone | None, context: RunContext, out_dir: Path,
    rerun: str = "missing", executor: Executor | None = None, shard: str | None = None,
) -> RunSummary:
    """Score the cells ``rerun`` selects with ``executor`` (default: here, on ``backbone``), writing each as it ends.

    ``shard`` ("k/N") is recorded in ``run.json`` so ``merge`` can tell which shards it was given.
    """
    store = ResultStore(out_dir)
    with store.lock():
        identities = [r[k] for _, r in cells for k in ("data", "train_data") if k in r]
        store.record_data(identities, shard, plugins_of([cell.method for cell, _ in cells]))
        return _run_locked(cells, executor or local_executor(backbone), context, store, rerun)


def _run_locked(
    cells: list[tuple[Cell, dict]], execute: Executor, context: RunContext, store: ResultStore, rerun: str
) -> RunSummary:
    summary = RunSummary()
    todo, kept = [], []
    for cell, recipe in cells:
        stored = store.record(cell, recipe)
        status = stored and stored.get("status")
        if should_run(status, rerun):
            todo.append((cell, recipe))
        else:
            summary.skipped.append(cell)
            kept.append(stored)
            if status not in SETTLED:
                summary.kept_failed.append(cell)
    for name, version in changed_code(kept):
        tqdm.write(f"warning: {name}'s code changed since its cells were scored, its version ({version}) did "
                   f"not: the cells kept are the old code's. Bump its version, or `--rerun all -m {name}`")
    bar = tqdm(total=len(todo), desc="cells", disable=not context.progress or not todo)
    for cell, recipe, record in execute(todo, context):
        path = store.write(cell, recipe, record)
        bar.set_postfix_str(f"done: {cell.method} / {cell.task} / seed {cell.seed}", refresh=False)
        bar.update(1)
        if record["status"] in SETTLED:
            summary.done.append(cell)
        else:
            first_line = record["message"].splitlines()[0]
            summary.failed.append((cell, first_line))
            tqdm.write(f"[{record['status']}] {cell.method} / {cell.task}: {first_line} (traceback in {path})")
    bar.close()
    return summary

