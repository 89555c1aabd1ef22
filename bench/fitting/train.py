"""Fit a trainable upsampler with the multi-view loss once, cache it, reuse it.

Any trainable Upsampler is trained the same way (docs/reference.md §4): NAdam over its
parameters, the downsampler's and the uncertainty net's; ``train_views`` jittered
views per batch (see MultiViewLoss) plus FeatUp's sampled CRF term (weight 0.001),
one step per batch; gradient norm clipped to 1e-4 for the first 10 steps. The
profile picks the downsampler (``train_downsampler``), the training list
(``train_list``) and the length (``train_steps``; None: one shuffled epoch, as
FeatUp's config). Weights live in

    <cache_dir>/weights/<method>-v<version>-<backbone>-<train data label>-<profile>-seed<seed>-<recipe digest>/
        weights.pt        the upsampler's state dict
        provenance.json   what made them; written last, so it marks a finished run
        resume.pt         periodic training state while a run is in progress

A cached file that is unreadable or was made by another recipe is an error that
names the folder to delete: trained weights are never silently overwritten.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.backbones import Backbone, cache_key
from bench.core.context import RunContext
from bench.core.profiles import Profile
from bench.data import load_dataset
from bench.registry import DATASETS
from bench.data.common import epoch_order
from bench.data.identity import dataset_identity
from bench.core.cells import slug
from bench.fitting.weights import WeightsError, WeightsSource, find_shipped, load_state, verified_path
from bench.fitting.multiview import PROJ_DIM, Jitter, MultiViewLoss, random_projection
from bench.core.provenance import git_commit
from bench.core.store import atomic_write, atomic_write_json
from methods.base import Upsampler

LR = 1e-3
CLIP_STEPS, CLIP_NORM = 10, 1e-4
CRF_WEIGHT = 0.001
"""FeatUp's JBU recipe; its TV weight is 0."""
CHECKPOINTS = 10
"""Resume checkpoints per run."""
MULTIVIEW_ONLY = ("views", "optimizer", "lr", "clip", "downsampler", "proj_dim", "crf_weight", "uncertainty_init")
"""Recipe fields of the shared multi-view training that a method with its own objective does not use."""
RESUME_EVERY_S = 600.0
"""The resume state is also saved when this long has passed since it last was (long runs on a CPU)."""


class CheckpointError(RuntimeError):
    """A cached checkpoint that cannot be used; the message says which file and what to delete."""


def checkpoint(upsampler: Upsampler, backbone: Backbone, context: RunContext) -> tuple[Path, dict[str, Any]]:
    """The weights' folder and the recipe a cached checkpoint must match exactly.

    One folder per recipe: its name says the method, version, backbone (its ``cache_key``: name with
    any @stage, and its input normalisation where not the model's own), training data, profile and
    seed, and ends with a digest of the whole recipe, so a changed recipe trains into a new folder
    and never meets another's weights. The training data's identity (a folder's fingerprint walks
    every file) is taken once for both.
    """
    p = context.profile
    data = dataset_identity(p.train_data, context.data_paths.get(p.train_data))
    steps = p.train_steps if p.train_steps is not None else "one epoch"
    recipe = {
        "method": upsampler.name, "version": upsampler.version, "backbone": cache_key(backbone), "dim": backbone.dim,
        "stride": backbone.stride, "dataset": p.train_data, "data": data, "profile": p.name,
        "image_size": list(p.image_size),
        "train_list": p.train_list, "steps": steps, "batch": p.train_batch, "views": p.train_views, "seed": p.seed,
        "optimizer": "NAdam", "lr": LR, "clip": [CLIP_STEPS, CLIP_NORM], "downsampler": p.train_downsampler,
        "proj_dim": PROJ_DIM, "crf_weight": CRF_WEIGHT, "uncertainty_init": "weight and bias x0.1",
    }
    if upsampler.own_objective is not None:  # the method's own loss: none of the multi-view loss's settings apply
        recipe = {k: v for k, v in recipe.items() if k not in MULTIVIEW_ONLY} | {"objective": upsampler.own_objective}
    recipe = json.loads(json.dumps(recipe, default=str))  # as stored: a tuple compares equal to its JSON list
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:8]
    folder = (Path(context.cache_dir) / "weights" / f"{upsampler.name}-v{upsampler.version}-{slug(cache_key(backbone))}-"
              f"{slug(data['label'])}-{p.name}-seed{p.seed}-{digest}")
    return folder, recipe


