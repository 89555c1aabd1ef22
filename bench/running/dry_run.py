"""``run --dry-run``: a run's plan before it is spent, with an estimate measured on this device.

For the profile and the data given: the recipe the run would use (training data and list,
downsampler, input normalisation, every task's settings), each stage's work (upsamplers to
train, images to fit per image), and every cell with its stored status, the image passes it
makes and its estimated seconds. What is missing (weights, data folders) is printed first, before
anything is timed, and makes the plan's exit status non-zero; missing weights are timed with an
untrained stand-in backbone.

Only what the cells that can run here need is timed: a backbone pass, each such method's upsampling,
one training step of one image and one view per method to train (scaled by the batch and the views),
one- and two-step fits per per-image method, each timed after a first untimed call; per-image fits
already cached are not subtracted. Those timings are kept in ``<cache>/dry_run_timings.json``, so a
second dry run times nothing it has timed before. Cells whose data is missing are counted, by
dataset, and not estimated: their work depends on the folder's image count, read once it is given.
Nothing is scored or written besides that timing cache.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from bench.backbones.weights import BackboneWeightsError
from bench.backbones import Backbone, cache_key, load_backbone
from bench.data import load_dataset
from bench.data.common import DatasetError
from bench.fitting.per_image import ImageFitSettings, fit_images, fit_settings
from bench.fitting.train import CRF_WEIGHT, train_step, trained_status, training_objective, training_steps
from bench.registry import METHODS, TASKS
from bench.core.cells import Cell
from bench.core.context import RunContext
from bench.core.profiles import Profile
from bench.core.store import ResultStore, atomic_write_json
from bench.running.runner import cell_context, plan, task_datasets
from tasks.base import Workload

TIMINGS_FILE = "dry_run_timings.json"
"""Raw seconds of earlier dry runs, under the run's cache folder, each keyed by what it was measured on."""

Emit = Callable[[str], None]


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


def waiting_for_data(methods: list[str], tasks: list[str], context: RunContext, seeds: list[int] | None,
                     missing: dict[str, str]) -> Counter[str]:
    """Missing dataset -> the cells the plan left out for it (every method, on every task that reads it, per seed)."""
    p = context.profile
    per_seed = Counter(name for task in tasks for name in task_datasets(TASKS.get(task)(), p) if name in missing)
    return Counter({name: n * len(methods) * len(seeds or [p.seed]) for name, n in per_seed.items()})


def waits_for(recipe: dict) -> str | None:
    """The training data a trained method's cell waits for: missing, with no weights given for the method."""
    train = recipe.get("train_data", {})
    return train["name"] if train.get("label") == "missing" and "weights" not in recipe else None


def _say(line: str) -> None:
    print(line, flush=True)  # each part as it is known: the problems before the timing


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed(fn: Callable[[], Any]) -> float:
    """Seconds of the second call (the first warms caches, allocators and Numba's compiled kernels)."""
    fn()
    return _seconds(fn)


def _quick_fit(profile: Profile) -> ImageFitSettings:
    """The profile's per-image fit with 2 views, one image at a time: what the fit's timing runs (steps aside)."""
    return dataclasses.replace(fit_settings(profile), views=2, pca_views=2, group=1)


def time_part(name: str, part: str, backbone: Backbone, context: RunContext) -> dict[str, float]:
    """Raw seconds of one part on this device for a (1,3,H,W) image: "pass" (the backbone's), "upsample" (the
    method's, backbone included), "fit" (a per-image fit's seconds per view and per step), "train" (one training
    step of one image and one view, or of one image where the method trains with its own objective)."""
    image = torch.rand(1, 3, *context.profile.image_size, device=context.device)
    if part == "pass":
        return {"pass": _timed(lambda: backbone.features(image))}
    method = METHODS.get(name).create(backbone).to(context.device).eval()
    if part == "upsample":
        with torch.no_grad():
            return {"upsample": _timed(lambda: method.upsample(backbone, image, context.profile.image_size))}
    if part == "fit":
        quick = _quick_fit(context.profile)

        def fit(steps: int) -> None:
            fit_images(method, backbone, image, dataclasses.replace(quick, steps=steps), [0])

        one = _timed(lambda: fit(1))
        step = max(0.0, _seconds(lambda: fit(2)) - one)
        return {"fit_view": max(0.0, one - step) / quick.views, "fit_step": step}
    method.train()
    objective, optimizer = training_objective(method, backbone, context.profile.train_downsampler)
    generator = torch.Generator().manual_seed(0)
    seconds = _timed(lambda: train_step(method, backbone, objective, optimizer, image, 1, generator, clip=False))
    return {"train_image" if method.own_objective is not None else "train_view": seconds}


