"""Cells as Ray tasks, on a small local Ray instance or an existing cluster (``--ray-address``).

Fitting comes first and once: the cells of one (method, seed) that need trained weights or
per-image fits share one fit task, which trains the weights or fits every image those cells
will score into the caches (``<cache_dir>/weights``, ``<cache_dir>/fits``); likewise one task per
(task, dataset, seed) prepares what its cells share (``Task.prepare``: CAM's classifier). The cells
depend on both and then only load, so no two workers ever train or fit the same thing. Records
come back to the driver, which writes each one to the run's store as it arrives (the same atomic
writes as a local run), so a killed run loses only the cells in flight. On a cluster, every node
must see the same repository and cache folder (a shared filesystem) and have the package installed.
"""
from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from bench.core.cells import Cell
from bench.core.context import RunContext

if TYPE_CHECKING:
    from bench.backbones import Backbone
    from bench.running.runner import Executor

LOCAL_CPUS = 2
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
OBJECT_STORE_BYTES = 100 * 2**20
"""Records are a few KB; Ray refuses less than 75 MB."""


@functools.lru_cache(maxsize=2)
def _worker_backbone(name: str, weights: str | None, device: str, plugins: tuple[str, ...],
                     normalisation: str) -> "Backbone":
    """Load the registries (built-ins and plugins) and the backbone once per worker process (Ray reuses
    workers); every task calls it before it looks a name up."""
    from bench.backbones import load_backbone
    from bench.plugins import load_all

    load_all(list(plugins))
    return load_backbone(name, weights, device, normalisation)


def _fit_group(spec: tuple, group: list[tuple[Cell, dict]], context: RunContext) -> list[tuple[str, str] | None]:
    """Train or fit what each cell of one (method, seed) needs, in order; per cell its failure or None.

    A failed cell does not stop the others: like a local run, the next cell tries again.
    """
    from bench.core.failures import failure
    from bench.running.runner import cell_context, fitted_method

    outcomes: list[tuple[str, str] | None] = []
    for cell, recipe in group:
        try:
            fitted_method(cell, _worker_backbone(*spec), cell_context(cell, recipe, context))
            outcomes.append(None)
        except Exception as exc:  # the cell is recorded with this failure, the others go on
            outcomes.append(failure(exc))
    return outcomes


def failed_record(cell: Cell, recipe: dict, context: RunContext, failed: tuple[str, str]) -> dict[str, Any]:
    """The record of a cell that failed before scoring (its fit, or its Ray task)."""
    from bench.running.runner import cell_record

    return cell_record(cell, recipe, context, (*failed, []), datetime.now(timezone.utc).isoformat(), 0.0, 0.0)


def _prepare(spec: tuple, cell: Cell, recipe: dict, context: RunContext) -> tuple[str, str] | None:
    """Train or load what the task's cells share (Task.prepare); the failure (status, message) or None."""
    from bench.registry import TASKS
    from bench.core.failures import failure
    from bench.running.runner import cell_context

    try:
        backbone = _worker_backbone(*spec)  # first: it loads the registries in this worker
        TASKS.get(cell.task)().prepare(backbone, cell_context(cell, recipe, context))
    except Exception as exc:  # the task's cells are recorded with this failure, the run goes on
        return failure(exc)
    return None


def _score(spec: tuple, cell: Cell, recipe: dict, context: RunContext, prepared: tuple[str, str] | None,
           fitted: list[tuple[str, str] | None] | None = None, index: int = 0) -> dict[str, Any]:
    """One cell's record; a failed task preparation or fit (``fitted[index]``) is the cell's failure, not retried."""
    from bench.running.runner import execute_cell

    failed = prepared or (fitted[index] if fitted else None)
    if failed:
        return failed_record(cell, recipe, context, failed)
    return execute_cell(cell, recipe, _worker_backbone(*spec), context)


def fit_groups(todo: list[tuple[Cell, dict]]) -> dict[tuple[str, int], list[tuple[Cell, dict]]]:
    """The cells of each (method, seed) whose method is fitted (weights or per image), in plan order."""
    from bench.registry import METHODS

    groups: dict[tuple[str, int], list[tuple[Cell, dict]]] = defaultdict(list)
    for cell, recipe in todo:
        if METHODS.get(cell.method).fit != "none":
            groups[(cell.method, cell.seed)].append((cell, recipe))
    return dict(groups)


def absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else path


def lost_worker(exc: Exception, ray: Any) -> tuple[str, str]:
    """(status, message) of a Ray task that did not return: "oom" when Ray's memory monitor killed it
    (or what it waited for), "error" otherwise; the message without Ray's terminal colours."""
    cause = getattr(exc, "cause", None) or exc
    status = "oom" if isinstance(cause, ray.exceptions.OutOfMemoryError) else "error"
    return status, ANSI_COLOUR.sub("", f"{type(cause).__name__}: {cause}")


def start_ray(address: str | None) -> Any:
    """Connect to ``address``, or start a small local instance: LOCAL_CPUS CPUs, no dashboard, a small object store."""
    try:
        import ray
    except ImportError:
        raise ImportError("--executor ray needs Ray: pip install 'featup-bench[ray]' (or pip install ray)") from None
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    else:
        # local workers inherit this process's environment (PYTHONPATH, HF_HUB_OFFLINE, ...)
        ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                 log_to_driver=True)
    return ray


def ray_executor(backbone: str, weights: str | None, plugins: list[str], address: str | None = None) -> "Executor":
    """An executor that scores cells as Ray tasks: one GPU per cell when the run's device is CUDA, else one CPU."""

    def execute(todo: list[tuple[Cell, dict]], context: RunContext) -> Iterator[tuple[Cell, dict, dict]]:
        if not todo:
            return
        ray = start_ray(address)
        try:
            remote = {"num_gpus": 1, "num_cpus": 0} if context.device.type == "cuda" else {"num_cpus": 1}
            fit_task = ray.remote(**remote, max_retries=0)(_fit_group)
            score_task = ray.remote(**remote, max_retries=0)(_score)
            prepare_task = ray.remote(**remote, max_retries=0)(_prepare)
            spec = (backbone, absolute(weights), str(context.device), tuple(map(absolute, plugins)),
                    context.profile.normalisation)
            # workers may start in another folder: every path they read or write is made absolute here
            worker_context = replace(context, progress=False, cache_dir=Path(context.cache_dir).resolve(),
                                     data_paths={k: absolute(v) for k, v in context.data_paths.items()})
            tasks = {(c.task, c.dataset, c.seed): (c, r) for c, r in todo}
            prepared = {key: prepare_task.remote(spec, *first, worker_context) for key, first in tasks.items()}
            fitted = {}  # cell -> (its group's fit task, its place in the group)
            for group in fit_groups(todo).values():
                ref = fit_task.remote(spec, group, worker_context)
                fitted.update({cell: (ref, i) for i, (cell, _) in enumerate(group)})
            pending = {score_task.remote(spec, cell, recipe, worker_context,
                                         prepared[(cell.task, cell.dataset, cell.seed)], *fitted.get(cell, ())):
                       (cell, recipe) for cell, recipe in todo}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                cell, recipe = pending.pop(done[0])
                try:
                    record = ray.get(done[0])
                except Exception as exc:  # a worker lost (killed, out of memory): this cell fails, the run goes on
                    record = failed_record(cell, recipe, context, lost_worker(exc, ray))
                yield cell, recipe, record
        finally:
            ray.shutdown()

    return execute