def weights_source(upsampler: Upsampler, backbone: Backbone, context: RunContext) -> WeightsSource:
    """Where ``upsampler``'s weights come from here: the file the run names for it, the shipped weights of
    this recipe (unless ``context.retrain``), else the training cache (bench.fitting.weights)."""
    if upsampler.name in context.weights:
        return WeightsSource("file", Path(context.weights[upsampler.name]))
    if not context.retrain:
        entry = find_shipped(checkpoint(upsampler, backbone, context)[1])
        if entry is not None:
            return WeightsSource("shipped", verified_path(entry), entry)
    return WeightsSource("cache")


def trained_status(upsampler: Upsampler, backbone: Backbone, context: RunContext) -> str:
    """"shipped …" or "weights from …" where weights are given, "cached" when this recipe's are trained,
    "to train" when none are, else what blocks them."""
    try:
        source = weights_source(upsampler, backbone, context)
    except WeightsError as exc:
        return f"blocked: {exc}"
    if source.kind != "cache":
        return source.describe()
    folder, recipe = checkpoint(upsampler, backbone, context)
    if not (folder / "provenance.json").is_file():
        return "to train"
    try:
        _check_recipe(_read_json(folder / "provenance.json", folder), recipe, folder / "provenance.json", folder)
    except CheckpointError as exc:
        return f"blocked: {exc}"
    return "cached"


_ANNOUNCED: set[tuple[str, str]] = set()


def ensure_trained(upsampler: Upsampler, backbone: Backbone, context: RunContext) -> None:
    """Load ``upsampler``'s weights from the file named for it, the shipped ones or the cache, training
    them into the cache first where none are; says once per process where given weights came from."""
    source = weights_source(upsampler, backbone, context)
    if source.kind == "cache":
        folder, recipe = checkpoint(upsampler, backbone, context)
        if not (folder / "provenance.json").is_file():
            train_method(upsampler, backbone, context)
        load_trained(upsampler, folder, recipe, context.device)
    else:
        try:
            upsampler.load_state_dict(upsampler.state_from_file(load_state(source.path, context.device)))
        except (RuntimeError, ValueError) as exc:  # load_state_dict's mismatch, or state_from_file's refusal
            raise WeightsError(f"{source.path} does not fit {upsampler.name!r} on {backbone.name}: {exc}") from exc
        if (upsampler.name, source.describe()) not in _ANNOUNCED:
            _ANNOUNCED.add((upsampler.name, source.describe()))
            tqdm.write(f"{upsampler.name}: {source.describe()}", file=sys.stderr)
    upsampler.eval()


def load_trained(upsampler: Upsampler, folder: Path, recipe: dict[str, Any], device: torch.device) -> None:
    provenance = _read_json(folder / "provenance.json", folder)
    _check_recipe(provenance, recipe, folder / "provenance.json", folder)
    state = _read_torch(folder / "weights.pt", folder, device)
    try:
        upsampler.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / 'weights.pt'} does not fit {upsampler.name!r}: {exc}. {_delete_hint(folder)}") from exc


def train_method(upsampler: Upsampler, backbone: Backbone, context: RunContext) -> Path:
    """Train ``upsampler`` with the multi-view loss and cache it; resumes a killed run. Returns the folder."""
    folder, recipe = checkpoint(upsampler, backbone, context)
    if (folder / "provenance.json").is_file():
        raise CheckpointError(f"{folder} already holds trained weights for this recipe. {_delete_hint(folder)}")
    data = training_images(context)
    state = run_training(upsampler, backbone, context, folder / "resume.pt", recipe, data,
                         training_steps(context.profile, len(data)))
    _atomic_torch_save(upsampler.state_dict(), folder / "weights.pt")
    atomic_write_json(folder / "provenance.json", training_provenance(recipe, state, context))
    (folder / "resume.pt").unlink(missing_ok=True)
    upsampler.eval()
    return folder