def per_image(raw: dict[str, float], profile: Profile) -> dict[str, float]:
    """A part's raw seconds at the profile's sizes: a whole per-image fit, a training step of the whole batch and
    views (their work is per view and image)."""
    if "fit_view" in raw:
        settings = fit_settings(profile)
        return {"fit": settings.views * raw["fit_view"] + settings.steps * raw["fit_step"]}
    if "train_view" in raw:
        return {"train_step": raw["train_view"] * profile.train_batch * profile.train_views}
    if "train_image" in raw:  # a method's own objective sees each image of the batch once: no views
        return {"train_step": raw["train_image"] * profile.train_batch}
    return raw


def device_label(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def timing_key(name: str, part: str, backbone: Backbone, context: RunContext) -> str:
    """What a part's seconds depend on: backbone, device, method and version, image size, and the settings of the
    part's short run (the fit's sizes but its steps, the training downsampler)."""
    p = context.profile
    key: dict[str, Any] = {"backbone": cache_key(backbone), "device": device_label(context.device), "method": name,
                           "version": METHODS.get(name).version if part != "pass" else None,
                           "image_size": list(p.image_size), "part": part}
    if part == "fit":
        key["fit"] = {k: v for k, v in dataclasses.asdict(_quick_fit(p)).items() if k != "steps"}
    if part == "train":
        key["downsampler"] = p.train_downsampler
        if METHODS.get(name).own_objective is not None:  # timed per image (no views) since 2026-12-08
            key["objective"] = "own"
    return json.dumps(key, sort_keys=True)


def load_timings(path: Path) -> dict[str, dict[str, float]]:
    """The cached timings; an unreadable file counts as empty, so its parts are timed again and it is rewritten."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def needed_parts(cells: list[dict], stages: list[dict]) -> list[tuple[str, str]]:
    """(method or "backbone", part) for what the cells to run and the upsamplers to train are estimated from."""
    parts: dict[tuple[str, str], None] = {}
    for row in (r for r in cells if r["status"] == "to run"):
        if METHODS.get(row["method"]).fit == "image":  # its passes are backbone passes, and its fit is timed apart
            parts.update({("backbone", "pass"): None, (row["method"], "fit"): None})
        else:
            parts[(row["method"], "upsample")] = None
    parts.update({(r["method"], "train"): None for r in stages if r["status"] == "to train"})
    return list(parts)


def measure(parts: list[tuple[str, str]], backbone: Backbone, context: RunContext,
            emit: Emit) -> dict[str, dict[str, float]]:
    """Seconds per image of each part at the profile's sizes, from the cache or timed here (one line each)."""
    if not parts:
        emit("timed nothing: no cell can run here")
        return {}
    path = Path(context.cache_dir) / TIMINGS_FILE
    cache = load_timings(path)
    emit(f"{len(parts)} parts on {device_label(context.device)}, s per image, timed here or read from {path} "
         f"(delete it to time again):")
    timings: dict[str, dict[str, float]] = {}
    for name, part in parts:
        key = timing_key(name, part, backbone, context)
        cached = key in cache
        if not cached:
            cache[key] = time_part(name, part, backbone, context)
            atomic_write_json(path, cache)  # each as it is timed: a stopped dry run keeps what it measured
        seconds = per_image(cache[key], context.profile)
        timings.setdefault(name, {}).update(seconds)
        emit(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()) + (" (cached)" if cached else ""))
    return timings


def plan_backbone(name: str, weights: str | None, context: RunContext, problems: list[str]) -> tuple[Backbone, str]:
    """The backbone with its weights, or where they are missing an untrained stand-in to time with (the problem
    added to ``problems``), and the note the estimate then carries."""
    try:
        return load_backbone(name, weights, context.device, context.profile.normalisation), ""
    except BackboneWeightsError as exc:
        problems.append(f"backbone weights missing: {exc}")
        stand_in = load_backbone(name, device=context.device, normalisation=context.profile.normalisation,
                                 random_weights=True)
        return stand_in, " (the backbone timed untrained: its weights are missing)"


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


def stage_rows(trained: list[str], backbone: Backbone, context: RunContext, problems: list[str]) -> list[dict]:
    """The training stage of the methods ``trained``: one row each, cached or with its steps; weights stored by
    another recipe under the same folder are added to ``problems``."""
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
                     "images": min(len(data), steps * p.train_batch), "steps": steps})
        if status.startswith("blocked"):
            problems.append(f"{name}: {status}")
    return rows


