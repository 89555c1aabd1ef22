"""``run --dry-run``: a run's plan before it is spent, with an estimate measured on this device.

For the profile and the data given: the recipe the run would use (training data and list,
downsampler, input normalisation, every task's settings), each stage's work (upsamplers to
train, images to fit per image), and every cell with its stored status, the image passes it
makes and its estimated seconds. The estimate comes from a short warm-up here: one backbone
pass, one upsampling per method, one training step of one image and one view per trainable
method (scaled by the batch and the views), one- and two-step fits per per-image method, each
timed after a first untimed call; per-image fits already cached are not subtracted. Nothing is scored or written.
Missing weights or data folders are reported in the plan (timed with an untrained stand-in
backbone), and make the plan's exit status non-zero.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from bench.backbones.weights import BackboneWeightsError
from bench.backbones import Backbone, load_backbone
from bench.data import load_dataset
from bench.data.common import DatasetError
from bench.fitting.per_image import fit_images, fit_settings
from bench.fitting.train import CRF_WEIGHT, train_step, trained_status, training_objective, training_steps
from bench.registry import METHODS, TASKS
from bench.core.cells import Cell
from bench.core.context import RunContext
from bench.running.runner import cell_context, plan
from bench.core.store import ResultStore
from tasks.base import Workload


@dataclass
class Plan:
    cells: list[tuple[Cell, dict]] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    """Dataset -> why its cells cannot be planned (a missing data folder)."""
    problems: list[str] = field(default_factory=list)


def plan_tasks(methods: list[str], tasks: list[str], backbone: str, context: RunContext,
               seeds: list[int] | None) -> Plan:
    """``plan``, with the cells of a dataset that is missing left out and the dataset reported, so one missing
    folder does not hide the cells of the others."""
    result = Plan()
    result.cells = plan(methods, tasks, backbone, context, seeds, result.missing)
    return result


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed(fn: Callable[[], Any]) -> float:
    """Seconds of the second call (the first warms caches, allocators and Numba's compiled kernels)."""
    fn()
    return _seconds(fn)


def measure(backbone: Backbone, methods: list[str], context: RunContext) -> dict[str, dict[str, float]]:
    """Seconds on this device: a backbone pass and each method's upsampling (backbone included) per image,
    a training step, a per-image fit (its views' backbone passes and its steps; group batching not counted)."""
    p, device = context.profile, context.device
    image = torch.rand(1, 3, *p.image_size, device=device)
    out: dict[str, dict[str, float]] = {"backbone": {"pass": _timed(lambda: backbone.features(image))}}
    for name in methods:
        method = METHODS.get(name).create(backbone).to(device).eval()
        times: dict[str, float] = {}
        if method.fit == "image":
            settings = fit_settings(p)
            quick = dataclasses.replace(settings, views=2, pca_views=2, group=1)

            def fit(steps: int) -> None:
                fit_images(method, backbone, image, dataclasses.replace(quick, steps=steps), [0])

            one = _timed(lambda: fit(1))
            step = max(0.0, _seconds(lambda: fit(2)) - one)
            times["fit"] = settings.views * max(0.0, one - step) / 2 + settings.steps * step
        else:
            with torch.no_grad():
                times["upsample"] = _timed(lambda: method.upsample(backbone, image, p.image_size))
        if method.fit == "dataset":
            # one image and one view, scaled by the batch and the views: their work is per view and image
            method.train()
            objective, optimizer = training_objective(method, backbone, p.train_downsampler)
            generator = torch.Generator().manual_seed(0)
            one_view = _timed(lambda: train_step(method, backbone, objective, optimizer, image, 1, generator, clip=False))
            times["train_step"] = one_view * p.train_batch * p.train_views
        out[name] = times
    return out


def recipe_lines(context: RunContext, backbone: Backbone, tasks: list[str]) -> list[str]:
    p = context.profile
    mean, std = (tuple(round(float(v), 3) for v in t.flatten()) for t in (backbone.mean, backbone.std))
    lines = [f"profile {p.name}: backbone {backbone.name} (stride {backbone.stride}, dim {backbone.dim}), "
             f"images {p.image_size[0]}x{p.image_size[1]}, seed {p.seed}, device {context.device}",
             f"input normalisation: {p.normalisation}, mean {mean}, std {std}",
             f"upsampler training: data {p.train_data}, list {p.train_list or '(all images)'}, "
             f"{'one shuffled epoch' if p.train_steps is None else f'{p.train_steps} steps'} of batch {p.train_batch}, "
             f"{p.train_views} views, {p.train_downsampler} downsampler, CRF weight {CRF_WEIGHT}",
             f"per-image fits: {dataclasses.asdict(fit_settings(p))}"]
    for name in tasks:
        task = TASKS.get(name)()
        lines.append(f"task {name}: data {task.dataset(p)}; settings {dataclasses.asdict(task.settings(p))}")
    return lines


def stage_rows(methods: list[str], backbone: Backbone, context: RunContext, timings: dict,
               problems: list[str]) -> list[dict]:
    """The training stage: one row per trainable method, cached or with its steps and estimate; weights
    stored by another recipe under the same folder are added to ``problems``."""
    trained = [name for name in methods if METHODS.get(name).fit == "dataset"]
    if not trained:
        return []
    p = context.profile
    data = load_dataset(p.train_data, "train", p.image_size, path=context.data_paths.get(p.train_data),
                        seed=p.seed, image_list=p.train_list)
    steps = training_steps(p, len(data))
    rows = []
    for name in trained:
        status = trained_status(METHODS.get(name).create(backbone), backbone, context)
        rows.append({"stage": "train", "method": name, "status": status.split(":")[0],
                     "images": min(len(data), steps * p.train_batch), "steps": steps,
                     "est_s": steps * timings[name]["train_step"] if status == "to train" else 0.0})
        if status.startswith("blocked"):
            problems.append(f"{name}: {status}")
    return rows


def cell_rows(cells: list[tuple[Cell, dict]], context: RunContext, out: Path, timings: dict) -> list[dict]:
    store = ResultStore(out) if out.is_dir() else None
    rows, loads = [], {}
    for cell, recipe in cells:
        key = (cell.task, recipe["data"]["name"])
        if key not in loads:
            loads[key] = TASKS.get(cell.task)().workload(cell_context(cell, recipe, context)) or Workload(0, 0)
        load, status, method = loads[key], store.status(cell, recipe) if store else None, timings[cell.method]
        per_pass = method.get("upsample", timings["backbone"]["pass"])  # upsample() runs the backbone too
        seconds = per_pass * load.passes + method.get("fit", 0.0) * load.images
        rows.append({"method": cell.method, "task": cell.task, "dataset": cell.dataset, "seed": cell.seed,
                     "status": status or "to run", "images": load.images, "passes": load.passes,
                     "est_s": seconds if status is None else 0.0})
    return rows


def dry_run(methods: list[str], tasks: list[str], backbone_name: str, weights: str | None, context: RunContext,
            seeds: list[int] | None, out_for: Callable[[list], Path]) -> tuple[str, int]:
    """The plan as text and the exit status (1 where weights or data are missing)."""
    planned = plan_tasks(methods, tasks, backbone_name, context, seeds)
    out = out_for(planned.cells)
    stand_in = ""
    try:
        backbone = load_backbone(backbone_name, weights, context.device, context.profile.normalisation)
    except BackboneWeightsError as exc:
        planned.problems.append(f"backbone weights missing: {exc}")
        backbone = load_backbone(backbone_name, device=context.device, normalisation=context.profile.normalisation,
                                 random_weights=True)
        stand_in = " (the backbone timed untrained: its weights are missing)"
    lines = [f"DRY RUN: nothing is scored or written; run folder {out}", *recipe_lines(context, backbone, tasks)]
    timings = measure(backbone, methods, context)
    lines.append("measured here (s per image): " + ", ".join(
        f"{name} {k} {v:.3f}" for name, times in timings.items() for k, v in times.items()))
    try:
        stages = stage_rows(methods, backbone, context, timings, planned.problems)
    except DatasetError as exc:
        stages = []
        if context.profile.train_data not in planned.missing:  # a missing folder is reported once, below
            planned.problems.append(f"upsampler training data: {str(exc).splitlines()[0]}")
    cells = cell_rows(planned.cells, context, out, timings)
    if stages:
        lines += ["", "training stage:", pd.DataFrame(stages).to_markdown(index=False, floatfmt=".0f")]
    if cells:
        lines += ["", f"cells ({len(cells)}):", pd.DataFrame(cells).to_markdown(index=False, floatfmt=".0f")]
    for name, why in planned.missing.items():
        planned.problems.append(f"dataset {name}: {why}")
    total = sum(r["est_s"] for r in stages) + sum(r["est_s"] for r in cells)
    todo = sum(r["status"] == "to run" for r in cells)
    lines += ["", *[f"PROBLEM: {p}" for p in planned.problems],
              f"estimated time on {context.device}: {total / 3600:.2f} h ({total:.0f} s) for {todo} cells to run "
              f"of {len(cells)} and {sum(r['status'] == 'to train' for r in stages)} upsamplers to train"
              f"{stand_in}"]
    return "\n".join(lines), 1 if planned.problems else 0