def training_provenance(recipe: dict[str, Any], state: dict[str, Any], context: RunContext) -> dict[str, Any]:
    """What made a set of trained weights: the recipe, the loss curve, time, code and machine."""
    tail = state["losses"][-max(1, len(state["losses"]) // 10):]
    return {
        **recipe, "profile_recipe": context.profile.recipe(), "seconds": round(state["seconds"], 1),
        "final_loss": sum(tail) / len(tail), "losses": state["losses"], "git_commit": git_commit(),
        "torch": torch.__version__, "device": str(context.device),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


Checkpoint = Callable[[int, Upsampler, dict[str, Any]], None]
"""Called as ``(steps done, upsampler, training state)`` at each of ``run_training``'s checkpoints."""


def run_training(upsampler: Upsampler, backbone: Backbone, context: RunContext, resume: Path,
                 recipe: dict[str, Any], data: Any, total: int, checkpoints: Iterable[int] = (),
                 on_checkpoint: Checkpoint | None = None) -> dict[str, Any]:
    """Train to ``total`` steps, resuming from ``resume`` when it holds this recipe's state; returns the state.

    The batches and random draws of step s do not depend on ``total`` (see ``_batch``), so a run's
    state after s steps is the same whether it stops there or goes on: a longer run continues a
    shorter one. At each of ``checkpoints`` the state is saved and ``on_checkpoint`` called.
    """
    p, device = context.profile, context.device
    torch.manual_seed(p.seed)
    generator = torch.Generator().manual_seed(p.seed)
    upsampler.to(device).train()
    backbone.to(device)
    objective, optimizer = training_objective(upsampler, backbone, p.train_downsampler)
    state = {"step": 0, "seconds": 0.0, "losses": []}
    if resume.is_file():
        state = _resume(resume, recipe, upsampler, objective, optimizer, generator, device)
    marks = set(checkpoints)
    every = max(1, total // CHECKPOINTS)
    bar = tqdm(range(state["step"], total), initial=state["step"], total=total,
               desc=f"train {upsampler.name}", disable=not context.progress)
    started = time.perf_counter() - state["seconds"]
    saved = time.perf_counter()
    for step in bar:
        image = _batch(data, step, p.train_batch, p.seed, shuffle=not _is_stream(context)).to(device)
        loss = train_step(upsampler, backbone, objective, optimizer, image, p.train_views, generator,
                          clip=step < CLIP_STEPS)
        state["losses"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        state.update(step=step + 1, seconds=time.perf_counter() - started)
        if step + 1 in marks or ((step + 1) % every == 0 and step + 1 < total) or time.perf_counter() - saved > RESUME_EVERY_S:
            _save_resume(resume, recipe, state, upsampler, objective, optimizer, generator)
            saved = time.perf_counter()
        if step + 1 in marks and on_checkpoint is not None:
            on_checkpoint(step + 1, upsampler, state)
    upsampler.eval()
    return state


def training_objective(upsampler: Upsampler, backbone: Backbone,
                       downsampler: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The multi-view loss (with its downsampler and uncertainty net) and NAdam over it and the upsampler; for a
    method with its own objective, an empty module and the optimizer its ``own_objective`` names."""
    own = upsampler.own_objective
    if own is not None:
        settings = {k: v for k, v in own.items() if k in ("lr", "weight_decay", "betas", "eps")}
        return nn.Module(), getattr(torch.optim, own.get("optimizer", "AdamW"))(upsampler.parameters(), **settings)
    objective = MultiViewLoss(backbone.dim, backbone.stride, downsampler, crf_weight=CRF_WEIGHT).to(
        next(upsampler.parameters()).device)
    return objective, torch.optim.NAdam([*upsampler.parameters(), *objective.parameters()], lr=LR)


def train_step(upsampler: Upsampler, backbone: Backbone, objective: nn.Module, optimizer: torch.optim.Optimizer,
               image: torch.Tensor, views: int, generator: torch.Generator, clip: bool) -> torch.Tensor:
    """One optimiser step on a batch of images and ``views`` jittered views of it (or the method's own loss);
    returns the loss."""
    if upsampler.own_objective is not None:
        optimizer.zero_grad(set_to_none=True)
        loss = upsampler.training_loss(backbone, image, generator)
        loss.backward()
        optimizer.step()
        return loss.detach()
    with torch.no_grad():
        lr_feats = upsampler.features(backbone, image)
        jitters = [Jitter.sample(tuple(image.shape[-2:]), generator) for _ in range(views)]
        view_lrs = [upsampler.features(backbone, jitter(image)) for jitter in jitters]
    projs = [random_projection(image.shape[0], backbone.dim, generator).to(image.device) for _ in jitters]
    optimizer.zero_grad(set_to_none=True)
    loss = objective(upsampler, lr_feats, image, jitters, view_lrs, projs)
    loss.backward()
    if clip:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
    optimizer.step()
    return loss.detach()


def training_images(context: RunContext, steps: int | None = None) -> Any:
    """The images the upsamplers are trained on: a folder dataset's whole list (or named list), or as
    many items of an embedded dataset's seeded stream as ``steps`` (default: the profile's) take."""
    p = context.profile
    steps = p.train_steps if steps is None else steps
    limit = steps * p.train_batch if _is_stream(context) and steps is not None else None
    data = load_dataset(p.train_data, "train", p.image_size, limit=limit, path=context.data_paths.get(p.train_data),
                        seed=p.seed, image_list=p.train_list)
    if len(data) == 0:
        raise ValueError(f"training set {p.train_data!r} is empty")
    return data


def training_steps(profile: Profile, images: int) -> int:
    """The profile's steps, or one epoch over ``images`` at its batch size when it gives none."""
    return profile.train_steps if profile.train_steps is not None else -(-images // profile.train_batch)


def _is_stream(context: RunContext) -> bool:
    """Embedded training data is a stream of seeded draws (item q is the same whatever the length), read in
    order; a folder's list is read in seeded epoch permutations. Either way step s's batch does not
    depend on how many steps the run takes."""
    return DATASETS.get(context.profile.train_data).embedded


def _batch(data: Any, step: int, batch: int, seed: int, shuffle: bool = True) -> torch.Tensor:
    """Images of ``step``: items in order, or in seeded per-epoch permutations; a resumed run sees the same."""
    n, items = len(data), range(step * batch, (step + 1) * batch)
    if not shuffle:
        return torch.stack([data[q % n]["image"] for q in items])
    return torch.stack([data[epoch_order(n, q // n, seed)[q % n]]["image"] for q in items])


def _save_resume(path: Path, recipe: dict, state: dict, upsampler: Upsampler, objective: MultiViewLoss,
                 optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    _atomic_torch_save({
        "recipe": recipe, **state, "upsampler": upsampler.state_dict(), "objective": objective.state_dict(),
        "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
    }, path)


def _resume(path: Path, recipe: dict, upsampler: Upsampler, objective: MultiViewLoss,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, device: torch.device) -> dict:
    saved = _read_torch(path, path.parent, device)
    _check_recipe(saved.get("recipe", {}), recipe, path, path.parent)
    upsampler.load_state_dict(saved["upsampler"])
    objective.load_state_dict(saved["objective"])
    optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    return {k: saved[k] for k in ("step", "seconds", "losses")}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _delete_hint(folder: Path) -> str:
    return f"Delete {folder} to retrain from scratch."


def _read_json(path: Path, folder: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or unreadable ({exc}). {_delete_hint(folder)}") from exc


def _read_torch(path: Path, folder: Path, device: torch.device) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing although {folder} holds a finished run. {_delete_hint(folder)}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, EOF) for a damaged file
        raise CheckpointError(f"{path} is corrupt or unreadable ({type(exc).__name__}: {exc}). {_delete_hint(folder)}") from exc


def _check_recipe(stored: dict, expected: dict, path: Path, folder: Path) -> None:
    diffs = [f"{k}={stored.get(k)!r} (this run: {v!r})" for k, v in expected.items() if stored.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path} was made by a different recipe: {', '.join(diffs)}. {_delete_hint(folder)}")