def cell_rows(cells: list[tuple[Cell, dict]], context: RunContext, out: Path) -> list[dict]:
    """One row per planned cell: its status (stored, "to run", or the training data it waits for) and workload."""
    store = ResultStore(out) if out.is_dir() else None
    rows, loads = [], {}
    for cell, recipe in cells:
        key = (cell.task, recipe["data"]["name"])
        if key not in loads:
            loads[key] = TASKS.get(cell.task)().workload(cell_context(cell, recipe, context)) or Workload(0, 0)
        stored, train = store.status(cell, recipe) if store else None, waits_for(recipe)
        rows.append({"method": cell.method, "task": cell.task, "dataset": cell.dataset, "seed": cell.seed,
                     "status": stored or (f"waits for {train}" if train else "to run"),
                     "images": loads[key].images, "passes": loads[key].passes})
    return rows


def add_estimates(cells: list[dict], stages: list[dict], timings: dict[str, dict[str, float]]) -> None:
    """Each row's estimated seconds: a training's steps, a cell's passes and per-image fits (0 where nothing runs)."""
    for row in stages:
        row["est_s"] = row["steps"] * timings[row["method"]]["train_step"] if row["status"] == "to train" else 0.0
    for row in cells:
        if row["status"] != "to run":
            row["est_s"] = 0.0
            continue
        method = timings[row["method"]]
        # upsample() runs the backbone; a per-image method's passes are backbone passes (needed_parts timed one)
        per_pass = method["upsample"] if "upsample" in method else timings["backbone"]["pass"]
        row["est_s"] = per_pass * row["passes"] + method.get("fit", 0.0) * row["images"]


def training_stage(cells: list[dict], backbone: Backbone, context: RunContext, planned: Plan) -> list[dict]:
    """``stage_rows`` of the trained methods with cells to run; training data that cannot be read is a problem
    (reported once where its folder is already missing)."""
    trained = [m for m in dict.fromkeys(r["method"] for r in cells if r["status"] == "to run")
               if METHODS.get(m).fit == "dataset"]
    try:
        return stage_rows(trained, backbone, context, planned.problems)
    except DatasetError as exc:
        if context.profile.train_data not in planned.missing:
            planned.problems.append(f"upsampler training data: {str(exc).splitlines()[0]}")
        return []


def waiting_note(left_out: Counter[str], cells: list[dict]) -> str:
    """The cells that wait for data, by dataset, and that they are not in the estimate."""
    waiting = left_out + Counter(r["status"].removeprefix("waits for ") for r in cells
                                 if r["status"].startswith("waits for "))
    if not waiting:
        return ""
    return (f"; {sum(waiting.values())} cells wait for data and are not estimated "
            f"({', '.join(f'{name}: {n}' for name, n in waiting.items())}): their work depends on the folders' "
            f"image counts, so give --data NAME=PATH and dry-run again to estimate them")


def report(problems: list[str], since: int, emit: Emit) -> int:
    """Emit the problems found since the first ``since`` were; how many are reported now."""
    for problem in problems[since:]:
        emit(f"PROBLEM: {problem}")
    return len(problems)


def dry_run(methods: list[str], tasks: list[str], backbone_name: str, weights: str | None, context: RunContext,
            seeds: list[int] | None, out_for: Callable[[list], Path], emit: Emit = _say) -> int:
    """Emit the plan line by line, what is missing before anything is timed; the exit status (1 where weights or
    data are missing)."""
    planned = plan_tasks(methods, tasks, backbone_name, context, seeds)
    out = out_for(planned.cells)
    emit(f"DRY RUN: nothing is scored or written; run folder {out}")
    backbone, stand_in = plan_backbone(backbone_name, weights, context, planned.problems)
    for line in recipe_lines(context, backbone, tasks):
        emit(line)
    planned.problems += [f"dataset {name}: {why}" for name, why in planned.missing.items()]
    reported = report(planned.problems, 0, emit)
    cells = cell_rows(planned.cells, context, out)
    stages = training_stage(cells, backbone, context, planned)
    report(planned.problems, reported, emit)
    timings = measure(needed_parts(cells, stages), backbone, context, emit)
    add_estimates(cells, stages, timings)
    if stages:
        emit("\ntraining stage:\n" + pd.DataFrame(stages).to_markdown(index=False, floatfmt=".0f"))
    if cells:
        emit(f"\ncells ({len(cells)}):\n" + pd.DataFrame(cells).to_markdown(index=False, floatfmt=".0f"))
    total = sum(r["est_s"] for r in stages) + sum(r["est_s"] for r in cells)
    left_out = waiting_for_data(methods, tasks, context, seeds, planned.missing)
    emit(f"\nestimated time on {context.device}: {total / 3600:.2f} h ({total:.0f} s) for "
         f"{sum(r['status'] == 'to run' for r in cells)} cells to run of {len(cells)} planned and "
         f"{sum(r['status'] == 'to train' for r in stages)} upsamplers to train{stand_in if timings else ''}"
         f"{waiting_note(left_out, cells)}")
    return 1 if planned.problems else 0
